//! Leases on cluster work: one holder at a time, and a fencing token (the log index that granted
//! the lease) that only grows. Every write a holder makes on the lease's behalf is fenced: the
//! state machine applies it only while the lease is still held with that token, so a deposed
//! holder (paused, partitioned, slow) cannot act after another node has taken over.
//!
//! [`Cluster::take_lease`] hands out a [`LeaseGuard`]; the guard writes fenced commands, can keep
//! the lease renewed while a long piece of work runs, and gives the lease back when released.
//! A guard dropped without release stops renewing and the lease runs out by itself.

use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, ClusterError};
use crate::command::{Command, Refusal, Request, Response};
use crate::ids::Name;
use crate::model::AuditEntry;

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease has moved on (expired, or another node holds it): write nothing more.
    #[error("the lease {lease} is no longer held with token {token}")]
    Deposed { lease: Name, token: u64 },
    /// The state machine refused the command itself (a budget spent, say).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The write did not reach a leader; it may be retried.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("unexpected answer from the cluster: {0:?}")]
    Unexpected(Box<Response>),
}

/// A lease this node holds.
pub struct LeaseGuard {
    cluster: Arc<Cluster>,
    name: Name,
    token: u64,
    ttl: Duration,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Take the lease `name` for `ttl` (or renew it, if this node holds it already). `Ok(None)`:
    /// another node holds it.
    pub async fn take_lease(
        self: &Arc<Self>,
        name: Name,
        ttl: Duration,
    ) -> Result<Option<LeaseGuard>, ClusterError> {
        let acquire = Command::AcquireLease {
            name: name.clone(),
            holder: self.node_id,
            ttl_ms: ttl.as_millis() as u64,
        };
        match self.write(Request::new(acquire)).await? {
            Response::LeaseGranted { lease, .. } => Ok(Some(LeaseGuard {
                cluster: self.clone(),
                name,
                token: lease.token,
                ttl,
                renewer: None,
            })),
            _ => Ok(None),
        }
    }
}

impl LeaseGuard {
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The fencing token: the log index that granted the lease.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Renew the lease every third of its time to live until the guard goes. Renewal stops once
    /// the lease is granted to someone else (or with another token); the next fenced write then
    /// fails with [`LeaseError::Deposed`].
    pub fn keep_renewed(&mut self) {
        let (cluster, token, every) = (self.cluster.clone(), self.token, self.ttl / 3);
        let acquire = Command::AcquireLease {
            name: self.name.clone(),
            holder: cluster.node_id,
            ttl_ms: self.ttl.as_millis() as u64,
        };
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match cluster.write(Request::new(acquire.clone())).await {
                    Ok(Response::LeaseGranted { lease, .. }) if lease.token == token => {}
                    Ok(_) => return,
                    // Unreachable leader: try again at the next beat; the lease may still hold.
                    Err(_) => {}
                }
            }
        }));
    }

    /// Write `command` (with `audit`, atomically) only while this guard's lease holds; the log
    /// index that applied it.
    pub async fn write(
        &self,
        command: Command,
        audit: Option<AuditEntry>,
    ) -> Result<u64, LeaseError> {
        let mut req = Request::new(Command::Fenced {
            lease: self.name.clone(),
            token: self.token,
            command: Box::new(command),
        });
        if let Some(a) = audit {
            req = req.with_audit(a);
        }
        match self.cluster.write(req).await? {
            Response::Applied { index, .. } => Ok(index),
            Response::Refused {
                reason: Refusal::StaleFence { .. },
            } => Err(LeaseError::Deposed {
                lease: self.name.clone(),
                token: self.token,
            }),
            Response::Refused { reason } => Err(LeaseError::Refused(reason)),
            other => Err(LeaseError::Unexpected(Box::new(other))),
        }
    }

    /// Give the lease back so that the next holder need not wait for it to run out. Best
    /// effort: when the write fails the lease still expires.
    pub async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let release = Command::ReleaseLease {
            name: self.name.clone(),
            token: self.token,
        };
        if let Err(e) = self.cluster.write(Request::new(release)).await {
            tracing::debug!(lease = %self.name, error = %e, "releasing a lease failed; it runs out");
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}
