//! The node's TOML configuration: parsed with defaults, then validated so that a bad value stops
//! the node at start-up with one line naming the field.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use palisade_raft::cluster::RaftTuning;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Runtime worker threads (proxy, TLS, admin and Raft share them); 0: one per CPU.
    pub workers: usize,
    pub cluster: ClusterSection,
    pub admin: AdminSection,
    pub public: PublicSection,
    pub raft: RaftTuning,
    pub edge: EdgeSection,
    pub acme: AcmeSection,
    pub log: LogSection,
}

/// Automatic certificates for domains with `tls = "acme"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeSection {
    /// `letsencrypt`, `letsencrypt-staging`, an `https://` directory URL, or `off`.
    pub directory: String,
    /// Contact address for the CA's expiry and policy mail (optional).
    pub email: String,
    /// PEM file of the CAs of the directory's own HTTPS certificate (a private CA); empty: the
    /// system's roots.
    pub ca_bundle: String,
    /// `http-01` or `tls-alpn-01`: the challenge offered first.
    pub challenge: String,
    /// How long a node owns a name's order without renewing its lease.
    pub lease_ttl_ms: u64,
    /// First wait after a failed attempt; doubles per failure up to `backoff_cap_ms`.
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// How long the CA may take to validate and issue one order.
    pub order_timeout_ms: u64,
    /// Orders one node works on at once.
    pub parallel: usize,
}

