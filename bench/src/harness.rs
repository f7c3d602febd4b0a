//! Real `palisade` processes on loopback addresses.
//!
//! Every wait polls (health endpoint, status, logs) up to a deadline; nothing sleeps a fixed time
//! hoping a node is ready. Processes are killed when the [`TestCluster`] is dropped.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub const POLL: Duration = Duration::from_millis(20);

/// One node: its data dir, addresses and (when running) its process.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub cluster_addr: String,
    pub admin_addr: String,
    /// Public HTTP and HTTPS addresses of the edge.
    pub http_addr: String,
    pub https_addr: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A running cluster of real processes.
pub struct TestCluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// The owner API key printed by `palisade init`.
    pub key: String,
    pub env: Vec<(String, String)>,
    /// Where the public listeners go (see [`PublicNet`]); `None`: 127.0.0.1 with ports of their own.
    pub public: Option<PublicNet>,
}

/// Public listeners that share two ports, one loopback address per node: what a CA (Pebble)
/// needs, since it validates on fixed ports at whatever address DNS names. Node `i` (1-based)
/// listens on `{prefix}{i + 1}`.
#[derive(Debug, Clone)]
pub struct PublicNet {
    /// For example `127.0.20.`.
    pub prefix: String,
    pub http_port: u16,
    pub https_port: u16,
}

impl PublicNet {
    pub fn ip_of(&self, node_number: usize) -> String {
        format!("{}{}", self.prefix, node_number + 1)
    }
}

