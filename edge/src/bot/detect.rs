//! Automatic triggers: local counters in bounded memory, and the replicated decisions they lead
//! to.
//!
//! Each node counts what it sees (as a CDN counts per data centre) in count-min sketches: a
//! fixed table of counters however many sources an attacker sprays. A sketch serves one window
//! length and keeps four sub-windows of a quarter each; the estimate for a key is the sum over
//! the sub-windows of the smallest of its four cells, so it never counts events older than the
//! window and, without collisions, is exact for bursts shorter than three quarters of it. Cells
//! are updated conservatively (only those at the minimum grow), and the hash is keyed per process
//! so that an attacker cannot aim collisions at a victim.
//!
//! A trigger that reaches its threshold challenges the source on this node at once and queues a
//! decision ("challenge this prefix for this project until T"), bounded: what does not fit is
//! dropped and counted. [`crate::jobs::decisions`] sends the queue to the cluster in batches.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use ipnet::IpNet;
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::{Decision, DecisionAction, Trigger};
use tokio::sync::Notify;

/// Cells per row of a sketch sub-window.
const WIDTH: usize = 1 << 15;
const DEPTH: usize = 4;
const SLOTS: usize = 4;
/// Distinct window lengths with a sketch of their own; others share the nearest.
const MAX_SKETCHES: usize = 8;
/// Decisions per batch the writer takes.
pub const BATCH: usize = 64;
/// Decisions waiting to be written, and sources remembered as decided (bounds).
const MAX_PENDING: usize = 4_096;
const MAX_DECIDED: usize = 65_536;
/// How long this node's own decision applies before only the replicated one counts.
const LOCAL_GRACE_MS: u64 = 10_000;

/// A count-min sketch over a sliding window of four sub-windows.
pub struct Sketch {
    window_ms: u64,
    cells: Vec<AtomicU32>,
    /// The sub-window number each slot holds.
    slot_epoch: [AtomicU64; SLOTS],
    reset: Mutex<()>,
}

impl Sketch {
    fn new(window_ms: u64) -> Sketch {
        Sketch {
            window_ms: window_ms.max(SLOTS as u64),
            cells: (0..SLOTS * DEPTH * WIDTH)
                .map(|_| AtomicU32::new(0))
                .collect(),
            slot_epoch: Default::default(),
            reset: Mutex::new(()),
        }
    }

    pub fn bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU32>()
    }

    fn slot_len(&self) -> u64 {
        self.window_ms / SLOTS as u64
    }

    /// Make the slot of sub-window `epoch` current, clearing what it held before. A slot that
    /// already holds a later sub-window is left as it is (an event timed before it, counted
    /// late, goes into the later one): an old time never clears live counts.
    fn slot_for(&self, epoch: u64) -> usize {
        let slot = (epoch % SLOTS as u64) as usize;
        if self.slot_epoch[slot].load(Ordering::Acquire) < epoch {
            let _g = self.reset.lock().unwrap_or_else(|p| p.into_inner());
            if self.slot_epoch[slot].load(Ordering::Acquire) < epoch {
                let base = slot * DEPTH * WIDTH;
                for c in &self.cells[base..base + DEPTH * WIDTH] {
                    c.store(0, Ordering::Relaxed);
                }
                self.slot_epoch[slot].store(epoch, Ordering::Release);
            }
        }
        slot
    }

    fn index(hash: u64, row: usize) -> usize {
        let (h1, h2) = (hash as u32, (hash >> 32) as u32 | 1);
        (h1.wrapping_add(h2.wrapping_mul(row as u32)) as usize) % WIDTH
    }

    /// Count one event for `hash` at `now_ms`; the estimate within the window, this one included.
    pub fn add(&self, hash: u64, now_ms: u64) -> u32 {
        let epoch = now_ms / self.slot_len();
        let slot = self.slot_for(epoch);
        let base = slot * DEPTH * WIDTH;
        let cells: [&AtomicU32; DEPTH] =
            std::array::from_fn(|r| &self.cells[base + r * WIDTH + Self::index(hash, r)]);
        let min = cells
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        for c in cells {
            // Conservative update: only the cells at the minimum grow.
            let _ = c.compare_exchange(min, min + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
        let mut total = min.saturating_add(1);
        for back in 1..SLOTS as u64 {
            let Some(e) = epoch.checked_sub(back) else {
                break;
            };
            let s = (e % SLOTS as u64) as usize;
            if self.slot_epoch[s].load(Ordering::Acquire) != e {
                continue;
            }
            let base = s * DEPTH * WIDTH;
            let m = (0..DEPTH)
                .map(|r| {
                    self.cells[base + r * WIDTH + Self::index(hash, r)].load(Ordering::Relaxed)
                })
                .min()
                .unwrap_or(0);
            total = total.saturating_add(m);
        }
        total
    }
}

/// What a trigger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    RequestRate,
    RequestRateV6_64,
    ClientErrors,
    FailedLogins,
    MissingHeaders,
}

