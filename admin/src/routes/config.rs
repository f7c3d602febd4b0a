//! The whole configuration as one JSON document, and back.
//!
//! `POST /v1/config/export` (owner) answers every project, domain, IP rule, certificate,
//! API key (hashes only) and the settings. Certificate keys are sealed with the cluster's master
//! key inside the cluster; in an export they are sealed again under a key derived from the
//! passphrase the caller gives (PBKDF2, fresh salt in the document), so they stay encrypted
//! outside it and a cluster with another master key can take them in.
//!
//! `POST /v1/config/import` (owner) takes such a document and the passphrase into a cluster that
//! has no projects, domains, IP rules or certificates yet. Every record is checked first;
//! nothing is written unless all are good. Audit entries, leases, join tokens, ACME
//! challenges and bot protection keys are the cluster's own and are not carried.

use std::sync::Arc;

use palisade_raft::cluster::MAX_ENTRY_BYTES;
use palisade_raft::command::{Command, Request};
use palisade_raft::crypto::{fill_random, MasterKey};
use palisade_raft::model::{prefix, Cert, Record, Role};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json};
use poem::{handler, Body, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::authz::{authorize, Within};
use crate::http::{busy, too_large, Caller, JsonBody};
use crate::http::{error, invalid};
use crate::openapi::{op, Op};
use crate::state::AdminState;
use crate::write::{audit, cluster_error, commit, internal};

pub const FORMAT_VERSION: u32 = 1;
/// The largest import accepted (a million IP rules is about 150 MB of JSON).
const MAX_IMPORT_BYTES: u64 = 512 << 20;
const MIN_PASSPHRASE: usize = 12;
/// Kinds carried, in the order an import writes them (projects before what belongs to them).
const KINDS: [&str; 6] = [
    prefix::SETTINGS,
    prefix::PROJECT,
    prefix::DOMAIN,
    prefix::IPRULE,
    prefix::CERT,
    prefix::APIKEY,
];

pub(crate) fn ops() -> Vec<Op> {
    let owner = Some(Role::Owner);
    vec![
        op(
            Method::POST,
            "/v1/config/export",
            owner,
            "Export the whole configuration (certificate keys sealed under a passphrase)",
            export,
        )
        .json::<ExportBody>(),
        op(
            Method::POST,
            "/v1/config/import",
            owner,
            "Import an export into a cluster without configuration",
            import,
        )
        .raw(&["application/json"]),
    ]
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    /// At least 12 characters; needed again to import.
    #[schemars(length(min = 12))]
    passphrase: String,
}

/// An export document.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Export {
    format: u32,
    exported_at: u64,
    cluster_id: String,
    /// Hex salt of the passphrase key that seals certificate keys.
    salt: String,
    records: Vec<Record>,
}

fn check_passphrase(p: &str) -> poem::Result<()> {
    if p.chars().count() < MIN_PASSPHRASE {
        return Err(invalid(
            "passphrase",
            format!("must hold at least {MIN_PASSPHRASE} characters"),
        ));
    }
    Ok(())
}

/// Re-seal a certificate's key from one key to another.
fn reseal(cert: &mut Cert, from: &MasterKey, to: &MasterKey) -> Result<(), String> {
    let context = Record::Cert(cert.clone()).key().encode();
    let plain = from
        .open(&cert.key, &context)
        .map_err(|_| format!("certificate {}: its key does not open", cert.name))?;
    cert.key = to.seal(&plain, &context);
    Ok(())
}

