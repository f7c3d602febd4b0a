//! The leader's housekeeping, under the lease `sweep`: expired IP rules, ended bot-protection
//! decisions, old audit entries, and ACME challenge records an owner left behind.
//!
//! Expired IP rules already stop matching on every node at their expiry (the edge compares
//! against the clock); the sweep only removes them from the store, with an audit entry naming
//! the node. Each retention class of the audit log (operators' changes; what unauthenticated
//! traffic caused) is kept within `admin.audit_max_age_days` and `admin.audit_max_entries` of
//! its own, oldest entries first.
//!
//! An allow list whose entries have all expired is left alone: emptying it would open the
//! project to everyone, and an allow list that lapses must fail closed until an operator acts.

use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::{Cluster, LeaseError, LeaseGuard};
use palisade_raft::command::Command;
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::{prefix, AuditClass, AuditEntry, Record, RecordKey, RuleList};
use palisade_raft::now_ms;
use palisade_raft::task::{every, Shutdown};

use super::JobError;
use crate::view::LiveView;

/// Keys per log entry, well under the entry size limit.
const BATCH: usize = 2_000;

/// How much audit log to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_entries: u64,
}

/// The lease the leader sweeps under.
const LEASE: &str = "sweep";
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Sweep every `interval` while this node leads, until `shutdown`.
pub async fn run(
    cluster: Arc<Cluster>,
    view: Arc<LiveView>,
    interval: Duration,
    retention: Retention,
    shutdown: Shutdown,
) {
    every(interval, &shutdown, "sweep", || async {
        let now = now_ms();
        // An idle cluster writes nothing: the lease is taken only when there is work.
        if !cluster.is_leader() || !due(&cluster, &view, retention, now)? {
            return Ok(());
        }
        let Some(mut lease) = cluster
            .take_lease(LEASE.parse().expect("a valid name"), LEASE_TTL)
            .await?
        else {
            return Ok(());
        };
        lease.keep_renewed();
        let swept = sweep(&cluster, &lease, &view, retention, now).await;
        lease.release().await;
        swept
    })
    .await
}

/// Whether a sweep has anything to do at `now` (reads only).
fn due(
    cluster: &Cluster,
    view: &LiveView,
    retention: Retention,
    now: u64,
) -> Result<bool, JobError> {
    let ended = view.get().decisions.values().any(|r| r.until <= now);
    Ok(ended
        || !expired(view, now).is_empty()
        || audit_over(cluster, retention, now)?
        || !expired_challenges(cluster, now)?.is_empty())
}

/// The two retention classes: each keeps its own `max_entries` and `max_age`, so the outside
/// world's entries never push an operator's change out of the log.
const CLASSES: [AuditClass; 2] = [AuditClass::Operator, AuditClass::Outside];

