//! Who may act: roles, API keys, and the audit log of what was done.

use serde::{Deserialize, Serialize};

use super::Millis;
use crate::ids::{Name, NodeId, ProjectId};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Name,
    /// The visible start of the key, for operators to recognise it.
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    pub role: Role,
    #[serde(default)]
    pub project: Option<ProjectId>,
    pub created_at: Millis,
    #[serde(default)]
    pub expires_at: Option<Millis>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
    /// When a node last saw the key used (flushed about once a minute, so approximate).
    #[serde(default)]
    pub last_used_at: Option<Millis>,
    /// Who made it: `key:{id}` or `init`.
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log index of the write that recorded it: unique and ordered cluster-wide.
    #[serde(default)]
    pub seq: u64,
    pub at: Millis,
    pub actor: String,
    #[serde(default)]
    pub source_ip: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// Whose doing the entry records, for retention: the outside world's entries are kept
    /// apart, so that they can never push an operator's changes out of the log.
    #[serde(default, skip_serializing_if = "AuditClass::is_operator")]
    pub class: AuditClass,
}

/// The two retention classes of the audit log, each pruned by its own count and age.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuditClass {
    /// What operators, API keys and the cluster itself did.
    #[default]
    Operator,
    /// What unauthenticated traffic caused: failed API keys, refused joins, bot-protection
    /// decisions on public traffic.
    Outside,
}

impl AuditClass {
    pub fn is_operator(&self) -> bool {
        *self == AuditClass::Operator
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AuditClass::Operator => "operator",
            AuditClass::Outside => "outside",
        }
    }

    /// The key prefix of the class's entries.
    pub fn prefix(&self) -> &'static str {
        match self {
            AuditClass::Operator => super::prefix::AUDIT,
            AuditClass::Outside => super::prefix::AUDIT_OUTSIDE,
        }
    }

    /// The key of the class's entry `seq`.
    pub fn key(&self, seq: u64) -> super::RecordKey {
        match self {
            AuditClass::Operator => super::RecordKey::Audit { seq },
            AuditClass::Outside => super::RecordKey::OutsideAudit { seq },
        }
    }
}

impl AuditEntry {
    /// The same entry, in the outside world's retention class.
    pub fn outside(self) -> AuditEntry {
        AuditEntry {
            class: AuditClass::Outside,
            ..self
        }
    }

    /// An entry for a change the cluster makes itself (actor `node:{id}`, no source address);
    /// the state machine fills in `seq`.
    pub fn by_node(node: NodeId, action: &str, target: String, outcome: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: crate::now_ms(),
            actor: format!("node:{node}"),
            source_ip: String::new(),
            action: action.to_string(),
            target,
            outcome: outcome.to_string(),
            class: AuditClass::Operator,
        }
    }
}
