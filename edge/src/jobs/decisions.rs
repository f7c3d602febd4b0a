//! Bot-protection decisions from this node's triggers, written to the cluster: in batches of
//! [`BATCH`] per log entry, at most [`BATCHES_PER_SECOND`] entries a second, each audited as
//! `bot.decision` by `node:{id}`, so that an attack cannot flood the Raft log. Every node writes
//! its own decisions (no lease: there is nothing to do twice); the state machine keeps the longest
//! decision per project and prefix.

use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::Cluster;
use palisade_raft::command::{Command, Request};
use palisade_raft::model::{AuditEntry, Decision};
use palisade_raft::task::{every_or_woken, Shutdown};

use crate::bot::detect::{Detector, BATCH};

/// Entries per second one node writes at most.
pub const BATCHES_PER_SECOND: u32 = 4;

/// Send queued decisions to the cluster until `shutdown`: at once when one is queued.
pub async fn run(cluster: Arc<Cluster>, detector: Arc<Detector>, shutdown: Shutdown) {
    let wake = &detector.wake;
    every_or_woken(
        Duration::from_secs(1),
        wake,
        &shutdown,
        "bot decisions",
        || drain(&cluster, &detector),
    )
    .await
}

async fn drain(cluster: &Cluster, detector: &Detector) -> Result<(), String> {
    let pause = Duration::from_millis(1000 / u64::from(BATCHES_PER_SECOND));
    loop {
        let batch = detector.take_batch();
        if batch.is_empty() {
            return Ok(());
        }
        debug_assert!(batch.len() <= BATCH);
        // Public traffic's doing: kept apart from operators' changes.
        let audit =
            AuditEntry::by_node(cluster.node_id, "bot.decision", summary(&batch), "ok").outside();
        let req = Request::new(Command::Decide { decisions: batch }).with_audit(audit);
        if let Err(e) = cluster.write(req).await {
            tracing::warn!(error = %e, "writing bot-protection decisions failed; they hold on this node only");
        }
        tokio::time::sleep(pause).await;
    }
}

/// `project/shop 203.0.113.7/32 (request_rate: 600 in 60 s …), …` cut to a readable length.
fn summary(batch: &[Decision]) -> String {
    let mut s = String::new();
    for (i, d) in batch.iter().enumerate() {
        if s.len() > 400 {
            s.push_str(&format!(" and {} more", batch.len() - i));
            break;
        }
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!(
            "project/{} {} ({})",
            d.project, d.prefix, d.reason
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_raft::model::DecisionAction;

    #[test]
    fn a_long_batch_is_summarised_to_a_readable_length() {
        let batch: Vec<Decision> = (0..64)
            .map(|i| Decision {
                project: "shop".parse().unwrap(),
                prefix: format!("203.0.113.{i}").parse().unwrap(),
                action: DecisionAction::Challenge,
                until: 0,
                reason: "request_rate: 600 in 60 s (threshold 600)".into(),
                since: 0,
            })
            .collect();
        let s = summary(&batch);
        assert!(
            s.starts_with("project/shop 203.0.113.0/32 (request_rate"),
            "{s}"
        );
        assert!(s.len() < 600, "{} bytes", s.len());
        assert!(s.ends_with(" more"), "{s}");
    }
}
