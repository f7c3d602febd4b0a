//! Membership changes, leadership transfer and the cluster's status: run on the leader, from
//! any member.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;

use super::{Cluster, ClusterError, MEMBERSHIP_TIMEOUT};
use crate::command::{Command, Request, Response};
use crate::ids::NodeId;
use crate::model::{Record, RemovedNode};
use crate::transport::proto::{ClusterStatus, MemberStatus, RemoteError, Rpc};
use crate::transport::TransportError;
use crate::types::NodeInfo;

impl Cluster {
    /// Add `id` as a learner, let it catch up, then promote it to voter.
    pub async fn add_member(&self, id: NodeId, node: NodeInfo) -> Result<(), ClusterError> {
        let rpc = Rpc::AddMember {
            id,
            node: node.clone(),
        };
        self.on_leader(rpc, MEMBERSHIP_TIMEOUT, || {
            self.add_member_local(id, node.clone())
        })
        .await
    }

    /// Make voter `to` the leader, and wait (up to `timeout`) until it is.
    pub async fn transfer_leadership(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        if !self.membership().voter_ids().any(|v| v == to) {
            return Err(ClusterError::Refused(format!("node {to} is not a voter")));
        }
        self.on_leader(Rpc::TransferLeadership { to }, timeout, || async {
            if self.node_id == to {
                return Ok(());
            }
            self.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| RemoteError::Failed {
                    message: e.to_string(),
                })
        })
        .await?;
        let mut metrics = self.raft.metrics();
        let became = tokio::time::timeout(timeout, async {
            loop {
                if metrics.borrow_watched().current_leader == Some(to) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match became {
            Ok(true) => Ok(()),
            _ => Err(ClusterError::Unavailable(timeout)),
        }
    }

    /// Ask member `via` (id, cluster address) to add this node; for a node that is not yet a
    /// member and so does not know the leader.
    pub async fn join_via(&self, via: (NodeId, String)) -> Result<(), ClusterError> {
        let rpc = Rpc::AddMember {
            id: self.node_id,
            node: self.node.clone(),
        };
        match self
            .transport
            .call::<()>(via.0, &via.1, &rpc, MEMBERSHIP_TIMEOUT)
            .await
        {
            Ok(()) => Ok(()),
            Err(TransportError::Remote(RemoteError::Refused { reason })) => {
                Err(ClusterError::Refused(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn add_member_local(&self, id: NodeId, node: NodeInfo) -> Result<(), RemoteError> {
        let failed = |e: String| RemoteError::Failed { message: e };
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if membership.get_node(&id).is_none() {
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some()))?;
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| {
                if e.forward_to_leader().is_some() {
                    self.leader_error(e.to_string(), true)
                } else {
                    failed(e.to_string())
                }
            })?;
        tracing::info!(node = id, "node is now a voter");
        Ok(())
    }

    pub(super) fn leader_error(&self, message: String, not_leader: bool) -> RemoteError {
        if not_leader {
            RemoteError::NotLeader {
                leader: self.leader(),
            }
        } else {
            RemoteError::Failed { message }
        }
    }

    /// Remove `id` from the cluster (voter or learner).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        self.on_leader(Rpc::RemoveMember { id }, MEMBERSHIP_TIMEOUT, || {
            self.remove_member_local(id)
        })
        .await
    }

    async fn remove_member_local(&self, id: NodeId) -> Result<(), RemoteError> {
        let membership = self.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(RemoteError::Refused {
                    reason: "cannot remove the last voter".into(),
                });
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(RemoteError::Refused {
                reason: format!("node {id} is not a member"),
            });
        };
        // Recorded first, so that there is no moment at which it is out of the membership but
        // may still add itself back. A member is never refused for being on the list; a failed
        // change below is retried with the same outcome.
        let record = Record::RemovedNode(RemovedNode {
            id,
            at: crate::now_ms(),
        });
        match self.write(Request::new(Command::Put { record })).await {
            Ok(Response::Applied { .. }) => {}
            other => {
                return Err(RemoteError::Failed {
                    message: format!("recording the removal of node {id} failed: {other:?}"),
                })
            }
        }
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some()))?;
        tracing::info!(node = id, "node removed from the cluster");
        Ok(())
    }

    /// The cluster as the leader sees it (members, replication lag); this node's own view when no
    /// leader answers.
    pub async fn status(&self) -> ClusterStatus {
        match self
            .on_leader(Rpc::Status, Duration::from_secs(2), || async {
                Ok(self.local_status())
            })
            .await
        {
            Ok(mut s) => {
                s.node_id = self.node_id;
                s.applied = self.reader.applied_index();
                s
            }
            Err(_) => self.local_status(),
        }
    }

    pub fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map(|l| l.index).unwrap_or(0));
                MemberStatus {
                    id: *id,
                    node: node.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                    last_ack_ms: m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .map(|t| openraft::Instant::elapsed(&*t).as_millis() as u64),
                }
            })
            .collect();
        ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|l| l.index),
            applied: self.reader.applied_index(),
            members,
        }
    }
}
