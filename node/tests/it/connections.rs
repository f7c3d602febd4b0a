//! What a public connection may hold, through a real `palisade` process: silent and idle
//! connections are closed on time, the connection caps hold at accept, and a real visitor is
//! served while 20,000 idle connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_testkit::holder::{Held, Holder};
use palisade_testkit::http::*;
use palisade_testkit::origin::upstream;
use palisade_testkit::pki::pki;
use palisade_testkit::proc::rss_kib;
use palisade_testkit::stats::percentile;
use palisade_testkit::{wait, TestCluster};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::bin;

/// A project with `app.test` over HTTPS and `plain.test` over HTTP; returns the CA PEM.
fn serve_sites(c: &TestCluster, up: SocketAddr) -> String {
    let r = c
        .post(
            0,
            "/v1/projects",
            json!({ "id": "shop", "name": "shop" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    for (host, tls) in [("app.test", "manual"), ("plain.test", "off")] {
        let r = c
            .put(0, &format!("/v1/domains/{host}"), json!({ "project": "shop", "upstreams": [up.to_string()], "tls": tls, "redirect_https": false }))
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // The visitors here are plain HTTP clients: bot protection would count them.
    let r = c
        .put(
            0,
            "/v1/projects/shop/bot?wait=all",
            json!({ "mode": "off" }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let pki = pki(&["app.test"]);
    let r = c
        .post(
            0,
            "/v1/certificates",
            json!({ "name": "shop", "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    pki.ca_pem
}

async fn connect_from(src: &str, to: &str) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0))?;
    sock.connect(to.parse().unwrap()).await
}

/// Read until the server closes (or resets) the connection: how long after `from` it did, or
/// `None` if it was still open `limit` after `from`.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    mut s: S,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(from + limit);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(from.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

fn tls_config(ca: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_config(ca, &[&rustls::version::TLS13])).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

async fn tls_to(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.test").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

#[test]
fn silent_slow_and_idle_connections_are_closed_on_time() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_EDGE_HEADER_READ_TIMEOUT_MS", "2000"),
            ("PALISADE_EDGE_IDLE_TIMEOUT_MS", "2000"),
        ],
    )
    .unwrap();
    let ca = serve_sites(&c, up);
    let (http, https) = (c.nodes[0].http_addr.clone(), c.nodes[0].https_addr.clone());
    wait::until("the certificate served", Duration::from_secs(10), || {
        let cfg = tls_config(&ca, b"http/1.1");
        let a = rt.block_on(async {
            let tls = tls_to(&https, cfg).await;
            send(tls, get("app.test", "/")).await
        });
        a.ok().filter(|a| a.status == 200).map(|_| ())
    })
    .unwrap();

    let limit = Duration::from_secs(10);
    let results = rt.block_on(async {
        let silent_tcp = {
            let http = http.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let s = TcpStream::connect(&http).await.unwrap();
                ("TCP, nothing sent", until_closed(s, t, limit).await)
            })
        };
        let half_preface = {
            let http = http.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let mut s = TcpStream::connect(&http).await.unwrap();
                s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
                ("half an h2 preface", until_closed(s, t, limit).await)
            })
        };
        let silent_tls = {
            let (https, cfg) = (https.clone(), tls_config(&ca, b"http/1.1"));
            tokio::spawn(async move {
                let t = Instant::now();
                let s = tls_to(&https, cfg).await;
                ("TLS, then nothing", until_closed(s, t, limit).await)
            })
        };
        let no_settings = {
            let (https, cfg) = (https.clone(), tls_config(&ca, b"h2"));
            tokio::spawn(async move {
                let t = Instant::now();
                let mut s = tls_to(&https, cfg).await;
                assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    .await
                    .unwrap();
                ("h2 preface, no SETTINGS", until_closed(s, t, limit).await)
            })
        };
        let slowloris = {
            let http = http.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let mut s = TcpStream::connect(&http).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\n")
                    .await
                    .unwrap();
                // One header line every 300 ms, never the blank line.
                let (mut rd, mut wr) = s.into_split();
                let dribble = tokio::spawn(async move {
                    for i in 0..40 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if wr
                            .write_all(format!("X-{i}: y\r\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let closed = until_closed(&mut rd, t, limit).await;
                dribble.abort();
                ("a head sent slowly", closed)
            })
        };
        let idle_keep_alive = {
            let http = http.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&http).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
                    .await
                    .unwrap();
                // The whole 1 KiB answer, then silence from the client.
                read_kib_answer(&mut s).await;
                let answered = Instant::now();
                (
                    "keep-alive, idle after one answer",
                    until_closed(s, answered, limit).await,
                )
            })
        };
        let h2_idle = {
            let (https, cfg) = (https.clone(), tls_config(&ca, b"h2"));
            tokio::spawn(async move {
                use http_body_util::BodyExt;
                let tls = tls_to(&https, cfg).await;
                let (mut sender, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                .unwrap();
                let conn = tokio::spawn(conn);
                let req = hyper::Request::get("https://app.test/")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                let answered = Instant::now();
                let closed = tokio::time::timeout(limit, conn)
                    .await
                    .ok()
                    .map(|_| answered.elapsed());
                drop(sender);
                ("h2, idle after one answer", closed)
            })
        };
        let mut out = Vec::new();
        for t in [
            h2_idle,
            silent_tcp,
            half_preface,
            silent_tls,
            no_settings,
            slowloris,
            idle_keep_alive,
        ] {
            out.push(t.await.unwrap());
        }
        out
    });
    for (kind, closed) in &results {
        let after = closed.unwrap_or_else(|| panic!("{kind}: still open after {limit:?}"));
        eprintln!("{kind}: closed after {after:?}");
        assert!(
            after <= Duration::from_secs(3),
            "{kind}: closed after {after:?}"
        );
        assert!(
            after >= Duration::from_millis(1_500),
            "{kind}: closed early, after {after:?}"
        );
    }
    let (_, text) = c.get_text(0, "/metrics").unwrap();
    for reason in ["first_request", "idle"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("palisade_connections_closed_total") && l.contains(reason)),
            "no {reason} closes counted"
        );
    }
}

