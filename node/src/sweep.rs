//! The sweep of expired IP rules. Expired entries already stop matching on every node at their
//! expiry (the edge compares against the clock); this only removes them from the store, from the
//! leader, with an audit entry naming the node.
//!
//! An allow list whose entries have all expired is left alone: emptying it would open the
//! project to everyone, and an allow list that lapses must fail closed until an operator acts.

use std::sync::Arc;
use std::time::Duration;

use palisade_edge::view::LiveView;
use palisade_raft::cluster::Cluster;
use palisade_raft::command::{Command, Request};
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::{AuditEntry, RecordKey, RuleList};
use palisade_raft::now_ms;
use tokio::sync::watch;

/// Keys per log entry, well under the entry size limit.
const BATCH: usize = 2_000;

pub async fn run(
    cluster: Arc<Cluster>,
    view: Arc<LiveView>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if cluster.local_status().leader != Some(cluster.node_id) {
            continue;
        }
        let now = now_ms();
        for (project, list, cidrs) in expired(&view, now) {
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
                let audit = AuditEntry {
                    seq: 0,
                    at: now,
                    actor: format!("node:{}", cluster.node_id),
                    source_ip: String::new(),
                    action: "ip_rule.expire".into(),
                    target: format!(
                        "{scope}/ip-rules/{} ({} entries)",
                        list.as_str(),
                        batch.len()
                    ),
                    outcome: "ok".into(),
                };
                let req = Request::new(Command::DeleteExpired { keys, at: now }).with_audit(audit);
                if let Err(e) = cluster.write(req).await {
                    tracing::warn!(error = %e, "sweeping expired IP rules failed; next round retries");
                    break;
                }
            }
        }
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
