//! Upstream connections: HTTP/1.1 connections (`hyper::client::conn::http1`) kept per target by
//! the thread that made them, and driven by the task of the request that uses them. No task per
//! connection, no channel hop to one, no lock: a request checks a connection out of its
//! worker's pool, polls it while it waits for the response head, and the response body polls it
//! while the client reads; the connection goes back when the body has ended.
//!
//! A connection the upstream closed while idle is found at checkout (polled once: the close has
//! been read) and by the sweep, which also closes those idle longer than [`IDLE_TIMEOUT`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use palisade_raft::task::Shutdown;
use tokio::net::TcpStream;

use crate::response::{Body, BoxError};
use crate::upstream::InFlight;

/// An idle connection older than this is closed rather than used (upstreams commonly close
/// theirs after 60 to 75 seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle connections kept per target by each worker; more are closed when they come back.
pub const MAX_IDLE_PER_TARGET: usize = 256;
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub type Driver = http1::Connection<TokioIo<TcpStream>, Body>;

/// One upstream connection: the handle requests are sent on and the connection state machine
/// that reads and writes the socket, polled by whoever holds it.
pub struct Upstream {
    send: http1::SendRequest<Body>,
    /// `None` once it finished (closed by either side, or failed).
    driver: Option<Driver>,
    /// The target's address: the pool's key.
    key: Arc<str>,
    idle_since: Instant,
    /// Whether it carried a request before this one.
    pub reused: bool,
    /// The response deadline, made with the connection's first request and moved on by each
    /// next one (tokio extends a registered timer without touching its wheel): one timer per
    /// connection, not one per request.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// No response head arrived in time.
#[derive(Debug)]
pub struct TimedOut;

thread_local! {
    static IDLE: RefCell<foldhash::HashMap<Arc<str>, Vec<Upstream>>> = RefCell::default();
}

/// An idle connection to `key` from this thread's pool, most recently used first; those the
/// upstream closed, or idle too long, are closed on the way.
pub fn checkout(key: &str) -> Option<Upstream> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() < IDLE_TIMEOUT && c.usable() {
                c.reused = true;
                return Some(c);
            }
        }
        None
    })
}

/// Hand a connection whose exchange ended back to this thread's pool.
fn checkin(mut c: Upstream) {
    if c.driver.is_none() {
        return;
    }
    c.idle_since = Instant::now();
    IDLE.with_borrow_mut(|idle| {
        let list = match idle.get_mut(&*c.key) {
            Some(list) => list,
            None => idle.entry(c.key.clone()).or_default(),
        };
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(c);
        }
    });
}

/// Close this thread's idle connections that the upstream closed or that idled too long, every
/// few seconds until `shutdown`.
pub async fn sweep(shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        IDLE.with_borrow_mut(|idle| {
            idle.retain(|_, list| {
                list.retain_mut(|c| c.idle_since.elapsed() < IDLE_TIMEOUT && c.usable());
                !list.is_empty()
            })
        });
    }
    IDLE.with_borrow_mut(|idle| idle.clear());
}

impl Upstream {
    /// HTTP/1.1 over a connected socket (the handshake sends nothing).
    pub async fn handshake(io: TcpStream, key: Arc<str>) -> hyper::Result<Upstream> {
        let (send, driver) = http1::Builder::new()
            .max_buf_size(1 << 20)
            .handshake(TokioIo::new(io))
            .await?;
        Ok(Upstream {
            send,
            driver: Some(driver),
            key,
            idle_since: Instant::now(),
            reused: false,
            deadline: None,
        })
    }

    /// The request handle and the connection, for an exchange that leaves the pool for good
    /// (an upgrade, whose connection becomes a tunnel).
    pub fn into_parts(mut self) -> (http1::SendRequest<Body>, Driver) {
        let driver = self.driver.take().expect("a new connection has its driver");
        (self.send, driver)
    }

    /// Poll the connection once without waiting: it reads what the upstream sent while it was
    /// idle (a close, most often) and tells whether a request may go out now.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if poll_driver(&mut self.driver, &self.key, &mut cx).is_ready() {
            return false;
        }
        matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Send `req` and drive the connection until the response head arrives, for at most
    /// `within`. The request comes back in the error when it never left (the connection was
    /// closed first), so it can be sent on another connection.
    pub async fn send(
        &mut self,
        req: Request<Body>,
        within: Duration,
    ) -> Result<
        Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>,
        TimedOut,
    > {
        let at = tokio::time::Instant::now() + within;
        let deadline = match &mut self.deadline {
            Some(d) => {
                d.as_mut().reset(at);
                d
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        let mut response = std::pin::pin!(self.send.try_send_request(req));
        let (driver, key) = (&mut self.driver, &self.key);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            if driver.is_some() && poll_driver(driver, key, cx).is_ready() {
                // The pending response learns it from the dropped connection.
                if let Poll::Ready(r) = response.as_mut().poll(cx) {
                    return Poll::Ready(Ok(r));
                }
            }
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Poll a connection's state machine; `Ready` once it has finished, when it is dropped (a
/// request still waiting on it gets its error).
fn poll_driver(driver: &mut Option<Driver>, key: &str, cx: &mut Context<'_>) -> Poll<()> {
    let Some(d) = driver else {
        return Poll::Ready(());
    };
    match Pin::new(d).poll(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(r) => {
            if let Err(e) = r {
                tracing::debug!(target = %key, error = %e, "upstream connection failed");
            }
            *driver = None;
            Poll::Ready(())
        }
    }
}

/// A response body from a pooled connection: polling it drives the connection, and the
/// connection returns to the pool when the body has ended (an unfinished one is closed).
pub struct Driven {
    body: Incoming,
    conn: Option<Upstream>,
    ended: bool,
    _inflight: InFlight,
}

impl Driven {
    pub fn new(body: Incoming, conn: Upstream, inflight: InFlight) -> Driven {
        Driven {
            body,
            conn: Some(conn),
            ended: false,
            _inflight: inflight,
        }
    }
}

impl hyper::body::Body for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(c) = &mut this.conn {
            // Reads the socket into the body's channel (and finishes writing the request body).
            let _ = poll_driver(&mut c.driver, &c.key, cx);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.ended || hyper::body::Body::is_end_stream(&self.body) {
                checkin(c);
            }
        }
    }
}
