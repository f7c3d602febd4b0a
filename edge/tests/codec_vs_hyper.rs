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
                &[],
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
            &[],
            palisade_edge::response::empty(),
            Duration::from_secs(5),
        )
        .await;
    match sent {
        Err(palisade_edge::pool::SendError::Closed { again, unsent, .. }) => {
            assert!(again.is_some(), "the body comes back");
            assert!(
                !unsent,
                "the socket took the request: the upstream may have acted on it"
            );
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
            &[],
            palisade_edge::response::empty(),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(
        sent,
        Err(palisade_edge::pool::SendError::Protocol(_))
    ));
}

#[tokio::test]
async fn an_early_answer_does_not_pool_a_connection_with_the_request_still_going_out() {
    // The upstream reads the head alone, answers a keep-alive 401 and stops reading; the socket
    // buffers are small, so most of the 60 KiB body is still in the edge's buffer. Put back in
    // the pool, the connection would hand the rest of this body to the upstream as the start
    // of the next request.
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    listener.set_recv_buffer_size(4096).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listener.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let io = socket.connect(addr).await.unwrap();
    let key = addr.to_string();
    let mut conn = Upstream::new(io, key.as_str().into());
    let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 60 << 10]))
        .map_err(|never| match never {})
        .boxed();
    let (parts, ()) = Request::post("/upload")
        .header("host", "a.test")
        .body(())
        .unwrap()
        .into_parts();
    let x = match conn
        .send(&parts, "/upload", &[], body, Duration::from_secs(5))
        .await
    {
        Ok(x) => x,
        Err(_) => panic!("the 401 is an answer"),
    };
    assert_eq!(x.head.status, 401);
    let group = UpstreamGroup::new(std::slice::from_ref(&key));
    let answer = Driven::new(conn, x, group.pick(&[]).unwrap());
    let _ = tokio::time::timeout(Duration::from_millis(500), answer.collect()).await;
    assert!(
        palisade_edge::pool::checkout(&key).is_none(),
        "a connection with part of its request unsent went back to the pool"
    );
}

#[tokio::test]
async fn an_interim_answer_then_a_close_is_not_a_reason_to_resend() {
    // A 100 Continue proves the upstream had the request: the close after it is a failed
    // exchange, not one the request may simply go again after.
    let io = TcpStream::connect(serve_once(b"HTTP/1.1 100 Continue\r\n\r\n").await)
        .await
        .unwrap();
    let mut conn = Upstream::new(io, "127.0.0.1:1".into());
    let (parts, ()) = Request::get("/").body(()).unwrap().into_parts();
    let sent = conn
        .send(
            &parts,
            "/",
            &[],
            palisade_edge::response::empty(),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(
        sent,
        Err(palisade_edge::pool::SendError::Protocol(_))
    ));
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_off_after_the_response_timeout() {
    // Half the body, then silence with the connection held open: the body fails once no byte
    // has come for the response timeout, rather than holding the request for ever.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01")
            .await
            .unwrap();
        // More every 250 ms, a second in all: longer than one timeout after the head, but never
        // one timeout after the last bytes. The wait is per read, not for the whole body.
        for more in [&b"23"[..], b"45", b"67", b"8"] {
            tokio::time::sleep(Duration::from_millis(250)).await;
            s.write_all(more).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let io = TcpStream::connect(addr).await.unwrap();
    let mut conn = Upstream::new(io, "127.0.0.1:1".into());
    let (parts, ()) = Request::get("/").body(()).unwrap().into_parts();
    let within = Duration::from_millis(500);
    let x = match conn
        .send(&parts, "/", &[], palisade_edge::response::empty(), within)
        .await
    {
        Ok(x) => x,
        Err(_) => panic!("the head is an answer"),
    };
    let group = UpstreamGroup::new(&["127.0.0.1:1".to_string()]);
    let mut body = Driven::new(conn, x, group.pick(&[]).unwrap());
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let failed = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => panic!("the stalled body was not cut off"),
            Ok(None) => panic!("a body of 10 bytes ended after {got:?}"),
            Ok(Some(Ok(f))) => got.extend_from_slice(f.data_ref().unwrap()),
            Ok(Some(Err(e))) => break e,
        }
    };
    assert_eq!(
        got, b"012345678",
        "what came before the stall was passed on"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "cut off after {took:?}: one timeout after the last bytes, not after the head"
    );
    assert!(failed.to_string().contains("response timeout"), "{failed}");
}
