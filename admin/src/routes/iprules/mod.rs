//! IP allow and block lists: one project's (`/v1/projects/{id}/ip-rules`) or the cluster-wide
//! block list (`/v1/cluster/ip-rules`), with the same verbs on both:
//!
//! - `GET` lists (`?list=allow|block&after=CURSOR&limit=N`), `POST` adds one entry,
//!   `DELETE ?list=…&cidr=…` removes one;
//! - `POST …/import?list=…` takes newline-delimited addresses/CIDRs (`text/plain`) or CSV
//!   (`text/csv`: `cidr,note,expires_at`, header optional) of up to [`MAX_IMPORT_LINES`] lines,
//!   checks every line, and writes nothing unless all are good (or `partial=true`): bad lines
//!   come back by number;
//! - `GET …/export?format=csv|json` writes a list out in a form `import` reads back;
//! - `GET /v1/projects/{id}/ip-rules/check?ip=…` answers what this node's edge would do with
//!   that address for that project, and which entry decides it.
//!
//! Reading needs `viewer`; changing a project's lists needs `operator` (and a scoped key only
//! touches its own project); the cluster-wide list needs an unscoped `admin`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::MAX_ENTRY_BYTES;
use palisade_raft::command::{Command, Request};
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::{ip_rule_prefix, IpRule, Millis, Record, RecordKey, Role, RuleList};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json};
use poem::{handler, FromRequest, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Principal;
use crate::authz::{authorize, Within};
use crate::http::{csv_field, error, expiry, invalid, Caller, JsonBody, QueryParams};
use crate::openapi::{op, Op};
use crate::read::read_barrier;
use crate::state::AdminState;
use crate::write::{audit, commit, written};

mod doc;
mod import;
pub use import::import_line;

use import::import_rules;

/// Lines one import may hold.
pub const MAX_IMPORT_LINES: usize = 1_000_000;
/// Entries per log entry: about 300 KB of JSON, well under [`MAX_ENTRY_BYTES`].
const IMPORT_BATCH: usize = 2_000;
/// Import batches in flight at once; Raft batches them into fewer disk syncs.
const IMPORT_IN_FLIGHT: usize = 4;
const MAX_NOTE: usize = 256;

const _: () = assert!(IMPORT_BATCH * 400 < MAX_ENTRY_BYTES);

pub(crate) fn ops() -> Vec<Op> {
    let mut ops = scope_ops::<doc::Project>(
        [
            "/v1/projects/:id/ip-rules",
            "/v1/projects/:id/ip-rules/import",
            "/v1/projects/:id/ip-rules/export",
        ],
        Role::Operator,
    );
    ops.extend(scope_ops::<doc::Cluster>(
        [
            "/v1/cluster/ip-rules",
            "/v1/cluster/ip-rules/import",
            "/v1/cluster/ip-rules/export",
        ],
        Role::Admin,
    ));
    ops.push(
        op(
            Method::GET,
            "/v1/projects/:id/ip-rules/check",
            Some(Role::Viewer),
            "Would this address pass for this project, and by which entry?",
            check,
        )
        .query::<doc::CheckQuery>(),
    );
    ops
}

/// The same verbs on a project's lists and on the cluster-wide one (`write` is the role that
/// changes them); `D` says what each takes in that scope.
fn scope_ops<D: doc::ScopeDoc>([list, import, export]: [&'static str; 3], write: Role) -> Vec<Op> {
    let read = Some(Role::Viewer);
    vec![
        op(
            Method::GET,
            list,
            read,
            "List entries (paginated)",
            list_rules,
        )
        .query::<D::List>(),
        op(
            Method::POST,
            list,
            Some(write),
            "Add an address or CIDR",
            add_rule,
        )
        .json::<D::Rule>(),
        op(
            Method::DELETE,
            list,
            Some(write),
            "Remove an entry",
            remove_rule,
        )
        .query::<D::Remove>(),
        op(
            Method::POST,
            import,
            Some(write),
            "Bulk import of up to 1,000,000 lines of text or CSV",
            import_rules,
        )
        .query::<D::Import>()
        .raw(&["text/plain", "text/csv"]),
        op(
            Method::GET,
            export,
            read,
            "Export as CSV or JSON",
            export_rules,
        )
        .query::<D::Export>(),
    ]
}

/// Whose lists a request is about: `/v1/projects/{id}/…` or the cluster's.
struct Scope(Option<ProjectId>);

impl<'a> FromRequest<'a> for Scope {
    async fn from_request(req: &'a poem::Request, _: &mut poem::RequestBody) -> poem::Result<Self> {
        match req.raw_path_param("id") {
            None => Ok(Scope(None)),
            Some(id) => id
                .parse()
                .map(|p| Scope(Some(p)))
                .map_err(|e| invalid("project", e)),
        }
    }
}

impl Scope {
    fn label(&self) -> String {
        match &self.0 {
            Some(p) => format!("project/{p}"),
            None => "cluster".into(),
        }
    }

    /// The caller's key, checked for the role and for the scope. Changing the cluster-wide list
    /// takes an unscoped `admin`.
    async fn authorize(
        &self,
        state: &AdminState,
        caller: &Caller,
        needs: Role,
    ) -> poem::Result<Principal> {
        match &self.0 {
            Some(p) => authorize(state, caller, needs, Within::Project(p)).await,
            None if needs > Role::Viewer => {
                authorize(state, caller, Role::Admin, Within::Cluster).await
            }
            None => authorize(state, caller, needs, Within::Cluster).await,
        }
    }

    fn ensure_exists(&self, state: &AdminState) -> poem::Result<()> {
        let Some(id) = &self.0 else { return Ok(()) };
        match state
            .cluster
            .reader
            .get(&RecordKey::Project { id: id.clone() })
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no project {id}"))),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    }

    /// The list a request names; the cluster-wide scope has only a block list.
    fn list(&self, given: Option<&str>) -> poem::Result<RuleList> {
        let list = match given {
            Some("allow") => RuleList::Allow,
            Some("block") => RuleList::Block,
            None if self.0.is_none() => RuleList::Block,
            None => return Err(invalid("list", "is required: allow or block")),
            Some(other) => {
                return Err(invalid(
                    "list",
                    format!("{other:?} is neither allow nor block"),
                ))
            }
        };
        if self.0.is_none() && list == RuleList::Allow {
            return Err(invalid(
                "list",
                "the cluster-wide list is a block list only",
            ));
        }
        Ok(list)
    }
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct RuleQuery {
    list: Option<String>,
    cidr: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
    format: Option<String>,
    partial: Option<bool>,
    /// With `DELETE` and no `cidr`: remove every entry of the list.
    all: Option<bool>,
    ip: Option<String>,
}

impl RuleQuery {
    async fn barrier(&self, state: &AdminState) -> poem::Result<()> {
        read_barrier(state, self.consistency.as_deref()).await
    }
}

fn parse_cidr(field: &str, s: &str) -> poem::Result<Cidr> {
    if s.trim().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    s.parse().map_err(|e| invalid(field, e))
}

fn check_note(field: &str, note: &str) -> poem::Result<()> {
    if note.chars().count() > MAX_NOTE {
        return Err(invalid(
            field,
            format!("is longer than {MAX_NOTE} characters"),
        ));
    }
    if note.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(())
}

#[handler]
async fn list_rules(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    QueryParams(q): QueryParams<RuleQuery>,
) -> poem::Result<poem::Response> {
    scope.authorize(&state, &caller, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(invalid("limit", format!("{limit} is outside 1..=10000")));
    }
    let base = ip_rule_prefix(scope.0.as_ref());
    let prefix = match q.list.as_deref() {
        None => base.clone(),
        given => format!("{base}{}/", scope.list(given)?.as_str()),
    };
    q.barrier(&state).await?;
    scope.ensure_exists(&state)?;
    let after = q.after.as_ref().map(|a| format!("{base}{a}"));
    let mut items = state
        .cluster
        .reader
        .scan(&prefix, after.as_deref(), limit + 1)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items
            .last()
            .map(|r| r.key().encode()[base.len()..].to_string())
    });
    let items: Vec<IpRule> = items
        .into_iter()
        .filter_map(|r| match r {
            Record::IpRule(r) => Some(r),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next.flatten() })).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewRule {
    list: Option<String>,
    cidr: String,
    #[serde(default)]
    note: String,
    /// Unix ms.
    expires_at: Option<Millis>,
    ttl_seconds: Option<u64>,
}

#[handler]
async fn add_rule(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    JsonBody(body): JsonBody<NewRule>,
) -> poem::Result<poem::Response> {
    let p = scope.authorize(&state, &caller, Role::Operator).await?;
    let list = scope.list(body.list.as_deref())?;
    let cidr = parse_cidr("cidr", &body.cidr)?;
    check_note("note", &body.note)?;
    let now = now_ms();
    let expires_at = expiry(body.expires_at, body.ttl_seconds, now)?;
    scope.ensure_exists(&state)?;
    let rule = IpRule {
        project: scope.0.clone(),
        list,
        cidr,
        note: body.note,
        created_by: format!("key:{}", p.key_id),
        created_at: now,
        expires_at,
    };
    let target = format!("{}/ip-rules/{}/{cidr}", scope.label(), list.as_str());
    let entry = audit(&p, &caller, "ip_rule.add", &target);
    let (index, duplicate) = commit(&state, &caller, Record::IpRule(rule.clone()), entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "rule": rule, "index": index, "duplicate": duplicate })),
    )
        .into_response())
}

