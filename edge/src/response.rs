//! Responses the edge makes itself, and the security headers every response carries.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

use crate::view::SecurityHeaders;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body; boxing it allocates nothing (the body is zero-sized).
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A header value the edge makes per request (the request id, the client's address, the host),
/// cut from one buffer per thread: making it and cloning it (the upstream request and the
/// response carry the same one) allocate nothing, but for a new 1 KiB buffer about every
/// twenty values. A value that outlives its request (a response stuck behind a slow client)
/// keeps at most that 1 KiB alive. `None` when `bytes` are not a valid header value.
pub fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    use std::cell::RefCell;
    const CHUNK: usize = 1 << 10;
    thread_local! {
        static BUF: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    BUF.with_borrow_mut(|buf| {
        if buf.capacity() < bytes.len() {
            *buf = bytes::BytesMut::with_capacity(CHUNK.max(bytes.len()));
        }
        buf.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(buf.split().freeze()).ok()
    })
}

/// A small page for an error the edge itself answers, carrying the request id so an operator can
/// find the request in the logs. JSON when the client asks for JSON.
pub fn error_page(
    status: StatusCode,
    detail: &str,
    request_id: &str,
    wants_json: bool,
) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let (ctype, body) = if wants_json {
        (
            "application/json",
            serde_json::json!({ "status": status.as_u16(), "error": reason, "detail": detail, "request_id": request_id })
                .to_string(),
        )
    } else {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
                 <body><h1>{code} {reason}</h1><p>{detail}</p><p>Request id: <code>{request_id}</code></p></body></html>\n",
                code = status.as_u16()
            ),
        )
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// Set the project's security headers (values built with the view, [`SecurityHeaders`]). HSTS
/// only over HTTPS: RFC 6797 section 7.2 forbids it on plain HTTP, where a browser would ignore
/// it anyway.
pub fn apply_security_headers(headers: &mut HeaderMap, policy: &SecurityHeaders, https: bool) {
    let mut set = |name: HeaderName, value: Option<HeaderValue>| match value {
        Some(v) => {
            if policy.keep_upstream && headers.contains_key(&name) {
                return;
            }
            headers.insert(name, v);
        }
        None => {
            if !policy.keep_upstream {
                headers.remove(name);
            }
        }
    };
    if https {
        set(header::STRICT_TRANSPORT_SECURITY, policy.hsts.clone());
    }
    set(
        header::X_CONTENT_TYPE_OPTIONS,
        policy.nosniff.then(|| HeaderValue::from_static("nosniff")),
    );
    set(
        header::X_FRAME_OPTIONS,
        policy.frame_deny.then(|| HeaderValue::from_static("DENY")),
    );
    set(
        header::X_XSS_PROTECTION,
        policy
            .xss_protection
            .then(|| HeaderValue::from_static("1; mode=block")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_raft::model::HeaderPolicy;

    #[test]
    fn defaults_set_all_four_and_replace_upstream_values() {
        let mut h = HeaderMap::new();
        h.insert("x-frame-options", HeaderValue::from_static("ALLOWALL"));
        apply_security_headers(&mut h, SecurityHeaders::defaults(), true);
        assert_eq!(
            h["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-xss-protection"], "1; mode=block");
        let mut plain = HeaderMap::new();
        apply_security_headers(&mut plain, SecurityHeaders::defaults(), false);
        assert!(!plain.contains_key("strict-transport-security"));
        assert_eq!(plain["x-frame-options"], "DENY");
    }

    #[test]
    fn a_project_can_keep_upstream_values_or_turn_a_header_off() {
        let policy = HeaderPolicy {
            keep_upstream: true,
            frame_deny: true,
            xss_protection: false,
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        apply_security_headers(&mut h, &SecurityHeaders::new(&policy), true);
        assert_eq!(h["x-frame-options"], "SAMEORIGIN");
        assert!(!h.contains_key("x-xss-protection"));
        let off = HeaderPolicy {
            hsts_max_age: 0,
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        apply_security_headers(&mut h, &SecurityHeaders::new(&off), true);
        assert!(!h.contains_key("strict-transport-security"));
    }
}
