//! The write path every changing route takes: the caller's idempotency key as request id, the
//! audit entry committed in the same log entry as the change, `?wait=all`, and the one mapping
//! from the cluster's answer to an HTTP status (409 for a refusal, 503 when a retry can help).

use std::time::Duration;

use palisade_raft::cluster::ClusterError;
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::ids::RequestId;
use palisade_raft::model::AuditEntry;
use palisade_raft::now_ms;
use poem::http::StatusCode;
use poem::web::Json;
use poem::IntoResponse;
use serde_json::json;

use crate::auth::Principal;
use crate::http::{error, invalid, Caller};
use crate::state::AdminState;

pub(crate) type ApiResult = poem::Result<poem::Response>;

pub(crate) fn internal(e: impl std::fmt::Display) -> poem::Error {
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

pub(crate) fn status_of(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        ClusterError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ClusterError::NotApplied { .. } => StatusCode::GATEWAY_TIMEOUT,
        e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn cluster_error(e: ClusterError) -> poem::Error {
    error(status_of(&e), e)
}

/// What a client gets for the outcome of one write: its log index and whether it was a retry,
/// or 409 when the state machine refused it, or the cluster error's status. For a write that is
/// one batch of several, `done` (how far the operation got) leads the message.
pub(crate) fn written(
    outcome: Result<Response, ClusterError>,
    done: Option<&str>,
) -> poem::Result<(u64, bool)> {
    let say = |m: String| match done {
        Some(d) => format!("{d}: {m}"),
        None => m,
    };
    match outcome {
        Ok(Response::Applied { index, duplicate }) => Ok((index, duplicate)),
        Ok(Response::Refused { reason }) => {
            Err(error(StatusCode::CONFLICT, say(reason.to_string())))
        }
        Ok(other) => Err(internal(say(format!("unexpected answer {other:?}")))),
        Err(e) => Err(error(status_of(&e), say(e.to_string()))),
    }
}

pub(crate) fn request_id(caller: &Caller) -> poem::Result<RequestId> {
    match caller.headers.get("idempotency-key") {
        None => Ok(RequestId::random()),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("idempotency-key", "must be 1 to 128 printable characters")),
    }
}

pub(crate) fn audit(p: &Principal, caller: &Caller, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: now_ms(),
        actor: p.actor(),
        source_ip: caller.source(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: "ok".to_string(),
    }
}

/// Write one command with its audit entry under the caller's idempotency key; the applied log
/// index and whether this was a retry, or 409 when the state machine refused it. With
/// `?wait=all` the answer waits until every voter has applied the write.
pub(crate) async fn commit(
    state: &AdminState,
    caller: &Caller,
    command: impl Into<Command>,
    audit: AuditEntry,
) -> poem::Result<(u64, bool)> {
    let req = Request::new(command.into())
        .with_id(request_id(caller)?)
        .with_audit(audit);
    let (index, duplicate) = written(state.cluster.write(req).await, None)?;
    if caller.wait_all {
        state
            .cluster
            .wait_applied_everywhere(index, WAIT_ALL_TIMEOUT)
            .await
            .map_err(cluster_error)?;
    }
    Ok((index, duplicate))
}

const WAIT_ALL_TIMEOUT: Duration = Duration::from_secs(10);

/// [`commit`], answered with 201 (created) or 200 and `{index, duplicate, …extra}`.
pub(crate) async fn apply(
    state: &AdminState,
    caller: &Caller,
    command: impl Into<Command>,
    audit: AuditEntry,
    created: bool,
    extra: serde_json::Value,
) -> ApiResult {
    let (index, duplicate) = commit(state, caller, command, audit).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = json!({ "index": index, "duplicate": duplicate });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    Ok((status, Json(body)).into_response())
}

/// A string field that must be there and hold something other than blanks.
pub(crate) fn required_text(field: &str, value: &str, max: usize) -> poem::Result<()> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(field, format!("is longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(())
}
