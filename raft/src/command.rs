//! What a client may ask the replicated state machine to do, and what it answers.
//!
//! A command carries everything its apply needs (the proposer's clock included), so every node
//! applies it to the same result.

use serde::{Deserialize, Serialize};

use crate::ids::{Hostname, Name, NodeId, RequestId};
use crate::model::{AuditEntry, Lease, Millis, Record, RecordKey};

/// How a refusal of a `Fenced` command whose lease has moved on begins.
pub const STALE_FENCE: &str = "stale fencing token";
/// How a refusal of a `Spend` over its limit begins.
pub const BUDGET_SPENT: &str = "budget spent";

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
    /// Not applied: the command was refused by the state machine, with the reason.
    Refused {
        reason: String,
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

fn default_prune_limit() -> u32 {
    10_000
}
