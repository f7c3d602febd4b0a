//! Projects: create (admin), read, change name, headers and limits, delete once empty.

use std::sync::Arc;

use palisade_raft::command::Command;
use palisade_raft::ids::ProjectId;
use palisade_raft::model::{
    prefix, schema, BotPolicy, HeaderPolicy, Limits, Project, Record, RecordKey, Role,
};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::bot::check_bot;
use crate::authz::{authorize, Within};
use crate::http::{error, invalid, path_param, Caller, JsonBody, QueryParams};
use crate::openapi::{op, Op, ADMIN, VIEWER};
use crate::read::{get_record, page, project, read_barrier, ListOpts, ReadOpts};
use crate::state::AdminState;
use crate::write::{apply, audit, internal, required_text, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/v1/projects",
            VIEWER,
            "List projects",
            list_projects,
        )
        .query::<ListOpts>(),
        op(
            Method::POST,
            "/v1/projects",
            ADMIN,
            "Create a project",
            create_project,
        )
        .json::<NewProject>(),
        op(
            Method::GET,
            "/v1/projects/:id",
            VIEWER,
            "Show a project",
            get_project,
        )
        .query::<ReadOpts>(),
        op(
            Method::PATCH,
            "/v1/projects/:id",
            ADMIN,
            "Change a project's name, headers or limits",
            patch_project,
        )
        .json::<ProjectPatch>(),
        op(
            Method::DELETE,
            "/v1/projects/:id",
            ADMIN,
            "Delete a project without domains",
            delete_project,
        ),
    ]
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    #[schemars(with = "schema::ProjectIdText")]
    id: String,
    #[schemars(schema_with = "schema::required_text::<200>")]
    name: String,
    #[serde(default)]
    headers: Option<HeaderPolicy>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    bot: Option<BotPolicy>,
}

const MAX_NAME: usize = 200;

fn nullable_name(g: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    let mut s = serde_json::to_value(schema::required_text::<200>(g)).unwrap_or_default();
    s["nullable"] = serde_json::Value::Bool(true);
    schema::from_json(s)
}

fn check_limits(l: &Limits) -> poem::Result<()> {
    if l.max_body_bytes == 0 || l.max_body_bytes > 1 << 40 {
        return Err(invalid(
            "limits.max_body_bytes",
            format!("{} is not between 1 and 2^40", l.max_body_bytes),
        ));
    }
    Ok(())
}

fn check_headers(h: &HeaderPolicy) -> poem::Result<()> {
    if h.hsts_max_age > 2 * 31_536_000 {
        return Err(invalid(
            "headers.hsts_max_age",
            format!("{} is more than two years in seconds", h.hsts_max_age),
        ));
    }
    if h.hsts_preload && (h.hsts_max_age < 31_536_000 || !h.hsts_include_subdomains) {
        return Err(invalid(
            "headers.hsts_preload",
            "needs hsts_max_age of at least one year and hsts_include_subdomains",
        ));
    }
    Ok(())
}

#[handler]
async fn create_project(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<NewProject>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Admin, Within::Cluster).await?;
    let body = body.0;
    let id: ProjectId = body
        .id
        .parse()
        .map_err(|e| invalid("id", format!("{:?}: {e}", body.id)))?;
    required_text("name", &body.name, MAX_NAME)?;
    let headers = body.headers.unwrap_or_default();
    check_headers(&headers)?;
    let limits = body.limits.unwrap_or_default();
    check_limits(&limits)?;
    let bot = body.bot.unwrap_or_default();
    check_bot("bot", &bot)?;
    if get_record(&state, &RecordKey::Project { id: id.clone() })?.is_some() {
        return Err(error(StatusCode::CONFLICT, format!("project {id} exists")));
    }
    let project = Project {
        id: id.clone(),
        name: body.name,
        headers,
        bot,
        limits,
        created_at: now_ms(),
    };
    let entry = audit(&p, &caller, "project.create", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        true,
        json!({ "project": project }),
    )
    .await
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    #[serde(default)]
    #[schemars(schema_with = "nullable_name")]
    name: Option<String>,
    headers: Option<HeaderPolicy>,
    limits: Option<Limits>,
}

#[handler]
async fn patch_project(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<ProjectPatch>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Admin, Within::Project(&id)).await?;
    let mut project = project(&state, &id)?;
    let patch = body.0;
    if let Some(name) = patch.name {
        required_text("name", &name, MAX_NAME)?;
        project.name = name;
    }
    if let Some(h) = patch.headers {
        check_headers(&h)?;
        project.headers = h;
    }
    if let Some(l) = patch.limits {
        check_limits(&l)?;
        project.limits = l;
    }
    let entry = audit(&p, &caller, "project.update", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        false,
        json!({ "project": project }),
    )
    .await
}

#[handler]
async fn delete_project(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Admin, Within::Project(&id)).await?;
    project(&state, &id)?;
    let mut domains = Vec::new();
    state
        .cluster
        .reader
        .for_each(prefix::DOMAIN, |r| {
            if let Record::Domain(d) = r {
                if d.project == id {
                    domains.push(d.host.to_string());
                }
            }
        })
        .map_err(internal)?;
    if !domains.is_empty() {
        return Err(error(
            StatusCode::CONFLICT,
            format!("project {id} still has domains {domains:?}; delete them first"),
        ));
    }
    // Its IP rules would apply again to a new project of the same id.
    let rules = state
        .cluster
        .reader
        .count(&palisade_raft::model::ip_rule_prefix(Some(&id)))
        .map_err(internal)?;
    if rules > 0 {
        return Err(error(
            StatusCode::CONFLICT,
            format!("project {id} still has {rules} IP rules; clear its lists first (DELETE …/ip-rules?list=allow|block&all=true)"),
        ));
    }
    // Its scoped keys are revoked and its decisions lifted in the same entry (the state
    // machine does it): a project made again under this id inherits neither.
    let mut entry = audit(&p, &caller, "project.delete", &format!("project/{id}"));
    entry.outcome = "ok: its scoped API keys revoked, its bot-protection decisions lifted".into();
    apply(
        &state,
        &caller,
        Command::DeleteProject { id },
        entry,
        false,
        json!({}),
    )
    .await
}

#[handler]
async fn list_projects(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    opts: QueryParams<ListOpts>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Viewer, Within::Listing).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let (items, next) = page(&state, prefix::PROJECT, &opts.0, |r| {
        match (r, &p.project) {
            (Record::Project(pr), Some(mine)) => &pr.id == mine,
            _ => true,
        }
    })?;
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

#[handler]
async fn get_project(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    authorize(&state, &caller, Role::Viewer, Within::Project(&id)).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    Ok(Json(project(&state, &id)?).into_response())
}
