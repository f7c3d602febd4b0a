//! The request pipeline: the only place that knows the order of the stages.
//!
//! client IP -> path normal form -> host -> project/route -> IP rules -> bot protection -> upstream -> response
//! -> security headers -> observe
//!
//! IP rules are decided here, on the one resolved client IP, before anything else answers
//! (redirects included); only the ACME HTTP-01 path skips a project's lists, so that a project
//! behind an allow list can still get its certificate. Bot protection plugs in as a [`Gate`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};
use palisade_raft::crypto::MasterKey;
use palisade_raft::model::{HeaderPolicy, Project, Record, RecordKey, Verdict};
use palisade_raft::store::StateReader;

use crate::client_ip::ClientIpResolver;
use crate::proxy::{Forwarded, Proxy};
use crate::response::{apply_security_headers, error_page, full, wants_json, Body};
use crate::view::{LiveView, Route};

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the pipeline knows about a request before routing it.
pub struct RequestCtx<'a> {
    pub client_ip: IpAddr,
    pub host: &'a str,
    pub route: &'a Route,
    pub project: Option<&'a Project>,
    pub request_id: &'a str,
    pub https: bool,
    /// When the bot-protection clearance the request carried was issued, once a gate has
    /// checked it (for the counters [`Gate::observe`] feeds).
    pub cleared_at: std::cell::Cell<Option<u64>>,
}

/// A stage that may answer a request instead of letting it through (IP rules, bot protection).
pub trait Gate: Send + Sync {
    fn check(&self, ctx: &RequestCtx<'_>, req: &Request<Incoming>) -> Option<Response<Body>>;

    /// See the upstream's answer to a request every gate let through (for counters).
    fn observe(&self, _ctx: &RequestCtx<'_>, _path: &str, _status: StatusCode) {}
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The socket peer, or the source a PROXY protocol header named.
    pub peer: SocketAddr,
    pub https: bool,
    /// Whether `X-Forwarded-For` may be believed from this connection's peer (false after a
    /// PROXY `LOCAL` or `UNKNOWN` header).
    pub forwarded: bool,
}

pub struct Pipeline {
    pub view: Arc<LiveView>,
    pub reader: StateReader,
    pub master: MasterKey,
    pub client_ip: ClientIpResolver,
    pub proxy: Proxy,
    pub gates: Vec<Box<dyn Gate>>,
}

/// Unique per node run and cheap: a random prefix drawn once, then a counter (no system call
/// per request).
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 6];
        palisade_raft::crypto::fill_random(&mut b);
        hex::encode(b)
    });
    format!("{prefix}{:010x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The host a request is for (`:authority`, or the `Host` header), lower case, without port or
/// trailing dot. `Ok(None)`: it names none; `Err`: what it names is neither a DNS name (letters,
/// digits, hyphens, dots) nor an IP literal, and nothing may route by it.
fn host_of(req: &Request<Incoming>) -> Result<Option<String>, ()> {
    let Some(raw) = req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    }) else {
        return Ok(None);
    };
    let host = split_port(&raw).ok_or(())?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match valid_host(&host) {
        true => Ok(Some(host)),
        false => Err(()),
    }
}

