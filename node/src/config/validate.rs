//! From the parsed configuration to the one the node runs with: every address parsed, every
//! value in range, the admin listener kept private, or one error naming the field and value.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use palisade_raft::ids::Cidr;

use super::Config;

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

pub(super) fn field(field: &'static str, value: &str, why: impl Into<String>) -> ConfigError {
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
    pub acme: Option<palisade_edge::jobs::acme::AcmeConfig>,
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
    fn acme_config(&self) -> Result<Option<palisade_edge::jobs::acme::AcmeConfig>, ConfigError> {
        use palisade_edge::jobs::acme::{directory_url, AcmeConfig, ChallengeKind};
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
        let admin_allowed = cidrs("admin.allowed_ips", &self.admin.allowed_ips)?;
        if self.admin.audit_max_entries < 1000 {
            return Err(field(
                "admin.audit_max_entries",
                &self.admin.audit_max_entries.to_string(),
                "must be at least 1000",
            ));
        }
        let http_listen = socket("public.http", &self.public.http)?;
        let https_listen = socket("public.https", &self.public.https)?;
        let trusted = cidrs("edge.trusted_proxies", &self.edge.trusted_proxies)?;
        let upstream_allowed = cidrs(
            "edge.upstream_allowed_networks",
            &self.edge.upstream_allowed_networks,
        )?;
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
            ("edge.idle_timeout_ms", self.edge.idle_timeout_ms),
            (
                "edge.max_connections_per_ip",
                self.edge.max_connections_per_ip,
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
        let validity = self.cluster.node_cert_validity_seconds;
        if !(60..=10 * 365 * 86_400).contains(&validity) {
            return Err(field(
                "cluster.node_cert_validity_seconds",
                &validity.to_string(),
                "must be 60 to 315360000 (ten years)",
            ));
        }
        let max_connections = match self.edge.max_connections {
            0 => machine_connections(),
            n => n,
        };
        if self.edge.max_connections_per_ip > max_connections
            || self.edge.max_connections_per_ip > u64::from(u32::MAX)
        {
            return Err(field(
                "edge.max_connections_per_ip",
                &self.edge.max_connections_per_ip.to_string(),
                format!("must be at most edge.max_connections ({max_connections})"),
            ));
        }
        let ms = std::time::Duration::from_millis;
        let mut own_listeners = vec![cluster_listen, admin_listen, http_listen, https_listen];
        own_listeners.push(adv);
        let edge = palisade_edge::EdgeSettings {
            trusted_proxies: trusted,
            upstream_allowed_networks: upstream_allowed,
            own_listeners,
            limits: palisade_edge::ListenerLimits {
                max_header_bytes: self.edge.max_header_bytes,
                header_read_timeout: ms(self.edge.header_read_timeout_ms),
                idle_timeout: ms(self.edge.idle_timeout_ms),
                slots: palisade_edge::Slots::new(
                    usize::try_from(max_connections).unwrap_or(usize::MAX),
                    self.edge.max_connections_per_ip as u32,
                ),
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
                failure_audits_per_second: self.admin.failure_audits_per_second,
            },
            acme,
            raw: self,
        })
    }
}

/// A list of CIDRs from the configuration; the first that is not one is the error, by index.
fn cidrs(name: &'static str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse()
                .map_err(|e: palisade_raft::ids::InvalidId| ConfigError::Field {
                    field: name,
                    value: format!("[{i}] {c}"),
                    why: e.why.to_string(),
                })
        })
        .collect()
}

/// `edge.max_connections = 0`: half the open-files limit the node raises itself to (the hard
/// limit) less 1,024 for the store and the cluster, as each connection may hold an upstream one
/// too; at most one connection per 64 KiB of memory; at least 1,024.
fn machine_connections() -> u64 {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1_024);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(u64::MAX);
    (files.saturating_sub(1_024) / 2)
        .min(memory / (64 << 10))
        .max(1_024)
}
