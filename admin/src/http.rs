//! Request plumbing every admin route shares: who is calling, JSON bodies read under a size limit
//! with errors that name the field, and the one error shape.
//!
//! Every error is `{"code", "field", "message", "error"}`: `code` is stable and machine-readable,
//! `field` names the input at fault (`null` when none does), `message` says what is wrong with
//! it, and `error` is the two joined for people.

use std::net::IpAddr;

use palisade_raft::crypto::Sha256;
use poem::http::{HeaderMap, Method, StatusCode};
use poem::web::Json;
use poem::{FromRequest, IntoResponse, Request, RequestBody};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::AsyncReadExt;

/// The largest JSON body any route reads; bulk data (IP rule imports) is streamed instead.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// An oversized body up to this size is read and dropped before the 413, so the client sees
/// the answer; a larger one gets the 413 at once and the connection is closed.
const DRAIN_LIMIT: u64 = 64 << 20;

fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "idempotency_key_reused",
        429 => "busy",
        503 => "unavailable",
        504 => "timeout",
        _ => "internal",
    }
}

fn fail(status: StatusCode, field: Option<&str>, message: impl std::fmt::Display) -> poem::Error {
    let message = message.to_string();
    let joined = match field {
        Some(f) => format!("{f}: {message}"),
        None => message.clone(),
    };
    let body = json!({ "code": code(status), "field": field, "message": message, "error": joined });
    poem::Error::from_response((status, Json(body)).into_response())
}

/// An error that no single input field caused.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> poem::Error {
    fail(status, None, message)
}

/// 409 for an input that names something the cluster's state refuses (a node that is not a
/// voter): `field` names it.
pub(crate) fn conflict(field: &str, message: impl std::fmt::Display) -> poem::Error {
    fail(StatusCode::CONFLICT, Some(field), message)
}

/// 400 for one bad input: `field` names it (a body path such as `upstreams[1]`, a query
/// parameter, or a path segment).
pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> poem::Error {
    fail(StatusCode::BAD_REQUEST, Some(field), message)
}

/// 429 with `Retry-After`: the node does one of these at a time.
pub(crate) fn busy(message: impl std::fmt::Display, retry_after_secs: u64) -> poem::Error {
    let message = message.to_string();
    let body = json!({ "code": "busy", "field": null, "message": message, "error": message });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    if let Ok(v) = retry_after_secs.to_string().parse() {
        resp.headers_mut()
            .insert(poem::http::header::RETRY_AFTER, v);
    }
    poem::Error::from_response(resp)
}

pub(crate) fn too_large(field: &str, message: impl std::fmt::Display) -> poem::Error {
    fail(StatusCode::PAYLOAD_TOO_LARGE, Some(field), message)
}

/// 422: the idempotency key was used before, for a request other than this one.
pub(crate) fn idempotency_reused(message: impl std::fmt::Display) -> poem::Error {
    fail(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("idempotency-key"),
        message,
    )
}

/// What a changing request is, so that a retry under the same idempotency key can be told from
/// a different request that reuses it: a digest of the method, path, query (but `wait`, which
/// changes only when the answer comes), content type and body. The body is fed in as the route
/// reads it (a JSON body whole, an import line by line), so nothing is buffered for it.
#[derive(Clone)]
pub struct Fingerprint(std::sync::Arc<std::sync::Mutex<Sha256>>);

impl Fingerprint {
    pub fn of_head(req: &Request) -> Self {
        let mut h = Sha256::default();
        let mut part = |p: &[u8]| {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        };
        part(req.method().as_str().as_bytes());
        part(req.uri().path().as_bytes());
        for pair in req.uri().query().unwrap_or("").split('&') {
            if !pair.is_empty() && !pair.starts_with("wait=") {
                part(pair.as_bytes());
            }
        }
        let ct = req.content_type().unwrap_or("");
        part(ct.split(';').next().unwrap_or("").trim().as_bytes());
        Fingerprint(std::sync::Arc::new(std::sync::Mutex::new(h)))
    }

