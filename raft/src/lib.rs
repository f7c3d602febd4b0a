//! The replicated store of a Palisade cluster.
//!
//! # Layout
//!
//! - [`ids`] and [`model`]: the identities and records every node agrees on;
//! - [`command`]: the typed commands that change them, and their answers;
//! - [`store`]: RocksDB log and state machine, snapshots, change events, local reads;
//! - [`transport`]: QUIC with mutual TLS between nodes;
//! - [`cluster`]: a running member: Raft, leader forwarding, linearizable reads, membership,
//!   joining, and leases on cluster work (a guard that fences every write);
//! - [`crypto`]: the master key that seals secrets at rest, and the cluster CA;
//! - [`task`]: the node's one shutdown signal and the loop background jobs run in;
//! - [`types`]: openraft's type configuration and the node record every member publishes.
//!
//! This crate knows nothing about HTTP: the edge and the admin API read the applied state through
//! [`store::StateReader`] and write through [`cluster::Cluster::write`].

#![forbid(unsafe_code)]

pub mod cluster;
pub mod command;
pub mod crypto;
pub mod ids;
pub mod model;
pub mod store;
pub mod task;
pub mod transport;
pub mod types;

/// The proposer's clock, in Unix milliseconds. Apply never calls this.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
