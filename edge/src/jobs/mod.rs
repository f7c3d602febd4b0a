//! Background work of a node that writes to the replicated state. Each job is a pure core (what
//! to do, as a function of the applied state and the time, unit-tested) and a loop that runs it
//! with [`palisade_raft::task::every`] and writes through the cluster.
//!
//! Work that one node does for the cluster holds a lease ([`palisade_raft::cluster::LeaseGuard`]):
//! every write is fenced by the lease's token, so a deposed holder cannot act.
//!
//! - [`acme`]: certificates for every `acme` domain, one order per name cluster-wide (a lease
//!   per name, owners by rendezvous hashing over the healthy voters): [`acme::schedule`] (when a
//!   name is due, its owner, back-off, renewal point), its RFC 8555 steps, and the loop;
//! - [`keyring`]: rotation of the keys that sign clearance cookies (the leader, lease
//!   `bot-keyring`);
//! - [`sweep`]: expired IP rules, ended decisions, old audit entries, orphaned ACME challenges
//!   (the leader, lease `sweep`, taken only when there is something to sweep);
//! - [`decisions`]: this node's bot-protection decisions, batched into the log (every node
//!   writes its own; no lease).

pub mod acme;
pub mod decisions;
pub mod keyring;
pub mod sweep;

use palisade_raft::cluster::{ClusterError, LeaseError};

/// Why a pass of a job did not finish; the next pass retries.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("reading the applied state: {0}")]
    Store(#[from] std::io::Error),
}
