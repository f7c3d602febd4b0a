//! Bot protection through real `palisade` processes: the keyring, the challenge and its
//! cookies, the automatic triggers, and a real browser solving the page.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::FutureExt;
use palisade_testkit::http::*;
use palisade_testkit::origin::upstream;
use palisade_testkit::pki::pki;
use palisade_testkit::{wait, TestCluster};
use serde_json::{json, Value};

use super::bin;

/// `(kid, state)` of every key, as node `idx` sees them.
fn keyring(c: &TestCluster, idx: usize) -> Vec<(String, String)> {
    let r = c.get(idx, "/v1/bot/keys").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut keys: Vec<(String, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(k.get("secret").is_none(), "a secret was shown: {k}");
            (
                k["kid"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn with_state(keys: &[(String, String)], state: &str) -> Vec<String> {
    keys.iter()
        .filter(|(_, s)| s == state)
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn the_keyring_rotates_through_the_replicated_next_key_and_every_change_is_audited() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    // A new cluster gets an active key and the next one within a second or two.
    let first = wait::until("an active and a next key", Duration::from_secs(30), || {
        let k = keyring(&c, 1);
        (with_state(&k, "active").len() == 1 && with_state(&k, "next").len() == 1).then_some(k)
    })
    .unwrap();
    let active = with_state(&first, "active")[0].clone();
    let next = with_state(&first, "next")[0].clone();

    // Too short a rotation is refused with the setting named.
    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "bot.key_rotation_seconds": "1" } }),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["field"], "values.bot.key_rotation_seconds");

    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "bot.key_rotation_seconds": "5" } }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The active key was due in a day; a shorter period rotates at once: the replicated next
    // key signs, the old one only verifies, and a new next key is made.
    let second = wait::until("a rotation", Duration::from_secs(30), || {
        let k = keyring(&c, 2);
        (with_state(&k, "active") == vec![next.clone()]).then_some(k)
    })
    .unwrap();
    assert!(
        with_state(&second, "verify_only").contains(&active),
        "{second:?}"
    );
    let next2 = with_state(&second, "next");
    assert_eq!(next2.len(), 1);
    assert!(next2[0] != active && next2[0] != next);

    // Five seconds on, again: the key that was next at the last rotation signs.
    let third = wait::until("a second rotation", Duration::from_secs(30), || {
        let k = keyring(&c, 0);
        (with_state(&k, "active") == next2).then_some(k)
    })
    .unwrap();
    assert!(
        with_state(&third, "verify_only").contains(&next),
        "{third:?}"
    );
    // Every node holds the same keyring.
    assert_eq!(keyring(&c, 0), keyring(&c, 1));
    assert_eq!(keyring(&c, 1), keyring(&c, 2));

    // Every change is in the audit log on every node, made by a node, naming the keys.
    for idx in 0..3 {
        let r = c.get(idx, "/v1/audit?action=botkey.&limit=1000").unwrap();
        let entries = r.body["items"].as_array().cloned().unwrap_or_default();
        let named = |action: &str, kid: &str| {
            entries.iter().any(|e: &Value| {
                e["action"] == action
                    && e["actor"].as_str().unwrap().starts_with("node:")
                    && e["target"].as_str().unwrap().contains(kid)
            })
        };
        assert!(named("botkey.create", &active), "{entries:#?}");
        assert!(named("botkey.rotate", &next), "{entries:#?}");
        assert!(named("botkey.rotate", &next2[0]), "{entries:#?}");
    }
}

// ---- the challenge, its answer and the clearance cookie -------------------------------------

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) palisade-test";

/// One HTTP client: a source address (any of 127/8), optional TLS, and what it sends.
#[derive(Clone)]
struct Client {
    src: IpAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    user_agent: Option<String>,
    accept: Option<String>,
    cookie: Option<String>,
    forwarded_for: Option<String>,
}

impl Client {
    fn browser(ca_pem: Option<&str>) -> Client {
        Client {
            src: "127.0.0.1".parse().unwrap(),
            tls: ca_pem.map(|ca| client_config(ca, &[&rustls::version::TLS13])),
            user_agent: Some(UA.into()),
            accept: Some("text/html,application/xhtml+xml,*/*;q=0.8".into()),
            cookie: None,
            forwarded_for: None,
        }
    }

    fn api(&self) -> Client {
        Client {
            accept: Some("application/json".into()),
            ..self.clone()
        }
    }

    fn from(&self, src: &str) -> Client {
        Client {
            src: src.parse().unwrap(),
            ..self.clone()
        }
    }

    fn with_cookie(&self, cookie: &str) -> Client {
        Client {
            cookie: Some(cookie.to_string()),
            ..self.clone()
        }
    }

    async fn get(&self, addr: &str, host: &str, path: &str) -> Answer {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(self.src, 0)).unwrap();
        let tcp = sock.connect(addr.parse().unwrap()).await.unwrap();
        let mut req = get(host, path);
        let h = req.headers_mut();
        for (name, v) in [
            ("user-agent", &self.user_agent),
            ("accept", &self.accept),
            ("cookie", &self.cookie),
            ("x-forwarded-for", &self.forwarded_for),
        ] {
            if let Some(v) = v {
                h.insert(name, v.parse().unwrap());
            }
        }
        match &self.tls {
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .unwrap();
                send(tls, req).await.unwrap()
            }
            None => send(tcp, req).await.unwrap(),
        }
    }
}

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

