//! HTTP/1.1 to upstreams, the wire format alone (no I/O; [`crate::pool`] drives it over the
//! socket): the request head serialised into the connection's reused write buffer, the response
//! head parsed by `httparse` on the stack with its header values cut from the read buffer (no
//! copy), and the response body's framing with a chunked decoder.
//!
//! The framing is a proxy's (RFC 9112 §6): a response to `HEAD`, a 1xx, 204 or 304 has no body
//! whatever it declares; `Transfer-Encoding` wins over `Content-Length`, whose header is then
//! removed, and the connection is not used again after such a message; a transfer coding that
//! does not end in `chunked`, or no length at all, means the body runs to the connection's
//! close; a `Content-Length` that is not one decimal number (repeats must agree) is an error,
//! never a guess; interim 1xx answers (100, 103) are skipped. Chunk lines end in CRLF (a bare
//! LF or CR is an error), sizes fit in 64 bits, and a chunk line or the trailer section has a
//! size limit. The upstream request's own framing is the body's, never the client's headers:
//! a body of known length goes with `Content-Length`, one of unknown length chunked.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use hyper::header::{TRANSFER_ENCODING, UPGRADE};
use hyper::{Method, StatusCode, Version};

/// Header fields a response head may have (hyper's client has the same limit).
pub const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// A chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// The trailer section of a chunked body (read and dropped).
const MAX_TRAILERS: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the response head is not valid HTTP/1.x: {0}")]
    Head(httparse::Error),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the response status {0} is not one HTTP allows")]
    Status(u16),
    #[error("the response header field {0} is invalid")]
    Field(&'static str),
    #[error("the response's Content-Length is not one decimal number")]
    ContentLength,
    #[error("an HTTP/1.0 response with Transfer-Encoding (RFC 9112 §6.1: its framing is faulty)")]
    TransferEncoding10,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
    #[error("the upstream closed the connection before the body's end")]
    Truncated,
    #[error("the client closed the connection before the request body's end")]
    TruncatedRequest,
}

/// How the request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no `Content-Length` (a request without a body, as most are).
    None,
    /// `Content-Length: n` and exactly n bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl RequestFraming {
    /// The framing for a body: no body at all, a known length, or chunked. `declared` is
    /// whether the client sent a `Content-Length` (an empty body keeps its `Content-Length: 0`).
    pub fn of(end_stream: bool, exact: Option<u64>, declared: bool) -> RequestFraming {
        match (end_stream, exact) {
            (true, _) if !declared => RequestFraming::None,
            (true, _) => RequestFraming::Length(0),
            (false, Some(n)) => RequestFraming::Length(n),
            (false, None) => RequestFraming::Chunked,
        }
    }
}

/// Fields the edge sets on a request it forwards (`X-Forwarded-For`, `Host`, the request id…),
/// each a name and its value's bytes (no CR, LF or NUL: checked by the caller when it made
/// them). [`write_head`] writes them after the request's own fields, and leaves out any of the
/// request's own of the same names: they are replaced, without a map insert per field.
pub type Added<'a> = [(&'a HeaderName, &'a [u8])];

