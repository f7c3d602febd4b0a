//! The public listeners: accept (under the connection caps), optional PROXY header, TLS
//! (HTTPS), HTTP/1.1 and h2 with limits and timeouts, then the pipeline. One bad client never
//! holds up another: each connection is its own task, oversized input is cut off by hyper's
//! limits, and silent or idle connections by the deadlines in [`crate::conn_limits`].

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_raft::task::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::conn_limits::{Activity, Hold, Slots, Tracked, Verdict};
use crate::h1::{self, RequestBody};
use crate::pipeline::{Conn, Pipeline};
use crate::tls::TlsConfigs;

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Whole request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Time for a client to send a complete request head (slow clients are cut off), and for
    /// a new connection to deliver its first one, whatever it sends meanwhile.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight (h2; HTTP/1 keep-alive too,
    /// unless the header read timeout, which bounds the wait for its next head, is shorter).
    pub idle_timeout: Duration,
    /// The node's connection caps, shared by both listeners.
    pub slots: Arc<Slots>,
    /// Time for the PROXY header and the TLS handshake.
    pub handshake_timeout: Duration,
    pub proxy_protocol: bool,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            slots: Slots::new(10_000, 1_024),
            handshake_timeout: Duration::from_secs(10),
            proxy_protocol: false,
        }
    }
}

/// Serve `listener` until `shutdown`; then stop accepting and let open connections
/// finish their current request.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsConfigs>>,
    pipeline: Arc<Pipeline>,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let https = tls.is_some();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if refused_at_accept(&pipeline, peer.ip()) {
            continue;
        }
        // Over a cap: closed at once, without a byte of answer. A trusted load balancer speaks
        // for many clients, so it counts against the node's cap only.
        let slot = match limits
            .slots
            .take(peer.ip(), !pipeline.client_ip.is_trusted(peer.ip()))
        {
            Ok(slot) => slot,
            Err(full) => {
                metrics::counter!("palisade_connections_refused_total", "reason" => full.as_str())
                    .increment(1);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let pipeline = pipeline.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut slot = slot;
            let mut stream = stream;
            let mut peer = peer;
            let mut forwarded = true;
            // Only a trusted load balancer may say where a connection comes from; anyone else
            // is taken at the socket's word.
            if limits.proxy_protocol && pipeline.client_ip.is_trusted(peer.ip()) {
                match tokio::time::timeout(
                    limits.handshake_timeout,
                    crate::proxy_protocol::read_header(&mut stream),
                )
                .await
                {
                    Ok(Ok(Some(src))) => {
                        peer = src;
                        if refused_at_accept(&pipeline, peer.ip()) {
                            return;
                        }
                        // Now the client is known, it counts against its own cap too.
                        if let Err(full) = slot.attribute(peer.ip()) {
                            metrics::counter!("palisade_connections_refused_total", "reason" => full.as_str())
                                .increment(1);
                            return;
                        }
                    }
                    // LOCAL or UNKNOWN: the balancer speaks for itself (a health check), so
                    // what the request says about its client is not believed.
                    Ok(Ok(None)) => forwarded = false,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "bad PROXY header");
                        return;
                    }
                    Err(_) => return,
                }
            }
            let hold = Hold::new(slot, limits.idle_timeout);
            let conn = Conn {
                peer,
                https,
                forwarded,
            };
            match tls {
                Some(tls) => {
                    let cfg = tls.pick(pipeline.view.get().tls13_only);
                    let Some(tls_stream) = handshake(stream, cfg, &limits, peer).await else {
                        return;
                    };
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_conn(
                        tls_stream, conn, pipeline, &limits, hold, watcher, &shutdown, h2,
                    )
                    .await
                }
                None => {
                    serve_conn(
                        stream, conn, pipeline, &limits, hold, watcher, &shutdown, false,
                    )
                    .await
                }
            }
        });
    }
    drop(listener);
    // Let open connections finish what they are doing, within reason.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// The TLS handshake, within the handshake timeout: the connection, on the heap (the task's
/// futures then pass a pointer along rather than each keeping room for rustls's state), or
/// `None` when it failed, timed out, or was a TLS-ALPN-01 validation (which ends with the
/// handshake, RFC 8737 §3).
async fn handshake(
    stream: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    limits: &ListenerLimits,
    peer: std::net::SocketAddr,
) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
    match tokio::time::timeout(limits.handshake_timeout, accept).await {
        Ok(Ok(tls_stream)) => {
            metrics::counter!("palisade_tls_handshakes_total").increment(1);
            if tls_stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                return None;
            }
            Some(Box::new(tls_stream))
        }
        Ok(Err(e)) => {
            metrics::counter!("palisade_tls_handshake_failures_total", "reason" => "handshake")
                .increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("palisade_tls_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            None
        }
    }
}

