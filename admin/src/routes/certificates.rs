//! Certificates: upload (manual TLS), list without keys, the automatic certificates' status,
//! and renewal on request.

use std::sync::Arc;

use palisade_raft::command::Command;
use palisade_raft::ids::{Hostname, Name, ProjectId};
use palisade_raft::model::{
    prefix, schema, Cert, CertSource, CertStatus, Record, RecordKey, Role, TlsMode,
};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{error, invalid, path_param, Caller, JsonBody, QueryParams};
use crate::openapi::{op, Op, ADMIN, VIEWER};
use crate::read::{domain, get_record, page, read_barrier, ListOpts};
use crate::state::AdminState;
use crate::write::{apply, audit, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/v1/certificates",
            VIEWER,
            "List certificates: names, issuer, expiry, status",
            list_certs,
        )
        .query::<ListOpts>(),
        op(
            Method::POST,
            "/v1/certificates",
            ADMIN,
            "Upload a certificate and key (manual TLS)",
            upload_cert,
        )
        .json::<CertBody>(),
        op(
            Method::GET,
            "/v1/certificates/acme",
            VIEWER,
            "Automatic certificates: state, owner, failures, last error, next attempt per host",
            list_acme,
        )
        .query::<ListOpts>(),
        op(
            Method::POST,
            "/v1/certificates/:host/renew",
            ADMIN,
            "Ask for a new certificate for a host now",
            renew_cert,
        ),
    ]
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CertBody {
    #[schemars(with = "schema::NameText")]
    name: String,
    /// PEM: the leaf certificate first, then its intermediates.
    #[schemars(with = "PemChain")]
    chain_pem: String,
    /// PEM: the leaf's private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(with = "PemKey")]
    key_pem: String,
    /// Serve it for this project's domains only (none: for any project's).
    #[serde(default)]
    #[schemars(with = "Option<schema::ProjectIdText>")]
    project: Option<String>,
}

palisade_raft::schema_type!(
    PemChain,
    serde_json::json!({ "type": "string", "format": "pem-chain", "minLength": 1 })
);
palisade_raft::schema_type!(
    PemKey,
    serde_json::json!({ "type": "string", "format": "pem-key", "minLength": 1 })
);

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
    let project = match &body.project {
        None => None,
        Some(id) => {
            let id: ProjectId = id
                .parse()
                .map_err(|e| invalid("project", format!("{id:?}: {e}")))?;
            crate::read::project(&state, &id)?;
            Some(id)
        }
    };
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
        project,
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
                    "not_after": c.not_after, "source": c.source, "project": c.project,
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