/// Serialise a request head into `out`: the request line (origin form: `target` is the path and
/// query), every header of `headers` but its framing ones and those `added` replaces, then
/// `added`, then `framing`'s. Header values hold no CR or LF (`HeaderValue` refuses them), so
/// nothing a client sent can end a line.
pub fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: &Added<'_>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || added.iter().any(|(n, _)| *n == name)
        {
            continue;
        }
        line(out, name, value.as_bytes());
    }
    for (name, value) in added {
        line(out, name, value);
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");

    fn line(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// One piece of a chunked request body: size line, data, CRLF.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// Header fields the edge may add to a response: HSTS and the other three security headers,
/// the request id, and a few to spare.
const ADDED_HEADERS: usize = 8;

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The header fields as sent (but `Content-Length` when `Transfer-Encoding` overrides it),
    /// values sharing the read buffer.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has ended.
    pub keep_alive: bool,
}

/// Parse the response head at the front of `buf`, consuming it (and any interim 1xx answers
/// before it). `Ok(None)`: the head is not complete yet; read more. `head_request`: the request
/// was `HEAD`, so the response has no body.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, CodecError> {
    loop {
        // Offsets of each header's name and value in `buf`, so the values can be cut from it
        // once the parser's borrow ends.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, minor, count) = {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut fields);
            let len = match res.parse(buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(CodecError::HeadTooLarge)
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(CodecError::Head(e)),
            };
            if len > MAX_HEAD_BYTES {
                return Err(CodecError::HeadTooLarge);
            }
            let base = buf.as_ptr() as usize;
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
                let (n, v) = (at(h.name.as_bytes()), at(h.value));
                *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
            }
            let code = res.code.unwrap_or(0);
            (len, code, res.version.unwrap_or(1), res.headers.len())
        };
        let status = StatusCode::from_u16(code).map_err(|_| CodecError::Status(code))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(CodecError::UnexpectedUpgrade);
            }
            // 100 Continue, 103 Early Hints: the final answer follows.
            buf.advance(len);
            continue;
        }
        let version = match minor {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let raw = buf.split_to(len).freeze();
        // Room for what the edge adds on the way out (security headers, the request id), so
        // the map is allocated once.
        let mut headers = crate::header_maps::take(count + ADDED_HEADERS);
        // Which of the fields framing and reuse depend on are there: those absent are not
        // looked up in the map.
        let mut present = Present::default();
        for &(ns, ne, vs, ve) in &spans[..count] {
            let name = HeaderName::from_bytes(&raw[ns as usize..ne as usize])
                .map_err(|_| CodecError::Field("name"))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
                .map_err(|_| CodecError::Field("value"))?;
            present.note(&name);
            headers.append(name, value);
        }
        let (framing, mut keep_alive) =
            framing(status, version, head_request, &mut headers, present)?;
        keep_alive &= version == Version::HTTP_11
            && !(present.connection && has_token(&headers, CONNECTION, "close"));
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Which of the fields that frame a message and say whether its connection is reused it has,
/// noted while its head is parsed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    pub connection: bool,
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub upgrade: bool,
}

impl Present {
    pub fn note(&mut self, name: &HeaderName) {
        if *name == CONNECTION {
            self.connection = true;
        } else if *name == CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == UPGRADE {
            self.upgrade = true;
        }
    }
}

