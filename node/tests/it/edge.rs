//! The edge through real node processes, with a real TLS client and real upstream servers.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use palisade_testkit::http::*;
use palisade_testkit::origin::upstream;
use palisade_testkit::pki::pki;
use palisade_testkit::{wait, TestCluster};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bin;

/// A project, a domain to `upstreams`, and a certificate for `hosts`; returns the CA PEM.
fn site(
    c: &TestCluster,
    node: usize,
    project: &str,
    host: &str,
    upstreams: &[String],
    hosts: &[&str],
) -> String {
    let r = c
        .post(
            node,
            "/v1/projects",
            json!({ "id": project, "name": project, "limits": { "max_body_bytes": 200u64 << 20 }, "bot": { "mode": "off" } }),
            None,
        )
        .unwrap();
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    let r = c
        .put(
            node,
            &format!("/v1/domains/{host}"),
            json!({ "project": project, "upstreams": upstreams }),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let pki = pki(hosts);
    let r = c
        .post(node, "/v1/certificates", json!({ "name": format!("{project}-{}", host.replace('*', "star")), "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }), None)
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    pki.ca_pem
}

fn assert_security_headers(h: &hyper::HeaderMap, https: bool) {
    if https {
        assert_eq!(
            h["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-xss-protection"], "1; mode=block");
}

#[test]
fn tls_headers_and_changes_reach_every_node() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("a"));
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "site", "name": "site", "bot": { "mode": "off" } }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c
        .put(
            0,
            "/v1/domains/a.edge.test",
            json!({ "project": "site", "upstreams": [up.to_string()] }),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let pki = pki(&["a.edge.test"]);
    // The certificate is written through another node than the domain.
    let t0 = Instant::now();
    let r = c
        .post(
            1,
            "/v1/certificates",
            json!({ "name": "a", "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let acked = t0.elapsed();
    for i in 0..3 {
        let addr = c.nodes[i].https_addr.clone();
        // A measurement, not a wait: polled every 5 ms, for the time it took.
        let seen = rt.block_on(async {
            let start = Instant::now();
            loop {
                if let Ok(a) = https_get(&addr, "a.edge.test", "/", &pki.ca_pem).await {
                    if a.status == 200 {
                        return Some(start.elapsed());
                    }
                }
                if start.elapsed() > Duration::from_secs(1) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let seen = seen.unwrap_or_else(|| {
            panic!("node index {i} did not serve the new certificate within 1 s of commit")
        });
        eprintln!("node index {i}: serving {seen:?} after the write was acknowledged ({acked:?} to acknowledge)");
    }

    // Body, headers, TLS 1.3, on every node.
    for i in 0..3 {
        let addr = c.nodes[i].https_addr.clone();
        let (a, version) = rt.block_on(async {
            let tls = tls_connect(
                &addr,
                "a.edge.test",
                client_config(
                    &pki.ca_pem,
                    &[&rustls::version::TLS13, &rustls::version::TLS12],
                ),
            )
            .await
            .unwrap();
            let version = tls.get_ref().1.protocol_version();
            (
                send(tls, get("a.edge.test", "/hello")).await.unwrap(),
                version,
            )
        });
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 1024);
        assert_eq!(a.headers["x-upstream"], "a");
        assert_security_headers(&a.headers, true);
        assert!(a.headers.contains_key("x-request-id"));
        // Plain HTTP: a permanent redirect to HTTPS, with the headers too.
        let h = rt
            .block_on(http_get(&c.nodes[i].http_addr, "a.edge.test", "/p?q=1"))
            .unwrap();
        assert_eq!(h.status, 308);
        assert_eq!(h.headers["location"], "https://a.edge.test/p?q=1");
        assert_security_headers(&h.headers, false);
    }

    // An unknown name fails the handshake; an unknown host with a known name gets 421.
    assert!(rt
        .block_on(https_get(
            &c.nodes[0].https_addr,
            "nobody.test",
            "/",
            &pki.ca_pem
        ))
        .is_err());
    let a = rt
        .block_on(async {
            let tls = tls_connect(
                &c.nodes[0].https_addr,
                "a.edge.test",
                client_config(&pki.ca_pem, &[&rustls::version::TLS13]),
            )
            .await?;
            send(tls, get("other.test", "/")).await
        })
        .unwrap();
    assert_eq!(a.status, 421);
    assert_security_headers(&a.headers, true);

    // TLS 1.2 works until the cluster says min_tls = 1.3.
    let tls12 = |addr: String| {
        let ca = pki.ca_pem.clone();
        rt.block_on(async move {
            tls_connect(
                &addr,
                "a.edge.test",
                client_config(&ca, &[&rustls::version::TLS12]),
            )
            .await
            .is_ok()
        })
    };
    assert!(tls12(c.nodes[2].https_addr.clone()));
    let r = c
        .put(0, "/v1/settings", json!({ "values": { "min_tls": "1.3" } }))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..3 {
        c.wait_for(Duration::from_secs(1), "TLS 1.2 refused", || {
            Ok((!tls12(c.nodes[i].https_addr.clone())).then_some(()))
        })
        .unwrap();
    }

    // Removing the domain stops routing it everywhere.
    let r = c.delete(2, "/v1/domains/a.edge.test").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..3 {
        let addr = c.nodes[i].https_addr.clone();
        c.wait_for(Duration::from_secs(1), "the domain to stop routing", || {
            Ok(rt
                .block_on(https_get(&addr, "a.edge.test", "/", &pki.ca_pem))
                .ok()
                .filter(|a| a.status == 421)
                .map(|_| ()))
        })
        .unwrap();
    }
}

#[test]
fn upstream_failures_and_bad_clients() {
    let env = [("PALISADE_EDGE_HEADER_READ_TIMEOUT_MS", "1000")];
    let c = TestCluster::start(bin(), 1, &env).unwrap();
    let rt_a = rt();
    let rt_b = rt();
    let (a, _) = rt_a.block_on(upstream("a"));
    let (b, _) = rt_b.block_on(upstream("b"));
    let ca = site(
        &c,
        0,
        "two",
        "two.test",
        &[a.to_string(), b.to_string()],
        &["two.test"],
    );
    let https = c.nodes[0].https_addr.clone();
    let rt = rt();
    let who = |path: &str| {
        rt.block_on(https_get(&https, "two.test", path, &ca))
            .map(|a| {
                (
                    a.status,
                    a.headers
                        .get("x-upstream")
                        .map(|v| v.to_str().unwrap().to_string()),
                    a,
                )
            })
    };

    c.wait_for(Duration::from_secs(2), "the site to be served", || {
        Ok(who("/").ok().filter(|w| w.0 == 200).map(|_| ()))
    })
    .unwrap();
    let seen: std::collections::HashSet<_> = (0..6).map(|_| who("/").unwrap().1.unwrap()).collect();
    assert_eq!(seen.len(), 2, "both targets get traffic: {seen:?}");

    // Kill target a: it is ejected, everything goes to b.
    rt_a.shutdown_background();
    c.wait_for(
        Duration::from_secs(5),
        "five answers in a row from b",
        || {
            Ok((0..5)
                .all(|_| who("/").ok().and_then(|w| w.1).as_deref() == Some("b"))
                .then_some(()))
        },
    )
    .unwrap();
    for _ in 0..20 {
        let (status, name, _) = who("/").unwrap();
        assert_eq!((status, name.as_deref()), (200, Some("b")));
    }

    // A forged X-Forwarded-For from an untrusted peer is ignored.
    let forged = rt
        .block_on(async {
            let tls = tls_connect(
                &https,
                "two.test",
                client_config(&ca, &[&rustls::version::TLS13]),
            )
            .await?;
            let mut req = get("two.test", "/");
            req.headers_mut()
                .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
            send(tls, req).await
        })
        .unwrap();
    assert_eq!(forged.headers["x-seen-xff"], "127.0.0.1");

    // Headers over the limit: 431. A body over the project's limit: 413.
    let big = rt
        .block_on(async {
            let tls = tls_connect(
                &https,
                "two.test",
                client_config(&ca, &[&rustls::version::TLS13]),
            )
            .await?;
            let mut req = get("two.test", "/");
            req.headers_mut()
                .insert("x-big", "y".repeat(70 << 10).parse().unwrap());
            send(tls, req).await
        })
        .unwrap();
    assert_eq!(big.status, 431);
    let too_long = rt.block_on(async {
        let tls = tls_connect(
            &https,
            "two.test",
            client_config(&ca, &[&rustls::version::TLS13]),
        )
        .await?;
        let req = hyper::Request::post("/upload")
            .header("host", "two.test")
            .header("content-length", (300u64 << 20).to_string())
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        send(tls, req).await
    });
    match too_long {
        Ok(a) => assert_eq!(a.status, 413),
        Err(e) => panic!("expected 413, got {e}"),
    }

    // Garbage on the TLS port and a client that sends its headers a byte at a time: both are
    // cut off, and a normal client is served meanwhile.
    let slow = rt.spawn({
        let https = https.clone();
        let ca = ca.clone();
        async move {
            let mut tls = tls_connect(&https, "two.test", client_config(&ca, &[&rustls::version::TLS13])).await.unwrap();
            let start = Instant::now();
            for b in b"GET / HTTP/1.1\r\nHost: two.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
                if tls.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if start.elapsed() > Duration::from_secs(8) {
                    break;
                }
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut rest)).await;
            (start.elapsed(), String::from_utf8_lossy(&rest).to_string())
        }
    });
    let garbage = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(&https).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9])
            .await
            .unwrap();
        s.write_all(&vec![0x42; 4096]).await.unwrap_or(());
        let mut buf = vec![0u8; 1024];
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
    });
    assert!(
        garbage.is_ok(),
        "the garbage connection was closed by the node"
    );
    assert_eq!(
        who("/").unwrap().0,
        200,
        "a normal client is served while the slow one waits"
    );
    let (elapsed, answer) = rt.block_on(slow).unwrap();
    assert!(
        elapsed < Duration::from_secs(8),
        "the slow client was cut off ({elapsed:?})"
    );
    assert!(
        !answer.contains("200 OK"),
        "the slow client must not get a response: {answer}"
    );

    // All targets down: 502 or 503, with a request id in the page and the header.
    rt_b.shutdown_background();
    let a = c
        .wait_for(
            Duration::from_secs(5),
            "an error page once every target is down",
            || {
                Ok(who("/")
                    .ok()
                    .filter(|w| w.0 == 502 || w.0 == 503)
                    .map(|w| w.2))
            },
        )
        .unwrap();
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        String::from_utf8_lossy(&a.body).contains(&id),
        "error page carries the request id"
    );
    assert_security_headers(&a.headers, true);
}

#[test]
fn websocket_and_large_bodies_stream_through() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let up_rt = rt();
    let (up, _) = up_rt.block_on(upstream("big"));
    let ca = site(&c, 0, "big", "big.test", &[up.to_string()], &["big.test"]);
    let https = c.nodes[0].https_addr.clone();
    let rt = rt();
    c.wait_for(Duration::from_secs(2), "the site to be served", || {
        Ok(rt
            .block_on(https_get(&https, "big.test", "/", &ca))
            .ok()
            .filter(|a| a.status == 200)
            .map(|_| ()))
    })
    .unwrap();

    // An upgraded connection is tunnelled both ways.
    let echoed = rt.block_on(async {
        let mut tls = tls_connect(&https, "big.test", client_config(&ca, &[&rustls::version::TLS13])).await.unwrap();
        tls.write_all(b"GET /ws HTTP/1.1\r\nHost: big.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls.write_all(b"ping through palisade").await.unwrap();
        let mut buf = vec![0u8; 21];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await.unwrap().unwrap();
        buf
    });
    assert_eq!(echoed, b"ping through palisade");

    let pid = c.nodes[0].pid().unwrap();
    let before = palisade_testkit::proc::peak_rss_kib(pid);
    const SIZE: usize = 100 << 20;
    // Download: count bytes as they arrive, never holding the body.
    let got = rt.block_on(async {
        let tls = tls_connect(
            &https,
            "big.test",
            client_config(&ca, &[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(get("big.test", &format!("/bytes/{SIZE}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n = 0usize;
        while let Some(f) = body.frame().await {
            n += f.unwrap().data_ref().map(|d| d.len()).unwrap_or(0);
        }
        n
    });
    assert_eq!(got, SIZE);
    // Upload: a streamed body of 100 MB.
    let counted = rt.block_on(async {
        let tls = tls_connect(
            &https,
            "big.test",
            client_config(&ca, &[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        let chunk = Bytes::from(vec![b'u'; 64 << 10]);
        let frames = futures::stream::iter(
            (0..SIZE / (64 << 10))
                .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
        );
        let req = hyper::Request::post("/upload")
            .header("host", "big.test")
            .header("content-length", SIZE.to_string())
            .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
            .unwrap();
        send(tls, req).await.unwrap()
    });
    assert_eq!(counted.status, 200);
    assert_eq!(String::from_utf8_lossy(&counted.body), SIZE.to_string());
    let after = palisade_testkit::proc::peak_rss_kib(pid);
    eprintln!("node peak RSS {before} KiB before, {after} KiB after moving 2 x 100 MiB");
    assert!(
        after < before + 64 * 1024,
        "proxy memory grew by {} KiB: bodies must stream",
        after - before
    );
}

/// Start `palisade dev`, run the curl line it prints, stop it; returns curl's output.
fn dev_run_and_curl(dir: &Path) -> String {
    use std::io::{BufRead, BufReader};
    let port = || format!("127.0.0.1:{}", palisade_testkit::net::free_port());
    let cluster = port();
    let mut child = std::process::Command::new(bin())
        .args(["dev", "--data-dir", dir.to_str().unwrap()])
        .args([
            "--https-addr",
            &port(),
            "--http-addr",
            &port(),
            "--admin-addr",
            &port(),
            "--cluster-addr",
            &cluster,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let curl = wait::until(
        "palisade dev to print its curl line",
        Duration::from_secs(60),
        || match rx.recv_timeout(wait::POLL) {
            Ok(line) if line.trim_start().starts_with("curl ") => Some(line.trim().to_string()),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("palisade dev ended before printing its curl line")
            }
        },
    )
    .unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &curl])
        .output()
        .unwrap();
    // Ctrl-C stops it cleanly.
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "palisade dev exit: {status:?}");
    assert!(
        out.status.success(),
        "{curl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[test]
fn palisade_dev_prints_a_curl_line_that_works_and_reuses_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..2 {
        let text = dev_run_and_curl(dir.path());
        assert!(
            text.starts_with("http/1.1 200") || text.starts_with("http/2 200"),
            "run {run}: {text}"
        );
        assert!(
            text.contains("strict-transport-security: max-age=31536000; includesubdomains"),
            "{text}"
        );
        assert!(text.contains("x-content-type-options: nosniff"), "{text}");
        assert!(text.contains("x-frame-options: deny"), "{text}");
        assert!(text.contains("x-xss-protection: 1; mode=block"), "{text}");
        assert!(text.contains("hello from the demo upstream"), "{text}");
    }
}

/// One raw HTTP/1.1 request on a fresh connection; the status line's code (0 when none).
fn raw_status(addr: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn client_sent_forwarding_headers_never_reach_the_upstream() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("echo"));
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let ca = site(&c, 0, "fwd", "fwd.test", &[up.to_string()], &["fwd.test"]);
    let https = c.nodes[0].https_addr.clone();
    let echo = |c: &TestCluster| -> serde_json::Value {
        let mut req = get("fwd.test", "/echo");
        #[rustfmt::skip]
        let claims = [
            ("forwarded", "for=6.6.6.6;proto=https;host=evil.test"),
            ("x-real-ip", "6.6.6.6"), ("true-client-ip", "6.6.6.6"), ("cf-connecting-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"), ("x-client-ip", "6.6.6.6"), ("x-cluster-client-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"), ("x-forwarded-host", "evil.test"), ("x-forwarded-proto", "gopher"),
            ("x-forwarded-port", "6666"), ("x-forwarded-prefix", "/evil"), ("x-forwarded-server", "evil.test"),
            ("x-forwarded-ssl", "on"), ("front-end-https", "on"), ("x-original-url", "/evil"), ("x-rewrite-url", "/evil"),
        ];
        for (name, value) in claims {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
        let _ = c;
        let a = rt.block_on(async {
            let tls = tls_connect(
                &https,
                "fwd.test",
                client_config(&ca, &[&rustls::version::TLS13]),
            )
            .await
            .unwrap();
            send(tls, req).await.unwrap()
        });
        assert_eq!(a.status, 200);
        serde_json::from_slice(&a.body).unwrap()
    };
    let seen = echo(&c);
    let text = seen.to_string();
    for claim in ["6.6.6.6", "evil", "gopher", "6666"] {
        assert!(
            !text.contains(claim),
            "the upstream saw the client's {claim:?}: {seen:#}"
        );
    }
    for name in [
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-original-url",
        "front-end-https",
    ] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen:#}"
        );
    }
    // What the edge says instead, from the client it resolved.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen:#}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen:#}");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "fwd.test");

    // A project that asks for RFC 7239's header gets the edge's own.
    let r = c
        .patch(
            0,
            "/v1/projects/fwd",
            json!({ "headers": { "forwarded": true } }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = echo(&c);
    assert_eq!(
        seen["forwarded"], "for=127.0.0.1;proto=https;host=\"fwd.test\"",
        "{seen:#}"
    );
}

#[test]
fn a_host_that_is_not_a_host_name_is_refused_before_routing() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    site(
        &c,
        0,
        "wild",
        "*.wild.test",
        &[up.to_string()],
        &["*.wild.test"],
    );
    let http = c.nodes[0].http_addr.clone();
    let req = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // A name the wildcard covers is routed (to its HTTPS redirect); look-alikes are not.
    #[rustfmt::skip]
    let cases = [
        ("shop.wild.test", 308), ("SHOP.Wild.Test.", 308), ("shop.wild.test:80", 308),
        ("evil%2ecom/.wild.test", 400), ("evil.com/.wild.test", 400), ("evil.com?.wild.test", 400),
        ("evil.com#.wild.test", 400), ("a b.wild.test", 400), ("-x.wild.test", 400),
        ("x..wild.test", 400), ("x_y.wild.test", 400), ("shop.wild.test:http", 400),
        ("127.0.0.1", 404), ("[::1]", 404),
    ];
    for (host, want) in cases {
        assert_eq!(raw_status(&http, &req(host)), want, "Host: {host}");
    }
}

#[test]
fn an_upstream_cannot_be_the_private_side() {
    use std::sync::atomic::Ordering;
    let rt = rt();
    let (origin, connections) = rt.block_on(closing_origin(None));
    // As in production: no allowance for loopback on the node.
    let c =
        TestCluster::start(bin(), 1, &[("PALISADE_EDGE_UPSTREAM_ALLOWED_NETWORKS", "")]).unwrap();
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "shop", "name": "shop", "bot": { "mode": "off" } }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let domain = |host: &str, upstream: &str| {
        let body = json!({ "project": "shop", "upstreams": [upstream], "redirect_https": false });
        c.put(0, &format!("/v1/domains/{host}"), body).unwrap()
    };
    let admin = c.nodes[0].admin_addr.clone();
    let admin_port = admin.rsplit_once(':').unwrap().1.to_string();

    // Addresses on the private side are refused when the domain is written, naming the field.
    #[rustfmt::skip]
    let refused = [
        (admin.clone(), "one of the node's own listeners"),
        (format!("0.0.0.0:{admin_port}"), "the unspecified address"),
        (c.nodes[0].http_addr.clone(), "one of the node's own listeners"),
        (origin.to_string(), "a loopback address"),
        ("[::1]:8080".into(), "a loopback address"),
        ("[::ffff:127.0.0.1]:8080".into(), "a loopback address"),
        ("169.254.169.254:80".into(), "a cloud metadata address"),
        ("[fd00:ec2::254]:80".into(), "a cloud metadata address"),
        ("100.100.100.200:80".into(), "a cloud metadata address"),
        ("169.254.1.1:80".into(), "a link-local address"),
        ("[fe80::1]:80".into(), "a link-local address"),
        ("0.0.0.0:8080".into(), "the unspecified address"),
    ];
    for (upstream, why) in &refused {
        let r = domain("a.test", upstream);
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (400, Some("upstreams[0]")),
            "{upstream}: {}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains(why),
            "{upstream}: {}",
            r.body
        );
    }

    // A name is the edge's to check, on every address it resolves to: `localhost` is accepted
    // as a name, and the edge never connects to what it resolves to.
    let by_name = format!("localhost:{}", origin.port());
    let r = domain("name.test", &by_name);
    assert_eq!(r.status, 201, "{}", r.body);
    let http = c.nodes[0].http_addr.clone();
    let fetch = |host: &str| rt.block_on(http_get(&http, host, "/")).unwrap();
    for _ in 0..5 {
        let a = fetch("name.test");
        assert!(a.status == 502 || a.status == 503, "{}", a.status);
    }
    // Several health-check rounds have run by now, too.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the edge connected to loopback"
    );

    // The settings check what they are given.
    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "edge.upstream_allowed_networks": "127.0.0.0/33" } }),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("values.edge.upstream_allowed_networks")),
        "{}",
        r.body
    );

    // The owner allows loopback for the whole cluster: the name now reaches the origin, and so
    // may an address; the node's own listeners stay refused.
    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "edge.upstream_allowed_networks": "127.0.0.0/8, ::1/128" } }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait::until(
        "the name reaches its origin",
        Duration::from_secs(10),
        || fetch("name.test").status == 200,
    )
    .unwrap();
    assert!(connections.load(Ordering::SeqCst) > 0);
    let r = domain("addr.test", &origin.to_string());
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(fetch("addr.test").status, 200);
    let r = domain("self.test", &admin);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("never proxies to itself"),
        "{}",
        r.body
    );
}

