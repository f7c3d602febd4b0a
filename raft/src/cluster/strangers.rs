//! What a peer without a node certificate may cost a node. Anyone on the network can reach the
//! cluster port, and only a joining node has a reason to come without a certificate, so a
//! stranger gets little: a bounded number of connections for a short time, a few streams each,
//! small frames read under a deadline, and a few join attempts a minute per source address. A
//! join whose secret matches no live token is refused without a Raft write, and the refusals of
//! one source are audited once a minute at most, under the address the packets came from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::Millis;

/// Connections without a certificate a node holds at once; more are closed at the handshake.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection without a certificate may stay open.
pub const LIFETIME: Duration = Duration::from_secs(30);
/// How long a stranger's request frame may take to arrive.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Join attempts one source address may make a minute; more are refused without a look.
pub const JOINS_PER_MINUTE: u32 = 10;
/// Source addresses remembered. Past this, sources of earlier minutes are forgotten, and while
/// this many sources are busy in the same minute a new one is refused (a source must complete
/// a QUIC handshake to count, so these are real addresses, not spoofed ones).
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    minute: u64,
    attempts: u32,
    audited: bool,
}

/// The node's budget for strangers.
pub struct Strangers {
    connections: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, Window>>,
}

impl Default for Strangers {
    fn default() -> Self {
        Strangers {
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            sources: Mutex::new(HashMap::new()),
        }
    }
}

impl Strangers {
    /// A place for one more connection without a certificate, held while it lives; `None` when
    /// the node holds [`MAX_CONNECTIONS`] already.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// `f` on the window of `ip` this minute; `None` when no window is left for a new source.
    fn window<T>(&self, ip: IpAddr, now: Millis, f: impl FnOnce(&mut Window) -> T) -> Option<T> {
        let minute = now / 60_000;
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
            sources.retain(|_, w| w.minute == minute);
            if sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let w = sources.entry(ip).or_insert(Window {
            minute,
            attempts: 0,
            audited: false,
        });
        if w.minute != minute {
            *w = Window {
                minute,
                attempts: 0,
                audited: false,
            };
        }
        Some(f(w))
    }

    /// Count a join attempt from `ip`: whether it may be looked at (not over the limit).
    pub fn join_attempt(&self, ip: IpAddr, now: Millis) -> bool {
        self.window(ip, now, |w| {
            w.attempts = w.attempts.saturating_add(1);
            w.attempts <= JOINS_PER_MINUTE
        })
        .unwrap_or(false)
    }

    /// Whether a refusal of `ip` is its first this minute (the one that is audited).
    pub fn first_refusal(&self, ip: IpAddr, now: Millis) -> bool {
        self.window(ip, now, |w| !std::mem::replace(&mut w.audited, true))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_few_attempts_a_minute_and_one_audited_refusal() {
        let s = Strangers::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let allowed = (0..500).filter(|_| s.join_attempt(a, 1_000)).count();
        assert_eq!(allowed, JOINS_PER_MINUTE as usize);
        assert!(
            s.join_attempt(b, 1_000),
            "another source has its own budget"
        );
        assert!(s.first_refusal(a, 1_000));
        assert!(!s.first_refusal(a, 59_999), "one audited refusal a minute");
        // The next minute starts afresh.
        assert!(s.join_attempt(a, 60_000));
        assert!(s.first_refusal(a, 60_000));
    }

    #[test]
    fn a_spray_of_sources_stays_within_the_bound() {
        let s = Strangers::default();
        let admitted = (0..20_000u32)
            .filter(|i| s.join_attempt(IpAddr::from(i.to_be_bytes()), 1_000))
            .count();
        assert_eq!(
            admitted, MAX_SOURCES,
            "new sources past the bound are refused"
        );
        assert_eq!(s.sources.lock().unwrap().len(), MAX_SOURCES);
        // Sources of an earlier minute make room for this minute's.
        assert!(s.join_attempt("192.0.2.9".parse().unwrap(), 61_000));
        assert_eq!(s.sources.lock().unwrap().len(), 1);
    }

    #[test]
    fn connections_without_a_certificate_are_bounded() {
        let s = Strangers::default();
        let held: Vec<_> = (0..MAX_CONNECTIONS).map(|_| s.admit().unwrap()).collect();
        assert!(s.admit().is_none());
        drop(held);
        assert!(s.admit().is_some());
    }
}
