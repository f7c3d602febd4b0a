//! The `/v1` routes and the probes. Errors have one shape (see [`crate::http`]) and a status that
//! says whether a retry can help (503) or not (4xx).
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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::{Cluster, ClusterError};
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::ids::{Cidr, Hostname, Name, NodeId, ProjectId, RequestId};
use palisade_raft::model::{
    prefix, AuditEntry, BotMode, BotPolicy, Cert, CertSource, CertStatus, ClusterSettings,
    Decision, DecisionAction, Domain, HeaderPolicy, Limits, Project, Record, RecordKey, Role,
    TlsMode,
};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, Endpoint, EndpointExt, IntoResponse};

use crate::openapi::{op, Op};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{authenticate, claimed_id, AuthError, Principal};
use crate::guard::Guard;
pub(crate) use crate::http::{error, invalid};
use crate::http::{path_param, Caller, JsonBody, OptionalJsonBody, QueryParams};

/// What the node's configuration says about its admin API.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// When not empty, the only sources that reach the admin API.
    pub allowed_ips: Vec<Cidr>,
    /// How often key use is written.
    pub last_used_flush: Duration,
    pub audit_max_age: Duration,
    pub audit_max_entries: u64,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            allowed_ips: Vec::new(),
            last_used_flush: Duration::from_secs(60),
            audit_max_age: Duration::from_secs(365 * 86_400),
            audit_max_entries: 1_000_000,
        }
    }
}

pub struct AdminState {
    pub cluster: Arc<Cluster>,
    /// This node's edge view: what the data plane enforces (the IP rule check reads it).
    pub view: Arc<palisade_edge::view::LiveView>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub options: AdminOptions,
    pub guard: Arc<Guard>,
}

impl AdminState {
    pub fn new(
        cluster: Arc<Cluster>,
        view: Arc<palisade_edge::view::LiveView>,
        options: AdminOptions,
    ) -> Self {
        AdminState {
            cluster,
            view,
            metrics: crate::metrics_handle(),
            options,
            guard: Arc::new(Guard::default()),
        }
    }
}