    pub fn feed(&self, bytes: &[u8]) {
        if let Ok(mut h) = self.0.lock() {
            h.update(bytes);
        }
    }

    pub fn value(&self) -> String {
        match self.0.lock() {
            Ok(h) => h.hex(),
            Err(poisoned) => poisoned.into_inner().hex(),
        }
    }
}

/// The caller of a request: source address, method and path, headers, and whether it asked a
/// write to wait until every voter has applied it (`?wait=all`).
pub struct Caller {
    pub ip: Option<IpAddr>,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub wait_all: bool,
    /// The key's owner, when the route's operation has checked the key already.
    pub principal: Option<crate::auth::Principal>,
    /// What a changing request is, for its idempotency key (see [`Fingerprint`]).
    pub fingerprint: Option<Fingerprint>,
}

impl Caller {
    pub fn source(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// The bearer token, trimmed; empty when there is none.
    pub fn bearer(&self) -> &str {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("")
    }
}

impl<'a> FromRequest<'a> for Caller {
    async fn from_request(req: &'a Request, _: &mut RequestBody) -> poem::Result<Self> {
        let mut wait_all = false;
        for pair in req.uri().query().unwrap_or("").split('&') {
            if let Some(v) = pair.strip_prefix("wait=") {
                wait_all = match v {
                    "all" => true,
                    "leader" => false,
                    other => {
                        return Err(invalid(
                            "wait",
                            format!("must be all or leader, not {other:?}"),
                        ))
                    }
                };
            }
        }
        Ok(Caller {
            ip: req
                .remote_addr()
                .as_socket_addr()
                .map(|a| a.ip().to_canonical()),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            headers: req.headers().clone(),
            wait_all,
            principal: req.extensions().get::<crate::auth::Principal>().cloned(),
            fingerprint: req.extensions().get::<Fingerprint>().cloned(),
        })
    }
}

/// A JSON body read under [`MAX_JSON_BODY`] and parsed into `T`; a parse error names the path of
/// the field at fault (`upstreams[2]`, `headers.hsts_max_age`) and an unknown field names itself.
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body is `None` (every field defaulted).
pub struct OptionalJsonBody<T>(pub Option<T>);

async fn read_json<T: DeserializeOwned + serde::Serialize>(
    req: &Request,
    body: &mut RequestBody,
) -> poem::Result<Option<T>> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let over = || {
        too_large(
            "body",
            format!("a JSON body may hold at most {MAX_JSON_BODY} bytes"),
        )
    };
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(over());
    }
    if let Some(ct) = req.content_type() {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") && !essence.ends_with("+json") {
            return Err(fail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("content-type"),
                format!("must be application/json, not {essence:?}"),
            ));
        }
    }
    let mut reader = body.take()?.into_async_read();
    let mut bytes = Vec::new();
    (&mut reader)
        .take(MAX_JSON_BODY as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| invalid("body", format!("could not be read: {e}")))?;
    if bytes.len() > MAX_JSON_BODY {
        // Read the rest (within reason) before answering, so the client, still sending, gets
        // the 413 rather than a reset connection.
        let mut rest = reader.take(DRAIN_LIMIT);
        let mut sink = tokio::io::sink();
        let drain = tokio::io::copy(&mut rest, &mut sink);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        return Err(over());
    }
    if let Some(fingerprint) = req.extensions().get::<Fingerprint>() {
        fingerprint.feed(&bytes);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Parsed once into a tree: broken JSON is the body's fault; the typed value is read from the
    // tree, which the unknown-field check below needs anyway.
    let given: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid("body", e))?;
    match serde_path_to_error::deserialize::<_, T>(&given) {
        Ok(v) => {
            // Types shared with the store accept fields they do not know (a record written by a
            // newer version must stay readable); a request must not. Whatever the input holds
            // that the parsed value does not is a field nobody will act on.
            let kept = serde_json::to_value(&v)
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            if let Some(field) = first_unknown(&given, &kept, "") {
                return Err(invalid(&field, "unknown field"));
            }
            Ok(Some(v))
        }
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // The path of an unknown field ends with its name already.
            let field = match unknown_field(&message) {
                Some(name) if path == "." => name.to_string(),
                Some(name) if !path.ends_with(name) => format!("{path}.{name}"),
                _ if path == "." => "body".to_string(),
                _ => path,
            };
            Err(invalid(&field, message))
        }
    }
}

