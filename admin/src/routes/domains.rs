//! Domains: a host, its project, upstreams, TLS mode, redirect and bot override.

use std::sync::Arc;

use palisade_raft::command::Command;
use palisade_raft::ids::{Hostname, ProjectId};
use palisade_raft::model::settings::EDGE_UPSTREAM_ALLOWED_NETWORKS;
use palisade_raft::model::{
    prefix, schema, BotMode, ClusterSettings, Domain, Record, RecordKey, Role, TlsMode,
};
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{error, invalid, path_param, Caller, JsonBody, QueryParams};
use crate::openapi::{op, Op, OPERATOR, VIEWER};
use crate::read::{domain, get_record, page, project, read_barrier, ListOpts, ReadOpts};
use crate::state::AdminState;
use crate::write::{apply, audit, internal, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/v1/domains",
            VIEWER,
            "List domains",
            list_domains,
        )
        .query::<ListOpts>(),
        op(
            Method::GET,
            "/v1/domains/:host",
            VIEWER,
            "Show a domain",
            get_domain,
        )
        .query::<ReadOpts>(),
        op(
            Method::PUT,
            "/v1/domains/:host",
            OPERATOR,
            "Create or replace a domain",
            put_domain,
        )
        .json::<DomainBody>()
        .query::<PutOpts>(),
        op(
            Method::DELETE,
            "/v1/domains/:host",
            OPERATOR,
            "Delete a domain",
            delete_domain,
        ),
    ]
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    #[schemars(with = "schema::ProjectIdText")]
    project: String,
    /// 1 to 64 HOST:PORT.
    #[schemars(with = "Vec<schema::HostPortText>", length(min = 1, max = 64))]
    upstreams: Vec<String>,
    #[serde(default)]
    tls: Option<TlsMode>,
    #[serde(default)]
    redirect_https: Option<bool>,
    #[serde(default)]
    bot_override: Option<BotMode>,
}

/// `PUT /v1/domains/{host}?claim=true`: an unscoped admin key takes the name although another
/// project's wildcard covers it (or it is a wildcard over another project's names).
#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct PutOpts {
    claim: Option<bool>,
}

const MAX_UPSTREAMS: usize = 64;

/// The other project's domain whose names overlap `host`'s: the wildcard one label up that
/// covers it, or, for a wildcard, an exact name it would cover. (A wildcard covers one label:
/// `*.b.example` covers `login.b.example`, not `b.example` nor `a.login.b.example`.)
fn overlapping(
    state: &AdminState,
    host: &Hostname,
    project: &ProjectId,
) -> poem::Result<Option<Domain>> {
    let theirs = |d: &Domain| &d.project != project && &d.host != host;
    if let Some(suffix) = host.as_str().strip_prefix("*.") {
        let mut found = None;
        state
            .cluster
            .reader
            .for_each(prefix::DOMAIN, |r| {
                if let Record::Domain(d) = r {
                    let covered = d
                        .host
                        .as_str()
                        .split_once('.')
                        .is_some_and(|(label, parent)| label != "*" && parent == suffix);
                    if found.is_none() && covered && theirs(&d) {
                        found = Some(d);
                    }
                }
            })
            .map_err(internal)?;
        return Ok(found);
    }
    let Some((_, parent)) = host.as_str().split_once('.') else {
        return Ok(None);
    };
    let Ok(wildcard) = format!("*.{parent}").parse::<Hostname>() else {
        return Ok(None);
    };
    Ok(
        match get_record(state, &RecordKey::Domain { host: wildcard })? {
            Some(Record::Domain(d)) if theirs(&d) => Some(d),
            _ => None,
        },
    )
}

/// An upstream the edge may connect to: `HOST:PORT`, and when HOST is an address, not the
/// node's private side (a name is checked by the edge on each address it resolves to).
fn check_upstream_allowed(state: &AdminState, field: &str, u: &str) -> poem::Result<()> {
    check_upstream(field, u)?;
    let Ok(addr) = u.parse::<std::net::SocketAddr>() else {
        return Ok(());
    };
    match state.edge.upstream_refusal(addr) {
        None => Ok(()),
        Some(why) if why.may_be_allowed() => Err(invalid(
            field,
            format!("{u:?} is {why}; the edge proxies public traffic to no such address unless the cluster setting {EDGE_UPSTREAM_ALLOWED_NETWORKS} lists it"),
        )),
        Some(why) => Err(invalid(
            field,
            format!("{u:?} is {why}; the edge never proxies to itself"),
        )),
    }
}

pub(crate) fn check_upstream(field: &str, u: &str) -> poem::Result<()> {
    let port_ok = u
        .rsplit_once(':')
        .and_then(|(h, p)| (!h.is_empty()).then_some(p))
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| p > 0);
    if !port_ok
        || u.len() > 300
        || u.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(invalid(field, format!("{u:?} must be HOST:PORT")));
    }
    Ok(())
}

