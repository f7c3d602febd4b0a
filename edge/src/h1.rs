//! HTTP/1.1 to clients, the edge's own server side on `httparse` (h2 stays hyper's): the
//! request head parsed on the stack with its header values cut from the connection's read
//! buffer (no copy), the request body read by whoever polls it (the upstream's writer, in the
//! request's own task), and the response head serialised into a reused write buffer with a
//! small body in the same write.
//!
//! Between requests a connection holds no buffer: the read and write buffers go back to the
//! worker's own free list as soon as they are empty (a thread-local list: each connection lives
//! on one worker thread), so an idle keep-alive connection costs its socket, its TLS state and
//! its task, as with nginx, and a busy one allocates nothing for its buffers.
//!
//! The request framing is a server's (RFC 9112 §6), stricter than hyper's where a proxy must
//! be: a request with both `Transfer-Encoding` and `Content-Length` is refused (400, as nginx
//! does), not read by the first; a transfer coding other than `chunked` alone is 501; an
//! HTTP/1.0 request with `Transfer-Encoding` is 400; `Content-Length` must be decimal (a list
//! is refused) and repeats must agree; chunked bodies are decoded strictly
//! by [`crate::codec::Chunked`]. A head larger than the limit, or with more than
//! [`MAX_HEADERS`] fields, is 431. `Expect: 100-continue` is answered when the body is first
//! read, never after the final answer has begun. A response's framing comes from its body:
//! its exact length, else the length its header declares, else chunked (HTTP/1.1) or to the
//! close (HTTP/1.0); `HEAD`, 1xx, 204 and 304 answers carry none.
//!
//! An answer that begins before the request body has been read to its end (a refusal, a body
//! over the limit, an upstream's early answer) says `connection: close`, and the connection is
//! closed gracefully: FIN first, then what the client still sends is read and dropped for a
//! while, so the answer is not lost to a reset.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING,
};
use hyper::{Method, Request, StatusCode, Uri, Version};
use palisade_raft::task::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::codec::{decimal, has_token, Chunked, CodecError, Step, LAST_CHUNK};
use crate::conn_limits::{Activity, Hold};
use crate::response::{Answer, BoxError, Finish};

/// Header fields a request head may have (hyper's server has the same limit).
pub const MAX_HEADERS: usize = 100;
/// Header fields the edge adds to a request on its way upstream (`X-Forwarded-*`,
/// `X-Real-IP`, `X-Request-Id`, `Forwarded`): room for them is made when the map is built.
const ADDED_HEADERS: usize = 8;
/// The size of a buffer from the worker's free list.
const BUF: usize = 8 << 10;
/// Read only with at least this much room; else grow by [`READ_GROW`].
const READ_ROOM: usize = 2 << 10;
const READ_GROW: usize = 16 << 10;
/// A buffer larger than this (a large head, a batched body) is not kept on the free list.
const KEPT: usize = 64 << 10;
/// How many buffers of each kind a worker keeps free.
const FREE_LIST: usize = 64;
/// Response body bytes gathered into one write, at most.
const WRITE_BATCH: usize = 64 << 10;
/// After a close with request bytes unread: how long and how much is read and dropped.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The start of the HTTP/2 preface: such a connection is h2 with prior knowledge.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

// --- Buffers -------------------------------------------------------------------------------

thread_local! {
    static READ_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_read_buffer() -> BytesMut {
    READ_BUFFERS
        .with(|l| l.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF))
}

fn take_write_buffer() -> Vec<u8> {
    WRITE_BUFFERS
        .with(|l| l.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF))
}

/// Onto a worker's free list, unless it already holds [`FREE_LIST`] buffers.
fn keep<T>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>, b: T) {
    list.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < FREE_LIST {
            l.push(b);
        }
    });
}

fn give_write_buffer(mut b: Vec<u8>) {
    if b.capacity() == 0 || b.capacity() > KEPT {
        return;
    }
    b.clear();
    keep(&WRITE_BUFFERS, b);
}

// --- The request head ----------------------------------------------------------------------