/// Every operation: method, path, least role, summary, body and query types, handler.
fn ops() -> Vec<Op> {
    use Method as M;
    let (viewer, operator, admin, owner) = (
        Some(Role::Viewer),
        Some(Role::Operator),
        Some(Role::Admin),
        Some(Role::Owner),
    );
    let mut ops = vec![
        op(M::GET, "/healthz", None, "The process is up", healthz),
        op(
            M::GET,
            "/readyz",
            None,
            "A member, caught up with the leader",
            readyz,
        ),
        op(
            M::GET,
            "/v1/health",
            None,
            "This node's Raft view (200 when it knows a leader)",
            health,
        ),
        op(
            M::GET,
            "/metrics",
            viewer,
            "Prometheus text: raft, edge and admin series",
            prometheus,
        ),
        op(
            M::GET,
            "/v1/cluster/status",
            viewer,
            "Leader, members, roles, applied index and lag",
            cluster_status,
        ),
        op(
            M::POST,
            "/v1/cluster/join-tokens",
            owner,
            "Create a one-use join token",
            create_join_token,
        )
        .json::<TokenBody>(),
        op(
            M::DELETE,
            "/v1/cluster/members/:id",
            owner,
            "Remove a member",
            remove_member,
        ),
        op(
            M::POST,
            "/v1/cluster/members/:id/promote",
            owner,
            "Make a learner a voter",
            promote_member,
        ),
        op(
            M::POST,
            "/v1/cluster/leader",
            owner,
            "Hand leadership to a voter",
            transfer_leader,
        )
        .json::<LeaderBody>(),
        op(
            M::GET,
            "/v1/projects",
            viewer,
            "List projects",
            list_projects,
        )
        .query::<ListOpts>(),
        op(
            M::POST,
            "/v1/projects",
            admin,
            "Create a project",
            create_project,
        )
        .json::<NewProject>(),
        op(
            M::GET,
            "/v1/projects/:id",
            viewer,
            "Show a project",
            get_project,
        )
        .query::<ReadOpts>(),
        op(
            M::PATCH,
            "/v1/projects/:id",
            admin,
            "Change a project's name, headers or limits",
            patch_project,
        )
        .json::<ProjectPatch>(),
        op(
            M::DELETE,
            "/v1/projects/:id",
            admin,
            "Delete a project without domains",
            delete_project,
        ),
        op(
            M::GET,
            "/v1/projects/:id/bot",
            viewer,
            "A project's bot protection policy",
            get_bot,
        )
        .query::<ReadOpts>(),
        op(
            M::PUT,
            "/v1/projects/:id/bot",
            operator,
            "Set a project's bot protection policy",
            put_bot,
        )
        .json::<BotPolicy>(),
        op(
            M::GET,
            "/v1/projects/:id/bot/decisions",
            viewer,
            "Sources the project challenges or blocks now (from triggers or by hand), and until when",
            list_decisions,
        )
        .query::<ReadOpts>(),
        op(
            M::POST,
            "/v1/projects/:id/bot/decisions",
            operator,
            "Challenge or block an address or prefix for a while, on every node",
            add_decision,
        )
        .json::<NewDecision>(),
        op(
            M::DELETE,
            "/v1/projects/:id/bot/decisions",
            operator,
            "Lift a decision (?prefix=)",
            remove_decision,
        )
        .query::<DecisionQuery>(),
        op(
            M::POST,
            "/v1/projects/:id/bot/sessions/revoke",
            operator,
            "End every clearance of the project at once (bumps its epoch)",
            revoke_sessions,
        ),
        op(
            M::GET,
            "/v1/audit",
            viewer,
            "Query or export (JSON, CSV) the audit log",
            list_audit,
        )
        .query::<AuditQuery>(),
        op(M::GET, "/v1/domains", viewer, "List domains", list_domains).query::<ListOpts>(),
        op(
            M::GET,
            "/v1/domains/:host",
            viewer,
            "Show a domain",
            get_domain,
        )
        .query::<ReadOpts>(),
        op(
            M::PUT,
            "/v1/domains/:host",
            operator,
            "Create or replace a domain",
            put_domain,
        )
        .json::<DomainBody>(),
        op(
            M::DELETE,
            "/v1/domains/:host",
            operator,
            "Delete a domain",
            delete_domain,
        ),
        op(
            M::GET,
            "/v1/certificates",
            viewer,
            "List certificates: names, issuer, expiry, status",
            list_certs,
        )
        .query::<ListOpts>(),
        op(
            M::POST,
            "/v1/certificates",
            admin,
            "Upload a certificate and key (manual TLS)",
            upload_cert,
        )
        .json::<CertBody>(),
        op(
            M::GET,
            "/v1/certificates/acme",
            viewer,
            "Automatic certificates: state, owner, failures, last error, next attempt per host",
            list_acme,
        )
        .query::<ListOpts>(),
        op(
            M::POST,
            "/v1/certificates/:host/renew",
            admin,
            "Ask for a new certificate for a host now",
            renew_cert,
        ),
        op(
            M::GET,
            "/v1/settings",
            viewer,
            "Cluster settings",
            get_settings,
        ),
        op(
            M::PUT,
            "/v1/settings",
            owner,
            "Change cluster settings",
            put_settings,
        )
        .json::<ClusterSettings>(),
        op(
            M::GET,
            "/v1/bot/keys",
            admin,
            "The bot-protection keyring: key ids, states and times (never the secrets)",
            list_bot_keys,
        ),
    ];
    ops.extend(crate::keys::ops());
    ops.extend(crate::iprules::ops());
    ops.extend(crate::config::ops());
    ops
}

