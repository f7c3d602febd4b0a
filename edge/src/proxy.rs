//! Forwarding to upstreams: keep-alive connections from the worker's own pool ([`crate::pool`]),
//! bodies streamed both ways, retries on another target only for connect failures of
//! idempotent requests without a body (and once on a new connection when a connection closed
//! without answering and the upstream cannot have acted on the request, or it may be
//! repeated), WebSocket and other upgrades tunnelled.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::h1::{OnUpgrade, RequestBody};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::conn_limits::{tunnel, Hold};
use crate::egress::{refusal_in, Connector, Egress};
use crate::pool::{self, Driven, SendError, Upstream};
use crate::response::{empty, error_page, Body, BoxError};
use crate::upstream::{InFlight, Target};
use crate::view::Route;

#[derive(Debug, Clone)]
pub struct ProxyTimeouts {
    pub connect: Duration,
    /// Until the upstream's response headers arrive.
    pub response: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        ProxyTimeouts {
            connect: Duration::from_secs(3),
            response: Duration::from_secs(60),
        }
    }
}

pub struct Proxy {
    connector: Connector,
    timeouts: ProxyTimeouts,
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Headers through which clients and proxies state a request's origin. The edge removes what
/// the client sent of them and sets `X-Forwarded-For/-Proto/-Host`, `X-Real-IP`, and (when the
/// project asks for it) `Forwarded` itself.
const CLIENT_FORWARDING: [&str; 15] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "front-end-https",
    "x-original-url",
    "x-rewrite-url",
];

/// For each first byte, the lengths (bit n: n bytes) of the names on [`HOP_BY_HOP`] and
/// [`CLIENT_FORWARDING`] that begin with it: a name whose first byte and length match none is
/// on neither, told without comparing it to two dozen names.
static DROPPED_SHAPES: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < HOP_BY_HOP.len() + CLIENT_FORWARDING.len() {
        let n = match i < HOP_BY_HOP.len() {
            true => HOP_BY_HOP[i],
            false => CLIENT_FORWARDING[i - HOP_BY_HOP.len()],
        }
        .as_bytes();
        assert!(n.len() < 32);
        t[n[0] as usize] |= 1 << n.len();
        i += 1;
    }
    t
};

/// Whether the edge drops a field of this name: a hop-by-hop one, or (`from_client`) one of
/// the client's claims about its origin.
fn dropped(name: &HeaderName, from_client: bool) -> bool {
    let n = name.as_str();
    let (Some(&first), len) = (n.as_bytes().first(), n.len()) else {
        return false;
    };
    if len >= 32 || DROPPED_SHAPES[usize::from(first)] & (1 << len) == 0 {
        return false;
    }
    HOP_BY_HOP.contains(&n) || (from_client && CLIENT_FORWARDING.contains(&n))
}

/// The RFC 7239 `Forwarded` value for this hop: `for` (IPv6 quoted and bracketed), `proto`,
/// `host` (quoted).
fn forwarded(fwd: &Forwarded<'_>) -> String {
    let proto = if fwd.https { "https" } else { "http" };
    match fwd.client_ip {
        IpAddr::V4(ip) => format!("for={ip};proto={proto};host=\"{}\"", fwd.host),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto};host=\"{}\"", fwd.host),
    }
}