/// Whether a class of the audit log holds more entries than it keeps, or older ones.
fn audit_over(cluster: &Cluster, keep: Retention, now: u64) -> Result<bool, JobError> {
    let before = now.saturating_sub(keep.max_age.as_millis() as u64);
    for class in CLASSES {
        let oldest_expired = cluster
            .reader
            .scan(class.prefix(), None, 1)?
            .first()
            .is_some_and(|r| matches!(r, Record::Audit(a) if a.at < before));
        if oldest_expired || cluster.reader.count(class.prefix())? > keep.max_entries {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One sweep: the audit log, ended decisions, expired IP rules, orphaned challenges. A part
/// that fails does not hold up the next; the first failure is the answer. Once the lease is
/// lost, nothing more is tried.
async fn sweep(
    cluster: &Cluster,
    lease: &LeaseGuard,
    view: &LiveView,
    retention: Retention,
    now: u64,
) -> Result<(), JobError> {
    let mut first_failure = None;
    for part in 0..5 {
        let done = match part {
            0 => prune_audit(cluster, lease, retention, now, AuditClass::Operator).await,
            1 => sweep_decisions(cluster, lease, view, now).await,
            2 => sweep_rules(cluster, lease, view, now).await,
            3 => prune_audit(cluster, lease, retention, now, AuditClass::Outside).await,
            _ => sweep_challenges(cluster, lease, now).await,
        };
        match done {
            Ok(()) => {}
            Err(e @ JobError::Lease(LeaseError::Deposed { .. })) => return Err(e),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Remove expired IP rules, list by list; a list that fails does not hold up the others.
async fn sweep_rules(
    cluster: &Cluster,
    lease: &LeaseGuard,
    view: &LiveView,
    now: u64,
) -> Result<(), JobError> {
    let mut first_failure = None;
    for (project, list, cidrs) in expired(view, now) {
        for batch in cidrs.chunks(BATCH) {
            let keys = batch
                .iter()
                .map(|&cidr| RecordKey::IpRule {
                    project: project.clone(),
                    list,
                    cidr,
                })
                .collect();
            let scope = project
                .as_ref()
                .map(|p| format!("project/{p}"))
                .unwrap_or_else(|| "cluster".into());
            let target = format!(
                "{scope}/ip-rules/{} ({} entries)",
                list.as_str(),
                batch.len()
            );
            let audit = AuditEntry::by_node(cluster.node_id, "ip_rule.expire", target, "ok");
            let cmd = Command::DeleteExpired { keys, at: now };
            match lease.write(cmd, Some(audit)).await {
                Ok(_) => {}
                Err(e @ LeaseError::Deposed { .. }) => return Err(e.into()),
                Err(e) => {
                    first_failure.get_or_insert(e.into());
                    break;
                }
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Remove ACME challenge records past their expiry: an owner that died mid-order left them
/// (the owner deletes its own when the attempt ends).
async fn sweep_challenges(cluster: &Cluster, lease: &LeaseGuard, now: u64) -> Result<(), JobError> {
    let keys = expired_challenges(cluster, now)?;
    for batch in keys.chunks(BATCH) {
        lease
            .write(
                Command::DeleteMany {
                    keys: batch.to_vec(),
                },
                None,
            )
            .await?;
    }
    Ok(())
}

/// ACME challenge records past their expiry.
fn expired_challenges(cluster: &Cluster, now: u64) -> Result<Vec<RecordKey>, JobError> {
    let mut keys = Vec::new();
    let reader = &cluster.reader;
    reader.for_each(prefix::HTTP01, |r| {
        if let Record::Http01(h) = r {
            if h.expires_at <= now {
                keys.push(RecordKey::Http01 { token: h.token });
            }
        }
    })?;
    reader.for_each(prefix::ALPN01, |r| {
        if let Record::Alpn01(a) = r {
            if a.expires_at <= now {
                keys.push(RecordKey::Alpn01 { host: a.host });
            }
        }
    })?;
    Ok(keys)
}

/// Remove bot-protection decisions that have run out (they stopped applying at their end on
/// every node already).
async fn sweep_decisions(
    cluster: &Cluster,
    lease: &LeaseGuard,
    view: &LiveView,
    now: u64,
) -> Result<(), JobError> {
    let keys: Vec<RecordKey> = view
        .get()
        .decisions
        .iter()
        .filter(|(_, r)| r.until <= now)
        .map(|((project, prefix), _)| RecordKey::Decision {
            project: project.clone(),
            prefix: *prefix,
        })
        .collect();
    for batch in keys.chunks(BATCH) {
        let target = format!("bot decisions ({} ended)", batch.len());
        // Decisions come from outside traffic: their ends are outside-class entries too.
        let audit =
            AuditEntry::by_node(cluster.node_id, "bot.decision.expire", target, "ok").outside();
        let cmd = Command::DeleteExpired {
            keys: batch.to_vec(),
            at: now,
        };
        lease.write(cmd, Some(audit)).await?;
    }
    Ok(())
}

/// Entries per prune command: one apply stays short.
const PRUNE_BATCH: u32 = 10_000;

async fn prune_audit(
    cluster: &Cluster,
    lease: &LeaseGuard,
    keep: Retention,
    now: u64,
    class: AuditClass,
) -> Result<(), JobError> {
    let before = now.saturating_sub(keep.max_age.as_millis() as u64);
    let pfx = class.prefix();
    loop {
        let count = cluster.reader.count(pfx)?;
        // Over the limit, prune to 1% under it, so that the entry recording the prune does not
        // start the next one.
        let excess = match count > keep.max_entries {
            true => count - keep.max_entries * 99 / 100,
            false => 0,
        };
        let below_seq = match excess {
            0 => 0,
            n => cluster
                .reader
                .scan(pfx, None, n.min(u64::from(PRUNE_BATCH)) as usize)?
                .last()
                .and_then(|r| match r {
                    Record::Audit(a) => Some(a.seq + 1),
                    _ => None,
                })
                .unwrap_or(0),
        };
        let oldest_expired = cluster
            .reader
            .scan(pfx, None, 1)?
            .first()
            .is_some_and(|r| matches!(r, Record::Audit(a) if a.at < before));
        if below_seq == 0 && !oldest_expired {
            return Ok(());
        }
        let cmd = Command::PruneAudit {
            before,
            below_seq,
            limit: PRUNE_BATCH,
            class,
        };
        let target = format!(
            "audit, {} class (entries older than {} days or beyond the newest {})",
            class.as_str(),
            keep.max_age.as_secs() / 86_400,
            keep.max_entries
        );
        // In the class it prunes: pruning what outsiders caused writes nothing operator-class.
        let entry = AuditEntry {
            class,
            ..AuditEntry::by_node(cluster.node_id, "audit.prune", target, "ok")
        };
        lease.write(cmd, Some(entry)).await?;
    }
}

/// Expired entries per list, from this node's compiled view (no store scan).
fn expired(view: &LiveView, now: u64) -> Vec<(Option<ProjectId>, RuleList, Vec<Cidr>)> {
    let v = view.get();
    let mut out = vec![(None, RuleList::Block, v.access.cluster_block.expired(now))];
    for (p, lists) in v.access.projects() {
        out.push((Some(p.clone()), RuleList::Block, lists.block.expired(now)));
        if lists.allow.live(now) > 0 {
            out.push((Some(p.clone()), RuleList::Allow, lists.allow.expired(now)));
        }
    }
    out.retain(|(_, _, c)| !c.is_empty());
    out
}
