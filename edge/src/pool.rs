//! Upstream connections: HTTP/1.1 in the edge's own codec ([`crate::codec`]) over connections
//! kept per target by the thread that made them, and driven by the task of the request that
//! uses them. No task per connection, no channel, no lock, no copy of the response: a request
//! checks a connection out of its worker's pool, writes its head (a small body goes in the same
//! write) into the connection's reused buffer and reads the response head in its own task; the
//! response body is cut from the read buffer as the client takes it, and the connection goes
//! back when the body has ended, with nothing unread behind it.
//!
//! A connection the upstream closed while idle is found at checkout (a read that does not wait)
//! and by the sweep, which also closes those idle longer than [`IDLE_TIMEOUT`]. Upgrades
//! (WebSocket) do not come here: they take a connection of their own ([`crate::proxy`]).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::CONTENT_LENGTH;
use hyper::Method;
use palisade_raft::task::Shutdown;
use tokio::io::AsyncWrite as _;
use tokio::net::TcpStream;

use crate::codec::{self, Chunked, CodecError, Framing, Head, RequestFraming, Step};
use crate::response::{Body, BoxError};
use crate::upstream::InFlight;

/// An idle connection older than this is closed rather than used (upstreams commonly close
/// theirs after 60 to 75 seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle connections kept per target by each worker; more are closed when they come back.
pub const MAX_IDLE_PER_TARGET: usize = 256;
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Read buffer growth: at least this much room before each read.
const READ_ROOM: usize = 4 << 10;
const READ_GROW: usize = 16 << 10;
/// An idle connection's buffers larger than this are let go.
const KEPT_BUFFER: usize = 32 << 10;
/// A request body is gathered up to this much before it is written.
const WRITE_BATCH: usize = 64 << 10;

/// One upstream connection and its buffers.
pub struct Upstream {
    io: TcpStream,
    /// What was read and not yet handed on: a response head, body bytes.
    rbuf: BytesMut,
    /// What is to be written, from `written` on.
    wbuf: Vec<u8>,
    written: usize,
    /// Whether the socket has taken any byte of the current request.
    started: bool,
    /// The target's address: the pool's key.
    key: Arc<str>,
    idle_since: Instant,
    /// Whether it carried a request before this one.
    pub reused: bool,
    /// The response deadline, made with the connection's first request and moved on by each
    /// next one (tokio extends a registered timer without touching its wheel): one timer per
    /// connection, not one per request.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What is left of a request body to send.
pub struct Outgoing {
    body: Body,
    chunked: bool,
}

/// A response head and what is left to send of the request.
pub struct Exchange {
    pub head: Head,
    out: Option<Outgoing>,
    /// The response timeout, which then bounds each wait for more of the body.
    within: Duration,
}

/// Why an exchange gave no response head.
pub enum SendError {
    /// The connection closed (or was reset) before a byte of the response arrived (an interim
    /// 1xx counts as one). `again` is the request body when none of it was taken, so the
    /// request can go on another connection; `unsent`: whether the socket took no byte of the
    /// request at all, so the upstream cannot have acted on it.
    Closed {
        again: Option<Body>,
        unsent: bool,
        error: io::Error,
    },
    /// The request body failed: over the project's limit, or the client went away.
    Body(BoxError),
    /// The answer broke HTTP/1.1, or the connection failed during it.
    Protocol(BoxError),
    /// No response head within the response timeout.
    TimedOut,
}

enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

thread_local! {
    static IDLE: RefCell<foldhash::HashMap<Arc<str>, Vec<Upstream>>> = RefCell::default();
}

/// An idle connection to `key` from this thread's pool, most recently used first; those the
/// upstream closed, or idle too long, are closed on the way.
pub fn checkout(key: &str) -> Option<Upstream> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() < IDLE_TIMEOUT && c.usable() {
                c.reused = true;
                return Some(c);
            }
        }
        None
    })
}

/// Hand a connection whose exchange ended cleanly back to this thread's pool.
fn checkin(mut c: Upstream) {
    c.idle_since = Instant::now();
    // An idle connection keeps small buffers, whatever its last exchange needed.
    if c.wbuf.capacity() > KEPT_BUFFER {
        c.wbuf = Vec::new();
    }
    if c.rbuf.capacity() > KEPT_BUFFER {
        c.rbuf = BytesMut::new();
    }
    IDLE.with_borrow_mut(|idle| {
        let list = match idle.get_mut(&*c.key) {
            Some(list) => list,
            None => idle.entry(c.key.clone()).or_default(),
        };
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(c);
        }
    });
}