/// Remove the hop-by-hop fields (RFC 9110 section 7.6.1: the fixed ones and those `Connection`
/// names) and, from a request (`from_client`), what the client said about its origin
/// ([`CLIENT_FORWARDING`]).
///
/// Most messages carry none of them, so one pass over the names they do carry decides ([`dropped`],
/// mostly by first byte and length): a `remove` per name would hash two dozen names per
/// request, most of them custom, byte by byte.
fn strip_hop_by_hop(headers: &mut HeaderMap, from_client: bool) {
    if !headers.keys().any(|n| dropped(n, from_client)) {
        return;
    }
    let mut gone: Vec<HeaderName> = headers
        .keys()
        .filter(|n| dropped(n, from_client))
        .cloned()
        .collect();
    gone.extend(
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
    );
    for n in gone {
        headers.remove(n);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && crate::codec::has_token(headers, CONNECTION, "upgrade")
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Why a request did not get the upstream's answer: the status, the page text and the metric
/// label of each, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Every target is ejected or failing its health checks.
    NoneHealthy,
    /// Connecting failed on every target tried.
    AllTargetsFailed,
    /// Connecting failed, and the request may not be sent elsewhere.
    Connect,
    /// No response head within the response timeout.
    Timeout,
    /// The upstream broke the protocol or the connection.
    Protocol,
    /// The request body is larger than the project accepts.
    BodyTooLarge,
    /// A target's address does not make a URI.
    BadAddress,
    /// A target is on the node's private side (loopback, link-local, cloud metadata, one of
    /// the node's listeners) and no allowance lets it through.
    Refused,
}

impl UpstreamError {
    /// The status, the text of the page, and the `kind` of `palisade_upstream_errors_total`
    /// (none for the client's own fault).
    pub fn parts(self) -> (StatusCode, &'static str, Option<&'static str>) {
        use UpstreamError::*;
        let unreachable = "The upstream could not be reached.";
        match self {
            NoneHealthy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "No healthy upstream is available for this site.",
                Some("unavailable"),
            ),
            AllTargetsFailed => (StatusCode::BAD_GATEWAY, unreachable, Some("unavailable")),
            Connect => (StatusCode::BAD_GATEWAY, unreachable, Some("connect")),
            Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream did not answer in time.",
                Some("timeout"),
            ),
            Protocol => (
                StatusCode::BAD_GATEWAY,
                "The upstream failed to answer.",
                Some("protocol"),
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is larger than this site accepts.",
                None,
            ),
            BadAddress => (
                StatusCode::BAD_GATEWAY,
                "The upstream address is invalid.",
                None,
            ),
            Refused => (
                StatusCode::BAD_GATEWAY,
                "The upstream address is not one the edge may connect to.",
                Some("refused"),
            ),
        }
    }

    /// The page the client gets, counted.
    fn answer(self, fwd: &Forwarded<'_>) -> Response<Body> {
        let (status, text, kind) = self.parts();
        if let Some(kind) = kind {
            metrics::counter!("palisade_upstream_errors_total", "kind" => kind).increment(1);
        }
        error_page(status, text, fwd.request_id, fwd.wants_json)
    }
}

/// Who is asking, as the pipeline resolved it.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    pub https: bool,
    pub host: &'a str,
    pub request_id: &'a str,
    pub max_body: u64,
    pub wants_json: bool,
    /// Send the RFC 7239 `Forwarded` header (the project's `headers.forwarded`).
    pub forwarded_header: bool,
}

/// The names the edge sets on every forwarded request (`static`s, as [`HOP_BY_HOP`]).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An IP address as header-value bytes, formatted into `buf` (IPv4 by hand: `Display` goes
/// through the formatter's padding for each of its four numbers).
fn ip_text(ip: IpAddr, buf: &mut [u8; 45]) -> &[u8] {
    let n = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut w = &mut buf[..];
            let _ = write!(w, "{v6}");
            45 - w.len()
        }
    };
    &buf[..n]
}

/// The request's path and query: what an HTTP/1.1 request line carries (origin form).
fn origin_form(uri: Uri) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

impl Proxy {
    pub fn new(timeouts: ProxyTimeouts, egress: Arc<Egress>) -> Self {
        let connector = Connector::new(egress, timeouts.connect);
        Proxy {
            connector,
            timeouts,
        }
    }

    /// A new connection to `target`, through the egress policy and the connect timeout.
    async fn connect(&self, target: &Target) -> Result<TcpStream, BoxError> {
        use tower_service::Service;
        let uri: Uri = format!("http://{}/", target.addr).parse()?;
        Ok(self.connector.clone().call(uri).await?.into_inner())
    }