/// The value of `attr="…"` after `anchor` in the page.
fn attr(page: &str, anchor: &str, attr: &str) -> String {
    let from = page
        .find(anchor)
        .unwrap_or_else(|| panic!("no {anchor} in {page}"));
    let rest = &page[from..];
    let at = rest.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
    let value = &rest[at..at + rest[at..].find('"').unwrap()];
    value.replace("&amp;", "&")
}

/// A challenge page: what the script would see.
struct Page {
    token: String,
    seed: String,
    bits: u32,
    back: String,
    wait_url: String,
}

fn page(a: &Answer) -> Page {
    assert_eq!(a.status, 403, "{}", text(a));
    assert_eq!(a.headers["x-palisade-mitigated"], "challenge");
    let body = text(a);
    // No wait link where the project asks for JavaScript.
    let wait = match body.contains("http-equiv=\"refresh\"") {
        true => attr(&body, "http-equiv=\"refresh\"", "content"),
        false => ";url=".to_string(),
    };
    Page {
        token: attr(&body, "name=\"t\"", "value"),
        seed: attr(&body, "id=\"answer\"", "data-seed"),
        bits: attr(&body, "id=\"answer\"", "data-bits").parse().unwrap(),
        back: attr(&body, "name=\"r\"", "value"),
        wait_url: wait.split_once(";url=").unwrap().1.to_string(),
    }
}

/// Do the proof of work the page's script does.
fn solve(p: &Page) -> String {
    let seed: [u8; 16] = hex::decode(&p.seed).unwrap().try_into().unwrap();
    (0u32..)
        .map(|n| format!("{n:08x}"))
        .find(|n| palisade_edge::bot::challenge::work_bits(&seed, n) >= p.bits)
        .unwrap()
}

fn answer_path(p: &Page, nonce: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("t", &p.token)
        .append_pair("n", nonce)
        .append_pair("r", &p.back)
        .finish();
    format!("/.well-known/palisade/verify?{q}")
}

/// `name=value` of the clearance a 303 sets, after checking its attributes.
fn clearance(a: &Answer) -> String {
    assert_eq!(a.status, 303, "{}", text(a));
    let set = a.headers["set-cookie"].to_str().unwrap();
    for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age="] {
        assert!(set.contains(part), "{set}");
    }
    assert!(set.starts_with("__Host-palisade_clearance="), "{set}");
    set.split(';').next().unwrap().to_string()
}

/// The key id a clearance names.
fn kid_of(cookie: &str) -> String {
    let value = cookie.split_once('=').unwrap().1;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .unwrap();
    hex::encode(&raw[1..9])
}

