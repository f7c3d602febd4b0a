//! The `/v1` routes. Errors are JSON `{"error": "..."}` with a status that says whether a retry
//! can help (503) or not (4xx).

use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::{Cluster, ClusterError};
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::ids::{Hostname, Name, ProjectId, RequestId};
use palisade_raft::model::{
    prefix, AuditEntry, Cert, CertSource, ClusterSettings, Domain, Project, Record, RecordKey,
    Role, TlsMode,
};
use palisade_raft::now_ms;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json, Path, Query, RemoteAddr};
use poem::{delete, get, handler, post, EndpointExt, IntoResponse, Route};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{authenticate, AuthError, Principal};

pub struct AdminState {
    pub cluster: Arc<Cluster>,
    /// This node's edge view: what the data plane enforces (the IP rule check reads it).
    pub view: Arc<palisade_edge::view::LiveView>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn routes(state: Arc<AdminState>) -> impl poem::Endpoint {
    let route = Route::new()
        .at("/v1/health", get(health))
        .at("/metrics", get(prometheus))
        .at("/v1/cluster/status", get(cluster_status))
        .at("/v1/cluster/join-tokens", post(create_join_token))
        .at("/v1/cluster/members/:id", delete(remove_member))
        .at("/v1/projects", get(list_projects).post(create_project))
        .at("/v1/projects/:id", get(get_project))
        .at("/v1/audit", get(list_audit))
        .at("/v1/domains", get(list_domains))
        .at(
            "/v1/domains/:host",
            get(get_domain).put(put_domain).delete(delete_domain),
        )
        .at("/v1/certificates", get(list_certs).post(upload_cert))
        .at("/v1/settings", get(get_settings).put(put_settings));
    crate::iprules::routes(route).data(state)
}

type ApiResult = poem::Result<poem::Response>;

pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> poem::Error {
    poem::Error::from_response((status, Json(json!({ "error": msg.to_string() }))).into_response())
}

pub(crate) fn cluster_error(e: ClusterError) -> poem::Error {
    let status = match &e {
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        ClusterError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

pub(crate) fn authorize(
    state: &AdminState,
    headers: &HeaderMap,
    needs: Role,
) -> poem::Result<Principal> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    authenticate(&state.cluster.reader, key.trim(), needs, now_ms()).map_err(|e| match e {
        AuthError::Forbidden => error(StatusCode::FORBIDDEN, e),
        _ => error(StatusCode::UNAUTHORIZED, e),
    })
}

pub(crate) fn request_id(headers: &HeaderMap) -> poem::Result<RequestId> {
    match headers.get("idempotency-key") {
        None => Ok(RequestId::random()),
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 128 printable characters",
            )
        }),
    }
}

pub(crate) fn audit(p: &Principal, remote: &RemoteAddr, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: now_ms(),
        actor: format!("key:{}", p.key_id),
        source_ip: remote
            .as_socket_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: "ok".to_string(),
    }
}

#[derive(Deserialize)]
pub(crate) struct ReadOpts {
    /// `linearizable` (default) or `local`.
    pub(crate) consistency: Option<String>,
}

pub(crate) async fn read_barrier(state: &AdminState, opts: &ReadOpts) -> poem::Result<()> {
    match opts.consistency.as_deref() {
        None | Some("linearizable") => state
            .cluster
            .linearizable_barrier()
            .await
            .map(|_| ())
            .map_err(cluster_error),
        Some("local") => Ok(()),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("consistency must be linearizable or local, not {other:?}"),
        )),
    }
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

/// Prometheus text: the edge's, the transport's and the admin API's counters (viewer key; a
/// scraper sends it as a bearer token).
#[handler]
async fn prometheus(state: Data<&Arc<AdminState>>, headers: &HeaderMap) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    let s = state.cluster.local_status();
    metrics::gauge!("palisade_raft_applied_index").set(s.applied as f64);
    metrics::gauge!("palisade_raft_is_leader")
        .set(f64::from(u8::from(s.leader == Some(s.node_id))));
    Ok(poem::Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

#[handler]
async fn cluster_status(state: Data<&Arc<AdminState>>, headers: &HeaderMap) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    Ok(Json(state.cluster.status().await).into_response())
}

#[derive(Deserialize)]
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
    headers: &HeaderMap,
    body: Option<Json<TokenBody>>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Owner)?;
    let ttl = body
        .map(|b| b.ttl_seconds)
        .unwrap_or_else(default_token_ttl);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ttl_seconds must be between 1 and 604800",
        ));
    }
    let token = state
        .cluster
        .create_join_token(
            Duration::from_secs(ttl),
            &format!("key:{}", p.key_id),
            now_ms(),
        )
        .await
        .map_err(cluster_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "ttl_seconds": ttl })),
    )
        .into_response())
}

#[handler]
async fn remove_member(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    Path(id): Path<u64>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Owner)?;
    state
        .cluster
        .remove_member(id)
        .await
        .map_err(cluster_error)?;
    let entry = audit(&p, remote, "cluster.member.remove", &format!("node/{id}"));
    // Membership changes are Raft entries of their own; the audit entry follows them.
    let _ = state
        .cluster
        .write(Request::new(Command::AuditOnly).with_audit(entry))
        .await;
    Ok(Json(json!({ "removed": id })).into_response())
}

