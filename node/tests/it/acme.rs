//! Automatic certificates against Pebble: real `palisade` processes, a real ACME CA, real DNS
//! (pebble-challtestsrv) that points each test name at the node the test chooses.
//!
//! Each node listens on its own loopback address with the same two public ports, which Pebble
//! validates on (`httpPort`, `tlsPort`). Pebble's validation sleeps are off; its default ~5%
//! rejected nonces are on.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_testkit::net::{free_port, PublicNet};
use palisade_testkit::pebble::{served_leaf, tls13_client, Pebble};
use palisade_testkit::{wait, TestCluster};
use serde_json::{json, Value};

use super::bin;

struct Acme {
    pebble: Pebble,
    c: TestCluster,
    net: PublicNet,
    /// Trusts Pebble's issuing root only, TLS 1.3 only.
    client: Arc<rustls::ClientConfig>,
}

/// Pebble plus an `n`-node cluster on `127.0.{octet}.2…` that uses it.
fn start(octet: u8, n: usize, env: &[(&str, &str)], pebble_env: &[(&str, &str)]) -> Acme {
    let net = PublicNet {
        prefix: format!("127.0.{octet}."),
        http_port: free_port(),
        https_port: free_port(),
    };
    let pebble = Pebble::start(net.http_port, net.https_port, pebble_env);
    let bundle = pebble.ca_bundle.to_str().unwrap().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("PALISADE_ACME_DIRECTORY", pebble.directory.as_str()),
        ("PALISADE_ACME_CA_BUNDLE", bundle.as_str()),
        ("PALISADE_ACME_EMAIL", "ops@palisade.test"),
        ("PALISADE_ACME_LEASE_TTL_MS", "3000"),
        ("PALISADE_ACME_BACKOFF_BASE_MS", "1000"),
        ("PALISADE_ACME_ORDER_TIMEOUT_MS", "30000"),
    ];
    all.extend_from_slice(env);
    let c = TestCluster::start_with(bin(), n, &all, Some(net.clone())).unwrap();
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "shop", "name": "Shop", "bot": { "mode": "off" } }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let client = tls13_client(&pebble.root_pem());
    Acme {
        pebble,
        c,
        net,
        client,
    }
}

impl Acme {
    fn https(&self, idx: usize) -> String {
        format!("{}:{}", self.net.ip_of(idx + 1), self.net.https_port)
    }

    fn ip(&self, idx: usize) -> String {
        self.net.ip_of(idx + 1)
    }

    fn add_domain(&self, via: usize, host: &str) {
        let body = json!({ "project": "shop", "upstreams": ["127.0.0.1:9"], "tls": "acme" });
        let r = self
            .c
            .put(via, &format!("/v1/domains/{host}"), body)
            .unwrap();
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }

    /// The leaf every node in `nodes` serves for `host`, once they all serve one that verifies
    /// against Pebble's root.
    fn served_everywhere(&self, host: &str, nodes: &[usize], within: Duration) -> Vec<u8> {
        let mut leaves: Vec<Result<Vec<u8>, String>> = Vec::new();
        let what = format!("{host} served alike by nodes {nodes:?}");
        let agreed = wait::until(&what, within, || {
            leaves = nodes
                .iter()
                .map(|&i| served_leaf(&self.https(i), host, &self.client))
                .collect();
            match &leaves[0] {
                Ok(first) if leaves.iter().all(|l| l.as_ref() == Ok(first)) => Some(first.clone()),
                _ => None,
            }
        });
        agreed.unwrap_or_else(|e| {
            panic!(
                "{e}: {leaves:?}\nstatus: {}\npebble: {}",
                self.acme_status(nodes[0], host),
                tail(&self.pebble.log(), 30)
            )
        })
    }