/// Serve one connection until it ends or its watchdog closes it: HTTP/1.1 by the edge's own
/// [`crate::h1`], h2 (by ALPN, or by its preface on a connection without ALPN) by hyper.
#[allow(clippy::too_many_arguments)]
async fn serve_conn<S>(
    io: S,
    conn: Conn,
    pipeline: Arc<Pipeline>,
    limits: &ListenerLimits,
    hold: Hold,
    watcher: hyper_util::server::graceful::Watcher,
    shutdown: &Shutdown,
    alpn_h2: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = match alpn_h2 {
        true => h1::Prefixed::new(bytes::Bytes::new(), io),
        false => {
            // Pinned where it stands (not moved into the watchdog's future, which would hold
            // a second copy's room): a task's size is what an idle connection costs.
            let ended = {
                let served = std::pin::pin!(h1::serve(
                    io,
                    h1::Connection {
                        peer: conn.peer,
                        https: conn.https,
                        max_header_bytes: limits.max_header_bytes,
                        hold: &hold,
                        activity: &activity,
                        shutdown,
                    },
                    |req| pipeline.handle(req, conn),
                ));
                // Graceful shutdown waits for this connection too while `watcher` lives (it
                // ends at its request's end, or at once when idle).
                watchdog(served, &activity, limits, conn).await
            };
            match ended {
                Some(h1::Ended::H2(io)) => io,
                _ => return,
            }
        }
    };
    // Boxed, as h1's requests are: hyper's h2 connection is large, and a task's size is the
    // largest of what it may become.
    Box::pin(serve_h2(
        io,
        conn,
        pipeline,
        limits,
        hold,
        activity,
        Some(watcher),
    ))
    .await
}

async fn serve_h2<S>(
    io: h1::Prefixed<S>,
    conn: Conn,
    pipeline: Arc<Pipeline>,
    limits: &ListenerLimits,
    hold: Hold,
    activity: Arc<Activity>,
    watcher: Option<hyper_util::server::graceful::Watcher>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _hold = hold;
    let requests = activity.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let pipeline = pipeline.clone();
        let flight = requests.begin();
        let req = req.map(RequestBody::from_hyper);
        async move {
            let resp = pipeline.handle(req, conn).await.into_response();
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::wrap(body, flight)))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let served = builder.serve_connection(TokioIo::new(io), service);
    let ended = match watcher {
        Some(w) => watchdog(std::pin::pin!(w.watch(served)), &activity, limits, conn).await,
        None => watchdog(std::pin::pin!(served), &activity, limits, conn).await,
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Run a connection's future under its deadlines: a first request within the header read
/// timeout; then on HTTP/1 the next head within it of the last response's end, on h2 never
/// idle longer than the idle timeout; one timer for the connection, re-armed when it falls
/// due. `None` when a deadline closed it (dropping the future closes the connection).
async fn watchdog<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    activity: &Activity,
    limits: &ListenerLimits,
    conn: Conn,
) -> Option<F::Output> {
    let mut check = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        tokio::select! {
            ended = fut.as_mut() => return Some(ended),
            _ = tokio::time::sleep_until(check) => {
                let now = tokio::time::Instant::now();
                match activity.verdict(now, limits.header_read_timeout, limits.idle_timeout) {
                    Verdict::Keep(next) => check = next,
                    Verdict::Close(why) => {
                        tracing::trace!(peer = %conn.peer, reason = why, "connection closed by its deadline");
                        metrics::counter!("palisade_connections_closed_total", "reason" => why)
                            .increment(1);
                        return None;
                    }
                }
            }
        }
    }
}

/// The cluster-wide block list, checked on the connection's source (the socket peer, or the
/// source a PROXY header named) before a byte of TLS is spent on it. The caller drops the
/// connection when this says yes.
fn refused_at_accept(pipeline: &Pipeline, ip: std::net::IpAddr) -> bool {
    let view = pipeline.view.get();
    if view.access.cluster_block.is_empty() {
        return false;
    }
    let refused = view
        .access
        .cluster_block
        .contains(ip, palisade_raft::now_ms());
    if refused {
        metrics::counter!("palisade_ip_denied_total", "project" => "*", "list" => "cluster_block", "stage" => "accept").increment(1);
    }
    refused
}
