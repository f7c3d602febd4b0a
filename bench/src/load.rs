//! The one load generator every proxy scenario uses, for every target alike.
//!
//! Why our own and not `wrk`: `wrk` cannot send an SNI other than the URL's host (Palisade
//! refuses a handshake for a name it has no certificate for), has no open-loop mode (`wrk2` is
//! not packaged in Debian), and cannot rotate `X-Forwarded-For` per request. This one is a
//! single-threaded tokio runtime (one core, like the proxies it measures) driving plain
//! HTTP/1.1 over TCP or rustls, no HTTP library in the measured path.
//!
//! - **Closed loop** ([`Mode::Closed`]): each connection sends its next request as soon as the
//!   previous answer is read: the maximum rate.
//! - **Open loop** ([`Mode::Open`]): each connection has a fixed schedule (rate / connections per
//!   second). A request that could not be sent on time because the previous answer was late is
//!   timed from when it *should* have been sent, so a stall counts against every request it
//!   delayed (the coordinated-omission correction of wrk2 and HdrHistogram). A request sent on
//!   time is timed from when it was sent, so the generator's timer granularity is not charged
//!   to the server.
//! - **New connections** ([`Mode::NewConnections`]): connect, handshake, one request with
//!   `Connection: close`, per iteration, closed loop.
//!
//! Latencies are kept whole (microseconds, one `u32` each; a five-second run at 20,000 req/s is
//! 400 KB) and sorted at the end, so percentiles are exact rather than bucketed.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP endpoint under load.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
    /// `Host` header (and SNI with TLS).
    pub host: String,
    pub path: String,
    /// Extra header lines sent with every request.
    pub headers: Vec<(String, String)>,
    /// `X-Forwarded-For` values used in turn (none when empty).
    pub xff: Vec<String>,
}

impl Target {
    pub fn new(addr: SocketAddr, host: &str) -> Target {
        Target {
            addr,
            tls: None,
            host: host.to_string(),
            path: "/".to_string(),
            headers: Vec::new(),
            xff: Vec::new(),
        }
    }

    pub fn with_tls(mut self, tls: Tls) -> Target {
        self.tls = Some(tls);
        self
    }
}

#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl Tls {
    /// TLS 1.3 only, X25519 only, TLS_AES_128_GCM_SHA256 only, no resumption, ALPN
    /// `http/1.1`: every server negotiates exactly the same thing.
    ///
    /// The client accepts only the certificate whose bytes are `leaf_der` and does not check
    /// the handshake's signature (as `wrk` runs with verification off): the servers still do
    /// all their work (key exchange, signing), and the generator's cost per handshake stays
    /// below theirs, so `tls-handshakes` measures the servers rather than the client.
    pub fn new(leaf_der: &[u8], name: &str) -> anyhow::Result<Tls> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedLeaf(leaf_der.to_vec())))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            name: ServerName::try_from(name.to_string())?,
        })
    }
}

/// Accepts exactly one certificate, by its bytes.
#[derive(Debug)]
struct PinnedLeaf(Vec<u8>);

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server showed another certificate than the benchmark's".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never used (the client speaks TLS 1.3 only); the same answer as for 1.3.
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
        ]
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed,
    /// Requests a second, over all the connections to one target.
    Open {
        rate: f64,
    },
    NewConnections,
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Connections (or concurrent new-connection loops) per target.
    pub conns: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub mode: Mode,
}

/// What one target answered during the measured window.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// The first non-2xx answer or error, for the report.
    pub first_problem: Option<String>,
    pub seconds: f64,
    /// Sorted, microseconds.
    pub latency_us: Vec<u32>,
}

impl Outcome {
    /// Successful requests a second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Latency at percentile `p` (0-100), milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latency_us.is_empty() {
            return f64::NAN;
        }
        // Nearest rank; the epsilon keeps 99.9% of 1000 at rank 999 despite rounding.
        let rank = ((p / 100.0) * self.latency_us.len() as f64 - 1e-9).ceil() as usize;
        self.latency_us[rank.clamp(1, self.latency_us.len()) - 1] as f64 / 1000.0
    }

    /// Why this run cannot be reported as a number: any error or non-2xx answer.
    pub fn problem(&self) -> Option<String> {
        if self.errors == 0 && self.non_2xx == 0 {
            if self.ok == 0 {
                return Some("no request completed".into());
            }
            return None;
        }
        Some(format!(
            "{} errors, {} non-2xx of {} (first: {})",
            self.errors,
            self.non_2xx,
            self.ok + self.errors + self.non_2xx,
            self.first_problem.as_deref().unwrap_or("?")
        ))
    }

    fn note(&mut self, problem: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(problem);
        }
    }

    /// Add `o`'s counts and latencies (unsorted) to these.
    pub fn merge(&mut self, o: Outcome) {
        self.ok += o.ok;
        self.non_2xx += o.non_2xx;
        self.errors += o.errors;
        if self.first_problem.is_none() {
            self.first_problem = o.first_problem;
        }
        self.latency_us.extend(o.latency_us);
    }
}

