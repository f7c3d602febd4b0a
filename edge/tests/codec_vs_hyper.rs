//! The edge's own upstream HTTP/1.1 codec against hyper's client, on the same bytes: every
//! response below (well-formed, malformed, and the shapes request smuggling and response
//! splitting use) is served by a loopback socket once to hyper's `client::conn::http1` and once to
//! `palisade_edge::pool`, and both must agree on whether it is an answer, and if so on its status,
//! header fields and body. Where the edge is stricter or safer on purpose, the case says so and
//! asserts the edge's behaviour.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use palisade_edge::pool::{Driven, Upstream};
use palisade_edge::upstream::UpstreamGroup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a client made of a response: status, fields (lower-case name, value) and body, or that
/// it failed.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Answer(u16, Vec<(String, String)>, Bytes),
    Failed,
}

/// A socket that reads one request head, writes `raw`, and closes.
async fn serve_once(raw: &'static [u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        let _ = s.write_all(raw).await;
        let _ = s.shutdown().await;
        // Hold the socket until the client is done with it.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
    });
    addr
}

fn fields(h: &hyper::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn by_hyper(raw: &'static [u8], method: Method) -> Seen {
    let io = TcpStream::connect(serve_once(raw).await).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "a.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let run = async {
        let resp = send.send_request(req).await.ok()?;
        let (p, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Seen::Answer(p.status.as_u16(), fields(&p.headers), body))
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Some(seen)) => seen,
        _ => Seen::Failed,
    }
}

async fn by_edge(raw: &'static [u8], method: Method) -> Seen {
    let io = TcpStream::connect(serve_once(raw).await).await.unwrap();
    let mut conn = Upstream::new(io, "127.0.0.1:1".into());
    let group = UpstreamGroup::new(&["127.0.0.1:1".to_string()]);
    let inflight = group.pick(&[]).unwrap();
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "a.test")
        .body(())
        .unwrap()
        .into_parts();
    parts.version = hyper::Version::HTTP_11;
    let run = async {
        let x = conn
            .send(
                &parts,
                "/",
                palisade_edge::response::empty(),
                Duration::from_secs(5),
            )
            .await
            .ok()?;
        let (status, headers) = (x.head.status.as_u16(), fields(&x.head.headers));
        let body = Driven::new(conn, x, inflight)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some(Seen::Answer(status, headers, body))
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Some(seen)) => seen,
        _ => Seen::Failed,
    }
}

/// Responses both must read alike.
const AGREE: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nnot",
    b"HTTP/1.1 200 OK\r\ncontent-length:5\r\n\r\nhelloEXTRA",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nBad Name: b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Len",
    b"",
    b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
];

#[tokio::test]
async fn the_edge_reads_responses_as_hyper_does() {
    for &raw in AGREE {
        for method in [Method::GET, Method::HEAD] {
            let (h, e) = (
                by_hyper(raw, method.clone()).await,
                by_edge(raw, method.clone()).await,
            );
            assert_eq!(
                h,
                e,
                "{method} answered by {:?}: hyper, then the edge",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

#[tokio::test]
async fn where_the_edge_is_stricter_than_hyper_it_says_why() {
    // Both framings: Transfer-Encoding wins (both agree on the body), and the edge drops the
    // length it overrides, so what it forwards cannot be read two ways.
    let raw: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let Seen::Answer(200, fields, body) = by_edge(raw, Method::GET).await else {
        panic!("the edge reads a chunked body that also declares a length")
    };
    assert_eq!(body, "hello");
    assert!(
        fields.iter().all(|(n, _)| n != "content-length"),
        "{fields:?}"
    );
    match by_hyper(raw, Method::GET).await {
        Seen::Answer(200, _, b) => assert_eq!(b, "hello"),
        other => panic!("hyper: {other:?}"),
    }
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing (RFC 9112 §6.1).
    let raw: &[u8] =
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(by_edge(raw, Method::GET).await, Seen::Failed);
    // 101 to a request that asked for no upgrade is not an answer.
    let raw: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n";
    assert_eq!(by_edge(raw, Method::GET).await, Seen::Failed);
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_gives_the_request_back() {
    // The upstream takes the request and closes without a byte: the request comes back whole
    // (its body untouched), to go again on another connection if it may be repeated.
    let io = TcpStream::connect(serve_once(b"").await).await.unwrap();
    let mut conn = Upstream::new(io, "127.0.0.1:1".into());
    let (parts, ()) = Request::get("/").body(()).unwrap().into_parts();
    let sent = conn
        .send(
            &parts,
            "/",
            palisade_edge::response::empty(),
            Duration::from_secs(5),
        )
        .await;
    match sent {
        Err(palisade_edge::pool::SendError::Closed { again, left, .. }) => {
            assert!(again.is_some(), "the body comes back");
            assert!(left, "the request had been written");
        }
        Err(_) => panic!("another error than the close"),
        Ok(x) => panic!("an answer from nothing: {}", x.head.status),
    }
    // A close in the middle of the head is the upstream's fault, not a reason to resend.
    let io = TcpStream::connect(serve_once(b"HTTP/1.1 200 OK\r\nContent-").await)
        .await
        .unwrap();
    let mut conn = Upstream::new(io, "127.0.0.1:1".into());
    let sent = conn
        .send(
            &parts,
            "/",
            palisade_edge::response::empty(),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(
        sent,
        Err(palisade_edge::pool::SendError::Protocol(_))
    ));
}
