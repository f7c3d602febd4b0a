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

use crate::h1::RequestBody;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};
use palisade_raft::crypto::MasterKey;
use palisade_raft::model::{Project, Record, RecordKey, Verdict};
use palisade_raft::store::StateReader;

use crate::client_ip::ClientIpResolver;
use crate::proxy::{Forwarded, Proxy};
use crate::response::{error_page, full, wants_json, Answer, Body, Finish, RequestId};
use crate::view::{LiveView, Route, SecurityHeaders, StatusCounters};

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the pipeline knows about a request before routing it.
pub struct RequestCtx<'a> {
    pub client_ip: IpAddr,
    pub host: &'a str,
    pub route: &'a Route,
    pub project: Option<&'a Project>,
    pub request_id: &'a str,
    pub https: bool,
    /// The wall clock when the request arrived (Unix ms), read once for every stage.
    pub now: u64,
    /// When the bot-protection clearance the request carried was issued, once a gate has
    /// checked it (for the counters [`Gate::observe`] feeds).
    pub cleared_at: std::cell::Cell<Option<u64>>,
}

/// A stage that may answer a request instead of letting it through (IP rules, bot protection).
pub trait Gate: Send + Sync {
    fn check(&self, ctx: &RequestCtx<'_>, req: &Request<RequestBody>) -> Option<Response<Body>>;

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

/// Where a request names its host: h2's `:authority` or the `Host` header. Both share the
/// buffer the request was read into, so keeping one costs no copy.
enum HostSource {
    Authority(hyper::http::uri::Authority),
    Header(HeaderValue),
}

impl HostSource {
    fn of(req: &Request<RequestBody>) -> Option<HostSource> {
        match req.uri().authority() {
            Some(a) => Some(HostSource::Authority(a.clone())),
            None => req.headers().get(HOST).cloned().map(HostSource::Header),
        }
    }

    /// `None` when it is not text (and so no host).
    fn as_str(&self) -> Option<&str> {
        match self {
            // Without userinfo and port.
            HostSource::Authority(a) => Some(a.host()),
            HostSource::Header(h) => h.to_str().ok(),
        }
    }
}

/// The host a request is for, lower case, without port or trailing dot (a copy only when it was
/// not lower case). `Ok(None)`: it names none; `Err`: what it names is neither a DNS name
/// (letters, digits, hyphens, dots) nor an IP literal, and nothing may route by it.
fn host_of(src: Option<&HostSource>) -> Result<Option<std::borrow::Cow<'_, str>>, ()> {
    let Some(src) = src else {
        return Ok(None);
    };
    let raw = src.as_str().ok_or(())?;
    // Most hosts are lower-case DNS names without a port: one pass says so.
    if dns_name(raw.as_bytes(), false) {
        return Ok(Some(std::borrow::Cow::Borrowed(raw)));
    }
    let host = split_port(raw).ok_or(())?.trim_end_matches('.');
    let host = match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(host.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(host),
    };
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
    // The name first, in one pass (an IPv4 literal is one too): most hosts are names, and
    // parsing one as an address first costs more than the check.
    dns_name(h.as_bytes(), true) || h.parse::<IpAddr>().is_ok()
}

/// Labels of letters (upper case too, or not), digits and inner hyphens, each of 1 to 63
/// bytes, 253 bytes in all.
fn dns_name(h: &[u8], upper: bool) -> bool {
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let mut len = 0;
    let mut last = b'.';
    for &b in h {
        match b {
            b'.' => {
                if len == 0 || last == b'-' {
                    return false;
                }
                len = 0;
            }
            b'-' if len == 0 => return false,
            b if b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'-'
                || (upper && b.is_ascii_uppercase()) =>
            {
                len += 1;
                if len > 63 {
                    return false;
                }
            }
            _ => return false,
        }
        last = b;
    }
    len > 0 && last != b'-'
}

impl Pipeline {
    pub async fn handle(&self, mut req: Request<RequestBody>, conn: Conn) -> Answer {
        let started = Instant::now();
        let now = palisade_raft::now_ms();
        let id = RequestId::new();
        let request_id = id.as_str();
        let forwarded = conn.forwarded.then(|| req.headers());
        let client_ip = self.client_ip.resolve(conn.peer.ip(), forwarded);
        let json = wants_json(req.headers());
        let view = self.view.get();
        // One normal form of the path for every comparison below and for the upstream, so an
        // exemption matches what the upstream will see.
        let normal = normalize_path(&mut req);
        let source = HostSource::of(&req);
        let Ok(host) = normal.and_then(|()| host_of(source.as_ref())) else {
            let resp = error_page(
                StatusCode::BAD_REQUEST,
                "The request names no valid host, or its path cannot be read.",
                request_id,
                json,
            );
            unrouted().count(resp.status());
            return finish(resp, SecurityHeaders::defaults(), conn.https, id);
        };
        let host = host.as_deref().unwrap_or_default();
        let route = view.route(host);
        let project = route.and_then(|r| view.project_view(&r.domain.project));
        let headers = project.map_or(SecurityHeaders::defaults(), |p| &p.headers);

        let acme = !conn.https && req.uri().path().starts_with(ACME_PREFIX);
        // The ACME path answers to the cluster-wide list only: the CA is on no project's list.
        let lists_of = route.filter(|_| !acme).map(|r| &r.domain.project);
        let decision = view.access.decide(lists_of, client_ip, now);

        let resp = match route {
            _ if !decision.allowed => {
                let label = route.map_or("-", |r| r.domain.project.as_str());
                denial(&decision, label, client_ip, request_id);
                error_page(
                    StatusCode::FORBIDDEN,
                    "Access to this site is not allowed from your network.",
                    request_id,
                    json,
                )
            }
            None if acme => self.acme_http01(&req, request_id, json),
            None => {
                let status = if conn.https {
                    StatusCode::MISDIRECTED_REQUEST
                } else {
                    StatusCode::NOT_FOUND
                };
                error_page(
                    status,
                    "This server does not serve that host name.",
                    request_id,
                    json,
                )
            }
            Some(route) => {
                if acme {
                    self.acme_http01(&req, request_id, json)
                } else if !conn.https && route.domain.redirect_https {
                    redirect(host, &req)
                } else {
                    let ctx = RequestCtx {
                        client_ip,
                        host,
                        route,
                        project: project.map(|p| &*p.project),
                        request_id,
                        https: conn.https,
                        now,
                        cleared_at: Default::default(),
                    };
                    match self.gates.iter().find_map(|g| g.check(&ctx, &req)) {
                        Some(denied) => denied,
                        None => {
                            let max_body =
                                project.map_or(10 << 20, |p| p.project.limits.max_body_bytes);
                            let fwd = Forwarded {
                                client_ip,
                                https: conn.https,
                                host,
                                request_id,
                                max_body,
                                wants_json: json,
                                forwarded_header: headers.forwarded,
                            };
                            let uri = req.uri().clone();
                            let resp = self.proxy.forward(req, route, fwd).await;
                            for g in &self.gates {
                                g.observe(&ctx, uri.path(), resp.status());
                            }
                            resp
                        }
                    }
                }
            }
        };
        project
            .map_or(unrouted(), |p| &p.counters)
            .count(resp.status());
        request_duration().record(started.elapsed().as_secs_f64());
        finish(resp, headers, conn.https, id)
    }

