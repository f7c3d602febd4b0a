//! The baselines Palisade is measured against: nginx and HAProxy as proxies, etcd as a
//! replicated store. Found on the machine or installed from Debian; configured by the harness so
//! that each does the same work as Palisade (same certificate, TLS 1.3 with X25519, access logs
//! off, keep-alive to the upstream, the same four security headers, one worker).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use palisade_testkit::net::free_port;
use palisade_testkit::wait;

/// A program a scenario needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    pub name: &'static str,
    pub binary: &'static str,
    /// The Debian package that has it.
    pub package: &'static str,
    pub version_args: &'static [&'static str],
}

pub const NGINX: Baseline = Baseline {
    name: "nginx",
    binary: "nginx",
    package: "nginx",
    version_args: &["-v"],
};
pub const HAPROXY: Baseline = Baseline {
    name: "HAProxy",
    binary: "haproxy",
    package: "haproxy",
    version_args: &["-v"],
};
/// The outside HTTP/1.1 load generator that cross-checks the suite's own.
pub const WRK: Baseline = Baseline {
    name: "wrk",
    binary: "wrk",
    package: "wrk",
    version_args: &["--version"],
};
/// The HTTP/2 load generator.
pub const H2LOAD: Baseline = Baseline {
    name: "h2load",
    binary: "h2load",
    package: "nghttp2-client",
    version_args: &["--version"],
};
/// Instruction counts (`valgrind --tool=callgrind`, `callgrind_control`).
pub const VALGRIND: Baseline = Baseline {
    name: "valgrind",
    binary: "valgrind",
    package: "valgrind",
    version_args: &["--version"],
};
pub const ETCD: Baseline = Baseline {
    name: "etcd",
    binary: "etcd",
    package: "etcd-server",
    version_args: &["--version"],
};

impl Baseline {
    /// Where the binary is: `$PATH`, then the sbin directories root's `$PATH` may lack.
    pub fn find(&self) -> Option<PathBuf> {
        let path = std::env::var("PATH").unwrap_or_default();
        let found = path
            .split(':')
            .chain([
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/usr/local/sbin",
                "/usr/local/bin",
            ])
            .map(|d| Path::new(d).join(self.binary))
            .find(|p| p.is_file());
        found
    }

    /// The first line the binary prints about its version.
    pub fn version(&self) -> String {
        let Some(bin) = self.find() else {
            return "missing".into();
        };
        match Command::new(bin).args(self.version_args).output() {
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or("").trim().to_string()
            }
            Err(e) => format!("unknown ({e})"),
        }
    }
}

/// The ones of `needed` not on this machine.
pub fn missing(needed: &[Baseline]) -> Vec<Baseline> {
    needed
        .iter()
        .filter(|b| b.find().is_none())
        .copied()
        .collect()
}

/// The one command that installs `missing`.
pub fn apt_line(missing: &[Baseline]) -> String {
    let mut pkgs: Vec<&str> = missing.iter().map(|b| b.package).collect();
    pkgs.dedup();
    format!("apt-get install -y {}", pkgs.join(" "))
}

/// Install `missing` with apt (refreshing the package lists once if the first try fails).
pub fn install(missing: &[Baseline]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing.iter().map(|b| b.package).collect();
    let apt = |args: &[&str]| -> Result<bool> {
        eprintln!("running: apt-get {}", args.join(" "));
        Ok(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success())
    };
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&pkgs);
    // Install; when that fails (stale package lists), update once and install again.
    let installed = apt(&args)? || (apt(&["update"])? && apt(&args)?);
    if !installed {
        bail!("apt-get could not install {}", pkgs.join(" "));
    }
    let still = self::missing(missing);
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", apt_line(&still));
    }
    Ok(())
}

/// A baseline process started by the harness; stopped (TERM, then KILL) when dropped.
pub struct Server {
    pub name: String,
    child: Child,
}

impl Server {
    /// Start `bin args`, pinned to `cores` when given; the command line goes into `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        cores: Option<&str>,
        output: &Path,
        log: &mut Vec<String>,
    ) -> Result<Server> {
        let mut cmd = match cores {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args);
        let out = std::fs::File::create(output)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        log.push(format!("{cmd:?}").replace('"', ""));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Server {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail if the process has exited (for example, a configuration it refused).
    pub fn check_alive(&mut self, output: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}): {}",
                self.name,
                std::fs::read_to_string(output).unwrap_or_default().trim()
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let exited = wait::until("the baseline to exit", Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if exited.is_ok() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    wait::until(&format!("something to listen on {addr}"), within, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })?;
    Ok(())
}

/// The security headers Palisade sets by default, for the baselines to set too.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Strict-Transport-Security",
        "max-age=31536000; includeSubDomains",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("X-XSS-Protection", "1; mode=block"),
];

