//! The replicated records. Each record is one RocksDB key in the state-machine column family,
//! so a list of a million IP rules is a million small keys, never one large value.
//!
//! Times are Unix milliseconds set by the proposer; apply never reads the clock.
//!
//! # Layout
//!
//! - [`project`]: projects and domains (headers, limits, upstreams, TLS mode);
//! - [`iprule`]: IP allow and block lists, and the answer for one address;
//! - [`bot`]: bot-protection policies, the clearance-signing keys, decisions;
//! - [`certs`]: certificates and the ACME state (account, challenges, status, budget);
//! - [`keys`]: roles, API keys and the audit log;
//! - [`cluster`]: leases on shared work, join tokens, and the nodes removed from the cluster;
//! - [`path`]: request paths in the one normal form bot protection compares;
//! - [`settings`]: the cluster settings, one table of names, defaults and checks;
//! - [`upstream`]: which addresses an upstream may be (not the node's private side).
//!
//! The record types are re-exported here (`palisade_raft::model::Project`); the settings table
//! is in [`settings`].

pub mod bot;
pub mod certs;
pub mod cluster;
pub mod iprule;
pub mod keys;
pub mod path;
pub mod project;
pub mod schema;
pub mod settings;
pub mod upstream;

use serde::{Deserialize, Serialize};

pub use bot::*;
pub use certs::*;
pub use cluster::*;
pub use iprule::*;
pub use keys::*;
pub use path::{login_matches, path_matches};
pub use project::*;
pub use settings::{AcmeLimits, ClusterSettings};

use crate::ids::{Cidr, Hostname, Name, NodeId, ProjectId};

/// Unix time in milliseconds.
pub type Millis = u64;

/// An AES-256-GCM sealed secret (nonce || ciphertext || tag), base64 in JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(#[serde(with = "b64")] pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Every kind of replicated record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Project(Project),
    Domain(Domain),
    IpRule(IpRule),
    Cert(Cert),
    AcmeAccount(AcmeAccount),
    Http01(Http01),
    Alpn01(Alpn01),
    CertStatus(CertStatus),
    RateWindow(RateWindow),
    Lease(Lease),
    BotKey(BotKey),
    Decision(Decision),
    ApiKey(ApiKey),
    Audit(AuditEntry),
    JoinToken(JoinToken),
    Settings(ClusterSettings),
    RemovedNode(RemovedNode),
}

/// The key of a record: what `Delete` commands name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordKey {
    Project {
        id: ProjectId,
    },
    Domain {
        host: Hostname,
    },
    IpRule {
        project: Option<ProjectId>,
        list: RuleList,
        cidr: Cidr,
    },
    Cert {
        name: Name,
    },
    AcmeAccount {
        directory: String,
    },
    Http01 {
        token: Name,
    },
    Alpn01 {
        host: Hostname,
    },
    CertStatus {
        host: Hostname,
    },
    RateWindow {
        name: Name,
    },
    Lease {
        name: Name,
    },
    BotKey {
        kid: Name,
    },
    Decision {
        project: ProjectId,
        prefix: Cidr,
    },
    ApiKey {
        id: Name,
    },
    Audit {
        seq: u64,
    },
    /// An audit entry of [`AuditClass::Outside`].
    OutsideAudit {
        seq: u64,
    },
    JoinToken {
        hash: String,
    },
    Settings,
    RemovedNode {
        id: NodeId,
    },
}

impl Record {
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Project(p) => RecordKey::Project { id: p.id.clone() },
            Record::Domain(d) => RecordKey::Domain {
                host: d.host.clone(),
            },
            Record::IpRule(r) => RecordKey::IpRule {
                project: r.project.clone(),
                list: r.list,
                cidr: r.cidr,
            },
            Record::Cert(c) => RecordKey::Cert {
                name: c.name.clone(),
            },
            Record::AcmeAccount(a) => RecordKey::AcmeAccount {
                directory: a.directory.clone(),
            },
            Record::Http01(h) => RecordKey::Http01 {
                token: h.token.clone(),
            },
            Record::Alpn01(a) => RecordKey::Alpn01 {
                host: a.host.clone(),
            },
            Record::CertStatus(c) => RecordKey::CertStatus {
                host: c.host.clone(),
            },
            Record::RateWindow(w) => RecordKey::RateWindow {
                name: w.name.clone(),
            },
            Record::Lease(l) => RecordKey::Lease {
                name: l.name.clone(),
            },
            Record::BotKey(k) => RecordKey::BotKey { kid: k.kid.clone() },
            Record::Decision(d) => RecordKey::Decision {
                project: d.project.clone(),
                prefix: d.prefix,
            },
            Record::ApiKey(k) => RecordKey::ApiKey { id: k.id.clone() },
            Record::Audit(a) => a.class.key(a.seq),
            Record::JoinToken(t) => RecordKey::JoinToken {
                hash: t.hash.clone(),
            },
            Record::Settings(_) => RecordKey::Settings,
            Record::RemovedNode(r) => RecordKey::RemovedNode { id: r.id },
        }
    }
}