    fn acme_status(&self, idx: usize, host: &str) -> Value {
        let r = self.c.get(idx, "/v1/certificates/acme?limit=1000").unwrap();
        r.body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["host"] == host).cloned())
            .unwrap_or(Value::Null)
    }

    /// Audit entries of `action` (every page).
    fn audit(&self, idx: usize, action: &str) -> Vec<Value> {
        let r = self
            .c
            .get(idx, &format!("/v1/audit?action={action}&limit=10000"))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["items"].as_array().cloned().unwrap_or_default()
    }

    fn put_settings(&self, values: Value) {
        let r = self
            .c
            .put(0, "/v1/settings", json!({ "values": values }))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }

    fn metric(&self, idx: usize, name: &str) -> f64 {
        let (_, text) = self.c.get_text(idx, "/metrics").unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The node (index) that owns `host` among voters 1..=n, and one that does not.
fn owner_and_other(host: &str, n: u64) -> (usize, usize) {
    let voters: Vec<u64> = (1..=n).collect();
    let owner =
        palisade_edge::jobs::acme::schedule::owner(&host.parse().unwrap(), &voters).unwrap();
    let owner_idx = (owner - 1) as usize;
    (owner_idx, (owner_idx + 1) % n as usize)
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn http01_certificates_reach_every_node_renew_without_a_failed_handshake_and_keep_keys_sealed() {
    let a = start(21, 3, &[("PALISADE_RAFT_SNAPSHOT_EVERY", "40")], &[]);

    // Ten names one after the other, each validated through a node that does not own it.
    let mut times = Vec::new();
    for i in 0..10 {
        let host = format!("site{i}.shop.test");
        let (owner, other) = owner_and_other(&host, 3);
        a.pebble.point(&host, &a.ip(other));
        let started = Instant::now();
        a.add_domain(i % 3, &host);
        a.served_everywhere(&host, &[0, 1, 2], Duration::from_secs(60));
        times.push(started.elapsed());
        let s = a.acme_status(0, &host);
        assert_eq!(s["state"], "valid", "{s}");
        assert_eq!(s["owner"], json!(owner as u64 + 1), "{s}");
        assert_eq!(s["last_error"], Value::Null, "{s}");
    }
    println!(
        "domain added -> certificate served on all 3 nodes: median {:?}, min {:?}, max {:?} (n=10)",
        median(times.clone()),
        times.iter().min().unwrap(),
        times.iter().max().unwrap()
    );
    // The certificate list shows it with its issuer and status.
    let certs = a.c.get(1, "/v1/certificates?limit=100").unwrap();
    let site0 = certs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "site0.shop.test")
        .cloned()
        .unwrap();
    assert_eq!(site0["source"], "acme");
    assert_eq!(site0["status"], "valid");
    assert!(
        site0["issuer"].as_str().unwrap().contains("Pebble"),
        "{site0}"
    );
    assert_eq!(site0["acme"]["state"], "valid");

    // Renewal forced by the threshold: a new certificate replaces the old one on every node
    // while clients keep connecting; not one handshake fails.
    let host = "site0.shop.test";
    let old = a.served_everywhere(host, &[0, 1, 2], Duration::from_secs(5));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            let addr = a.https(i);
            let cfg = a.client.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(90);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < deadline
                    && ok < 200_000
                {
                    match served_leaf(&addr, host, &cfg) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    a.put_settings(json!({ "acme.renew_before_hours": "100000", "acme.min_reissue_minutes": "0" }));
    let new = wait::until("a renewed certificate", Duration::from_secs(60), || {
        let leaf = a.served_everywhere(host, &[0, 1, 2], Duration::from_secs(60));
        (leaf != old).then_some(leaf)
    })
    .unwrap();
    a.put_settings(json!({}));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut handshakes = 0;
    for w in watchers {
        let (ok, failed) = w.join().unwrap();
        handshakes += ok;
        assert!(ok > 10, "the watcher made only {ok} handshakes");
        assert!(
            failed.is_empty(),
            "{} failed handshakes during renewal: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }
    println!("renewal: {handshakes} TLS handshakes on 3 nodes while the certificate changed, none failed");
    assert_ne!(serial_of(&old), serial_of(&new));
    assert!(
        a.audit(0, "cert.issue").len() >= 11,
        "every issuance is in the audit log"
    );

    // No private key in plain text anywhere on disk: data dirs (RocksDB files, the WAL, raft
    // snapshots) and a configuration export.
    let export =
        a.c.post(
            0,
            "/v1/config/export",
            json!({ "passphrase": "correct horse battery staple" }),
            None,
        )
        .unwrap();
    assert_eq!(export.status, 200);
    let export_text = export.body.to_string();
    assert!(export_text.contains("site0.shop.test"));
    let mut scanned = 0;
    let mut snapshots = 0;
    // (`tls/` holds the node's own mTLS identity, which is not ACME material and is a file of
    // its own with mode 0600.)
    let mut files: Vec<std::path::PathBuf> =
        a.c.nodes
            .iter()
            .flat_map(|n| walk(&n.dir))
            .filter(|p| !p.components().any(|c| c.as_os_str() == "tls"))
            .collect();
    files.extend(a.c.nodes.iter().map(|n| n.log.clone()));
    {
        for entry in files {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            if entry.to_string_lossy().contains("snapshot") {
                snapshots += 1;
            }
            scanned += bytes.len();
            for needle in [&b"PRIVATE KEY"[..], b"key_pkcs8", b"BEGIN EC"] {
                assert!(
                    !contains(&bytes, needle),
                    "{} holds {:?} in plain text",
                    entry.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
    assert!(scanned > 100_000, "scanned only {scanned} bytes");
    assert!(snapshots > 0, "no snapshot file was written to scan");
    assert!(!export_text.contains("PRIVATE KEY"));
    assert!(!export_text.contains("key_pkcs8"));
    // The API never shows one either.
    for path in [
        "/v1/certificates?limit=100",
        "/v1/certificates/acme?limit=100",
    ] {
        let (_, text) = a.c.get_text(0, path).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{path}: {text}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn tls_alpn01_is_answered_by_a_node_that_does_not_own_the_name() {
    let a = start(22, 3, &[("PALISADE_ACME_CHALLENGE", "tls-alpn-01")], &[]);
    let host = "alpn.shop.test";
    let (owner, other) = owner_and_other(host, 3);
    a.pebble.point(host, &a.ip(other));
    let tls_alpn_before = a.metric(other, "palisade_acme_tls_alpn_handshakes_total");
    a.add_domain(owner, host);
    a.served_everywhere(host, &[0, 1, 2], Duration::from_secs(60));
    assert!(
        a.metric(other, "palisade_acme_tls_alpn_handshakes_total") > tls_alpn_before,
        "the CA validated through node {other} by TLS-ALPN-01"
    );
    let log = a.pebble.log();
    assert!(log.contains("validations"), "{}", tail(&log, 20));
    assert!(
        !log.contains("validate w/ HTTP"),
        "only TLS-ALPN-01 was used"
    );
    let s = a.acme_status(0, host);
    assert_eq!(s["state"], "valid", "{s}");
}

#[test]
fn twenty_domains_at_once_make_twenty_orders_spread_over_the_nodes() {
    let a = start(23, 3, &[], &[]);
    let hosts: Vec<String> = (0..20).map(|i| format!("bulk{i}.shop.test")).collect();
    for h in &hosts {
        a.pebble.point(h, &a.ip(0));
    }
    // Twenty domains written at once, through all three nodes.
    std::thread::scope(|s| {
        for (i, h) in hosts.iter().enumerate() {
            let a = &a;
            s.spawn(move || a.add_domain(i % 3, h));
        }
    });
    for h in &hosts {
        a.served_everywhere(h, &[0, 1, 2], Duration::from_secs(120));
    }
    let orders = a.audit(1, "acme.order");
    assert_eq!(
        orders.len(),
        20,
        "{orders:#?}\nattempts: {:#?}",
        a.audit(1, "cert.issue")
    );
    assert_eq!(a.pebble.orders(), 20, "Pebble saw exactly twenty orders");
    let mut by_node = std::collections::BTreeMap::new();
    for o in &orders {
        *by_node
            .entry(o["actor"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(by_node.len() >= 2, "all orders from one node: {by_node:?}");
    println!("orders per node: {by_node:?}");
}

/// Add `host` and catch its owner mid-order: DNS points at a listener that accepts and never
/// answers, so the CA's validation hangs while the owner waits for it. Returns the owner's index
/// and the CA's held connection.
fn owner_caught_mid_order(a: &Acme, host: &str) -> (usize, std::net::TcpStream) {
    let (owner, _) = owner_and_other(host, 3);
    let stall_ip = a.net.ip_of(9);
    let stall = std::net::TcpListener::bind((stall_ip.as_str(), a.net.http_port)).unwrap();
    a.pebble.point(host, &stall_ip);
    a.add_domain(0, host);
    stall.set_nonblocking(true).unwrap();
    // The CA is validating once it connects: the order is in flight.
    let what = format!("the CA to come and validate {host}");
    let conn = wait::until(&what, Duration::from_secs(60), || match stall.accept() {
        Ok((conn, _)) => Some(conn),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("accept: {e}"),
    })
    .unwrap();
    (owner, conn)
}

#[test]
fn a_killed_owner_is_replaced_and_its_certificate_reaches_it_when_it_returns() {
    let mut a = start(26, 3, &[], &[]);
    let host = "killed.shop.test";
    let (owner, held) = owner_caught_mid_order(&a, host);
    a.c.kill(owner);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    a.pebble.point(host, &a.ip(survivors[0]));
    let leaf = a.served_everywhere(host, &survivors, Duration::from_secs(60));
    let s = a.acme_status(survivors[0], host);
    assert_eq!(s["state"], "valid", "{s}");
    assert_ne!(s["owner"], json!(owner as u64 + 1), "{s}");
    drop(held);
    // Losing a node lost nothing: back, it serves the certificate the others made.
    a.c.restart(owner).unwrap();
    assert_eq!(
        a.served_everywhere(host, &[0, 1, 2], Duration::from_secs(60)),
        leaf
    );
}

#[test]
fn a_paused_owner_is_replaced_and_its_late_writes_are_refused() {
    let a = start(24, 3, &[], &[]);
    let host = "paused.shop.test";
    let (owner, held) = owner_caught_mid_order(&a, host);
    a.c.signal(owner, "STOP").unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    // From now on the name points at a live node.
    a.pebble.point(host, &a.ip(survivors[0]));

    let leaf = a.served_everywhere(host, &survivors, Duration::from_secs(60));
    let s = a.acme_status(survivors[0], host);
    assert_eq!(s["state"], "valid", "{s}");
    assert_ne!(
        s["owner"],
        json!(owner as u64 + 1),
        "another node finished it: {s}"
    );

    // The old owner wakes up, finds its order failed or done, and writes: refused.
    drop(held);
    a.c.signal(owner, "CONT").unwrap();
    let late = wait::until(
        "a late write of the deposed owner",
        Duration::from_secs(60),
        || a.metric(owner, "palisade_acme_fenced_refusals_total") >= 1.0,
    );
    if let Err(e) = late {
        panic!("{e}; its log:\n{}", tail(&a.c.nodes[owner].log_text(), 30));
    }
    assert!(a.c.nodes[owner]
        .log_text()
        .contains("a write of a deposed ACME owner was refused"));
    // What every node serves is still the new owner's certificate.
    assert_eq!(
        a.served_everywhere(host, &[0, 1, 2], Duration::from_secs(30)),
        leaf
    );
}

#[test]
fn a_name_that_fails_validation_backs_off_within_budget_and_others_are_unaffected() {
    let a = start(25, 3, &[], &[]);
    a.put_settings(
        json!({ "acme.max_failed_validations": "2", "acme.failed_window_minutes": "60" }),
    );
    let bad = "broken.shop.test";
    let good = "fine.shop.test";
    a.pebble.point(bad, &a.net.ip_of(9)); // nothing listens there
    a.pebble.point(good, &a.ip(1));
    a.add_domain(0, bad);
    a.add_domain(0, good);
    a.served_everywhere(good, &[0, 1, 2], Duration::from_secs(60));

    // Two failures, then the budget holds further orders back.
    let held = wait::until(
        &format!("the budget to hold {bad}"),
        Duration::from_secs(60),
        || {
            let s = a.acme_status(0, bad);
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("failed validations"))
        },
    );
    held.unwrap_or_else(|e| panic!("{e}: {}", a.acme_status(0, bad)));
    let s = a.acme_status(0, bad);
    assert_eq!(s["state"], "failing", "{s}");
    assert!(s["failures"].as_u64().unwrap() >= 2, "{s}");
    assert!(
        s["next_attempt_at"].as_u64().unwrap() > palisade_raft::now_ms() + 60_000,
        "{s}"
    );
    let failures: Vec<Value> = a
        .audit(0, "cert.issue")
        .into_iter()
        .filter(|e| e["target"] == format!("cert/{bad}"))
        .collect();
    let reason = failures[0]["outcome"].as_str().unwrap();
    assert!(
        reason.contains("could not validate") && reason.contains("DNS for broken.shop.test"),
        "{reason}"
    );
    let orders_before = a
        .audit(0, "acme.order")
        .iter()
        .filter(|e| e["target"] == format!("cert/{bad}"))
        .count();
    assert_eq!(orders_before, 2, "two orders, two failed validations");
    std::thread::sleep(Duration::from_secs(5));
    let orders_after = a
        .audit(0, "acme.order")
        .iter()
        .filter(|e| e["target"] == format!("cert/{bad}"))
        .count();
    assert_eq!(orders_after, 2, "no order while the budget is spent");
    // The good name was issued once and is still served.
    assert_eq!(a.acme_status(0, good)["state"], "valid");

    // The CLI shows the same: state and the error, for people and as JSON.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", &a.c.nodes[2].admin_addr, "--key", &a.c.key]);
        let out = a.c.run_cli(&all).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let table = cli(&["cert", "status"]);
    assert!(
        table.contains("LAST_ERROR") && table.contains("failing"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&cli(&["cert", "status", "--json"])).unwrap();
    let row = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["host"] == bad)
        .cloned()
        .unwrap();
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("failed validations"),
        "{row}"
    );

    // Renewal on request (through the CLI) is audited and orders at once, whatever the expiry.
    let said = cli(&["cert", "renew", good]);
    assert!(
        said.contains("renewal of fine.shop.test requested"),
        "{said}"
    );
    wait::until("the renewal on request", Duration::from_secs(60), || {
        let issued = a.audit(0, "cert.issue");
        issued
            .iter()
            .filter(|e| e["target"] == format!("cert/{good}"))
            .count()
            >= 2
    })
    .unwrap();
    assert_eq!(a.audit(0, "certificate.renew").len(), 1);
}