/// The path of the first object key in `given` that `kept` (the parsed value written back) lacks.
fn first_unknown(
    given: &serde_json::Value,
    kept: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (given, kept) {
        (Value::Object(g), Value::Object(k)) => g.iter().find_map(|(name, v)| {
            let here = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match k.get(name) {
                None => Some(here),
                Some(kv) => first_unknown(v, kv, &here),
            }
        }),
        (Value::Array(g), Value::Array(k)) => g
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (gv, kv))| first_unknown(gv, kv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The name in serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(name, _)| name)
}

impl<'a, T: DeserializeOwned + serde::Serialize> FromRequest<'a> for JsonBody<T> {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        read_json(req, body)
            .await?
            .map(JsonBody)
            .ok_or_else(|| invalid("body", "a JSON body is required"))
    }
}

impl<'a, T: DeserializeOwned + serde::Serialize> FromRequest<'a> for OptionalJsonBody<T> {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        read_json(req, body).await.map(OptionalJsonBody)
    }
}

/// Query parameters parsed into `T`; a bad value is a 400 naming the parameter.
pub struct QueryParams<T>(pub T);

impl<'a, T: DeserializeOwned> FromRequest<'a> for QueryParams<T> {
    async fn from_request(req: &'a Request, _: &mut RequestBody) -> poem::Result<Self> {
        let query = req.uri().query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." {
                    "query".to_string()
                } else {
                    field
                };
                invalid(&field, e.into_inner())
            })
    }
}

/// One CSV field, quoted when it must be.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The longest lifetime anything given an expiry through the API may have.
pub(crate) const MAX_TTL_SECONDS: u64 = 10 * 365 * 86_400;

/// When something given `expires_at` (Unix ms) or `ttl_seconds` (not both) expires; `None`
/// for never.
pub(crate) fn expiry(
    expires_at: Option<u64>,
    ttl_seconds: Option<u64>,
    now: u64,
) -> poem::Result<Option<u64>> {
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err(invalid(
            "ttl_seconds",
            "give expires_at or ttl_seconds, not both",
        )),
        (Some(at), None) if at <= now => Err(invalid(
            "expires_at",
            format!("{at} is not in the future (now is {now}, Unix ms)"),
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(ttl)) if ttl == 0 || ttl > MAX_TTL_SECONDS => Err(invalid(
            "ttl_seconds",
            format!("{ttl} is not between 1 and {MAX_TTL_SECONDS}"),
        )),
        (None, Some(ttl)) => Ok(Some(now + ttl * 1000)),
        (None, None) => Ok(None),
    }
}

/// A path segment parsed into its type, or 400 naming the segment.
pub(crate) fn path_param<T: std::str::FromStr>(name: &str, value: &str) -> poem::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| invalid(name, format!("{value:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(
            unknown_field("unknown field `colour`, expected one of `name`"),
            Some("colour")
        );
        assert_eq!(unknown_field("invalid type: string"), None);
        let given =
            json!({"name": "a", "headers": {"hsts": 1, "nosniff": true}, "list": [{"x": 1}]});
        let kept = json!({"name": "a", "headers": {"nosniff": true}, "list": [{"x": 1}]});
        assert_eq!(
            first_unknown(&given, &kept, ""),
            Some("headers.hsts".into())
        );
        assert_eq!(first_unknown(&kept, &kept, ""), None);
    }
}
