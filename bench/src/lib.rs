//! `palisade-bench`: scenarios that measure Palisade side by side with the tools operators know
//! (nginx, HAProxy, etcd), and the harness that starts real `palisade` processes, shared with the
//! integration tests.
//!
//! # Layout
//!
//! - [`harness`]: a cluster of real node processes on loopback: init, join, kill -9, restart,
//!   readiness by polling `/v1/health`, clean-up on drop;
//! - [`probe`]: a plain-socket upstream and keep-alive client (any loopback source address, any
//!   `X-Forwarded-For`);
//! - [`iprules`]: IP list measurements: propagation, a million-entry list, lookup cost,
//!   throughput with and without the list;
//! - [`scenarios`]: the cluster-core measurements `palisade-bench` runs;
//! - [`suite`]: the scenarios of `palisade-bench all` (Palisade next to nginx, HAProxy, etcd),
//!   with [`load`] (the one load generator), [`baselines`] (finding, installing, configuring and
//!   running the baselines), [`report`] (median and range, the invalid-run rule, Markdown, JSON,
//!   SVG), [`cpu`] (pinning, CPU time) and [`pki`] (certificates).

pub mod baselines;
pub mod bot;
pub mod cpu;
pub mod harness;
pub mod iprules;
pub mod load;
pub mod pki;
pub mod probe;
pub mod report;
pub mod scenarios;
pub mod suite;
