//! The data plane's threads: one single-threaded tokio runtime per worker, each accepting on its
//! own `SO_REUSEPORT` listeners for HTTP and HTTPS, so that a connection, its requests and its
//! upstream connections ([`crate::pool`]) live on one thread: no work stealing, no wake-ups
//! across threads, no lock shared by two requests on the hot path. The kernel spreads new
//! connections over the workers' listeners.
//!
//! What the workers share is read-mostly and lock-free (the compiled view behind `arc-swap`) or
//! counted with atomics (the connection caps, [`crate::conn_limits::Slots`]); Raft, RocksDB, the
//! admin API and the background jobs run on the caller's runtime, never on a worker.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_raft::task::Shutdown;

use crate::pipeline::Pipeline;
use crate::server::{serve, ListenerLimits};
use crate::tls::TlsConfigs;

/// One worker's listeners, bound (with `SO_REUSEPORT`) and listening; made non-blocking here.
pub struct Listeners {
    pub http: std::net::TcpListener,
    pub https: std::net::TcpListener,
}

/// The running workers.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// One thread per pair of listeners, serving until `shutdown`.
    pub fn start(
        listeners: Vec<Listeners>,
        tls: Arc<TlsConfigs>,
        pipeline: Arc<Pipeline>,
        limits: ListenerLimits,
        shutdown: Shutdown,
    ) -> std::io::Result<Workers> {
        let mut threads = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            l.http.set_nonblocking(true)?;
            l.https.set_nonblocking(true)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tls, pipeline, limits, shutdown) = (
                tls.clone(),
                pipeline.clone(),
                limits.clone(),
                shutdown.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("palisade-edge-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        // Registered with this thread's reactor: the runtime that polls them.
                        let (http, https) = match (
                            tokio::net::TcpListener::from_std(l.http),
                            tokio::net::TcpListener::from_std(l.https),
                        ) {
                            (Ok(h), Ok(s)) => (h, s),
                            (Err(e), _) | (_, Err(e)) => {
                                tracing::error!(worker = i, error = %e, "worker cannot use its listeners");
                                return;
                            }
                        };
                        let sweeper = tokio::spawn(crate::pool::sweep(shutdown.clone()));
                        tokio::join!(
                            serve(http, None, pipeline.clone(), limits.clone(), shutdown.clone()),
                            serve(https, Some(tls), pipeline, limits, shutdown),
                        );
                        sweeper.abort();
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers { threads })
    }

    /// Wait (at most `limit`) for every worker to finish after shutdown: each stops accepting at
    /// once and lets its open connections finish their current request.
    pub async fn stopped(self, limit: Duration) {
        let join = tokio::task::spawn_blocking(move || {
            for t in self.threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout(limit, join).await;
    }
}