/// Key prefixes of the state-machine column family, one per record kind.
pub mod prefix {
    pub const PROJECT: &str = "project/";
    pub const DOMAIN: &str = "domain/";
    pub const IPRULE: &str = "iprule/";
    pub const CERT: &str = "cert/";
    pub const ACME_ACCOUNT: &str = "acme/account/";
    pub const HTTP01: &str = "acme/http01/";
    pub const ALPN01: &str = "acme/alpn01/";
    pub const CERT_STATUS: &str = "acme/status/";
    pub const RATE_WINDOW: &str = "acme/budget/";
    pub const LEASE: &str = "lease/";
    pub const BOTKEY: &str = "botkey/";
    pub const DECISION: &str = "decision/";
    pub const APIKEY: &str = "apikey/";
    pub const AUDIT: &str = "audit/";
    pub const AUDIT_OUTSIDE: &str = "audit-outside/";
    pub const JOIN_TOKEN: &str = "jointoken/";
    pub const SETTINGS: &str = "settings";
    pub const REMOVED_NODE: &str = "removed/";
    /// Internal: request ids already applied, for exactly-once retries.
    pub const DEDUP: &str = "~dedup/";
    /// Internal: what the request under a client-chosen id was, to refuse another under it.
    pub const FINGERPRINT: &str = "~fingerprint/";
    /// Internal: counters such as the next node id.
    pub const COUNTER: &str = "~counter/";
}

impl RecordKey {
    /// The RocksDB key. Sequence numbers are zero-padded so that keys sort numerically.
    pub fn encode(&self) -> String {
        use prefix::*;
        match self {
            RecordKey::Project { id } => format!("{PROJECT}{id}"),
            RecordKey::Domain { host } => format!("{DOMAIN}{host}"),
            RecordKey::IpRule {
                project,
                list,
                cidr,
            } => format!(
                "{}{}/{cidr}",
                ip_rule_prefix(project.as_ref()),
                list.as_str()
            ),
            RecordKey::Cert { name } => format!("{CERT}{name}"),
            RecordKey::AcmeAccount { directory } => format!("{ACME_ACCOUNT}{directory}"),
            RecordKey::Http01 { token } => format!("{HTTP01}{token}"),
            RecordKey::Alpn01 { host } => format!("{ALPN01}{host}"),
            RecordKey::CertStatus { host } => format!("{CERT_STATUS}{host}"),
            RecordKey::RateWindow { name } => format!("{RATE_WINDOW}{name}"),
            RecordKey::Lease { name } => format!("{LEASE}{name}"),
            RecordKey::BotKey { kid } => format!("{BOTKEY}{kid}"),
            RecordKey::Decision { project, prefix } => format!("{DECISION}{project}/{prefix}"),
            RecordKey::ApiKey { id } => format!("{APIKEY}{id}"),
            RecordKey::Audit { seq } => format!("{AUDIT}{seq:020}"),
            RecordKey::OutsideAudit { seq } => format!("{AUDIT_OUTSIDE}{seq:020}"),
            RecordKey::JoinToken { hash } => format!("{JOIN_TOKEN}{hash}"),
            RecordKey::Settings => SETTINGS.to_string(),
            RecordKey::RemovedNode { id } => format!("{REMOVED_NODE}{id:020}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_follow_the_design_prefixes() {
        let rule = Record::IpRule(IpRule {
            project: Some("shop".parse().unwrap()),
            list: RuleList::Block,
            cidr: "2001:db8::/32".parse().unwrap(),
            note: String::new(),
            created_by: String::new(),
            created_at: 0,
            expires_at: None,
        });
        assert_eq!(rule.key().encode(), "iprule/shop/block/2001:db8::/32");
        let cluster = RecordKey::IpRule {
            project: None,
            list: RuleList::Block,
            cidr: "192.0.2.1".parse().unwrap(),
        };
        assert_eq!(cluster.encode(), "iprule/*/block/192.0.2.1/32");
        assert_eq!(
            RecordKey::Audit { seq: 42 }.encode(),
            "audit/00000000000000000042"
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        let p = Record::Project(Project {
            id: "shop".parse().unwrap(),
            name: "Shop".into(),
            headers: HeaderPolicy::default(),
            bot: BotPolicy::default(),
            limits: Limits::default(),
            created_at: 7,
        });
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), p);
        let bad = json.replace("\"shop\"", "\"Sh op\"");
        assert!(serde_json::from_str::<Record>(&bad).is_err());
    }
}