    /// Answer an ACME HTTP-01 challenge from the replicated state, whichever node the CA reaches.
    fn acme_http01(
        &self,
        req: &Request<RequestBody>,
        request_id: &str,
        json: bool,
    ) -> Response<Body> {
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
fn normalize_path(req: &mut Request<RequestBody>) -> Result<(), ()> {
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

fn redirect(host: &str, req: &Request<RequestBody>) -> Response<Body> {
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

/// Every response, errors and redirects included: the security headers and the request id,
/// added as the response is written ([`Finish`]).
fn finish(
    response: Response<Body>,
    headers: &Arc<SecurityHeaders>,
    https: bool,
    id: RequestId,
) -> Answer {
    Answer {
        response,
        finish: Some(Finish {
            policy: headers.clone(),
            https,
            request_id: Some(id),
        }),
    }
}

/// `palisade_requests_total` of requests that reach no project.
fn unrouted() -> &'static StatusCounters {
    static UNROUTED: std::sync::OnceLock<StatusCounters> = std::sync::OnceLock::new();
    UNROUTED.get_or_init(|| StatusCounters::new("-".into()))
}

fn request_duration() -> &'static metrics::Histogram {
    static DURATION: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    DURATION.get_or_init(|| metrics::histogram!("palisade_request_duration_seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check against the definition it replaced (labels split on dots).
    #[test]
    fn a_host_is_a_dns_name_or_an_address_by_the_same_rules_as_before() {
        fn by_labels(h: &str) -> bool {
            h.parse::<IpAddr>().is_ok()
                || !h.is_empty()
                    && h.len() <= 253
                    && h.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    })
        }
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_name = format!("{0}.{0}.{0}.{1}", long_label, "a".repeat(61));
        let too_long_name = format!("{long_name}a");
        let cases = [
            "",
            ".",
            "..",
            "a",
            "a.",
            ".a",
            "a..b",
            "-a",
            "a-",
            "a-b",
            "a.-b",
            "a-.b",
            "xn--bcher-kva.example",
            "bench.test",
            "BENCH.test",
            "a_b.test",
            "a b",
            "1.2.3.4",
            "1.2.3.256",
            "::1",
            "[::1]",
            "2001:db8::1",
            "a:b",
            "é.test",
            "0",
            "a.b-",
            "a.b.c.d.e.f",
            &long_label,
            &too_long_label,
            &long_name,
            &too_long_name,
        ];
        for h in cases {
            assert_eq!(valid_host(h), by_labels(h), "{h:?}");
        }
        assert!(valid_host("bench.test") && valid_host(&long_name) && !valid_host(&too_long_name));
    }

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
            ("shop.example.com", Some("shop.example.com")),
            ("a.b-c.d", Some("a.b-c.d")),
            ("1.2.3.4", Some("1.2.3.4")),
            ("[::1]:80", Some("::1")),
        ];
        for (raw, want) in cases {
            assert_eq!(host(raw).as_deref(), *want, "{raw:?}");
            // What the pipeline routes by (its one-pass path for lower-case names included).
            let got = HeaderValue::from_bytes(raw.as_bytes())
                .ok()
                .map(HostSource::Header)
                .and_then(|src| host_of(Some(&src)).ok().flatten().map(|h| h.into_owned()));
            assert_eq!(got.as_deref(), *want, "host_of({raw:?})");
        }
    }
}