/// Load every target at once with `spec` (each gets `spec.conns` connections and, in open loop,
/// the whole rate); one [`Outcome`] per target. Runs on the calling thread and returns after
/// `warmup + measure` (plus at most the request timeout).
pub fn run(targets: &[Target], spec: &Spec) -> Vec<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let start = Instant::now() + Duration::from_millis(20);
        let from = start + spec.warmup;
        let end = from + spec.measure;
        let mut tasks = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            let t = Rc::new(t.clone());
            for c in 0..spec.conns {
                let t = t.clone();
                let spec = *spec;
                let window = Window { start, from, end };
                tasks.push((
                    ti,
                    tokio::task::spawn_local(async move {
                        match spec.mode {
                            Mode::NewConnections => fresh_loop(&t, window).await,
                            Mode::Closed => keepalive_loop(&t, window, None, c).await,
                            Mode::Open { rate } => {
                                let every = Duration::from_secs_f64(spec.conns as f64 / rate);
                                let offset = every.mul_f64(c as f64 / spec.conns as f64);
                                keepalive_loop(&t, window, Some((every, offset)), c).await
                            }
                        }
                    }),
                ));
            }
        }
        let mut out = vec![Outcome::default(); targets.len()];
        for (ti, task) in tasks {
            match task.await {
                Ok(o) => out[ti].merge(o),
                Err(e) => {
                    out[ti].errors += 1;
                    out[ti].note(format!("load task failed: {e}"));
                }
            }
        }
        for o in &mut out {
            o.seconds = spec.measure.as_secs_f64();
            o.latency_us.sort_unstable();
        }
        out
    })
}

/// Open `n` keep-alive connections to `t`, spread over `sources` (each connection bound to one,
/// in turn), each through its handshake and one answered request, and call `measure` while
/// they are all open and idle; then close them. How many were opened, and what `measure` gave.
/// Connections are opened 20 at a time, each within the request timeout.
pub fn hold<R>(
    t: &Target,
    sources: &[std::net::IpAddr],
    n: usize,
    measure: impl FnOnce() -> R,
) -> io::Result<(usize, R)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let open = |src: std::net::IpAddr| async move {
        let mut phase = "connecting";
        let result = tokio::time::timeout(TIMEOUT, async {
            let sock = match src {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            sock.bind(SocketAddr::new(src, 0))?;
            let tcp = sock.connect(t.addr).await?;
            tcp.set_nodelay(true)?;
            phase = "in the TLS handshake";
            let mut c: Box<dyn Io> = match &t.tls {
                None => Box::new(tcp),
                Some(tls) => Box::new(
                    tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(tls.name.clone(), tcp)
                        .await?,
                ),
            };
            phase = "waiting for the answer";
            c.write_all(&request(t, 0, false)).await?;
            let mut buf = Vec::with_capacity(4096);
            match read_response(&mut c, &mut buf).await? {
                (status, false) if (200..300).contains(&status) => Ok(c),
                (status, closed) => Err(io::Error::other(format!(
                    "answer {status}{}",
                    if closed { ", connection closed" } else { "" }
                ))),
            }
        })
        .await;
        result.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("from {src}: nothing for 10 s {phase}"),
            ))
        })
    };
    rt.block_on(async {
        let mut held = Vec::with_capacity(n);
        while held.len() < n {
            let batch = (n - held.len()).min(20);
            let start = held.len();
            let opened = futures::future::join_all(
                (0..batch).map(|i| open(sources[(start + i) % sources.len().max(1)])),
            )
            .await;
            for c in opened {
                held.push(c.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("connection {} of {n}: {e}", held.len() + 1),
                    )
                })?);
            }
        }
        // Let the servers finish with the last answers before they are measured idle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = measure();
        Ok((held.len(), r))
    })
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    /// Measured from here (after the warm-up)...
    from: Instant,
    /// ...to here.
    end: Instant,
}

const TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

