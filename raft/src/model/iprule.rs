//! IP allow and block lists: the entries, and the answer the edge gives for one address.

use serde::{Deserialize, Serialize};

use super::{prefix, Millis};
use crate::ids::{Cidr, ProjectId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleList {
    Allow,
    Block,
}

impl RuleList {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleList::Allow => "allow",
            RuleList::Block => "block",
        }
    }
}

/// One entry of an allow or block list. `project: None` is the cluster-wide block list, checked
/// at connection accept before any project is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRule {
    #[serde(default)]
    pub project: Option<ProjectId>,
    pub list: RuleList,
    pub cidr: Cidr,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub created_at: Millis,
    #[serde(default)]
    pub expires_at: Option<Millis>,
}

/// The key prefix of one scope's rules: `iprule/{project}/`, or `iprule/*/` for the cluster-wide
/// list (`*` is not a valid project id, so the two never collide).
pub fn ip_rule_prefix(project: Option<&ProjectId>) -> String {
    match project {
        Some(p) => format!("{}{p}/", prefix::IPRULE),
        None => format!("{}*/", prefix::IPRULE),
    }
}

/// Why an address was let through or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// In the cluster-wide block list.
    ClusterBlock,
    /// In the project's block list.
    ProjectBlock,
    /// The project has an allow list and the address is not in it.
    NotInAllowList,
    /// In the project's allow list.
    ProjectAllow,
    /// No list says anything about the address.
    NoRule,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClusterBlock => "cluster_block",
            Reason::ProjectBlock => "project_block",
            Reason::NotInAllowList => "not_in_allow_list",
            Reason::ProjectAllow => "project_allow",
            Reason::NoRule => "no_rule",
        }
    }

    /// The list whose entry decided, if an entry did, and whether it is the project's (not the
    /// cluster-wide one).
    pub fn list(self) -> Option<(RuleList, bool)> {
        match self {
            Reason::ClusterBlock => Some((RuleList::Block, false)),
            Reason::ProjectBlock => Some((RuleList::Block, true)),
            Reason::ProjectAllow => Some((RuleList::Allow, true)),
            Reason::NotInAllowList | Reason::NoRule => None,
        }
    }
}

/// The answer for one address: allowed or not, why, and the entry that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: Reason,
    pub rule: Option<Cidr>,
}

impl Verdict {
    pub fn allow(reason: Reason, rule: Option<Cidr>) -> Verdict {
        Verdict {
            allowed: true,
            reason,
            rule,
        }
    }

    pub fn deny(reason: Reason, rule: Option<Cidr>) -> Verdict {
        Verdict {
            allowed: false,
            reason,
            rule,
        }
    }
}
