//! The cluster transport: QUIC (quinn) with mutual TLS, one stream per RPC.
//!
//! Connections are cached per peer and re-dialled when they close. Heartbeats and appends travel
//! on their own streams, so a snapshot transfer in progress never delays them.

mod network;
pub mod proto;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

pub use network::Network;
use proto::{RemoteError, Rpc, FRAME_VERSION, MAX_FRAME};

use crate::crypto::node_server_name;
use crate::ids::NodeId;

/// A peer silent this long is gone; keep-alives keep live connections well inside it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Streams a peer may have open at once: a node with a certificate gets this many (Raft keeps
/// heartbeats, appends and snapshots apart); a connection without one gets
/// [`STRANGER_STREAMS`] until its certificate is known, and keeps them.
pub const PEER_STREAMS: u32 = 1024;
pub const STRANGER_STREAMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("connection to {addr} failed: {detail}")]
    Io { addr: String, detail: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl TransportError {
    /// True when the peer could not be reached at all (retrying elsewhere is safe).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TransportError::Unreachable { .. })
    }
}

fn transport_config(streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("valid idle timeout")));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(streams.into());
    // Nobody opens unidirectional streams here.
    t.max_concurrent_uni_streams(0u32.into());
    t
}

pub fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, tls::TlsError> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls::TlsError::Bad {
            what: "QUIC server TLS",
            detail: e.to_string(),
        })?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Every connection starts with a stranger's streams; the server raises them once it has
    // seen a node certificate.
    cfg.transport_config(Arc::new(transport_config(STRANGER_STREAMS)));
    Ok(cfg)
}

pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, tls::TlsError> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| tls::TlsError::Bad {
            what: "QUIC client TLS",
            detail: e.to_string(),
        })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    // The server opens no streams to a client.
    cfg.transport_config(Arc::new(transport_config(0)));
    Ok(cfg)
}

pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    v: &T,
) -> Result<(), TransportError> {
    write_encoded(send, &encode_frame(v)?).await
}

pub fn encode_frame<T: Serialize>(v: &T) -> Result<Vec<u8>, TransportError> {
    serde_json::to_vec(v).map_err(|e| TransportError::Frame(e.to_string()))
}

/// Time a frame of `len` bytes may add to a call's deadline: openraft gives an append the
/// heartbeat interval, which a batch of large entries (a bulk import) cannot meet on a busy
/// machine; without this the same append would time out and be resent forever.
pub fn transfer_allowance(len: usize) -> Duration {
    // 10 MB/s for sending, the peer's fsync, and the answer; nothing for small frames.
    Duration::from_micros((len as u64).saturating_sub(64 << 10) / 10)
}

pub async fn write_encoded(
    send: &mut quinn::SendStream,
    body: &[u8],
) -> Result<(), TransportError> {
    if body.len() > MAX_FRAME {
        return Err(TransportError::Frame(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            body.len()
        )));
    }
    let mut head = [0u8; 5];
    head[0] = FRAME_VERSION;
    head[1..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    let io = |e: quinn::WriteError| TransportError::Io {
        addr: String::new(),
        detail: e.to_string(),
    };
    send.write_all(&head).await.map_err(io)?;
    send.write_all(body).await.map_err(io)?;
    Ok(())
}

/// The body length a frame header announces, if the version is known and the length is within
/// `limit` (checked before anything is allocated).
fn frame_len(head: &[u8; 5], limit: usize) -> Result<usize, TransportError> {
    if head[0] != FRAME_VERSION {
        return Err(TransportError::Frame(format!(
            "unknown frame version {}",
            head[0]
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let limit = limit.min(MAX_FRAME);
    if len > limit {
        return Err(TransportError::Frame(format!(
            "frame of {len} bytes exceeds {limit}"
        )));
    }
    Ok(len)
}

fn frame_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, TransportError> {
    serde_json::from_slice(body).map_err(|e| TransportError::Frame(format!("malformed frame: {e}")))
}

/// One whole frame from bytes: what [`read_frame`] reads from a stream (the fuzz target).
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, TransportError> {
    let head: &[u8; 5] = bytes
        .get(..5)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| TransportError::Frame("reading frame header: too short".into()))?;
    let len = frame_len(head, limit)?;
    match bytes.get(5..) {
        Some(body) if body.len() == len => frame_body(body),
        _ => Err(TransportError::Frame(format!(
            "reading frame body: {} bytes, not {len}",
            bytes.len() - 5
        ))),
    }
}

/// Read one frame of at most `limit` bytes (the length is checked before anything is allocated).
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<T, TransportError> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| TransportError::Frame(format!("reading frame header: {e}")))?;
    let len = frame_len(&head, limit)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| TransportError::Frame(format!("reading frame body: {e}")))?;
    frame_body(&body)
}

/// Outgoing calls to peers over one QUIC endpoint.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<NodeId, (SocketAddr, quinn::Connection)>>,
}

impl Transport {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Self {
        Transport {
            endpoint,
            client,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    async fn connection(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let sock = resolve(addr)?;
        {
            let conns = self.conns.lock().await;
            if let Some((a, c)) = conns.get(&target) {
                if *a == sock && c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
        }
        let conn = connect(
            &self.endpoint,
            &self.client,
            sock,
            &node_server_name(target),
        )
        .await?;
        self.conns.lock().await.insert(target, (sock, conn.clone()));
        Ok(conn)
    }

    /// Open a stream to `target` for one RPC.
    pub async fn open(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(target, addr).await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.conns.lock().await.remove(&target);
                Err(TransportError::Unreachable {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// One request, one reply, within `timeout`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<T, TransportError> {
        let body = encode_frame(rpc)?;
        let timeout = timeout + transfer_allowance(body.len());
        let fut = async {
            let (mut send, mut recv) = self.open(target, addr).await?;
            write_encoded(&mut send, &body).await?;
            let _ = send.finish();
            let reply: Result<T, RemoteError> = read_frame(&mut recv, MAX_FRAME).await?;
            Ok(reply?)
        };
        let result = tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(TransportError::Timeout(timeout)));
        if let Err(e) = &result {
            if !matches!(e, TransportError::Remote(_)) {
                // A peer that restarted leaves our connection to its old process looking alive
                // until the idle timeout: dial afresh next time instead of waiting for that.
                tracing::debug!(peer = target, error = %e, "dropping the connection after a failed call");
                self.conns.lock().await.remove(&target);
            }
        }
        result
    }
}

pub fn resolve(addr: &str) -> Result<SocketAddr, TransportError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| TransportError::Unreachable {
            addr: addr.to_string(),
            detail: "not a host:port address".into(),
        })
}

pub async fn connect(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, TransportError> {
    let unreachable = |detail: String| TransportError::Unreachable {
        addr: addr.to_string(),
        detail,
    };
    let connecting = endpoint
        .connect_with(client.clone(), addr, server_name)
        .map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}
