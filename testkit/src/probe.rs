//! Plain-socket HTTP/1.1 tools for measurements: a fast local upstream, and a keep-alive client
//! that can present itself from any loopback address and send any `X-Forwarded-For`.
//! No HTTP library in the measured path, so the figures are Palisade's.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A keep-alive HTTP/1.1 server answering every request with 200 and a 1 KiB body. One thread
/// with a single-threaded tokio runtime serves every connection, so on a pinned core it is one
/// runnable thread next to the load generator (not one per connection, whose scheduling delays
/// would show up as the proxies' latency). Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub fn spawn() -> io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    while let Ok((c, _)) = listener.accept().await {
                        tokio::task::spawn_local(serve(c));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Upstream {
            addr,
            stop: Some(stop),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Answer each request head on `c` (the measured requests carry no body) until it closes.
async fn serve(mut c: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = c.set_nodelay(true);
    let body = [b'x'; 1024];
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(answer.len() * 4);
    loop {
        match c.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Every complete head in the buffer gets its answer, in one write.
        let mut consumed = 0;
        while let Some(end) = buf[consumed..].windows(4).position(|w| w == b"\r\n\r\n") {
            consumed += end + 4;
            out.extend_from_slice(&answer);
        }
        buf.drain(..consumed);
        if buf.len() > 64 << 10 {
            return;
        }
        if !out.is_empty() {
            if c.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// A keep-alive client to one address, connecting from `source` (any 127.0.0.0/8 address works
/// on Linux loopback), reconnecting after errors.
pub struct Probe {
    target: SocketAddr,
    source: Option<IpAddr>,
    conn: Option<BufReader<TcpStream>>,
    /// Header lines sent with every request, each ending in CRLF.
    headers: String,
}

/// One answer: status, header block (lower-cased names) and body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case(name)).then(|| v.trim())
        })
    }
}

impl Probe {
    pub fn new(target: SocketAddr, source: Option<IpAddr>) -> Probe {
        Probe {
            target,
            source,
            conn: None,
            headers: String::new(),
        }
    }

    /// Send `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Probe {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let s = match self.source {
            None => TcpStream::connect_timeout(&self.target, Duration::from_secs(2))?,
            Some(src) => {
                let domain = match src {
                    IpAddr::V4(_) => socket2::Domain::IPV4,
                    IpAddr::V6(_) => socket2::Domain::IPV6,
                };
                let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                sock.bind(&SocketAddr::new(src, 0).into())?;
                sock.connect_timeout(&self.target.into(), Duration::from_secs(2))?;
                sock.into()
            }
        };
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    }

    /// GET `/` for `host`, with `X-Forwarded-For: xff` when given; the response status.
    pub fn status(&mut self, host: &str, xff: Option<&str>) -> io::Result<u16> {
        Ok(self.get(host, "/", xff)?.status)
    }

    /// GET `path` for `host`: the whole answer.
    pub fn get(&mut self, host: &str, path: &str, xff: Option<&str>) -> io::Result<Answer> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{}", self.headers);
        if let Some(x) = xff {
            req.push_str(&format!("x-forwarded-for: {x}\r\n"));
        }
        req.push_str("\r\n");
        for attempt in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(BufReader::new(self.connect()?));
            }
            match self.exchange(req.as_bytes()) {
                Ok(s) => return Ok(s),
                Err(e) if attempt == 1 => return Err(e),
                Err(_) => self.conn = None,
            }
        }
        unreachable!()
    }

    fn exchange(&mut self, req: &[u8]) -> io::Result<Answer> {
        let r = self.conn.as_mut().expect("connected");
        r.get_mut().write_all(req)?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        let mut close = false;
        let mut head = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed in headers",
                ));
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        if close {
            self.conn = None;
        }
        Ok(Answer { status, head, body })
    }
}
