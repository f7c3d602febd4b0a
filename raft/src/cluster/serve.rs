//! The server side of the transport: every RPC a peer may send, checked against the identity in
//! the peer's certificate. A peer without one is a stranger (see [`super::strangers`]) and may
//! only join or ping; a peer whose node id is not a member of the cluster (a removed node, say)
//! may only ping, or ask to be added when it has just joined and was never removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::ReadPolicy;

use super::{strangers, Cluster, ClusterError};
use crate::ids::NodeId;
use crate::model::{Record, RecordKey};
use crate::store::SnapshotFile;
use crate::transport::proto::{Pong, RemoteError, Rpc, MAX_FRAME, MAX_STRANGER_FRAME};
use crate::transport::{read_frame, write_frame, TransportError, PEER_STREAMS};
use crate::types::TypeConfig;

impl Cluster {
    /// Accept peer connections until the endpoint closes.
    pub(super) async fn serve(self: Arc<Self>) {
        while let Some(incoming) = self.transport.endpoint().accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster handshake failed");
                        return;
                    }
                };
                let remote = conn.remote_address();
                let peer = conn
                    .peer_identity()
                    .and_then(|any| {
                        any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                            .ok()
                    })
                    .and_then(|chain| {
                        chain
                            .first()
                            .and_then(|c| crate::crypto::node_id_of_cert(c))
                    });
                // A stranger holds one of a few places, for a short time, with a few streams;
                // a node gets the streams Raft needs.
                let place = match peer {
                    Some(_) => {
                        conn.set_max_concurrent_bi_streams(PEER_STREAMS.into());
                        None
                    }
                    None => match this.strangers.admit() {
                        Some(place) => Some(place),
                        None => {
                            tracing::debug!(%remote, "too many connections without a certificate; closed");
                            conn.close(1u32.into(), b"busy");
                            return;
                        }
                    },
                };
                let streams = async {
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let this = this.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.serve_stream(peer, remote, send, recv).await {
                                tracing::debug!(peer = ?peer, %remote, error = %e, "cluster stream failed");
                            }
                        });
                    }
                };
                if place.is_some() {
                    if tokio::time::timeout(strangers::LIFETIME, streams)
                        .await
                        .is_err()
                    {
                        conn.close(2u32.into(), b"time is up");
                    }
                } else {
                    streams.await;
                }
            });
        }
    }

    async fn serve_stream(
        &self,
        peer: Option<NodeId>,
        remote: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), TransportError> {
        let read = match peer {
            Some(_) => read_frame(&mut recv, MAX_FRAME).await,
            None => tokio::time::timeout(
                strangers::READ_DEADLINE,
                read_frame(&mut recv, MAX_STRANGER_FRAME),
            )
            .await
            .unwrap_or(Err(TransportError::Timeout(strangers::READ_DEADLINE))),
        };
        let rpc: Rpc = match read {
            Ok(r) => r,
            Err(e) => {
                let reply: Result<(), RemoteError> = Err(RemoteError::Refused {
                    reason: e.to_string(),
                });
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                return Err(e);
            }
        };
        macro_rules! reply {
            ($v:expr) => {{
                write_frame(&mut send, &$v).await?;
                let _ = send.finish();
                return Ok(());
            }};
        }
        let unauth = |reason: String| RemoteError::Unauthenticated { reason };
        let Some(peer_id) = peer else {
            match rpc {
                Rpc::Join(j) => reply!(self.handle_join(j, remote).await),
                Rpc::Ping { .. } => reply!(Ok::<_, RemoteError>(self.pong(None))),
                other => reply!(Err::<(), _>(unauth(format!(
                    "{} needs a node certificate",
                    other.name()
                )))),
            }
        };
        if let Err(why) = self.may_call(peer_id, &rpc) {
            tracing::warn!(peer = peer_id, %remote, rpc = rpc.name(), "refused an RPC from a node that is not a member: {why}");
            reply!(Err::<(), _>(unauth(why)));
        }
        let claim_ok = |claimed: NodeId| {
            if claimed == peer_id {
                Ok(())
            } else {
                Err(unauth(format!(
                    "certificate is for node {peer_id}, message claims node {claimed}"
                )))
            }
        };
        let fatal = |e: openraft::error::RaftError<TypeConfig>| RemoteError::Failed {
            message: e.to_string(),
        };
        match rpc {
            Rpc::Append { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.append_entries(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::Vote { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.vote(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::PreVote { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.pre_vote(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::TransferLeader { req } => {
                reply!(self.raft.handle_transfer_leader(req).await.map_err(|e| {
                    RemoteError::Failed {
                        message: e.to_string(),
                    }
                }))
            }
            Rpc::Snapshot { vote, meta, size } => {
                if let Err(e) = claim_ok(vote.leader_id.node_id) {
                    reply!(Err::<(), _>(e));
                }
                let file = SnapshotFile::incoming(&self.snapshot_dir);
                let received = receive_file(&mut recv, &file.path, size).await;
                let result = match received {
                    Ok(()) => self
                        .raft
                        .install_full_snapshot(
                            vote,
                            openraft::storage::Snapshot {
                                meta,
                                snapshot: file.clone(),
                            },
                        )
                        .await
                        .map_err(|e| RemoteError::Failed {
                            message: e.to_string(),
                        }),
                    Err(e) => Err(RemoteError::Failed {
                        message: format!("receiving snapshot: {e}"),
                    }),
                };
                let _ = tokio::fs::remove_file(&file.path).await;
                reply!(result)
            }
            Rpc::Forward { req } => reply!(self.write_local(req).await),
            Rpc::ReadIndex => {
                let r = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await;
                reply!(r
                    .map(|r| r.index())
                    .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some())))
            }
            // Routed on to the leader when this node is not it: a joining node knows only the
            // member that issued its token.
            Rpc::AddMember { id, node } => {
                reply!(self.add_member(id, node).await.map_err(remote_error))
            }
            Rpc::RemoveMember { id } => reply!(self.remove_member(id).await.map_err(remote_error)),
            Rpc::Status => reply!(Ok::<_, RemoteError>(self.local_status())),
            Rpc::WaitApplied { index, timeout_ms } => {
                let limit = Duration::from_millis(timeout_ms.min(60_000));
                let _ = tokio::time::timeout(limit, self.reader.wait_applied(index)).await;
                reply!(Ok::<_, RemoteError>(self.reader.applied_index()))
            }
            Rpc::TransferLeadership { to } => {
                let r =
                    if !self.is_leader() {
                        Err(RemoteError::NotLeader { leader: None })
                    } else {
                        self.raft.trigger().transfer_leader(to).await.map_err(|e| {
                            RemoteError::Failed {
                                message: e.to_string(),
                            }
                        })
                    };
                reply!(r)
            }
            Rpc::Join(j) => reply!(self.handle_join(j, remote).await),
            Rpc::Ping { from } => match claim_ok(from) {
                Ok(()) => reply!(Ok::<_, RemoteError>(self.pong(Some(peer_id)))),
                Err(e) => reply!(Err::<Pong, _>(e)),
            },
        }
    }

    /// Whether node `peer` (proved by its certificate) may make this call. A removed node
    /// (on the replicated list) may only ping. A member may make any call. A node that is not a
    /// member as far as this node knows may take part in replication (this node may be the one
    /// that does not know yet: a new node hears from the leader before it learns the
    /// membership) and may ask to be added itself; nothing else.
    fn may_call(&self, peer: NodeId, rpc: &Rpc) -> Result<(), String> {
        if matches!(rpc, Rpc::Ping { .. } | Rpc::Join(_)) {
            return Ok(());
        }
        if matches!(
            self.reader.get(&RecordKey::RemovedNode { id: peer }),
            Ok(Some(Record::RemovedNode(_)))
        ) {
            return Err(format!("node {peer} was removed from the cluster"));
        }
        if self.membership().get_node(&peer).is_some() {
            return Ok(());
        }
        match rpc {
            Rpc::Append { .. }
            | Rpc::Vote { .. }
            | Rpc::PreVote { .. }
            | Rpc::Snapshot { .. }
            | Rpc::TransferLeader { .. } => Ok(()),
            Rpc::AddMember { id, .. } if *id == peer => Ok(()),
            other => Err(format!(
                "node {peer} is not a member of the cluster; {} is for members",
                other.name()
            )),
        }
    }

    fn pong(&self, you_are: Option<NodeId>) -> Pong {
        Pong {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            you_are,
        }
    }
}

fn remote_error(e: ClusterError) -> RemoteError {
    match e {
        ClusterError::Refused(reason) => RemoteError::Refused { reason },
        ClusterError::Transport(TransportError::Remote(r)) => r,
        other => RemoteError::Failed {
            message: other.to_string(),
        },
    }
}

async fn receive_file(
    recv: &mut quinn::RecvStream,
    path: &std::path::Path,
    size: u64,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await?;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = recv
            .read(&mut buf[..want])
            .await
            .map_err(std::io::Error::other)?;
        match n {
            Some(n) if n > 0 => {
                f.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "stream ended with {left} bytes missing"
                )))
            }
        }
    }
    f.sync_all().await
}