#[handler]
async fn remove_rule(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    QueryParams(q): QueryParams<RuleQuery>,
) -> poem::Result<poem::Response> {
    let p = scope.authorize(&state, &caller, Role::Operator).await?;
    scope.ensure_exists(&state)?;
    let list = scope.list(q.list.as_deref())?;
    match (q.all, q.cidr.as_deref()) {
        (Some(true), None) => return clear(&state, &caller, &p, &scope, list).await,
        (Some(true), Some(_)) => return Err(invalid("all", "give cidr or all=true, not both")),
        _ => {}
    }
    let cidr = parse_cidr("cidr", q.cidr.as_deref().unwrap_or(""))?;
    let key = RecordKey::IpRule {
        project: scope.0.clone(),
        list,
        cidr,
    };
    match state.cluster.reader.get(&key) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("{} has no {} entry {cidr}", scope.label(), list.as_str()),
            ))
        }
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
    let target = format!("{}/ip-rules/{}/{cidr}", scope.label(), list.as_str());
    let entry = audit(&p, &caller, "ip_rule.remove", &target);
    let (index, duplicate) = commit(&state, &caller, Command::Delete { key }, entry).await?;
    Ok(Json(json!({ "index": index, "duplicate": duplicate })).into_response())
}

/// Remove every entry of one list, in batches of [`IMPORT_BATCH`] keys per log entry, each with
/// its audit entry. Entries added meanwhile may survive: the list is read once, at the start.
async fn clear(
    state: &AdminState,
    caller: &Caller,
    p: &Principal,
    scope: &Scope,
    list: RuleList,
) -> poem::Result<poem::Response> {
    let base = format!("{}{}/", ip_rule_prefix(scope.0.as_ref()), list.as_str());
    let mut keys = Vec::new();
    state
        .cluster
        .reader
        .for_each(&base, |r| keys.push(r.key()))
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let total = keys.len();
    let mut removed = 0usize;
    let mut index = 0u64;
    for batch in keys.chunks(IMPORT_BATCH) {
        let target = format!(
            "{}/ip-rules/{} (all: entries {}-{} of {total})",
            scope.label(),
            list.as_str(),
            removed + 1,
            removed + batch.len()
        );
        let req = Request::new(Command::DeleteMany {
            keys: batch.to_vec(),
        })
        .with_audit(audit(p, caller, "ip_rule.clear", &target));
        let done = format!("{removed} of {total} removed before (repeat to finish)");
        index = written(state.cluster.write(req).await, Some(&done))?.0;
        removed += batch.len();
    }
    Ok(Json(json!({ "removed": removed, "index": index })).into_response())
}