#[test]
fn a_certificate_bound_to_a_project_is_served_for_its_domains_only() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("bound"));
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    for id in ["a", "b"] {
        let r = c
            .post(
                0,
                "/v1/projects",
                json!({ "id": id, "name": id, "bot": { "mode": "off" } }),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for (host, project) in [("shop.b.example", "b"), ("evil.b.example", "a")] {
        let r = c
            .put(
                0,
                &format!("/v1/domains/{host}"),
                json!({ "project": project, "upstreams": [up.to_string()] }),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let pki = pki(&["*.b.example"]);
    let upload = |project: &str| {
        let body = json!({ "name": "b-wild", "chain_pem": pki.chain_pem, "key_pem": pki.key_pem, "project": project });
        c.post(0, "/v1/certificates", body, None).unwrap()
    };
    let r = upload("nope");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = upload("b");
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.get(0, "/v1/certificates").unwrap();
    assert_eq!(r.body["items"][0]["project"], "b", "{}", r.body);

    let https = c.nodes[0].https_addr.clone();
    let fetch = |host: &str| rt.block_on(https_get(&https, host, "/", &pki.ca_pem));
    let served = wait::until(
        "project b's name is served",
        Duration::from_secs(10),
        || fetch("shop.b.example").ok().map(|a| a.status),
    );
    assert_eq!(served.unwrap(), 200);
    // Project a's name under the same wildcard gets no certificate of project b's.
    let err = fetch("evil.b.example")
        .err()
        .expect("project a's name got b's certificate");
    assert!(
        err.to_string().to_lowercase().contains("alert") || err.to_string().contains("handshake"),
        "{err}"
    );
}

/// An origin that answers each request 200 with a body and keep-alive framing, then closes the
/// connection `close_after` later without having said it would (as an upstream whose
/// keep-alive timeout ran out does); counts the connections it is sent.
async fn closing_origin(
    close_after: Option<Duration>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                    if let Some(after) = close_after {
                        tokio::time::sleep(after).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[test]
fn upstream_connections_are_reused_and_closed_ones_replaced() {
    use std::sync::atomic::Ordering;
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let rt = rt();
    let (keeps, kept) = rt.block_on(closing_origin(None));
    let (closes, closed) = rt.block_on(closing_origin(Some(Duration::from_millis(20))));
    let ca_keeps = site(
        &c,
        0,
        "keeps",
        "keeps.test",
        &[keeps.to_string()],
        &["keeps.test"],
    );
    let ca_closes = site(
        &c,
        0,
        "closes",
        "closes.test",
        &[closes.to_string()],
        &["closes.test"],
    );
    let https = c.nodes[0].https_addr.clone();
    let get = |host: &str| {
        let ca = if host == "keeps.test" {
            &ca_keeps
        } else {
            &ca_closes
        };
        rt.block_on(https_get(&https, host, "/", ca))
            .map(|a| (a.status, a.body))
            .unwrap_or((0, Bytes::new()))
    };
    c.wait_for(Duration::from_secs(5), "both sites to be served", || {
        let up = |h| get(h).0 == 200;
        Ok((up("keeps.test") && up("closes.test")).then_some(()))
    })
    .unwrap();

    // Forty requests, each on a new client connection: the worker that takes a client
    // connection hands its request to an idle upstream connection of its own. Health checks
    // connect too (a connection each, about one a second).
    let (before, started) = (kept.load(Ordering::SeqCst), Instant::now());
    for _ in 0..40 {
        assert_eq!(get("keeps.test"), (200, Bytes::from_static(b"hello")));
    }
    let checks = started.elapsed().as_secs() as usize + 1;
    let made = kept.load(Ordering::SeqCst) - before;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        made <= workers + checks,
        "{made} upstream connections for 40 requests ({workers} workers, {checks} health checks)"
    );

    // An upstream that closes each connection after its answer, without saying so: the closed
    // connection is found before a request is sent on it, and every request is answered.
    let before = closed.load(Ordering::SeqCst);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            get("closes.test"),
            (200, Bytes::from_static(b"hello")),
            "request {i}"
        );
    }
    assert!(closed.load(Ordering::SeqCst) - before >= 10);
}
