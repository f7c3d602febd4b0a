//! The replicated store of a Palisade cluster.
//!
//! # Layout
//!
//! - [`ids`] and [`model`]: the identities and records every node agrees on;
//! - [`command`]: the typed commands that change them, and their answers;
//! - [`store`]: RocksDB log and state machine, snapshots, change events, local reads;
//! - [`transport`]: QUIC with mutual TLS between nodes;
//! - [`cluster`]: a running member: Raft, leader forwarding, linearizable reads, membership,
//!   joining;
//! - [`crypto`]: the master key that seals secrets at rest, and the cluster CA.
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
pub mod transport;
pub mod types;

/// The proposer's clock, in Unix milliseconds. Apply never calls this.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