#[derive(Deserialize)]
struct NewProject {
    id: String,
    name: String,
    #[serde(default)]
    headers: Option<palisade_raft::model::HeaderPolicy>,
    #[serde(default)]
    limits: Option<palisade_raft::model::Limits>,
}

#[handler]
async fn create_project(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: poem::Result<Json<NewProject>>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Admin)?;
    let Json(body) = body.map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let id: ProjectId = body
        .id
        .parse()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let project = Project {
        id: id.clone(),
        name: body.name,
        headers: body.headers.unwrap_or_default(),
        bot: Default::default(),
        limits: body.limits.unwrap_or_default(),
        created_at: now_ms(),
    };
    let entry = audit(&p, remote, "project.create", &format!("project/{id}"));
    let command = Command::Put {
        record: Record::Project(project.clone()),
    };
    let (index, duplicate) = commit(&state, headers, command, entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "project": project, "index": index, "duplicate": duplicate })),
    )
        .into_response())
}

#[handler]
async fn get_project(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Path(id): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    let id: ProjectId = id.parse().map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    read_barrier(&state, &opts).await?;
    match state
        .cluster
        .reader
        .get(&RecordKey::Project { id: id.clone() })
    {
        Ok(Some(Record::Project(p))) => Ok(Json(p).into_response()),
        Ok(_) => Err(error(StatusCode::NOT_FOUND, format!("no project {id}"))),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

#[derive(Deserialize)]
struct ListOpts {
    consistency: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    action: Option<String>,
}

fn page(
    state: &AdminState,
    pfx: &str,
    opts: &ListOpts,
    keep: impl Fn(&Record) -> bool,
) -> poem::Result<Vec<Record>> {
    let limit = opts.limit.unwrap_or(100).clamp(1, 10_000);
    let after = opts.after.as_ref().map(|a| format!("{pfx}{a}"));
    let records = state
        .cluster
        .reader
        .scan(pfx, after.as_deref(), usize::MAX)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(records
        .into_iter()
        .filter(|r| keep(r))
        .take(limit)
        .collect())
}

#[handler]
async fn list_projects(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Query(opts): Query<ListOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    read_barrier(
        &state,
        &ReadOpts {
            consistency: opts.consistency.clone(),
        },
    )
    .await?;
    let items = page(&state, prefix::PROJECT, &opts, |_| true)?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[handler]
async fn list_audit(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Query(opts): Query<ListOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    read_barrier(
        &state,
        &ReadOpts {
            consistency: opts.consistency.clone(),
        },
    )
    .await?;
    let action = opts.action.clone();
    let items = page(&state, prefix::AUDIT, &opts, |r| match (r, &action) {
        (Record::Audit(a), Some(want)) => &a.action == want,
        _ => true,
    })?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// Write one command with its audit entry; 201/200 with the applied index, 409 when refused.
async fn apply(
    state: &AdminState,
    headers: &HeaderMap,
    command: Command,
    audit: AuditEntry,
    created: bool,
) -> ApiResult {
    let (index, duplicate) = commit(state, headers, command, audit).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "index": index, "duplicate": duplicate })),
    )
        .into_response())
}

/// Write one command with its audit entry under the caller's idempotency key; the applied log
/// index and whether this was a retry, or 409 when the state machine refused it.
pub(crate) async fn commit(
    state: &AdminState,
    headers: &HeaderMap,
    command: Command,
    audit: AuditEntry,
) -> poem::Result<(u64, bool)> {
    let req = Request::new(command)
        .with_id(request_id(headers)?)
        .with_audit(audit);
    match state.cluster.write(req).await.map_err(cluster_error)? {
        Response::Applied { index, duplicate } => Ok((index, duplicate)),
        Response::Refused { reason } => Err(error(StatusCode::CONFLICT, reason)),
        other => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

fn bad_request(e: impl std::fmt::Display) -> poem::Error {
    error(StatusCode::BAD_REQUEST, e)
}

#[derive(Deserialize)]
struct DomainBody {
    project: String,
    upstreams: Vec<String>,
    #[serde(default)]
    tls: Option<TlsMode>,
    #[serde(default)]
    redirect_https: Option<bool>,
}

#[handler]
async fn put_domain(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    Path(host): Path<String>,
    body: poem::Result<Json<DomainBody>>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Operator)?;
    let Json(body) = body.map_err(|e| bad_request(format!("body: {e}")))?;
    let host: Hostname = host.parse().map_err(bad_request)?;
    let project: ProjectId = body.project.parse().map_err(bad_request)?;
    if state
        .cluster
        .reader
        .get(&RecordKey::Project {
            id: project.clone(),
        })
        .ok()
        .flatten()
        .is_none()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no project {project}"),
        ));
    }
    for (i, u) in body.upstreams.iter().enumerate() {
        if u.rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p))
            .and_then(|p| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(bad_request(format!(
                "upstreams[{i}] = {u:?} must be HOST:PORT"
            )));
        }
    }
    let domain = Domain {
        host: host.clone(),
        project,
        upstreams: body.upstreams,
        tls: body.tls.unwrap_or_default(),
        redirect_https: body.redirect_https.unwrap_or(true),
        bot_override: None,
    };
    let entry = audit(&p, remote, "domain.put", &format!("domain/{host}"));
    apply(
        &state,
        headers,
        Command::Put {
            record: Record::Domain(domain),
        },
        entry,
        true,
    )
    .await
}

