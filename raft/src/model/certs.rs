//! Certificates and the ACME state every node answers from: the account, challenge records,
//! each name's status, and the budget toward the CA's rate limits.

use serde::{Deserialize, Serialize};

use super::{Millis, Sealed};
use crate::ids::{Hostname, Name, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    Acme,
    Manual,
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    pub name: Name,
    pub hosts: Vec<Hostname>,
    pub chain_pem: String,
    /// The private key, sealed with the cluster master key.
    pub key: Sealed,
    pub not_before: Millis,
    pub not_after: Millis,
    pub issuer: String,
    pub source: CertSource,
    /// The one project whose domains the certificate is served for; none: any project's (an
    /// operator's certificate for the whole cluster, or ACME's for one domain's own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<crate::ids::ProjectId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAccount {
    pub directory: String,
    pub contact: Vec<String>,
    /// Account credentials (key and URL), sealed with the master key.
    pub credentials: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http01 {
    pub token: Name,
    pub key_authorization: Sealed,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alpn01 {
    pub host: Hostname,
    pub cert_pem: String,
    pub key: Sealed,
    pub expires_at: Millis,
}

/// Where a domain's automatic certificate stands. The node working on the name writes it (fenced
/// by its lease); operators read it, and ask for a renewal through [`Command::RequestRenewal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub host: Hostname,
    pub state: CertState,
    /// The node that last worked on the name.
    #[serde(default)]
    pub owner: Option<NodeId>,
    /// Failed attempts since the last success (drives the back-off).
    #[serde(default)]
    pub failures: u32,
    /// What went wrong last, in words an operator can act on.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_attempt_at: Option<Millis>,
    #[serde(default)]
    pub last_success_at: Option<Millis>,
    /// No node starts an order for the name before this time (unless a renewal is requested).
    #[serde(default)]
    pub next_attempt_at: Millis,
    /// An operator asked for a new certificate at this time.
    #[serde(default)]
    pub renew_requested_at: Option<Millis>,
    /// ACME orders placed for the name, ever.
    #[serde(default)]
    pub orders: u64,
    /// The order of an attempt that failed for a passing reason (a network error, say): the
    /// next attempt resumes it rather than placing another.
    #[serde(default)]
    pub order_url: Option<String>,
}

impl CertStatus {
    /// A name nobody has ordered yet: due at `now`.
    pub fn new(host: Hostname, now: Millis) -> CertStatus {
        CertStatus {
            host,
            state: CertState::Pending,
            owner: None,
            failures: 0,
            last_error: None,
            last_attempt_at: None,
            last_success_at: None,
            next_attempt_at: now,
            renew_requested_at: None,
            orders: 0,
            order_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// Waiting for its first order.
    Pending,
    /// A node holds the lease and is ordering.
    Ordering,
    /// Issued; renewed before it expires.
    Valid,
    /// The last attempt failed; the next one waits (see `next_attempt_at`).
    Failing,
    /// Will not be ordered as configured (a wildcard without DNS-01).
    Refused,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Pending => "pending",
            CertState::Ordering => "ordering",
            CertState::Valid => "valid",
            CertState::Failing => "failing",
            CertState::Refused => "refused",
        }
    }
}

/// Times at which something limited happened (ACME orders of an account, failed validations of a
/// name), kept for one window: the cluster-wide budget toward a CA's rate limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindow {
    pub name: Name,
    pub stamps: Vec<Millis>,
}