    pub async fn forward(
        &self,
        mut req: Request<RequestBody>,
        route: &Route,
        fwd: Forwarded<'_>,
    ) -> Response<Body> {
        // The body knows its declared length (h1: the parsed `Content-Length`; h2: hyper's),
        // and whether there is one at all: no field is looked up again.
        let declared = req.body().size_hint().exact();
        if declared.is_some_and(|n| n > fwd.max_body) {
            return UpstreamError::BodyTooLarge.answer(&fwd);
        }
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| OnUpgrade::on(&mut req));
        let hold = match upgrade {
            true => req.extensions_mut().remove::<Hold>(),
            false => None,
        };
        let (mut parts, body) = req.into_parts();
        let upgrade_value = match upgrade {
            true => parts.headers.get(UPGRADE).cloned(),
            false => None,
        };
        let retryable = is_idempotent(&parts.method) && body.is_end_stream() && !upgrade;
        // What the client said about the request's origin never reaches the upstream as if the
        // edge had said it either: frameworks believe these.
        strip_hop_by_hop(&mut parts.headers, true);
        if let Some(v) = upgrade_value {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, v);
        }
        // The fields the edge sets, each from a value it checked (an address, the normalised
        // host, hex digits): written after the client's own, in place of any of the same names
        // (`codec::write_head`), not inserted into the map one by one.
        let mut ip = [0u8; 45];
        let ip = ip_text(fwd.client_ip, &mut ip);
        let host = fwd.host.as_bytes();
        let rfc7239 = fwd.forwarded_header.then(|| forwarded(&fwd));
        let all: [(&HeaderName, &[u8]); 7] = [
            (&X_FORWARDED_FOR, ip),
            (&X_REAL_IP, ip),
            (
                &X_FORWARDED_PROTO,
                if fwd.https { &b"https"[..] } else { b"http" },
            ),
            (&X_FORWARDED_HOST, host),
            (&HOST, host),
            (&X_REQUEST_ID, fwd.request_id.as_bytes()),
            (
                &hyper::header::FORWARDED,
                rfc7239.as_deref().unwrap_or_default().as_bytes(),
            ),
        ];
        let added = &all[..all.len() - usize::from(rfc7239.is_none())];
        // Always HTTP/1.1 upstream, whatever the client spoke.
        parts.version = hyper::Version::HTTP_11;
        // A request without a body (most) sends an empty one: nothing to box or limit.
        let body = match body.is_end_stream() {
            true => empty(),
            false => Limited::new(body, fwd.max_body as usize)
                .map_err(BoxError::from)
                .boxed(),
        };
        let mut body = Some(body);

        let mut tried: Vec<Arc<Target>> = Vec::new();
        // A request the closed connection did not answer goes once more, on a new connection,
        // when the upstream cannot have acted on it (the socket took none of it) or it may be
        // repeated (idempotent, without a body, on a reused connection: the keep-alive race).
        let mut resent = false;
        loop {
            let Some(inflight) = route.upstreams.pick(&tried) else {
                return match tried.is_empty() {
                    true => UpstreamError::NoneHealthy,
                    false => UpstreamError::AllTargetsFailed,
                }
                .answer(&fwd);
            };
            let target = inflight.target().clone();
            let pooled = match upgrade || resent {
                true => None,
                false => pool::checkout(&target.addr),
            };
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let io = match self.connect(&target).await {
                        Ok(io) => io,
                        Err(e) => {
                            if let Some(refused) = refusal_in(&*e) {
                                // The operator's doing, not the upstream's: no ejection, no retry.
                                tracing::debug!(target = %target.addr, error = %refused, "upstream refused");
                                return UpstreamError::Refused.answer(&fwd);
                            }
                            tracing::debug!(target = %target.addr, error = %e, "upstream connect failed");
                            target.eject();
                            tried.push(target);
                            if retryable {
                                metrics::counter!("palisade_upstream_errors_total", "kind" => "connect")
                                    .increment(1);
                                continue;
                            }
                            return UpstreamError::Connect.answer(&fwd);
                        }
                    };
                    if upgrade {
                        for (name, value) in added {
                            if let Ok(v) = HeaderValue::from_bytes(value) {
                                parts.headers.insert(*name, v);
                            }
                        }
                        parts.uri = origin_form(std::mem::take(&mut parts.uri));
                        let req = Request::from_parts(parts, body.take().unwrap_or_else(empty));
                        return self
                            .tunnel(io, req, inflight, client_upgrade, hold, &fwd)
                            .await;
                    }
                    Upstream::new(io, target.addr.clone())
                }
            };
            // Origin form: an absolute-form `http://a?x=1` has the query without a path.
            let path = match parts.uri.path_and_query().map(|p| p.as_str()) {
                Some(p) if p.starts_with('/') || p == "*" => std::borrow::Cow::Borrowed(p),
                Some(p) => std::borrow::Cow::Owned(format!("/{p}")),
                None => std::borrow::Cow::Borrowed("/"),
            };
            let b = body
                .take()
                .expect("a request body is sent once, or comes back");
            match conn
                .send(&parts, &path, added, b, self.timeouts.response)
                .await
            {
                Ok(mut x) => {
                    let status = x.head.status;
                    let mut headers = std::mem::take(&mut x.head.headers);
                    strip_hop_by_hop(&mut headers, false);
                    // The in-flight count lasts until the response body is done.
                    let mut resp = Response::new(Driven::new(conn, x, inflight).boxed());
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    // The request's map is done with (its head was sent): the next request's.
                    crate::header_maps::give(std::mem::take(&mut parts.headers));
                    return resp;
                }
                Err(SendError::TimedOut) => return UpstreamError::Timeout.answer(&fwd),
                Err(SendError::Body(e)) => {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        return UpstreamError::BodyTooLarge.answer(&fwd);
                    }
                    tracing::debug!(target = %target.addr, error = %e, "request body failed");
                    return UpstreamError::Protocol.answer(&fwd);
                }
                Err(SendError::Protocol(e)) => {
                    tracing::debug!(target = %target.addr, error = %e, "upstream answer failed");
                    return UpstreamError::Protocol.answer(&fwd);
                }
                Err(SendError::Closed {
                    again,
                    unsent,
                    error,
                }) => {
                    if let Some(b) =
                        again.filter(|_| !resent && (unsent || retryable && conn.reused))
                    {
                        tracing::debug!(target = %target.addr, reused = conn.reused, error = %error, "upstream connection closed before answering; sending the request on a new one");
                        body = Some(b);
                        resent = true;
                        continue;
                    }
                    tracing::debug!(target = %target.addr, error = %error, "upstream connection closed before answering");
                    return UpstreamError::Protocol.answer(&fwd);
                }
            }
        }
    }

    /// The answer to an upgrade exchange that failed after the request left.
    fn failed(&self, e: hyper::Error, target: &Target, fwd: &Forwarded<'_>) -> Response<Body> {
        tracing::debug!(target = %target.addr, error = %e, "upstream request failed");
        UpstreamError::Protocol.answer(fwd)
    }

    /// An upgrade request (WebSocket) on a connection of its own: on `101`, both sides are
    /// joined in a tunnel that keeps the client connection's hold; any other answer is
    /// returned as it is.
    async fn tunnel(
        &self,
        io: TcpStream,
        req: Request<Body>,
        inflight: InFlight,
        client_upgrade: Option<OnUpgrade>,
        hold: Option<Hold>,
        fwd: &Forwarded<'_>,
    ) -> Response<Body> {
        let (mut send, driver) = match hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
        {
            Ok(x) => x,
            Err(e) => return self.failed(e, inflight.target(), fwd),
        };
        // The upgraded socket comes out of the connection when it finishes: it runs as a task.
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        let target = inflight.target().clone();
        let mut resp =
            match tokio::time::timeout(self.timeouts.response, send.send_request(req)).await {
                Err(_) => return UpstreamError::Timeout.answer(fwd),
                Ok(Err(e)) => return self.failed(e, &target, fwd),
                Ok(Ok(resp)) => resp,
            };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = client_upgrade {
                let upstream_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let _inflight = inflight;
                    if let (Ok(c), Ok(u), Some(hold)) =
                        (client_side.get().await, upstream_side.await, hold)
                    {
                        tunnel(c, TokioIo::new(u), hold).await;
                    }
                });
            }
            let (p, _) = resp.into_parts();
            return Response::from_parts(p, empty());
        }
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers, false);
        let body = b.map_err(BoxError::from).map_frame(move |f| {
            let _ = &inflight;
            f
        });
        Response::from_parts(p, body.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn an_ip_text_reads_as_the_address_prints() {
        for a in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(a, 0, 9, 10),
                Ipv4Addr::new(99, a, 100, 255),
                Ipv4Addr::new(1, 2, a, 3),
                Ipv4Addr::new(200, 10, 0, a),
            ] {
                assert_eq!(
                    ip_text(IpAddr::V4(ip), &mut [0; 45]),
                    ip.to_string().as_bytes()
                );
            }
        }
        let v6: IpAddr = "2001:db8::ff:1".parse().unwrap();
        assert_eq!(ip_text(v6, &mut [0; 45]), b"2001:db8::ff:1");
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(
            ip_text(longest, &mut [0; 45]),
            longest.to_string().as_bytes()
        );
    }

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_shape_filter_lets_every_listed_name_through() {
        for n in HOP_BY_HOP {
            let name = HeaderName::from_static(n);
            assert!(dropped(&name, false) && dropped(&name, true), "{n}");
        }
        for n in CLIENT_FORWARDING {
            let name = HeaderName::from_static(n);
            assert!(dropped(&name, true) && !dropped(&name, false), "{n}");
        }
        for n in [
            "host",
            "user-agent",
            "accept",
            "cookie",
            "x-forwarded-for",
            "connections",
            "x-real-ipv6",
            "content-length",
            "tk",
        ] {
            let name = HeaderName::from_static(n);
            assert!(!dropped(&name, true), "{n}");
        }
    }

    #[test]
    fn hop_by_hop_fields_and_what_connection_names_are_removed() {
        let mut h = map(&[
            ("host", "a.test"),
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("x-real-ip", "1.2.3.4"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        // A response keeps `x-real-ip`: only a request's forwarding fields are the client's say.
        assert_eq!(names(&h), ["accept", "host", "x-real-ip"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["accept", "host"]);
    }

    #[test]
    fn a_client_claiming_an_origin_is_not_believed_and_others_are_untouched() {
        let mut h = map(&[
            ("host", "a.test"),
            ("forwarded", "for=1.2.3.4"),
            ("cf-connecting-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("user-agent", "t"),
            ("x-custom", "kept"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["host", "user-agent", "x-custom"]);
        // Nothing to remove: the map is as it was, every value in its place.
        let before = map(&[("host", "a.test"), ("accept", "*/*"), ("x-custom", "1")]);
        let mut after = before.clone();
        strip_hop_by_hop(&mut after, true);
        assert_eq!(before, after);
    }
}
