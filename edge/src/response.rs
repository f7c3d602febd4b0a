//! Responses the edge makes itself, and the security headers every response carries.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

use std::sync::Arc;

use crate::proxy::X_REQUEST_ID;
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

/// A request's id: unique per node run and cheap (a random prefix drawn once per thread, then
/// the thread's counter: no system call and no shared cache line per request), formatted on the
/// stack. The upstream request and an HTTP/1.1 response carry its bytes as they are; only h2's
/// map gets a header value made of them.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 22]);

impl RequestId {
    pub fn new() -> RequestId {
        use std::cell::Cell;
        thread_local! {
            static NEXT: Cell<Option<([u8; 12], u64)>> = const { Cell::new(None) };
        }
        let (prefix, n) = NEXT.with(|next| {
            let (prefix, n) = next.get().unwrap_or_else(|| {
                let mut b = [0u8; 6];
                palisade_raft::crypto::fill_random(&mut b);
                let mut prefix = [0u8; 12];
                hex::encode_to_slice(b, &mut prefix).expect("12 hex digits");
                (prefix, 0)
            });
            next.set(Some((prefix, n + 1)));
            (prefix, n)
        });
        let mut text = [0u8; 22];
        text[..12].copy_from_slice(&prefix);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in text[12..].iter_mut().rev().enumerate() {
            *b = HEX[((n >> (4 * i)) & 0xf) as usize];
        }
        RequestId(text)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::new()
    }
}

/// A response, and what the edge adds to every response's head ([`Finish`]). HTTP/1.1 writes
/// those fields straight into the head it sends ([`Finish::replaces`], [`Finish::write`]): no
/// map insert, no lookup; h2 puts them into the map ([`Answer::into_response`]).
pub struct Answer {
    pub response: Response<Body>,
    pub finish: Option<Finish>,
}

/// The security headers and the request id a response gets on its way out.
pub struct Finish {
    pub policy: Arc<SecurityHeaders>,
    pub https: bool,
    /// `None` for an answer given before a request had an id (a refused head).
    pub request_id: Option<RequestId>,
}

impl Finish {
    /// Put the fields into `headers`, as [`apply_security_headers`] and the request id.
    pub fn apply(&self, headers: &mut HeaderMap) {
        apply_security_headers(headers, &self.policy, self.https);
        if let Some(v) = self.request_id.and_then(|id| header_value(id.as_bytes())) {
            headers.insert(&X_REQUEST_ID, v);
        }
    }

    /// Whether a field of this name from the response is replaced (or removed) by the edge's
    /// own when written by [`Finish::write`]: the security headers (HSTS over HTTPS only, as
    /// [`apply_security_headers`]) and the request id. Only for a policy that does not keep
    /// the upstream's values (one that does goes through [`Finish::apply`]).
    pub fn replaces(&self, name: &HeaderName) -> bool {
        debug_assert!(!self.policy.keep_upstream);
        *name == header::X_CONTENT_TYPE_OPTIONS
            || *name == header::X_FRAME_OPTIONS
            || *name == header::X_XSS_PROTECTION
            || (self.https && *name == header::STRICT_TRANSPORT_SECURITY)
            || (self.request_id.is_some() && *name == X_REQUEST_ID)
    }

    /// The fields as HTTP/1.1 head lines, appended to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.policy.lines(self.https));
        if let Some(id) = &self.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl Answer {
    /// The response with the fields in its map (h2; tests).
    pub fn into_response(self) -> Response<Body> {
        let mut r = self.response;
        if let Some(f) = &self.finish {
            f.apply(r.headers_mut());
        }
        r
    }
}

/// A response that gets nothing added.
impl From<Response<Body>> for Answer {
    fn from(response: Response<Body>) -> Answer {
        Answer {
            response,
            finish: None,
        }
    }
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