/// A cookie with one byte of its value changed.
fn tampered(cookie: &str, at: usize) -> String {
    let (name, value) = cookie.split_once('=').unwrap();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .unwrap();
    raw[at] ^= 0x5a;
    format!(
        "{name}={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// A cluster with a project `shop` (HTTPS, `app.test`) and its upstream; returns the CA PEM.
fn shop(c: &TestCluster, up: SocketAddr, project: &str, host: &str, policy: Value) -> String {
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": project, "name": project }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c
        .put(
            0,
            &format!("/v1/domains/{host}"),
            json!({ "project": project, "upstreams": [up.to_string()], "tls": "manual" }),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let pki = pki(&[host]);
    let r = c
        .post(
            0,
            "/v1/certificates",
            json!({ "name": project, "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let mut bot = c
        .get(0, &format!("/v1/projects/{project}/bot"))
        .unwrap()
        .body;
    for (k, v) in policy.as_object().unwrap() {
        bot[k] = v.clone();
    }
    let r = c
        .put(0, &format!("/v1/projects/{project}/bot?wait=all"), bot)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    pki.ca_pem
}

fn metric(c: &TestCluster, idx: usize, line_start: &str) -> f64 {
    let (_, text) = c.get_text(idx, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_challenge_earns_a_cookie_every_node_honours_and_nothing_else_passes() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    let ca = shop(
        &c,
        up,
        "shop",
        "app.test",
        json!({ "mode": "always_on", "difficulty_bits": 12, "no_script_wait_seconds": 2,
                "answer_within_seconds": 10, "session_minutes": 1, "manual_session_minutes": 1,
                "exempt_paths": ["/hooks/*"] }),
    );
    let blog_ca = shop(
        &c,
        up,
        "blog",
        "blog.test",
        json!({ "mode": "always_on", "difficulty_bits": 8 }),
    );
    let addr = |i: usize| c.nodes[i].https_addr.clone();
    let browser = Client::browser(Some(&ca));
    rt.block_on(async {
        // The keyring is made within seconds of the cluster; until then the page says so.
        wait::until_async("a challenge page", Duration::from_secs(30), || async {
            browser.get(&addr(0), "app.test", "/").await.status == 403
        })
        .await
        .unwrap();
        let a = browser.get(&addr(0), "app.test", "/account?tab=1").await;
        let body = text(&a);
        let csp = a.headers["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'sha256-",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        for part in [
            "aria-live=\"polite\"",
            "role=\"status\"",
            "<noscript>",
            "Request id:",
            "<button",
        ] {
            assert!(body.contains(part), "{part} missing from the page");
        }
        assert!(!body.contains("src=\"http"), "no external resources");
        assert_eq!(a.headers["x-frame-options"], "DENY");
        assert_eq!(
            a.headers["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        assert!(body.contains(a.headers["x-request-id"].to_str().unwrap()));
        let p = page(&a);
        assert_eq!((p.bits, p.back.as_str()), (12, "/account?tab=1"));

        // API clients get 429 JSON; exempt paths are never challenged.
        let api = browser.api().get(&addr(0), "app.test", "/").await;
        assert_eq!(api.status, 429);
        assert_eq!(api.headers["x-palisade-mitigated"], "challenge");
        assert!(
            api.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        let j: Value = serde_json::from_slice(&api.body).unwrap();
        assert_eq!(j["status"], 429, "{j}");
        assert!(j["request_id"].is_string());
        for path in ["/robots.txt", "/hooks/github"] {
            let a = browser.get(&addr(0), "app.test", path).await;
            assert!(a.status == 200 || a.status == 404, "{path}: {}", a.status);
            assert!(!a.headers.contains_key("x-palisade-mitigated"), "{path}");
        }

        // A wrong answer, then the right one: a cookie, and back to the page asked for.
        let wrong = browser
            .get(&addr(0), "app.test", &answer_path(&p, "zzzzzzzz"))
            .await;
        assert!(text(&wrong).contains("not right"), "{}", text(&wrong));
        let nonce = solve(&p);
        let a = browser
            .get(&addr(0), "app.test", &answer_path(&p, &nonce))
            .await;
        assert_eq!(a.headers["location"], "/account?tab=1");
        let cookie = clearance(&a);
        // The same answer again is refused, on this node.
        let again = browser
            .get(&addr(0), "app.test", &answer_path(&p, &nonce))
            .await;
        assert_eq!(again.status, 403);
        assert!(!again.headers.contains_key("set-cookie"));
        assert!(text(&again).contains("already used"), "{}", text(&again));

        // The cookie passes on every node, from any address of the /24.
        let cleared = browser.with_cookie(&cookie);
        for i in 0..3 {
            let a = cleared.get(&addr(i), "app.test", "/").await;
            assert_eq!(a.status, 200, "node index {i}: {}", text(&a));
            assert_eq!(a.headers["x-upstream"], "origin");
        }
        assert_eq!(
            cleared
                .from("127.0.0.77")
                .get(&addr(1), "app.test", "/")
                .await
                .status,
            200
        );

        // Anything else gets a new challenge.
        let mut other_ua = cleared.clone();
        other_ua.user_agent = Some("curl/8".into());
        let blog = Client::browser(Some(&blog_ca));
        let bp = page(&blog.get(&addr(0), "blog.test", "/").await);
        let blog_cookie = clearance(
            &blog
                .get(&addr(0), "blog.test", &answer_path(&bp, &solve(&bp)))
                .await,
        );
        let cases = [
            ("a forged MAC", cleared.with_cookie(&tampered(&cookie, 70))),
            (
                "a forged expiry",
                cleared.with_cookie(&tampered(&cookie, 20)),
            ),
            ("an unknown kid", cleared.with_cookie(&tampered(&cookie, 3))),
            (
                "another project's cookie",
                cleared.with_cookie(&blog_cookie),
            ),
            ("another IP prefix", cleared.from("127.0.1.5")),
            ("another user agent", other_ua),
            ("no cookie", browser.clone()),
        ];
        for (what, client) in cases {
            let a = client.get(&addr(2), "app.test", "/").await;
            assert_eq!(a.status, 403, "{what}: {}", text(&a));
            page(&a);
        }
        let refused = |reason: &str| {
            metric(
                &c,
                2,
                &format!("palisade_bot_cookies_refused_total{{reason=\"{reason}\"}}"),
            )
        };
        for reason in ["bad_mac", "unknown_key", "other_project", "other_client"] {
            assert!(refused(reason) >= 1.0, "{reason} not counted");
        }

        // An answer bound to another network or browser is refused.
        let p2 = page(&browser.get(&addr(0), "app.test", "/").await);
        let moved = browser
            .from("127.0.2.9")
            .get(&addr(0), "app.test", &answer_path(&p2, &solve(&p2)))
            .await;
        assert_eq!(moved.status, 403);
        assert!(!moved.headers.contains_key("set-cookie"));

        // Without JavaScript: the wait token works only after the wait.
        let p3 = page(&browser.get(&addr(1), "app.test", "/").await);
        let early = browser.get(&addr(1), "app.test", &p3.wait_url).await;
        assert_eq!(early.status, 403);
        assert!(
            text(&early).contains("wait was not over"),
            "{}",
            text(&early)
        );
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let waited = browser.get(&addr(1), "app.test", &p3.wait_url).await;
        let no_js_cookie = clearance(&waited);
        assert_eq!(
            browser
                .with_cookie(&no_js_cookie)
                .get(&addr(0), "app.test", "/")
                .await
                .status,
            200
        );

        // A challenge past its 10 s is refused even with the right answer.
        let p4 = page(&browser.get(&addr(0), "app.test", "/").await);
        let n4 = solve(&p4);
        tokio::time::sleep(Duration::from_millis(10_200)).await;
        let late = browser
            .get(&addr(0), "app.test", &answer_path(&p4, &n4))
            .await;
        assert_eq!(late.status, 403);
        assert!(text(&late).contains("expired"), "{}", text(&late));

        // Key rotation: the old cookie stays valid, new cookies name the new key.
        let old_kid = kid_of(&cookie);
        let r = c
            .put(
                0,
                "/v1/settings",
                json!({ "values": { "bot.key_rotation_seconds": "600" } }),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let new_cookie = wait::until_async(
            "a cookie signed with the next key",
            Duration::from_secs(30),
            || async {
                let p = page(&browser.get(&addr(0), "app.test", "/").await);
                let (at, path) = (addr(0), answer_path(&p, &solve(&p)));
                let cookie = clearance(&browser.get(&at, "app.test", &path).await);
                (kid_of(&cookie) != old_kid).then_some(cookie)
            },
        )
        .await
        .unwrap();
        for i in 0..3 {
            assert_eq!(
                cleared.get(&addr(i), "app.test", "/").await.status,
                200,
                "old key, node index {i}"
            );
            assert_eq!(
                browser
                    .with_cookie(&new_cookie)
                    .get(&addr(i), "app.test", "/")
                    .await
                    .status,
                200
            );
        }

        // Bumping the epoch ends every session at once, on every node.
        let r = c
            .post(
                1,
                "/v1/projects/shop/bot/sessions/revoke?wait=all",
                json!({}),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        for i in 0..3 {
            for cookie in [&new_cookie, &no_js_cookie] {
                assert_eq!(
                    browser
                        .with_cookie(cookie)
                        .get(&addr(i), "app.test", "/")
                        .await
                        .status,
                    403
                );
            }
        }
        assert!(refused("old_epoch") >= 1.0);
        let p5 = page(&browser.get(&addr(0), "app.test", "/").await);
        let fresh = clearance(
            &browser
                .get(&addr(0), "app.test", &answer_path(&p5, &solve(&p5)))
                .await,
        );
        assert_eq!(
            browser
                .with_cookie(&fresh)
                .get(&addr(2), "app.test", "/")
                .await
                .status,
            200
        );

        // A session of one minute ends after one minute.
        tokio::time::sleep(Duration::from_millis(60_500)).await;
        let expired = browser
            .with_cookie(&fresh)
            .get(&addr(1), "app.test", "/")
            .await;
        assert_eq!(expired.status, 403);
        assert!(
            metric(
                &c,
                1,
                "palisade_bot_cookies_refused_total{reason=\"expired\"}"
            ) >= 1.0
        );
    });
}

// ---- automatic triggers ---------------------------------------------------------------------

/// Requests through the trusted proxy 127.0.0.1 naming their client in `X-Forwarded-For`.
fn via_proxy(client: &str) -> Client {
    Client {
        forwarded_for: Some(client.to_string()),
        ..Client::browser(None).api()
    }
}

#[test]
fn each_trigger_fires_at_its_threshold_for_that_client_only_on_every_node() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(
        bin(),
        3,
        &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .unwrap();
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "shop", "name": "shop" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c
        .put(0, "/v1/domains/plain.test", json!({ "project": "shop", "upstreams": [up.to_string()], "tls": "off", "redirect_https": false }))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let policy = json!({
        "mode": "automatic",
        "exempt_paths": ["/hooks/*"],
        "triggers": {
            "request_rate": { "threshold": 20, "window_seconds": 60, "challenge_seconds": 600 },
            "request_rate_v6_64": { "threshold": 10, "window_seconds": 60, "challenge_seconds": 600 },
            "client_errors": { "threshold": 6, "window_seconds": 60, "challenge_seconds": 600 },
            "failed_logins": { "threshold": 3, "window_seconds": 600, "challenge_seconds": 600 },
            "missing_headers": { "threshold": 4, "window_seconds": 60, "challenge_seconds": 600 },
        }
    });
    let r = c.put(0, "/v1/projects/shop/bot?wait=all", policy).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // A trigger's window must be one the counters can keep.
    let r = c
        .put(
            0,
            "/v1/projects/shop/bot",
            json!({ "triggers": { "request_rate": { "threshold": 0 } } }),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("triggers.request_rate.threshold")),
        "{}",
        r.body
    );
    let addr = |i: usize| c.nodes[i].http_addr.clone();
    let host = "plain.test";
    rt.block_on(async {
        let status = |client: Client, node: usize, path: &'static str| {
            let a = addr(node);
            async move { client.get(&a, host, path).await.status }
        };
        // Request rate: 19 pass, the 20th is challenged, here and then on every node.
        let fast = via_proxy("198.51.100.1");
        for i in 1..20 {
            assert_eq!(status(fast.clone(), 0, "/").await, 200, "request {i}");
        }
        let a = fast.get(&addr(0), host, "/").await;
        assert_eq!(a.status, 429, "the 20th request: {}", text(&a));
        assert_eq!(a.headers["x-palisade-mitigated"], "challenge");
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((590..=600).contains(&retry), "Retry-After {retry}");
        for node in [1, 2] {
            wait::until_async(
                "the decision on the other nodes",
                Duration::from_secs(5),
                || status(fast.clone(), node, "/").map(|s| s == 429),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            status(via_proxy("198.51.100.2"), 1, "/").await,
            200,
            "another client passes"
        );
        assert_eq!(
            status(fast.clone(), 1, "/hooks/x").await,
            200,
            "exempt paths stay open"
        );

        // Failed logins: the upstream's 401 on /login, counted per client.
        let guesser = via_proxy("198.51.100.3");
        for _ in 0..2 {
            assert_eq!(status(guesser.clone(), 1, "/login").await, 401);
        }
        assert_eq!(
            status(guesser.clone(), 1, "/").await,
            200,
            "two failures are below the threshold"
        );
        assert_eq!(
            status(guesser.clone(), 2, "/login").await,
            401,
            "the third, on another node, counts there"
        );
        assert_eq!(status(guesser.clone(), 1, "/login").await, 401);
        assert_eq!(
            status(guesser.clone(), 1, "/").await,
            429,
            "the third failure on node index 1 fired"
        );
        wait::until_async(
            "the failed-login decision on node index 0",
            Duration::from_secs(5),
            || status(guesser.clone(), 0, "/").map(|s| s == 429),
        )
        .await
        .unwrap();
        assert_eq!(
            status(via_proxy("198.51.100.4"), 1, "/").await,
            200,
            "only the guesser is challenged"
        );

        // Path scanning: 4xx answers.
        let scanner = via_proxy("198.51.100.5");
        for _ in 0..5 {
            assert_eq!(status(scanner.clone(), 2, "/missing/x").await, 404);
        }
        assert_eq!(
            status(scanner.clone(), 2, "/").await,
            200,
            "five 404s are below six"
        );
        assert_eq!(status(scanner.clone(), 2, "/missing/y").await, 404);
        assert_eq!(status(scanner.clone(), 2, "/").await, 429);

        // No User-Agent: the fourth such request is challenged.
        let mut bare = via_proxy("198.51.100.6");
        bare.user_agent = None;
        for i in 1..4 {
            assert_eq!(
                status(bare.clone(), 0, "/").await,
                200,
                "request {i} without User-Agent"
            );
        }
        assert_eq!(status(bare.clone(), 0, "/").await, 429);

        // IPv6: ten addresses of one /64, one request each.
        for i in 1..10 {
            assert_eq!(
                status(via_proxy(&format!("2001:db8:1:2::{i:x}")), 0, "/").await,
                200
            );
        }
        assert_eq!(
            status(via_proxy("2001:db8:1:2::a"), 0, "/").await,
            429,
            "the tenth of the /64"
        );
        assert_eq!(
            status(via_proxy("2001:db8:1:2:ffff::1"), 0, "/").await,
            429,
            "the whole /64 is challenged"
        );
        assert_eq!(
            status(via_proxy("2001:db8:1:3::1"), 0, "/").await,
            200,
            "the next /64 is not"
        );
    });

    // Every decision is replicated, listed and audited as the cluster's own.
    let expected = [
        "198.51.100.1/32",
        "198.51.100.3/32",
        "198.51.100.5/32",
        "198.51.100.6/32",
        "2001:db8:1:2::/64",
    ];
    let prefixes: Vec<String> =
        wait::until("every decision listed", Duration::from_secs(10), || {
            let list = c.get(2, "/v1/projects/shop/bot/decisions").unwrap();
            let prefixes: Vec<String> = list.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["prefix"].as_str().unwrap().to_string())
                .collect();
            expected
                .iter()
                .all(|p| prefixes.iter().any(|q| q == p))
                .then_some(prefixes)
        })
        .unwrap();
    assert!(!prefixes
        .iter()
        .any(|p| p.starts_with("198.51.100.2") || p.starts_with("198.51.100.4")));
    let audit = c.get(1, "/v1/audit?action=bot.decision&limit=100").unwrap();
    let entries = audit.body["items"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["actor"].as_str().unwrap().starts_with("node:")
                && e["target"]
                    .as_str()
                    .unwrap()
                    .contains("198.51.100.3/32 (failed_logins")),
        "{entries:#?}"
    );

    // An operator lifts a decision: the client passes again, on every node.
    let r = c
        .delete(0, "/v1/projects/shop/bot/decisions?prefix=198.51.100.1/32")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    rt.block_on(async {
        for node in 0..3 {
            let a = addr(node);
            wait::until_async("the lifted decision", Duration::from_secs(15), || {
                let (a, client) = (a.clone(), via_proxy("198.51.100.1"));
                async move { client.get(&a, host, "/").await.status == 200 }
            })
            .await
            .unwrap();
        }
    });
    let r = c
        .delete(0, "/v1/projects/shop/bot/decisions?prefix=198.51.100.1/32")
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
}

// ---- what exemptions and clearances do not grant ----------------------------------------------

/// Add a decision by hand and wait until `probe` sees it in force.
fn decide(c: &TestCluster, project: &str, body: Value, probe: impl Fn() -> bool) {
    let path = format!("/v1/projects/{project}/bot/decisions");
    let r = c.post(0, &path, body, None).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    wait::until("the decision in force", Duration::from_secs(10), || {
        probe().then_some(())
    })
    .unwrap();
}

#[test]
fn exemptions_match_the_path_the_upstream_will_see_and_a_block_outranks_them() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let ca = shop(
        &c,
        up,
        "shop",
        "app.test",
        json!({ "mode": "always_on", "difficulty_bits": 8, "exempt_paths": ["/hooks/*"] }),
    );
    let addr = c.nodes[0].https_addr.clone();
    let browser = Client::browser(Some(&ca));
    let get = |path: &'static str| {
        let (b, a) = (browser.clone(), addr.clone());
        rt.block_on(async move { b.get(&a, "app.test", path).await })
    };
    wait::until("a challenge page", Duration::from_secs(30), || {
        (get("/").status == 403).then_some(())
    })
    .unwrap();
    // Exempt, and the upstream is sent the path without dot segments, with its slashes (so
    // that it reads the path compared, or the same with its slashes doubled).
    for (path, seen) in [
        ("/hooks/github", "/hooks/github"),
        ("/hooks//%7Euser/./a?q=%2e", "/hooks//~user/a?q=%2e"),
        ("/hooks/x/../y", "/hooks/y"),
        ("/hooks/s3/bucket//key", "/hooks/s3/bucket//key"),
    ] {
        let a = get(path);
        assert_eq!(a.status, 200, "{path}: {}", text(&a));
        assert_eq!(a.headers["x-seen-path"], seen, "{path}");
    }
    // Spellings that leave the exempt prefix are challenged like any page.
    for path in [
        "/hooks/%2e%2e/admin",
        "/hooks/.%2E/admin",
        "/hooks/../admin",
        "/HOOKS/github",
        // Spellings some upstreams read as leaving the prefix: path parameters, backslashes,
        // encoded slashes.
        "/hooks/..;/admin",
        "/hooks/..%2Fadmin",
        "/hooks/..%5cadmin",
        "/hooks/..\\admin",
        // Over HTTPS the ACME path is the upstream's: no exemption.
        "/.well-known/acme-challenge/../../x",
        "/.well-known/acme-challenge/token",
    ] {
        let a = get(path);
        assert_eq!(a.status, 403, "{path}: {}", text(&a));
        assert_eq!(a.headers["x-palisade-mitigated"], "challenge", "{path}");
    }
    // A pattern the requests can never be in is refused, naming the entry.
    let mut bot = c.get(0, "/v1/projects/shop/bot").unwrap().body;
    bot["exempt_paths"] = json!(["/hooks/*", "/api/%7Ev1/../x*"]);
    let r = c.put(0, "/v1/projects/shop/bot", bot).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["field"], "exempt_paths[1]", "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("\"/api/x*\""),
        "{}",
        r.body
    );

    // A block outranks every exemption, robots.txt included.
    decide(
        &c,
        "shop",
        json!({ "prefix": "127.0.0.1", "action": "block", "minutes": 5 }),
        || get("/hooks/github").status == 403,
    );
    for path in [
        "/hooks/github",
        "/robots.txt",
        "/.well-known/palisade/verify?t=x",
    ] {
        let a = get(path);
        assert_eq!(a.status, 403, "{path}");
        assert!(
            !a.headers.contains_key("x-palisade-mitigated"),
            "{path}: a block, not a challenge"
        );
        assert!(
            text(&a).contains("not allowed from your network"),
            "{path}: {}",
            text(&a)
        );
    }
    // With bot protection switched off for the project, the block still holds.
    let mut bot = c.get(0, "/v1/projects/shop/bot").unwrap().body;
    bot["mode"] = json!("off");
    let r = c.put(0, "/v1/projects/shop/bot?wait=all", bot).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for path in ["/", "/hooks/github"] {
        let a = get(path);
        assert_eq!(a.status, 403, "{path}: {}", text(&a));
        assert!(text(&a).contains("not allowed from your network"), "{path}");
    }
}

#[test]
fn a_clearance_is_not_a_pass_for_abuse() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let mut c = TestCluster::start(
        bin(),
        1,
        &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .unwrap();
    let ca = shop(
        &c,
        up,
        "shop",
        "app.test",
        json!({ "mode": "automatic", "difficulty_bits": 8, "no_script_wait_seconds": 1,
                "answer_within_seconds": 30,
                "triggers": { "failed_logins": { "threshold": 5, "window_seconds": 600,
                                                 "challenge_seconds": 600 } } }),
    );
    let addr = c.nodes[0].https_addr.clone();
    let run = |client: &Client, path: &str| {
        let (cl, a, p) = (client.clone(), addr.clone(), path.to_string());
        rt.block_on(async move { cl.get(&a, "app.test", &p).await })
    };
    let browser = Client::browser(Some(&ca)).from("127.0.0.1");
    wait::until("the keyring", Duration::from_secs(30), || {
        (with_state(&keyring(&c, 0), "active").len() == 1).then_some(())
    })
    .unwrap();
    assert_eq!(run(&browser, "/").status, 200, "nothing is decided yet");

    // An operator challenges the client; it solves the page once.
    decide(
        &c,
        "shop",
        json!({ "prefix": "127.0.0.1", "minutes": 30 }),
        || run(&browser, "/").status == 403,
    );
    let solve_once = |client: &Client| {
        let p = page(&run(client, "/"));
        let a = run(client, &answer_path(&p, &solve(&p)));
        client.with_cookie(&clearance(&a))
    };
    let cleared = solve_once(&browser);
    assert_eq!(
        run(&cleared, "/").status,
        200,
        "the clearance passes the decision"
    );

    // 100 failed logins with that clearance: the threshold's worth reach the upstream, then
    // the trigger's new decision applies to the holder too (429 for an API client).
    let count = |client: &Client| {
        let api = client.api();
        let answers: Vec<u16> = (0..100).map(|_| run(&api, "/login").status).collect();
        let reached = answers.iter().filter(|&&s| s == 401).count();
        assert!(answers[reached..].iter().all(|&s| s == 429), "{answers:?}");
        reached
    };
    assert_eq!(count(&cleared), 5, "cut off after the threshold");
    let page_again = run(&cleared, "/");
    assert_eq!(page_again.status, 403, "a navigation is challenged again");
    assert_eq!(page_again.headers["x-palisade-mitigated"], "challenge");
    // Solving again buys one more threshold, no more.
    let again = solve_once(&browser);
    assert_eq!(count(&again), 5, "one solve, one threshold");
    wait::until(
        "the second decision audited",
        Duration::from_secs(10),
        || {
            let audit = c.get(0, "/v1/audit?action=bot.decision&limit=100").unwrap();
            audit
                .body
                .to_string()
                .contains("again after a solved challenge")
                .then_some(())
        },
    )
    .unwrap();
    // The cluster's copy holds it too: after a restart (this node's own memory gone) the first
    // clearance, earned before the trigger's decisions, still does not pass the operator's
    // longer one.
    c.kill(0);
    c.restart(0).unwrap();
    c.wait_ready(0, Duration::from_secs(30)).unwrap();
    wait::until("the edge listening again", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    })
    .unwrap();
    let after = wait::until(
        "the stored decision in force",
        Duration::from_secs(10),
        || {
            let a = run(&cleared, "/");
            (a.status == 403).then_some(a)
        },
    )
    .unwrap();
    assert_eq!(after.headers["x-palisade-mitigated"], "challenge");

    // Rotating inside one IPv6 /64 counts as one source: 100 addresses, one failed login each.
    let answers: Vec<u16> = (1..=100u32)
        .map(|i| {
            let mut client = Client::browser(Some(&ca)).api();
            client.forwarded_for = Some(format!("2001:db8:5:5::{i:x}"));
            run(&client, "/login").status
        })
        .collect();
    assert_eq!(
        answers.iter().filter(|&&s| s == 401).count(),
        5,
        "{answers:?}"
    );
    assert!(answers[5..].iter().all(|&s| s == 429), "{answers:?}");
    let mut other = Client::browser(Some(&ca)).api();
    other.forwarded_for = Some("2001:db8:5:6::1".into());
    assert_eq!(run(&other, "/").status, 200, "the next /64 is not decided");

    // The no-script wait passes while the project allows it, and stops passing when it does not.
    let waiter = Client::browser(Some(&ca)).from("127.0.0.9");
    decide(
        &c,
        "shop",
        json!({ "prefix": "127.0.0.9", "minutes": 30 }),
        || run(&waiter, "/").status == 403,
    );
    let p = page(&run(&waiter, "/"));
    std::thread::sleep(Duration::from_millis(1_100));
    let waited = waiter.with_cookie(&clearance(&run(&waiter, &p.wait_url)));
    assert_eq!(run(&waited, "/").status, 200);
    let mut bot = c.get(0, "/v1/projects/shop/bot").unwrap().body;
    assert_eq!(bot["allow_no_script"], true, "allowed by default");
    bot["allow_no_script"] = json!(false);
    let r = c.put(0, "/v1/projects/shop/bot?wait=all", bot).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Applied on every voter; each node's edge view follows from its store's change events.
    let a = wait::until(
        "a waited clearance no longer passing",
        Duration::from_secs(10),
        || {
            let a = run(&waited, "/");
            (a.status == 403).then_some(a)
        },
    )
    .unwrap();
    let body = text(&a);
    assert!(!body.contains("http-equiv=\"refresh\""), "{body}");
    assert!(body.contains("needs JavaScript"), "{body}");
    std::thread::sleep(Duration::from_millis(1_100));
    let refused = run(&waiter, &p.wait_url);
    assert_eq!(refused.status, 403);
    assert!(!refused.headers.contains_key("set-cookie"));
    assert!(
        text(&refused).contains("needs JavaScript"),
        "{}",
        text(&refused)
    );
    // The proof of work still earns a clearance.
    let worked = solve_once(&waiter);
    assert_eq!(run(&worked, "/").status, 200);
}

#[test]
fn login_paths_count_in_any_case_with_a_trailing_slash_or_parameters() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "shop", "name": "shop" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c
        .put(0, "/v1/domains/plain.test", json!({ "project": "shop", "upstreams": [up.to_string()], "tls": "off", "redirect_https": false }))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let policy = json!({ "mode": "automatic", "triggers": {
        "failed_logins": { "threshold": 4, "window_seconds": 600, "challenge_seconds": 600 } } });
    let r = c.put(0, "/v1/projects/shop/bot?wait=all", policy).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let addr = c.nodes[0].http_addr.clone();
    let client = Client::browser(None).api();
    rt.block_on(async {
        for path in ["/LOGIN", "/login/", "/Log%49n", "/login;jsessionid=1"] {
            assert_eq!(
                client.get(&addr, "plain.test", path).await.status,
                401,
                "{path}"
            );
        }
        let a = client.get(&addr, "plain.test", "/").await;
        assert_eq!(
            a.status,
            429,
            "four failed logins, however spelled: {}",
            text(&a)
        );
    });
}

// ---- a real browser ---------------------------------------------------------------------------

/// Headless Chromium driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(resolve: &str) -> Browser {
        use std::io::BufRead;
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--host-resolver-rules={resolve}"))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium runs (apt-get install -y chromium)");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut endpoint = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                endpoint = Some(url.trim().to_string());
                break;
            }
        }
        let endpoint = endpoint.expect("chromium printed its DevTools endpoint");
        let port = endpoint
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let page_ws = wait::until("the browser's page target", Duration::from_secs(20), || {
            let targets: Value = palisade_testkit::admin::agent()
                .get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json().ok())
                .unwrap_or(Value::Null);
            targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string)
        })
        .unwrap();
        let (ws, _) = tungstenite::connect(page_ws).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let ws = match ws.into_inner() {
            tungstenite::stream::MaybeTlsStream::Plain(s) => {
                tungstenite::WebSocket::from_raw_socket(
                    s,
                    tungstenite::protocol::Role::Client,
                    None,
                )
            }
            _ => unreachable!("a local endpoint is plain"),
        };
        Browser {
            child,
            ws,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Send one command and wait for its answer (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> String {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].as_str().unwrap_or("").to_string()
    }

    /// Open `url` and wait until the document is the upstream's page (1 KiB of `x`).
    fn open(&mut self, url: &str) -> String {
        self.call("Page.navigate", json!({ "url": url }));
        let mut seen = String::new();
        let reached = wait::until(
            "the browser to reach the page",
            Duration::from_secs(60),
            || {
                seen = self.eval("document.location.href + ' | ' + document.title + ' | ' + (document.body ? document.body.innerText.slice(0, 64) : '')");
                seen.contains("xxxxxxxxxxxxxxxx")
            },
        );
        reached.unwrap_or_else(|e| panic!("{e}: {seen}"));
        seen
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answered(c: &TestCluster, idx: usize) -> f64 {
    metric(c, idx, "palisade_bot_answers_total{outcome=\"accepted\"}")
}

#[test]
fn a_headless_browser_solves_the_challenge_once_and_every_node_honours_its_cookie() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    // The default difficulty: what a visitor meets.
    shop(&c, up, "shop", "app.test", json!({ "mode": "always_on" }));
    let port = |i: usize| {
        c.nodes[i]
            .https_addr
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    // Wait for the keyring, as a browser would meet it.
    wait::until("the keyring", Duration::from_secs(30), || {
        c.get(0, "/v1/bot/keys").unwrap().body["items"]
            .as_array()
            .is_some_and(|a| a.len() >= 2)
    })
    .unwrap();
    let mut b = Browser::start("MAP app.test 127.0.0.1");
    let started = Instant::now();
    let seen = b.open(&format!("https://app.test:{}/account?x=1", port(0)));
    let took = started.elapsed();
    assert!(
        seen.starts_with(&format!("https://app.test:{}/account?x=1 |", port(0))),
        "{seen}"
    );
    assert_eq!(
        answered(&c, 0),
        1.0,
        "the page was challenged and answered once"
    );
    let cookies = b.call("Network.getAllCookies", json!({}));
    let clearance = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "__Host-palisade_clearance")
        .unwrap_or_else(|| panic!("no clearance cookie: {cookies}"))
        .clone();
    assert_eq!(
        (
            clearance["secure"].as_bool(),
            clearance["httpOnly"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_eq!(clearance["sameSite"], "Lax");
    let log = c.nodes[0].log_text();
    let line = log
        .lines()
        .find(|l| l.contains("challenge answered"))
        .unwrap_or("")
        .to_string();
    eprintln!("browser solved the default challenge and landed in {took:?}; node log: {line}");

    // Later requests, and the other two nodes (cookies ignore the port): no new challenge.
    b.open(&format!("https://app.test:{}/later", port(0)));
    for i in 1..3 {
        let seen = b.open(&format!("https://app.test:{}/elsewhere", port(i)));
        assert!(seen.contains("/elsewhere"), "{seen}");
        assert_eq!(answered(&c, i), 0.0, "node index {i} challenged again");
    }
    assert_eq!(answered(&c, 0), 1.0);
}
