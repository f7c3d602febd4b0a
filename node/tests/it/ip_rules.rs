//! IP allow and block lists through real node processes: what the edge lets through, on every
//! node, from which address, how fast a change arrives, expiry, and a million entries.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use palisade_testkit::iprules::{self, BigList};
use palisade_testkit::probe::{Probe, Upstream};
use palisade_testkit::stats::{ms, percentile};
use palisade_testkit::{wait, TestCluster};
use serde_json::{json, Value};

use super::bin;

const TRUSTED: (&str, &str) = ("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32");

fn add(c: &TestCluster, node: usize, scope: &str, body: Value) -> Value {
    let r = c
        .post(node, &format!("{scope}/ip-rules"), body.clone(), None)
        .unwrap();
    assert_eq!(r.status, 201, "{body} -> {}", r.body);
    r.body
}

/// Status of `GET /` for `host` on every node, as a trusted proxy forwarding for `client`.
fn statuses(probes: &mut [Probe], host: &str, client: &str) -> Vec<u16> {
    probes
        .iter_mut()
        .map(|p| p.status(host, Some(client)).unwrap())
        .collect()
}

fn check(c: &TestCluster, node: usize, project: &str, ip: &str) -> Value {
    let r = c
        .get(
            node,
            &format!("/v1/projects/{project}/ip-rules/check?ip={ip}"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn lists_decide_exactly_at_their_boundaries_in_order_on_every_node() {
    let up = Upstream::spawn().unwrap();
    let c = TestCluster::start(bin(), 3, &[TRUSTED]).unwrap();
    iprules::site(&c, 0, "shop", "shop.test", up.addr).unwrap();
    iprules::site(&c, 0, "other", "other.test", up.addr).unwrap();
    let shop = "/v1/projects/shop";
    let mut probes: Vec<Probe> = iprules::probes(&c);
    let settle = |probes: &mut [Probe], host: &str, xff: &str, want: u16| {
        iprules::until_every_node(probes, host, xff, want, Duration::from_secs(5)).unwrap()
    };
    // Written through different nodes; each is acknowledged only once committed.
    #[rustfmt::skip]
    let entries = [
        (1, shop, json!({ "list": "block", "cidr": "10.1.2.0/24", "note": "scanner" })),
        (2, shop, json!({ "list": "block", "cidr": "2001:db8:1::/48" })),
        (0, shop, json!({ "list": "block", "cidr": "192.0.2.7" })),
    ];
    for (node, scope, body) in entries {
        add(&c, node, scope, body);
    }
    // Let every node take the last write in (the API answered once it was committed).
    settle(&mut probes, "shop.test", "192.0.2.7", 403);

    // A block list refuses exactly its members: first and last address of each range, and the
    // addresses just outside; IPv4-mapped IPv6 is IPv4. Another project is untouched by it.
    #[rustfmt::skip]
    let blocked = [
        ("shop.test", "10.1.2.0", 403), ("shop.test", "10.1.2.255", 403),
        ("shop.test", "10.1.1.255", 200), ("shop.test", "10.1.3.0", 200),
        ("shop.test", "::ffff:10.1.2.9", 403),
        ("shop.test", "192.0.2.7", 403), ("shop.test", "192.0.2.6", 200), ("shop.test", "192.0.2.8", 200),
        ("shop.test", "2001:db8:1::", 403), ("shop.test", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", 403),
        ("shop.test", "2001:db8:0:ffff:ffff:ffff:ffff:ffff", 200), ("shop.test", "2001:db8:2::", 200),
        ("other.test", "10.1.2.3", 200),
    ];
    for (host, addr, want) in blocked {
        assert_eq!(
            statuses(&mut probes, host, addr),
            vec![want; 3],
            "{host} {addr}"
        );
    }

    // An allow list admits exactly its members; the block list still wins inside it; the
    // cluster-wide list comes first of all. Every node's dry run gives the same reason.
    add(
        &c,
        0,
        shop,
        json!({ "list": "allow", "cidr": "10.0.0.0/8" }),
    );
    add(
        &c,
        1,
        shop,
        json!({ "list": "allow", "cidr": "2001:db8::/32" }),
    );
    add(&c, 2, "/v1/cluster", json!({ "cidr": "10.200.0.1" }));
    settle(&mut probes, "shop.test", "10.200.0.1", 403);
    #[rustfmt::skip]
    let ordered = [
        ("10.0.0.0", 200, "project_allow"),
        ("10.255.255.255", 200, "project_allow"),
        ("9.255.255.255", 403, "not_in_allow_list"),
        ("11.0.0.0", 403, "not_in_allow_list"),
        ("::ffff:10.5.5.5", 200, "project_allow"),
        ("10.1.2.3", 403, "project_block"),
        ("10.200.0.1", 403, "cluster_block"),
        ("2001:db8:ffff::1", 200, "project_allow"),
        ("2001:db8:1::5", 403, "project_block"),
        ("2001:db9::", 403, "not_in_allow_list"),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 403, "not_in_allow_list"),
    ];
    for (addr, want, reason) in ordered {
        assert_eq!(
            statuses(&mut probes, "shop.test", addr),
            vec![want; 3],
            "{addr}"
        );
        for node in 0..3 {
            let v = check(&c, node, "shop", addr);
            assert_eq!(v["reason"], reason, "{addr} on node {node}: {v}");
            assert_eq!(v["allowed"], want == 200);
        }
    }
    // The dry run names the deciding entry, with its note.
    let v = check(&c, 1, "shop", "10.1.2.200");
    assert_eq!(
        (v["rule"]["cidr"].as_str(), v["rule"]["note"].as_str()),
        (Some("10.1.2.0/24"), Some("scanner")),
        "{v}"
    );
    assert_eq!(
        check(&c, 2, "shop", "10.200.0.1")["rule"]["cidr"],
        "10.200.0.1/32"
    );
    // The cluster-wide list reaches every project.
    assert_eq!(
        statuses(&mut probes, "other.test", "10.200.0.1"),
        vec![403; 3]
    );

    // X-Forwarded-For counts only from a trusted peer: from 127.0.0.2 it is ignored, so the
    // socket address (outside the allow list) decides. Hops after the client are walked from
    // the right: a client cannot hide behind a prepended address.
    let http0: SocketAddr = c.nodes[0].http_addr.parse().unwrap();
    #[rustfmt::skip]
    let forwarded = [
        (Some("127.0.0.2"), "shop.test", "10.0.0.1", 403),
        (Some("127.0.0.2"), "other.test", "10.200.0.1", 200),
        (None, "shop.test", "10.0.0.1", 200),
        (None, "shop.test", "10.0.0.1, 11.0.0.1", 403),
    ];
    for (source, host, xff, want) in forwarded {
        let got = match source {
            Some(s) => Probe::new(http0, Some(s.parse().unwrap())).status(host, Some(xff)),
            None => probes[0].status(host, Some(xff)),
        };
        assert_eq!(got.unwrap(), want, "from {source:?}: {host} {xff}");
    }

    // The refusal page: request id, nothing about the rules, JSON when asked for.
    let raw = raw_get(http0, "shop.test", "11.0.0.1", "application/json");
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(
        !raw.contains("10.0.0.0") && !raw.contains("allow_list") && !raw.contains("rule"),
        "{raw}"
    );
    assert!(
        raw.to_ascii_lowercase().contains("x-frame-options: deny"),
        "{raw}"
    );
    let html = raw_get(http0, "shop.test", "11.0.0.1", "text/html");
    assert!(
        html.contains("text/html") && html.contains("Request id"),
        "{html}"
    );

    // ACME HTTP-01 is answered even behind an allow list (the CA is not on it).
    let acme = raw_get_path(
        http0,
        "shop.test",
        "11.0.0.1",
        "/.well-known/acme-challenge/abc",
    );
    assert!(acme.starts_with("HTTP/1.1 404"), "{acme}");

    // Removing the entry lifts it everywhere.
    let r = c
        .delete(1, "/v1/projects/shop/ip-rules?list=block&cidr=10.1.2.0/24")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    settle(&mut probes, "shop.test", "10.1.2.3", 200);

    // Refusals are counted by project, list and stage.
    let (status, text) = c.get_text(0, "/metrics").unwrap();
    assert_eq!(status, 200);
    for list in ["project_block", "not_in_allow_list", "cluster_block"] {
        let series = format!(
            "palisade_ip_denied_total{{project=\"shop\",list=\"{list}\",stage=\"request\"}}"
        );
        assert!(text.contains(&series), "{series} missing from:\n{text}");
    }
    // Request durations are histograms with fixed buckets (which add up across nodes), not
    // per-node summaries.
    for line in [
        "palisade_request_duration_seconds_bucket{le=\"0.0005\"}",
        "palisade_request_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains("palisade_request_duration_seconds{quantile="),
        "request durations are still a summary:\n{text}"
    );

    // Every change is in the audit log, with the key that made it.
    let audit = c.get(2, "/v1/audit?action=ip_rule.add&limit=1000").unwrap();
    let adds = audit.body["items"].as_array().unwrap();
    assert_eq!(adds.len(), 6, "{}", audit.body);
    assert!(adds
        .iter()
        .all(|a| a["actor"].as_str().unwrap().starts_with("key:")));
    let removes = c.get(0, "/v1/audit?action=ip_rule.remove").unwrap();
    assert_eq!(removes.body["items"].as_array().unwrap().len(), 1);

    // Bad input is named.
    #[rustfmt::skip]
    let bad = [
        ("/v1/projects/shop/ip-rules", json!({ "list": "block", "cidr": "10.0.0.0/33" }), 400, "cidr"),
        ("/v1/projects/shop/ip-rules", json!({ "list": "block", "cidr": "" }), 400, "cidr"),
        ("/v1/projects/shop/ip-rules", json!({ "list": "deny", "cidr": "10.0.0.1" }), 400, "list"),
        ("/v1/projects/shop/ip-rules", json!({ "list": "block", "cidr": "10.0.0.1", "ttl_seconds": 0 }), 400, "ttl_seconds"),
        ("/v1/projects/shop/ip-rules", json!({ "list": "block", "cidr": "10.0.0.1", "expires_at": 5 }), 400, "expires_at"),
        ("/v1/projects/shop/ip-rules", json!({ "list": "block", "cidr": "10.0.0.1", "colour": "red" }), 400, "colour"),
        ("/v1/cluster/ip-rules", json!({ "list": "allow", "cidr": "10.0.0.1" }), 400, "list"),
        ("/v1/projects/nope/ip-rules", json!({ "list": "block", "cidr": "10.0.0.1" }), 404, ""),
    ];
    for (path, body, status, field) in bad {
        let r = c.post(0, path, body.clone(), None).unwrap();
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        if !field.is_empty() {
            assert_eq!(r.body["field"], field, "{body}: {}", r.body);
        }
    }

    // The command line: import a file with a bad line (refused whole, by line number), then the
    // good file, list, check, export.
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (dir.path().join("bad.txt"), dir.path().join("good.csv"));
    std::fs::write(
        &bad,
        "# scanners\n203.0.113.0/24\n203.0.113.300\n\n2001:db8:bad::/48\n",
    )
    .unwrap();
    std::fs::write(
        &good,
        "cidr,note\n203.0.113.0/24,\"scanner, noisy\"\n2001:db8:bad::/48,\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["ip"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin", &c.nodes[1].admin_addr, "--key", &c.key]);
        c.run_cli(&all).unwrap()
    };
    let out = cli(&[
        "import",
        "-p",
        "other",
        "--list",
        "block",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("203.0.113.300"),
        "{err}"
    );
    assert_eq!(
        statuses(&mut probes, "other.test", "203.0.113.5"),
        vec![200; 3]
    );
    let out = cli(&[
        "import",
        "-p",
        "other",
        "--list",
        "block",
        good.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 2 entries"));
    settle(&mut probes, "other.test", "203.0.113.5", 403);
    let text =
        String::from_utf8_lossy(&cli(&["check", "-p", "other", "203.0.113.9"]).stdout).to_string();
    assert!(
        text.contains("refused")
            && text.contains("203.0.113.0/24")
            && text.contains("scanner, noisy"),
        "{text}"
    );
    let csv = String::from_utf8_lossy(&cli(&["export", "-p", "other", "--list", "block"]).stdout)
        .to_string();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("203.0.113.0/24,\"scanner, noisy\","), "{csv}");
    let out = cli(&["ls", "-p", "other"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2001:db8:bad::/48"));
}

fn raw_get(addr: SocketAddr, host: &str, xff: &str, accept: &str) -> String {
    raw(addr, &format!("GET / HTTP/1.1\r\nhost: {host}\r\nx-forwarded-for: {xff}\r\naccept: {accept}\r\nconnection: close\r\n\r\n"))
}

fn raw_get_path(addr: SocketAddr, host: &str, xff: &str, path: &str) -> String {
    raw(addr, &format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nx-forwarded-for: {xff}\r\nconnection: close\r\n\r\n"))
}

fn raw(addr: SocketAddr, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Connect from `source`, optionally send `first`, and report how the server ended the
/// connection: `Closed` (EOF or reset, and how soon) or `Open` (still waiting after `wait`).
#[derive(Debug, PartialEq)]
enum Fate {
    Closed,
    Open,
}

fn fate(target: SocketAddr, source: &str, first: &[u8], wait: Duration) -> (Fate, Vec<u8>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect(&target.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(first);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (Fate::Closed, buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (Fate::Closed, buf)
            }
            Err(_) => return (Fate::Open, buf),
        }
    }
}

fn proxy_v1(src: &str, dst: SocketAddr) -> String {
    format!("PROXY TCP4 {src} {} 40000 {}\r\n", dst.ip(), dst.port())
}

#[test]
fn the_cluster_list_closes_connections_before_tls_and_only_trusted_peers_name_the_source() {
    let up = Upstream::spawn().unwrap();
    let c = TestCluster::start(
        bin(),
        1,
        &[TRUSTED, ("PALISADE_EDGE_PROXY_PROTOCOL", "true")],
    )
    .unwrap();
    iprules::site(&c, 0, "shop", "shop.test", up.addr).unwrap();
    add(&c, 0, "/v1/cluster", json!({ "cidr": "127.0.0.9" }));
    add(&c, 0, "/v1/cluster", json!({ "cidr": "198.51.100.0/24" }));
    let https: SocketAddr = c.nodes[0].https_addr.parse().unwrap();
    let http: SocketAddr = c.nodes[0].http_addr.parse().unwrap();
    let wait = Duration::from_millis(700);

    // A blocked socket address is closed at accept: before it has sent a byte, nothing comes
    // back and the connection ends at once; an unblocked one is left waiting for its
    // ClientHello (the handshake timeout is ten seconds).
    let t = Instant::now();
    assert_eq!(fate(https, "127.0.0.9", b"", wait), (Fate::Closed, vec![]));
    assert!(t.elapsed() < wait, "closed only after {:?}", t.elapsed());
    assert_eq!(fate(https, "127.0.0.10", b"", wait).0, Fate::Open);
    assert_eq!(fate(http, "127.0.0.9", b"", wait), (Fate::Closed, vec![]));
    let (_, text) = c.get_text(0, "/metrics").unwrap();
    assert!(
        text.contains(
            "palisade_ip_denied_total{project=\"*\",list=\"cluster_block\",stage=\"accept\"} 2"
        ),
        "{text}"
    );

    // From the trusted load balancer (127.0.0.1) the PROXY header names the client: a blocked
    // source is closed right after the header, before any TLS; an allowed one is served.
    let (f, got) = fate(
        https,
        "127.0.0.1",
        proxy_v1("198.51.100.20", https).as_bytes(),
        wait,
    );
    assert_eq!((f, got), (Fate::Closed, vec![]));
    let req = |src: &str| {
        format!(
            "{}GET / HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n",
            proxy_v1(src, http)
        )
    };
    let (_, got) = fate(http, "127.0.0.1", req("198.51.100.20").as_bytes(), wait);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let (_, got) = fate(http, "127.0.0.1", req("203.0.113.20").as_bytes(), wait);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // From an untrusted peer a PROXY header is not believed: it is not read as one, so the
    // request is malformed, and the blocked-looking source changes nothing either way.
    let (_, got) = fate(http, "127.0.0.3", req("203.0.113.20").as_bytes(), wait);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let mut direct = Probe::new(http, Some("127.0.0.3".parse().unwrap()));
    assert_eq!(direct.status("shop.test", None).unwrap(), 200);
    // ...and a trusted peer that sends no header is refused too (the header is required).
    let mut bare = Probe::new(http, None);
    assert!(bare.status("shop.test", None).is_err());

    // Lifting the block lets the address in again.
    let r = c.delete(0, "/v1/cluster/ip-rules?cidr=127.0.0.9").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait::until(
        "127.0.0.9 to be let in again",
        Duration::from_secs(5),
        || {
            let mut again = Probe::new(http, Some("127.0.0.9".parse().unwrap()));
            again.status("shop.test", None).is_ok_and(|s| s == 200)
        },
    )
    .unwrap();
}

#[test]
fn an_entry_stops_matching_on_every_node_at_its_expiry_and_is_swept_later() {
    let up = Upstream::spawn().unwrap();
    let c = TestCluster::start(
        bin(),
        3,
        &[TRUSTED, ("PALISADE_EDGE_RULE_SWEEP_INTERVAL_MS", "500")],
    )
    .unwrap();
    iprules::site(&c, 0, "shop", "shop.test", up.addr).unwrap();
    iprules::site(&c, 0, "intranet", "intranet.test", up.addr).unwrap();
    let mut probes: Vec<Probe> = iprules::probes(&c);
    let v = add(
        &c,
        1,
        "/v1/projects/shop",
        json!({ "list": "block", "cidr": "10.7.7.0/24", "ttl_seconds": 3 }),
    );
    let expires_at = v["rule"]["expires_at"].as_u64().unwrap();
    // A permanent, wider entry the expiring one sits inside, and a lapsing allow list.
    add(
        &c,
        2,
        "/v1/projects/intranet",
        json!({ "list": "allow", "cidr": "10.8.0.0/16", "ttl_seconds": 3 }),
    );
    iprules::until_every_node(
        &mut probes,
        "shop.test",
        "10.7.7.7",
        403,
        Duration::from_secs(2),
    )
    .unwrap();
    iprules::until_every_node(
        &mut probes,
        "intranet.test",
        "10.8.0.1",
        200,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(
        statuses(&mut probes, "intranet.test", "10.9.0.1"),
        vec![403; 3]
    );

    // Every node lets the address through from the expiry on, with no write in between.
    iprules::until_every_node(
        &mut probes,
        "shop.test",
        "10.7.7.7",
        200,
        Duration::from_secs(6),
    )
    .unwrap();
    let now = palisade_raft::now_ms();
    assert!(
        now >= expires_at,
        "let through {} ms before the expiry",
        expires_at - now
    );
    assert!(
        now < expires_at + 1_000,
        "let through {} ms after the expiry",
        now - expires_at
    );
    // A lapsed allow list still closes its project (failing open would let everyone in).
    iprules::until_every_node(
        &mut probes,
        "intranet.test",
        "10.8.0.1",
        403,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(
        statuses(&mut probes, "intranet.test", "10.9.0.1"),
        vec![403; 3]
    );

    // The leader then removes the expired block entry from the store, in the audit log as the
    // node's doing; the lapsed allow entry stays.
    let swept = wait::until(
        "the expired entry to be swept",
        Duration::from_secs(10),
        || {
            let r = c.get(0, "/v1/projects/shop/ip-rules").unwrap();
            r.body["items"].as_array().is_some_and(|i| i.is_empty())
        },
    );
    swept.unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            c.get(0, "/v1/projects/shop/ip-rules").unwrap().body
        )
    });
    let audit = c.get(2, "/v1/audit?action=ip_rule.expire").unwrap();
    let sweeps = audit.body["items"].as_array().unwrap();
    assert!(
        !sweeps.is_empty() && sweeps[0]["actor"].as_str().unwrap().starts_with("node:"),
        "{}",
        audit.body
    );
    let r = c.get(1, "/v1/projects/intranet/ip-rules").unwrap();
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
}

#[test]
fn a_rule_reaches_every_node_in_milliseconds_even_beside_a_million_entries() {
    let up = Upstream::spawn().unwrap();
    let c = TestCluster::start(bin(), 3, &[TRUSTED]).unwrap();
    iprules::site(&c, 0, "shop", "shop.test", up.addr).unwrap();
    iprules::site(&c, 0, "big", "big.test", up.addr).unwrap();

    // 1. Propagation: 100 rules added through node 2, each timed until all three refuse.
    let s = iprules::propagation(&c, 1, "shop", "shop.test", 100, 1).unwrap();
    eprintln!(
        "propagation, 100 trials: median {} p99 {} max {}",
        ms(percentile(&s, 50.0)),
        ms(percentile(&s, 99.0)),
        ms(*s.last().unwrap())
    );

    // 2. A million entries, imported through node 3 as plain text.
    let list = BigList::generate(1_000_000, 42);
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid().unwrap()).collect();
    let before: Vec<_> = pids
        .iter()
        .map(|&p| palisade_testkit::proc::rss_kib(p))
        .collect();
    let t = Instant::now();
    let (status, body) = c
        .post_raw(
            2,
            "/v1/projects/big/ip-rules/import?list=block",
            "text/plain",
            list.text.clone().into_bytes(),
        )
        .unwrap();
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["imported"], 1_000_000, "{v}");
    // Every node has applied it once its applied index reaches the import's last entry.
    let index = v["index"].as_u64().unwrap();
    let t2 = Instant::now();
    for node in 0..3 {
        c.wait_for(Duration::from_secs(120), "the import applied", || {
            let applied = c.status(node)?["applied"].as_u64().unwrap_or(0);
            Ok((applied >= index).then_some(()))
        })
        .unwrap();
    }
    let mut probes: Vec<Probe> = iprules::probes(&c);
    let after: Vec<_> = pids
        .iter()
        .map(|&p| palisade_testkit::proc::rss_kib(p))
        .collect();
    eprintln!(
        "import of 1,000,000 entries: {:.1} s (API answer), applied on all nodes {:.1} s later; RSS before/after/peak (MiB): {:?}",
        took.as_secs_f64(),
        t2.elapsed().as_secs_f64(),
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| (b.0 / 1024, a.0 / 1024, a.1 / 1024))
            .collect::<Vec<_>>()
    );

    // 3. Sampled enforcement on every node: members refused, non-members let through, as an
    // independent reference says; through the data plane, and by the dry-run check.
    let members = list.members(300, 5);
    let outsiders = list.non_members(300, 6);
    for (addrs, want) in [(&members, 403u16), (&outsiders, 200u16)] {
        for &a in addrs.iter() {
            assert_eq!(list.covers(a), want == 403);
            let ip = Ipv4Addr::from(a).to_string();
            assert_eq!(
                statuses(&mut probes, "big.test", &ip),
                vec![want; 3],
                "{ip}"
            );
        }
        for &a in addrs.iter().take(50) {
            let ip = IpAddr::from(Ipv4Addr::from(a)).to_string();
            for node in 0..3 {
                assert_eq!(
                    check(&c, node, "big", &ip)["allowed"],
                    want == 200,
                    "{ip} on node {node}"
                );
            }
        }
    }
    let (status, csv) = c
        .get_text(0, "/v1/projects/big/ip-rules/export?list=block")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 1_000_001);

    // 4. Propagation again, now that each node holds the million entries: one more entry does
    // not rebuild a list, so it still arrives in milliseconds.
    let s = iprules::propagation(&c, 0, "big", "big.test", 100, 2).unwrap();
    eprintln!(
        "propagation beside 1,000,000 entries, 100 trials: median {} p99 {} max {}",
        ms(percentile(&s, 50.0)),
        ms(percentile(&s, 99.0)),
        ms(*s.last().unwrap())
    );
    assert!(
        percentile(&s, 50.0) < Duration::from_millis(250),
        "median {:?}",
        percentile(&s, 50.0)
    );
}

#[test]
fn client_ip_resolution_has_no_soft_spots() {
    let up = Upstream::spawn().unwrap();
    let c = TestCluster::start(
        bin(),
        1,
        &[TRUSTED, ("PALISADE_EDGE_PROXY_PROTOCOL", "true")],
    )
    .unwrap();
    iprules::site(&c, 0, "lb", "lb.test", up.addr).unwrap();
    // An allow list that would let the load balancer itself in, one client, and a blocked one.
    add(
        &c,
        0,
        "/v1/projects/lb",
        json!({ "list": "allow", "cidr": "127.0.0.1" }),
    );
    add(
        &c,
        0,
        "/v1/projects/lb",
        json!({ "list": "allow", "cidr": "198.51.100.7" }),
    );
    add(
        &c,
        0,
        "/v1/projects/lb",
        json!({ "list": "block", "cidr": "198.51.100.66" }),
    );
    let http: SocketAddr = c.nodes[0].http_addr.parse().unwrap();
    let get = |proxy: &str, xff: &str| {
        let req = format!("{proxy}GET / HTTP/1.1\r\nHost: lb.test\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n");
        let out = raw(http, &req);
        out.split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0)
    };
    let lb = proxy_v1("127.0.0.1", http);
    #[rustfmt::skip]
    let cases = [
        (lb.as_str(), "198.51.100.7", 200, "the allowed client"),
        (lb.as_str(), "198.51.100.7:5555", 200, "a port is stripped"),
        (lb.as_str(), "203.0.113.5:1234", 403, "a port does not make the balancer the client"),
        (lb.as_str(), "[2001:db8::1]:443", 403, "nor does a bracketed IPv6 address with a port"),
        (lb.as_str(), "unknown", 403, "a client the balancer could not name is nobody"),
        (lb.as_str(), "198.51.100.7, unknown", 403, "the rightmost entry is the one that counts"),
        // PROXY LOCAL: the balancer speaks for itself, and its header is not believed.
        ("PROXY UNKNOWN\r\n", "198.51.100.66", 200, "LOCAL: the socket peer, not the header"),
        (lb.as_str(), "198.51.100.66", 403, "the blocked client"),
    ];
    for (proxy, xff, want, why) in cases {
        assert_eq!(get(proxy, xff), want, "{why}: XFF {xff}");
    }
}
