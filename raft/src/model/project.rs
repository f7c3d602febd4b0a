//! Projects and their domains: security headers, request limits, upstreams, TLS mode.

use serde::{Deserialize, Serialize};

use super::bot::{BotMode, BotPolicy};
use super::Millis;
use crate::ids::{Hostname, ProjectId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct HeaderPolicy {
    /// Seconds, at most two years (63,072,000); with `hsts_preload`, at least one year.
    #[schemars(range(max = 63_072_000))]
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    pub nosniff: bool,
    pub frame_deny: bool,
    pub xss_protection: bool,
    /// Keep a header the upstream set instead of replacing it with the policy's value.
    pub keep_upstream: bool,
    /// Send the upstream an RFC 7239 `Forwarded` header (for, proto, host) made by the edge.
    /// A client's own `Forwarded` is never passed on either way.
    pub forwarded: bool,
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
            forwarded: false,
        }
    }
}

/// Request limits of a project's domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes: 1 to 2^40.
    #[schemars(range(min = 1, max = 1_099_511_627_776u64))]
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
