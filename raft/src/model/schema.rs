//! What the admin API's document says about values it checks beyond their JSON type: patterns,
//! formats and word lists, each a schema the API's types point at with `#[schemars(with = …)]`.
//!
//! Formats that JSON Schema has no word for are Palisade's own and documented here (and in the
//! document): `cidr` (an IPv4 or IPv6 address, or ADDRESS/PREFIX with the prefix in range), `ip`
//! (an IPv4 or IPv6 address), `host` (a DNS name, not an IP address: letters, digits and inner
//! hyphens in labels of 1 to 63, at most 253 in all, optionally one leading `*.`),
//! `host-port` (HOST:PORT, HOST a name or an IP literal, `[v6]` in brackets), `pem-chain` and
//! `pem-key` (PEM text of a certificate chain and its private key), `cidr-list` (comma-separated
//! `cidr`s, possibly empty) and `path-pattern` (a request path in normal form, optionally ending
//! in `*`).

use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;

/// The control characters (Unicode category Cc), which no text field may hold, as the inside of
/// a regular-expression character class.
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// A free-text field of at most `MAX` characters without control characters
/// (`#[schemars(schema_with = "schema::text::<200>")]`).
pub fn text<const MAX: u32>(_: &mut SchemaGenerator) -> Schema {
    from_json(serde_json::json!({
        "type": "string", "maxLength": MAX, "pattern": format!("^[^{CONTROL}]*$"),
    }))
}

/// A required free-text field: at most `MAX` characters, no control characters, not blank.
pub fn required_text<const MAX: u32>(_: &mut SchemaGenerator) -> Schema {
    from_json(serde_json::json!({
        "type": "string", "minLength": 1, "maxLength": MAX,
        "pattern": format!("^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"),
    }))
}

/// Turns a JSON value into a schema (the values here are written by hand and known good).
pub fn from_json(v: serde_json::Value) -> Schema {
    serde_json::from_value(v).expect("a schema written in this module")
}

/// A type that stands for a string schema in the document: `#[schemars(with = "Cidr")]`.
#[macro_export]
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident, $json:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl schemars::JsonSchema for $name {
            fn schema_name() -> String {
                stringify!($name).into()
            }
            fn is_referenceable() -> bool {
                false
            }
            fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
                $crate::model::schema::from_json($json)
            }
        }
    };
}

schema_type!(
    /// A project id: 1 to 63 of `a-z 0-9 - _`.
    ProjectIdText,
    serde_json::json!({ "type": "string", "pattern": "^[a-z0-9_-]{1,63}$" })
);
schema_type!(
    /// A DNS host name, optionally a one-label wildcard.
    HostText,
    serde_json::json!({ "type": "string", "format": "host", "minLength": 1, "maxLength": 253 })
);
schema_type!(
    /// An address or CIDR.
    CidrText,
    serde_json::json!({ "type": "string", "format": "cidr", "minLength": 1, "maxLength": 64 })
);
schema_type!(
    /// An IPv4 or IPv6 address.
    IpText,
    serde_json::json!({ "type": "string", "format": "ip", "minLength": 1, "maxLength": 64 })
);
schema_type!(
    /// HOST:PORT of an upstream.
    HostPortText,
    serde_json::json!({ "type": "string", "format": "host-port", "minLength": 3, "maxLength": 260 })
);
schema_type!(
    /// A record name (certificate, key id): 1 to 255 characters, no `/` or control characters.
    NameText,
    serde_json::json!({ "type": "string", "pattern": format!("^[^/{CONTROL}]{{1,255}}$") })
);
schema_type!(
    /// `linearizable` (default) or `local`.
    Consistency,
    serde_json::json!({ "type": "string", "enum": ["linearizable", "local"],
        "description": "`linearizable` (default): through the leader; `local`: this node's applied state as it is." })
);
schema_type!(
    /// An IP list.
    ListName,
    serde_json::json!({ "type": "string", "enum": ["allow", "block"] })
);
schema_type!(
    /// A page size.
    Limit,
    serde_json::json!({ "type": "integer", "minimum": 1, "maximum": 10000,
        "description": "Items per page, 1 to 10,000 (default 100)." })
);
schema_type!(
    /// A request path pattern, as `exempt_paths` and `login_paths` hold them.
    PathPattern,
    serde_json::json!({ "type": "string", "format": "path-pattern", "minLength": 1, "maxLength": 512 })
);
