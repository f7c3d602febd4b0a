//! Probes for load balancers and orchestrators: `/healthz` and `/readyz` need no key and say
//! nothing but yes or no, from this node's own state (an unauthenticated caller never makes the
//! leader do work); `/v1/health` (this node's Raft view) and `/metrics` need a viewer key.

use std::sync::Arc;

use poem::http::{Method, StatusCode};
use poem::web::{Data, Json};
use poem::{handler, IntoResponse};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::Caller;
use crate::openapi::{op, Op, PUBLIC, VIEWER};
use crate::state::AdminState;
use crate::write::ApiResult;
use palisade_raft::model::Role;

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/healthz",
            PUBLIC,
            "The process is up",
            healthz,
        ),
        op(
            Method::GET,
            "/readyz",
            PUBLIC,
            "A member, caught up with the leader",
            readyz,
        ),
        op(
            Method::GET,
            "/v1/health",
            VIEWER,
            "This node's Raft view (200 when it knows a leader)",
            health,
        ),
        op(
            Method::GET,
            "/metrics",
            VIEWER,
            "Prometheus text: raft, edge and admin series",
            prometheus,
        ),
    ]
}

/// The process is up and serving.
#[handler]
async fn healthz() -> poem::Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// A member of the cluster that has caught up with the leader's commit index: safe to send
/// reads and writes to.
#[handler]
async fn readyz(state: Data<&Arc<AdminState>>) -> poem::Response {
    let s = state.cluster.local_status();
    let member = s.members.iter().any(|m| m.id == s.node_id);
    // Caught up, as far as this node knows: it follows a leader and has applied everything it
    // knows to be committed. (No read through the leader: this route needs no key.)
    let caught_up = s.leader.is_some() && s.committed.is_some_and(|c| s.applied >= c);
    let status = match member && caught_up {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "ready": member && caught_up }))).into_response()
}

#[handler]
async fn health(state: Data<&Arc<AdminState>>) -> poem::Response {
    let s = state.cluster.local_status();
    let ready = s.leader.is_some();
    let body = json!({ "node_id": s.node_id, "ready": ready, "leader": s.leader, "state": s.state, "applied": s.applied });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text: the edge's, the transport's, Raft's and the admin API's series (viewer key;
/// a scraper sends it as a bearer token).
#[handler]
async fn prometheus(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    let s = state.cluster.local_status();
    metrics::gauge!("palisade_raft_applied_index").set(s.applied as f64);
    metrics::gauge!("palisade_raft_term").set(s.term as f64);
    metrics::gauge!("palisade_raft_last_log_index").set(s.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("palisade_raft_is_leader")
        .set(f64::from(u8::from(s.leader == Some(s.node_id))));
    metrics::gauge!("palisade_raft_members").set(s.members.len() as f64);
    Ok(poem::Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
