//! Joining: the token an operator hands to a new node, the member's side (spend the token,
//! sign the node's certificate, hand over the CA and master key), and the new node's side.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError, WRITE_TIMEOUT};
use crate::command::{Command, Request, Response};
use crate::crypto::sha256_hex;
use crate::ids::NodeId;
use crate::model::{AuditClass, AuditEntry, Millis, Record, RecordKey};
use crate::transport::proto::{JoinGrant, JoinRequest, Pong, RemoteError, Rpc, MAX_FRAME};
use crate::transport::{self, read_frame, tls, write_frame, Transport, TransportError};

/// A join token as handed to an operator: where to join, which CA to trust, and the secret.
#[derive(Serialize, Deserialize)]
pub struct JoinToken {
    pub node_id: NodeId,
    pub addr: String,
    pub ca_sha256: String,
    pub secret: String,
}

const TOKEN_PREFIX: &str = "PJT1.";

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token encodes");
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<JoinToken, String> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or("join token must start with PJT1.")?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "join token is not valid base64url".to_string())?;
        serde_json::from_slice(&json).map_err(|e| format!("join token is malformed: {e}"))
    }
}

impl Cluster {
    /// Create a one-use join token valid for `ttl`.
    pub async fn create_join_token(
        &self,
        ttl: Duration,
        created_by: &str,
        now: Millis,
    ) -> Result<String, ClusterError> {
        let mut secret = [0u8; 32];
        crate::crypto::fill_random(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let cmd = Command::CreateJoinToken {
            hash: sha256_hex(secret.as_bytes()),
            expires_ms: now + ttl.as_millis() as u64,
            created_by: created_by.to_string(),
        };
        match self.write(Request::new(cmd)).await? {
            Response::Refused { reason } => Err(ClusterError::Refused(reason.to_string())),
            _ => Ok(JoinToken {
                node_id: self.node_id,
                addr: self.node.cluster_addr.clone(),
                ca_sha256: self.ca_sha256.clone(),
                secret,
            }
            .encode()),
        }
    }

    /// A join request from `remote`. Nothing is written unless its secret matches a live
    /// token; a source gets [`super::strangers::JOINS_PER_MINUTE`] attempts a minute, and its refusals
    /// are audited once a minute, under its real address.
    pub(super) async fn handle_join(
        &self,
        join: JoinRequest,
        remote: SocketAddr,
    ) -> Result<JoinGrant, RemoteError> {
        let now = crate::now_ms();
        if !self.strangers.join_attempt(remote.ip(), now) {
            return Err(self
                .refuse_join(
                    remote,
                    "too many join attempts from this address; wait a minute",
                )
                .await);
        }
        if let Err(why) = join.check() {
            return Err(self.refuse_join(remote, &why).await);
        }
        let hash = sha256_hex(join.secret.as_bytes());
        if !self.join_token_live(&hash).await {
            return Err(self
                .refuse_join(remote, "join token unknown or already used, or expired")
                .await);
        }
        let audit = AuditEntry {
            seq: 0,
            at: now,
            actor: "join".into(),
            source_ip: remote.ip().to_string(),
            action: "cluster.join".into(),
            target: "cluster".into(),
            outcome: "ok".into(),
            class: AuditClass::Operator,
        };
        let req = Request::new(Command::ConsumeJoinToken { hash }).with_audit(audit);
        let node_id = match self.write(req).await {
            Ok(Response::NodeIdAllocated { node_id, .. }) => node_id,
            Ok(Response::Refused { reason }) => {
                return Err(RemoteError::Refused {
                    reason: reason.to_string(),
                })
            }
            Ok(other) => {
                return Err(RemoteError::Failed {
                    message: format!("unexpected answer {other:?}"),
                })
            }
            Err(e) => {
                return Err(RemoteError::Failed {
                    message: e.to_string(),
                })
            }
        };
        let node_cert_pem = self
            .ca
            .sign_node_csr(node_id, &join.csr_pem, self.cert_validity)
            .map_err(|e| RemoteError::Refused {
                reason: format!("bad certificate request: {e}"),
            })?;
        tracing::info!(node = node_id, %remote, "join token accepted; node id allocated");
        Ok(JoinGrant {
            node_id,
            cluster_id: self.cluster_id.clone(),
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            node_cert_pem,
            master_key_hex: self.master_key.to_hex(),
        })
    }
}

impl Cluster {
    /// Whether a join token with this hash is stored and unexpired: on this node, or, when this
    /// node has not applied it yet (made through another node a moment ago), after catching up
    /// with the leader. A read, never a write.
    async fn join_token_live(&self, hash: &str) -> bool {
        let key = RecordKey::JoinToken {
            hash: hash.to_string(),
        };
        let live = |r: Option<Record>| matches!(r, Some(Record::JoinToken(t)) if t.expires_at > crate::now_ms());
        if live(self.reader.get(&key).ok().flatten()) {
            return true;
        }
        self.linearizable_barrier().await.is_ok() && live(self.reader.get(&key).ok().flatten())
    }

