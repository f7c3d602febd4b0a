//! The test kit: what Palisade's integration tests and its benchmarks share to drive real
//! processes and real protocol peers.
//!
//! # Layout
//!
//! - [`cluster`]: a cluster of real `palisade` processes on loopback: init, join, kill -9,
//!   restart, signals, readiness by polling `/v1/health`, clean-up on drop; [`admin`]: calls to a
//!   node's admin API;
//! - [`net`]: free loopback ports, and shared public ports on one address per node;
//! - [`wait`]: `wait::until(what, timeout, check)`, the one way to wait for something;
//! - [`origin`]: a real upstream (hyper) with the behaviours edge tests need; [`probe`]: a
//!   plain-socket upstream and keep-alive client for measurements (any source address);
//! - [`http`]: TLS and HTTP/1.1 clients with any SNI; [`pki`]: a CA and a leaf certificate;
//! - [`pebble`]: Pebble, the ACME test CA, with its DNS; [`quic`]: a stranger on the cluster
//!   port (no node certificate, raw frames);
//! - [`iprules`]: IP-list helpers (a site, probes on every node, propagation, a big list);
//! - [`stats`], [`proc`]: percentiles, and what the OS says about a process; [`holder`]: idle
//!   connections held by a process of their own.

pub mod admin;
pub mod cluster;
pub mod holder;
pub mod http;
pub mod iprules;
pub mod net;
pub mod origin;
pub mod pebble;
pub mod pki;
pub mod probe;
pub mod proc;
pub mod quic;
pub mod stats;
pub mod wait;

pub use admin::Reply;
pub use cluster::TestCluster;
