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
//!
//! - [`schedule`]: when a name is due, its owner, back-off and renewal point (pure);
//! - `steps`: one attempt, the steps of RFC 8555 §7 (order, challenges, CSR), and `account`:
//!   the cluster's account on the directory, made once cluster-wide;
//! - this module: the configuration and the loop (a pass every second and after every change,
//!   one task per name this node owns and that is due, at most `parallel` at once).

mod account;
pub mod schedule;
mod steps;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{Account, ChallengeType};
use palisade_raft::cluster::{Cluster, LeaseGuard};
use palisade_raft::command::Command;
use palisade_raft::ids::Hostname;
use palisade_raft::model::{
    prefix, AcmeLimits, AuditEntry, Cert, CertSource, CertState, CertStatus, ClusterSettings,
    Millis, Record, RecordKey, TlsMode,
};
use palisade_raft::now_ms;
use palisade_raft::task::{every_or_woken, Shutdown};
use tokio::sync::{Notify, Semaphore};

use schedule::{cert_name, lease_name, owner};
use steps::{acme_error, failed, Failure};

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

const TICK: Duration = Duration::from_secs(1);

/// The ACME worker of one node.
pub struct Acme {
    cfg: AcmeConfig,
    cluster: Arc<Cluster>,
    account: tokio::sync::Mutex<Option<Account>>,
    busy: Mutex<HashSet<Hostname>>,
    slots: Semaphore,
    /// RFC 9773 renewal times by certificate (name, not_after), and whether the CA has ARI.
    ari: Mutex<HashMap<(String, Millis), Millis>>,
    ari_unsupported: AtomicBool,
    ari_running: AtomicBool,
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
            ari_unsupported: AtomicBool::new(false),
            ari_running: AtomicBool::new(false),
        })
    }

    /// Work until `shutdown`: a pass every second, and soon after any change to the state.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let changed = Arc::new(Notify::new());
        tokio::spawn(wake_on_changes(
            self.cluster.reader.subscribe(),
            changed.clone(),
            shutdown.clone(),
        ));
        // A first look at once, then every tick and after every change.
        if let Err(e) = self.pass().await {
            tracing::warn!(error = %e, "a pass of background work failed; the next one retries");
        }
        every_or_woken(TICK, &changed, &shutdown, "ACME", || self.pass()).await
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

    fn limits(&self) -> AcmeLimits {
        match self.read(&RecordKey::Settings) {
            Some(Record::Settings(s)) => s.acme(),
            _ => ClusterSettings::default().acme(),
        }
    }

    /// One look at every `acme` domain: start the orders this node owns and that are due.
    async fn pass(self: &Arc<Self>) -> Result<(), std::io::Error> {
        let now = now_ms();
        let limits = self.limits();
        let mut due = Vec::new();
        self.cluster.reader.for_each(prefix::DOMAIN, |r| {
            if let Record::Domain(d) = r {
                if d.tls != TlsMode::Acme {
                    return;
                }
                let lease = self.read(&RecordKey::Lease {
                    name: lease_name(&d.host),
                });
                let held = matches!(&lease, Some(Record::Lease(l)) if schedule::held(Some(l), now));
                if !held && self.needs_order(&d.host, &limits, now) {
                    due.push(d.host);
                }
            }
        })?;
        let mut ari_certs = Vec::new();
        if !self.ari_unsupported.load(Ordering::Relaxed) {
            self.ari_missing(&mut ari_certs);
        }
        if due.is_empty() && ari_certs.is_empty() {
            return Ok(());
        }
        let voters = schedule::healthy_voters(&self.cluster.status().await);
        let me = self.cluster.node_id;
        if !voters.contains(&me) {
            return Ok(());
        }
        if !ari_certs.is_empty() && !self.ari_running.swap(true, Ordering::Relaxed) {
            ari_certs.retain(|c| {
                c.hosts
                    .first()
                    .is_some_and(|h| owner(h, &voters) == Some(me))
            });
            let this = self.clone();
            tokio::spawn(async move {
                this.refresh_renewal_info(&ari_certs).await;
                this.ari_running.store(false, Ordering::Relaxed);
            });
        }
        for host in due {
            if owner(&host, &voters) != Some(me) || !self.busy.lock().unwrap().insert(host.clone())
            {
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

    /// Whether `host` needs an order now, as far as the applied state says.
    fn needs_order(&self, host: &Hostname, limits: &AcmeLimits, now: Millis) -> bool {
        let cert = match self.read(&RecordKey::Cert {
            name: cert_name(host),
        }) {
            Some(Record::Cert(c)) => Some(c),
            _ => None,
        };
        let ari_at = cert.as_ref().and_then(|c| self.ari_at(c));
        schedule::needs_order(
            host,
            self.status(host).as_ref(),
            cert.as_ref(),
            limits,
            ari_at,
            now,
        )
    }

    fn ari_at(&self, c: &Cert) -> Option<Millis> {
        let key = (c.name.to_string(), c.not_after);
        self.ari.lock().unwrap().get(&key).copied()
    }

    fn renew_at(&self, c: &Cert, limits: &AcmeLimits) -> Millis {
        schedule::renew_at(c, limits, self.ari_at(c))
    }

    /// Take the name's lease, order, and record the outcome.
    async fn work(self: &Arc<Self>, host: &Hostname) {
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let mut lease = match self
            .cluster
            .take_lease(lease_name(host), self.cfg.lease_ttl)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%host, error = %e, "could not take the ACME lease");
                return;
            }
        };
        let token = lease.token();
        // Between the look that found the name due and this lease, another node may have held
        // the lease and finished: look again at the state as of the grant.
        self.cluster.reader.wait_applied(token).await;
        if !self.needs_order(host, &self.limits(), now_ms()) {
            lease.release().await;
            return;
        }
        tracing::info!(%host, token, "ordering a certificate");
        // Keep the lease while the order runs; the order's own writes notice when it is lost.
        lease.keep_renewed();
        let started = now_ms();
        let mut placed = false;
        let mut challenges = Vec::new();
        // A whole attempt has a deadline: a request to the CA that never answers (a dropped
        // connection with no reset) must not hold the name forever. Polling has its own
        // `order_timeout`; the rest of an attempt takes seconds.
        let deadline = self.cfg.order_timeout * 2;
        let outcome = tokio::time::timeout(
            deadline,
            self.order(host, &lease, &mut placed, &mut challenges),
        )
        .await
        .unwrap_or_else(|_| {
            Err(failed(format!(
                "the attempt for {host} did not finish within {} s (the CA stopped answering); it is retried",
                deadline.as_secs()
            )))
        });
        if matches!(outcome, Err(Failure::Deposed)) {
            metrics::counter!("palisade_acme_deposed_total").increment(1);
            tracing::warn!(%host, token, "lost the ACME lease mid-order; another node finishes it");
            return;
        }
        if !challenges.is_empty() {
            let delete = Command::DeleteMany { keys: challenges };
            let _ = self.fenced(&lease, delete, None).await;
        }
        if let Err(f) = outcome {
            self.record_failure(host, &lease, started, placed, f).await;
        }
        lease.release().await;
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

    /// Record an attempt that failed: the back-off (or the budget's wait), the error, the audit
    /// entry.
    async fn record_failure(
        &self,
        host: &Hostname,
        lease: &LeaseGuard,
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
                let wait = schedule::backoff(
                    self.cfg.backoff_base,
                    self.cfg.backoff_cap,
                    status.failures,
                    host.as_str(),
                    now,
                );
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
                Command::Put {
                    record: Record::CertStatus(status),
                },
                Some(entry),
            )
            .await;
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
                    let at = schedule::in_window(c.name.as_str(), c.not_after, start, end);
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

/// Turn the store's change events into wake-ups of the loop, a burst (twenty domains at once)
/// settling into one.
async fn wake_on_changes(
    mut events: tokio::sync::broadcast::Receiver<Arc<palisade_raft::store::ChangeSet>>,
    changed: Arc<Notify>,
    shutdown: Shutdown,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Err(RecvError::Closed) => return,
            // An entry that changed nothing (a blank leader entry) is no work.
            Ok(set) if set.changes.is_empty() => continue,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        while events.try_recv().is_ok() {}
        changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
