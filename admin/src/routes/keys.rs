//! API keys: `POST /v1/keys` makes one and shows its secret once, `GET /v1/keys` lists them
//! (never a secret or a hash), `GET /v1/keys/{id}` shows one, `DELETE /v1/keys/{id}` revokes it.
//!
//! An `admin` manages keys below `admin`; an `owner` manages keys of every role. A scoped key
//! only makes and revokes keys scoped to its own project. Revocation keeps the record (so the
//! audit log's `key:{id}` still resolves) and takes effect on a node as soon as it has applied
//! the write: with `?wait=all`, on every voter before the answer.

use std::sync::Arc;

use palisade_raft::ids::{Name, ProjectId};
use palisade_raft::model::{prefix, schema, ApiKey, Millis, Record, RecordKey, Role};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};

use crate::openapi::{op, Op};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{new_key, KeySpec, Principal};
use crate::authz::{authorize, Within};
use crate::http::{error, invalid};
use crate::http::{expiry, path_param, Caller, JsonBody, QueryParams};
use crate::read::{read_barrier, ReadOpts};
use crate::state::AdminState;
use crate::write::{audit, commit, internal, optional_text};

pub(crate) fn ops() -> Vec<Op> {
    let admin = Some(Role::Admin);
    vec![
        op(
            Method::GET,
            "/v1/keys",
            admin,
            "List API keys (never a secret)",
            list_keys,
        )
        .query::<KeyQuery>(),
        op(
            Method::POST,
            "/v1/keys",
            admin,
            "Create an API key; its secret is shown once",
            create_key,
        )
        .json::<NewKeyBody>(),
        op(
            Method::GET,
            "/v1/keys/:id",
            admin,
            "Show an API key",
            get_key,
        )
        .query::<ReadOpts>(),
        op(
            Method::DELETE,
            "/v1/keys/:id",
            admin,
            "Revoke an API key",
            revoke_key,
        ),
    ]
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    role: Role,
    #[serde(default)]
    #[schemars(with = "Option<schema::ProjectIdText>")]
    project: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "schema::text::<200>")]
    description: String,
    /// Unix ms, in the future (or `ttl_seconds`, not both).
    #[serde(default)]
    expires_at: Option<Millis>,
    /// 1 to 315,360,000 (ten years).
    #[serde(default)]
    #[schemars(range(min = 1, max = 315_360_000))]
    ttl_seconds: Option<u64>,
}

/// A key as listed: everything but the hash.
fn public(k: &ApiKey, now: Millis) -> serde_json::Value {
    let status = if k.revoked {
        "revoked"
    } else if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id, "prefix": k.prefix, "role": k.role, "project": k.project,
        "description": k.description, "created_at": k.created_at, "created_by": k.created_by,
        "expires_at": k.expires_at, "last_used_at": k.last_used_at, "revoked": k.revoked,
        "status": status,
    })
}

/// May `p` create or revoke a key of `role` scoped to `project`?
fn may_manage(p: &Principal, role: Role, project: Option<&ProjectId>) -> poem::Result<()> {
    if p.role != Role::Owner && role >= Role::Admin {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "an {} key manages keys below admin only; {} keys take an owner",
                p.role.as_str(),
                role.as_str()
            ),
        ));
    }
    if let Some(mine) = &p.project {
        if project != Some(mine) {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("this key is limited to project {mine}; so are the keys it manages"),
            ));
        }
    }
    Ok(())
}

