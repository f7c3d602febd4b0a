//! The control plane: the admin HTTP API served on each node's private cluster address.
//!
//! # Layout
//!
//! - [`state`]: what every route shares (the cluster member, its window on the edge, options);
//! - [`http`]: the request plumbing: the caller, JSON bodies with a size limit and errors that
//!   name the field, and the one error shape;
//! - [`auth`]: API keys (format, hashing, constant-time check), roles, and the per-source
//!   slowdown of failed attempts; [`guard`] audits the failures and records key use;
//! - [`authz`]: the role and project scope each route needs;
//! - [`read`] and [`write`]: the read path (linearizable by default, pages) and the write path
//!   (idempotency key, audit entry in the same log entry, `?wait=all`, status mapping);
//! - [`routes`]: one file per resource (probes, cluster, projects, bot, domains, certificates,
//!   settings, audit, keys, IP rules, configuration), each with its rows of the operations table;
//! - [`openapi`]: the operations table makes both the router and `/openapi.json`;
//! - [`tls`]: optional TLS on the admin listener with a certificate from the cluster CA.
//!
//! Every change goes through [`palisade_raft::cluster::Cluster::write`] with an audit entry that
//! is committed in the same log entry as the change. The admin API never imports the edge: what
//! it asks of it goes through [`EdgeRules`], which the node implements.

#![forbid(unsafe_code)]

pub mod auth;
pub mod authz;
pub mod guard;
pub mod http;
pub mod openapi;
pub mod read;
pub mod routes;
pub mod state;
pub mod tls;
pub mod write;

pub use routes::routes;
pub use state::{AdminOptions, AdminState, EdgeRules};

use std::sync::Arc;
use std::time::Duration;

/// Bucket bounds (seconds) of every duration histogram: request latency from half a millisecond,
/// bot-protection solve times up to half a minute.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often recorded samples are folded into the histograms. The exporter keeps each sample
/// until then: a second's worth (tens of thousands on a busy node) folds in well under a
/// millisecond, where five seconds' worth into summaries took tens of milliseconds of a core the
/// data plane may share.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Install the process-wide metrics recorder (once; later calls return the same handle) and keep
/// its histograms trimmed. `GET /metrics` renders it in Prometheus text. Durations are histograms
/// with fixed buckets, not summaries: buckets add up across nodes (a cluster's p99 is
/// `histogram_quantile` over the sum), and folding a sample into one is a comparison and an
/// increment.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("palisade-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                })
                .expect("a thread for the metrics upkeep");
            handle
        })
        .clone()
}

/// Serve the admin API on `listener` until `stop` resolves; in-flight requests then get `drain`
/// to finish.
pub async fn serve(
    state: Arc<AdminState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    tokio::spawn(state.guard.clone().run(
        state.cluster.clone(),
        state.options.last_used_flush,
        state.options.failure_audits_per_second,
    ));
    match tls {
        Some(config) => {
            poem::Server::new_with_acceptor(tls::TlsAcceptor::new(listener, config)?)
                .run_with_graceful_shutdown(routes(state), stop, Some(drain))
                .await
        }
        None => {
            poem::Server::new_with_acceptor(poem::listener::TcpAcceptor::from_tokio(listener)?)
                .run_with_graceful_shutdown(routes(state), stop, Some(drain))
                .await
        }
    }
}