/// On a kept-alive HTTP/1 connection, the next request's head has the header read timeout of
/// the last answer's end, shorter here than the idle timeout: a client that stays silent and one
/// that dribbles its next head are both cut off then, not after the idle timeout.
#[test]
fn the_next_http1_head_has_the_header_read_timeout() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_EDGE_HEADER_READ_TIMEOUT_MS", "1500"),
            ("PALISADE_EDGE_IDLE_TIMEOUT_MS", "30000"),
        ],
    )
    .unwrap();
    serve_sites(&c, up);
    let http = c.nodes[0].http_addr.clone();
    let limit = Duration::from_secs(10);
    // One answer, then silence, or the next head a line every 300 ms and never its end.
    let closed_after = |dribble: bool| {
        let http = http.clone();
        async move {
            let mut s = TcpStream::connect(&http).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
                .await
                .unwrap();
            read_kib_answer(&mut s).await;
            let answered = Instant::now();
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                if !dribble {
                    // Silent, but not closing: dropping the write half would send a FIN.
                    tokio::time::sleep(limit).await;
                    drop(wr);
                    return;
                }
                let _ = wr.write_all(b"GET / HTTP/1.1\r\n").await;
                for i in 0..40 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if wr
                        .write_all(format!("X-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let closed = until_closed(&mut rd, answered, limit).await;
            writer.abort();
            closed
        }
    };
    let (silent, dribbled) =
        rt.block_on(async { tokio::join!(closed_after(false), closed_after(true)) });
    for (kind, closed) in [("silent", silent), ("dribbling its next head", dribbled)] {
        let after =
            closed.unwrap_or_else(|| panic!("{kind}: still open {limit:?} after its answer"));
        assert!(
            after >= Duration::from_millis(1_000) && after <= Duration::from_millis(3_000),
            "{kind}: closed {after:?} after its answer, not about 1.5 s"
        );
    }
    let (_, text) = c.get_text(0, "/metrics").unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("palisade_connections_closed_total")
                && l.contains("header_timeout")),
        "no header_timeout close counted"
    );
}