#[handler]
async fn export_rules(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    QueryParams(q): QueryParams<RuleQuery>,
) -> poem::Result<poem::Response> {
    scope.authorize(&state, &caller, Role::Viewer).await?;
    let list = scope.list(q.list.as_deref())?;
    let json = match q.format.as_deref() {
        None | Some("csv") => false,
        Some("json") => true,
        Some(other) => {
            return Err(invalid(
                "format",
                format!("{other:?} is neither csv nor json"),
            ))
        }
    };
    q.barrier(&state).await?;
    scope.ensure_exists(&state)?;
    let prefix = format!("{}{}/", ip_rule_prefix(scope.0.as_ref()), list.as_str());
    let mut out = String::new();
    let mut rules = Vec::new();
    if !json {
        out.push_str("cidr,note,expires_at,created_by,created_at\n");
    }
    state
        .cluster
        .reader
        .for_each(&prefix, |r| {
            if let Record::IpRule(r) = r {
                if json {
                    rules.push(r);
                } else {
                    out.push_str(&format!(
                        "{},{},{},{},{}\n",
                        r.cidr,
                        csv_field(&r.note),
                        r.expires_at.map(|e| e.to_string()).unwrap_or_default(),
                        csv_field(&r.created_by),
                        r.created_at
                    ));
                }
            }
        })
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    if json {
        return Ok(Json(json!({ "items": rules })).into_response());
    }
    Ok(poem::Response::builder()
        .content_type("text/csv; charset=utf-8")
        .body(out))
}

