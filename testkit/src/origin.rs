//! A real origin server for tests: hyper's HTTP/1.1 server with a few behaviours the edge tests
//! need (sizes, streams, failing logins, 404s, upgrades).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A real origin: `GET /` answers 1 KiB and names itself; `GET /echo` answers the request's
/// headers as a JSON object; `GET /bytes/N` streams N bytes;
/// `POST /upload` counts what it receives; `/login` (any case, optional trailing slash, `;` parameters) answers
/// 401 and `/missing…` 404; an `Upgrade` request is switched and echoed. `x-seen-path` names
/// the path and query it was sent.
pub async fn upstream(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(name, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

async fn handle(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let seen_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut resp = if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'z'; 64 << 10]);
        let frames = futures::stream::iter((0..n.div_ceil(64 << 10)).map(move |i| {
            let len = (n - i * (64 << 10)).min(64 << 10);
            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
        }));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        r.headers_mut()
            .insert("content-length", n.to_string().parse().unwrap());
        r
    } else if path == "/echo" {
        // Every request header as the origin received it, as a JSON object.
        let mut seen = serde_json::Map::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match seen.get_mut(name.as_str()) {
                Some(serde_json::Value::String(v)) => v.push_str(&format!(", {value}")),
                _ => {
                    seen.insert(name.to_string(), value.into());
                }
            }
        }
        Response::new(full(serde_json::Value::Object(seen).to_string()))
    } else if path
        .split(';')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .eq_ignore_ascii_case("/login")
    {
        // A login that always fails, for the failed-login trigger.
        let mut r = Response::new(full("bad password"));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    } else if path.starts_with("/missing") {
        let mut r = Response::new(full("not here"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map(|d| d.len()).unwrap_or(0),
                Err(_) => break,
            }
        }
        Response::new(full(total.to_string()))
    } else {
        Response::new(full(vec![b'x'; 1024]))
    };
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    if let Ok(v) = seen_path.parse() {
        resp.headers_mut().insert("x-seen-path", v);
    }
    resp.headers_mut().insert(
        "x-seen-xff",
        xff.parse().unwrap_or_else(|_| "".parse().unwrap()),
    );
    resp.headers_mut()
        .insert("x-frame-options", "ALLOWALL".parse().unwrap());
    Ok(resp)
}
