//! Bot protection: a project's policy and triggers, the keys that sign clearance cookies, and
//! the decisions (challenge or block a prefix until a time) the triggers lead to.

use serde::{Deserialize, Serialize};

use super::{Millis, Sealed};
use crate::ids::{Cidr, Name, ProjectId};

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
#[schemars(deny_unknown_fields)]
pub struct Trigger {
    pub enabled: bool,
    /// Events in the window that decide: 1 to 10,000,000.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub threshold: u32,
    /// 4 to 86,400.
    #[schemars(range(min = 4, max = 86_400))]
    pub window_seconds: u32,
    /// How long a decision lasts: 1 to 604,800 (a week).
    #[schemars(range(min = 1, max = 604_800))]
    pub challenge_seconds: u32,
    pub log_only: bool,
    /// IPv6 sources are counted (and decided) per prefix of this length: one subscriber is
    /// usually given a whole /64, so counting per address would let it rotate past the
    /// threshold. 48 to 128. (`request_rate_v6_64` always counts per /64.)
    #[schemars(range(min = 48, max = 128))]
    pub ipv6_prefix: u8,
}

impl Trigger {
    pub const fn new(threshold: u32, window_seconds: u32, challenge_seconds: u32) -> Trigger {
        Trigger {
            enabled: true,
            threshold,
            window_seconds,
            challenge_seconds,
            log_only: false,
            ipv6_prefix: 64,
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
#[schemars(deny_unknown_fields)]
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
#[schemars(deny_unknown_fields)]
pub struct BotPolicy {
    pub mode: BotMode,
    /// Leading zero bits the proof of work must find: 8 to 28.
    #[schemars(range(min = 8, max = 28))]
    pub difficulty_bits: u8,
    /// Seconds a client without JavaScript waits before its clearance: 1 to 120, and at most
    /// half of `answer_within_seconds`.
    #[schemars(range(min = 1, max = 120))]
    pub no_script_wait_seconds: u32,
    /// Seconds a challenge may be answered in: 10 to 300.
    #[schemars(range(min = 10, max = 300))]
    pub answer_within_seconds: u32,
    /// Clearance lifetime after an automatic trigger: 1 to 43,200 minutes.
    #[schemars(range(min = 1, max = 43_200))]
    pub session_minutes: u32,
    /// Clearance lifetime while the challenge is switched on by hand (`always_on`): 1 to
    /// 43,200 minutes.
    #[schemars(range(min = 1, max = 43_200))]
    pub manual_session_minutes: u32,
    /// Bumping the epoch invalidates every clearance cookie of the project at once.
    pub epoch: u32,
    /// Whether a browser without JavaScript may pass by waiting `no_script_wait_seconds`
    /// instead of doing the proof of work. Off, the page asks for JavaScript and clearances
    /// earned by waiting stop passing at once.
    pub allow_no_script: bool,
    /// Paths never challenged (webhooks, health checks): exact, or a prefix ending in `*`,
    /// compared case-sensitively with the request's normalised path ([`super::path`]).
    /// `/robots.txt` is always exempt. A `block` decision outranks every exemption. At most
    /// 200, each in normal form.
    #[schemars(with = "Vec<super::schema::PathPattern>", length(max = 200))]
    pub exempt_paths: Vec<String>,
    /// Paths whose 401/403 answers count as failed logins: exact, or a prefix ending in `*`,
    /// compared with the normalised path ignoring ASCII case and one trailing slash. At most
    /// 200, each in normal form.
    #[schemars(with = "Vec<super::schema::PathPattern>", length(max = 200))]
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
            allow_no_script: true,
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
    /// When the decision was made: a clearance cookie issued before it does not pass it, so a
    /// decision reaches clients that had already solved the challenge. 0 (records written
    /// before this field) lets every valid clearance pass.
    #[serde(default)]
    pub since: Millis,
}
