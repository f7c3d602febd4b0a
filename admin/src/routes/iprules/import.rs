//! Bulk import of an IP list: newline-delimited addresses and CIDRs (`text/plain`) or CSV
//! (`text/csv`: `cidr,note,expires_at`, header optional), read line by line under a size limit,
//! every line checked before anything is written (unless `partial=true`), then written in
//! batches with an id each derived from the caller's idempotency key.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use palisade_raft::command::{Command, Request};
use palisade_raft::ids::{Cidr, RequestId};
use palisade_raft::model::{IpRule, Millis, Record, Role};
use palisade_raft::now_ms;
use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{handler, Body, IntoResponse};
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{RuleQuery, Scope, IMPORT_BATCH, IMPORT_IN_FLIGHT, MAX_IMPORT_LINES, MAX_NOTE};
use crate::http::{busy, error, invalid, Caller, QueryParams};
use crate::state::AdminState;
use crate::write::{audit, cluster_error, request_id, written};

/// Bytes one import line may hold.
const MAX_LINE_BYTES: usize = 1024;
/// Bad lines reported back by number (the count covers them all).
const MAX_REPORTED_ERRORS: usize = 100;

/// One bad import line.
#[derive(serde::Serialize)]
struct BadLine {
    line: usize,
    message: String,
}

/// Read one line of at most `max` bytes into `buf` (without the line end). `Ok(false)` at the
/// end of the input; an error for a longer line, after skipping the rest of it.
async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Result<bool, ()>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Err(())
            } else {
                Ok(!buf.is_empty())
            });
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if buf.len() + part.len() > max {
            too_long = true;
        } else {
            buf.extend_from_slice(part);
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if too_long { Err(()) } else { Ok(true) });
        }
    }
}

/// Split one CSV line (RFC 4180 quoting) into fields.
fn csv_fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("text after a closing quote");
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            (_, c) => cur.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err("an unclosed quote");
    }
    fields.push(cur);
    Ok(fields)
}

/// Column positions of an import CSV.
struct Columns {
    cidr: usize,
    note: Option<usize>,
    expires_at: Option<usize>,
}

impl Columns {
    const POSITIONAL: Columns = Columns {
        cidr: 0,
        note: Some(1),
        expires_at: Some(2),
    };

    /// A header line names the columns (any order; unknown ones are ignored).
    fn from_header(fields: &[String]) -> Option<Columns> {
        let at = |name: &str| {
            fields
                .iter()
                .position(|f| f.trim().eq_ignore_ascii_case(name))
        };
        Some(Columns {
            cidr: at("cidr")?,
            note: at("note"),
            expires_at: at("expires_at"),
        })
    }
}

/// One import line as the import reads it, after `header` when the upload is a CSV with one
/// (`None`: one address or CIDR per line). The fuzz target's way in.
pub fn import_line(
    header: Option<&str>,
    line: &str,
    now: Millis,
) -> Result<Option<(Cidr, String, Option<Millis>)>, String> {
    let columns = match header {
        None => None,
        Some(h) => {
            let fields = csv_fields(h).map_err(|e| format!("CSV header: {e}"))?;
            Some(Columns::from_header(&fields).unwrap_or(Columns::POSITIONAL))
        }
    };
    parse_line(line, columns.as_ref(), now)
}

/// One import line as an entry, or what is wrong with it. `None` for blank and comment lines.
fn parse_line(
    text: &str,
    csv: Option<&Columns>,
    now: Millis,
) -> Result<Option<(Cidr, String, Option<Millis>)>, String> {
    let t = text.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let Some(cols) = csv else {
        return t
            .parse::<Cidr>()
            .map(|c| Some((c, String::new(), None)))
            .map_err(|e| e.to_string());
    };
    let fields = csv_fields(t).map_err(|e| format!("CSV: {e}"))?;
    let get = |i: Option<usize>| {
        i.and_then(|i| fields.get(i))
            .map(|s| s.trim())
            .unwrap_or("")
    };
    let cidr = get(Some(cols.cidr))
        .parse::<Cidr>()
        .map_err(|e| format!("cidr: {e}"))?;
    let note = get(cols.note).to_string();
    if note.len() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(format!(
            "note: longer than {MAX_NOTE} bytes or holds control characters"
        ));
    }
    let expires_at = match get(cols.expires_at) {
        "" => None,
        s => {
            let at: Millis = s
                .parse()
                .map_err(|_| format!("expires_at: {s:?} is not a Unix time in milliseconds"))?;
            if at <= now {
                return Err(format!("expires_at: {at} is not in the future"));
            }
            Some(at)
        }
    };
    Ok(Some((cidr, note, expires_at)))
}