#[handler]
async fn put_domain(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(host): Path<String>,
    opts: QueryParams<PutOpts>,
    body: JsonBody<DomainBody>,
) -> ApiResult {
    let host: Hostname = path_param("host", &host)?;
    let body = body.0;
    let project_id: ProjectId = body
        .project
        .parse()
        .map_err(|e| invalid("project", format!("{:?}: {e}", body.project)))?;
    let p = authorize(
        &state,
        &caller,
        Role::Operator,
        Within::Project(&project_id),
    )
    .await?;
    // Moving a domain between projects needs the right to both.
    if let Some(Record::Domain(existing)) =
        get_record(&state, &RecordKey::Domain { host: host.clone() })?
    {
        if let Some(mine) = &p.project {
            if &existing.project != mine {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!("domain {host} belongs to project {}", existing.project),
                ));
            }
        }
    }
    project(&state, &project_id)?;
    // A tenant cannot take names another project's wildcard serves, nor a wildcard over
    // another project's names: the exact name would win the routing, and ACME would issue it.
    let overlap = overlapping(&state, &host, &project_id)?;
    if let Some(other) = &overlap {
        let claims = opts.0.claim == Some(true);
        if !(claims && p.project.is_none() && p.role >= Role::Admin) {
            let whose = match &p.project {
                None => format!("project {}'s {}", other.project, other.host),
                Some(_) => "a name of another project".to_string(),
            };
            let how = match &p.project {
                None => "; an admin key may take it with ?claim=true",
                Some(_) => "",
            };
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("{host} overlaps {whose}{how}"),
            ));
        }
    }
    check_quota(&state, &project_id, &host)?;
    if body.upstreams.is_empty() {
        return Err(invalid("upstreams", "must name at least one HOST:PORT"));
    }
    if body.upstreams.len() > MAX_UPSTREAMS {
        return Err(invalid(
            "upstreams",
            format!("holds more than {MAX_UPSTREAMS} entries"),
        ));
    }
    for (i, u) in body.upstreams.iter().enumerate() {
        check_upstream_allowed(&state, &format!("upstreams[{i}]"), u)?;
    }
    let domain = Domain {
        host: host.clone(),
        project: project_id,
        upstreams: body.upstreams,
        tls: body.tls.unwrap_or_default(),
        redirect_https: body.redirect_https.unwrap_or(true),
        bot_override: body.bot_override,
    };
    let entry = match &overlap {
        None => audit(&p, &caller, "domain.put", &format!("domain/{host}")),
        Some(other) => audit(
            &p,
            &caller,
            "domain.claim",
            &format!(
                "domain/{host} (over project {}'s {})",
                other.project, other.host
            ),
        ),
    };
    apply(
        &state,
        &caller,
        Record::Domain(domain.clone()),
        entry,
        true,
        json!({ "domain": domain }),
    )
    .await
}

#[handler]
async fn delete_domain(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(host): Path<String>,
) -> ApiResult {
    let host: Hostname = path_param("host", &host)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Listing).await?;
    let d = domain(&state, &host)?;
    if p.project.as_ref().is_some_and(|mine| mine != &d.project) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("domain {host} belongs to project {}", d.project),
        ));
    }
    let entry = audit(&p, &caller, "domain.delete", &format!("domain/{host}"));
    let command = Command::Delete {
        key: RecordKey::Domain { host },
    };
    apply(&state, &caller, command, entry, false, json!({})).await
}

#[handler]
async fn get_domain(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(host): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let host: Hostname = path_param("host", &host)?;
    let p = authorize(&state, &caller, Role::Viewer, Within::Listing).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let d = domain(&state, &host)?;
    if p.project.as_ref().is_some_and(|mine| mine != &d.project) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("domain {host} belongs to project {}", d.project),
        ));
    }
    Ok(Json(d).into_response())
}

#[handler]
async fn list_domains(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    opts: QueryParams<ListOpts>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Viewer, Within::Listing).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let (items, next) = page(&state, prefix::DOMAIN, &opts.0, |r| match (r, &p.project) {
        (Record::Domain(d), Some(mine)) => &d.project == mine,
        _ => true,
    })?;
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

/// A project holds at most `project.max_domains` domains (a new one, or one moved in, counts).
fn check_quota(state: &AdminState, project: &ProjectId, host: &Hostname) -> poem::Result<()> {
    let max = match get_record(state, &RecordKey::Settings)? {
        Some(Record::Settings(s)) => s.max_domains_per_project(),
        _ => ClusterSettings::default().max_domains_per_project(),
    };
    let mut held = 0u64;
    state
        .cluster
        .reader
        .for_each(prefix::DOMAIN, |r| {
            if let Record::Domain(d) = r {
                if &d.project == project && &d.host != host {
                    held += 1;
                }
            }
        })
        .map_err(internal)?;
    if held >= max {
        return Err(error(
            StatusCode::CONFLICT,
            format!("project {project} holds {held} domains, its limit (the cluster setting project.max_domains)"),
        ));
    }
    Ok(())
}
