//! The audit log: query by time, actor, action and target; JSON pages or CSV.

use std::sync::Arc;

use palisade_raft::model::{schema, AuditClass, AuditEntry, Record};
use poem::http::Method;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{invalid, Caller, QueryParams};
use crate::openapi::{op, Op, VIEWER};
use crate::read::{page, read_barrier, ListOpts};
use crate::state::AdminState;
use crate::write::ApiResult;
use palisade_raft::model::Role;

pub(crate) fn ops() -> Vec<Op> {
    vec![op(
        Method::GET,
        "/v1/audit",
        VIEWER,
        "Query or export (JSON, CSV) the audit log",
        list_audit,
    )
    .query::<AuditQuery>()]
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct AuditQuery {
    #[schemars(with = "Option<schema::Consistency>")]
    consistency: Option<String>,
    /// The `next` cursor of the previous page (20 digits).
    #[schemars(regex(pattern = r"^[0-9]{20}$"))]
    after: Option<String>,
    #[schemars(with = "Option<schema::Limit>")]
    limit: Option<usize>,
    /// Unix ms, inclusive.
    since: Option<u64>,
    /// Unix ms, exclusive.
    until: Option<u64>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// `json` (default) or `csv`.
    #[schemars(with = "Option<AuditFormat>")]
    format: Option<String>,
    /// `operator` (what keys, operators and the cluster did), `outside` (what unauthenticated
    /// traffic caused: failed keys, refused joins, bot decisions), or both (default).
    #[schemars(with = "Option<AuditClassName>")]
    class: Option<String>,
}

palisade_raft::schema_type!(
    AuditFormat,
    serde_json::json!({ "type": "string", "enum": ["json", "csv"] })
);
palisade_raft::schema_type!(
    AuditClassName,
    serde_json::json!({ "type": "string", "enum": ["operator", "outside"] })
);

const AUDIT_COLUMNS: [&str; 8] = [
    "seq",
    "at",
    "actor",
    "source_ip",
    "action",
    "target",
    "outcome",
    "class",
];

/// Query the audit log: by time (`since`/`until`, Unix ms), `actor` and `target` (prefix match:
/// `key:ab12` finds every entry of that key), and `action` (exact, or a prefix ending in `.`:
/// `ip_rule.`). `format=csv` answers CSV with a header row.
#[handler]
async fn list_audit(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    q: QueryParams<AuditQuery>,
) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    let q = q.0;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(invalid(
                "format",
                format!("must be json or csv, not {other:?}"),
            ))
        }
    };
    if let (Some(a), Some(b)) = (q.since, q.until) {
        if b <= a {
            return Err(invalid("until", format!("{b} is not after since = {a}")));
        }
    }
    if let Some(after) = &q.after {
        if after.len() != 20 || !after.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "after",
                format!("{after:?} is not a cursor from a previous page"),
            ));
        }
    }
    let classes: &[AuditClass] = match q.class.as_deref() {
        None => &[AuditClass::Operator, AuditClass::Outside],
        Some("operator") => &[AuditClass::Operator],
        Some("outside") => &[AuditClass::Outside],
        Some(other) => {
            return Err(invalid(
                "class",
                format!("must be operator or outside, not {other:?}"),
            ))
        }
    };
    read_barrier(&state, q.consistency.as_deref()).await?;
    let opts = ListOpts {
        consistency: None,
        after: q.after.clone(),
        limit: q.limit,
    };
    let limit = opts.limit()?;
    let keep = |r: &Record| {
        let Record::Audit(a) = r else { return false };
        q.since.is_none_or(|t| a.at >= t)
            && q.until.is_none_or(|t| a.at < t)
            && q.actor.as_deref().is_none_or(|x| a.actor.starts_with(x))
            && q.target.as_deref().is_none_or(|x| a.target.starts_with(x))
            && q.action
                .as_deref()
                .is_none_or(|x| a.action == x || (x.ends_with('.') && a.action.starts_with(x)))
    };
    // Each class is its own key range in sequence order; the page is the first `limit` of
    // their merge, and the cursor (a sequence number) means the same in both.
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut more = false;
    for class in classes {
        let (items, next) = page(&state, class.prefix(), &opts, keep)?;
        more |= next.is_some();
        entries.extend(items.into_iter().filter_map(|r| match r {
            Record::Audit(a) => Some(a),
            _ => None,
        }));
    }
    entries.sort_by_key(|a| a.seq);
    more |= entries.len() > limit;
    entries.truncate(limit);
    let next = match more {
        true => entries.last().map(|a| format!("{:020}", a.seq)),
        false => None,
    };
    if !csv {
        return Ok(Json(json!({ "items": entries, "next": next })).into_response());
    }
    let mut out = AUDIT_COLUMNS.join(",");
    out.push('\n');
    for a in &entries {
        let row = [
            a.seq.to_string(),
            a.at.to_string(),
            a.actor.clone(),
            a.source_ip.clone(),
            a.action.clone(),
            a.target.clone(),
            a.outcome.clone(),
            a.class.as_str().to_string(),
        ];
        let row: Vec<String> = row.iter().map(|f| crate::http::csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    let mut resp = poem::Response::builder().content_type("text/csv; charset=utf-8");
    if let Some(next) = next {
        resp = resp.header("x-next-cursor", next);
    }
    Ok(resp.body(out))
}