/// A loopback port free for both TCP and UDP, handed out once per process.
///
/// Ports come from below the kernel's ephemeral range (32768 and up by default), so neither the
/// outgoing connections of a busy test nor another `bind(:0)` can take one between the moment it
/// is picked here and the moment the node binds it. Each process starts at its own offset and
/// walks forward, so the threads of one test binary never share a port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// An HTTP answer: status and JSON body (Null when there is none).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestCluster {
    /// `palisade init` on node 1, run it, then join `n - 1` more nodes.
    pub fn start(bin: &Path, n: usize, env: &[(&str, &str)]) -> Result<TestCluster> {
        Self::start_with(bin, n, env, None)
    }

    /// [`Self::start`] with the public listeners on `public`.
    pub fn start_with(
        bin: &Path,
        n: usize,
        env: &[(&str, &str)],
        public: Option<PublicNet>,
    ) -> Result<TestCluster> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-test-")
            .tempdir()?;
        let mut c = TestCluster {
            bin: bin.to_path_buf(),
            dir,
            nodes: Vec::new(),
            key: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            public,
        };
        let first = c.new_node_slot(1);
        let out = c
            .command()
            .args(["init", "--data-dir"])
            .arg(&first.dir)
            .args([
                "--cluster-addr",
                &first.cluster_addr,
                "--admin-addr",
                &first.admin_addr,
            ])
            .args([
                "--public-addr",
                &first.https_addr,
                "--http-addr",
                &first.http_addr,
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "palisade init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        c.key = stdout
            .lines()
            .find_map(|l| l.split("store it now): ").nth(1))
            .ok_or_else(|| anyhow!("init printed no API key: {stdout}"))?
            .trim()
            .to_string();
        c.nodes.push(first);
        c.restart(0)?;
        c.wait_ready(0, Duration::from_secs(30))?;
        for _ in 1..n {
            c.join_node()?;
        }
        Ok(c)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        // Test and benchmark nodes never call a public CA; a test that wants ACME names its
        // own directory (Pebble) in `env`.
        cmd.env("PALISADE_ACME_DIRECTORY", "off");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn new_node_slot(&self, id: u64) -> Node {
        let dir = self.dir.path().join(format!("n{}", self.nodes.len() + 1));
        Node {
            id,
            log: self
                .dir
                .path()
                .join(format!("n{}.log", self.nodes.len() + 1)),
            dir,
            cluster_addr: format!("127.0.0.1:{}", free_port()),
            admin_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: match &self.public {
                Some(p) => format!("{}:{}", p.ip_of(self.nodes.len() + 1), p.http_port),
                None => format!("127.0.0.1:{}", free_port()),
            },
            https_addr: match &self.public {
                Some(p) => format!("{}:{}", p.ip_of(self.nodes.len() + 1), p.https_port),
                None => format!("127.0.0.1:{}", free_port()),
            },
            child: None,
        }
    }

    /// Create a join token on a running node and start a new node with it; waits until the new
    /// node is a voter. Returns its index.
    pub fn join_node(&mut self) -> Result<usize> {
        let token = self.create_token()?;
        self.join_node_with(&token)
    }

    /// [`Self::join_node`] with a given token.
    pub fn join_node_with(&mut self, token: &str) -> Result<usize> {
        let mut node = self.new_node_slot(0);
        let log = File::create(&node.log)?;
        let child = self
            .command()
            .args(["join", "--token", token, "--data-dir"])
            .arg(&node.dir)
            .args([
                "--cluster-addr",
                &node.cluster_addr,
                "--admin-addr",
                &node.admin_addr,
            ])
            .args([
                "--public-addr",
                &node.https_addr,
                "--http-addr",
                &node.http_addr,
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning palisade join")?;
        node.child = Some(child);
        self.nodes.push(node);
        let idx = self.nodes.len() - 1;
        let id = self.wait_for(
            Duration::from_secs(60),
            "the joining node to report its id",
            || {
                let text = self.nodes[idx].log_text();
                Ok(text
                    .lines()
                    .find_map(|l| l.split(" as node ").nth(1))
                    .and_then(|s| s.trim().parse::<u64>().ok()))
            },
        )?;
        self.nodes[idx].id = id;
        self.wait_for(
            Duration::from_secs(60),
            "the new node to become a voter",
            || {
                let s = self.status(0).ok();
                Ok(s.filter(|s| {
                    s["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["id"] == id && m["voter"] == true))
                }))
            },
        )?;
        self.wait_ready(idx, Duration::from_secs(30))?;
        Ok(idx)
    }

    pub fn create_token(&self) -> Result<String> {
        let live = self
            .live()
            .first()
            .copied()
            .ok_or_else(|| anyhow!("no running node"))?;
        let r = self.post(
            live,
            "/v1/cluster/join-tokens",
            serde_json::json!({ "ttl_seconds": 600 }),
            None,
        )?;
        if r.status != 201 {
            bail!("token create answered {}: {}", r.status, r.body);
        }
        Ok(r.body["token"].as_str().unwrap_or_default().to_string())
    }

    /// (Re)start node `idx` with `palisade run`, appending to its log.
    pub fn restart(&mut self, idx: usize) -> Result<()> {
        let node = &self.nodes[idx];
        if node.child.is_some() {
            bail!("node {} is already running", node.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = self
            .command()
            .args(["run", "--config"])
            .arg(node.dir.join("palisade.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning palisade run")?;
        self.nodes[idx].child = Some(child);
        Ok(())
    }

    /// SIGKILL node `idx` and reap it.
    pub fn kill(&mut self, idx: usize) {
        if let Some(mut child) = self.nodes[idx].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `sig` (`STOP`, `CONT`, ...) to node `idx`: a paused process is a real deposed leader
    /// or lease holder, alive but silent.
    pub fn signal(&self, idx: usize, sig: &str) -> Result<()> {
        let pid = self.nodes[idx]
            .pid()
            .ok_or_else(|| anyhow!("node {idx} is not running"))?;
        match send_signal(pid, sig) {
            0 => Ok(()),
            _ => bail!("kill -{sig} {pid} failed"),
        }
    }

    /// SIGTERM node `idx` and wait for it to exit; returns its exit status.
    pub fn terminate(&mut self, idx: usize, within: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.nodes[idx]
            .child
            .take()
            .ok_or_else(|| anyhow!("node not running"))?;
        let rc = send_signal(child.id(), "TERM");
        if rc != 0 {
            bail!("kill(SIGTERM) failed");
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Poll `f` until it yields a value or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f()? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let logs: String = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "--- node {} log (tail):\n{}\n",
                            n.id,
                            tail(&n.log_text(), 15)
                        )
                    })
                    .collect();
                bail!("timed out after {timeout:?} waiting for {what}\n{logs}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until node `idx` answers its health check with a known leader.
    pub fn wait_ready(&self, idx: usize, timeout: Duration) -> Result<Value> {
        self.wait_for(
            timeout,
            &format!("node {} to be ready", self.nodes[idx].id),
            || {
                Ok(self
                    .get(idx, "/v1/health")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|r| r.body))
            },
        )
    }

    /// The leader as reported by node `idx`'s health endpoint.
    pub fn leader_seen_by(&self, idx: usize) -> Option<u64> {
        self.get(idx, "/v1/health")
            .ok()
            .and_then(|r| r.body["leader"].as_u64())
    }

    /// Wait until every running node reports the same leader, other than `not`.
    pub fn wait_leader(&self, not: Option<u64>, timeout: Duration) -> Result<u64> {
        self.wait_for(timeout, "one leader seen by every running node", || {
            let seen: Vec<Option<u64>> = self
                .live()
                .iter()
                .map(|&i| self.leader_seen_by(i))
                .collect();
            Ok(match seen.first() {
                Some(Some(l)) if seen.iter().all(|s| *s == Some(*l)) && Some(*l) != not => Some(*l),
                _ => None,
            })
        })
    }

    pub fn status(&self, idx: usize) -> Result<Value> {
        let r = self.get(idx, "/v1/cluster/status")?;
        if r.status != 200 {
            bail!("status answered {}", r.status);
        }
        Ok(r.body)
    }

    fn url(&self, idx: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[idx].admin_addr)
    }

    /// One authenticated call to node `idx`'s admin API, with an optional JSON body.
    fn send(
        &self,
        method: &str,
        idx: usize,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply> {
        let mut headers = vec![("Authorization", format!("Bearer {}", self.key))];
        if let Some(k) = idempotency_key {
            headers.push(("Idempotency-Key", k.to_string()));
        }
        let bytes = match body {
            Some(v) => {
                headers.push(("Content-Type", "application/json".into()));
                serde_json::to_vec(&v)?
            }
            None => Vec::new(),
        };
        self.call(idx, method, path, &headers, bytes)
    }

    /// Any call to node `idx`'s admin API: the headers given (no key unless among them) and a
    /// raw body. For tests of roles, keys and bad input.
    pub fn call(
        &self,
        idx: usize,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(idx, path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let (status, text) = run(req.body(body)?)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// POST a raw body (an IP list import, say); the status and the body as text.
    pub fn post_raw(
        &self,
        idx: usize,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(self.url(idx, path))
            .header("Authorization", format!("Bearer {}", self.key))
            .header("Content-Type", content_type);
        run(req.body(body)?)
    }

    /// GET with any answer type; the status and the body as text.
    pub fn get_text(&self, idx: usize, path: &str) -> Result<(u16, String)> {
        let req = ureq::http::Request::builder()
            .method("GET")
            .uri(self.url(idx, path))
            .header("Authorization", format!("Bearer {}", self.key));
        run(req.body(Vec::new())?)
    }

    pub fn get(&self, idx: usize, path: &str) -> Result<Reply> {
        self.send("GET", idx, path, None, None)
    }

    pub fn post(
        &self,
        idx: usize,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Reply> {
        self.send("POST", idx, path, Some(body), idempotency_key)
    }

    pub fn put(&self, idx: usize, path: &str, body: Value) -> Result<Reply> {
        self.send("PUT", idx, path, Some(body), None)
    }

    pub fn patch(&self, idx: usize, path: &str, body: Value) -> Result<Reply> {
        self.send("PATCH", idx, path, Some(body), None)
    }

    pub fn delete(&self, idx: usize, path: &str) -> Result<Reply> {
        self.send("DELETE", idx, path, None, None)
    }

    /// Run the palisade binary with `args` (and this cluster's environment) to completion.
    pub fn run_cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self.command().args(args).stdin(Stdio::null()).output()?)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::env::var_os("PALISADE_KEEP_TEST_DIRS").is_some() {
            if let Ok(fresh) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self.dir, fresh).keep();
                eprintln!("kept test dir {}", kept.display());
            }
        }
    }
}

/// One request; bulk calls (a million-entry import) get minutes, not seconds.
fn run(req: ureq::http::Request<Vec<u8>>) -> Result<(u16, String)> {
    let long = req.body().len() > 1 << 20 || req.uri().path().ends_with("/export");
    let agent = if long {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into()
    } else {
        agent()
    };
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, text))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn send_signal(pid: u32, sig: &str) -> i32 {
    // `kill(1)` keeps this crate free of `unsafe`.
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
    match status {
        Ok(s) if s.success() => 0,
        _ => -1,
    }
}
