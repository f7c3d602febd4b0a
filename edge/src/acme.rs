//! Automatic certificates (ACME, RFC 8555) for every domain whose TLS mode is `acme`.
//!
//! Every voter runs the same loop; the store decides who acts:
//! - **One owner per name.** The owner of a name is chosen by rendezvous hashing over the voters
//!   the leader has heard from lately. The owner takes the lease `acme:{host}`; the lease's
//!   fencing token (the log index that granted it) goes with every write of the order, so a
//!   deposed owner (paused, partitioned) has its late writes refused by the state machine. When
//!   an owner dies, it drops out of the healthy voters, another node becomes the owner and takes
//!   the lease once it expires.
//! - **Challenges from the store.** The HTTP-01 key authorization and the TLS-ALPN-01 validation
//!   certificate are committed (and waited for on every voter) before the challenge is marked
//!   ready, so whichever node the CA reaches answers it.
//! - **A cluster-wide budget.** Orders per account and failed validations per name are counted in
//!   replicated rate windows ([`Command::Spend`]); the defaults follow Let's Encrypt's published
//!   limits and the cluster settings change them.
//! - **Renewal** when the CA's renewal information (RFC 9773) says so, otherwise when a third of
//!   the lifetime is left (minus a per-name jitter), or when the `acme.renew_before_hours`
//!   setting says so. Failures back off exponentially up to a cap; the old certificate is served
//!   until the new one is stored.
//!
//! Keys (account and certificate) are sealed with the master key before they reach the store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use palisade_raft::cluster::Cluster;
use palisade_raft::command::{Command, Request, Response, BUDGET_SPENT, STALE_FENCE};
use palisade_raft::ids::{Hostname, Name, NodeId};
use palisade_raft::model::{
    prefix, AcmeAccount, Alpn01, AuditEntry, Cert, CertSource, CertState, CertStatus,
    ClusterSettings, Http01, Millis, RateWindow, Record, RecordKey, TlsMode,
};
use palisade_raft::now_ms;
use tokio::sync::{watch, Semaphore};

