//! Raw calls on a node's cluster port, so a test can send what a real node never would: a
//! [`Stranger`] comes without a node certificate (as a joining node or an attacker does) and
//! trusts the node the way `palisade join` does, by the CA hash a join token carries; a
//! [`Peer`] comes with the identity in a node's data dir (a removed node, say).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use palisade_raft::cluster::JoinToken;
use palisade_raft::crypto::node_server_name;
use palisade_raft::transport::{self, tls};

/// A connection to a node's cluster port.
pub struct Conn {
    endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

pub type Stranger = Conn;
pub type Peer = Conn;

impl Conn {
    /// Connect from `bind` (a loopback address: each is its own source) to the node that made
    /// `token` (a join token's text), trusting the CA it names.
    pub async fn stranger(token: &str, bind: IpAddr) -> Result<Conn> {
        let token = JoinToken::decode(token).map_err(|e| anyhow!(e))?;
        let mut pin = [0u8; 32];
        hex::decode_to_slice(&token.ca_sha256, &mut pin)?;
        let client = transport::client_config(tls::join_client_config(pin)?)?;
        let endpoint = quinn::Endpoint::client(SocketAddr::new(bind, 0))?;
        let addr = transport::resolve(&token.addr)?;
        let conn = transport::connect(&endpoint, &client, addr, &node_server_name(token.node_id))
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Conn { endpoint, conn })
    }

    /// Connect to node `node_id` at `addr` with the identity (certificate and key) of the data
    /// dir `dir`.
    pub async fn peer(dir: &Path, addr: &str, node_id: u64) -> Result<Conn> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| f.to_string());
        let identity = tls::Identity {
            ca_pem: read("tls/ca.pem")?,
            cert_pem: read("tls/node.pem")?,
            key_pem: read("tls/node.key")?,
        };
        let client = transport::client_config(identity.client_config()?)?;
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let addr = transport::resolve(addr)?;
        let conn = transport::connect(&endpoint, &client, addr, &node_server_name(node_id)).await?;
        Ok(Conn { endpoint, conn })
    }

    /// Send `frame` (a frame's JSON body) on a new stream and read the answer's body as text.
    pub async fn call(&self, frame: &[u8]) -> Result<String> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(&header(frame.len() as u32)).await?;
        send.write_all(frame).await?;
        let _ = send.finish();
        let answer = recv.read_to_end(1 << 20).await?;
        Ok(String::from_utf8_lossy(answer.get(5..).unwrap_or_default()).into_owned())
    }
}

/// The header of a frame of `len` bytes: the format version and the length.
pub fn header(len: u32) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[0] = palisade_raft::transport::proto::FRAME_VERSION;
    h[1..].copy_from_slice(&len.to_be_bytes());
    h
}
