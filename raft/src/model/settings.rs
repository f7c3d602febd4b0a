//! The cluster settings: one table of every name, its default and the values it takes, and typed
//! accessors. `PUT /v1/settings` checks a change against the table in one loop; the edge and the
//! background jobs read typed values, never string keys.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Cluster-wide settings that every node applies. Absent names take their default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClusterSettings {
    #[serde(default)]
    #[schemars(schema_with = "values_schema")]
    pub values: BTreeMap<String, String>,
}

/// The document's view of `values`: one property per row of [`SETTINGS`], each stating what it
/// takes, and no other names.
fn values_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    let properties: serde_json::Map<String, serde_json::Value> = SETTINGS
        .iter()
        .map(|row| {
            let mut s = match row.takes {
                Takes::OneOf(words) => serde_json::json!({ "type": "string", "enum": words }),
                Takes::AtLeast(min) => serde_json::json!({
                    "type": "string", "pattern": at_least_pattern(min),
                    "description": format!("A whole number, at least {min}."),
                }),
                Takes::Networks(max) => serde_json::json!({
                    "type": "string", "format": "cidr-list",
                    "description": format!("Comma-separated addresses or CIDRs, at most {max}; empty for none."),
                }),
            };
            let about = format!("{} (default {:?}).", row.about, row.default);
            match s["description"].as_str() {
                Some(d) => s["description"] = format!("{about} {d}").into(),
                None => s["description"] = about.into(),
            }
            (row.name.to_string(), s)
        })
        .collect();
    super::schema::from_json(serde_json::json!({
        "type": "object", "properties": properties, "additionalProperties": false,
    }))
}

/// The decimal numbers from `min` (below 10) up, without leading zeros, at most 19 digits (so
/// that every one fits a `u64`).
fn at_least_pattern(min: u64) -> String {
    match min {
        0 => "^(0|[1-9][0-9]{0,18})$".into(),
        1..=9 => format!("^([{min}-9]|[1-9][0-9]{{1,18}})$"),
        _ => unreachable!("no setting takes a least value over 9"),
    }
}

/// Whether `value` is a decimal number as the document states it (see [`at_least_pattern`]).
fn plain_number(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 19
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'))
}

/// What a setting accepts.
#[derive(Debug, Clone, Copy)]
pub enum Takes {
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A whole number at least this.
    AtLeast(u64),
    /// A comma-separated list of IP networks (CIDRs or addresses), at most this many; empty
    /// for none.
    Networks(usize),
}

/// The networks of a [`Takes::Networks`] value; the first that is not one is the error.
pub fn networks(value: &str) -> Result<Vec<crate::ids::Cidr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("{s:?}: {e}")))
        .collect()
}

