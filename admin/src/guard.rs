//! What authentication leaves behind: failed attempts slowed down and written to the audit log,
//! and the time each key was last used.
//!
//! Neither may turn the admin API into a way to flood the Raft log. Failure entries go through a
//! bounded queue and are written at most `admin.failure_audits_per_second` (default
//! [`FAILURE_AUDITS_PER_SEC`]) a second per node; what does
//! not fit is counted and written as one summary entry a second. Key use is gathered in memory
//! and written once per `admin.last_used_flush_ms` as one command for all keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_raft::cluster::Cluster;
use palisade_raft::command::{Command, Request};
use palisade_raft::ids::Name;
use palisade_raft::model::{AuditClass, AuditEntry, Millis};
use palisade_raft::now_ms;
use tokio::sync::mpsc;

use crate::auth::FailureTracker;

pub const FAILURE_AUDITS_PER_SEC: u32 = 20;
/// Times a second a node asks the leader to catch up before refusing a key it does not know
/// (one made a moment ago through another node): an unauthenticated caller must not make the
/// leader work for free.
pub const CATCH_UPS_PER_SEC: u32 = 10;
const QUEUE: usize = 256;

pub struct Guard {
    failures: FailureTracker,
    used: Mutex<HashMap<Name, Millis>>,
    audit_tx: mpsc::Sender<AuditEntry>,
    audit_rx: Mutex<Option<mpsc::Receiver<AuditEntry>>>,
    unrecorded: AtomicU64,
    /// The second, and how many catch-ups for unknown keys it has seen.
    catch_ups: Mutex<(u64, u32)>,
}

impl Default for Guard {
    fn default() -> Self {
        let (audit_tx, audit_rx) = mpsc::channel(QUEUE);
        Guard {
            failures: FailureTracker::default(),
            used: Mutex::new(HashMap::new()),
            audit_tx,
            audit_rx: Mutex::new(Some(audit_rx)),
            unrecorded: AtomicU64::new(0),
            catch_ups: Mutex::new((0, 0)),
        }
    }
}

impl Guard {
    /// Note a successful use of key `id`.
    pub fn used(&self, id: &str) {
        if let Ok(name) = id.parse::<Name>() {
            self.used
                .lock()
                .expect("key use lock")
                .insert(name, now_ms());
        }
    }

    /// Whether an unknown key may make this node catch up with the leader before it is refused
    /// (at most [`CATCH_UPS_PER_SEC`] a second).
    pub fn may_catch_up(&self) -> bool {
        let second = now_ms() / 1000;
        let mut c = self.catch_ups.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != second {
            *c = (second, 0);
        }
        c.1 += 1;
        c.1 <= CATCH_UPS_PER_SEC
    }

    /// Record a failed authentication (queued for the audit log); how long to hold the answer.
    pub fn failed(&self, ip: Option<IpAddr>, entry: AuditEntry) -> Duration {
        metrics::counter!("palisade_admin_auth_failures_total").increment(1);
        if self.audit_tx.try_send(entry).is_err() {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        ip.map(|ip| self.failures.fail(ip))
            .unwrap_or(Duration::ZERO)
    }

    /// Write queued failures and key use until `stop`; started once per node.
    pub async fn run(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        flush_every: Duration,
        audits_per_second: u32,
    ) {
        let Some(mut rx) = self.audit_rx.lock().expect("audit queue lock").take() else {
            return;
        };
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut flush = tokio::time::interval(flush_every);
        let mut window = (Instant::now(), 0u32);
        loop {
            tokio::select! {
                entry = rx.recv() => {
                    let Some(entry) = entry else { return };
                    if window.0.elapsed() >= Duration::from_secs(1) {
                        window = (Instant::now(), 0);
                    }
                    if window.1 >= audits_per_second {
                        self.unrecorded.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    window.1 += 1;
                    let req = Request::new(Command::AuditOnly).with_audit(entry);
                    if let Err(e) = cluster.write(req).await {
                        self.unrecorded.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot record an authentication failure");
                    }
                }
                _ = second.tick() => self.summarise(&cluster).await,
                _ = flush.tick() => self.flush_used(&cluster).await,
            }
        }
    }

    /// One audit entry for the failures that were not itemised.
    async fn summarise(&self, cluster: &Cluster) {
        let n = self.unrecorded.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let entry = AuditEntry {
            seq: 0,
            at: now_ms(),
            actor: format!("node:{}", cluster.node_id),
            source_ip: String::new(),
            action: "auth.failure.summary".into(),
            target: "admin".into(),
            outcome: format!("{n} further authentication failures, not itemised (rate cap)"),
            class: AuditClass::Outside,
        };
        let req = Request::new(Command::AuditOnly).with_audit(entry);
        if let Err(e) = cluster.write(req).await {
            self.unrecorded.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot record the authentication failure summary");
        }
    }

    async fn flush_used(&self, cluster: &Cluster) {
        let used: Vec<(Name, Millis)> = self.used.lock().expect("key use lock").drain().collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = cluster
            .write(Request::new(Command::TouchKeys { used: used.clone() }))
            .await
        {
            tracing::warn!(error = %e, "cannot record API key use; will retry");
            let mut map = self.used.lock().expect("key use lock");
            for (id, at) in used {
                let slot = map.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }
}
