//! `palisade-bench`: scenarios that measure Palisade side by side with the tools operators know
//! (nginx, HAProxy, etcd). Real node processes, probes and certificates come from the test kit
//! (`palisade-testkit`), which the integration tests share.
//!
//! # Layout
//!
//! - [`iprules`]: IP list measurements: lookup cost in a million-entry list, throughput with and
//!   without the list;
//! - [`bot`]: bot protection's costs (cookie checks, throughput with the gate, a spray of
//!   sources);
//! - [`scenarios`]: the cluster-core measurements `palisade-bench` runs;
//! - [`suite`]: the scenarios of `palisade-bench all` (Palisade next to nginx, HAProxy, etcd),
//!   with [`load`] (the suite's own load generator), [`outside`] (`wrk` and `h2load`, the
//!   outside generators that cross-check it and measure HTTP/2), [`baselines`] (finding, installing, configuring and
//!   running the baselines), [`report`] (median and range, the invalid-run rule, Markdown, JSON,
//!   SVG) and [`cpu`] (pinning, CPU time).

pub mod baselines;
pub mod bot;
pub mod cpu;
pub mod iprules;
pub mod load;
pub mod outside;
pub mod report;
pub mod scenarios;
pub mod suite;