async fn connect(t: &Target) -> io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match &t.tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(
            tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.name.clone(), tcp)
                .await?,
        ),
    })
}

fn request(t: &Target, n: u64, close: bool) -> Vec<u8> {
    let mut r = format!("GET {} HTTP/1.1\r\nhost: {}\r\n", t.path, t.host);
    for (k, v) in &t.headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !t.xff.is_empty() {
        r.push_str(&format!(
            "x-forwarded-for: {}\r\n",
            t.xff[n as usize % t.xff.len()]
        ));
    }
    if close {
        r.push_str("connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Record one finished request in `out` if it belongs to the measured window.
fn record(out: &mut Outcome, sent: Instant, w: &Window, result: io::Result<(u16, bool)>) {
    if sent < w.from || sent >= w.end {
        return;
    }
    match result {
        Ok((status, _)) if (200..300).contains(&status) => {
            out.ok += 1;
            let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
            out.latency_us.push(us);
        }
        Ok((status, _)) => {
            out.non_2xx += 1;
            out.note(format!("answer {status}"));
        }
        Err(e) => {
            out.errors += 1;
            out.note(e.to_string());
        }
    }
}

async fn keepalive_loop(
    t: &Target,
    w: Window,
    schedule: Option<(Duration, Duration)>,
    conn_index: usize,
) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<Box<dyn Io>> = None;
    let mut buf = Vec::with_capacity(16 << 10);
    let mut n = conn_index as u64;
    let mut k = 0u32;
    loop {
        // When the request is timed from: its slot in the schedule if the previous answer made
        // it late, or the moment it was sent.
        let sent = match schedule {
            None => Instant::now(),
            Some((every, offset)) => {
                let due = w.start + offset + every * k;
                k += 1;
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                }
            }
        };
        if sent >= w.end || Instant::now() >= w.end + TIMEOUT {
            break;
        }
        n += 1;
        let req = request(t, n, false);
        let result = tokio::time::timeout(TIMEOUT, async {
            if conn.is_none() {
                conn = Some(connect(t).await?);
            }
            let c = conn.as_mut().expect("connected");
            c.write_all(&req).await?;
            read_response(c, &mut buf).await
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 10 s")));
        let failed = !matches!(result, Ok((_, false)));
        if failed {
            conn = None;
            buf.clear();
        }
        let was_error = result.is_err();
        record(&mut out, sent, &w, result);
        if was_error && schedule.is_none() {
            // A refused connection must not become a busy loop.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

async fn fresh_loop(t: &Target, w: Window) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = Vec::with_capacity(16 << 10);
    let mut n = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        n += 1;
        let req = request(t, n, true);
        buf.clear();
        let result = tokio::time::timeout(TIMEOUT, async {
            let mut c = connect(t).await?;
            c.write_all(&req).await?;
            let r = read_response(&mut c, &mut buf).await;
            let _ = c.shutdown().await;
            r
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 10 s")));
        let was_error = result.is_err();
        record(&mut out, sent, &w, result);
        if was_error {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

async fn fill(c: &mut Box<dyn Io>, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    while buf.len() < want {
        if c.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-answer",
            ));
        }
    }
    Ok(())
}

/// Read one answer (content-length, chunked, or none) from `c`; its status, and whether the
/// server will close the connection. Bytes past the answer stay in `buf`.
async fn read_response(c: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> io::Result<(u16, bool)> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n", 0) {
            break p + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(io::Error::other("answer head over 64 KiB"));
        }
        if c.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| io::Error::other("answer head is not UTF-8"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status in the answer"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let end = if chunked {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n", pos) {
                    break p;
                }
                let want = buf.len() + 1;
                fill(c, buf, want).await?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end]).unwrap_or("");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            pos = line_end + 2 + size + 2;
            fill(c, buf, pos).await?;
            if size == 0 {
                break pos;
            }
        }
    } else {
        let end = head_end + length.unwrap_or(0);
        fill(c, buf, end).await?;
        end
    };
    buf.drain(..end);
    Ok((status, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_ranks() {
        let o = Outcome {
            ok: 1000,
            seconds: 2.0,
            latency_us: (1..=1000).collect(),
            ..Default::default()
        };
        assert_eq!(o.rate(), 500.0);
        assert_eq!(o.percentile_ms(50.0), 0.5);
        assert_eq!(o.percentile_ms(99.0), 0.99);
        assert_eq!(o.percentile_ms(99.9), 0.999);
        assert_eq!(o.percentile_ms(100.0), 1.0);
        assert_eq!(o.problem(), None);
    }
}