pub fn routes(state: Arc<AdminState>) -> impl Endpoint {
    let route = crate::openapi::router(ops());
    let allowed = state.options.allowed_ips.clone();
    let cluster = state.cluster.clone();
    route
        .around(move |ep, req| {
            let allowed = allowed.clone();
            let cluster = cluster.clone();
            async move {
                // Outside admin.allowed_ips the admin API does not exist: the same bare 404 as
                // a path that matches no route, before authentication or any other work.
                let source = req.remote_addr().as_socket_addr().map(|a| a.ip());
                if !allowed.is_empty() && !source.is_some_and(|ip| admitted(&allowed, ip)) {
                    return Err(poem::error::NotFoundError.into());
                }
                let started = std::time::Instant::now();
                let method = req.method().to_string();
                // A change is checked against state at least as new as any write acknowledged
                // anywhere (a domain for a project created through another node a moment ago).
                if !req.method().is_safe() {
                    cluster.linearizable_barrier().await.map_err(cluster_error)?;
                }
                let resp = ep.call(req).await.map(IntoResponse::into_response);
                let status = match &resp {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => e.status().as_u16(),
                };
                metrics::counter!("palisade_admin_requests_total", "method" => method, "status" => status.to_string()).increment(1);
                metrics::histogram!("palisade_admin_request_seconds")
                    .record(started.elapsed().as_secs_f64());
                resp
            }
        })
        .data(state)
}