#[handler]
async fn check(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    QueryParams(q): QueryParams<RuleQuery>,
) -> poem::Result<poem::Response> {
    let p = scope.authorize(&state, &caller, Role::Viewer).await?;
    let raw = q.ip.as_deref().unwrap_or("");
    let ip: IpAddr = raw
        .trim()
        .parse()
        .map_err(|_| invalid("ip", format!("{raw:?} is not an IPv4 or IPv6 address")))?;
    let ip = ip.to_canonical();
    // Linearizable by default: the answer reflects every write acknowledged before the call.
    if q.consistency.as_deref() != Some("local") {
        q.barrier(&state).await?;
        let index = state.cluster.reader.applied_index();
        let mut seen = state.edge.seen();
        if tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|&i| i >= index))
            .await
            .is_err()
        {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the edge view has not caught up with the store; retry",
            ));
        }
    }
    scope.ensure_exists(&state)?;
    let d = state.edge.verdict(scope.0.as_ref(), ip, now_ms());
    let entry = match (d.reason.list(), d.rule) {
        (Some((list, of_project)), Some(cidr)) => state
            .cluster
            .reader
            .get(&RecordKey::IpRule {
                project: scope.0.clone().filter(|_| of_project),
                list,
                cidr,
            })
            .ok()
            .flatten()
            .and_then(|r| match r {
                Record::IpRule(r) => Some(r),
                _ => None,
            }),
        _ => None,
    };
    // A key scoped to a project sees that a cluster-wide entry decided, never that entry's
    // note, creator or expiry (another tenant's business, or the operators').
    let rule = match entry {
        Some(r) if r.project.is_none() && p.project.is_some() => {
            Some(json!({ "list": r.list, "cidr": r.cidr }))
        }
        other => other.map(|r| json!(r)),
    };
    Ok(Json(json!({
        "ip": ip.to_string(), "project": scope.0, "allowed": d.allowed, "reason": d.reason,
        "rule": rule,
    }))
    .into_response())
}
