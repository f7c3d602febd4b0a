//! Real `palisade` processes on loopback addresses.
//!
//! Every wait polls (health endpoint, status, logs) up to a deadline; nothing sleeps a fixed time
//! hoping a node is ready. Processes are killed when the [`TestCluster`] is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::net::{free_port, PublicNet};
use crate::wait;

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
        // Test origins listen on loopback, which production nodes refuse as an upstream; a
        // test of that refusal sets this to "" in `env`.
        cmd.env(
            "PALISADE_EDGE_UPSTREAM_ALLOWED_NETWORKS",
            "127.0.0.0/8,::1/128",
        );
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
        // The token goes in a file, as an operator should give it (not on the command line).
        let token_file = self
            .dir
            .path()
            .join(format!("n{}.token", self.nodes.len() + 1));
        std::fs::write(&token_file, token)?;
        let child = self
            .command()
            .args(["join", "--token-file"])
            .arg(&token_file)
            .arg("--data-dir")
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
        let exited = wait::until("the node to exit after SIGTERM", within, || {
            child.try_wait().transpose()
        });
        match exited {
            Ok(status) => Ok(status?),
            Err(timed_out) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{timed_out}")
            }
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

    /// Poll `f` until it yields a value or `timeout` passes; the error carries the tail of
    /// every node's log.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        // An error from `f` ends the wait at once, as a value would.
        let waited = wait::until(what, timeout, || f().transpose());
        match waited {
            Ok(outcome) => outcome,
            Err(timed_out) => bail!("{timed_out}\n{}", self.log_tails(15)),
        }
    }

    /// The last `n` lines of every node's log, for a failure message.
    pub fn log_tails(&self, n: usize) -> String {
        self.nodes
            .iter()
            .map(|node| {
                format!(
                    "--- node {} log (tail):\n{}\n",
                    node.id,
                    tail(&node.log_text(), n)
                )
            })
            .collect()
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

    /// The node ids node `idx` lists as members.
    pub fn member_ids(&self, idx: usize) -> Result<Vec<u64>> {
        let s = self.status(idx)?;
        let members = s["members"].as_array().context("status without members")?;
        Ok(members.iter().filter_map(|m| m["id"].as_u64()).collect())
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