/// How many [`Signal`]s there are.
const SIGNALS: usize = 5;

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::RequestRate => "request_rate",
            Signal::RequestRateV6_64 => "request_rate_v6_64",
            Signal::ClientErrors => "client_errors",
            Signal::FailedLogins => "failed_logins",
            Signal::MissingHeaders => "missing_headers",
        }
    }
}

/// The prefix a signal counts by: an IPv4 address, or the trigger's IPv6 prefix (the /64 for
/// [`Signal::RequestRateV6_64`], which counts IPv6 only).
pub fn source_prefix(signal: Signal, ip: IpAddr, ipv6_prefix: u8) -> Option<Cidr> {
    let ip = ip.to_canonical();
    let len = match (signal, ip) {
        (Signal::RequestRateV6_64, IpAddr::V6(_)) => 64,
        (Signal::RequestRateV6_64, IpAddr::V4(_)) => return None,
        (_, IpAddr::V4(_)) => 32,
        (_, IpAddr::V6(_)) => ipv6_prefix.clamp(1, 128),
    };
    IpNet::new(ip, len).ok().map(Cidr::from_net)
}

/// A source this node decided to challenge.
#[derive(Debug, Clone, Copy)]
struct Local {
    until: u64,
    /// When this node decided.
    at: u64,
    /// Events counted since `at` from clients holding a clearance earned after it, per signal
    /// (one request counted by two triggers is one event of each, not two of either).
    strikes: [u32; SIGNALS],
}

/// This node's recent decisions, and the IPv6 prefix lengths they use (the lengths to look up).
#[derive(Default)]
struct Decided {
    by_source: HashMap<(ProjectId, Cidr), Local>,
    v6_lens: std::collections::BTreeSet<u8>,
}

/// The node's counters and its queue of decisions.
pub struct Detector {
    /// This detector among those of the process (a worker's remembered hash is its own).
    id: u64,
    hasher: RandomState,
    /// One sketch per window length in use, made on first use, in order (a free slot has none
    /// after it), never removed: looked up without a lock.
    sketches: [OnceLock<Sketch>; MAX_SKETCHES],
    /// Held while a sketch is made.
    making: Mutex<()>,
    /// Sources this node decided to challenge. A decision applies here for
    /// [`LOCAL_GRACE_MS`], until the cluster's copy takes over (so that an operator lifting it
    /// is obeyed on this node too).
    decided: Mutex<Decided>,
    /// When the last local grace ends: before it, `decided` is worth locking for.
    grace_ends: AtomicU64,
    pending: Mutex<Vec<Decision>>,
    /// Notified when a decision is queued.
    pub wake: Notify,
    dropped: AtomicU64,
}

impl Default for Detector {
    fn default() -> Self {
        Detector::new()
    }
}

