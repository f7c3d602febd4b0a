//! The edge's own HTTP/1.1 server against hyper's, on the same bytes: every request below
//! (well-formed, malformed, and the shapes request smuggling uses) is sent over a loopback
//! socket once to hyper's `server::conn::http1` and once to `palisade_edge::h1::serve`, each
//! with a handler that records what it was handed (method, target, version, header fields,
//! body or body error). Both must agree on which requests reach the handler and what they
//! hold, or both refuse. Where the edge is stricter on purpose, the case says why and asserts
//! the edge's answer. Then what the edge writes back: framing by the body, `HEAD`, 204,
//! HTTP/1.0, `100 Continue`, and an early answer that is not lost to a reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_edge::conn_limits::{Activity, Hold};
use palisade_edge::h1::{self, RequestBody};
use palisade_edge::response::{Body, BoxError};
use palisade_edge::Slots;
use palisade_raft::task::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What a handler was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    uri: String,
    version: String,
    fields: Vec<(String, String)>,
    /// The body, or `None` if reading it failed.
    body: Option<Bytes>,
}

async fn record<B>(req: Request<B>) -> Seen
where
    B: hyper::body::Body,
{
    let (p, body) = req.into_parts();
    let mut fields: Vec<_> = p
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    fields.sort();
    let body = body.collect().await.ok().map(|c| c.to_bytes());
    Seen {
        method: p.method.to_string(),
        uri: p.uri.to_string(),
        version: format!("{:?}", p.version),
        fields,
        body,
    }
}

type Answer = Arc<dyn Fn() -> Response<Body> + Send + Sync>;

fn ok() -> Answer {
    Arc::new(|| {
        Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(BoxError::from)
                .boxed(),
        )
    })
}

/// A hyper server on loopback: each request's record goes to the channel.
async fn hyper_server() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(record(req).await);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(8192)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// The edge's server on loopback, answering with `answer` after recording (and, when
/// `read_body` is false, without reading the body at all).
async fn edge_server(
    answer: Answer,
    read_body: bool,
    max_header_bytes: usize,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    edge_server_with(answer, read_body, max_header_bytes, Duration::ZERO).await
}

/// The same, answering each request only after `delay`.
async fn edge_server_with(
    answer: Answer,
    read_body: bool,
    max_header_bytes: usize,
    delay: Duration,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let slots = Slots::new(100, 100);
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let tx = tx.clone();
            let answer = answer.clone();
            let hold = Hold::new(
                slots.take(peer.ip(), false).unwrap(),
                Duration::from_secs(5),
            );
            tokio::spawn(async move {
                let activity = Activity::new();
                let shutdown = Shutdown::new();
                let cx = h1::Connection {
                    peer,
                    https: false,
                    max_header_bytes,
                    hold: &hold,
                    activity: &activity,
                    shutdown: &shutdown,
                };
                h1::serve(s, cx, |req: Request<RequestBody>| {
                    let tx = tx.clone();
                    let answer = answer.clone();
                    async move {
                        if read_body {
                            let _ = tx.send(record(req).await);
                        } else {
                            let _ = tx.send(record(req.map(|_| RequestBody::empty())).await);
                        }
                        tokio::time::sleep(delay).await;
                        answer()
                    }
                })
                .await;
            });
        }
    });
    (addr, rx)
}

/// Send `raw`, read what comes back until the server closes or is silent for a moment.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&b[..n]);
    }
    got
}

fn statuses(wire: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(wire);
    // "HTTP/1.1 200" or, from hyper to an HTTP/1.0 client, "HTTP/1.0 200".
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut v = Vec::new();
    while let Ok(s) = rx.try_recv() {
        v.push(s);
    }
    v
}

/// The edge and hyper on `raw`: what each handler saw, and the statuses each answered.
async fn both(raw: &[u8]) -> ((Vec<Seen>, Vec<u16>), (Vec<Seen>, Vec<u16>)) {
    let (ha, mut hrx) = hyper_server().await;
    let (ea, mut erx) = edge_server(ok(), true, 8192).await;
    let hw = exchange(ha, raw).await;
    let ew = exchange(ea, raw).await;
    (
        (drain(&mut erx), statuses(&ew)),
        (drain(&mut hrx), statuses(&hw)),
    )
}