/// The body's framing and whether it lets the connection be reused (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    version: Version,
    head_request: bool,
    headers: &mut HeaderMap,
    present: Present,
) -> Result<(Framing, bool), CodecError> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, true));
    }
    let last_coding = match present.transfer_encoding {
        true => headers.get_all(TRANSFER_ENCODING).iter().next_back(),
        false => None,
    };
    if let Some(last) = last_coding {
        if version == Version::HTTP_10 {
            return Err(CodecError::TransferEncoding10);
        }
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // Both framings on one message smell of smuggling: the length is dropped, and the
        // connection is not trusted with another request.
        let both = headers.remove(CONTENT_LENGTH).is_some();
        return Ok(match chunked {
            true => (Framing::Chunked, !both),
            false => (Framing::Close, false),
        });
    }
    let mut length = None;
    let lengths = match present.content_length {
        true => Some(headers.get_all(CONTENT_LENGTH)),
        false => None,
    };
    for v in lengths.into_iter().flatten() {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = decimal(part.trim_ascii()).ok_or(CodecError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(CodecError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// Digits only (no sign, no space, no list), fitting in 64 bits: a `Content-Length` value.
pub fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether a comma-separated header (`Connection`, `Upgrade`) lists `token`.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes, cut from the buffer.
    Data(Bytes),
    /// Nothing complete: read more.
    More,
    /// The last chunk and the trailers have been read.
    End,
}

/// A chunked body being decoded (RFC 9112 §7.1); trailers are read and dropped.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes left in the current chunk.
    left: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// Decode what `buf` holds, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, CodecError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Step::End),
                ChunkState::Size => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE, "chunk size line too long")? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        self.left = size;
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = buf
                        .len()
                        .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::Chunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes);
                    let Some(line) = line(buf, room, "trailer section too large")? else {
                        return Ok(Step::More);
                    };
                    if buf[..line].iter().any(|&b| b < b' ' && b != b'\t') {
                        return Err(CodecError::Chunk("control character in a trailer"));
                    }
                    buf.advance(line + 2);
                    self.trailer_bytes += line + 2;
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The length of the line at the front of `buf` (without its CRLF), `None` when its end has
/// not arrived yet. A line longer than `max` or ending in a bare LF is an error.
fn line(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, CodecError> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(CodecError::Chunk("bare LF")),
        Some(lf) if window[lf - 1] != b'\r' => Err(CodecError::Chunk("bare LF")),
        Some(lf) => Ok(Some(lf - 1)),
        None if window.len() > max => Err(CodecError::Chunk(too_long)),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`: the size of a chunk.
fn chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(CodecError::Chunk("no chunk size"));
    }
    if digits > 16 {
        return Err(CodecError::Chunk("chunk size over 64 bits"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        n << 4 | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    let rest = &line[digits..];
    let space = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let ext = &rest[space..];
    if !(ext.is_empty() || ext[0] == b';') {
        return Err(CodecError::Chunk("invalid chunk size"));
    }
    if ext.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(CodecError::Chunk("control character in a chunk extension"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(bytes), head_request)
    }

    /// The whole body of a chunked message, or its error.
    fn chunked(bytes: &[u8]) -> Result<(Vec<u8>, usize), CodecError> {
        let mut buf = BytesMut::from(bytes);
        let mut dec = Chunked::default();
        let mut body = Vec::new();
        loop {
            match dec.decode(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::More => return Err(CodecError::Truncated),
                Step::End => return Ok((body, buf.len())),
            }
        }
    }

    #[test]
    fn the_request_head_is_origin_form_with_the_bodys_own_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.test"));
        // What the client said about framing is replaced by what the body is.
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut out = Vec::new();
        write_head(
            &mut out,
            &Method::POST,
            "/a?b=1",
            &h,
            &[],
            RequestFraming::Length(5),
        );
        assert_eq!(
            out,
            &b"POST /a?b=1 HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 6.6.6.6\r\naccept: */*\r\ncontent-length: 5\r\n\r\n"[..]
        );
        // What the edge sets replaces the request's fields of the same names, wherever they
        // stood, and comes after the rest.
        out.clear();
        let xff = HeaderName::from_static("x-forwarded-for");
        write_head(
            &mut out,
            &Method::GET,
            "/",
            &h,
            &[
                (&xff, &b"1.2.3.4"[..]),
                (&hyper::header::HOST, &b"b.test"[..]),
            ],
            RequestFraming::None,
        );
        assert_eq!(
            out,
            &b"GET / HTTP/1.1\r\naccept: */*\r\nx-forwarded-for: 1.2.3.4\r\nhost: b.test\r\n\r\n"[..]
        );
        out.clear();
        write_head(
            &mut out,
            &Method::GET,
            "/",
            &HeaderMap::new(),
            &[],
            RequestFraming::None,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        out.clear();
        write_head(
            &mut out,
            &Method::PUT,
            "/",
            &HeaderMap::new(),
            &[],
            RequestFraming::Chunked,
        );
        assert_eq!(out, b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
        out.clear();
        write_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert_eq!(&out[30..], b"\r\n");
        assert_eq!(
            RequestFraming::of(true, Some(0), false),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::of(true, Some(0), true),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::of(false, Some(7), true),
            RequestFraming::Length(7)
        );
        assert_eq!(
            RequestFraming::of(false, None, false),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn response_heads_parse_with_their_framing() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-a"], "b");

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf, false).unwrap().is_none(), "partial");
        assert_eq!(buf.len(), 27, "nothing consumed until the head is whole");

        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.unwrap().framing, Framing::Chunked);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.version, h.keep_alive), (Version::HTTP_10, false));
    }

    #[test]
    fn bodyless_answers_have_no_body_whatever_they_declare() {
        for (raw, head_request) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 50\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        ] {
            let h = head(raw, head_request).unwrap().unwrap();
            assert_eq!(
                h.framing,
                Framing::Empty,
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert!(h.keep_alive);
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_an_unasked_upgrade_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert!(
            !h.headers.contains_key("link"),
            "the interim answer's fields are not kept"
        );
        assert_eq!(&buf[..], b"ok");
        let e = head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).unwrap_err();
        assert_eq!(e, CodecError::UnexpectedUpgrade);
    }

    #[test]
    fn smuggling_shapes_are_errors_or_lose_their_length() {
        // Transfer-Encoding wins; the length is removed and the connection not reused.
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
        // A coding other than chunked last: read to the close.
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, Framing::Close);
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, Framing::Chunked);
        // Repeated lengths must agree.
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, Framing::Length(4));
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n", false);
        assert_eq!(h.unwrap().unwrap().framing, Framing::Length(4));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        ] {
            assert_eq!(
                head(bad, false).unwrap_err(),
                CodecError::ContentLength,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = head(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap_err();
        assert_eq!(e, CodecError::TransferEncoding10);
        // Not HTTP, or a status out of range.
        assert!(matches!(
            head(b"HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(CodecError::Head(_))
        ));
        assert_eq!(
            head(b"HTTP/1.1 099 X\r\n\r\n", false).unwrap_err(),
            CodecError::Status(99)
        );
        assert!(head(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        // A folded header line (obs-fold) is refused, as hyper's client does.
        assert!(head(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_head_over_the_limit_is_refused_before_it_ends() {
        // One long field, not yet ended: refused once the limit is reached.
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(head(&big, false).unwrap_err(), CodecError::HeadTooLarge);
        big.truncate(MAX_HEAD_BYTES - 100);
        assert!(
            head(&big, false).unwrap().is_none(),
            "under the limit: read more"
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            head(&many, false).unwrap_err(),
            CodecError::Head(httparse::Error::TooManyHeaders)
        );
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, left) =
            chunked(b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(left, 4, "what follows the body stays in the buffer");
        let (body, _) = chunked(b"A \r\n0123456789\r\n00\r\n\r\n").unwrap();
        assert_eq!(body, b"0123456789");
        // Fed a byte at a time, the same.
        let raw = b"3\r\nabc\r\n1;x\r\nd\r\n0\r\nT: v\r\n\r\n";
        let (mut buf, mut dec, mut body) = (BytesMut::new(), Chunked::default(), Vec::new());
        for &b in raw.iter() {
            buf.extend_from_slice(&[b]);
            while let Step::Data(d) = dec.decode(&mut buf).unwrap() {
                body.extend_from_slice(&d);
            }
        }
        assert!(dec.is_done());
        assert_eq!(body, b"abcd");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"5 5\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"5;a\rb\r\nhello\r\n",
            b"5\r;a\r\nhello\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            assert!(
                matches!(chunked(bad), Err(CodecError::Chunk(_))),
                "{}: {:?}",
                String::from_utf8_lossy(bad),
                chunked(bad)
            );
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE + 10]].concat();
        assert_eq!(
            chunked(&long).unwrap_err(),
            CodecError::Chunk("chunk size line too long")
        );
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"X-T: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            chunked(&trailers).unwrap_err(),
            CodecError::Chunk("trailer section too large")
        );
        // 16 hex digits is the most that fits.
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        let mut dec = Chunked::default();
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"ab"))
        );
    }
}