/// The node's `palisade_active_connections`.
fn active(c: &TestCluster) -> f64 {
    let (_, text) = c.get_text(0, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with("palisade_active_connections"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// 1,000 connections from each of `from..to` in 127.0.0.0/24.
fn plan(from: u8, to: u8) -> Vec<(String, usize)> {
    (from..to)
        .map(|i| (format!("127.0.0.{i}"), 1_000))
        .collect()
}

fn hold(dest: &str, plan: &[(String, usize)]) -> Holder {
    let plan: Vec<(&str, usize)> = plan.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    Holder::open(dest, &plan).unwrap()
}

#[test]
fn twenty_thousand_idle_connections_leave_room_for_a_real_visitor() {
    // Each process here may open 20,000 files, the node too: the idle connections are held by
    // helper processes, and the node is given caps it can keep (12,000 open, 1,000 per source).
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_EDGE_HEADER_READ_TIMEOUT_MS", "30000"),
            ("PALISADE_EDGE_MAX_CONNECTIONS", "12000"),
            ("PALISADE_EDGE_MAX_CONNECTIONS_PER_IP", "1000"),
        ],
    )
    .unwrap();
    serve_sites(&c, up);
    let http = c.nodes[0].http_addr.clone();
    let pid = c.nodes[0].pid().unwrap();
    let visit = || {
        let http = http.clone();
        rt.block_on(async move {
            let t = Instant::now();
            let s = match connect_from("127.0.0.1", &http).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("visitor: connect: {e}");
                    return None;
                }
            };
            let a =
                tokio::time::timeout(Duration::from_secs(5), send(s, get("plain.test", "/"))).await;
            match a {
                Ok(Ok(a)) if a.status == 200 => Some(t.elapsed()),
                other => {
                    eprintln!("visitor: {:?}", other.map(|r| r.map(|a| a.status)));
                    None
                }
            }
        })
    };
    wait::until("the site served", Duration::from_secs(10), &visit).unwrap();
    let (idle_rss, _) = rss_kib(pid);

    // 20,000 idle connections: 1,000 from each of eight addresses, and 12,000 from one more.
    let opened = Instant::now();
    let mut spread = hold(&http, &plan(10, 18));
    let mut one_source = hold(&http, &[("127.0.0.30".to_string(), 12_000)]);
    assert_eq!(spread.opened + one_source.opened, 20_000);
    let took = opened.elapsed();
    wait::until(
        "9,000 connections held by the node",
        Duration::from_secs(20),
        || (active(&c) >= 9_000.0).then_some(()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The source over its cap: 11,000 closed at accept, without a byte of answer.
    let over = one_source.check().unwrap();
    assert_eq!(
        over,
        Held {
            closed: 11_000,
            answered: 0
        },
        "over max_connections_per_ip"
    );
    assert_eq!(
        spread.check().unwrap(),
        Held {
            closed: 0,
            answered: 0
        }
    );
    let (held_rss, _) = rss_kib(pid);

    // A visitor on another address: 200 requests, each on a new connection.
    let mut times: Vec<Duration> = (0..200)
        .map(|i| visit().unwrap_or_else(|| panic!("request {i} failed")))
        .collect();
    times.sort();
    let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
    eprintln!(
        "20,000 idle connections opened in {took:?}, 9,000 held by the node: RSS {idle_rss} KiB \
         before, {held_rss} KiB holding them ({} bytes each); visitor p50 {p50:?}, p99 {p99:?}",
        held_rss.saturating_sub(idle_rss) * 1024 / 9_000
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");

    // The node's cap: 3,000 more fill it to 12,000; the next connections are closed at accept,
    // the visitor's too, and those within the cap stay open.
    let mut fill = hold(&http, &plan(40, 43));
    wait::until("12,000 open", Duration::from_secs(10), || {
        (active(&c) >= 12_000.0).then_some(())
    })
    .unwrap();
    let mut extra = hold(&http, &[("127.0.0.50".to_string(), 10)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        extra.check().unwrap(),
        Held {
            closed: 10,
            answered: 0
        },
        "over max_connections"
    );
    assert!(visit().is_none(), "a full node takes no one");
    assert_eq!(
        fill.check().unwrap(),
        Held {
            closed: 0,
            answered: 0
        }
    );
    drop((fill, extra));
    wait::until("room again", Duration::from_secs(10), || {
        visit().map(|_| ())
    })
    .unwrap();

    // Every silent connection is closed by the deadline for its first request, not before.
    assert!(
        opened.elapsed() < Duration::from_secs(29),
        "the test took too long to check"
    );
    assert_eq!(
        spread.check().unwrap().closed,
        0,
        "closed before the header read timeout"
    );
    wait::until(
        "the idle connections closed by the node",
        Duration::from_secs(45),
        || (active(&c) < 10.0).then_some(()),
    )
    .unwrap();
    assert_eq!(
        spread.check().unwrap(),
        Held {
            closed: 8_000,
            answered: 0
        }
    );
    assert!(visit().is_some(), "the site still serves");
}

/// Sends a WebSocket upgrade for `plain.test` on `s` and reads the 101 head.
async fn upgrade(s: &mut TcpStream) {
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: plain.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Whether `s` echoes a message through its tunnel.
async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// Whether a request on a new connection from `src` (after `prefix`, a PROXY header or
/// nothing) is answered.
async fn answered(src: &str, to: &str, prefix: &[u8]) -> bool {
    let mut s = connect_from(src, to).await.unwrap();
    let _ = s.write_all(prefix).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

#[test]
fn tunnels_and_clients_behind_a_balancer_count_against_the_caps() {
    let rt = rt();
    let (up, _task) = rt.block_on(upstream("origin"));
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_EDGE_IDLE_TIMEOUT_MS", "2000"),
            ("PALISADE_EDGE_MAX_CONNECTIONS_PER_IP", "3"),
            ("PALISADE_EDGE_PROXY_PROTOCOL", "true"),
            ("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .unwrap();
    serve_sites(&c, up);
    let http = c.nodes[0].http_addr.clone();
    wait::until("the site served", Duration::from_secs(10), || {
        rt.block_on(answered("127.0.0.5", &http, b"")).then_some(())
    })
    .unwrap();

    rt.block_on(async {
        // Three WebSockets from one source hold its three places: a fourth connection is
        // refused while they are open, although their HTTP exchanges ended with the upgrade.
        let mut tunnels = Vec::new();
        for _ in 0..3 {
            let mut s = connect_from("127.0.0.5", &http).await.unwrap();
            upgrade(&mut s).await;
            tunnels.push(s);
        }
        assert!(!answered("127.0.0.5", &http, b"").await, "over the cap");
        // Traffic either way keeps a tunnel open past the idle timeout.
        let busy = Instant::now();
        let mut quiet = busy;
        while busy.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for s in tunnels.iter_mut() {
                assert!(echoes(s).await, "a busy tunnel stays open");
            }
            quiet = Instant::now();
        }
        // Silent, each is closed the idle timeout after its last byte, and the source has its
        // places back.
        for s in tunnels {
            let closed = until_closed(s, quiet, Duration::from_secs(6)).await;
            let closed = closed.expect("a silent tunnel is closed");
            assert!(
                closed >= Duration::from_millis(1_900) && closed < Duration::from_millis(3_500),
                "closed after {closed:?}"
            );
        }
        assert!(answered("127.0.0.5", &http, b"").await, "room again");

        // Behind the trusted balancer, each client counts against its own cap: three held
        // connections for one client leave a fourth for it refused, another client served.
        let dst: SocketAddr = http.parse().unwrap();
        let proxy = |client: &str| {
            format!("PROXY TCP4 {client} {} 40000 {}\r\n", dst.ip(), dst.port()).into_bytes()
        };
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = connect_from("127.0.0.1", &http).await.unwrap();
            s.write_all(&proxy("198.51.100.7")).await.unwrap();
            held.push(s);
        }
        // The node has read their headers (a request on a fourth would otherwise race them).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !answered("127.0.0.1", &http, &proxy("198.51.100.7")).await,
            "the client is at its cap"
        );
        assert!(
            answered("127.0.0.1", &http, &proxy("198.51.100.8")).await,
            "another client behind the same balancer is served"
        );
        drop(held);
        wait::until_async(
            "the client's places back",
            Duration::from_secs(5),
            || async {
                answered("127.0.0.1", &http, &proxy("198.51.100.7"))
                    .await
                    .then_some(())
            },
        )
        .await
        .unwrap();
    });
}

/// Read from `s` until the whole answer of the test upstream's 1 KiB body has arrived.
async fn read_kib_answer(s: &mut TcpStream) {
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    while !String::from_utf8_lossy(&got).contains(&"x".repeat(1024)) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
}