#[handler]
async fn create_key(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<NewKeyBody>,
) -> poem::Result<poem::Response> {
    let p = authorize(&state, &caller, Role::Admin, Within::Listing).await?;
    let body = body.0;
    let project: Option<ProjectId> = match &body.project {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|e| invalid("project", format!("{s:?}: {e}")))?,
        ),
    };
    may_manage(&p, body.role, project.as_ref())?;
    if let Some(id) = &project {
        if state
            .cluster
            .reader
            .get(&RecordKey::Project { id: id.clone() })
            .map_err(internal)?
            .is_none()
        {
            return Err(error(StatusCode::NOT_FOUND, format!("no project {id}")));
        }
    }
    optional_text("description", &body.description, 200)?;
    let now = now_ms();
    let expires_at = expiry(body.expires_at, body.ttl_seconds, now)?;
    let made = new_key(
        KeySpec {
            role: body.role,
            project,
            expires_at,
            description: &body.description,
            created_by: &format!("key:{}", p.key_id),
        },
        now,
    );
    let id = made.record.id.clone();
    let entry = audit(&p, &caller, "key.create", &format!("key/{id}"));
    let (index, duplicate) =
        commit(&state, &caller, Record::ApiKey(made.record.clone()), entry).await?;
    let mut body = public(&made.record, now);
    body["secret"] = json!(made.secret);
    body["index"] = json!(index);
    body["duplicate"] = json!(duplicate);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn key(state: &AdminState, id: &Name) -> poem::Result<ApiKey> {
    match state
        .cluster
        .reader
        .get(&RecordKey::ApiKey { id: id.clone() })
        .map_err(internal)?
    {
        Some(Record::ApiKey(k)) => Ok(k),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no key {id}"))),
    }
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct KeyQuery {
    #[schemars(with = "Option<schema::Consistency>")]
    consistency: Option<String>,
    /// Include revoked and expired keys (default: only active ones).
    all: Option<bool>,
}

#[handler]
async fn list_keys(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    q: QueryParams<KeyQuery>,
) -> poem::Result<poem::Response> {
    let p = authorize(&state, &caller, Role::Admin, Within::Listing).await?;
    read_barrier(&state, q.0.consistency.as_deref()).await?;
    let now = now_ms();
    let all = q.0.all.unwrap_or(false);
    let mut items = Vec::new();
    state
        .cluster
        .reader
        .for_each(prefix::APIKEY, |r| {
            let Record::ApiKey(k) = r else { return };
            let visible = p.project.is_none() || k.project == p.project;
            let active = !k.revoked && k.expires_at.is_none_or(|t| t > now);
            if visible && (all || active) {
                items.push(public(&k, now));
            }
        })
        .map_err(internal)?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[handler]
async fn get_key(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryParams<ReadOpts>,
) -> poem::Result<poem::Response> {
    let id: Name = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Admin, Within::Listing).await?;
    read_barrier(&state, q.0.consistency.as_deref()).await?;
    let k = key(&state, &id)?;
    if p.project.is_some() && k.project != p.project {
        return Err(error(StatusCode::NOT_FOUND, format!("no key {id}")));
    }
    Ok(Json(public(&k, now_ms())).into_response())
}

#[handler]
async fn revoke_key(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> poem::Result<poem::Response> {
    let id: Name = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Admin, Within::Listing).await?;
    let mut k = key(&state, &id)?;
    may_manage(&p, k.role, k.project.as_ref())?;
    if k.role == Role::Owner && !k.revoked && k.project.is_none() {
        let now = now_ms();
        let mut owners = 0;
        state
            .cluster
            .reader
            .for_each(prefix::APIKEY, |r| {
                if let Record::ApiKey(o) = r {
                    if o.role == Role::Owner
                        && o.project.is_none()
                        && !o.revoked
                        && o.expires_at.is_none_or(|t| t > now)
                    {
                        owners += 1;
                    }
                }
            })
            .map_err(internal)?;
        if owners <= 1 {
            return Err(error(
                StatusCode::CONFLICT,
                format!("key {id} is the last active owner key; make another owner key first"),
            ));
        }
    }
    k.revoked = true;
    let entry = audit(&p, &caller, "key.revoke", &format!("key/{id}"));
    let (index, duplicate) = commit(&state, &caller, Record::ApiKey(k.clone()), entry).await?;
    let mut body = public(&k, now_ms());
    body["index"] = json!(index);
    body["duplicate"] = json!(duplicate);
    Ok(Json(body).into_response())
}