    /// The refusal a stranger gets; its first this minute is audited.
    async fn refuse_join(&self, remote: SocketAddr, why: &str) -> RemoteError {
        metrics::counter!("palisade_join_refusals_total").increment(1);
        if self.strangers.first_refusal(remote.ip(), crate::now_ms()) {
            tracing::warn!(%remote, "join refused: {why}");
            let entry = AuditEntry {
                seq: 0,
                at: crate::now_ms(),
                actor: "join".into(),
                source_ip: remote.ip().to_string(),
                action: "cluster.join".into(),
                target: "cluster".into(),
                outcome: format!(
                    "refused: {why} (further refusals of this address this minute are not recorded)"
                ),
                class: AuditClass::Outside,
            };
            let write = self.write(Request::new(Command::AuditOnly).with_audit(entry));
            if let Err(e) = write.await {
                tracing::debug!(error = %e, "a refused join was not audited");
            }
        }
        RemoteError::Refused {
            reason: why.to_string(),
        }
    }
}

/// A client-only QUIC endpoint of the same address family as `peer`.
fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, ClusterError> {
    let any: SocketAddr = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid address");
    quinn::Endpoint::client(any)
        .map_err(|e| ClusterError::Setup(format!("cannot open a QUIC client socket: {e}")))
}

/// Ask a member to join; used by `palisade join` before the new node has a certificate.
pub async fn request_join(token: &JoinToken, req: JoinRequest) -> Result<JoinGrant, ClusterError> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&token.ca_sha256, &mut pin)
        .map_err(|_| ClusterError::Setup("join token has a bad CA hash".into()))?;
    let tls = tls::join_client_config(pin).map_err(|e| ClusterError::Setup(e.to_string()))?;
    let client = transport::client_config(tls).map_err(|e| ClusterError::Setup(e.to_string()))?;
    let addr = transport::resolve(&token.addr)?;
    let endpoint = client_endpoint(addr)?;
    let conn = transport::connect(
        &endpoint,
        &client,
        addr,
        &crate::crypto::node_server_name(token.node_id),
    )
    .await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Io {
        addr: token.addr.clone(),
        detail: e.to_string(),
    })?;
    write_frame(&mut send, &Rpc::Join(req)).await?;
    let _ = send.finish();
    let reply: Result<JoinGrant, RemoteError> =
        tokio::time::timeout(WRITE_TIMEOUT * 2, read_frame(&mut recv, MAX_FRAME))
            .await
            .map_err(|_| TransportError::Timeout(WRITE_TIMEOUT * 2))??;
    endpoint.close(0u32.into(), b"done");
    reply.map_err(|e| match e {
        RemoteError::Refused { reason } => ClusterError::Refused(reason),
        other => ClusterError::Transport(TransportError::Remote(other)),
    })
}

/// Connect to `addr` with `identity`, expecting node `peer_id`, and ping it as `from`.
pub async fn ping(
    identity: &tls::Identity,
    addr: &str,
    peer_id: NodeId,
    from: NodeId,
) -> Result<Pong, ClusterError> {
    let client = transport::client_config(
        identity
            .client_config()
            .map_err(|e| ClusterError::Setup(e.to_string()))?,
    )
    .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let endpoint = client_endpoint(transport::resolve(addr)?)?;
    let t = Transport::new(endpoint.clone(), client);
    let r = t
        .call::<Pong>(peer_id, addr, &Rpc::Ping { from }, Duration::from_secs(5))
        .await;
    endpoint.close(0u32.into(), b"done");
    Ok(r?)
}