/// Why a request head was refused: the answer's status and what the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is not valid HTTP/1.x: {0}")]
    Syntax(httparse::Error),
    #[error("the request head is larger than the limit")]
    TooLarge,
    #[error("the request head has more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("the request method is not a valid token")]
    Method,
    #[error("the request target is not a valid URI")]
    Target,
    #[error("the request header field {0} is invalid")]
    Field(&'static str),
    #[error("the request's Content-Length is not one decimal number")]
    ContentLength,
    #[error("the request has both Transfer-Encoding and Content-Length")]
    LengthAndCoding,
    #[error("an HTTP/1.0 request with Transfer-Encoding")]
    TransferEncoding10,
    #[error("the request's Transfer-Encoding is not `chunked` alone")]
    TransferCoding,
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge | HeadError::TooManyFields => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyFraming {
    /// No body (`Content-Length: 0` or none).
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The header fields as sent, values sharing the read buffer.
    pub headers: HeaderMap,
    pub body: RequestBodyFraming,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// An HTTP/1.1 request with `Upgrade` (a WebSocket handshake).
    pub upgrade: bool,
}

/// Parse the request head at the front of `buf`, consuming it. `Ok(None)`: not complete yet
/// (and within `max` bytes); read more.
pub fn parse_request(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    // Offsets of the method, target and each header's name and value in `buf`, so they can be
    // cut from it once the parser's borrow ends.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, method, target, minor, count) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
            Err(e) => return Err(HeadError::Syntax(e)),
        };
        if len > max {
            return Err(HeadError::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let span = |s: &[u8]| (at(s), at(s) + s.len() as u32);
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            let (n, v) = (at(h.name.as_bytes()), at(h.value));
            *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
        }
        let method = span(req.method.unwrap_or_default().as_bytes());
        let target = span(req.path.unwrap_or_default().as_bytes());
        (
            len,
            method,
            target,
            req.version.unwrap_or(1),
            req.headers.len(),
        )
    };
    let raw = buf.split_to(len).freeze();
    let method = Method::from_bytes(&raw[method.0 as usize..method.1 as usize])
        .map_err(|_| HeadError::Method)?;
    let uri = Uri::from_maybe_shared(raw.slice(target.0 as usize..target.1 as usize))
        .map_err(|_| HeadError::Target)?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = crate::header_maps::take(count + ADDED_HEADERS);
    let mut present = crate::codec::Present::default();
    let mut codings = 0;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut expect_continue = false;
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&raw[ns as usize..ne as usize])
            .map_err(|_| HeadError::Field("name"))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
            .map_err(|_| HeadError::Field("value"))?;
        if name == TRANSFER_ENCODING {
            codings += 1;
            chunked = value
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        } else if name == CONTENT_LENGTH {
            let n = decimal(value.as_bytes()).ok_or(HeadError::ContentLength)?;
            match length {
                Some(m) if m != n => return Err(HeadError::ContentLength),
                // The same length again: one field is enough for the next hop.
                Some(_) => continue,
                None => length = Some(n),
            }
        } else if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        present.note(&name);
        headers.append(name, value);
    }
    let body = match (codings, length) {
        (0, None | Some(0)) => RequestBodyFraming::None,
        (0, Some(n)) => RequestBodyFraming::Length(n),
        _ if version == Version::HTTP_10 => return Err(HeadError::TransferEncoding10),
        (_, Some(_)) => return Err(HeadError::LengthAndCoding),
        (1, None) if chunked => RequestBodyFraming::Chunked,
        _ => return Err(HeadError::TransferCoding),
    };
    let conn = |token| present.connection && has_token(&headers, CONNECTION, token);
    let keep_alive = method != Method::CONNECT
        && !conn("close")
        && (version == Version::HTTP_11 || conn("keep-alive"));
    Ok(Some(RequestHead {
        expect_continue: expect_continue
            && version == Version::HTTP_11
            && body != RequestBodyFraming::None,
        upgrade: version == Version::HTTP_11 && present.upgrade,
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
    }))
}

// --- The connection's shared state ---------------------------------------------------------

/// What the connection's loop and its request body share: the socket, the read buffer, and
/// what is left of the request body. Both run in the connection's task, so the lock is never
/// contended; it is held only within one poll.
struct Shared<S> {
    inner: Mutex<Inner<S>>,
}