fn admitted(allowed: &[Cidr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allowed.iter().any(|c| c.contains(ip))
}

type ApiResult = poem::Result<poem::Response>;

pub(crate) fn internal(e: impl std::fmt::Display) -> poem::Error {
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn status_of(e: &ClusterError) -> StatusCode {
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
        Ok(Response::Refused { reason }) => Err(error(StatusCode::CONFLICT, say(reason))),
        Ok(other) => Err(internal(say(format!("unexpected answer {other:?}")))),
        Err(e) => Err(error(status_of(&e), say(e.to_string()))),
    }
}

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

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
pub(crate) struct ReadOpts {
    /// `linearizable` (default) or `local`.
    pub(crate) consistency: Option<String>,
}

pub(crate) async fn read_barrier(
    state: &AdminState,
    consistency: Option<&str>,
) -> poem::Result<()> {
    match consistency {
        None | Some("linearizable") => state
            .cluster
            .linearizable_barrier()
            .await
            .map(|_| ())
            .map_err(cluster_error),
        Some("local") => Ok(()),
        Some(other) => Err(invalid(
            "consistency",
            format!("must be linearizable or local, not {other:?}"),
        )),
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
async fn apply(
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

fn get_record(state: &AdminState, key: &RecordKey) -> poem::Result<Option<Record>> {
    state.cluster.reader.get(key).map_err(internal)
}

fn project(state: &AdminState, id: &ProjectId) -> poem::Result<Project> {
    match get_record(state, &RecordKey::Project { id: id.clone() })? {
        Some(Record::Project(p)) => Ok(p),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no project {id}"))),
    }
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

// ---- probes --------------------------------------------------------------------------------

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
    let caught_up = member
        && tokio::time::timeout(Duration::from_secs(2), state.cluster.linearizable_barrier())
            .await
            .is_ok_and(|r| r.is_ok());
    let (status, why) = match (member, caught_up) {
        (true, true) => (StatusCode::OK, None),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("not a member of a cluster yet"),
        ),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("not caught up with a leader"),
        ),
    };
    let body = json!({
        "ready": why.is_none(), "reason": why, "node_id": s.node_id, "leader": s.leader,
        "applied": state.cluster.reader.applied_index(),
    });
    (status, Json(body)).into_response()
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

// ---- cluster -------------------------------------------------------------------------------

#[handler]
async fn cluster_status(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    Ok(Json(state.cluster.status().await).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
struct TokenBody {
    #[serde(default = "default_token_ttl")]
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
            ClusterError::Refused(why) => invalid("node_id", why),
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

// ---- projects ------------------------------------------------------------------------------

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    id: String,
    name: String,
    #[serde(default)]
    headers: Option<HeaderPolicy>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    bot: Option<BotPolicy>,
}

const MAX_NAME: usize = 200;

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

pub(crate) fn check_bot(field: &str, b: &BotPolicy) -> poem::Result<()> {
    let bad = |name: &str, why: String| match field {
        "" => invalid(name, why),
        _ => invalid(&format!("{field}.{name}"), why),
    };
    let range = |name: &str, v: u64, lo: u64, hi: u64| match (lo..=hi).contains(&v) {
        true => Ok(()),
        false => Err(bad(name, format!("{v} is not between {lo} and {hi}"))),
    };
    range("difficulty_bits", b.difficulty_bits.into(), 8, 28)?;
    range("session_minutes", b.session_minutes.into(), 1, 43_200)?;
    range(
        "manual_session_minutes",
        b.manual_session_minutes.into(),
        1,
        43_200,
    )?;
    range(
        "answer_within_seconds",
        b.answer_within_seconds.into(),
        10,
        300,
    )?;
    // The wait must end well before the challenge does.
    range(
        "no_script_wait_seconds",
        b.no_script_wait_seconds.into(),
        1,
        u64::from(b.answer_within_seconds / 2).min(120),
    )?;
    for (name, paths) in [
        ("exempt_paths", &b.exempt_paths),
        ("login_paths", &b.login_paths),
    ] {
        if paths.len() > 200 {
            return Err(bad(name, format!("{} entries; at most 200", paths.len())));
        }
        for (i, p) in paths.iter().enumerate() {
            let star = p.find('*');
            if !p.starts_with('/')
                || p.len() > 512
                || star.is_some_and(|at| at != p.len() - 1)
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(
                    &format!("{name}[{i}]"),
                    format!("{p:?} is not a path: it must start with /, have no spaces, and may end in one *"),
                ));
            }
        }
    }
    for (name, t) in b.triggers.all() {
        let at = |f: &str| format!("triggers.{name}.{f}");
        range(&at("threshold"), t.threshold.into(), 1, 10_000_000)?;
        range(&at("window_seconds"), t.window_seconds.into(), 4, 86_400)?;
        range(
            &at("challenge_seconds"),
            t.challenge_seconds.into(),
            1,
            7 * 86_400,
        )?;
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
    let entry = audit(&p, &caller, "project.delete", &format!("project/{id}"));
    let command = Command::Delete {
        key: RecordKey::Project { id },
    };
    apply(&state, &caller, command, entry, false, json!({})).await
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct ListOpts {
    consistency: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

impl ListOpts {
    fn limit(&self) -> poem::Result<usize> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=10_000) => Ok(n),
            Some(n) => Err(invalid("limit", format!("{n} is not between 1 and 10000"))),
        }
    }
}

/// One page of the records under `pfx` that `keep` accepts, and the cursor of the next page.
fn page(
    state: &AdminState,
    pfx: &str,
    opts: &ListOpts,
    keep: impl Fn(&Record) -> bool,
) -> poem::Result<(Vec<Record>, Option<String>)> {
    let limit = opts.limit()?;
    let mut after = opts.after.as_ref().map(|a| format!("{pfx}{a}"));
    let mut out = Vec::new();
    loop {
        let batch = state
            .cluster
            .reader
            .scan(pfx, after.as_deref(), 1024)
            .map_err(internal)?;
        let done = batch.len() < 1024;
        after = batch.last().map(|r| r.key().encode());
        for r in batch {
            if keep(&r) {
                if out.len() == limit {
                    let cursor = out
                        .last()
                        .map(|r: &Record| r.key().encode()[pfx.len()..].to_string());
                    return Ok((out, cursor));
                }
                out.push(r);
            }
        }
        if done {
            return Ok((out, None));
        }
    }
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

// ---- bot protection policy -----------------------------------------------------------------

#[handler]
async fn get_bot(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    authorize(&state, &caller, Role::Viewer, Within::Project(&id)).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    Ok(Json(project(&state, &id)?.bot).into_response())
}

#[handler]
async fn put_bot(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<BotPolicy>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let bot = body.0;
    check_bot("", &bot)?;
    let mut project = project(&state, &id)?;
    project.bot = bot;
    let entry = audit(&p, &caller, "bot.policy.put", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        false,
        json!({ "bot": project.bot }),
    )
    .await
}

#[handler]
async fn revoke_sessions(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let mut project = project(&state, &id)?;
    project.bot.epoch = project.bot.epoch.wrapping_add(1);
    let entry = audit(&p, &caller, "bot.sessions.revoke", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        false,
        json!({ "epoch": project.bot.epoch }),
    )
    .await
}

#[handler]
async fn list_decisions(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    authorize(&state, &caller, Role::Viewer, Within::Project(&id)).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let now = now_ms();
    let mut items = Vec::new();
    state
        .cluster
        .reader
        .for_each(&format!("{}{id}/", prefix::DECISION), |r| {
            if let Record::Decision(d) = r {
                if d.until > now {
                    items.push(d);
                }
            }
        })
        .map_err(internal)?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
struct NewDecision {
    /// An address or CIDR.
    prefix: String,
    /// `challenge` (default) or `block`.
    #[serde(default)]
    action: Option<DecisionAction>,
    minutes: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct DecisionQuery {
    prefix: Option<String>,
}

fn parse_prefix(field: &str, raw: &str) -> poem::Result<Cidr> {
    raw.trim()
        .parse()
        .map_err(|e| invalid(field, format!("{raw:?} is not an address or CIDR: {e}")))
}

#[handler]
async fn add_decision(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<NewDecision>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let body = body.0;
    let prefix = parse_prefix("prefix", &body.prefix)?;
    if body.minutes == 0 || body.minutes > 43_200 {
        return Err(invalid(
            "minutes",
            format!("{} is not between 1 and 43200", body.minutes),
        ));
    }
    project(&state, &id)?;
    let action = body.action.unwrap_or(DecisionAction::Challenge);
    let decision = Decision {
        project: id.clone(),
        prefix,
        action,
        until: now_ms() + u64::from(body.minutes) * 60_000,
        reason: match body.reason.trim() {
            "" => format!("by {}", p.actor()),
            r => r.chars().take(200).collect(),
        },
    };
    let target = format!("project/{id}/bot/decisions/{prefix}");
    let entry = audit(&p, &caller, "bot.decision.add", &target);
    apply(
        &state,
        &caller,
        Record::Decision(decision.clone()),
        entry,
        true,
        json!({ "decision": decision }),
    )
    .await
}

#[handler]
async fn remove_decision(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DecisionQuery>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let prefix = parse_prefix("prefix", q.prefix.as_deref().unwrap_or(""))?;
    let key = RecordKey::Decision {
        project: id.clone(),
        prefix,
    };
    if get_record(&state, &key)?.is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("project {id} has no decision for {prefix}"),
        ));
    }
    let entry = audit(
        &p,
        &caller,
        "bot.decision.remove",
        &format!("project/{id}/bot/decisions/{prefix}"),
    );
    apply(
        &state,
        &caller,
        Command::Delete { key },
        entry,
        false,
        json!({}),
    )
    .await
}

// ---- audit ---------------------------------------------------------------------------------

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct AuditQuery {
    consistency: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// Unix ms, inclusive.
    since: Option<u64>,
    /// Unix ms, exclusive.
    until: Option<u64>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

const AUDIT_COLUMNS: [&str; 7] = [
    "seq",
    "at",
    "actor",
    "source_ip",
    "action",
    "target",
    "outcome",
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
    read_barrier(&state, q.consistency.as_deref()).await?;
    let opts = ListOpts {
        consistency: None,
        after: q.after.clone(),
        limit: q.limit,
    };
    let (items, next) = page(&state, prefix::AUDIT, &opts, |r| {
        let Record::Audit(a) = r else { return false };
        q.since.is_none_or(|t| a.at >= t)
            && q.until.is_none_or(|t| a.at < t)
            && q.actor.as_deref().is_none_or(|x| a.actor.starts_with(x))
            && q.target.as_deref().is_none_or(|x| a.target.starts_with(x))
            && q.action
                .as_deref()
                .is_none_or(|x| a.action == x || (x.ends_with('.') && a.action.starts_with(x)))
    })?;
    let entries: Vec<AuditEntry> = items
        .into_iter()
        .filter_map(|r| match r {
            Record::Audit(a) => Some(a),
            _ => None,
        })
        .collect();
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

// ---- domains -------------------------------------------------------------------------------

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    project: String,
    upstreams: Vec<String>,
    #[serde(default)]
    tls: Option<TlsMode>,
    #[serde(default)]
    redirect_https: Option<bool>,
    #[serde(default)]
    bot_override: Option<BotMode>,
}

const MAX_UPSTREAMS: usize = 64;

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
        check_upstream(&format!("upstreams[{i}]"), u)?;
    }
    let domain = Domain {
        host: host.clone(),
        project: project_id,
        upstreams: body.upstreams,
        tls: body.tls.unwrap_or_default(),
        redirect_https: body.redirect_https.unwrap_or(true),
        bot_override: body.bot_override,
    };
    let entry = audit(&p, &caller, "domain.put", &format!("domain/{host}"));
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

fn domain(state: &AdminState, host: &Hostname) -> poem::Result<Domain> {
    match get_record(state, &RecordKey::Domain { host: host.clone() })? {
        Some(Record::Domain(d)) => Ok(d),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no domain {host}"))),
    }
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

// ---- certificates --------------------------------------------------------------------------

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CertBody {
    name: String,
    chain_pem: String,
    key_pem: String,
}

#[handler]
async fn upload_cert(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<CertBody>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Admin, Within::Cluster).await?;
    let body = body.0;
    let name: Name = body
        .name
        .parse()
        .map_err(|e| invalid("name", format!("{:?}: {e}", body.name)))?;
    let (hosts, not_before, not_after, issuer) =
        palisade_raft::crypto::cert_facts(&body.chain_pem).map_err(|e| invalid("chain_pem", e))?;
    {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(body.key_pem.as_bytes())
            .map_err(|e| invalid("key_pem", e))?;
    }
    let context = RecordKey::Cert { name: name.clone() }.encode();
    let cert = Cert {
        name: name.clone(),
        hosts,
        chain_pem: body.chain_pem,
        key: state
            .cluster
            .master_key()
            .seal(body.key_pem.as_bytes(), &context),
        not_before,
        not_after,
        issuer,
        source: CertSource::Manual,
    };
    let entry = audit(&p, &caller, "certificate.upload", &format!("cert/{name}"));
    apply(
        &state,
        &caller,
        Record::Cert(cert),
        entry,
        true,
        json!({ "name": name }),
    )
    .await
}

/// Certificates without their keys: names, issuer, validity and whether they are current.
#[handler]
async fn list_certs(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    opts: QueryParams<ListOpts>,
) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let now = now_ms();
    let (items, next) = page(&state, prefix::CERT, &opts.0, |_| true)?;
    let items: Vec<_> = items
        .into_iter()
        .filter_map(|r| match r {
            Record::Cert(c) => {
                let acme = c
                    .hosts
                    .first()
                    .and_then(|h| acme_status(&state, h))
                    .map(|s| acme_json(&s));
                Some(json!({
                    "name": c.name, "hosts": c.hosts, "issuer": c.issuer, "not_before": c.not_before,
                    "not_after": c.not_after, "source": c.source,
                    "status": if c.not_after <= now { "expired" } else if c.not_before > now { "not_yet_valid" } else { "valid" },
                    "acme": acme,
                }))
            }
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

fn acme_status(state: &AdminState, host: &Hostname) -> Option<CertStatus> {
    match get_record(state, &RecordKey::CertStatus { host: host.clone() }) {
        Ok(Some(Record::CertStatus(s))) => Some(s),
        _ => None,
    }
}

fn acme_json(s: &CertStatus) -> serde_json::Value {
    json!({
        "host": s.host, "state": s.state.as_str(), "owner": s.owner, "failures": s.failures,
        "last_error": s.last_error, "last_attempt_at": s.last_attempt_at,
        "last_success_at": s.last_success_at, "next_attempt_at": s.next_attempt_at,
        "renew_requested_at": s.renew_requested_at, "orders": s.orders,
    })
}

/// Where every automatic certificate stands, including hosts that have none yet.
#[handler]
async fn list_acme(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    opts: QueryParams<ListOpts>,
) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    let (items, next) = page(&state, prefix::CERT_STATUS, &opts.0, |_| true)?;
    let items: Vec<_> = items
        .iter()
        .filter_map(|r| match r {
            Record::CertStatus(s) => Some(acme_json(s)),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

/// Renewal on request: the name's owner orders at its next pass, whatever the expiry.
#[handler]
async fn renew_cert(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(host): Path<String>,
) -> ApiResult {
    let host: Hostname = path_param("host", &host)?;
    let p = authorize(&state, &caller, Role::Admin, Within::Cluster).await?;
    let d = domain(&state, &host)?;
    if d.tls != TlsMode::Acme {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "domain {host} does not use automatic certificates (tls = {:?}); upload a certificate instead",
                d.tls
            ),
        ));
    }
    let entry = audit(&p, &caller, "certificate.renew", &format!("cert/{host}"));
    apply(
        &state,
        &caller,
        Command::RequestRenewal { host: host.clone() },
        entry,
        false,
        json!({ "host": host }),
    )
    .await
}

/// The keyring that signs clearance cookies, as operators may see it.
#[handler]
async fn list_bot_keys(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Admin, Within::Cluster).await?;
    read_barrier(&state, None).await?;
    let mut items = Vec::new();
    state
        .cluster
        .reader
        .for_each(prefix::BOTKEY, |r| {
            if let Record::BotKey(k) = r {
                items.push(json!({ "kid": k.kid, "state": k.state, "not_after": k.not_after }));
            }
        })
        .map_err(internal)?;
    Ok(Json(json!({ "items": items })).into_response())
}

// ---- settings ------------------------------------------------------------------------------

#[handler]
async fn get_settings(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    let s = match get_record(&state, &RecordKey::Settings)? {
        Some(Record::Settings(s)) => s,
        _ => ClusterSettings::default(),
    };
    Ok(Json(s).into_response())
}

#[handler]
async fn put_settings(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<ClusterSettings>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let settings = body.0;
    for (k, v) in &settings.values {
        match k.as_str() {
            "min_tls" if v != "1.2" && v != "1.3" => {
                return Err(invalid(
                    "values.min_tls",
                    format!("{v:?} must be \"1.2\" or \"1.3\""),
                ))
            }
            "min_tls" => {}
            palisade_edge::bot::ROTATION_SETTING => palisade_edge::bot::check_rotation(v)
                .map_err(|why| invalid(&format!("values.{k}"), why))?,
            other => match palisade_edge::acme::check_setting(other, v) {
                Some(Ok(())) => {}
                Some(Err(why)) => return Err(invalid(&format!("values.{other}"), why)),
                None => {
                    let known: Vec<&str> = ["min_tls", palisade_edge::bot::ROTATION_SETTING]
                        .into_iter()
                        .chain(palisade_edge::acme::SETTINGS.iter().map(|(n, ..)| *n))
                        .collect();
                    return Err(invalid(
                        &format!("values.{other}"),
                        format!("is not a setting (known: {})", known.join(", ")),
                    ));
                }
            },
        }
    }
    let entry = audit(&p, &caller, "settings.put", "settings");
    apply(
        &state,
        &caller,
        Record::Settings(settings),
        entry,
        false,
        json!({}),
    )
    .await
}
