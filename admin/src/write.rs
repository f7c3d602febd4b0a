//! The write path every changing route takes: the caller's idempotency key as request id, the
//! audit entry committed in the same log entry as the change, `?wait=all`, and the one mapping
//! from the cluster's answer to an HTTP status (409 for a refusal, 422 for an idempotency key
//! reused on another request, 503 when a retry can help).

use std::time::Duration;

use palisade_raft::cluster::ClusterError;
use palisade_raft::command::{Command, Refusal, Request, Response};
use palisade_raft::crypto::sha256_hex;
use palisade_raft::ids::RequestId;
use palisade_raft::model::{AuditClass, AuditEntry};
use palisade_raft::now_ms;
use poem::http::StatusCode;
use poem::web::Json;
use poem::IntoResponse;
use serde_json::json;

use crate::auth::Principal;
use crate::http::{error, idempotency_reused, invalid, Caller};
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
        Ok(Response::Refused {
            reason: Refusal::IdempotencyReused,
        }) => Err(idempotency_reused(say(
            Refusal::IdempotencyReused.to_string()
        ))),
        Ok(Response::Refused { reason }) => {
            Err(error(StatusCode::CONFLICT, say(reason.to_string())))
        }
        Ok(other) => Err(internal(say(format!("unexpected answer {other:?}")))),
        Err(e) => Err(error(status_of(&e), say(e.to_string()))),
    }
}

/// The id a write is deduplicated under: random, or derived from the caller's `Idempotency-Key`
/// and the API key that sent it, so that two clients who happen to pick the same key never
/// answer each other's requests.
pub(crate) fn request_id(caller: &Caller) -> poem::Result<RequestId> {
    match client_key(caller)? {
        None => Ok(RequestId::random()),
        Some(key) => {
            let owner = caller.principal.as_ref().map_or("", |p| p.key_id.as_str());
            let scoped = sha256_hex(format!("{owner}\n{key}").as_bytes());
            Ok(format!("ik-{}", &scoped[..32]).parse().map_err(internal)?)
        }
    }
}

/// The `Idempotency-Key` in `headers`, checked: 1 to 128 printable characters.
pub(crate) fn check_idempotency_key(headers: &poem::http::HeaderMap) -> poem::Result<Option<&str>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(Some)
        .ok_or_else(|| invalid("idempotency-key", "must be 1 to 128 printable characters"))
}

/// The caller's `Idempotency-Key`, checked.
fn client_key(caller: &Caller) -> poem::Result<Option<&str>> {
    check_idempotency_key(&caller.headers)
}

/// `req` under the caller's request id; with an idempotency key, also with what the request
/// was, so that the same key on a different request is refused (422) instead of answered with
/// the first one's outcome.
pub(crate) fn identified(caller: &Caller, req: Request) -> poem::Result<Request> {
    let req = req.with_id(request_id(caller)?);
    Ok(match (client_key(caller)?, &caller.fingerprint) {
        (Some(_), Some(fingerprint)) => req.with_fingerprint(fingerprint.value()),
        _ => req,
    })
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
        class: AuditClass::Operator,
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
    let req = identified(caller, Request::new(command.into()).with_audit(audit))?;
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
    optional_text(field, value, max)
}

/// A string field that may be empty: at most `max` characters, no control characters.
pub(crate) fn optional_text(field: &str, value: &str, max: usize) -> poem::Result<()> {
    if value.chars().count() > max {
        return Err(invalid(field, format!("is longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(())
}
