//! `palisade audit`: query or export the audit log.

use anyhow::Result;
use serde_json::Value;

use super::client::{call, call_json, q, ClientArgs, Payload};
use super::output::show;

const AUDIT_COLUMNS: &[(&str, &str)] = &[
    ("SEQ", "seq"),
    ("AT", "at"),
    ("ACTOR", "actor"),
    ("SOURCE", "source_ip"),
    ("ACTION", "action"),
    ("TARGET", "target"),
    ("OUTCOME", "outcome"),
];

#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    /// From this time on (Unix ms).
    #[arg(long)]
    since: Option<u64>,
    /// Before this time (Unix ms).
    #[arg(long)]
    until: Option<u64>,
    /// Actor prefix, such as `key:ab12` or `node:`.
    #[arg(long)]
    actor: Option<String>,
    /// An action, or a prefix ending in `.` (`ip_rule.`).
    #[arg(long)]
    action: Option<String>,
    /// Target prefix, such as `project/shop`.
    #[arg(long)]
    target: Option<String>,
    /// `operator` (what keys, operators and the cluster did) or `outside` (what
    /// unauthenticated traffic caused); both when absent.
    #[arg(long)]
    class: Option<String>,
    /// Print the matching entries as `json` or `csv` (every page), instead of a table.
    #[arg(long)]
    export: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn audit(a: AuditArgs) -> Result<()> {
    let mut filter = String::new();
    for (k, v) in [
        ("since", a.since.map(|t| t.to_string())),
        ("until", a.until.map(|t| t.to_string())),
        ("actor", a.actor),
        ("action", a.action),
        ("target", a.target),
        ("class", a.class),
    ] {
        if let Some(v) = v {
            filter.push_str(&format!("&{k}={}", q(&v)));
        }
    }
    match a.export.as_deref() {
        None => {
            let v = call_json(
                "GET",
                &a.client,
                &format!("/v1/audit?limit={}{filter}", a.limit),
                Payload::None,
            )?;
            show(&v, false, AUDIT_COLUMNS);
        }
        Some(format @ ("json" | "csv")) => {
            // Every page, as one JSON array or one CSV document.
            let mut after: Option<String> = None;
            let mut all = Vec::new();
            let mut first = true;
            loop {
                let cursor = after
                    .as_ref()
                    .map(|c| format!("&after={c}"))
                    .unwrap_or_default();
                let path = format!("/v1/audit?limit=10000{filter}{cursor}");
                let v = call_json("GET", &a.client, &path, Payload::None)?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                if format == "csv" {
                    let text = call(
                        "GET",
                        &a.client,
                        &format!("{path}&format=csv"),
                        Payload::None,
                    )?;
                    let body = if first {
                        &text[..]
                    } else {
                        text.split_once('\n').map(|x| x.1).unwrap_or("")
                    };
                    print!("{body}");
                    first = false;
                } else {
                    all.extend(items);
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            if format == "json" {
                println!("{:#}", Value::Array(all));
            }
        }
        Some(other) => anyhow::bail!("--export takes json or csv, not {other:?}"),
    }
    Ok(())
}
