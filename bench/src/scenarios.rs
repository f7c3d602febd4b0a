//! Cluster-core measurements: election time after a leader is killed, and write latency.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use palisade_testkit::cluster::TestCluster;
pub use palisade_testkit::stats::{ms, percentile};

/// Kill the leader of a three-node cluster `runs` times (restarting it each time) and measure how
/// long the survivors take to agree on a new leader, and until a write succeeds again.
pub fn election(bin: &Path, runs: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut c = TestCluster::start(bin, 3, &[])?;
    let mut elections = Vec::new();
    let mut writable = Vec::new();
    for run in 0..runs {
        let k = kill_leader(&mut c, &format!("e{run}"))?;
        eprintln!(
            "run {run}: killed leader {}; node {} leads after {}",
            k.old_leader,
            k.new_leader,
            ms(k.elected)
        );
        elections.push(k.elected);
        writable.push(k.writable);
        c.restart(k.index)?;
        c.wait_ready(k.index, Duration::from_secs(30))?;
    }
    elections.sort();
    writable.sort();
    Ok((elections, writable))
}

/// What killing a leader cost.
pub struct Kill {
    /// Index of the killed node in the cluster.
    pub index: usize,
    pub old_leader: u64,
    pub new_leader: u64,
    /// From SIGKILL until the survivors agree on a new leader...
    pub elected: Duration,
    /// ...and until an admin write (creating project `tag`) through the new leader succeeds.
    pub writable: Duration,
}

/// SIGKILL the current leader and time the recovery; the node stays down.
pub fn kill_leader(c: &mut TestCluster, tag: &str) -> Result<Kill> {
    let old = c.wait_leader(None, Duration::from_secs(30))?;
    let index = c.index_of(old).expect("leader is a member");
    let t0 = Instant::now();
    c.kill(index);
    let new = c.wait_leader(Some(old), Duration::from_secs(30))?;
    let elected = t0.elapsed();
    let via = c.index_of(new).expect("leader is a member");
    loop {
        let r = c.post(
            via,
            "/v1/projects",
            json!({ "id": tag, "name": tag, "bot": { "mode": "off" } }),
            Some(tag),
        )?;
        if r.status == 201 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("no write succeeded within 30 s of the leader kill");
        }
    }
    Ok(Kill {
        index,
        old_leader: old,
        new_leader: new,
        elected,
        writable: t0.elapsed(),
    })
}

/// One client writing `n` projects one after another through the leader's admin API.
pub fn write_latency(bin: &Path, n: usize) -> Result<Vec<Duration>> {
    let c = TestCluster::start(bin, 3, &[])?;
    let leader = c.wait_leader(None, Duration::from_secs(30))?;
    let idx = c.index_of(leader).expect("leader is a member");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let r = c.post(
            idx,
            "/v1/projects",
            json!({ "id": format!("w{i}"), "name": "w" }),
            None,
        )?;
        if r.status != 201 {
            bail!("write {i} answered {}: {}", r.status, r.body);
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    Ok(samples)
}
