//! Outside load generators, to cross-check the suite's own: `wrk` (HTTP/1.1, Debian's `wrk`) and
//! `h2load` (HTTP/2, and HTTP/1.1 with `--h1`; Debian's `nghttp2-client`). Each run is bounded
//! by its duration and stops by itself; its text report is parsed into a [`Tally`].
//!
//! Both send the URL's host as SNI and `Host`/`:authority`, and Palisade refuses a handshake for a
//! name it has no certificate for, so the URL names the benchmark's host. `h2load` connects to
//! the loopback address given with `--connect-to`; `wrk` has no such option, so it runs in a
//! mount namespace of its own (`unshare --mount`) where a hosts file maps the name to loopback:
//! the machine's `/etc/hosts` is never touched.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What one outside run reported.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests answered with a 2xx (h2load) or answered at all (wrk, which counts non-2xx
    /// apart in `failed`).
    pub ok: u64,
    /// Requests that failed: errors, timeouts, non-2xx answers.
    pub failed: u64,
    pub seconds: f64,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Why the run cannot count, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.ok == 0 {
            Some("no request succeeded".into())
        } else if self.failed > 0 {
            Some(format!("{} requests failed", self.failed))
        } else {
            None
        }
    }
}

/// `wrk` over HTTPS to `host` at `addr`: one thread, `conns` keep-alive connections, for
/// `duration` rounded up to whole seconds (wrk takes no fractions). `dir` holds the hosts file.
pub fn wrk(
    addr: SocketAddr,
    host: &str,
    conns: usize,
    duration: Duration,
    dir: &Path,
    log: &mut Vec<String>,
) -> Result<Tally> {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("{} {host}\n", addr.ip()))?;
    let secs = duration.as_secs_f64().ceil().max(1.0) as u64;
    let url = format!("https://{host}:{}/", addr.port());
    let script = format!(
        "mount --bind {} /etc/hosts && exec wrk -t1 -c{conns} -d{secs}s {url}",
        hosts.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let text = run(cmd, "wrk", log)?;
    parse_wrk(&text).with_context(|| format!("wrk's report was not understood:\n{text}"))
}

/// How an `h2load` run is bounded: by time, or by a number of requests in all.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    For(Duration),
    Count(usize),
}

/// One `h2load` run: `conns` connections from one thread to `host` at `addr` over `scheme`
/// (`https` or `http`). With `streams` set, HTTP/2 (by ALPN) with that many concurrent streams
/// per connection; without, HTTP/1.1 (`--h1`), one request at a time per connection.
#[derive(Debug, Clone, Copy)]
pub struct H2load<'a> {
    pub addr: SocketAddr,
    pub host: &'a str,
    pub scheme: &'a str,
    pub conns: usize,
    pub streams: Option<usize>,
    pub bound: Bound,
}

pub fn h2load(spec: H2load<'_>, log: &mut Vec<String>) -> Result<Tally> {
    let mut cmd = Command::new("h2load");
    if spec.streams.is_none() {
        cmd.arg("--h1");
    }
    cmd.args(["-t", "1", "-c", &spec.conns.to_string()])
        .args(["-m", &spec.streams.unwrap_or(1).to_string()]);
    match spec.bound {
        Bound::For(d) => cmd.arg(format!("-D{}ms", d.as_millis())),
        Bound::Count(n) => cmd.args(["-n", &n.to_string()]),
    };
    cmd.arg(format!("--connect-to={}", spec.addr))
        .arg(format!("{}://{}/", spec.scheme, spec.host));
    let text = run(cmd, "h2load", log)?;
    parse_h2load(&text).with_context(|| format!("h2load's report was not understood:\n{text}"))
}

