//! openraft's view of the transport.

use std::future::Future;
use std::sync::Arc;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;

use super::proto::{RemoteError, Rpc, MAX_FRAME};
use super::{read_frame, write_frame, Transport, TransportError};
use crate::ids::NodeId;
use crate::store::SnapshotFile;
use crate::types::{NodeInfo, TypeConfig, Vote};

const SNAPSHOT_CHUNK: usize = 1 << 20;

/// openraft's network factory. Snapshots travel over connections of their own (`bulk`), so a
/// large transfer never shares flow-control or congestion windows with heartbeats and appends.
#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
    bulk: Arc<Transport>,
}

impl Network {
    pub fn new(transport: Arc<Transport>, bulk: Arc<Transport>) -> Self {
        Network { transport, bulk }
    }
}

pub struct Peer {
    transport: Arc<Transport>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            transport: self.bulk.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

fn rpc_error(e: TransportError) -> RPCError<TypeConfig> {
    if e.is_unreachable() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

fn streaming_error(e: TransportError) -> StreamingError<TypeConfig> {
    if e.is_unreachable() {
        StreamingError::Unreachable(Unreachable::new(&e))
    } else {
        StreamingError::Network(NetworkError::new(&e))
    }
}

impl Peer {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<T, RPCError<TypeConfig>> {
        self.transport
            .call(self.target, &self.addr, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }

    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
    ) -> Result<SnapshotResponse<TypeConfig>, TransportError> {
        let io = |e: std::io::Error| TransportError::Io {
            addr: String::new(),
            detail: e.to_string(),
        };
        let mut file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let (mut send, mut recv) = self.transport.open(self.target, &self.addr).await?;
        write_frame(
            &mut send,
            &Rpc::Snapshot {
                vote,
                meta: snapshot.meta,
                size,
            },
        )
        .await?;
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n])
                .await
                .map_err(|e| TransportError::Io {
                    addr: self.addr.clone(),
                    detail: e.to_string(),
                })?;
        }
        let _ = send.finish();
        let reply: Result<SnapshotResponse<TypeConfig>, RemoteError> =
            read_frame(&mut recv, MAX_FRAME).await?;
        Ok(reply?)
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append { req }, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote { req }, &option).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote { req }, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader { req }, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.send_snapshot(vote, snapshot) => res.map_err(streaming_error),
        }
    }
}