/// How a node reaches its CA.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL (see [`directory_url`]).
    pub directory: String,
    /// Contact URLs for the account (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// PEM file of the CAs that sign the directory's HTTPS certificate, instead of the system's.
    pub ca_bundle: Option<PathBuf>,
    /// The challenge offered first; the other is used when the CA does not offer it.
    pub challenge: ChallengeKind,
    pub lease_ttl: Duration,
    /// First wait after a failure; it doubles per failure up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long the CA may take to validate and issue.
    pub order_timeout: Duration,
    /// Orders this node works on at once.
    pub parallel: usize,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: directory_url("letsencrypt").unwrap_or_default(),
            contact: Vec::new(),
            ca_bundle: None,
            challenge: ChallengeKind::Http01,
            lease_ttl: Duration::from_secs(60),
            backoff_base: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(6 * 3600),
            order_timeout: Duration::from_secs(120),
            parallel: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn parse(s: &str) -> Result<ChallengeKind, String> {
        match s {
            "http-01" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
            other => Err(format!(
                "{other:?} is not a challenge Palisade answers (http-01 or tls-alpn-01)"
            )),
        }
    }

    fn acme(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn other(self) -> ChallengeKind {
        match self {
            ChallengeKind::Http01 => ChallengeKind::TlsAlpn01,
            ChallengeKind::TlsAlpn01 => ChallengeKind::Http01,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `letsencrypt`, `letsencrypt-staging`, or an `https://` directory URL.
pub fn directory_url(name: &str) -> Result<String, String> {
    match name {
        "letsencrypt" => Ok(instant_acme::LetsEncrypt::Production.url().to_string()),
        "letsencrypt-staging" => Ok(instant_acme::LetsEncrypt::Staging.url().to_string()),
        url if url.starts_with("https://") && url.len() > "https://".len() => Ok(url.to_string()),
        other => Err(format!(
            "{other:?} is neither letsencrypt, letsencrypt-staging nor an https:// directory URL"
        )),
    }
}

/// The cluster settings of ACME, with their defaults (Let's Encrypt's published limits: 300 new
/// orders per account per 3 hours, 5 failed validations per name per hour).
pub const SETTINGS: &[(&str, u64, &str)] = &[
    (
        "acme.max_orders",
        300,
        "new orders per account in the orders window",
    ),
    ("acme.orders_window_minutes", 180, "the orders window"),
    (
        "acme.max_failed_validations",
        5,
        "failed validations per name in the failure window",
    ),
    ("acme.failed_window_minutes", 60, "the failure window"),
    (
        "acme.renew_before_hours",
        0,
        "renew when this little is left (0: when a third of the lifetime is left)",
    ),
    (
        "acme.min_reissue_minutes",
        1440,
        "never reorder a name sooner after a success, except on request",
    ),
];

/// Check one `acme.*` setting: a known name and a whole number.
pub fn check_setting(name: &str, value: &str) -> Option<Result<(), String>> {
    SETTINGS.iter().find(|(n, ..)| *n == name)?;
    Some(
        value
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| format!("{value:?} is not a whole number")),
    )
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    max_orders: u32,
    orders_window_ms: u64,
    max_failed: u32,
    failed_window_ms: u64,
    renew_before_ms: Option<u64>,
    min_reissue_ms: u64,
}

impl Budget {
    fn from_settings(s: Option<&ClusterSettings>) -> Budget {
        let get = |name: &str| -> u64 {
            s.and_then(|s| s.values.get(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    SETTINGS
                        .iter()
                        .find(|(n, ..)| *n == name)
                        .map_or(0, |(_, d, _)| *d)
                })
        };
        let minutes = |name| get(name).saturating_mul(60_000);
        Budget {
            max_orders: get("acme.max_orders").min(u32::MAX as u64) as u32,
            orders_window_ms: minutes("acme.orders_window_minutes"),
            max_failed: get("acme.max_failed_validations").min(u32::MAX as u64) as u32,
            failed_window_ms: minutes("acme.failed_window_minutes"),
            renew_before_ms: Some(get("acme.renew_before_hours").saturating_mul(3_600_000))
                .filter(|&b| b > 0),
            min_reissue_ms: minutes("acme.min_reissue_minutes"),
        }
    }
}

/// A voter the leader has not heard from for this long is not given names.
const HEALTHY_ACK: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);
/// How long every voter gets to apply a challenge record before the CA is told to look.
const CHALLENGE_SPREAD: Duration = Duration::from_secs(10);
/// Challenge records outlive any order by far; the sweep removes them after this.
const CHALLENGE_TTL_MS: u64 = 3_600_000;

/// Why an attempt ended without a certificate.
#[derive(Debug)]
enum Failure {
    /// Counts toward the back-off.
    Failed { message: String, validation: bool },
    /// The budget is spent; try again at `until` (no back-off).
    Budget { message: String, until: Millis },
    /// The lease was lost: another node owns the name now; write nothing more.
    Deposed,
}

fn failed(message: impl Into<String>) -> Failure {
    Failure::Failed {
        message: message.into(),
        validation: false,
    }
}

/// The ACME worker of one node.
pub struct Acme {
    cfg: AcmeConfig,
    cluster: Arc<Cluster>,
    account: tokio::sync::Mutex<Option<Account>>,
    busy: Mutex<HashSet<Hostname>>,
    slots: Semaphore,
    /// RFC 9773 renewal times by certificate (name, not_after), and whether the CA has ARI.
    ari: Mutex<HashMap<(String, Millis), Millis>>,
    ari_unsupported: std::sync::atomic::AtomicBool,
    ari_running: std::sync::atomic::AtomicBool,
}

impl Acme {
    pub fn new(cfg: AcmeConfig, cluster: Arc<Cluster>) -> Arc<Acme> {
        Arc::new(Acme {
            slots: Semaphore::new(cfg.parallel.max(1)),
            cfg,
            cluster,
            account: tokio::sync::Mutex::new(None),
            busy: Mutex::new(HashSet::new()),
            ari: Mutex::new(HashMap::new()),
            ari_unsupported: std::sync::atomic::AtomicBool::new(false),
            ari_running: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Work until `stop` turns true: a pass every second, and at once after a relevant change.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut events = self.cluster.reader.subscribe();
        loop {
            if let Err(e) = self.pass().await {
                tracing::debug!(error = %e, "ACME pass skipped");
            }
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = tokio::time::sleep(TICK) => {}
                ev = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                        return;
                    }
                    // Let a burst of changes (twenty domains at once) settle into one pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while events.try_recv().is_ok() {}
                }
            }
        }
    }

    fn read(&self, key: &RecordKey) -> Option<Record> {
        self.cluster.reader.get(key).ok().flatten()
    }

    fn status(&self, host: &Hostname) -> Option<CertStatus> {
        match self.read(&RecordKey::CertStatus { host: host.clone() }) {
            Some(Record::CertStatus(s)) => Some(s),
            _ => None,
        }
    }

    fn budget(&self) -> Budget {
        match self.read(&RecordKey::Settings) {
            Some(Record::Settings(s)) => Budget::from_settings(Some(&s)),
            _ => Budget::from_settings(None),
        }
    }

    /// One look at every `acme` domain: start the orders this node owns and that are due.
    async fn pass(self: &Arc<Self>) -> Result<(), String> {
        let now = now_ms();
        let budget = self.budget();
        let mut due = Vec::new();
        let mut leader_work = Vec::new();
        let reader = &self.cluster.reader;
        reader
            .for_each(prefix::DOMAIN, |r| {
                if let Record::Domain(d) = r {
                    if d.tls == TlsMode::Acme && self.is_due(&d.host, now, &budget) {
                        due.push(d.host);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        if self.cluster.is_leader() {
            leader_work.extend(self.expired_challenges(now));
        }
        if !leader_work.is_empty() {
            let req = Request::new(Command::DeleteMany { keys: leader_work });
            let _ = self.cluster.write(req).await;
        }
        let mut ari_certs = Vec::new();
        if !self
            .ari_unsupported
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.ari_missing(&mut ari_certs);
        }
        let ari_wanted = !ari_certs.is_empty();
        if due.is_empty() && !ari_wanted {
            return Ok(());
        }
        let voters = self.healthy_voters().await;
        if !voters.contains(&self.cluster.node_id) {
            return Ok(());
        }
        if ari_wanted
            && !self
                .ari_running
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let mut mine = ari_certs;
            mine.retain(|c| {
                c.hosts
                    .first()
                    .is_some_and(|h| owner(h, &voters) == Some(self.cluster.node_id))
            });
            let this = self.clone();
            tokio::spawn(async move {
                this.refresh_renewal_info(&mine).await;
                this.ari_running
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            });
        }
        for host in due {
            if owner(&host, &voters) != Some(self.cluster.node_id) {
                continue;
            }
            if !self.busy.lock().unwrap().insert(host.clone()) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.work(&host).await;
                this.busy.lock().unwrap().remove(&host);
            });
        }
        Ok(())
    }

    /// ACME certificates with no renewal window from the CA yet (collected into `out`).
    fn ari_missing(&self, out: &mut Vec<Cert>) {
        let known = self.ari.lock().unwrap();
        let _ = self.cluster.reader.for_each(prefix::CERT, |r| {
            if let Record::Cert(c) = r {
                if c.source == CertSource::Acme
                    && !known.contains_key(&(c.name.to_string(), c.not_after))
                {
                    out.push(c);
                }
            }
        });
    }

    /// Whether `host` needs an order now and nobody holds its lease.
    fn is_due(&self, host: &Hostname, now: Millis, budget: &Budget) -> bool {
        if let Some(Record::Lease(l)) = self.read(&RecordKey::Lease {
            name: lease_name(host),
        }) {
            if l.expires_at > now {
                return false; // somebody is on it
            }
        }
        self.needs_order(host, now, budget)
    }

    /// Whether `host` needs an order now, as far as the applied state says.
    fn needs_order(&self, host: &Hostname, now: Millis, budget: &Budget) -> bool {
        let status = self.status(host);
        if host.is_wildcard() {
            return status.is_none_or(|s| s.state != CertState::Refused);
        }
        let Some(status) = status else {
            return true;
        };
        if status.renew_requested_at.is_some() {
            return true;
        }
        // After a failure, the back-off; a valid certificate goes by its own renewal time.
        if status.state != CertState::Valid && now < status.next_attempt_at {
            return false;
        }
        match self.read(&RecordKey::Cert {
            name: cert_name(host),
        }) {
            Some(Record::Cert(c)) if c.hosts.contains(host) => {
                let reissue_ok = status
                    .last_success_at
                    .is_none_or(|t| now >= t.saturating_add(budget.min_reissue_ms));
                reissue_ok && now >= self.renew_at(&c, budget)
            }
            _ => true,
        }
    }

    /// When `c` should be renewed: the configured threshold, else the CA's renewal window, else
    /// a third of the lifetime before expiry minus a jitter of up to 1/30 of the lifetime (so
    /// that names issued together are not renewed together).
    fn renew_at(&self, c: &Cert, budget: &Budget) -> Millis {
        if let Some(before) = budget.renew_before_ms {
            return c.not_after.saturating_sub(before);
        }
        if let Some(at) = self
            .ari
            .lock()
            .unwrap()
            .get(&(c.name.to_string(), c.not_after))
        {
            return *at;
        }
        let lifetime = c.not_after.saturating_sub(c.not_before);
        let jitter = spread(c.name.as_str(), c.not_after) % (lifetime / 30).max(1);
        c.not_after.saturating_sub(lifetime / 3 + jitter)
    }

    /// The leader and the voters it heard from within [`HEALTHY_ACK`], in id order.
    async fn healthy_voters(&self) -> Vec<NodeId> {
        let status = self.cluster.status().await;
        status
            .members
            .iter()
            .filter(|m| m.voter)
            .filter(|m| {
                // Unknown counts as unhealthy: a new leader has heard from nobody yet, and a
                // paused node must not keep its names. Right after an election names may
                // gather on the leader for a moment; the leases keep that safe.
                Some(m.id) == status.leader
                    || m.last_ack_ms
                        .is_some_and(|ms| ms < HEALTHY_ACK.as_millis() as u64)
            })
            .map(|m| m.id)
            .collect()
    }

    /// Challenge records older than [`CHALLENGE_TTL_MS`] (left by an owner that died).
    fn expired_challenges(&self, now: Millis) -> Vec<RecordKey> {
        let mut keys = Vec::new();
        let reader = &self.cluster.reader;
        let _ = reader.for_each(prefix::HTTP01, |r| {
            if let Record::Http01(h) = r {
                if h.expires_at <= now {
                    keys.push(RecordKey::Http01 { token: h.token });
                }
            }
        });
        let _ = reader.for_each(prefix::ALPN01, |r| {
            if let Record::Alpn01(a) = r {
                if a.expires_at <= now {
                    keys.push(RecordKey::Alpn01 { host: a.host });
                }
            }
        });
        keys.truncate(1000);
        keys
    }

    /// Take the name's lease, order, and record the outcome.
    async fn work(self: &Arc<Self>, host: &Hostname) {
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let lease = lease_name(host);
        let ttl_ms = self.cfg.lease_ttl.as_millis() as u64;
        let acquire = Command::AcquireLease {
            name: lease.clone(),
            holder: self.cluster.node_id,
            ttl_ms,
        };
        let token = match self.cluster.write(Request::new(acquire.clone())).await {
            Ok(Response::LeaseGranted { lease, .. }) => lease.token,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(%host, error = %e, "could not take the ACME lease");
                return;
            }
        };
        // Between the look that found the name due and this lease, another node may have held
        // the lease and finished: look again at the state as of the grant.
        self.cluster.reader.wait_applied(token).await;
        if !self.needs_order(host, now_ms(), &self.budget()) {
            let release = Command::ReleaseLease { name: lease, token };
            let _ = self.cluster.write(Request::new(release)).await;
            return;
        }
        tracing::info!(%host, token, "ordering a certificate");
        // Keep the lease while the order runs; the order's own writes notice when it is lost.
        let keeper = {
            let cluster = self.cluster.clone();
            let every = self.cfg.lease_ttl / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match cluster.write(Request::new(acquire.clone())).await {
                        Ok(Response::LeaseGranted { lease, .. }) if lease.token == token => {}
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            })
        };
        let started = now_ms();
        let mut placed = false;
        let mut challenges = Vec::new();
        // A whole attempt has a deadline: a request to the CA that never answers (a dropped
        // connection with no reset) must not hold the name forever. Polling has its own
        // `order_timeout`; the rest of an attempt takes seconds.
        let deadline = self.cfg.order_timeout * 2;
        let outcome = tokio::time::timeout(
            deadline,
            self.order(host, token, &mut placed, &mut challenges),
        )
        .await
        .unwrap_or_else(|_| {
            Err(failed(format!(
                "the attempt for {host} did not finish within {} s (the CA stopped answering); it is retried",
                deadline.as_secs()
            )))
        });
        keeper.abort();
        if matches!(outcome, Err(Failure::Deposed)) {
            metrics::counter!("palisade_acme_deposed_total").increment(1);
            tracing::warn!(%host, token, "lost the ACME lease mid-order; another node finishes it");
            return;
        }
        if !challenges.is_empty() {
            let _ = self
                .fenced(
                    &lease,
                    token,
                    Command::DeleteMany { keys: challenges },
                    None,
                )
                .await;
        }
        if let Err(f) = outcome {
            self.record_failure(host, &lease, token, started, placed, f)
                .await;
        }
        let _ = self
            .cluster
            .write(Request::new(Command::ReleaseLease { name: lease, token }))
            .await;
    }

    /// Write `command` only while this node still holds `lease` with `token`.
    async fn fenced(
        &self,
        lease: &Name,
        token: u64,
        command: Command,
        audit: Option<AuditEntry>,
    ) -> Result<u64, Failure> {
        let mut req = Request::new(Command::Fenced {
            lease: lease.clone(),
            token,
            command: Box::new(command),
        });
        if let Some(a) = audit {
            req = req.with_audit(a);
        }
        match self.cluster.write(req).await {
            Ok(Response::Applied { index, .. }) => Ok(index),
            Ok(Response::Refused { reason }) if reason.starts_with(STALE_FENCE) => {
                metrics::counter!("palisade_acme_fenced_refusals_total").increment(1);
                tracing::warn!(%lease, token, "a write of a deposed ACME owner was refused: {reason}");
                Err(Failure::Deposed)
            }
            Ok(Response::Refused { reason }) => {
                Err(failed(format!("the cluster refused a write: {reason}")))
            }
            Ok(other) => Err(failed(format!(
                "unexpected answer from the cluster: {other:?}"
            ))),
            Err(e) => Err(failed(format!("the cluster did not take a write: {e}"))),
        }
    }

    /// An audit entry for a change this node makes on `cert/{host}`.
    fn audit(&self, action: &str, host: &Hostname, outcome: &str) -> AuditEntry {
        AuditEntry::by_node(
            self.cluster.node_id,
            action,
            format!("cert/{host}"),
            outcome,
        )
    }

    /// One attempt: the steps of RFC 8555 §7, each write fenced by the lease.
    async fn order(
        &self,
        host: &Hostname,
        token: u64,
        placed: &mut bool,
        challenges: &mut Vec<RecordKey>,
    ) -> Result<(), Failure> {
        let lease = lease_name(host);
        let now = now_ms();
        let previous = self.status(host);
        let mut status = previous
            .clone()
            .unwrap_or_else(|| CertStatus::new(host.clone(), now));
        status.state = CertState::Ordering;
        status.owner = Some(self.cluster.node_id);
        status.last_attempt_at = Some(now);
        if host.is_wildcard() {
            status.state = CertState::Refused;
            status.last_error = Some(format!(
                "{host} is a wildcard: a CA validates wildcards only by DNS-01, which Palisade does not do; upload a certificate for it (tls = manual)"
            ));
            let cmd = Command::Put {
                record: Record::CertStatus(status),
            };
            self.fenced(&lease, token, cmd, None).await?;
            return Ok(());
        }
        self.fenced(
            &lease,
            token,
            Command::Put {
                record: Record::CertStatus(status.clone()),
            },
            None,
        )
        .await?;

        let budget = self.budget();
        let failures = RecordKey::RateWindow {
            name: failure_window(host),
        };
        if let Some(Record::RateWindow(w)) = self.read(&failures) {
            if let Some(until) = full_until(&w, budget.max_failed, budget.failed_window_ms, now) {
                return Err(Failure::Budget {
                    message: format!(
                        "{} failed validations of {host} within {} minutes: the CA's limit; waiting before ordering again",
                        budget.max_failed,
                        budget.failed_window_ms / 60_000
                    ),
                    until,
                });
            }
        }

        let account = self.account().await.map_err(failed)?;
        // An order left by an attempt that failed for a passing reason is resumed once, so a
        // network error does not cost a second order.
        let resumed = match status.order_url.clone() {
            Some(url) => match account.order(url).await {
                Ok(mut o) => {
                    let open =
                        matches!(o.state().status, OrderStatus::Pending | OrderStatus::Ready);
                    open.then_some(o)
                }
                Err(_) => None,
            },
            None => None,
        };
        let mut order = match resumed {
            Some(o) => {
                tracing::info!(%host, "resuming the order of the last attempt");
                o
            }
            None => {
                self.place_order(host, &lease, token, &account, &status, &budget, now, placed)
                    .await?
            }
        };

        let mut used = self.cfg.challenge;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| {
                    failed(format!("reading the authorization: {}", acme_error(&e)))
                })?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(failed(format!(
                            "the CA's authorization for {host} is {other:?}"
                        )))
                    }
                }
                let offered =
                    |k: ChallengeKind| authz.challenges.iter().any(|c| c.r#type == k.acme());
                if !offered(used) {
                    used = used.other();
                    if !offered(used) {
                        return Err(failed(format!(
                            "the CA offers neither http-01 nor tls-alpn-01 for {host}"
                        )));
                    }
                }
                let mut challenge = authz
                    .challenge(used.acme())
                    .ok_or_else(|| failed("the challenge vanished"))?;
                let key_auth = challenge.key_authorization();
                let expires_at = now_ms() + CHALLENGE_TTL_MS;
                let master = self.cluster.master_key();
                let record = match used {
                    ChallengeKind::Http01 => {
                        let token_name: Name = challenge.token.parse().map_err(|e| {
                            failed(format!("the CA sent an unusable challenge token: {e}"))
                        })?;
                        let key = RecordKey::Http01 {
                            token: token_name.clone(),
                        };
                        let sealed = master.seal(key_auth.as_str().as_bytes(), &key.encode());
                        challenges.push(key);
                        Record::Http01(Http01 {
                            token: token_name,
                            key_authorization: sealed,
                            expires_at,
                        })
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let (cert_pem, key_pem) =
                            alpn_certificate(host, key_auth.digest().as_ref()).map_err(|e| {
                                failed(format!("making the TLS-ALPN-01 certificate: {e}"))
                            })?;
                        let key = RecordKey::Alpn01 { host: host.clone() };
                        let sealed = master.seal(key_pem.as_bytes(), &key.encode());
                        challenges.push(key);
                        Record::Alpn01(Alpn01 {
                            host: host.clone(),
                            cert_pem,
                            key: sealed,
                            expires_at,
                        })
                    }
                };
                let index = self
                    .fenced(&lease, token, Command::Put { record }, None)
                    .await?;
                if let Err(e) = self
                    .cluster
                    .wait_applied_everywhere(index, CHALLENGE_SPREAD)
                    .await
                {
                    // A node that has not applied it yet answers 404 if the CA picks it; the
                    // others answer. Go on rather than stall the order on a dead voter.
                    tracing::warn!(%host, error = %e, "challenge not yet on every voter");
                }
                challenge.set_ready().await.map_err(|e| {
                    failed(format!("telling the CA to validate: {}", acme_error(&e)))
                })?;
            }
        }

        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.cfg.order_timeout);
        let polled = order.poll_ready(&retry).await;
        let invalid = order.state().status == OrderStatus::Invalid;
        match polled {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) if invalid => {
                let mut detail = match &polled {
                    Err(instant_acme::Error::Api(p)) => p.detail.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                let mut authorizations = order.authorizations();
                while let Some(Ok(authz)) = authorizations.next().await {
                    for c in &authz.challenges {
                        if let Some(d) = c.error.as_ref().and_then(|p| p.detail.clone()) {
                            detail = d;
                        }
                    }
                }
                drop(authorizations);
                self.note_failed_validation(host, &lease, token, &budget)
                    .await?;
                return Err(Failure::Failed {
                    message: format!(
                        "the CA could not validate {host} by {}: {}. Check that DNS for {host} points at this cluster and that port {} reaches it.",
                        used.as_str(),
                        if detail.is_empty() { "the order became invalid".to_string() } else { detail },
                        if used == ChallengeKind::Http01 { 80 } else { 443 },
                    ),
                    validation: true,
                });
            }
            Ok(other) => {
                return Err(failed(format!(
                    "the CA left the order for {host} {other:?}"
                )));
            }
            Err(e) => {
                return Err(failed(format!(
                    "the CA did not finish validating {host} within {:?}: {}",
                    self.cfg.order_timeout,
                    acme_error(&e)
                )));
            }
        }

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| failed(format!("making the certificate key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| failed(format!("making the CSR: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| failed(format!("making the CSR: {e}")))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| failed(format!("the CA refused the CSR: {}", acme_error(&e))))?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(|e| {
            failed(format!(
                "the CA did not hand out the certificate: {}",
                acme_error(&e)
            ))
        })?;

        let (hosts, not_before, not_after, issuer) = palisade_raft::crypto::cert_facts(&chain_pem)
            .map_err(|e| failed(format!("the CA's certificate does not read: {e}")))?;
        let name = cert_name(host);
        let context = RecordKey::Cert { name: name.clone() }.encode();
        let cert = Cert {
            name,
            hosts,
            chain_pem,
            key: self
                .cluster
                .master_key()
                .seal(key.serialize_pem().as_bytes(), &context),
            not_before,
            not_after,
            issuer,
            source: CertSource::Acme,
        };
        let done = now_ms();
        // A renewal asked for during this attempt is kept for the next one.
        let requested = self
            .status(host)
            .and_then(|s| s.renew_requested_at)
            .filter(|&t| t > now);
        let status = CertStatus {
            state: CertState::Valid,
            failures: 0,
            last_error: None,
            last_success_at: Some(done),
            next_attempt_at: self
                .renew_at(&cert, &budget)
                .max(done.saturating_add(budget.min_reissue_ms)),
            renew_requested_at: requested,
            orders: status.orders + u64::from(*placed),
            order_url: None,
            ..status
        };
        let outcome = format!("issued; valid until {}", iso(not_after));
        let entry = self.audit("cert.issue", host, &outcome);
        self.fenced(
            &lease,
            token,
            Command::PutMany {
                records: vec![Record::Cert(cert), Record::CertStatus(status)],
            },
            Some(entry),
        )
        .await?;
        metrics::counter!("palisade_acme_certificates_total").increment(1);
        tracing::info!(%host, not_after, "certificate stored");
        Ok(())
    }

    /// Spend the budget for a new order (audited `acme.order`), place it, and remember its URL.
    #[allow(clippy::too_many_arguments)]
    async fn place_order(
        &self,
        host: &Hostname,
        lease: &Name,
        token: u64,
        account: &Account,
        status: &CertStatus,
        budget: &Budget,
        now: Millis,
        placed: &mut bool,
    ) -> Result<instant_acme::Order, Failure> {
        let orders = orders_window(&self.cfg.directory);
        let spend = Command::Spend {
            name: orders.clone(),
            window_ms: budget.orders_window_ms,
            limit: budget.max_orders,
        };
        let entry = self.audit("acme.order", host, "ok");
        match self.fenced(lease, token, spend, Some(entry)).await {
            Ok(_) => {}
            Err(Failure::Failed { message, .. }) if message.contains(BUDGET_SPENT) => {
                let until = match self.read(&RecordKey::RateWindow { name: orders }) {
                    Some(Record::RateWindow(w)) => {
                        full_until(&w, budget.max_orders, budget.orders_window_ms, now)
                            .unwrap_or(now)
                    }
                    _ => now,
                };
                return Err(Failure::Budget {
                    message: format!(
                        "the cluster placed {} orders within {} minutes (the CA's limit); this one waits",
                        budget.max_orders,
                        budget.orders_window_ms / 60_000
                    ),
                    until,
                });
            }
            Err(e) => return Err(e),
        }
        *placed = true;
        metrics::counter!("palisade_acme_orders_total").increment(1);
        let ids = [Identifier::Dns(host.to_string())];
        let order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| failed(format!("the CA did not take the order: {}", acme_error(&e))))?;
        let remembered = CertStatus {
            order_url: Some(order.url().to_string()),
            ..status.clone()
        };
        let put = Command::Put {
            record: Record::CertStatus(remembered),
        };
        self.fenced(lease, token, put, None).await?;
        Ok(order)
    }

    async fn note_failed_validation(
        &self,
        host: &Hostname,
        lease: &Name,
        token: u64,
        budget: &Budget,
    ) -> Result<(), Failure> {
        let spend = Command::Spend {
            name: failure_window(host),
            window_ms: budget.failed_window_ms,
            limit: budget.max_failed.max(1),
        };
        match self.fenced(lease, token, spend, None).await {
            Err(Failure::Deposed) => Err(Failure::Deposed),
            _ => Ok(()),
        }
    }

    async fn record_failure(
        &self,
        host: &Hostname,
        lease: &Name,
        token: u64,
        started: Millis,
        placed: bool,
        f: Failure,
    ) {
        let now = now_ms();
        let mut status = self
            .status(host)
            .unwrap_or_else(|| CertStatus::new(host.clone(), now));
        status.owner = Some(self.cluster.node_id);
        status.last_attempt_at = Some(started);
        if placed {
            status.orders += 1;
        }
        // Resume an order once, and never one whose validation failed.
        if !placed
            || matches!(
                f,
                Failure::Failed {
                    validation: true,
                    ..
                }
            )
        {
            status.order_url = None;
        }
        if status.renew_requested_at.is_some_and(|t| t <= started) {
            status.renew_requested_at = None;
        }
        let (message, action) = match f {
            Failure::Failed { message, .. } => {
                status.failures = status.failures.saturating_add(1);
                let wait = backoff(&self.cfg, status.failures, host.as_str(), now);
                status.next_attempt_at = now + wait;
                status.state = CertState::Failing;
                (message, "cert.issue")
            }
            Failure::Budget { message, until } => {
                status.next_attempt_at = until.max(now + 1000);
                status.state = CertState::Failing;
                (message, "cert.wait")
            }
            Failure::Deposed => return,
        };
        tracing::warn!(%host, failures = status.failures, next_attempt_at = status.next_attempt_at, "certificate not issued: {message}");
        metrics::counter!("palisade_acme_failures_total").increment(1);
        status.last_error = Some(message.clone());
        let entry = self.audit(action, host, &format!("failed: {message}"));
        let _ = self
            .fenced(
                lease,
                token,
                Command::Put {
                    record: Record::CertStatus(status),
                },
                Some(entry),
            )
            .await;
    }

    /// The cluster's account on the directory: from memory, from the store, or made now (once
    /// cluster-wide: a node that loses the race to store it uses the stored one).
    async fn account(&self) -> Result<Account, String> {
        let mut cached = self.account.lock().await;
        if let Some(a) = &*cached {
            return Ok(a.clone());
        }
        let key = RecordKey::AcmeAccount {
            directory: self.cfg.directory.clone(),
        };
        let context = key.encode();
        let master = self.cluster.master_key();
        for _ in 0..2 {
            if let Some(Record::AcmeAccount(stored)) = self.read(&key) {
                let plain = master
                    .open(&stored.credentials, &context)
                    .map_err(|e| format!("the stored ACME account does not open: {e}"))?;
                let creds: AccountCredentials = serde_json::from_slice(&plain)
                    .map_err(|e| format!("the stored ACME account does not read: {e}"))?;
                let account = self
                    .builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                *cached = Some(account.clone());
                return Ok(account);
            }
            let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (account, creds) = self
                .builder()?
                .create(&new, self.cfg.directory.clone(), None)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let plain = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
            let record = Record::AcmeAccount(AcmeAccount {
                directory: self.cfg.directory.clone(),
                contact: self.cfg.contact.clone(),
                credentials: master.seal(&plain, &context),
            });
            let entry = AuditEntry::by_node(
                self.cluster.node_id,
                "acme.account",
                format!("acme/account/{}", self.cfg.directory),
                "created",
            );
            match self
                .cluster
                .write(Request::new(Command::Create { record }).with_audit(entry))
                .await
            {
                Ok(Response::Applied { .. }) => {
                    tracing::info!(directory = %self.cfg.directory, "ACME account created");
                    *cached = Some(account.clone());
                    return Ok(account);
                }
                Ok(_) => continue, // another node stored one first: use that
                Err(e) => return Err(format!("storing the ACME account: {e}")),
            }
        }
        Err("the ACME account could not be stored".into())
    }

    fn unreachable(&self, e: &instant_acme::Error) -> String {
        format!(
            "cannot use the ACME directory {}: {}",
            self.cfg.directory,
            acme_error(e)
        )
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        let Some(bundle) = &self.cfg.ca_bundle else {
            return Account::builder().map_err(|e| format!("TLS roots for ACME: {e}"));
        };
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(bundle)
            .map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
            roots
                .add(der)
                .map_err(|e| format!("acme.ca_bundle {}: {e}", bundle.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "acme.ca_bundle {} holds no certificate",
                bundle.display()
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Account::builder_with_http(Box::new(client)))
    }

    /// Ask the CA (RFC 9773) when to renew the certificates this node owns; remembered per
    /// certificate. A directory without `renewalInfo` is asked once.
    async fn refresh_renewal_info(&self, certs: &[Cert]) {
        use std::sync::atomic::Ordering;
        if self.ari_unsupported.load(Ordering::Relaxed) {
            return;
        }
        let Ok(account) = self.account().await else {
            return;
        };
        for c in certs {
            let key = (c.name.to_string(), c.not_after);
            if self.ari.lock().unwrap().contains_key(&key) {
                continue;
            }
            use rustls::pki_types::pem::PemObject;
            let Ok(der) = rustls::pki_types::CertificateDer::from_pem_slice(c.chain_pem.as_bytes())
            else {
                continue;
            };
            let Ok(id) = instant_acme::CertificateIdentifier::try_from(&der) else {
                continue;
            };
            match account.renewal_info(&id).await {
                Ok((info, _)) => {
                    let start = (info.suggested_window.start.unix_timestamp().max(0) as u64) * 1000;
                    let end = (info.suggested_window.end.unix_timestamp().max(0) as u64) * 1000;
                    let at = start
                        + spread(c.name.as_str(), c.not_after) % (end.saturating_sub(start)).max(1);
                    self.ari.lock().unwrap().insert(key, at);
                }
                Err(instant_acme::Error::Unsupported(_)) => {
                    self.ari_unsupported.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::debug!(cert = %c.name, error = %acme_error(&e), "renewal information unavailable")
                }
            }
        }
    }
}