/// The IP block list every proxy checks in the proxy scenarios, as Palisade runs there with its
/// protections on: 1,000 entries (single addresses, /24s and /16s in 16.0.0.0 to
/// 95.255.255.255, so the load generator's 127.0.0.1 is not in it and each request's check is
/// a full one that ends in "allowed"), and [`BLOCKED_CLIENT`], by which the harness checks that
/// each proxy enforces it; one CIDR a line.
pub fn block_list() -> &'static str {
    static LIST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let mut text = palisade_testkit::iprules::BigList::generate(1_000, 4).text;
        text.push_str(&format!("{BLOCKED_CLIENT}\n"));
        text
    })
}

/// A loopback address on [`block_list`].
pub const BLOCKED_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 254);

/// Write [`block_list`] into `dir` as nginx's `geo` entries (`block.geo`) and HAProxy's ACL
/// file (`block.lst`).
fn write_block_list(dir: &Path) -> Result<()> {
    let geo: String = block_list()
        .lines()
        .map(|cidr| format!("{cidr} 1;\n"))
        .collect();
    std::fs::write(dir.join("block.geo"), geo)?;
    std::fs::write(dir.join("block.lst"), block_list())?;
    Ok(())
}

/// Where a proxy baseline listens.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub http: SocketAddr,
    pub https: SocketAddr,
}

impl Listen {
    pub fn loopback() -> Listen {
        Listen {
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            https: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }
}

/// nginx's configuration: one worker, TLS 1.3 with X25519, HTTP/2 by ALPN (as Palisade), no
/// session cache or tickets, access log off, upstream keep-alive, the security headers (HSTS only
/// over HTTPS, as Palisade), and [`block_list`] refused with a 403 (a `geo` table: a radix tree).
pub fn nginx_conf(dir: &Path, at: Listen, upstream: SocketAddr, host: &str) -> String {
    let d = dir.display();
    let mut headers = String::new();
    for (k, v) in SECURITY_HEADERS.iter().skip(1) {
        let _ = writeln!(headers, "            add_header {k} \"{v}\" always;");
    }
    let (hsts_k, hsts_v) = SECURITY_HEADERS[0];
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream up {{
        server {upstream};
        keepalive 64;
    }}
    map $https $hsts {{ on "{hsts_v}"; default ""; }}
    geo $blocked {{
        default 0;
        include {d}/block.geo;
    }}
    server {{
        listen {http};
        listen {https} ssl http2;
        server_name {host};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_session_cache off;
        ssl_session_tickets off;
        if ($blocked) {{ return 403; }}
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            add_header {hsts_k} $hsts always;
{headers}        }}
    }}
}}
"#,
        http = at.http,
        https = at.https,
    )
}

/// HAProxy's configuration: one thread, TLS 1.3 with X25519, HTTP/2 by ALPN, no session cache
/// or tickets, no log, upstream keep-alive (connection reuse), the security headers, and
/// [`block_list`] refused with a 403 (an ACL read from a file: a prefix tree).
pub fn haproxy_conf(dir: &Path, at: Listen, upstream: SocketAddr) -> String {
    let d = dir.display();
    let mut headers = String::new();
    let (hsts_k, hsts_v) = SECURITY_HEADERS[0];
    let _ = writeln!(
        headers,
        "    http-response set-header {hsts_k} \"{hsts_v}\" if {{ ssl_fc }}"
    );
    for (k, v) in SECURITY_HEADERS.iter().skip(1) {
        let _ = writeln!(headers, "    http-response set-header {k} \"{v}\"");
    }
    format!(
        r#"global
    nbthread 1
    maxconn {maxconn}
    tune.ssl.cachesize 0
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind {http}
    bind {https} ssl crt {d}/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets curves X25519
    acl blocked src -f {d}/block.lst
    http-request deny deny_status 403 if blocked
{headers}    default_backend be
backend be
    server up {upstream}
"#,
        http = at.http,
        https = at.https,
        // Two descriptors a connection (client and server side), within the inherited limit.
        maxconn = (crate::cpu::open_files().saturating_sub(64) / 2).clamp(1_024, 32_768),
    )
}

