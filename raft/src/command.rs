//! What a client may ask the replicated state machine to do, and what it answers.
//!
//! A command carries everything its apply needs (the proposer's clock included), so every node
//! applies it to the same result.

use serde::{Deserialize, Serialize};

use crate::ids::{Hostname, Name, NodeId, RequestId};
use crate::model::{AuditEntry, Lease, Millis, Record, RecordKey};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create or replace one record.
    Put {
        record: Record,
    },
    /// Delete one record (absent is not an error).
    Delete {
        key: RecordKey,
    },
    /// Bulk import: all records land in one atomic batch.
    PutMany {
        records: Vec<Record>,
    },
    DeleteMany {
        keys: Vec<RecordKey>,
    },
    /// Delete those of `keys` whose record carries an expiry at or before `at` (the sweep of
    /// expired IP rules and bot-protection decisions); a record re-added meanwhile with a later expiry, or none, is kept.
    DeleteExpired {
        keys: Vec<RecordKey>,
        at: Millis,
    },
    /// Bot-protection decisions from automatic triggers: each is stored unless one for the same
    /// project and prefix already lasts at least as long (a decision is never shortened).
    Decide {
        decisions: Vec<crate::model::Decision>,
    },
    /// Record when API keys were last used (the later of the stored time and this one); keys
    /// deleted meanwhile are skipped.
    TouchKeys {
        used: Vec<(Name, Millis)>,
    },
    /// Take, renew or steal an expired lease. Granted leases carry the log index as fencing token.
    AcquireLease {
        name: Name,
        holder: NodeId,
        ttl_ms: u64,
    },
    /// Give a lease back; ignored unless `token` is the current one.
    ReleaseLease {
        name: Name,
        token: u64,
    },
    /// Apply `command` only while `lease` is still held with `token`.
    Fenced {
        lease: Name,
        token: u64,
        command: Box<Command>,
    },
    /// Create `record` only if nothing is stored under its key (refused otherwise): for what
    /// must exist once, such as the ACME account of a directory.
    Create {
        record: Record,
    },
    /// Note one use of a limited thing at the command's time: refused, and nothing noted, when
    /// `limit` uses already fall within the last `window_ms`.
    Spend {
        name: Name,
        window_ms: u64,
        limit: u32,
    },
    /// An operator asks for a new certificate for `host` now.
    RequestRenewal {
        host: Hostname,
    },
    /// Store a join token's hash.
    CreateJoinToken {
        hash: String,
        expires_ms: Millis,
        created_by: String,
    },
    /// Spend a join token and allocate the joining node's id.
    ConsumeJoinToken {
        hash: String,
    },
    /// Drop, oldest first and at most `limit` of them, the audit entries written before `before`
    /// or with a sequence number below `below_seq`.
    PruneAudit {
        before: Millis,
        #[serde(default)]
        below_seq: u64,
        #[serde(default = "default_prune_limit")]
        limit: u32,
    },
    /// Change nothing: the request's audit entry alone is the point (membership changes, which
    /// are Raft entries of their own).
    AuditOnly,
}

impl From<Record> for Command {
    /// Create or replace `record`.
    fn from(record: Record) -> Self {
        Command::Put { record }
    }
}

/// One client write: the command, when it was proposed, an optional audit entry that is written
/// atomically with it, and an id under which a retry is recognised and applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub at: Millis,
    pub command: Command,
    #[serde(default)]
    pub audit: Option<AuditEntry>,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request {
            id: RequestId::random(),
            at: crate::now_ms(),
            command,
            audit: None,
        }
    }
    pub fn with_audit(mut self, audit: AuditEntry) -> Self {
        self.audit = Some(audit);
        self
    }
    pub fn with_id(mut self, id: RequestId) -> Self {
        self.id = id;
        self
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({})", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Applied. `index` is the log index that applied it (the original one for a retry).
    Applied {
        index: u64,
        duplicate: bool,
    },
    LeaseGranted {
        lease: Lease,
        duplicate: bool,
    },
    LeaseHeld {
        holder: NodeId,
        expires_at: Millis,
    },
    NodeIdAllocated {
        node_id: NodeId,
        duplicate: bool,
    },
    /// Not applied: the state machine refused the command, for this reason.
    Refused {
        reason: Refusal,
    },
    /// A membership entry or a blank entry; no application command.
    Internal,
}

impl Response {
    pub fn as_duplicate(self) -> Response {
        match self {
            Response::Applied { index, .. } => Response::Applied {
                index,
                duplicate: true,
            },
            Response::LeaseGranted { lease, .. } => Response::LeaseGranted {
                lease,
                duplicate: true,
            },
            Response::NodeIdAllocated { node_id, .. } => Response::NodeIdAllocated {
                node_id,
                duplicate: true,
            },
            other => other,
        }
    }
}

/// Why the state machine refused a command. Callers match on the variant; the text is for
/// people (the audit log's outcome, an API error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// A `Fenced` command whose lease has moved on (expired, or taken by another holder).
    #[error("stale fencing token {token} for lease {lease}")]
    StaleFence { lease: Name, token: u64 },
    /// A `Spend` over its limit; a use is possible again at `free_at`.
    #[error("budget spent: {name} had {limit} uses in {window_ms} ms; the next use is possible at {free_at}")]
    BudgetSpent {
        name: Name,
        limit: u32,
        window_ms: u64,
        free_at: Millis,
    },
    /// A `Create` of a record that exists.
    #[error("{key} exists")]
    Exists { key: String },
    /// A `Put` of a record kind that only its own commands write; `rule` says which.
    #[error("{rule}")]
    OwnCommandsOnly { rule: String },
    /// A `ReleaseLease` with a token that is not the current one.
    #[error("lease {lease} is not held with token {token}")]
    LeaseNotHeld { lease: Name, token: u64 },
    #[error("join token expired")]
    JoinTokenExpired,
    #[error("join token unknown or already used")]
    JoinTokenUnknown,
    /// A refusal recorded by an earlier version, as its text (request ids are remembered for a
    /// day, so their answers outlive an upgrade).
    #[serde(untagged)]
    #[error("{0}")]
    Earlier(String),
}

fn default_prune_limit() -> u32 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_an_earlier_versions_text_still_reads() {
        let typed = Response::Refused {
            reason: Refusal::BudgetSpent {
                name: "orders:ab".parse().unwrap(),
                limit: 3,
                window_ms: 60_000,
                free_at: 99,
            },
        };
        let json = serde_json::to_string(&typed).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), typed);
        let earlier = r#"{"result":"refused","reason":"join token expired"}"#;
        assert_eq!(
            serde_json::from_str::<Response>(earlier).unwrap(),
            Response::Refused {
                reason: Refusal::Earlier("join token expired".into())
            }
        );
        assert_eq!(
            Refusal::StaleFence {
                lease: "acme:a.test".parse().unwrap(),
                token: 7
            }
            .to_string(),
            "stale fencing token 7 for lease acme:a.test"
        );
    }
}