/// Run `cmd` (logged) and return what it printed; a failure carries its output.
fn run(mut cmd: Command, name: &str, log: &mut Vec<String>) -> Result<String> {
    log.push(format!("{cmd:?}").replace('"', ""));
    let out = cmd
        .output()
        .with_context(|| format!("starting {name} (is it installed?)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{name} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// The numbers in `line` after `label`, in order: words that are a number, bare or with a unit
/// of time or size ("2.00s" reads as 2.0, "80.10MB" as 80.1); "2xx" is not a number.
fn numbers_after(line: &str, label: &str) -> Vec<f64> {
    let Some(i) = line.find(label) else {
        return Vec::new();
    };
    line[i + label.len()..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|w| {
            let end = w
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(w.len());
            let (num, unit) = w.split_at(end);
            ["", "s", "ms", "us", "B", "KB", "MB", "GB", "%"]
                .contains(&unit)
                .then(|| num.parse().ok())
                .flatten()
        })
        .collect()
}

/// A duration as wrk and h2load print it ("2.00s", "900.50ms", "1.00m", "12.5us"), in seconds.
fn seconds(word: &str) -> Option<f64> {
    let end = word
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(word.len());
    let (num, unit) = word.split_at(end);
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// `N requests in 1.50s, ...`, and the error lines wrk adds only when there were errors.
pub fn parse_wrk(text: &str) -> Result<Tally> {
    let mut t = Tally::default();
    let mut found = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some((count, rest)) = line.split_once(" requests in ") {
            let time = rest.split(',').next().unwrap_or("").trim();
            match (count.trim().parse::<u64>(), seconds(time)) {
                (Ok(n), Some(secs)) => (t.ok, t.seconds) = (n, secs),
                _ => bail!("no request count and time in {line:?}"),
            }
            found = true;
        } else if line.starts_with("Socket errors:") {
            t.failed += numbers_after(line, ":").iter().sum::<f64>() as u64;
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            let n = numbers_after(line, ":").first().copied().unwrap_or(0.0) as u64;
            t.failed += n;
            t.ok = t.ok.saturating_sub(n);
        }
    }
    if !found {
        bail!("no \"requests in\" line");
    }
    Ok(t)
}

/// `finished in 1.50s, ...` and `requests: N total, N started, N done, N succeeded, N failed,
/// N errored, N timeout` (h2load counts an answer of 4xx or 5xx as failed, not succeeded) and
/// `status codes: N 2xx, N 3xx, N 4xx, N 5xx` (a 3xx is a success to h2load, not here).
pub fn parse_h2load(text: &str) -> Result<Tally> {
    let mut t = Tally::default();
    let (mut finished, mut counted) = (false, false);
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            let time = rest.split(',').next().unwrap_or("").trim();
            t.seconds = seconds(time).with_context(|| format!("no time in {line:?}"))?;
            finished = true;
        } else if line.starts_with("requests:") {
            let n = numbers_after(line, ":");
            if n.len() < 7 {
                bail!("fewer than seven counts in {line:?}");
            }
            t.ok += n[3] as u64;
            t.failed += (n[4] + n[5] + n[6]) as u64;
            counted = true;
        } else if line.starts_with("status codes:") {
            let n = numbers_after(line, ":");
            if let Some(redirects) = n.get(1).map(|r| *r as u64) {
                t.failed += redirects;
                t.ok = t.ok.saturating_sub(redirects);
            }
        }
    }
    if !(finished && counted) {
        bail!("no \"finished in\" or \"requests:\" line");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read_with_their_errors() {
        let ok = "Running 2s test @ https://bench.test:4443/\n  1 threads and 32 connections\n  \
                  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.01ms  120.00us   4.00ms   90.00%\n    \
                  Req/Sec    31.20k     1.00k   33.00k    70.00%\n  62400 requests in 2.00s, 80.10MB read\nRequests/sec:  31200.00\nTransfer/sec:     40.05MB\n";
        let t = parse_wrk(ok).unwrap();
        assert_eq!((t.ok, t.failed), (62400, 0));
        assert_eq!(t.seconds, 2.0);
        assert_eq!(t.rate(), 31200.0);
        assert!(t.problem().is_none());
        let bad = format!(
            "{ok}  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 10\n"
        );
        let t = parse_wrk(&bad).unwrap();
        assert_eq!((t.ok, t.failed), (62390, 15));
        assert!(t.problem().unwrap().contains("15 requests failed"));
        assert!(parse_wrk("unable to connect to bench.test:4443 Connection refused").is_err());
        let long = ok.replace("62400 requests in 2.00s", "1872000 requests in 1.00m");
        assert_eq!(parse_wrk(&long).unwrap().seconds, 60.0);
    }

    #[test]
    fn h2load_reports_are_read_with_their_failures() {
        let ok = "starting benchmark...\nspawning thread #0: 32 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.\n\
                  finished in 2.00s, 45000.50 req/s, 50.00MB/s\n\
                  requests: 90001 total, 90321 started, 90001 done, 90001 succeeded, 0 failed, 0 errored, 0 timeout\n\
                  status codes: 90001 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let t = parse_h2load(ok).unwrap();
        assert_eq!((t.ok, t.failed), (90001, 0));
        assert_eq!(t.seconds, 2.0);
        // 1,001 failed (10 of them 4xx answers, which h2load counts as failed already) and 5
        // redirects among the succeeded.
        let bad = ok
            .replace(
                "90001 succeeded, 0 failed, 0 errored",
                "89000 succeeded, 1001 failed, 0 errored",
            )
            .replace(
                "90001 2xx, 0 3xx, 0 4xx, 0 5xx",
                "88995 2xx, 5 3xx, 10 4xx, 0 5xx",
            );
        let t = parse_h2load(&bad).unwrap();
        assert_eq!((t.ok, t.failed), (88995, 1006));
        assert!(t.problem().is_some());
        let ms = ok.replace("finished in 2.00s", "finished in 900.50ms");
        assert!((parse_h2load(&ms).unwrap().seconds - 0.9005).abs() < 1e-9);
        assert!(parse_h2load("no protocol was negotiated").is_err());
    }
}