#[handler]
pub(super) async fn import_rules(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    scope: Scope,
    QueryParams(q): QueryParams<RuleQuery>,
    body: Body,
) -> poem::Result<poem::Response> {
    let started = std::time::Instant::now();
    let p = scope.authorize(&state, &caller, Role::Operator).await?;
    let list = scope.list(q.list.as_deref())?;
    scope.ensure_exists(&state)?;
    let Ok(_one_at_a_time) = state.imports.try_acquire() else {
        return Err(busy(
            "another import is running on this node; try again shortly",
            5,
        ));
    };
    let csv = caller
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let now = now_ms();

    let mut reader = tokio::io::BufReader::with_capacity(1 << 16, body.into_async_read());
    let mut buf = Vec::with_capacity(MAX_LINE_BYTES);
    let mut entries: Vec<(Cidr, String, Option<Millis>)> = Vec::new();
    let mut errors = Vec::new();
    let mut bad = 0usize;
    let mut line = 0usize;
    let mut columns: Option<Columns> = None;
    loop {
        let got = read_line(&mut reader, &mut buf, MAX_LINE_BYTES)
            .await
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        line += 1;
        if let (Ok(true) | Err(()), Some(fingerprint)) = (&got, &caller.fingerprint) {
            fingerprint.feed(&buf);
            fingerprint.feed(b"\n");
        }
        let outcome = match got {
            // An empty body is a mistake (a file that was not there), not an empty list.
            Ok(false) if line == 1 => {
                return Err(invalid(
                    "body",
                    "is empty: an import needs at least one line",
                ))
            }
            Ok(false) => break,
            Err(()) => Err(format!("longer than {MAX_LINE_BYTES} bytes")),
            Ok(true) => match std::str::from_utf8(&buf) {
                Err(_) => Err("not UTF-8".to_string()),
                Ok(text) => {
                    if line > MAX_IMPORT_LINES + 1 {
                        return Err(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("an import holds at most {MAX_IMPORT_LINES} lines"),
                        ));
                    }
                    if csv && columns.is_none() {
                        let header = csv_fields(text.trim())
                            .ok()
                            .and_then(|f| Columns::from_header(&f));
                        let is_header = header.is_some();
                        columns = Some(header.unwrap_or(Columns::POSITIONAL));
                        if is_header {
                            continue;
                        }
                    }
                    parse_line(text, columns.as_ref(), now)
                }
            },
        };
        match outcome {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => {}
            Err(message) => {
                bad += 1;
                if errors.len() < MAX_REPORTED_ERRORS {
                    errors.push(BadLine { line, message });
                }
            }
        }
    }
    if entries.len() > MAX_IMPORT_LINES {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an import holds at most {MAX_IMPORT_LINES} entries"),
        ));
    }
    // With `partial`, the good lines are imported; with none good, nothing is, and that fails.
    if bad > 0 && (q.partial != Some(true) || entries.is_empty()) {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({
                "code": "invalid", "field": "body",
                "message": format!("{bad} bad line(s); nothing was imported (partial=true imports the good ones)"),
                "error": format!("{bad} bad line(s); nothing was imported"),
                "invalid": bad, "errors": errors,
            })),
        )
            .into_response());
    }

    // Every batch carries the whole import's fingerprint: the same key on another body is
    // refused at its first batch, before anything of it is written.
    let base = match caller.headers.get("idempotency-key") {
        Some(_) => Some((
            request_id(&caller)?,
            caller.fingerprint.as_ref().map(|f| f.value()),
        )),
        None => None,
    };
    let actor = format!("key:{}", p.key_id);
    let total = entries.len();
    // Batches are taken from the parsed entries as they are sent, not copied up front.
    let mut entries = entries.into_iter();
    let batches = std::iter::from_fn(move || {
        let batch: Vec<_> = entries.by_ref().take(IMPORT_BATCH).collect();
        (!batch.is_empty()).then_some(batch)
    });
    let mut imported = 0usize;
    let mut last_index = 0u64;
    let mut results = futures::stream::iter(batches.enumerate())
        .map(|(i, batch)| {
            let records: Vec<Record> = batch
                .into_iter()
                .map(|(cidr, note, expires_at)| {
                    Record::IpRule(IpRule {
                        project: scope.0.clone(),
                        list,
                        cidr,
                        note,
                        created_by: actor.clone(),
                        created_at: now,
                        expires_at,
                    })
                })
                .collect();
            let n = records.len();
            let first = i * IMPORT_BATCH + 1;
            let target = format!(
                "{}/ip-rules/{} (entries {first}-{})",
                scope.label(),
                list.as_str(),
                first + n - 1
            );
            let mut req = Request::new(Command::PutMany { records }).with_audit(audit(
                &p,
                &caller,
                "ip_rule.import",
                &target,
            ));
            if let Some((base, fingerprint)) = &base {
                // Each batch has its own id, derived from the caller's: a retried import applies
                // every batch once.
                if let Ok(id) = format!("{base}#{i}").parse::<RequestId>() {
                    req = req.with_id(id);
                }
                if let Some(fingerprint) = fingerprint {
                    req = req.with_fingerprint(fingerprint.clone());
                }
            }
            let cluster = state.cluster.clone();
            async move { (n, cluster.write(req).await) }
        })
        .buffered(IMPORT_IN_FLIGHT);
    while let Some((n, result)) = results.next().await {
        let done =
            format!("{imported} of {total} entries written before (the import is safe to repeat)");
        let (index, _) = written(result, Some(&done))?;
        imported += n;
        last_index = last_index.max(index);
    }
    if caller.wait_all && last_index > 0 {
        state
            .cluster
            .wait_applied_everywhere(last_index, Duration::from_secs(30))
            .await
            .map_err(cluster_error)?;
    }
    tracing::info!(scope = %scope.label(), list = list.as_str(), entries = imported, invalid = bad, ms = started.elapsed().as_millis() as u64, "IP rules imported");
    Ok(Json(json!({
        "imported": imported, "invalid": bad, "errors": errors, "index": last_index,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response())
}
