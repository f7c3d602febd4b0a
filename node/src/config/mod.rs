//! The node's TOML configuration in three steps: parsed with defaults (this module), then the
//! environment's overrides ([`env`]), then validated ([`validate`]) so that a bad value stops the
//! node at start-up with one line naming the field.

mod env;
mod validate;

pub use validate::{ConfigError, Validated};

use std::path::{Path, PathBuf};

use palisade_raft::cluster::RaftTuning;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Data-plane threads, each with its own listeners and upstream connections; 0: one per
    /// CPU. Raft, the admin API and background jobs run on two threads of their own.
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
    /// Networks an upstream may be in although they are this machine's private side
    /// (loopback, link-local, cloud metadata), on this node only; the cluster setting
    /// `edge.upstream_allowed_networks` allows them everywhere. `palisade dev` allows loopback.
    pub upstream_allowed_networks: Vec<String>,
    pub max_header_bytes: usize,
    /// Time for a request head, and for a new connection's first request whatever it sends.
    pub header_read_timeout_ms: u64,
    /// Time a connection may stay open with no request in flight (keep-alive, h2).
    pub idle_timeout_ms: u64,
    /// Open public connections (both listeners together); more are closed at accept. 0 sizes
    /// it to the machine: half the open-files limit less 1,024 (each connection may hold an
    /// upstream connection too), at most one per 64 KiB of memory, at least 1,024.
    pub max_connections: u64,
    /// Open public connections from one IPv4 address or IPv6 /64 (trusted proxies are not
    /// counted per source).
    pub max_connections_per_ip: u64,
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
            upstream_allowed_networks: Vec::new(),
            max_header_bytes: 64 << 10,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 0,
            max_connections_per_ip: 1_024,
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
    /// How long node certificates are valid (this node's own, and those it signs for joining
    /// nodes); a node renews its own when a third is left. At least 60.
    pub node_cert_validity_seconds: u64,
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
    /// At most this many audit entries are kept in each retention class (operators' changes;
    /// what unauthenticated traffic caused), the oldest of the class first.
    pub audit_max_entries: u64,
    /// Failed authentications itemised in the audit log per second per node; the rest are
    /// counted in one summary entry a second.
    pub failure_audits_per_second: u32,
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
            node_cert_validity_seconds: palisade_raft::crypto::NODE_CERT_VALIDITY.as_secs(),
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
            failure_audits_per_second: palisade_admin::guard::FAILURE_AUDITS_PER_SEC,
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