/// A problem document as an operator reads it: the CA's detail, then its type.
fn acme_error(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => match (&p.detail, &p.r#type) {
            (Some(d), Some(t)) => format!(
                "{d} ({})",
                t.trim_start_matches("urn:ietf:params:acme:error:")
            ),
            (Some(d), None) => d.clone(),
            _ => p.to_string(),
        },
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

pub fn lease_name(host: &Hostname) -> Name {
    format!("acme:{host}")
        .parse()
        .expect("a host name is a valid name")
}

pub fn cert_name(host: &Hostname) -> Name {
    host.as_str().parse().expect("a host name is a valid name")
}

fn failure_window(host: &Hostname) -> Name {
    format!("failed:{host}")
        .parse()
        .expect("a host name is a valid name")
}

fn orders_window(directory: &str) -> Name {
    let h = palisade_raft::crypto::sha256_hex(directory.as_bytes());
    format!("orders:{}", &h[..16])
        .parse()
        .expect("hex is a valid name")
}

/// When a full window frees a place (`None`: it is not full).
fn full_until(w: &RateWindow, limit: u32, window_ms: u64, now: Millis) -> Option<Millis> {
    let since = now.saturating_sub(window_ms);
    let mut live: Vec<Millis> = w.stamps.iter().copied().filter(|&t| t > since).collect();
    if live.len() < limit as usize {
        return None;
    }
    live.sort_unstable();
    Some(live[live.len() - limit as usize] + window_ms)
}

/// The owner of `host` among `voters`: highest rendezvous score.
pub fn owner(host: &Hostname, voters: &[NodeId]) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .max_by_key(|id| rendezvous(host.as_str(), *id))
}

