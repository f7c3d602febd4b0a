//! TLS and HTTP/1.1 clients for tests, built on hyper and rustls: whole answers (status, headers,
//! body) over plain TCP or TLS with any SNI.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

pub use crate::origin::TestBody;

/// The runtime the tests drive their async clients with.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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