/// Start nginx in `dir` (certificate files written there) pinned to `cores`.
#[allow(clippy::too_many_arguments)]
pub fn start_nginx(
    dir: &Path,
    at: Listen,
    upstream: SocketAddr,
    host: &str,
    cert_pem: &str,
    key_pem: &str,
    cores: Option<&str>,
    log: &mut Vec<String>,
) -> Result<Server> {
    let bin = NGINX.find().ok_or_else(|| anyhow!("nginx is missing"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert.pem"), cert_pem)?;
    std::fs::write(dir.join("key.pem"), key_pem)?;
    write_block_list(dir)?;
    let args = vec![
        "-e".to_string(),
        format!("{}/error.log", dir.display()),
        "-p".to_string(),
        dir.display().to_string(),
        "-c".to_string(),
        format!("{}/nginx.conf", dir.display()),
    ];
    let conf = nginx_conf(dir, at, upstream, host);
    launch(
        "nginx",
        &bin,
        dir,
        "nginx.conf",
        &conf,
        &args,
        at,
        cores,
        log,
    )
}

/// Write `conf` to `dir/conf_name`, start `bin args` (output to `dir/NAME.out`), log both, and
/// wait until it listens on `at.https`; an early exit is reported with its output.
#[allow(clippy::too_many_arguments)]
fn launch(
    name: &str,
    bin: &Path,
    dir: &Path,
    conf_name: &str,
    conf: &str,
    args: &[String],
    at: Listen,
    cores: Option<&str>,
    log: &mut Vec<String>,
) -> Result<Server> {
    std::fs::write(dir.join(conf_name), conf)?;
    let out = dir.join(format!(
        "{}.out",
        bin.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut s = Server::spawn(name, bin, args, cores, &out, log)?;
    log.push(format!("{conf_name}:\n{conf}"));
    let ready = wait_listening(at.https, Duration::from_secs(10));
    s.check_alive(&out)?;
    ready?;
    Ok(s)
}

/// Start HAProxy in `dir` pinned to `cores`.
pub fn start_haproxy(
    dir: &Path,
    at: Listen,
    upstream: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
    cores: Option<&str>,
    log: &mut Vec<String>,
) -> Result<Server> {
    let bin = HAPROXY
        .find()
        .ok_or_else(|| anyhow!("haproxy is missing"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("haproxy.pem"), format!("{cert_pem}{key_pem}"))?;
    write_block_list(dir)?;
    let args = vec![
        "-db".to_string(),
        "-f".to_string(),
        format!("{}/haproxy.cfg", dir.display()),
    ];
    let conf = haproxy_conf(dir, at, upstream);
    launch(
        "HAProxy",
        &bin,
        dir,
        "haproxy.cfg",
        &conf,
        &args,
        at,
        cores,
        log,
    )
}

/// A three-member etcd cluster on loopback, data in `dir` (etcd syncs its log on every commit).
pub struct Etcd {
    pub members: Vec<Server>,
    /// Client URLs, `http://127.0.0.1:PORT`.
    pub clients: Vec<String>,
}

impl Etcd {
    pub fn start(dir: &Path, n: usize, log: &mut Vec<String>) -> Result<Etcd> {
        let bin = ETCD.find().ok_or_else(|| anyhow!("etcd is missing"))?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &dir.join(&name).display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                "palisade-bench",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let out = dir.join(format!("{name}.log"));
            members.push(Server::spawn("etcd", &bin, &args, None, &out, log)?);
            clients.push(format!("http://127.0.0.1:{client}"));
        }
        let e = Etcd { members, clients };
        let agent = palisade_testkit::admin::agent();
        wait::until(
            "every etcd member to be healthy",
            Duration::from_secs(30),
            || {
                e.clients.iter().all(|url| {
                    agent
                        .get(format!("{url}/health"))
                        .call()
                        .ok()
                        .and_then(|mut r| r.body_mut().read_to_string().ok())
                        .is_some_and(|b| b.contains("\"true\""))
                })
            },
        )?;
        Ok(e)
    }

    /// The client URL of the current leader.
    pub fn leader(&self) -> Result<String> {
        let agent = palisade_testkit::admin::agent();
        for url in &self.clients {
            let mut r = agent
                .post(format!("{url}/v3/maintenance/status"))
                .send("{}")?;
            let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
            if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                return Ok(url.clone());
            }
        }
        bail!("no etcd member says it leads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configs_match_palisades_settings() {
        let at = Listen {
            http: "127.0.0.1:8080".parse().unwrap(),
            https: "127.0.0.1:8443".parse().unwrap(),
        };
        let up: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let n = nginx_conf(Path::new("/tmp/b"), at, up, "bench.test");
        for want in [
            "worker_processes 1;",
            "access_log off;",
            "ssl_protocols TLSv1.3;",
            "ssl_ecdh_curve X25519;",
            "ssl_session_tickets off;",
            "keepalive 64;",
            "listen 127.0.0.1:8443 ssl http2;",
            "add_header X-Frame-Options \"DENY\" always;",
            "include /tmp/b/block.geo;",
            "if ($blocked) { return 403; }",
        ] {
            assert!(n.contains(want), "nginx.conf lacks {want:?}:\n{n}");
        }
        let h = haproxy_conf(Path::new("/tmp/b"), at, up);
        for want in [
            "nbthread 1",
            "tune.ssl.cachesize 0",
            "alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets curves X25519",
            "http-reuse always",
            "server up 127.0.0.1:9000",
            "set-header X-Content-Type-Options \"nosniff\"",
            "acl blocked src -f /tmp/b/block.lst",
            "http-request deny deny_status 403 if blocked",
        ] {
            assert!(h.contains(want), "haproxy.cfg lacks {want:?}:\n{h}");
        }
        assert_eq!(
            apt_line(&[HAPROXY, ETCD]),
            "apt-get install -y haproxy etcd-server"
        );
    }
}