fn rendezvous(host: &str, node: NodeId) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{host}\0{node}").as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A stable pseudo-random number per name and certificate.
fn spread(name: &str, salt: u64) -> u64 {
    rendezvous(name, salt)
}

/// Wait after `failures` failures: base × 2^(failures-1), capped, with ±10% jitter.
fn backoff(cfg: &AcmeConfig, failures: u32, host: &str, now: Millis) -> u64 {
    let base = cfg.backoff_base.as_millis() as u64;
    let cap = cfg.backoff_cap.as_millis() as u64;
    let wait = base
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(cap);
    let jitter = spread(host, now) % (wait / 5).max(1);
    (wait - wait / 10 + jitter).max(1)
}

/// The TLS-ALPN-01 validation certificate (RFC 8737 §3): self-signed, the name as its only SAN,
/// the key authorization's digest in the critical acmeIdentifier extension.
fn alpn_certificate(host: &Hostname, digest: &[u8]) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn iso(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_spread_over_voters_and_move_only_when_their_owner_leaves() {
        let voters = [1, 2, 3];
        let hosts: Vec<Hostname> = (0..300)
            .map(|i| format!("site{i}.example.com").parse().unwrap())
            .collect();
        let mut per = HashMap::new();
        for h in &hosts {
            *per.entry(owner(h, &voters).unwrap()).or_insert(0) += 1;
        }
        for id in voters {
            assert!(per[&id] > 60, "node {id} owns {} of 300", per[&id]);
        }
        // Node 2 leaves: only its names move.
        for h in &hosts {
            let before = owner(h, &voters).unwrap();
            let after = owner(h, &[1, 3]).unwrap();
            if before != 2 {
                assert_eq!(before, after, "{h} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = AcmeConfig {
            backoff_base: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(3600),
            ..AcmeConfig::default()
        };
        let w = |n| backoff(&cfg, n, "a.test", 7);
        assert!((54_000..=66_000).contains(&w(1)), "{}", w(1));
        assert!((108_000..=132_000).contains(&w(2)), "{}", w(2));
        assert!((3_240_000..=3_960_000).contains(&w(10)), "{}", w(10));
        assert!((3_240_000..=3_960_000).contains(&w(400)), "{}", w(400));
    }

    #[test]
    fn a_full_window_frees_a_place_when_its_oldest_use_leaves() {
        let w = RateWindow {
            name: "x".parse().unwrap(),
            stamps: vec![1_000, 2_000, 3_000],
        };
        assert_eq!(full_until(&w, 3, 10_000, 5_000), Some(11_000));
        assert_eq!(full_until(&w, 4, 10_000, 5_000), None);
        assert_eq!(full_until(&w, 2, 10_000, 5_000), Some(12_000));
        assert_eq!(full_until(&w, 3, 10_000, 11_500), None);
    }

    #[test]
    fn the_validation_certificate_carries_the_digest_critically() {
        let host: Hostname = "a.test".parse().unwrap();
        let digest = [7u8; 32];
        let (pem, _key) = alpn_certificate(&host, &digest).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: 0x04 0x20 then the digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }

    #[test]
    fn directories_by_name_or_https_url() {
        assert!(directory_url("letsencrypt")
            .unwrap()
            .starts_with("https://acme-v02"));
        assert!(directory_url("letsencrypt-staging")
            .unwrap()
            .contains("staging"));
        assert_eq!(
            directory_url("https://127.0.0.1:14000/dir").unwrap(),
            "https://127.0.0.1:14000/dir"
        );
        let e = directory_url("http://ca.test/dir").unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }
}