impl Detector {
    pub fn new() -> Detector {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Detector {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            hasher: RandomState::new(),
            sketches: Default::default(),
            making: Mutex::new(()),
            decided: Mutex::new(Decided::default()),
            grace_ends: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Bytes held by counters: fixed per window length in use, whatever the traffic.
    pub fn counter_bytes(&self) -> usize {
        self.sketches
            .iter()
            .map_while(OnceLock::get)
            .map(Sketch::bytes)
            .sum()
    }

    fn sketch(&self, window_ms: u64) -> &Sketch {
        let window_ms = window_ms.max(SLOTS as u64);
        let find = || {
            self.sketches
                .iter()
                .map_while(OnceLock::get)
                .find(|s| s.window_ms == window_ms)
        };
        if let Some(s) = find() {
            return s;
        }
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = find() {
            return s;
        }
        match self.sketches.iter().find(|s| s.get().is_none()) {
            Some(free) => free.get_or_init(|| Sketch::new(window_ms)),
            // Out of sketches: share the one with the nearest window.
            None => self
                .sketches
                .iter()
                .map_while(OnceLock::get)
                .min_by_key(|s| s.window_ms.abs_diff(window_ms))
                .expect("MAX_SKETCHES > 0"),
        }
    }

    /// The sketch key of one signal from one source for one project: SipHash keyed per process
    /// (an attacker cannot aim collisions) of the source and project, laid out in one buffer and
    /// written at once, then mixed with the signal by a public bijection (which keeps the keyed
    /// hash's secrecy). A request counted by several signals of the same prefix is hashed once:
    /// the worker remembers the last layout it hashed (no allocation, compared as bytes).
    fn key(&self, signal: Signal, project: &ProjectId, prefix: Cidr) -> u64 {
        use std::cell::RefCell;
        const MAX: usize = 18 + 63;
        thread_local! {
            /// (detector, layout, its length) and its keyed hash.
            static LAST: RefCell<(u64, [u8; MAX], usize, u64)> =
                const { RefCell::new((u64::MAX, [0; MAX], 0, 0)) };
        }
        let mut buf = [0u8; MAX];
        let net = prefix.net();
        buf[1] = net.prefix_len();
        match net.addr() {
            IpAddr::V4(a) => {
                buf[0] = 4;
                buf[2..6].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                buf[0] = 6;
                buf[2..18].copy_from_slice(&a.octets());
            }
        }
        let id = project.as_str().as_bytes();
        let n = 18 + id.len().min(63);
        buf[18..n].copy_from_slice(&id[..n - 18]);
        let source = LAST.with_borrow_mut(|last| {
            if last.0 == self.id && last.2 == n && last.1[..n] == buf[..n] {
                return last.3;
            }
            let mut h = self.hasher.build_hasher();
            h.write(&buf[..n]);
            let h = h.finish();
            *last = (self.id, buf, n, h);
            h
        });
        // splitmix64's finaliser over the source's hash and the signal.
        let mut z = source ^ (signal as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Count one event of `signal` from `ip` for `project`. When it reaches the trigger's
    /// threshold (and the trigger is not log-only), the source is challenged here at once and a
    /// decision is queued for the cluster; returns whether the source is now decided.
    ///
    /// `cleared_at` is when the clearance the request carried was issued, if it had one. Once
    /// a source is decided, nothing new is said while the decision lasts, except for clients
    /// that earned a clearance after it: every `threshold` of their further events decide
    /// again, so one solved challenge buys at most one threshold's worth of abuse.
    pub fn count(
        &self,
        project: &ProjectId,
        signal: Signal,
        ip: IpAddr,
        trigger: &Trigger,
        now_ms: u64,
        cleared_at: Option<u64>,
    ) -> bool {
        if !trigger.enabled {
            return false;
        }
        let Some(prefix) = source_prefix(signal, ip, trigger.ipv6_prefix) else {
            return false;
        };
        let hash = self.key(signal, project, prefix);
        let sketch = self.sketch(u64::from(trigger.window_seconds) * 1000);
        let count = sketch.add(hash, now_ms);
        if count < trigger.threshold {
            return false;
        }
        let label = signal.as_str();
        if trigger.log_only {
            if count == trigger.threshold {
                metrics::counter!("palisade_bot_triggers_total", "trigger" => label, "mode" => "log_only").increment(1);
                tracing::info!(project = %project, %prefix, trigger = label, count, "bot trigger reached its threshold (log only: no challenge)");
            }
            return false;
        }
        let until = now_ms + u64::from(trigger.challenge_seconds) * 1000;
        let key = (project.clone(), prefix);
        let again = {
            let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
            let mut again = false;
            if let Some(local) = decided.by_source.get_mut(&key) {
                // Decided for at least half the duration again: nothing new to say, unless a
                // clearance earned since has used up its threshold.
                if local.until >= now_ms + u64::from(trigger.challenge_seconds) * 500 {
                    if cleared_at.is_none_or(|c| c < local.at) {
                        return true;
                    }
                    let strikes = &mut local.strikes[signal as usize];
                    *strikes += 1;
                    if *strikes < trigger.threshold {
                        return true;
                    }
                    again = true;
                }
            }
            if decided.by_source.len() >= MAX_DECIDED {
                decided.by_source.retain(|_, l| l.until > now_ms);
            }
            // A source already held is updated in place even when the map is full, so that its
            // strikes start again from the new decision.
            if decided.by_source.len() < MAX_DECIDED || decided.by_source.contains_key(&key) {
                let local = Local {
                    until: until.max(decided.by_source.get(&key).map_or(0, |l| l.until)),
                    at: now_ms,
                    strikes: [0; SIGNALS],
                };
                decided.by_source.insert(key.clone(), local);
                if let IpNet::V6(net) = prefix.net() {
                    decided.v6_lens.insert(net.prefix_len());
                }
                self.grace_ends
                    .fetch_max(now_ms + LOCAL_GRACE_MS, Ordering::Relaxed);
            }
            again
        };
        metrics::counter!("palisade_bot_triggers_total", "trigger" => label, "mode" => "challenge")
            .increment(1);
        tracing::info!(project = %project, %prefix, trigger = label, count, again, "bot trigger fired: challenging the source cluster-wide");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("palisade_bot_decisions_dropped_total").increment(1);
        } else {
            pending.push(Decision {
                project: key.0,
                prefix,
                action: DecisionAction::Challenge,
                until,
                reason: format!(
                    "{label}: {count} in {} s (threshold {}){}",
                    trigger.window_seconds,
                    trigger.threshold,
                    if again {
                        ", again after a solved challenge"
                    } else {
                        ""
                    }
                ),
                since: now_ms,
            });
            self.wake.notify_one();
        }
        true
    }

    /// This node's own recent decision for `ip` in `project`, if one applies: until when, and
    /// when it was made.
    pub fn decided(&self, project: &ProjectId, ip: IpAddr, now_ms: u64) -> Option<(u64, u64)> {
        // The common case, no recent local decision at all: no lock on the request path.
        if now_ms >= self.grace_ends.load(Ordering::Relaxed) {
            return None;
        }
        let decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        if decided.by_source.is_empty() {
            return None;
        }
        let ip = ip.to_canonical();
        let lens: Vec<u8> = match ip {
            IpAddr::V4(_) => vec![32],
            IpAddr::V6(_) => decided.v6_lens.iter().copied().collect(),
        };
        lens.into_iter()
            .filter_map(|len| IpNet::new(ip, len).ok())
            .filter_map(|n| decided.by_source.get(&(project.clone(), Cidr::from_net(n))))
            .filter(|l| l.until > now_ms && now_ms < l.at + LOCAL_GRACE_MS)
            .map(|l| (l.until, l.at))
            .max()
    }

    /// Up to [`BATCH`] queued decisions, oldest first.
    pub fn take_batch(&self) -> Vec<Decision> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = pending.len().min(BATCH);
        pending.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_counted_late_never_clears_a_later_sub_window() {
        // A 4 s window: four 1 s sub-windows; 10.5 s and 6.5 s fall in the same slot.
        let s = Sketch::new(4_000);
        for n in 1..=5 {
            assert_eq!(s.add(42, 10_500), n);
        }
        // An answer to a request that arrived at 6.5 s, counted now (a slow upload).
        s.add(42, 6_500);
        assert_eq!(
            s.add(42, 10_500),
            7,
            "the live counts of 10 s are kept, the late one with them"
        );
    }

    fn project() -> ProjectId {
        "shop".parse().unwrap()
    }

    #[test]
    fn a_trigger_fires_at_its_threshold_and_not_below() {
        let d = Detector::new();
        let t = Trigger::new(10, 60, 600);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..9 {
            assert!(!d.count(&project(), Signal::RequestRate, ip, &t, 1_000, None));
        }
        assert!(d.decided(&project(), ip, 1_000).is_none());
        assert!(d.count(&project(), Signal::RequestRate, ip, &t, 1_000, None));
        assert_eq!(d.decided(&project(), ip, 1_000), Some((601_000, 1_000)));
        assert_eq!(d.take_batch().len(), 1);
        // Another source and another project are untouched.
        assert!(!d.count(
            &project(),
            Signal::RequestRate,
            "192.0.2.8".parse().unwrap(),
            &t,
            1_000,
            None
        ));
        assert!(d.decided(&"blog".parse().unwrap(), ip, 1_000).is_none());
        // Log only counts but decides nothing.
        let quiet = Trigger {
            log_only: true,
            ..t.clone()
        };
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..20 {
            assert!(!d.count(&project(), Signal::ClientErrors, other, &quiet, 1_000, None));
        }
        assert!(d.take_batch().is_empty());
    }

    #[test]
    fn the_window_slides() {
        let s = Sketch::new(60_000);
        for _ in 0..5 {
            s.add(42, 0);
        }
        assert_eq!(s.add(42, 30_000), 6);
        // Sixty seconds after the first events, their quarter has left the window.
        assert_eq!(s.add(42, 60_000), 2);
        assert_eq!(s.add(42, 200_000), 1);
    }

    #[test]
    fn a_million_sprayed_ipv6_sources_stay_in_the_counters_bound_and_miss_no_heavy_hitter() {
        let d = Detector::new();
        let rate = Triggers::default().request_rate;
        let per64 = Triggers::default().request_rate_v6_64;
        let p = project();
        let heavy: IpAddr = "2001:db8:ffff::1".parse().unwrap();
        let before = d.counter_bytes();
        let mut fired = 0;
        for i in 0..1_000_000u64 {
            let now = i / 50; // a million requests within 20 s
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (u128::from(i) << 64) | u128::from(i),
            ));
            fired += d.count(&p, Signal::RequestRate, ip, &rate, now, None) as u32;
            fired += d.count(&p, Signal::RequestRateV6_64, ip, &per64, now, None) as u32;
            if i % 1000 == 0 {
                d.count(&p, Signal::RequestRate, heavy, &rate, now, None);
            }
        }
        assert_eq!(fired, 0, "no sprayed source reached a threshold");
        let bytes = d.counter_bytes();
        // Both triggers have a 60 s window: one sketch, 2 MiB, however many sources.
        assert!(
            before == 0 && bytes == SLOTS * DEPTH * WIDTH * 4,
            "{bytes} bytes"
        );
        // The heavy hitter sent 1,000; its next request is over 600.
        assert!(d.count(&p, Signal::RequestRate, heavy, &rate, 20_000, None));
        assert!(d.decided.lock().unwrap().by_source.len() <= MAX_DECIDED);
        eprintln!("counters for 1,000,000 IPv6 sources: {} KiB", bytes / 1024);
    }

    #[test]
    fn a_clearance_earned_after_a_decision_buys_one_threshold_and_no_more() {
        let d = Detector::new();
        let t = Trigger::new(5, 600, 600);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let p = project();
        let count = |now, cleared| d.count(&p, Signal::FailedLogins, ip, &t, now, cleared);
        for _ in 0..4 {
            assert!(!count(1_000, None));
        }
        assert!(count(1_000, None), "the fifth decides");
        assert_eq!(d.take_batch().len(), 1);
        // Without a clearance, or with one older than the decision: nothing new.
        for _ in 0..20 {
            assert!(count(2_000, None));
            assert!(count(2_000, Some(500)));
        }
        assert!(d.take_batch().is_empty());
        // A clearance earned after it: five more, then a new decision, made now.
        for _ in 0..4 {
            assert!(count(3_000, Some(2_500)));
        }
        assert!(d.take_batch().is_empty());
        assert!(count(3_000, Some(2_500)));
        let again = d.take_batch();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].since, 3_000);
        assert_eq!(d.decided(&p, ip, 3_000).map(|(_, at)| at), Some(3_000));
    }

    #[test]
    fn strikes_count_per_trigger_not_per_source() {
        let d = Detector::new();
        let t = Trigger::new(5, 600, 600);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let p = project();
        for _ in 0..5 {
            d.count(&p, Signal::FailedLogins, ip, &t, 1_000, None);
            d.count(&p, Signal::MissingHeaders, ip, &t, 1_000, None);
        }
        assert_eq!(
            d.take_batch().len(),
            1,
            "both over their thresholds, one decision"
        );
        // Each request of a cleared client counted by two triggers: four of each stay under
        // either threshold, although eight events were counted for the source.
        for _ in 0..4 {
            assert!(d.count(&p, Signal::FailedLogins, ip, &t, 3_000, Some(2_500)));
            d.count(&p, Signal::MissingHeaders, ip, &t, 3_000, Some(2_500));
        }
        assert!(
            d.take_batch().iter().all(|x| !x.reason.contains("again")),
            "no trigger reached its threshold again"
        );
        assert!(d.count(&p, Signal::FailedLogins, ip, &t, 3_000, Some(2_500)));
        let again = d.take_batch();
        assert_eq!(again.len(), 1);
        assert!(
            again[0].reason.starts_with("failed_logins"),
            "{}",
            again[0].reason
        );
    }

    #[test]
    fn ipv6_sources_count_per_the_triggers_prefix() {
        let d = Detector::new();
        let t = Trigger::new(10, 60, 600);
        let p = project();
        for i in 1..10u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, 0, i));
            assert!(!d.count(&p, Signal::FailedLogins, ip, &t, 1_000, None));
        }
        let tenth: IpAddr = "2001:db8:7:7:ffff::1".parse().unwrap();
        assert!(d.count(&p, Signal::FailedLogins, tenth, &t, 1_000, None));
        let batch = d.take_batch();
        assert_eq!(batch[0].prefix.to_string(), "2001:db8:7:7::/64");
        assert!(d
            .decided(&p, "2001:db8:7:7::42".parse().unwrap(), 1_000)
            .is_some());
        assert!(d
            .decided(&p, "2001:db8:7:8::1".parse().unwrap(), 1_000)
            .is_none());
        // Per address when the trigger says so.
        let per_address = Trigger {
            ipv6_prefix: 128,
            ..t
        };
        for i in 1..=20u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 9, 9, 0, 0, 0, i));
            assert!(!d.count(&p, Signal::ClientErrors, ip, &per_address, 1_000, None));
        }
    }

    use palisade_raft::model::Triggers;
}