#[handler]
async fn delete_domain(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    Path(host): Path<String>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Operator)?;
    let host: Hostname = host.parse().map_err(bad_request)?;
    let entry = audit(&p, remote, "domain.delete", &format!("domain/{host}"));
    apply(
        &state,
        headers,
        Command::Delete {
            key: RecordKey::Domain { host },
        },
        entry,
        false,
    )
    .await
}

#[handler]
async fn get_domain(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Path(host): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    let host: Hostname = host.parse().map_err(bad_request)?;
    read_barrier(&state, &opts).await?;
    match state
        .cluster
        .reader
        .get(&RecordKey::Domain { host: host.clone() })
    {
        Ok(Some(Record::Domain(d))) => Ok(Json(d).into_response()),
        Ok(_) => Err(error(StatusCode::NOT_FOUND, format!("no domain {host}"))),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

#[handler]
async fn list_domains(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Query(opts): Query<ListOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    read_barrier(
        &state,
        &ReadOpts {
            consistency: opts.consistency.clone(),
        },
    )
    .await?;
    let items = page(&state, prefix::DOMAIN, &opts, |_| true)?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize)]
struct CertBody {
    name: String,
    chain_pem: String,
    key_pem: String,
}

/// Names and validity (Unix ms) of the first certificate of a PEM chain.
fn cert_facts(chain_pem: &str) -> Result<(Vec<Hostname>, u64, u64, String), String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .map_err(|e| format!("chain_pem: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("chain_pem: {e}"))?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                hosts.push(
                    d.parse::<Hostname>()
                        .map_err(|e| format!("chain_pem: {e}"))?,
                );
            }
        }
    }
    if hosts.is_empty() {
        return Err("chain_pem: the certificate names no DNS host (subjectAltName)".into());
    }
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((
        hosts,
        ms(cert.validity().not_before),
        ms(cert.validity().not_after),
        cert.issuer().to_string(),
    ))
}

#[handler]
async fn upload_cert(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: poem::Result<Json<CertBody>>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Admin)?;
    let Json(body) = body.map_err(|e| bad_request(format!("body: {e}")))?;
    let name: Name = body.name.parse().map_err(bad_request)?;
    let (hosts, not_before, not_after, issuer) =
        cert_facts(&body.chain_pem).map_err(bad_request)?;
    {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(body.key_pem.as_bytes())
            .map_err(|e| bad_request(format!("key_pem: {e}")))?;
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
    let entry = audit(&p, remote, "certificate.upload", &format!("cert/{name}"));
    apply(
        &state,
        headers,
        Command::Put {
            record: Record::Cert(cert),
        },
        entry,
        true,
    )
    .await
}

#[handler]
async fn list_certs(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    Query(opts): Query<ListOpts>,
) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    read_barrier(
        &state,
        &ReadOpts {
            consistency: opts.consistency.clone(),
        },
    )
    .await?;
    let items: Vec<_> = page(&state, prefix::CERT, &opts, |_| true)?
        .into_iter()
        .filter_map(|r| match r {
            Record::Cert(c) => Some(json!({
                "name": c.name, "hosts": c.hosts, "issuer": c.issuer, "not_before": c.not_before,
                "not_after": c.not_after, "source": c.source,
            })),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[handler]
async fn get_settings(state: Data<&Arc<AdminState>>, headers: &HeaderMap) -> ApiResult {
    authorize(&state, headers, Role::Viewer)?;
    let s = match state.cluster.reader.get(&RecordKey::Settings) {
        Ok(Some(Record::Settings(s))) => s,
        _ => ClusterSettings::default(),
    };
    Ok(Json(s).into_response())
}

#[handler]
async fn put_settings(
    state: Data<&Arc<AdminState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: poem::Result<Json<ClusterSettings>>,
) -> ApiResult {
    let p = authorize(&state, headers, Role::Owner)?;
    let Json(settings) = body.map_err(|e| bad_request(format!("body: {e}")))?;
    if let Some(v) = settings.values.get("min_tls") {
        if v != "1.2" && v != "1.3" {
            return Err(bad_request(format!(
                "min_tls = {v:?} must be \"1.2\" or \"1.3\""
            )));
        }
    }
    let entry = audit(&p, remote, "settings.put", "settings");
    apply(
        &state,
        headers,
        Command::Put {
            record: Record::Settings(settings),
        },
        entry,
        false,
    )
    .await
}
