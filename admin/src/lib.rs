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

/// Install the process-wide metrics recorder (once; later calls return the same handle) and keep
/// its histograms trimmed. `GET /metrics` renders it in Prometheus text.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            let upkeep = handle.clone();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
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
