//! The cluster itself: status, join tokens, members, leadership (owner keys, but for status).

use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::ClusterError;
use palisade_raft::command::{Command, Request};
use palisade_raft::ids::NodeId;
use palisade_raft::model::{AuditEntry, Role};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{conflict, error, invalid, path_param, Caller, JsonBody, OptionalJsonBody};
use crate::openapi::{op, Op, OWNER, VIEWER};
use crate::state::AdminState;
use crate::write::{audit, cluster_error, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/v1/cluster/status",
            VIEWER,
            "Leader, members, roles, applied index and lag",
            cluster_status,
        ),
        op(
            Method::POST,
            "/v1/cluster/join-tokens",
            OWNER,
            "Create a one-use join token",
            create_join_token,
        )
        .optional_json::<TokenBody>(),
        op(
            Method::DELETE,
            "/v1/cluster/members/:id",
            OWNER,
            "Remove a member",
            remove_member,
        ),
        op(
            Method::POST,
            "/v1/cluster/members/:id/promote",
            OWNER,
            "Make a learner a voter",
            promote_member,
        ),
        op(
            Method::POST,
            "/v1/cluster/leader",
            OWNER,
            "Hand leadership to a voter",
            transfer_leader,
        )
        .json::<LeaderBody>(),
    ]
}

#[handler]
async fn cluster_status(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    Ok(Json(state.cluster.status().await).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TokenBody {
    /// 1 to 604,800 (a week); default 3,600.
    #[serde(default = "default_token_ttl")]
    #[schemars(range(min = 1, max = 604_800))]
    ttl_seconds: u64,
}

fn default_token_ttl() -> u64 {
    3600
}

#[handler]
async fn create_join_token(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: OptionalJsonBody<TokenBody>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let ttl = body
        .0
        .map(|b| b.ttl_seconds)
        .unwrap_or_else(default_token_ttl);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return Err(invalid(
            "ttl_seconds",
            format!("{ttl} is not between 1 and 604800"),
        ));
    }
    let token = state
        .cluster
        .create_join_token(Duration::from_secs(ttl), &p.actor(), now_ms())
        .await
        .map_err(cluster_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "ttl_seconds": ttl })),
    )
        .into_response())
}

/// Membership changes are Raft entries of their own; the audit entry follows them.
async fn audit_after(state: &AdminState, entry: AuditEntry) {
    let write = state
        .cluster
        .write(Request::new(Command::AuditOnly).with_audit(entry))
        .await;
    if let Err(e) = write {
        tracing::warn!(error = %e, "a membership change is done but its audit entry is not");
    }
}

#[handler]
async fn remove_member(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let id: NodeId = path_param("id", &id)?;
    state
        .cluster
        .remove_member(id)
        .await
        .map_err(cluster_error)?;
    audit_after(
        &state,
        audit(&p, &caller, "cluster.member.remove", &format!("node/{id}")),
    )
    .await;
    Ok(Json(json!({ "removed": id })).into_response())
}

/// Make a learner a voter (a member that is already one stays one).
#[handler]
async fn promote_member(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let id: NodeId = path_param("id", &id)?;
    let status = state.cluster.status().await;
    let Some(member) = status.members.iter().find(|m| m.id == id) else {
        return Err(error(StatusCode::NOT_FOUND, format!("no member {id}")));
    };
    state
        .cluster
        .add_member(id, member.node.clone())
        .await
        .map_err(cluster_error)?;
    audit_after(
        &state,
        audit(&p, &caller, "cluster.member.promote", &format!("node/{id}")),
    )
    .await;
    Ok(Json(json!({ "promoted": id })).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct LeaderBody {
    node_id: NodeId,
}

#[handler]
async fn transfer_leader(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<LeaderBody>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let to = body.0.node_id;
    state
        .cluster
        .transfer_leadership(to, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            ClusterError::Refused(why) => conflict("node_id", why),
            e => cluster_error(e),
        })?;
    audit_after(
        &state,
        audit(
            &p,
            &caller,
            "cluster.leader.transfer",
            &format!("node/{to}"),
        ),
    )
    .await;
    Ok(Json(json!({ "leader": to })).into_response())
}