impl Takes {
    fn check(self, value: &str) -> Result<(), String> {
        match self {
            Takes::OneOf(words) if words.contains(&value) => Ok(()),
            Takes::OneOf(words) => Err(format!(
                "{value:?} must be {}",
                words
                    .iter()
                    .map(|w| format!("{w:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            Takes::AtLeast(_) if !plain_number(value) => Err(format!(
                "{value:?} is not a whole number (digits, no leading zeros)"
            )),
            Takes::AtLeast(min) => match value.parse::<u64>() {
                Ok(n) if n >= min => Ok(()),
                Ok(_) => Err(format!("{value:?} is below the least allowed, {min}")),
                Err(_) => Err(format!("{value:?} is not a whole number")),
            },
            Takes::Networks(max) => match networks(value)? {
                n if n.len() > max => Err(format!("lists {} networks, more than {max}", n.len())),
                _ => Ok(()),
            },
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub takes: Takes,
    pub about: &'static str,
}

pub const MIN_TLS: &str = "min_tls";
pub const BOT_KEY_ROTATION_SECONDS: &str = "bot.key_rotation_seconds";
pub const ACME_MAX_ORDERS: &str = "acme.max_orders";
pub const ACME_ORDERS_WINDOW_MINUTES: &str = "acme.orders_window_minutes";
pub const ACME_MAX_FAILED_VALIDATIONS: &str = "acme.max_failed_validations";
pub const ACME_FAILED_WINDOW_MINUTES: &str = "acme.failed_window_minutes";
pub const ACME_RENEW_BEFORE_HOURS: &str = "acme.renew_before_hours";
pub const ACME_MIN_REISSUE_MINUTES: &str = "acme.min_reissue_minutes";
pub const PROJECT_MAX_DOMAINS: &str = "project.max_domains";
pub const EDGE_UPSTREAM_ALLOWED_NETWORKS: &str = "edge.upstream_allowed_networks";

/// Every cluster setting. The ACME defaults are Let's Encrypt's published limits (300 new orders
/// per account per 3 hours, 5 failed validations per name per hour).
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: MIN_TLS,
        default: "1.2",
        takes: Takes::OneOf(&["1.2", "1.3"]),
        about: "the oldest TLS version the public HTTPS listener accepts",
    },
    Setting {
        name: BOT_KEY_ROTATION_SECONDS,
        default: "86400",
        // Shorter rotations would churn the log for nothing.
        takes: Takes::AtLeast(5),
        about: "seconds between rotations of the key that signs clearance cookies",
    },
    Setting {
        name: ACME_MAX_ORDERS,
        default: "300",
        takes: Takes::AtLeast(0),
        about: "new orders per account in the orders window",
    },
    Setting {
        name: ACME_ORDERS_WINDOW_MINUTES,
        default: "180",
        takes: Takes::AtLeast(0),
        about: "the orders window",
    },
    Setting {
        name: ACME_MAX_FAILED_VALIDATIONS,
        default: "5",
        takes: Takes::AtLeast(0),
        about: "failed validations per name in the failure window",
    },
    Setting {
        name: ACME_FAILED_WINDOW_MINUTES,
        default: "60",
        takes: Takes::AtLeast(0),
        about: "the failure window",
    },
    Setting {
        name: ACME_RENEW_BEFORE_HOURS,
        default: "0",
        takes: Takes::AtLeast(0),
        about: "renew when this little is left (0: when a third of the lifetime is left)",
    },
    Setting {
        name: PROJECT_MAX_DOMAINS,
        default: "1000",
        takes: Takes::AtLeast(1),
        about: "domains one project may hold (a tenant cannot fill the cluster)",
    },
    Setting {
        name: EDGE_UPSTREAM_ALLOWED_NETWORKS,
        default: "",
        takes: Takes::Networks(64),
        about: "networks an upstream may be in although they are loopback, link-local or cloud metadata (comma-separated CIDRs; a node's own listeners are never allowed)",
    },
    Setting {
        name: ACME_MIN_REISSUE_MINUTES,
        default: "1440",
        takes: Takes::AtLeast(0),
        about: "never reorder a name sooner after a success, except on request",
    },
];

/// A value the table does not accept: the setting's name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {why}")]
pub struct SettingError {
    pub name: String,
    pub why: String,
}

/// The row of `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The ACME worker's limits toward its CA, and when to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcmeLimits {
    pub max_orders: u32,
    pub orders_window_ms: u64,
    pub max_failed_validations: u32,
    pub failed_window_ms: u64,
    /// Renew when this little is left; `None`: by the CA's window or a third of the lifetime.
    pub renew_before_ms: Option<u64>,
    pub min_reissue_ms: u64,
}

impl ClusterSettings {
    /// Check every value against the table; the first bad one (or unknown name) is the error.
    pub fn check(&self) -> Result<(), SettingError> {
        for (name, value) in &self.values {
            let Some(row) = setting(name) else {
                let known: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
                return Err(SettingError {
                    name: name.clone(),
                    why: format!("is not a setting (known: {})", known.join(", ")),
                });
            };
            row.takes.check(value).map_err(|why| SettingError {
                name: name.clone(),
                why,
            })?;
        }
        Ok(())
    }

    /// The value of `name`: the stored one when the table accepts it, else the default.
    fn value(&self, name: &str) -> &str {
        let row = setting(name).expect("a setting of the table");
        match self.values.get(name) {
            Some(v) if row.takes.check(v).is_ok() => v,
            _ => row.default,
        }
    }

