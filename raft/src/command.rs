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
    /// Drop, oldest first and at most `limit` of them, the audit entries of `class` written
    /// before `before` or with a sequence number below `below_seq`.
    PruneAudit {
        before: Millis,
        #[serde(default)]
        below_seq: u64,
        #[serde(default = "default_prune_limit")]
        limit: u32,
        #[serde(default)]
        class: crate::model::AuditClass,
    },
    /// Change nothing: the request's audit entry alone is the point (membership changes, which
    /// are Raft entries of their own).
    AuditOnly,
    /// Delete a project, and with it what must not outlive it: its scoped API keys are revoked
    /// (kept, so the audit log's `key:{id}` still resolves) and its bot-protection decisions
    /// lifted, so that a project made again under the same id inherits neither.
    DeleteProject {
        id: crate::ids::ProjectId,
    },
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
    /// What the request was (a hash of its method, path and body), for ids a client chose: a
    /// retry under the same id must be the same request, or it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request {
            id: RequestId::random(),
            at: crate::now_ms(),
            command,
            audit: None,
            fingerprint: None,
        }
    }
    pub fn with_fingerprint(mut self, fingerprint: String) -> Self {
        self.fingerprint = Some(fingerprint);
        self
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

/// Why the state machine refused a command. Callers match on the variant; on the wire and in
/// the store a refusal is its text, exactly as releases before the enum wrote it, so that nodes
/// of both kinds read each other's answers during a rolling upgrade and the audit outcomes
/// every node writes stay the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// A request under an id (a client's idempotency key) already used for another request.
    #[error("the idempotency key was used before, for another request")]
    IdempotencyReused,
    /// A text this release does not know (from a newer one).
    #[error("{0}")]
    Other(String),
}

/// The texts of [`Refusal::OwnCommandsOnly`].
pub const OWN_COMMANDS_ONLY: [&str; 4] = [
    "leases are written by lease commands only",
    "audit entries are written with the change they record",
    "join tokens are written by join-token commands only",
    "budgets are written by spend commands only",
];

impl Refusal {
    /// Read a refusal's text back into its variant.
    pub fn parse(text: &str) -> Refusal {
        Self::typed(text).unwrap_or_else(|| Refusal::Other(text.to_string()))
    }

    fn typed(text: &str) -> Option<Refusal> {
        if let Some(rest) = text.strip_prefix("stale fencing token ") {
            let (token, lease) = rest.split_once(" for lease ")?;
            return Some(Refusal::StaleFence {
                lease: lease.parse().ok()?,
                token: token.parse().ok()?,
            });
        }
        if let Some(rest) = text.strip_prefix("budget spent: ") {
            let (name, rest) = rest.split_once(" had ")?;
            let (limit, rest) = rest.split_once(" uses in ")?;
            let (window_ms, free_at) = rest.split_once(" ms; the next use is possible at ")?;
            return Some(Refusal::BudgetSpent {
                name: name.parse().ok()?,
                limit: limit.parse().ok()?,
                window_ms: window_ms.parse().ok()?,
                free_at: free_at.parse().ok()?,
            });
        }
        if let Some(rest) = text.strip_prefix("lease ") {
            let (lease, token) = rest.split_once(" is not held with token ")?;
            return Some(Refusal::LeaseNotHeld {
                lease: lease.parse().ok()?,
                token: token.parse().ok()?,
            });
        }
        if OWN_COMMANDS_ONLY.contains(&text) {
            return Some(Refusal::OwnCommandsOnly {
                rule: text.to_string(),
            });
        }
        match text {
            "join token expired" => return Some(Refusal::JoinTokenExpired),
            "join token unknown or already used" => return Some(Refusal::JoinTokenUnknown),
            "the idempotency key was used before, for another request" => {
                return Some(Refusal::IdempotencyReused)
            }
            _ => {}
        }
        let key = text.strip_suffix(" exists")?;
        Some(Refusal::Exists {
            key: key.to_string(),
        })
    }
}

impl Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Refusal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Refusal, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Refusal::parse(&text))
    }
}

fn default_prune_limit() -> u32 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_its_text_on_the_wire_and_reads_back_typed() {
        let all = [
            Refusal::StaleFence {
                lease: "acme:a.test".parse().unwrap(),
                token: 7,
            },
            Refusal::BudgetSpent {
                name: "orders:ab12".parse().unwrap(),
                limit: 300,
                window_ms: 10_800_000,
                free_at: 1_700_000_000_000,
            },
            Refusal::Exists {
                key: "acme/account/https://ca.test/dir".into(),
            },
            Refusal::OwnCommandsOnly {
                rule: OWN_COMMANDS_ONLY[1].into(),
            },
            Refusal::LeaseNotHeld {
                lease: "sweep".parse().unwrap(),
                token: 9,
            },
            Refusal::JoinTokenExpired,
            Refusal::JoinTokenUnknown,
            Refusal::IdempotencyReused,
            Refusal::Other("something a newer release says".into()),
        ];
        for r in all {
            let resp = Response::Refused { reason: r.clone() };
            let json = serde_json::to_string(&resp).unwrap();
            // The format releases before the enum wrote, and read.
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&json).unwrap(),
                serde_json::json!({ "result": "refused", "reason": r.to_string() })
            );
            assert_eq!(
                serde_json::from_str::<Response>(&json).unwrap(),
                resp,
                "{r}"
            );
        }
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
