//! Helpers for edge tests: a test PKI, a real upstream server, and TLS/HTTP clients.

#![allow(dead_code)]

pub mod pebble;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The runtime the tests drive their async clients with.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub use palisade_bench::pki::{pki, Pki};

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A real origin: `GET /` answers 1 KiB and names itself; `GET /bytes/N` streams N bytes;
/// `POST /upload` counts what it receives; `/login` answers 401 and `/missing…` 404; an
/// `Upgrade` request is switched and echoed.
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
    } else if path == "/login" {
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
    resp.headers_mut().insert(
        "x-seen-xff",
        xff.parse().unwrap_or_else(|_| "".parse().unwrap()),
    );
    resp.headers_mut()
        .insert("x-frame-options", "ALLOWALL".parse().unwrap());
    Ok(resp)
}

pub fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(roots)
}

pub fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots(ca_pem))
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn tls_connect(
    addr: &str,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The answer to one request: status, headers, whole body.
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub async fn send<S>(
    io: S,
    req: Request<TestBody>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

pub fn get(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap()
}

/// GET over HTTPS with SNI `host`.
pub async fn https_get(
    addr: &str,
    host: &str,
    path: &str,
    ca_pem: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let tls = tls_connect(
        addr,
        host,
        client_config(ca_pem, &[&rustls::version::TLS13]),
    )
    .await?;
    send(tls, get(host, path)).await
}

pub async fn http_get(
    addr: &str,
    host: &str,
    path: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    send(TcpStream::connect(addr).await?, get(host, path)).await
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