struct Inner<S> {
    /// `None` once the connection has been handed over (an upgrade, h2).
    io: Option<S>,
    rbuf: BytesMut,
    body: BodyState,
    expect: Continue,
}

#[derive(Debug)]
enum BodyState {
    /// Read to its end (or there was none).
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Cut short or malformed: the connection cannot carry another request.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    No,
    /// To be sent when the body is first read.
    Due,
    /// This much of it written.
    Writing(usize),
    Flushing,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was handed over",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    fn io(&mut self) -> io::Result<Pin<&mut S>> {
        self.io.as_mut().map(Pin::new).ok_or_else(gone)
    }

    /// Read into the read buffer (taken from the free list if the connection holds none);
    /// `Ready(Ok(0))` at the client's close. An empty buffer goes back while the read waits.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() == 0 {
            self.rbuf = take_read_buffer();
        } else if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM {
            self.rbuf.reserve(READ_GROW);
        }
        let io = match self.io.as_mut() {
            Some(io) => io,
            None => return Poll::Ready(Err(gone())),
        };
        let polled = tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf);
        if polled.is_pending() {
            self.release_read_buffer();
        }
        polled
    }

    /// An empty read buffer goes back to the free list when it has a buffer's worth of room
    /// (`try_reclaim` takes back the space of views that have been dropped); one grown large by a
    /// big head is freed instead.
    fn release_read_buffer(&mut self) {
        if !self.rbuf.is_empty() || self.rbuf.capacity() == 0 {
            return;
        }
        if self.rbuf.capacity() > KEPT {
            self.rbuf = BytesMut::new();
        } else if self.rbuf.try_reclaim(BUF) {
            keep(&READ_BUFFERS, std::mem::take(&mut self.rbuf));
        }
    }

    /// Finish writing `100 Continue` if it has begun.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.expect {
                Continue::No => return Poll::Ready(Ok(())),
                Continue::Due | Continue::Writing(_) => {
                    let at = match self.expect {
                        Continue::Writing(n) => n,
                        _ => 0,
                    };
                    let n = ready!(self.io()?.poll_write(cx, &CONTINUE[at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.expect = match at + n {
                        done if done == CONTINUE.len() => Continue::Flushing,
                        part => Continue::Writing(part),
                    };
                }
                Continue::Flushing => {
                    ready!(self.io()?.poll_flush(cx))?;
                    self.expect = Continue::No;
                }
            }
        }
    }

    /// The next piece of the request body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Err(e) = ready!(self.poll_continue(cx)) {
            self.body = BodyState::Failed;
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            match &mut self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failed => {
                    return Poll::Ready(Some(Err("the request body failed earlier".into())))
                }
                BodyState::Length(left) => {
                    if !self.rbuf.is_empty() {
                        let n = self
                            .rbuf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            self.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(self.rbuf.split_to(n).freeze()))));
                    }
                }
                BodyState::Chunked(c) => match c.decode(&mut self.rbuf) {
                    Ok(Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Ok(Step::End) => {
                        self.body = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        self.body = BodyState::Failed;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(CodecError::TruncatedRequest.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

/// A request body read from the connection by whoever polls it.
trait Source: Send + Sync {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn remaining(&self) -> SizeHint;
    fn ended(&self) -> bool;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Source for Shared<S> {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.lock().poll_body(cx)
    }

    fn remaining(&self) -> SizeHint {
        match self.lock().body {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    fn ended(&self) -> bool {
        matches!(self.lock().body, BodyState::Done)
    }
}

/// A request's body, whichever protocol brought it: none, hyper's (h2), or the edge's own
/// HTTP/1.1 connection's.
pub struct RequestBody(Kind);

enum Kind {
    Empty,
    Hyper(Incoming),
    H1(Arc<dyn Source>),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody(Kind::Empty)
    }

    pub fn from_hyper(b: Incoming) -> RequestBody {
        RequestBody(Kind::Hyper(b))
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Kind::H1(s) => s.poll_body(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Hyper(b) => b.is_end_stream(),
            Kind::H1(s) => s.ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Hyper(b) => b.size_hint(),
            Kind::H1(s) => s.remaining(),
        }
    }
}

// --- Upgrades and hand-overs ---------------------------------------------------------------

/// A connection's socket once HTTP is done with it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Upgraded = Box<dyn Io>;

type UpgradeSlot = Arc<Mutex<Option<tokio::sync::oneshot::Receiver<Upgraded>>>>;

/// The client's side of an upgrade, once the `101` has been written: from the edge's own
/// HTTP/1.1 connection, or from hyper's.
pub enum OnUpgrade {
    Own(Option<tokio::sync::oneshot::Receiver<Upgraded>>),
    Hyper(hyper::upgrade::OnUpgrade),
}

impl OnUpgrade {
    pub fn on(req: &mut Request<RequestBody>) -> OnUpgrade {
        match req.extensions_mut().remove::<UpgradeSlot>() {
            Some(slot) => OnUpgrade::Own(slot.lock().ok().and_then(|mut s| s.take())),
            None => OnUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    pub async fn get(self) -> Result<Upgraded, BoxError> {
        match self {
            OnUpgrade::Own(Some(rx)) => Ok(rx.await?),
            OnUpgrade::Own(None) => Err("no upgrade".into()),
            OnUpgrade::Hyper(on) => Ok(Box::new(hyper_util::rt::TokioIo::new(on.await?))),
        }
    }
}

/// A socket with bytes already read from it in front.
pub struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, io: S) -> Prefixed<S> {
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// --- The connection ------------------------------------------------------------------------

/// How a connection served by [`serve`] ended.
pub enum Ended<S> {
    Closed,
    /// Its first bytes are the HTTP/2 preface: h2 with prior knowledge, to be served by hyper
    /// with these bytes in front.
    H2(Prefixed<S>),
}

/// What one connection needs from its listener.
pub struct Connection<'a> {
    /// For the logs.
    pub peer: std::net::SocketAddr,
    /// Whether the edge's own answers (a refused head) carry HSTS.
    pub https: bool,
    pub max_header_bytes: usize,
    pub hold: &'a Hold,
    pub activity: &'a Arc<Activity>,
    pub shutdown: &'a Shutdown,
}

// Short-lived, one at a time on the connection's stack: no point boxing the head.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Bad(HeadError),
    H2,
    Closed,
}

/// Serve HTTP/1.1 on `io`, each request answered by `handle` (the pipeline), until the client
/// or the edge closes it (the listener's watchdog drops this future for the connection's
/// deadlines).
pub async fn serve<S, H, F, A>(io: S, cx: Connection<'_>, mut handle: H) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: FnMut(Request<RequestBody>) -> F,
    F: std::future::Future<Output = A>,
    A: Into<Answer>,
{
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            io: Some(io),
            rbuf: BytesMut::new(),
            body: BodyState::Done,
            expect: Continue::No,
        }),
    });
    let mut wbuf = Vec::new();
    let mut first = true;
    loop {
        let next = tokio::select! {
            biased;
            _ = cx.shutdown.cancelled() => return Ended::Closed,
            next = next_head(&shared, cx.max_header_bytes, first) => next,
        };
        first = false;
        let head = match next {
            Next::Head(head) => head,
            Next::Closed => return Ended::Closed,
            Next::H2 => {
                let mut g = shared.lock();
                let prefix = std::mem::take(&mut g.rbuf).freeze();
                return match g.io.take() {
                    Some(io) => Ended::H2(Prefixed::new(prefix, io)),
                    None => Ended::Closed,
                };
            }
            Next::Bad(e) => {
                tracing::debug!(peer = %cx.peer, error = %e, "bad request head");
                metrics::counter!("palisade_bad_requests_total", "reason" => "head").increment(1);
                let resp = refusal(e.status(), &e.to_string(), cx.https);
                let to = ResponseFor {
                    head_request: false,
                    version: Version::HTTP_11,
                    keep_alive: false,
                    upgrade: false,
                };
                if write_response(&shared, resp, &mut wbuf, to).await.is_ok() {
                    linger(&shared).await;
                }
                return Ended::Closed;
            }
        };
        cx.activity.is_http1();
        let flight = cx.activity.begin();
        let to = ResponseFor {
            head_request: head.method == Method::HEAD,
            version: head.version,
            keep_alive: head.keep_alive,
            upgrade: head.upgrade,
        };
        let body = {
            let mut g = shared.lock();
            g.body = match head.body {
                RequestBodyFraming::None => BodyState::Done,
                RequestBodyFraming::Length(n) => BodyState::Length(n),
                RequestBodyFraming::Chunked => BodyState::Chunked(Chunked::default()),
            };
            g.expect = match head.expect_continue {
                true => Continue::Due,
                false => Continue::No,
            };
            match head.body {
                RequestBodyFraming::None => RequestBody::empty(),
                _ => RequestBody(Kind::H1(shared.clone())),
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        let mut upgrade = None;
        if head.upgrade {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let slot: UpgradeSlot = Arc::new(Mutex::new(Some(rx)));
            req.extensions_mut().insert(slot);
            req.extensions_mut().insert(cx.hold.clone());
            upgrade = Some(tx);
        }
        // A client that half-closes after its request (`printf … | nc -N`) is still answered,
        // as hyper and RFC 9112 §9.6 would have it; one that has gone finds out when the answer
        // is written.
        // On the heap while it runs: the proxy's future is most of a connection's state, and an
        // idle keep-alive connection (most of them, most of the time) need not carry its room.
        let resp = Box::pin(handle(req)).await.into();
        let to = ResponseFor {
            keep_alive: to.keep_alive && !cx.shutdown.is_cancelled(),
            ..to
        };
        let written = write_response(&shared, resp, &mut wbuf, to).await;
        drop(flight);
        match written {
            Ok(Written::KeepAlive) => {}
            Ok(Written::Upgraded) => {
                let mut g = shared.lock();
                let prefix = std::mem::take(&mut g.rbuf).freeze();
                if let (Some(io), Some(tx)) = (g.io.take(), upgrade) {
                    let _ = tx.send(Box::new(Prefixed::new(prefix, io)));
                }
                return Ended::Closed;
            }
            Ok(Written::Close) => {
                linger(&shared).await;
                return Ended::Closed;
            }
            Err(e) => {
                tracing::debug!(peer = %cx.peer, error = %e, "writing the response failed");
                return Ended::Closed;
            }
        }
        // Kept alive only when the body had been read before the answer began (see
        // `write_response`), so the next bytes are the next request's.
        {
            let mut g = shared.lock();
            debug_assert!(matches!(g.body, BodyState::Done));
            g.expect = Continue::No;
            g.release_read_buffer();
        }
        give_write_buffer(std::mem::take(&mut wbuf));
    }
}

/// The next request head, or why there is none. Only a connection's `first` bytes may be the
/// h2 preface.
async fn next_head<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<S>,
    max: usize,
    first: bool,
) -> Next {
    std::future::poll_fn(|cx| {
        let mut g = shared.lock();
        loop {
            if !g.rbuf.is_empty() {
                let n = g.rbuf.len().min(H2_PREFACE_LINE.len());
                if first && g.rbuf[..n] == H2_PREFACE_LINE[..n] {
                    if n == H2_PREFACE_LINE.len() {
                        return Poll::Ready(Next::H2);
                    }
                } else {
                    match parse_request(&mut g.rbuf, max) {
                        Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Next::Bad(e)),
                    }
                }
            }
            match ready!(g.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Next::Closed),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Close gracefully after an answer with request bytes possibly unread: FIN (and TLS
/// `close_notify`) first, then read and drop what the client still sends for a while.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(shared: &Shared<S>) {
    let drain = async {
        std::future::poll_fn(|cx| shared.lock().io()?.poll_shutdown(cx)).await?;
        let mut dropped = 0;
        std::future::poll_fn(|cx| loop {
            let mut g = shared.lock();
            match ready!(g.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Ok::<_, io::Error>(())),
                Ok(n) => {
                    dropped += n;
                    g.rbuf.clear();
                    if dropped >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// An answer the connection itself gives (a refused head), with the security headers every
/// response carries.
fn refusal(status: StatusCode, detail: &str, https: bool) -> Answer {
    Answer {
        response: crate::response::error_page(status, detail, "-", false),
        finish: Some(Finish {
            policy: crate::view::SecurityHeaders::defaults().clone(),
            https,
            request_id: None,
        }),
    }
}

#[derive(Debug, Clone, Copy)]
struct ResponseFor {
    head_request: bool,
    version: Version,
    keep_alive: bool,
    /// The request asked for an upgrade: a `101` hands the connection over.
    upgrade: bool,
}

enum Written {
    KeepAlive,
    Close,
    Upgraded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Write `answer` (head, then body, batched) and say what becomes of the connection.
///
/// The head is written in one pass over the response's fields: the framing fields and
/// `Connection` are the edge's to set (but for `HEAD` and `304`, whose fields say what a `GET`
/// would have had), and the security headers and the request id go in as the lines the view
/// built ([`Finish::write`]) in place of any the response had. Nothing is inserted into or
/// removed from the map.
async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<S>,
    answer: Answer,
    wbuf: &mut Vec<u8>,
    to: ResponseFor,
) -> io::Result<Written> {
    let body_read = {
        // A `100 Continue` not yet begun is never sent once the final answer is.
        let mut g = shared.lock();
        if g.expect == Continue::Due {
            g.expect = Continue::No;
        }
        matches!(g.body, BodyState::Done)
    };
    let Answer {
        response,
        mut finish,
    } = answer;
    let (mut parts, mut body) = response.into_parts();
    if let Some(f) = finish.take_if(|f| f.policy.keep_upstream) {
        // The upstream's values win where it sent them: decided in the map.
        f.apply(&mut parts.headers);
    }
    let status = parts.status;
    let h = &parts.headers;
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && to.upgrade;
    // An answer before the request body has been read (a refusal, an early answer from the
    // upstream) ends the connection, and says so; so does one whose `Connection` says `close`
    // (looked at in the pass below).
    let mut keep = to.keep_alive && body_read;
    // Whether the response's own `Content-Length` and `Transfer-Encoding` are written.
    let mut own_framing = false;
    let out = if status.is_informational() {
        keep &= upgraded;
        Out::None
    } else if status == StatusCode::NO_CONTENT {
        Out::None
    } else if to.head_request || status == StatusCode::NOT_MODIFIED {
        // The fields say what a GET would have had.
        own_framing = true;
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if let Some(n) = h.get(CONTENT_LENGTH).and_then(|v| decimal(v.as_bytes())) {
        Out::Length(n)
    } else if to.version == Version::HTTP_11 {
        Out::Chunked
    } else {
        keep = false;
        Out::Close
    };
    if wbuf.capacity() == 0 {
        *wbuf = take_write_buffer();
    }
    wbuf.clear();
    write_status_line(wbuf, status);
    let mut dated = false;
    for (name, value) in h.iter() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            if !own_framing {
                continue;
            }
        } else if name == CONNECTION {
            if value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep = false;
            }
            if !upgraded {
                continue;
            }
        } else if name == DATE {
            dated = true;
        } else if finish.as_ref().is_some_and(|f| f.replaces(name)) {
            continue;
        }
        wbuf.extend_from_slice(name.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(value.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    match out {
        // Written with the head, not formatted into a header value.
        Out::Length(n) => {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            wbuf.extend_from_slice(b"\r\n");
        }
        Out::Chunked => wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !upgraded {
        if !keep {
            wbuf.extend_from_slice(b"connection: close\r\n");
        } else if to.version == Version::HTTP_10 {
            wbuf.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !dated {
        wbuf.extend_from_slice(b"date: ");
        with_date(|d| wbuf.extend_from_slice(d));
        wbuf.extend_from_slice(b"\r\n");
    }
    if let Some(f) = &finish {
        f.write(wbuf);
    }
    wbuf.extend_from_slice(b"\r\n");
    crate::header_maps::give(parts.headers);

    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    if out == Out::None {
        // Read to its end all the same (an upstream connection returns to its pool then),
        // and dropped.
        write_all(shared, wbuf).await?;
        wbuf.clear();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if f.is_err() {
                keep = false;
                break;
            }
        }
    } else {
        loop {
            // Gather what the body has ready; write when it has nothing more for now.
            let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(f) => Poll::Ready(Some(f)),
                Poll::Pending if !wbuf.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await;
            let frame = match next {
                None => {
                    // Out to the socket, TLS records too, before waiting on the body.
                    write_all(shared, wbuf).await?;
                    wbuf.clear();
                    std::future::poll_fn(|cx| shared.lock().io()?.poll_flush(cx)).await?;
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    // The client must see the body cut short, not ended: no last chunk, and
                    // the connection closes.
                    tracing::debug!(error = %e, "response body failed");
                    write_all(shared, wbuf).await?;
                    wbuf.clear();
                    return Ok(Written::Close);
                }
                Some(Some(Ok(f))) => f,
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers are not passed on
            };
            if data.is_empty() {
                continue;
            }
            if matches!(out, Out::Length(_)) && left == 0 {
                keep = false;
                break;
            }
            if let Out::Length(_) = out {
                if data.len() as u64 > left {
                    tracing::debug!("response body longer than its Content-Length; cut");
                    data.truncate(left as usize);
                    keep = false;
                }
                left -= data.len() as u64;
            }
            if out == Out::Chunked {
                use std::io::Write;
                let _ = write!(wbuf, "{:x}\r\n", data.len());
            }
            if wbuf.len() + data.len() <= WRITE_BATCH {
                wbuf.extend_from_slice(&data);
            } else {
                write_all(shared, wbuf).await?;
                wbuf.clear();
                write_all(shared, &data).await?;
            }
            if out == Out::Chunked {
                wbuf.extend_from_slice(b"\r\n");
            }
            if matches!(out, Out::Length(_)) && left == 0 && !keep {
                break;
            }
        }
        match out {
            Out::Chunked => wbuf.extend_from_slice(LAST_CHUNK),
            Out::Length(_) if left != 0 => {
                tracing::debug!(
                    short = left,
                    "response body shorter than its Content-Length"
                );
                keep = false;
            }
            _ => {}
        }
        write_all(shared, wbuf).await?;
        wbuf.clear();
    }
    std::future::poll_fn(|cx| shared.lock().io()?.poll_flush(cx)).await?;
    Ok(match (upgraded, keep) {
        (true, _) => Written::Upgraded,
        (false, true) => Written::KeepAlive,
        (false, false) => Written::Close,
    })
}

async fn write_all<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<S>,
    buf: &[u8],
) -> io::Result<()> {
    let mut at = 0;
    std::future::poll_fn(|cx| {
        let mut g = shared.lock();
        ready!(g.poll_continue(cx))?;
        while at < buf.len() {
            let n = ready!(g.io()?.poll_write(cx, &buf[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            at += n;
        }
        Poll::Ready(Ok(()))
    })
    .await
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The `Date` value: when the response is written (RFC 9110 §6.6.1), formatted once a second
/// per worker.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let n = text.len().min(29);
            d.1[..n].copy_from_slice(&text.as_bytes()[..n]);
            d.0 = secs;
        }
        f(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(bytes);
        parse_request(&mut buf, 64 << 10)
    }

    #[test]
    fn heads_parse_with_their_framing_and_keep_alive() {
        let h = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=1");
        assert_eq!(h.headers["host"], "a.test");
        assert_eq!(h.body, RequestBodyFraming::None);
        assert!(h.keep_alive && !h.upgrade && !h.expect_continue);

        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, RequestBodyFraming::Length(5));
        assert!(h.expect_continue && !h.keep_alive);

        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, RequestBodyFraming::Chunked);

        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
    }

    #[test]
    fn smuggling_shapes_are_refused_with_the_right_status() {
        let err = |b: &[u8]| parse(b).unwrap_err();
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::LengthAndCoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            HeadError::LengthAndCoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::TransferCoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::TransferEncoding10
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            HeadError::ContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"),
            HeadError::ContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n"),
            HeadError::ContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n"),
            HeadError::ContentLength
        );
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            HeadError::Syntax(_)
        ));
    }

    #[test]
    fn a_head_over_the_limits_is_431_before_it_ends() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-A: "[..]);
        buf.extend_from_slice(&[b'a'; 2000]);
        assert_eq!(
            parse_request(&mut buf, 1024).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HeadError::TooManyFields);
    }
}