impl Default for AcmeSection {
    fn default() -> Self {
        AcmeSection {
            directory: "letsencrypt".into(),
            email: String::new(),
            ca_bundle: String::new(),
            challenge: "http-01".into(),
            lease_ttl_ms: 60_000,
            backoff_base_ms: 60_000,
            backoff_cap_ms: 6 * 3_600_000,
            order_timeout_ms: 120_000,
            parallel: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSection {
    /// Peers whose `X-Forwarded-For` is believed (CIDRs). Empty: the socket peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Expect a PROXY protocol (v1 or v2) header on both public listeners from the peers in
    /// `trusted_proxies` (required then); other peers connect directly and send none.
    pub proxy_protocol: bool,
    pub max_header_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_response_timeout_ms: u64,
    /// How often the leader deletes expired IP rules from the store. They stop matching at
    /// their expiry on every node regardless; this only reclaims space.
    pub rule_sweep_interval_ms: u64,
}

impl Default for EdgeSection {
    fn default() -> Self {
        EdgeSection {
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            max_header_bytes: 64 << 10,
            header_read_timeout_ms: 10_000,
            upstream_connect_timeout_ms: 3_000,
            upstream_response_timeout_ms: 60_000,
            rule_sweep_interval_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// UDP address the QUIC transport binds.
    pub listen: String,
    /// Address other nodes use to reach this one (defaults to `listen`).
    pub advertise: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    pub listen: String,
    /// Allow the admin API on a public or wildcard address. Off by default.
    pub allow_public: bool,
    /// When not empty, only these sources (addresses or CIDRs) reach the admin API; any other
    /// gets the same 404 as a path that does not exist.
    pub allowed_ips: Vec<String>,
    /// Serve the admin API over TLS (1.3) with a certificate from the cluster CA; clients
    /// trust `DATA_DIR/tls/ca.pem`.
    pub tls: bool,
    /// How often a node records when API keys were last used.
    pub last_used_flush_ms: u64,
    /// Audit entries older than this are pruned by the leader.
    pub audit_max_age_days: u64,
    /// At most this many audit entries are kept (the oldest go first).
    pub audit_max_entries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicSection {
    pub http: String,
    pub https: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter such as `info` or `palisade_raft=debug,info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/palisade"),
            workers: 0,
            cluster: ClusterSection::default(),
            admin: AdminSection::default(),
            public: PublicSection::default(),
            raft: RaftTuning::default(),
            edge: EdgeSection::default(),
            acme: AcmeSection::default(),
            log: LogSection::default(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            listen: "127.0.0.1:7000".into(),
            advertise: None,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:7001".into(),
            allow_public: false,
            allowed_ips: Vec::new(),
            tls: false,
            last_used_flush_ms: 60_000,
            audit_max_age_days: 365,
            audit_max_entries: 1_000_000,
        }
    }
}

impl Default for PublicSection {
    fn default() -> Self {
        PublicSection {
            http: "0.0.0.0:80".into(),
            https: "0.0.0.0:443".into(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
        }
    }
}

/// A configuration error: which field, which value, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("config {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config field {field} = {value:?}: {why}")]
    Field {
        field: &'static str,
        value: String,
        why: String,
    },
}

fn field(field: &'static str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        value: value.to_string(),
        why: why.into(),
    }
}

/// The checked configuration the node runs with.
#[derive(Debug, Clone)]
pub struct Validated {
    pub raw: Config,
    pub cluster_listen: SocketAddr,
    pub cluster_advertise: String,
    pub admin_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub https_listen: SocketAddr,
    pub edge: palisade_edge::EdgeSettings,
    pub rule_sweep_interval: std::time::Duration,
    pub admin: palisade_admin::AdminOptions,
    /// `None` when `acme.directory = "off"`.
    pub acme: Option<palisade_edge::acme::AcmeConfig>,
}

fn socket(name: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| field(name, value, "must be IP:PORT, for example 10.0.0.5:7000"))
}

/// Private, loopback or link-local: reachable only from inside the operator's network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            detail: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e
                .to_string()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// Environment overrides, applied after the file: `PALISADE_RAFT_<FIELD>` for each `[raft]`
    /// field (for example `PALISADE_RAFT_SNAPSHOT_EVERY=500`), the edge's header-read and
    /// upstream-response timeouts and rule sweep interval, `PALISADE_EDGE_TRUSTED_PROXIES`
    /// (comma-separated), `PALISADE_EDGE_PROXY_PROTOCOL`, `PALISADE_ADMIN_ALLOWED_IPS`
    /// (comma-separated), `PALISADE_ADMIN_LAST_USED_FLUSH_MS`, `PALISADE_ADMIN_AUDIT_MAX_ENTRIES`,
    /// `PALISADE_ACME_<FIELD>` for each `[acme]` field, `PALISADE_WORKERS`, and `PALISADE_LOG`.
    pub fn apply_env(mut self) -> Result<Config, ConfigError> {
        let num = |var: &'static str, slot: &mut u64| -> Result<(), ConfigError> {
            if let Ok(v) = std::env::var(var) {
                *slot = v
                    .parse()
                    .map_err(|_| field(var, &v, "must be a whole number"))?;
            }
            Ok(())
        };
        if let Ok(v) = std::env::var("PALISADE_WORKERS") {
            self.workers = v
                .parse()
                .map_err(|_| field("PALISADE_WORKERS", &v, "must be a whole number"))?;
        }
        num("PALISADE_RAFT_HEARTBEAT_MS", &mut self.raft.heartbeat_ms)?;
        num(
            "PALISADE_RAFT_ELECTION_TIMEOUT_MIN_MS",
            &mut self.raft.election_timeout_min_ms,
        )?;
        num(
            "PALISADE_RAFT_ELECTION_TIMEOUT_MAX_MS",
            &mut self.raft.election_timeout_max_ms,
        )?;
        num(
            "PALISADE_RAFT_SNAPSHOT_EVERY",
            &mut self.raft.snapshot_every,
        )?;
        num("PALISADE_RAFT_KEEP_LOGS", &mut self.raft.keep_logs)?;
        num(
            "PALISADE_EDGE_HEADER_READ_TIMEOUT_MS",
            &mut self.edge.header_read_timeout_ms,
        )?;
        num(
            "PALISADE_EDGE_UPSTREAM_RESPONSE_TIMEOUT_MS",
            &mut self.edge.upstream_response_timeout_ms,
        )?;
        num(
            "PALISADE_EDGE_RULE_SWEEP_INTERVAL_MS",
            &mut self.edge.rule_sweep_interval_ms,
        )?;
        num(
            "PALISADE_ADMIN_LAST_USED_FLUSH_MS",
            &mut self.admin.last_used_flush_ms,
        )?;
        num(
            "PALISADE_ADMIN_AUDIT_MAX_ENTRIES",
            &mut self.admin.audit_max_entries,
        )?;
        num("PALISADE_ACME_LEASE_TTL_MS", &mut self.acme.lease_ttl_ms)?;
        num(
            "PALISADE_ACME_BACKOFF_BASE_MS",
            &mut self.acme.backoff_base_ms,
        )?;
        num(
            "PALISADE_ACME_BACKOFF_CAP_MS",
            &mut self.acme.backoff_cap_ms,
        )?;
        num(
            "PALISADE_ACME_ORDER_TIMEOUT_MS",
            &mut self.acme.order_timeout_ms,
        )?;
        for (var, slot) in [
            ("PALISADE_ACME_DIRECTORY", &mut self.acme.directory),
            ("PALISADE_ACME_EMAIL", &mut self.acme.email),
            ("PALISADE_ACME_CA_BUNDLE", &mut self.acme.ca_bundle),
            ("PALISADE_ACME_CHALLENGE", &mut self.acme.challenge),
        ] {
            if let Ok(v) = std::env::var(var) {
                *slot = v;
            }
        }
        if let Ok(v) = std::env::var("PALISADE_ADMIN_ALLOWED_IPS") {
            self.admin.allowed_ips = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Ok(v) = std::env::var("PALISADE_EDGE_TRUSTED_PROXIES") {
            self.edge.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Ok(v) = std::env::var("PALISADE_EDGE_PROXY_PROTOCOL") {
            self.edge.proxy_protocol = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(field(
                        "PALISADE_EDGE_PROXY_PROTOCOL",
                        &v,
                        "must be true or false",
                    ))
                }
            };
        }
        if let Ok(v) = std::env::var("PALISADE_LOG") {
            self.log.level = v;
        }
        Ok(self)
    }

    fn acme_config(&self) -> Result<Option<palisade_edge::acme::AcmeConfig>, ConfigError> {
        use palisade_edge::acme::{directory_url, AcmeConfig, ChallengeKind};
        let a = &self.acme;
        if a.directory == "off" {
            return Ok(None);
        }
        let directory = directory_url(&a.directory)
            .map_err(|why| field("acme.directory", &a.directory, why))?;
        let challenge = ChallengeKind::parse(&a.challenge)
            .map_err(|why| field("acme.challenge", &a.challenge, why))?;
        let mut contact = Vec::new();
        if !a.email.is_empty() {
            let (user, domain) = a.email.split_once('@').unwrap_or(("", ""));
            if user.is_empty() || domain.parse::<palisade_raft::ids::Hostname>().is_err() {
                return Err(field("acme.email", &a.email, "is not an email address"));
            }
            contact.push(format!("mailto:{}", a.email));
        }
        let ca_bundle = match a.ca_bundle.as_str() {
            "" => None,
            path => {
                let p = PathBuf::from(path);
                if !p.is_file() {
                    return Err(field("acme.ca_bundle", path, "is not a readable file"));
                }
                Some(p)
            }
        };
        for (name, v) in [
            ("acme.lease_ttl_ms", a.lease_ttl_ms),
            ("acme.backoff_base_ms", a.backoff_base_ms),
            ("acme.order_timeout_ms", a.order_timeout_ms),
            ("acme.parallel", a.parallel as u64),
        ] {
            if v == 0 {
                return Err(field(name, "0", "must be above 0"));
            }
        }
        if a.lease_ttl_ms < 3000 {
            return Err(field(
                "acme.lease_ttl_ms",
                &a.lease_ttl_ms.to_string(),
                "must be at least 3000 (the lease is renewed every third of it)",
            ));
        }
        if a.backoff_cap_ms < a.backoff_base_ms {
            return Err(field(
                "acme.backoff_cap_ms",
                &a.backoff_cap_ms.to_string(),
                "must be at least acme.backoff_base_ms",
            ));
        }
        let ms = std::time::Duration::from_millis;
        Ok(Some(AcmeConfig {
            directory,
            contact,
            ca_bundle,
            challenge,
            lease_ttl: ms(a.lease_ttl_ms),
            backoff_base: ms(a.backoff_base_ms),
            backoff_cap: ms(a.backoff_cap_ms),
            order_timeout: ms(a.order_timeout_ms),
            parallel: a.parallel,
        }))
    }

    pub fn validate(self) -> Result<Validated, ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(field("data_dir", "", "must name a directory"));
        }
        if self.workers > 1024 {
            return Err(field(
                "workers",
                &self.workers.to_string(),
                "must be at most 1024 (0: one per CPU)",
            ));
        }
        let cluster_listen = socket("cluster.listen", &self.cluster.listen)?;
        let cluster_advertise = self
            .cluster
            .advertise
            .clone()
            .unwrap_or_else(|| self.cluster.listen.clone());
        let adv = socket("cluster.advertise", &cluster_advertise)?;
        if adv.ip().is_unspecified() {
            return Err(field(
                "cluster.advertise",
                &cluster_advertise,
                "must be an address peers can reach, not a wildcard",
            ));
        }
        let admin_listen = socket("admin.listen", &self.admin.listen)?;
        let ip = admin_listen.ip();
        if !self.admin.allow_public && (ip.is_unspecified() || !is_private(ip)) {
            return Err(field(
                "admin.listen",
                &self.admin.listen,
                "is a public or wildcard address; bind the admin API to a private address or set admin.allow_public = true",
            ));
        }
        let mut admin_allowed = Vec::new();
        for (i, c) in self.admin.allowed_ips.iter().enumerate() {
            admin_allowed.push(c.parse().map_err(|e: palisade_raft::ids::InvalidId| {
                ConfigError::Field {
                    field: "admin.allowed_ips",
                    value: format!("[{i}] {c}"),
                    why: e.why.to_string(),
                }
            })?);
        }
        if self.admin.audit_max_entries < 1000 {
            return Err(field(
                "admin.audit_max_entries",
                &self.admin.audit_max_entries.to_string(),
                "must be at least 1000",
            ));
        }
        let http_listen = socket("public.http", &self.public.http)?;
        let https_listen = socket("public.https", &self.public.https)?;
        let mut trusted = Vec::new();
        for (i, c) in self.edge.trusted_proxies.iter().enumerate() {
            trusted.push(c.parse().map_err(|e: palisade_raft::ids::InvalidId| {
                ConfigError::Field {
                    field: "edge.trusted_proxies",
                    value: format!("[{i}] {c}"),
                    why: e.why.to_string(),
                }
            })?);
        }
        if self.edge.proxy_protocol && trusted.is_empty() {
            return Err(field(
                "edge.proxy_protocol",
                "true",
                "needs edge.trusted_proxies: a PROXY header is believed only from the load balancers listed there",
            ));
        }
        if self.edge.max_header_bytes < 8192 || self.edge.max_header_bytes > 1 << 20 {
            return Err(field(
                "edge.max_header_bytes",
                &self.edge.max_header_bytes.to_string(),
                "must be 8192 to 1048576",
            ));
        }
        for (name, v) in [
            (
                "edge.header_read_timeout_ms",
                self.edge.header_read_timeout_ms,
            ),
            (
                "edge.upstream_connect_timeout_ms",
                self.edge.upstream_connect_timeout_ms,
            ),
            (
                "edge.upstream_response_timeout_ms",
                self.edge.upstream_response_timeout_ms,
            ),
            (
                "edge.rule_sweep_interval_ms",
                self.edge.rule_sweep_interval_ms,
            ),
            ("admin.last_used_flush_ms", self.admin.last_used_flush_ms),
            ("admin.audit_max_age_days", self.admin.audit_max_age_days),
        ] {
            if v == 0 {
                return Err(field(name, "0", "must be above 0"));
            }
        }
        let ms = std::time::Duration::from_millis;
        let edge = palisade_edge::EdgeSettings {
            trusted_proxies: trusted,
            limits: palisade_edge::ListenerLimits {
                max_header_bytes: self.edge.max_header_bytes,
                header_read_timeout: ms(self.edge.header_read_timeout_ms),
                handshake_timeout: ms(self.edge.header_read_timeout_ms),
                proxy_protocol: self.edge.proxy_protocol,
            },
            timeouts: palisade_edge::proxy::ProxyTimeouts {
                connect: ms(self.edge.upstream_connect_timeout_ms),
                response: ms(self.edge.upstream_response_timeout_ms),
            },
        };
        self.raft.validate().map_err(|why| field("raft", "", why))?;
        let acme = self.acme_config()?;
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(field(
                "log.level",
                &self.log.level,
                "is not a valid log filter",
            ));
        }
        Ok(Validated {
            cluster_listen,
            cluster_advertise,
            admin_listen,
            http_listen,
            https_listen,
            edge,
            rule_sweep_interval: ms(self.edge.rule_sweep_interval_ms),
            admin: palisade_admin::AdminOptions {
                allowed_ips: admin_allowed,
                last_used_flush: ms(self.admin.last_used_flush_ms),
                audit_max_age: std::time::Duration::from_secs(
                    self.admin.audit_max_age_days.saturating_mul(86_400),
                ),
                audit_max_entries: self.admin.audit_max_entries,
            },
            acme,
            raw: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Validated, ConfigError> {
        toml::from_str::<Config>(s)
            .map_err(|e| ConfigError::Parse {
                path: "t".into(),
                detail: e.to_string(),
            })?
            .validate()
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = parse("[cluster]\nlisten = \"nonsense\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.listen") && e.contains("nonsense"),
            "{e}"
        );
        let e = parse("[admin]\nlisten = \"0.0.0.0:7001\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin.listen") && e.contains("allow_public"),
            "{e}"
        );
        let e = parse("[admin]\nlisten = \"8.8.8.8:7001\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.listen"), "{e}");
        let e = parse("[raft]\nheartbeat_ms = 900").unwrap_err().to_string();
        assert!(e.contains("heartbeat_ms"), "{e}");
        let e = parse("[clutser]\nlisten = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("clutser"), "{e}");
        let e = parse("[edge]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("edge.trusted_proxies") && e.contains("[1] 10.0.0.0/40"),
            "{e}"
        );
    }

    #[test]
    fn proxy_protocol_needs_the_proxies_it_believes() {
        let e = parse("[edge]\nproxy_protocol = true")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("edge.proxy_protocol") && e.contains("trusted_proxies"),
            "{e}"
        );
        let ok = parse("[edge]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]");
        assert!(ok.is_ok());
        let e = parse("[edge]\nrule_sweep_interval_ms = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("edge.rule_sweep_interval_ms"), "{e}");
    }

    #[test]
    fn acme_settings_are_checked_and_off_turns_it_off() {
        let v = parse("").unwrap();
        let acme = v.acme.expect("on by default");
        assert!(acme
            .directory
            .starts_with("https://acme-v02.api.letsencrypt.org"));
        assert!(parse("[acme]\ndirectory = \"off\"").unwrap().acme.is_none());
        for (toml, field) in [
            ("directory = \"http://ca.test/dir\"", "acme.directory"),
            ("challenge = \"dns-01\"", "acme.challenge"),
            ("email = \"not-an-address\"", "acme.email"),
            ("ca_bundle = \"/nonexistent/ca.pem\"", "acme.ca_bundle"),
            ("lease_ttl_ms = 500", "acme.lease_ttl_ms"),
            (
                "backoff_cap_ms = 10\nbackoff_base_ms = 20",
                "acme.backoff_cap_ms",
            ),
        ] {
            let e = parse(&format!("[acme]\n{toml}")).unwrap_err().to_string();
            assert!(e.contains(field), "{toml}: {e}");
        }
        let v = parse("[acme]\nemail = \"ops@example.com\"\nchallenge = \"tls-alpn-01\"").unwrap();
        assert_eq!(v.acme.unwrap().contact, vec!["mailto:ops@example.com"]);
    }

    #[test]
    fn private_admin_addresses_and_explicit_public_are_accepted() {
        assert!(parse("[admin]\nlisten = \"10.1.2.3:7001\"").is_ok());
        assert!(parse("[admin]\nlisten = \"[fd00::1]:7001\"").is_ok());
        assert!(parse("[admin]\nlisten = \"0.0.0.0:7001\"\nallow_public = true").is_ok());
    }
}