/// `host[:port]` or `[v6][:port]` without the port; `None` when the port is not a number.
fn split_port(raw: &str) -> Option<&str> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return match after {
            "" => Some(inside),
            p => p
                .strip_prefix(':')
                .filter(|p| valid_port(p))
                .map(|_| inside),
        };
    }
    match raw.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 literal, which may not carry a port.
        Some((h, _)) if h.contains(':') => Some(raw),
        Some((h, p)) => valid_port(p).then_some(h),
        None => Some(raw),
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// A DNS name (labels of letters, digits and inner hyphens, 253 bytes at most) or an IP literal.
pub fn valid_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Pipeline {
    pub async fn handle(&self, mut req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = Instant::now();
        let request_id = new_request_id();
        let forwarded = conn.forwarded.then(|| req.headers());
        let client_ip = self.client_ip.resolve(conn.peer.ip(), forwarded);
        let json = wants_json(req.headers());
        let view = self.view.get();
        // One normal form of the path for every comparison below and for the upstream, so an
        // exemption matches what the upstream will see.
        let normal = normalize_path(&mut req);
        let Ok(host) = normal.and_then(|()| host_of(&req)) else {
            let mut resp = error_page(
                StatusCode::BAD_REQUEST,
                "The request names no valid host, or its path cannot be read.",
                &request_id,
                json,
            );
            finish(&mut resp, &HeaderPolicy::default(), conn.https, &request_id);
            metrics::counter!("palisade_requests_total", "project" => "-", "status" => "400")
                .increment(1);
            return resp;
        };
        let host = host.unwrap_or_default();
        let route = view.route(&host).cloned();
        let project = route
            .as_ref()
            .and_then(|r| view.project(&r.domain.project).cloned());
        let policy = project
            .as_ref()
            .map(|p| p.headers.clone())
            .unwrap_or_default();
        let project_label = route
            .as_ref()
            .map(|r| r.domain.project.to_string())
            .unwrap_or_else(|| "-".into());

        let acme = !conn.https && req.uri().path().starts_with(ACME_PREFIX);
        // The ACME path answers to the cluster-wide list only: the CA is on no project's list.
        let lists_of = route.as_ref().filter(|_| !acme).map(|r| &r.domain.project);
        let decision = view
            .access
            .decide(lists_of, client_ip, palisade_raft::now_ms());

        let mut resp = match route {
            _ if !decision.allowed => {
                denial(&decision, &project_label, client_ip, &request_id);
                error_page(
                    StatusCode::FORBIDDEN,
                    "Access to this site is not allowed from your network.",
                    &request_id,
                    json,
                )
            }
            None if acme => self.acme_http01(&req, &request_id, json),
            None => {
                let status = if conn.https {
                    StatusCode::MISDIRECTED_REQUEST
                } else {
                    StatusCode::NOT_FOUND
                };
                error_page(
                    status,
                    "This server does not serve that host name.",
                    &request_id,
                    json,
                )
            }
            Some(route) => {
                if acme {
                    self.acme_http01(&req, &request_id, json)
                } else if !conn.https && route.domain.redirect_https {
                    redirect(&host, &req)
                } else {
                    let ctx = RequestCtx {
                        client_ip,
                        host: &host,
                        route: &route,
                        project: project.as_deref(),
                        request_id: &request_id,
                        https: conn.https,
                        cleared_at: Default::default(),
                    };
                    match self.gates.iter().find_map(|g| g.check(&ctx, &req)) {
                        Some(denied) => denied,
                        None => {
                            let max_body = project
                                .as_ref()
                                .map(|p| p.limits.max_body_bytes)
                                .unwrap_or(10 << 20);
                            let fwd = Forwarded {
                                client_ip,
                                https: conn.https,
                                host: &host,
                                request_id: &request_id,
                                max_body,
                                wants_json: json,
                                forwarded_header: policy.forwarded,
                            };
                            let uri = req.uri().clone();
                            let resp = self.proxy.forward(req, &route, fwd).await;
                            for g in &self.gates {
                                g.observe(&ctx, uri.path(), resp.status());
                            }
                            resp
                        }
                    }
                }
            }
        };
        finish(&mut resp, &policy, conn.https, &request_id);
        let status = resp.status().as_u16().to_string();
        metrics::counter!("palisade_requests_total", "project" => project_label, "status" => status).increment(1);
        metrics::histogram!("palisade_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        resp
    }

    /// Answer an ACME HTTP-01 challenge from the replicated state, whichever node the CA reaches.
    fn acme_http01(&self, req: &Request<Incoming>, request_id: &str, json: bool) -> Response<Body> {
        let token = &req.uri().path()[ACME_PREFIX.len()..];
        let found = token
            .parse()
            .ok()
            .and_then(|token| self.reader.get(&RecordKey::Http01 { token }).ok().flatten())
            .and_then(|r| match r {
                Record::Http01(h) => {
                    let ctx = RecordKey::Http01 {
                        token: h.token.clone(),
                    }
                    .encode();
                    self.master.open(&h.key_authorization, &ctx).ok()
                }
                _ => None,
            });
        match found {
            Some(body) => {
                let mut r = Response::new(full(body));
                r.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => error_page(
                StatusCode::NOT_FOUND,
                "Unknown challenge token.",
                request_id,
                json,
            ),
        }
    }
}

/// Put the request's path in the form the upstream is sent ([`palisade_raft::model::path`]:
/// no dot segments), keeping its query; comparisons merge its slashes.
fn normalize_path(req: &mut Request<Incoming>) -> Result<(), ()> {
    let std::borrow::Cow::Owned(path) = palisade_raft::model::path::forward_form(req.uri().path())
    else {
        return Ok(());
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| ())?);
    *req.uri_mut() = hyper::Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// Count a refusal by project and list, and log a sample of them: at most
/// [`DENIAL_LOGS_PER_SECOND`] lines a second, each saying how many went unlogged before it.
fn denial(decision: &Verdict, project: &str, client_ip: IpAddr, request_id: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    let list = decision.reason.as_str();
    metrics::counter!("palisade_ip_denied_total", "project" => project.to_string(), "list" => list, "stage" => "request").increment(1);
    let second = palisade_raft::now_ms() / 1000;
    if WINDOW.swap(second, Ordering::Relaxed) != second {
        IN_WINDOW.store(0, Ordering::Relaxed);
    }
    if IN_WINDOW.fetch_add(1, Ordering::Relaxed) < DENIAL_LOGS_PER_SECOND {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        let rule = decision.rule.map(|r| r.to_string()).unwrap_or_default();
        tracing::info!(%client_ip, project, list, rule, request_id, unlogged, "request refused by IP rules");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

const DENIAL_LOGS_PER_SECOND: u64 = 10;

fn redirect(host: &str, req: &Request<Incoming>) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// Every response, errors and redirects included: the security headers and the request id.
fn finish(resp: &mut Response<Body>, policy: &HeaderPolicy, https: bool, request_id: &str) {
    apply_security_headers(resp.headers_mut(), policy, https);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_names_and_ip_literals_are_hosts() {
        let host = |raw: &str| {
            split_port(raw)
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| valid_host(h))
        };
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>)] = &[
            ("Shop.Example.COM", Some("shop.example.com")),
            ("shop.example.com:8443", Some("shop.example.com")),
            ("shop.example.com.", Some("shop.example.com")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("[::1]", Some("::1")),
            ("evil%2ecom/.example.com", None),
            ("evil.com/.example.com", None),
            ("a b.example.com", None),
            ("exa_mple.com", None),
            ("-x.example.com", None),
            ("x-.example.com", None),
            ("x..example.com", None),
            ("example.com:http", None),
            ("example.com:", None),
            ("[2001:db8::1]x", None),
            ("ex\u{e4}mple.com", None),
            ("", None),
        ];
        for (raw, want) in cases {
            assert_eq!(host(raw).as_deref(), *want, "{raw:?}");
        }
    }
}