    /// A number setting: the stored value raised to the least allowed (an older release
    /// checked less), or the default when it is no number.
    fn number(&self, name: &str) -> u64 {
        let row = setting(name).expect("a setting of the table");
        let least = match row.takes {
            Takes::AtLeast(n) => n,
            Takes::OneOf(_) | Takes::Networks(_) => 0,
        };
        match self.values.get(name).and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => n.max(least),
            None => row.default.parse().unwrap_or(0),
        }
    }

    /// `min_tls = "1.3"`: the public listener refuses TLS 1.2.
    pub fn tls13_only(&self) -> bool {
        self.value(MIN_TLS) == "1.3"
    }

    /// `edge.upstream_allowed_networks`: what an upstream may be although the private side.
    pub fn upstream_allowed_networks(&self) -> Vec<crate::ids::Cidr> {
        networks(self.value(EDGE_UPSTREAM_ALLOWED_NETWORKS)).unwrap_or_default()
    }

    pub fn max_domains_per_project(&self) -> u64 {
        self.number(PROJECT_MAX_DOMAINS)
    }

    pub fn bot_key_rotation(&self) -> Duration {
        Duration::from_secs(self.number(BOT_KEY_ROTATION_SECONDS))
    }

    pub fn acme(&self) -> AcmeLimits {
        let count = |name| self.number(name).min(u64::from(u32::MAX)) as u32;
        let minutes = |name| self.number(name).saturating_mul(60_000);
        AcmeLimits {
            max_orders: count(ACME_MAX_ORDERS),
            orders_window_ms: minutes(ACME_ORDERS_WINDOW_MINUTES),
            max_failed_validations: count(ACME_MAX_FAILED_VALIDATIONS),
            failed_window_ms: minutes(ACME_FAILED_WINDOW_MINUTES),
            renew_before_ms: Some(
                self.number(ACME_RENEW_BEFORE_HOURS)
                    .saturating_mul(3_600_000),
            )
            .filter(|&ms| ms > 0),
            min_reissue_ms: minutes(ACME_MIN_REISSUE_MINUTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> ClusterSettings {
        ClusterSettings {
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_default_passes_its_own_check() {
        for s in SETTINGS {
            assert!(s.takes.check(s.default).is_ok(), "{}", s.name);
        }
    }

    #[test]
    fn a_change_is_checked_against_the_table_naming_the_setting() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("min_tls", "1.3", None),
            ("min_tls", "1.1", Some("\"1.1\" must be \"1.2\" or \"1.3\"")),
            ("bot.key_rotation_seconds", "5", None),
            (
                "bot.key_rotation_seconds",
                "4",
                Some("below the least allowed, 5"),
            ),
            ("acme.max_orders", "ten", Some("not a whole number")),
            ("acme.max_orders", "0", None),
            (
                "colour",
                "blue",
                Some("is not a setting (known: min_tls, bot.key"),
            ),
        ];
        for (name, value, wrong) in cases {
            let got = with(&[(name, value)]).check();
            match wrong {
                None => assert_eq!(got, Ok(()), "{name} = {value}"),
                Some(why) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.name, *name);
                    assert!(e.why.contains(why), "{name} = {value}: {}", e.why);
                }
            }
        }
    }

    #[test]
    fn typed_values_fall_back_to_the_defaults() {
        let none = ClusterSettings::default();
        assert!(!none.tls13_only());
        assert_eq!(none.bot_key_rotation(), Duration::from_secs(86_400));
        let acme = none.acme();
        assert_eq!(
            (acme.max_orders, acme.orders_window_ms),
            (300, 180 * 60_000)
        );
        assert_eq!(
            (acme.max_failed_validations, acme.failed_window_ms),
            (5, 3_600_000)
        );
        assert_eq!(acme.renew_before_ms, None);
        assert_eq!(acme.min_reissue_ms, 1440 * 60_000);

        let set = with(&[
            ("min_tls", "1.3"),
            ("bot.key_rotation_seconds", "3"),
            ("acme.renew_before_hours", "2"),
            // Stored by an older version that checked less: no number, so the default stands.
            ("acme.max_orders", "many"),
        ]);
        assert!(set.tls13_only());
        assert_eq!(
            set.bot_key_rotation(),
            Duration::from_secs(5),
            "raised to the least allowed"
        );
        assert_eq!(set.acme().renew_before_ms, Some(7_200_000));
        assert_eq!(set.acme().max_orders, 300);
    }
}
