//! Authorisation: the caller's key checked for the role and the scope a route needs.
//!
//! # Who may do what
//!
//! | role       | may                                                                     |
//! |------------|-------------------------------------------------------------------------|
//! | `viewer`   | read everything in its scope                                            |
//! | `operator` | also change IP rules, bot protection and domains in its scope           |
//! | `admin`    | also create and delete projects, upload and renew certificates, manage  |
//! |            | keys below `admin`, change the cluster-wide block list                  |
//! | `owner`    | also manage the cluster (join tokens, members, leadership), settings,   |
//! |            | configuration import, and keys of any role                              |
//!
//! A key scoped to a project reaches only that project's resources; cluster-wide routes refuse
//! it with 403, and listings show it only its project.

use palisade_raft::ids::ProjectId;
use palisade_raft::model::{AuditClass, AuditEntry, Role};
use palisade_raft::now_ms;
use poem::http::StatusCode;

use crate::auth::{authenticate, claimed_id, AuthError, Principal};
use crate::http::{error, Caller};
use crate::state::AdminState;

/// What a route is about, for a project-scoped key.
#[derive(Clone, Copy)]
pub(crate) enum Within<'a> {
    /// Cluster-wide: refused to scoped keys.
    Cluster,
    /// One project's resources.
    Project(&'a ProjectId),
    /// A listing the handler filters down to the key's project.
    Listing,
}

/// Check the caller's key for the role and scope a route needs.
///
/// A key unknown to this node may have been created a moment ago through another node, so the
/// node catches up with the leader once before it says no. A failure to authenticate is
/// audited and answered later the more often the source has failed. A key the route's
/// operation already checked (see [`crate::openapi`]) is not checked again, only its role and
/// scope against what the handler touches.
pub(crate) async fn authorize(
    state: &AdminState,
    caller: &Caller,
    needs: Role,
    within: Within<'_>,
) -> poem::Result<Principal> {
    let p = match &caller.principal {
        Some(p) if p.role < needs => Err(error(
            StatusCode::FORBIDDEN,
            format!("{}: it needs {}", AuthError::Forbidden, needs.as_str()),
        )),
        Some(p) => Ok(p.clone()),
        None => authenticate_caller(state, caller, needs).await,
    }?;
    match (&p.project, within) {
        (None, _) | (Some(_), Within::Listing) => Ok(p),
        (Some(mine), Within::Project(wanted)) if mine == wanted => Ok(p),
        (Some(mine), Within::Project(_)) => Err(error(
            StatusCode::FORBIDDEN,
            format!("this key is limited to project {mine}"),
        )),
        (Some(mine), Within::Cluster) => Err(error(
            StatusCode::FORBIDDEN,
            format!("this key is limited to project {mine}; this route is cluster-wide"),
        )),
    }
}

/// Authenticate the caller's key: the principal, or the 401/403 it gets.
async fn authenticate_caller(
    state: &AdminState,
    caller: &Caller,
    needs: Role,
) -> poem::Result<Principal> {
    let key = caller.bearer();
    let reader = &state.cluster.reader;
    let mut result = authenticate(reader, key, needs, now_ms());
    if result.as_ref().err() == Some(&AuthError::Unknown)
        && state.guard.may_catch_up()
        && state.cluster.linearizable_barrier().await.is_ok()
    {
        result = authenticate(reader, key, needs, now_ms());
    }
    let p = match result {
        Ok(p) => p,
        Err(e) if e.is_authentication() => {
            let entry = AuditEntry {
                seq: 0,
                at: now_ms(),
                actor: claimed_id(key)
                    .map(|id| format!("key:{id}"))
                    .unwrap_or_else(|| "anonymous".into()),
                source_ip: caller.source(),
                action: "auth.failure".into(),
                target: format!("{} {}", caller.method, caller.path),
                outcome: format!("denied: {e}"),
                class: AuditClass::Outside,
            };
            let wait = state.guard.failed(caller.ip, entry);
            tokio::time::sleep(wait).await;
            return Err(error(StatusCode::UNAUTHORIZED, e));
        }
        Err(e) => {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("{e}: it needs {}", needs.as_str()),
            ))
        }
    };
    state.guard.used(&p.key_id);
    Ok(p)
}