/// Requests on which the two must agree.
const SAME: &[(&str, &[u8])] = &[
    ("plain GET", b"GET /a?b=1 HTTP/1.1\r\nHost: a.test\r\nX-Many: 1\r\nX-Many: 2\r\n\r\n"),
    ("HTTP/1.0", b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n"),
    ("absolute form", b"GET http://a.test/x?y HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("extension method", b"PURGE /p HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("length body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
    ("empty length body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
    ("a length list, even of one value", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("repeated equal lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("chunked with extension and trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"),
    ("chunked, upper case coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\na\r\n0\r\n\r\n"),
    ("pipelined", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("leading empty line", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("conflicting lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("a length list that disagrees", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd"),
    ("signed length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
    ("length over 64 bits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"),
    ("hex length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc"),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("HTTP/1.0 with a coding", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    ("space in a name", b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n"),
    ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  2\r\n\r\n"),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n"),
    ("unknown version", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("no version", b"GET /\r\nHost: a\r\n\r\n"),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("chunk over 64 bits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("chunk data without CRLF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n"),
];

#[tokio::test]
async fn the_edge_reads_requests_as_hyper_does() {
    for (case, raw) in SAME {
        let ((edge, edge_status), (hyper, hyper_status)) = both(raw).await;
        assert_eq!(edge, hyper, "{case}: what the handler was handed");
        if edge.is_empty() {
            // Refused by both; the edge says so with a 4xx, or 501 for a coding it does not
            // implement (hyper sometimes closes without a word).
            assert!(
                edge_status.len() == 1
                    && ((400..500).contains(&edge_status[0]) || edge_status[0] == 501),
                "{case}: the edge answers a refused head with a 4xx, got {edge_status:?}"
            );
        } else {
            assert_eq!(edge_status, hyper_status, "{case}: the answers");
        }
    }
}

#[tokio::test]
async fn where_the_edge_is_stricter_it_refuses_what_a_proxy_must_not_guess() {
    let stricter: &[(&str, &[u8], u16)] = &[
        // RFC 9112 §6.1 lets a server refuse this; hyper reads the body by the coding. A proxy
        // that reads it at all leaves the length to the next hop's interpretation.
        ("length and coding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("coding and length", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        // hyper decodes the chunks and would pass a gzip body on without its coding.
        ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        // Two coding fields: which one the next hop reads is anyone's guess.
        ("coding twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ];
    for (case, raw, status) in stricter {
        let ((edge, edge_status), (hyper, _)) = both(raw).await;
        assert!(
            edge.is_empty(),
            "{case}: the edge hands nothing on, got {edge:?}"
        );
        assert_eq!(edge_status, vec![*status], "{case}");
        assert!(
            !hyper.is_empty(),
            "{case}: hyper reads it (the point of the case)"
        );
    }
}

#[tokio::test]
async fn heads_over_the_limits_are_431() {
    let (ea, mut erx) = edge_server(ok(), true, 1024).await;
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 2000));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(statuses(&exchange(ea, &big).await), vec![431]);
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (ea2, _) = edge_server(ok(), true, 64 << 10).await;
    assert_eq!(statuses(&exchange(ea2, &many).await), vec![431]);
    assert!(drain(&mut erx).is_empty());
}

fn streamed(parts: &'static [&'static [u8]]) -> Body {
    let frames = futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p)))),
    );
    StreamBody::new(frames).boxed()
}

/// The response the edge writes for `answer` to `raw`, as text.
async fn edge_answer(answer: Answer, raw: &[u8]) -> String {
    let (ea, _rx) = edge_server(answer, true, 8192).await;
    String::from_utf8_lossy(&exchange(ea, raw).await).into_owned()
}

#[tokio::test]
async fn responses_are_framed_by_their_body() {
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let text = edge_answer(ok(), get).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("content-length: 2\r\n") && text.ends_with("\r\n\r\nok"),
        "{text}"
    );
    assert!(text.contains("\r\ndate: "), "{text}");

    let stream: Answer = Arc::new(|| Response::new(streamed(&[b"ab", b"cde"])));
    let text = edge_answer(stream.clone(), get).await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{text}"
    );
    // HTTP/1.0 has no chunks: the body runs to the close.
    let text = edge_answer(
        stream.clone(),
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(
        text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nabcde"),
        "{text}"
    );
    // HTTP/1.0 keep-alive with a known length says it keeps the connection.
    let text = edge_answer(ok(), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");

    // HEAD: the fields a GET would have had, no body.
    let declared: Answer = Arc::new(|| {
        let mut r = Response::new(http_body_util::Empty::new().map_err(BoxError::from).boxed());
        r.headers_mut()
            .insert("content-length", "42".parse().unwrap());
        r
    });
    let text = edge_answer(declared, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        text.contains("content-length: 42\r\n") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
    // 204: no framing at all.
    let empty: Answer = Arc::new(|| {
        let mut r = Response::new(http_body_util::Empty::new().map_err(BoxError::from).boxed());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    });
    let text = edge_answer(empty, get).await;
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
    assert!(
        !text.contains("content-length") && !text.contains("transfer-encoding"),
        "{text}"
    );
    // Two requests on one connection, two answers, in order.
    let text = edge_answer(ok(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(text.as_bytes()), vec![200, 200], "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn continue_is_sent_when_the_body_is_read_and_not_after_the_answer() {
    let (ea, mut rx) = edge_server(ok(), true, 8192).await;
    let mut s = TcpStream::connect(ea).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(b[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(drain(&mut rx)[0].body.as_deref(), Some(&b"hello"[..]));

    // A handler that answers without reading: no 100, the answer, and the connection closes
    // (the body was never sent, so it cannot be told from the next request).
    let (ea, _rx) = edge_server(ok(), false, 8192).await;
    let text = exchange(
        ea,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    let refuse: Answer = Arc::new(|| {
        let mut r = Response::new(
            Full::new(Bytes::from_static(b"too large"))
                .map_err(BoxError::from)
                .boxed(),
        );
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        r
    });
    let (ea, _rx) = edge_server(refuse, false, 8192).await;
    let s = TcpStream::connect(ea).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // 8 MiB announced; the answer comes before most of it is sent.
    let send = tokio::spawn(async move {
        wr.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n")
            .await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..128 {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the edge closes after lingering");
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{text}"
    );
    assert!(
        text.contains("connection: close\r\n") && text.ends_with("too large"),
        "{text}"
    );
    send.abort();
}

/// h2 with prior knowledge on a connection without ALPN: the HTTP/1 server hands it over with
/// the bytes it read; "P" that turns out to be a POST stays HTTP/1.
#[tokio::test]
async fn the_h2_preface_is_handed_over_with_the_bytes_read() {
    async fn served(pieces: &'static [&'static [u8]]) -> Option<Vec<u8>> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for p in pieces {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut b = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut b)).await;
            b
        });
        let (s, peer) = l.accept().await.unwrap();
        let slots = Slots::new(1, 1);
        let hold = Hold::new(
            slots.take(peer.ip(), false).unwrap(),
            Duration::from_secs(5),
        );
        let activity = Activity::new();
        let shutdown = Shutdown::new();
        let cx = h1::Connection {
            peer,
            https: false,
            max_header_bytes: 8192,
            hold: &hold,
            activity: &activity,
            shutdown: &shutdown,
        };
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            h1::serve(s, cx, |_req: Request<RequestBody>| async { ok()() }),
        )
        .await
        .expect("the server ends when the client stops");
        let _ = client.await;
        match ended {
            h1::Ended::H2(mut io) => {
                let mut b = vec![0u8; 24];
                io.read_exact(&mut b).await.unwrap();
                Some(b)
            }
            h1::Ended::Closed => None,
        }
    }
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(served(&[PREFACE]).await.as_deref(), Some(PREFACE));
    assert_eq!(
        served(&[b"PR", b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
            .await
            .as_deref(),
        Some(PREFACE)
    );
    assert_eq!(
        served(&[
            b"P",
            b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ])
        .await,
        None
    );
}

/// A client that pipelines and then half-closes (`printf … | nc -N`) gets every answer, from the
/// edge as from hyper, even when the close arrives while the first is being answered.
#[tokio::test]
async fn pipelined_requests_then_a_half_close_are_all_answered() {
    async fn answers(addr: SocketAddr) -> Vec<u16> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        statuses(&got)
    }
    let (ha, _h) = hyper_server().await;
    // The answer takes a while, so the close arrives while the first request is answered.
    let (ea, _e) = edge_server_with(ok(), true, 8192, Duration::from_millis(200)).await;
    assert_eq!(answers(ha).await, vec![200, 200], "hyper");
    assert_eq!(answers(ea).await, vec![200, 200], "the edge");
}

/// The security headers and the request id are written into an HTTP/1.1 head as lines the
/// view built, not through the map; the fields a client gets must be exactly those the map
/// path (h2) sets, for every policy, over HTTP and HTTPS, whatever the upstream sent of them.
#[tokio::test]
async fn the_head_carries_the_same_security_fields_as_the_map_would() {
    use hyper::header::{HeaderName, HeaderValue};
    use palisade_edge::response::{Answer as EdgeAnswer, Finish, RequestId};
    use palisade_edge::view::SecurityHeaders;
    use palisade_raft::model::HeaderPolicy;

    let upstream_fields: &[(&str, &str)] = &[
        ("content-type", "text/plain"),
        ("x-frame-options", "SAMEORIGIN"),
        ("x-request-id", "spoofed"),
        ("strict-transport-security", "max-age=1"),
        ("x-xss-protection", "0"),
        ("x-custom", "kept"),
    ];
    let policies = [
        HeaderPolicy::default(),
        HeaderPolicy {
            keep_upstream: true,
            xss_protection: false,
            ..Default::default()
        },
        HeaderPolicy {
            hsts_max_age: 0,
            frame_deny: false,
            ..Default::default()
        },
        HeaderPolicy {
            hsts_preload: true,
            nosniff: false,
            ..Default::default()
        },
    ];
    let id = RequestId::new();
    let answer = |policy: &HeaderPolicy, https: bool, upstream: bool| {
        let mut r = Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(BoxError::from)
                .boxed(),
        );
        if upstream {
            for (n, v) in upstream_fields {
                r.headers_mut()
                    .append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
        }
        EdgeAnswer {
            response: r,
            finish: Some(Finish {
                policy: Arc::new(SecurityHeaders::new(policy)),
                https,
                request_id: Some(id),
            }),
        }
    };
    for policy in &policies {
        for https in [false, true] {
            for upstream in [false, true] {
                let case = format!("{policy:?}, https {https}, upstream fields {upstream}");
                let want = answer(policy, https, upstream).into_response();
                let mut want: Vec<(String, String)> = want
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                want.sort();

                let (mut client, server) = tokio::io::duplex(64 << 10);
                let slots = Slots::new(10, 10);
                let hold = Hold::new(
                    slots.take("127.0.0.1".parse().unwrap(), false).unwrap(),
                    Duration::from_secs(5),
                );
                let (activity, shutdown) = (Activity::new(), Shutdown::new());
                let cx = h1::Connection {
                    peer: "127.0.0.1:1".parse().unwrap(),
                    https,
                    max_header_bytes: 8192,
                    hold: &hold,
                    activity: &activity,
                    shutdown: &shutdown,
                };
                let policy = policy.clone();
                let served = h1::serve(server, cx, |_req: Request<RequestBody>| {
                    let a = answer(&policy, https, upstream);
                    async move { a }
                });
                let talk = async {
                    client
                        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    let mut raw = Vec::new();
                    client.read_to_end(&mut raw).await.unwrap();
                    raw
                };
                let (_, raw) = tokio::time::timeout(Duration::from_secs(5), async {
                    tokio::join!(served, talk)
                })
                .await
                .expect("answered and closed");
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut fields);
                assert!(resp.parse(&raw).unwrap().is_complete(), "{case}");
                let mut got: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .filter(|h| !["date", "content-length", "connection"].contains(&h.name))
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                got.sort();
                assert_eq!(got, want, "{case}");
            }
        }
    }
}
