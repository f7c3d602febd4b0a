//! What a public connection may hold: a slot under the node's caps, taken at accept, and
//! deadlines for its first request and for idleness between requests.
//!
//! A connection over a cap is closed at accept without a byte of answer. Once accepted, a
//! connection that has not delivered a complete request head within the header read timeout is
//! closed, whatever it sent meanwhile (nothing at all, half an HTTP/2 preface, a TLS handshake
//! and then silence, an h2 preface without SETTINGS); between requests, one with no request in
//! flight for the idle timeout is closed (HTTP/1 keep-alive and h2 alike: pings do not count).
//! A request is in flight from the moment hyper hands it over until its response body ends.
//! On HTTP/1, the next request's head must also be complete within the header read timeout of
//! the previous response's end (a client idle between requests, or dribbling its next head, is
//! cut off then), as hyper's own header read timer did; h2 connections have the idle timeout.
//!
//! All of these are one deadline per connection, looked at by the connection's watchdog
//! ([`Activity::verdict`]) when it falls due and moved on from there: no timer is set up per
//! request. The listener tells the [`Activity`] when a connection turns out to speak HTTP/1
//! (its first request head, read by [`crate::h1`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::response::{Body, BoxError};

const SHARDS: usize = 16;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` are open.
    Node,
    /// `max_connections_per_ip` are open from this source (its IPv6 /64).
    Source,
}

impl Full {
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Node => "node_full",
            Full::Source => "source_full",
        }
    }
}

/// The node's connection caps, shared by both public listeners.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_ip: u32,
    open: AtomicUsize,
    by_source: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

/// One accepted connection's place under the caps, given back when it is dropped.
pub struct Slot {
    slots: Arc<Slots>,
    source: Option<IpAddr>,
}

/// The key a source is counted by: the IPv4 address, or the IPv6 /64 (one subscriber's
/// allocation).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

fn shard(key: IpAddr) -> usize {
    let mixed = match key {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    };
    (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
}

impl Slots {
    pub fn new(max: usize, per_ip: u32) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            per_ip: per_ip.max(1),
            open: AtomicUsize::new(0),
            by_source: Default::default(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn per_ip(&self) -> u32 {
        self.per_ip
    }

    /// A slot for a connection from `ip`, if both caps allow it. `per_source` is false for
    /// trusted load balancers, which speak for many clients.
    pub fn take(self: &Arc<Self>, ip: IpAddr, per_source: bool) -> Result<Slot, Full> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Node);
        }
        let mut slot = Slot {
            slots: self.clone(),
            source: None,
        };
        if per_source {
            // Refused, the slot gives its place under the node's cap back as it drops.
            slot.attribute(ip)?;
        }
        Ok(slot)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Slot {
    /// Counts the connection against `ip`'s per-source cap as well: at accept, or once a
    /// trusted load balancer's PROXY header has said whose it is. Refused (and the slot left as
    /// it was) if that source is at its cap.
    pub fn attribute(&mut self, ip: IpAddr) -> Result<(), Full> {
        if self.source.is_some() {
            return Ok(());
        }
        let key = source_key(ip);
        let mut map = self.slots.by_source[shard(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.slots.per_ip {
            return Err(Full::Source);
        }
        *n += 1;
        self.source = Some(key);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.source {
            let mut map = self.slots.by_source[shard(key)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection in `palisade_active_connections` for as long as it lives, whichever way
/// its task ends.
struct ActiveConnection;

impl ActiveConnection {
    fn new() -> Self {
        metrics::gauge!("palisade_active_connections").increment(1.0);
        ActiveConnection
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        metrics::gauge!("palisade_active_connections").decrement(1.0);
    }
}

/// What an accepted connection holds for as long as it lives: its slot under the caps and its
/// place in `palisade_active_connections`. An upgraded connection (a WebSocket) outlives its
/// HTTP connection, so its tunnel keeps a clone: a tunnel counts against the caps like any
/// connection, and is closed when idle like one.
#[derive(Clone)]
pub struct Hold {
    _held: Arc<(Slot, ActiveConnection)>,
    /// How long a tunnel may pass no byte either way before it is closed.
    pub idle: Duration,
}

impl Hold {
    pub fn new(slot: Slot, idle: Duration) -> Hold {
        Hold {
            _held: Arc::new((slot, ActiveConnection::new())),
            idle,
        }
    }
}

/// An I/O half that notes when it last read a byte.
struct Stamped<'a, T> {
    io: T,
    start: Instant,
    last_ms: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last_ms.fetch_max(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Copies both ways between the client's and the upstream's side of an upgraded connection
/// until either closes, or until no byte has passed either way for `hold.idle`. The connection
/// keeps its slot until then.
pub async fn tunnel<A, B>(client: A, upstream: B, hold: Hold)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_ms = AtomicU64::new(0);
    let mut a = Stamped {
        io: client,
        start,
        last_ms: &last_ms,
    };
    let mut b = Stamped {
        io: upstream,
        start,
        last_ms: &last_ms,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut check = start + hold.idle;
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = tokio::time::sleep_until(check) => {
                let since = start + Duration::from_millis(last_ms.load(Ordering::Relaxed));
                if Instant::now() >= since + hold.idle {
                    metrics::counter!("palisade_connections_closed_total", "reason" => "tunnel_idle")
                        .increment(1);
                    return;
                }
                check = since + hold.idle;
            }
        }
    }
}

/// Requests on one connection: how many so far, how many in flight, when the last ended, and
/// whether it speaks HTTP/1.
pub struct Activity {
    start: Instant,
    requests: AtomicU64,
    inflight: AtomicU32,
    /// Milliseconds after `start` when the last request in flight ended.
    last_done_ms: AtomicU64,
    /// Set once the connection's first request head shows HTTP/1.
    http1: AtomicBool,
}

/// What the watchdog does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Look again at this time.
    Keep(Instant),
    /// Close the connection, for this reason (the metric label).
    Close(&'static str),
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            requests: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            http1: AtomicBool::new(false),
        })
    }

    /// A request arrived; it is in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The connection speaks HTTP/1: between requests, the next head has the header read
    /// timeout.
    pub fn is_http1(&self) {
        self.http1.store(true, Ordering::Release);
    }

    /// Whether the connection may stay open at `now`, and if so when to look again.
    pub fn verdict(&self, now: Instant, header_read: Duration, idle: Duration) -> Verdict {
        if self.requests.load(Ordering::Acquire) == 0 {
            let deadline = self.start + header_read;
            return match now >= deadline {
                true => Verdict::Close("first_request"),
                false => Verdict::Keep(deadline),
            };
        }
        // The request may end any moment: look again by the shorter deadline that then runs.
        let (wait, why) = match self.http1.load(Ordering::Acquire) && header_read < idle {
            true => (header_read, "header_timeout"),
            false => (idle, "idle"),
        };
        if self.inflight.load(Ordering::Acquire) > 0 {
            return Verdict::Keep(now + wait);
        }
        let since = self.start + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        match now >= since + wait {
            true => Verdict::Close(why),
            false => Verdict::Keep(since + wait),
        }
    }
}

/// A request in flight (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.start.elapsed().as_millis() as u64;
        a.last_done_ms.fetch_max(ms, Ordering::AcqRel);
        a.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
pub struct Tracked {
    inner: Body,
    flight: Option<InFlight>,
}

impl Tracked {
    pub fn wrap(inner: Body, flight: InFlight) -> Tracked {
        Tracked {
            inner,
            flight: Some(flight),
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_node_and_per_source_and_free_on_drop() {
        let slots = Slots::new(5, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b2: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let a1 = slots.take(a, true).unwrap();
        let _a2 = slots.take(a, true).unwrap();
        assert_eq!(slots.take(a, true).err(), Some(Full::Source));
        let _b1 = slots.take(b, true).unwrap();
        let _b2 = slots.take(b2, true).unwrap();
        assert_eq!(slots.take(b2, true).err(), Some(Full::Source), "one /64");
        // A trusted balancer is not counted per source, only against the node's cap.
        let _lb = slots.take(a, false).unwrap();
        assert_eq!(
            slots.take("198.51.100.1".parse().unwrap(), true).err(),
            Some(Full::Node)
        );
        assert_eq!(slots.open(), 5);
        drop(a1);
        assert_eq!(slots.open(), 4);
        let _again = slots.take(a, true).unwrap();
        assert_eq!(slots.open(), 5);
    }

    #[test]
    fn a_connection_has_a_first_request_deadline_then_head_and_idle_ones() {
        let (head, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        for http1 in [false, true] {
            let a = Activity::new();
            if http1 {
                a.is_http1();
            }
            let t0 = a.start;
            assert_eq!(a.verdict(t0, head, idle), Verdict::Keep(t0 + head));
            assert_eq!(
                a.verdict(t0 + head, head, idle),
                Verdict::Close("first_request")
            );
            let (wait, why) = match http1 {
                true => (head, "header_timeout"),
                false => (idle, "idle"),
            };
            let flight = a.begin();
            let later = t0 + head + idle;
            assert_eq!(
                a.verdict(later, head, idle),
                Verdict::Keep(later + wait),
                "in flight: looked at again within the deadline that runs once it ends"
            );
            drop(flight);
            let done = t0 + Duration::from_millis(a.last_done_ms.load(Ordering::Acquire));
            assert_eq!(a.verdict(done, head, idle), Verdict::Keep(done + wait));
            assert_eq!(a.verdict(done + wait, head, idle), Verdict::Close(why));
        }
        // A header read timeout longer than the idle one: the idle one holds.
        let a = Activity::new();
        a.is_http1();
        drop(a.begin());
        let done = a.start + Duration::from_millis(a.last_done_ms.load(Ordering::Acquire));
        assert_eq!(a.verdict(done + head, idle, head), Verdict::Close("idle"));
    }
}