/// Close this thread's idle connections that the upstream closed or that idled too long, every
/// few seconds until `shutdown`.
pub async fn sweep(shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        IDLE.with_borrow_mut(|idle| {
            idle.retain(|_, list| {
                list.retain_mut(|c| c.idle_since.elapsed() < IDLE_TIMEOUT && c.usable());
                !list.is_empty()
            })
        });
    }
    IDLE.with_borrow_mut(|idle| idle.clear());
}

impl Upstream {
    /// A connection over a connected socket (HTTP/1.1 needs no handshake).
    pub fn new(io: TcpStream, key: Arc<str>) -> Upstream {
        Upstream {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            written: 0,
            started: false,
            key,
            idle_since: Instant::now(),
            reused: false,
            deadline: None,
        }
    }

    /// Whether the idle connection may carry a request: nothing unread, and a read that does not
    /// wait finds neither a close nor stray bytes (tokio knows without a system call unless the
    /// socket became readable since the last read).
    fn usable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        self.rbuf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Send a request (`target`: its path and query; `added`: the fields the edge sets, see
    /// [`codec::write_head`]) and read until the response head has arrived, for at most
    /// `within`. The request body goes with the head when it is ready, and
    /// on (in the response body) when it is not.
    pub async fn send(
        &mut self,
        parts: &hyper::http::request::Parts,
        target: &str,
        added: &codec::Added<'_>,
        body: Body,
        within: Duration,
    ) -> Result<Exchange, SendError> {
        let framing = RequestFraming::of(
            body.is_end_stream(),
            body.size_hint().exact(),
            parts.headers.contains_key(CONTENT_LENGTH),
        );
        self.wbuf.clear();
        self.written = 0;
        self.started = false;
        codec::write_head(
            &mut self.wbuf,
            &parts.method,
            target,
            &parts.headers,
            added,
            framing,
        );
        let mut out = match body.is_end_stream() {
            true => None,
            false => Some(Outgoing {
                body,
                chunked: framing == RequestFraming::Chunked,
            }),
        };
        let head_request = parts.method == Method::HEAD;
        let at = tokio::time::Instant::now() + within;
        let mut deadline = match self.deadline.take() {
            Some(mut d) => {
                d.as_mut().reset(at);
                d
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        let (mut untouched, mut written, mut write_failed) = (true, false, None);
        // Whether any byte of an answer arrived, interim ones included.
        let mut answered = false;
        let result = std::future::poll_fn(|cx| {
            if !written && write_failed.is_none() {
                match self.poll_write(&mut out, &mut untouched, cx) {
                    Poll::Ready(Ok(())) => written = true,
                    Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
                    Poll::Ready(Err(WriteError::Body(e))) => {
                        return Poll::Ready(Err(SendError::Body(e)))
                    }
                    Poll::Pending => {}
                }
            }
            // Read even while the request is going out: an upstream may answer early (a 413)
            // and close.
            loop {
                if !self.rbuf.is_empty() {
                    match codec::parse_head(&mut self.rbuf, head_request) {
                        Ok(Some(head)) => return Poll::Ready(Ok(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(SendError::Protocol(e.into()))),
                    }
                }
                let error = match self.poll_fill(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(0)) => io::Error::from(io::ErrorKind::UnexpectedEof),
                    Poll::Ready(Ok(_)) => {
                        answered = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => e,
                };
                if answered {
                    // Part of a head, or an interim answer, then the close: the upstream had
                    // the request.
                    let e: BoxError = match error.kind() {
                        io::ErrorKind::UnexpectedEof => CodecError::Truncated.into(),
                        _ => error.into(),
                    };
                    return Poll::Ready(Err(SendError::Protocol(e)));
                }
                let again = match (untouched, out.take()) {
                    (true, Some(o)) => Some(o.body),
                    (true, None) => Some(crate::response::empty()),
                    (false, _) => None,
                };
                return Poll::Ready(Err(SendError::Closed {
                    again,
                    unsent: !self.started,
                    error: write_failed.take().unwrap_or(error),
                }));
            }
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(SendError::TimedOut)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        self.deadline = Some(deadline);
        let mut head = result?;
        if write_failed.is_some() {
            // The upstream answered and stopped reading before it had the whole request: the
            // connection ends with this exchange, and the rest of the request is not sent.
            out = None;
            self.wbuf.clear();
            self.written = 0;
            head.keep_alive = false;
        }
        Ok(Exchange { head, out, within })
    }

    /// Write what is pending and what the request body has ready; `Ready(Ok)` once all of it,
    /// the body's end included, has been written. `untouched` turns false once a body frame
    /// has been taken.
    fn poll_write(
        &mut self,
        out: &mut Option<Outgoing>,
        untouched: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather what the body has ready behind the head, so a small body leaves with it.
            while self.wbuf.len() - self.written < WRITE_BATCH {
                let Some(o) = out else { break };
                match Pin::new(&mut o.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        if o.chunked {
                            self.wbuf.extend_from_slice(codec::LAST_CHUNK);
                        }
                        *out = None;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        *untouched = false;
                        // Trailers are not sent upstream.
                        if let Ok(data) = frame.into_data() {
                            match (o.chunked, data.is_empty()) {
                                (_, true) => {}
                                (true, false) => codec::write_chunk(&mut self.wbuf, &data),
                                (false, false) => self.wbuf.extend_from_slice(&data),
                            }
                        }
                    }
                }
            }
            if self.written == self.wbuf.len() {
                return match out {
                    None => Poll::Ready(Ok(())),
                    Some(_) => Poll::Pending,
                };
            }
            while self.written < self.wbuf.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.started = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.wbuf.clear();
            self.written = 0;
            if out.is_none() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Whether bytes of the request are still to be written (the body's, or the end of its head
    /// when the upstream answered early).
    fn writing(&self, out: &Option<Outgoing>) -> bool {
        out.is_some() || self.written < self.wbuf.len()
    }

    /// Read into the read buffer; `Ready(Ok(0))` at the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM {
            self.rbuf.reserve(READ_GROW);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// A response body from a pooled connection: polling it reads the connection (and finishes
/// sending the request body), and the connection returns to the pool when the body has ended.
pub struct Driven {
    conn: Option<Upstream>,
    state: State,
    out: Option<Outgoing>,
    keep_alive: bool,
    /// The longest wait for the next bytes of the body (as nginx's `proxy_read_timeout`):
    /// an upstream that stalls mid-body does not hold the request for ever.
    within: Duration,
    /// Whether bytes arrived since the connection's deadline was last moved on.
    moved: bool,
    _inflight: InFlight,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// One poll's finding.
enum Found {
    Data(Bytes, bool),
    End,
    Read,
    Failed(BoxError),
}

impl Driven {
    pub fn new(conn: Upstream, x: Exchange, inflight: InFlight) -> Driven {
        let state = match x.head.framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::Close => State::Close,
        };
        let mut d = Driven {
            conn: Some(conn),
            state,
            out: x.out,
            keep_alive: x.head.keep_alive,
            within: x.within,
            moved: true,
            _inflight: inflight,
        };
        if matches!(d.state, State::Done) {
            d.finish();
        }
        d
    }

    /// The body has ended: the connection goes back if it may carry another request, with
    /// the whole request sent and nothing unread behind the response.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(c) = self.conn.take() {
            if self.keep_alive && !c.writing(&self.out) && c.rbuf.is_empty() {
                checkin(c);
            }
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(e)))
    }
}

impl hyper::body::Body for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(c) = &mut this.conn else {
                return Poll::Ready(None);
            };
            if c.writing(&this.out) {
                let mut untouched = false;
                match c.poll_write(&mut this.out, &mut untouched, cx) {
                    // The upstream answered and stopped reading: this connection ends here.
                    Poll::Ready(Err(WriteError::Io(_))) => {
                        this.out = None;
                        this.keep_alive = false;
                    }
                    // The client's body failed (over the limit, or the client left): closing
                    // the connection tells the upstream it will not get the rest.
                    Poll::Ready(Err(WriteError::Body(e))) => return this.fail(e),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            let found = match &mut this.state {
                State::Done => Found::End,
                State::Length(_) | State::Close if c.rbuf.is_empty() => Found::Read,
                State::Length(left) => {
                    let n = c
                        .rbuf
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    Found::Data(c.rbuf.split_to(n).freeze(), *left == 0)
                }
                State::Close => Found::Data(c.rbuf.split().freeze(), false),
                State::Chunked(dec) => match dec.decode(&mut c.rbuf) {
                    Ok(Step::Data(d)) => Found::Data(d, false),
                    Ok(Step::End) => Found::End,
                    Ok(Step::More) => Found::Read,
                    Err(e) => Found::Failed(e.into()),
                },
            };
            match found {
                Found::Data(d, last) => {
                    if last {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Found::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Found::Failed(e) => return this.fail(e),
                Found::Read => match c.poll_fill(cx) {
                    Poll::Pending => {
                        // Waiting for the upstream: at most `within` since its last bytes. The
                        // deadline moves only when a wait begins after progress, so a body that
                        // arrives in one read never touches the timer.
                        let Some(deadline) = c.deadline.as_mut() else {
                            return Poll::Pending;
                        };
                        if std::mem::take(&mut this.moved) {
                            deadline
                                .as_mut()
                                .reset(tokio::time::Instant::now() + this.within);
                        }
                        return match deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => this.fail(Box::new(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the upstream sent no more of its answer within the response timeout",
                            ))),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                    Poll::Ready(Ok(0)) if matches!(this.state, State::Close) => {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => return this.fail(CodecError::Truncated.into()),
                    Poll::Ready(Ok(_)) => {
                        this.moved = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
