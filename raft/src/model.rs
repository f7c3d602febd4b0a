//! The replicated records. Each record is one RocksDB key in the state-machine column family,
//! so a list of a million IP rules is a million small keys, never one large value.
//!
//! Times are Unix milliseconds set by the proposer; apply never reads the clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct HeaderPolicy {
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    pub nosniff: bool,
    pub frame_deny: bool,
    pub xss_protection: bool,
    /// Keep a header the upstream set instead of replacing it with the policy's value.
    pub keep_upstream: bool,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy {
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
            nosniff: true,
            frame_deny: true,
            xss_protection: true,
            keep_upstream: false,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BotMode {
    Off,
    #[default]
    Automatic,
    AlwaysOn,
}

/// One automatic trigger: more than `threshold` events from one source within `window_seconds`
/// challenges that source for `challenge_seconds` on every node. `log_only` logs and counts what
/// it would do and changes nothing, to tune a threshold safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Trigger {
    pub enabled: bool,
    pub threshold: u32,
    pub window_seconds: u32,
    pub challenge_seconds: u32,
    pub log_only: bool,
}

impl Trigger {
    pub const fn new(threshold: u32, window_seconds: u32, challenge_seconds: u32) -> Trigger {
        Trigger {
            enabled: true,
            threshold,
            window_seconds,
            challenge_seconds,
            log_only: false,
        }
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::new(600, 60, 600)
    }
}

/// The automatic triggers of a project (`mode = "automatic"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Triggers {
    /// Requests from one IP address.
    pub request_rate: Trigger,
    /// Requests from one IPv6 /64 (one subscriber's whole allocation).
    pub request_rate_v6_64: Trigger,
    /// 4xx answers to one IP address: path scanning.
    pub client_errors: Trigger,
    /// 401/403 from the upstream on a login path, per IP address.
    pub failed_logins: Trigger,
    /// Requests with no `User-Agent` or no `Accept`, per IP address.
    pub missing_headers: Trigger,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            request_rate: Trigger::new(600, 60, 600),
            request_rate_v6_64: Trigger::new(2_400, 60, 600),
            client_errors: Trigger::new(60, 60, 600),
            failed_logins: Trigger::new(5, 600, 600),
            missing_headers: Trigger::new(30, 60, 600),
        }
    }
}

impl Triggers {
    pub fn all(&self) -> [(&'static str, &Trigger); 5] {
        [
            ("request_rate", &self.request_rate),
            ("request_rate_v6_64", &self.request_rate_v6_64),
            ("client_errors", &self.client_errors),
            ("failed_logins", &self.failed_logins),
            ("missing_headers", &self.missing_headers),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct BotPolicy {
    pub mode: BotMode,
    /// Leading zero bits the proof of work must find.
    pub difficulty_bits: u8,
    /// Seconds a client without JavaScript waits before its clearance.
    pub no_script_wait_seconds: u32,
    /// Seconds a challenge may be answered in (at most five minutes).
    pub answer_within_seconds: u32,
    /// Clearance lifetime after an automatic trigger.
    pub session_minutes: u32,
    /// Clearance lifetime while the challenge is switched on by hand (`always_on`).
    pub manual_session_minutes: u32,
    /// Bumping the epoch invalidates every clearance cookie of the project at once.
    pub epoch: u32,
    /// Paths never challenged (webhooks, health checks): exact, or a prefix ending in `*`.
    /// `/.well-known/acme-challenge/*` and `/robots.txt` are always exempt.
    pub exempt_paths: Vec<String>,
    /// Paths whose 401/403 answers count as failed logins: exact, or a prefix ending in `*`.
    pub login_paths: Vec<String>,
    pub triggers: Triggers,
}

impl Default for BotPolicy {
    fn default() -> Self {
        BotPolicy {
            mode: BotMode::Automatic,
            difficulty_bits: 18,
            no_script_wait_seconds: 8,
            answer_within_seconds: 300,
            session_minutes: 30,
            manual_session_minutes: 720,
            epoch: 0,
            exempt_paths: Vec::new(),
            login_paths: [
                "/login",
                "/signin",
                "/sign-in",
                "/wp-login.php",
                "/user/login",
                "/api/login",
                "/api/auth/*",
                "/auth/*",
                "/oauth/token",
            ]
            .map(String::from)
            .to_vec(),
            triggers: Triggers::default(),
        }
    }
}

impl BotPolicy {
    /// The longest a clearance cookie of this project lives, in milliseconds.
    pub fn longest_session_ms(&self) -> u64 {
        u64::from(self.session_minutes.max(self.manual_session_minutes)) * 60_000
    }
}

/// Whether `path` is one of `patterns`: exact, or a prefix when the pattern ends in `*`.
pub fn path_matches(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == p,
    })
}

/// Request limits of a project's domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    #[serde(default)]
    pub headers: HeaderPolicy,
    #[serde(default)]
    pub bot: BotPolicy,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub created_at: Millis,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Acme,
    Manual,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub host: Hostname,
    pub project: ProjectId,
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub tls: TlsMode,
    #[serde(default = "yes")]
    pub redirect_https: bool,
    #[serde(default)]
    pub bot_override: Option<BotMode>,
}

fn yes() -> bool {
    true
}

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

/// A lease on a piece of cluster work. `token` is the log index that granted it: a fencing token
/// that only grows, so a deposed holder's writes can be told apart and refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: Name,
    pub holder: NodeId,
    pub token: u64,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotKeyState {
    Next,
    Active,
    VerifyOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotKey {
    pub kid: Name,
    pub secret: Sealed,
    pub state: BotKeyState,
    pub not_after: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    Challenge,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub project: ProjectId,
    pub prefix: Cidr,
    pub action: DecisionAction,
    pub until: Millis,
    #[serde(default)]
    pub reason: String,
}

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
}

impl AuditEntry {
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
        }
    }
}

/// A one-use secret that lets a new node join; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub hash: String,
    pub expires_at: Millis,
    pub created_by: String,
}

/// Cluster-wide settings that every node applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterSettings {
    #[serde(default)]
    pub values: BTreeMap<String, String>,
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
    JoinToken {
        hash: String,
    },
    Settings,
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
            Record::Audit(a) => RecordKey::Audit { seq: a.seq },
            Record::JoinToken(t) => RecordKey::JoinToken {
                hash: t.hash.clone(),
            },
            Record::Settings(_) => RecordKey::Settings,
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
    pub const JOIN_TOKEN: &str = "jointoken/";
    pub const SETTINGS: &str = "settings";
    /// Internal: request ids already applied, for exactly-once retries.
    pub const DEDUP: &str = "~dedup/";
    /// Internal: counters such as the next node id.
    pub const COUNTER: &str = "~counter/";
}

/// The key prefix of one scope's rules: `iprule/{project}/`, or `iprule/*/` for the cluster-wide
/// list (`*` is not a valid project id, so the two never collide).
pub fn ip_rule_prefix(project: Option<&ProjectId>) -> String {
    match project {
        Some(p) => format!("{}{p}/", prefix::IPRULE),
        None => format!("{}*/", prefix::IPRULE),
    }
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
            RecordKey::JoinToken { hash } => format!("{JOIN_TOKEN}{hash}"),
            RecordKey::Settings => SETTINGS.to_string(),
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
