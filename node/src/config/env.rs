//! Environment overrides (`PALISADE_*`) of the configuration file's values.

use super::validate::field;
use super::{Config, ConfigError};

impl Config {
    /// Environment overrides, applied after the file: `PALISADE_RAFT_<FIELD>` for each `[raft]`
    /// field (for example `PALISADE_RAFT_SNAPSHOT_EVERY=500`), the edge's header-read, idle and
    /// upstream-response timeouts, connection caps (`PALISADE_EDGE_MAX_CONNECTIONS`,
    /// `PALISADE_EDGE_MAX_CONNECTIONS_PER_IP`) and rule sweep interval, `PALISADE_EDGE_TRUSTED_PROXIES`
    /// and `PALISADE_EDGE_UPSTREAM_ALLOWED_NETWORKS` (comma-separated), `PALISADE_EDGE_PROXY_PROTOCOL`, `PALISADE_ADMIN_ALLOWED_IPS`
    /// (comma-separated), `PALISADE_ADMIN_LAST_USED_FLUSH_MS`, `PALISADE_ADMIN_AUDIT_MAX_ENTRIES`,
    /// `PALISADE_ADMIN_FAILURE_AUDITS_PER_SECOND`, `PALISADE_CLUSTER_NODE_CERT_VALIDITY_SECONDS`,
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
            "PALISADE_CLUSTER_NODE_CERT_VALIDITY_SECONDS",
            &mut self.cluster.node_cert_validity_seconds,
        )?;
        num(
            "PALISADE_EDGE_IDLE_TIMEOUT_MS",
            &mut self.edge.idle_timeout_ms,
        )?;
        num(
            "PALISADE_EDGE_MAX_CONNECTIONS",
            &mut self.edge.max_connections,
        )?;
        num(
            "PALISADE_EDGE_MAX_CONNECTIONS_PER_IP",
            &mut self.edge.max_connections_per_ip,
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
        let mut per_second = u64::from(self.admin.failure_audits_per_second);
        num("PALISADE_ADMIN_FAILURE_AUDITS_PER_SECOND", &mut per_second)?;
        self.admin.failure_audits_per_second = per_second.min(u64::from(u32::MAX)) as u32;
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
            self.admin.allowed_ips = list(&v);
        }
        for (var, slot) in [
            (
                "PALISADE_EDGE_TRUSTED_PROXIES",
                &mut self.edge.trusted_proxies,
            ),
            (
                "PALISADE_EDGE_UPSTREAM_ALLOWED_NETWORKS",
                &mut self.edge.upstream_allowed_networks,
            ),
        ] {
            if let Ok(v) = std::env::var(var) {
                *slot = list(&v);
            }
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
}

/// A comma-separated list, blanks dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