#[handler]
async fn export(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    JsonBody(body): JsonBody<ExportBody>,
) -> poem::Result<poem::Response> {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    check_passphrase(&body.passphrase)?;
    state
        .cluster
        .linearizable_barrier()
        .await
        .map_err(cluster_error)?;
    let mut salt = [0u8; 16];
    fill_random(&mut salt);
    let passphrase = body.passphrase;
    let cluster = state.cluster.clone();
    let doc = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let outside = MasterKey::from_passphrase(&passphrase, &salt);
        let mut records = Vec::new();
        for kind in KINDS {
            let mut failed = None;
            cluster
                .reader
                .for_each(kind, |r| match r {
                    Record::Cert(mut c) => match reseal(&mut c, cluster.master_key(), &outside) {
                        Ok(()) => records.push(Record::Cert(c)),
                        Err(e) => failed = Some(e),
                    },
                    other => records.push(other),
                })
                .map_err(|e| e.to_string())?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let doc = Export {
            format: FORMAT_VERSION,
            exported_at: now_ms(),
            cluster_id: cluster.cluster_id.to_string(),
            salt: hex::encode(salt),
            records,
        };
        serde_json::to_vec(&doc).map_err(|e| e.to_string())
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let entry = audit(&p, &caller, "config.export", "config");
    commit(&state, &caller, Command::AuditOnly, entry).await?;
    Ok(poem::Response::builder()
        .content_type("application/json")
        .body(doc))
}

#[handler]
async fn import(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: Body,
) -> poem::Result<poem::Response> {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let passphrase = caller
        .headers
        .get("x-palisade-passphrase")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    check_passphrase(&passphrase).map_err(|_| {
        invalid(
            "x-palisade-passphrase",
            "the export's passphrase must come in this header",
        )
    })?;
    let Ok(_one_at_a_time) = state.imports.try_acquire() else {
        return Err(busy(
            "another import is running on this node; try again shortly",
            5,
        ));
    };
    let mut bytes = Vec::new();
    body.into_async_read()
        .take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| invalid("body", format!("could not be read: {e}")))?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(too_large(
            "body",
            format!("an import holds at most {MAX_IMPORT_BYTES} bytes"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let doc: Export = serde_path_to_error::deserialize(de)
        .map_err(|e| invalid(&format!("body.{}", e.path()), e.into_inner()))?;
    drop(bytes);
    if doc.format != FORMAT_VERSION {
        return Err(invalid(
            "format",
            format!(
                "{} is not a format this node reads ({FORMAT_VERSION})",
                doc.format
            ),
        ));
    }
    let salt = hex::decode(&doc.salt).map_err(|_| invalid("salt", "is not hex"))?;

    // Into an empty cluster only: an import is a restore, not a merge.
    for kind in [
        prefix::PROJECT,
        prefix::DOMAIN,
        prefix::IPRULE,
        prefix::CERT,
    ] {
        if state.cluster.reader.count(kind).map_err(internal)? > 0 {
            return Err(error(
                StatusCode::CONFLICT,
                format!("this cluster already has {}records; import needs one without projects, domains, IP rules or certificates", kind),
            ));
        }
    }

    // Check everything, and re-seal certificate keys for this cluster, before writing anything.
    let cluster = state.cluster.clone();
    let records = tokio::task::spawn_blocking(move || -> Result<Vec<Record>, poem::Error> {
        let outside = MasterKey::from_passphrase(&passphrase, &salt);
        let mut out = Vec::with_capacity(doc.records.len());
        for (i, r) in doc.records.into_iter().enumerate() {
            let field = format!("records[{i}]");
            let r = match r {
                Record::Cert(mut c) => {
                    reseal(&mut c, &outside, cluster.master_key())
                        .map_err(|e| invalid(&field, format!("{e} (wrong passphrase?)")))?;
                    Record::Cert(c)
                }
                // The same table `PUT /v1/settings` checks against.
                Record::Settings(settings) => {
                    settings
                        .check()
                        .map_err(|e| invalid(&format!("{field}.values.{}", e.name), e.why))?;
                    Record::Settings(settings)
                }
                r @ (Record::Project(_)
                | Record::Domain(_)
                | Record::IpRule(_)
                | Record::ApiKey(_)) => r,
                other => {
                    return Err(invalid(
                        &field,
                        format!(
                            "{} records are not carried by an import",
                            other.key().encode()
                        ),
                    ))
                }
            };
            out.push(r);
        }
        Ok(out)
    })
    .await
    .map_err(internal)??;

    // Write in kind order, in batches well under the entry limit.
    let total = records.len();
    let mut written = 0usize;
    let mut last_index = 0u64;
    let mut batch: Vec<Record> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut sorted = records;
    sorted.sort_by_key(|r| {
        let k = r.key().encode();
        KINDS
            .iter()
            .position(|p| k.starts_with(p))
            .unwrap_or(KINDS.len())
    });
    let mut pending = sorted.into_iter().peekable();
    while pending.peek().is_some() || !batch.is_empty() {
        let next_size = pending
            .peek()
            .map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0));
        let full = match next_size {
            Some(n) => batch_bytes + n > MAX_ENTRY_BYTES / 2 || batch.len() >= 2000,
            None => true,
        };
        if full && !batch.is_empty() {
            let n = batch.len();
            let entry = audit(
                &p,
                &caller,
                "config.import",
                &format!(
                    "config (records {}-{} of {total})",
                    written + 1,
                    written + n
                ),
            );
            let records = std::mem::take(&mut batch);
            batch_bytes = 0;
            let req = Request::new(Command::PutMany { records }).with_audit(entry);
            let done = format!("{written} of {total} records written before");
            let (index, _) = crate::write::written(state.cluster.write(req).await, Some(&done))?;
            written += n;
            last_index = index;
            continue;
        }
        if let Some(r) = pending.next() {
            batch_bytes += next_size.unwrap_or(0);
            batch.push(r);
        }
    }
    Ok(Json(json!({ "imported": written, "index": last_index })).into_response())
}
