//! Cluster behaviour through real `palisade` processes on loopback.

use std::collections::HashMap;
use std::time::Duration;

use palisade_testkit::{wait, TestCluster};
use serde_json::{json, Value};

use super::bin;

const LONG: Duration = Duration::from_secs(60);

fn create_project(c: &TestCluster, idx: usize, id: &str) -> u16 {
    c.post(
        idx,
        "/v1/projects",
        json!({ "id": id, "name": id }),
        Some(id),
    )
    .map(|r| r.status)
    .unwrap_or(0)
}

/// Write through whichever node answers, retrying with the same idempotency key.
fn write_until_acknowledged(c: &TestCluster, id: &str, start: usize) -> usize {
    let mut i = start;
    let what = format!("write {id} to be acknowledged");
    wait::until(&what, LONG, || {
        let live = c.live();
        let idx = live[i % live.len()];
        let body = json!({ "id": id, "name": id });
        match c.post(idx, "/v1/projects", body, Some(id)) {
            Ok(r) if r.status == 201 => Some(i),
            _ => {
                i += 1;
                None
            }
        }
    })
    .unwrap()
}

fn projects_local(c: &TestCluster, idx: usize) -> Vec<String> {
    let r = c
        .get(idx, "/v1/projects?consistency=local&limit=10000")
        .expect("list projects");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn wait_projects(c: &TestCluster, idx: usize, n: usize) {
    c.wait_for(
        LONG,
        &format!("node index {idx} to hold {n} projects"),
        || Ok((projects_local(c, idx).len() >= n).then_some(())),
    )
    .unwrap();
}

fn follower(c: &TestCluster) -> usize {
    let leader = c.wait_leader(None, LONG).unwrap();
    c.live()
        .into_iter()
        .find(|&i| c.nodes[i].id != leader)
        .expect("a follower")
}

#[test]
fn a_write_on_a_follower_is_readable_on_all_three() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    let f = follower(&c);
    let r = c
        .post(
            f,
            "/v1/projects",
            json!({ "id": "shop", "name": "Shop" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    for i in 0..3 {
        // Linearizable read (the default) on every node, followers included: no waiting needed.
        let r = c.get(i, "/v1/projects/shop").unwrap();
        assert_eq!(r.status, 200, "node index {i}: {}", r.body);
        assert_eq!(r.body["name"], "Shop");
    }
    let r = c
        .post(
            f,
            "/v1/projects",
            json!({ "id": "Bad Id", "name": "x" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("Bad Id"),
        "{}",
        r.body
    );
}

#[test]
fn leader_kill_then_restart_catches_up_through_log_then_snapshot() {
    // Snapshot every 60 entries and keep no log behind it, so a node that misses more than that
    // can only catch up from a snapshot.
    let env = [
        ("PALISADE_RAFT_SNAPSHOT_EVERY", "60"),
        ("PALISADE_RAFT_KEEP_LOGS", "0"),
    ];
    let mut c = TestCluster::start(bin(), 3, &env).unwrap();
    for i in 0..5 {
        assert_eq!(create_project(&c, 0, &format!("a{i}")), 201);
    }

    // 1. Kill the leader: a new one is elected and writes continue.
    let old = c.wait_leader(None, LONG).unwrap();
    let old_idx = c.index_of(old).unwrap();
    c.kill(old_idx);
    let new = c.wait_leader(Some(old), LONG).unwrap();
    assert_ne!(new, old);
    for i in 0..5 {
        write_until_acknowledged(&c, &format!("b{i}"), 0);
    }
    // Few entries so far: no snapshot yet, the restarted node catches up from the log.
    c.restart(old_idx).unwrap();
    c.wait_ready(old_idx, LONG).unwrap();
    wait_projects(&c, old_idx, 10);
    assert!(
        !c.nodes[old_idx].log_text().contains("snapshot installed"),
        "caught up through the log, not a snapshot"
    );

    // 2. Kill a node, write well past the snapshot interval, restart it: it needs a snapshot.
    let victim = follower(&c);
    c.kill(victim);
    for i in 0..150 {
        write_until_acknowledged(&c, &format!("c{i}"), i);
    }
    c.restart(victim).unwrap();
    c.wait_ready(victim, LONG).unwrap();
    wait_projects(&c, victim, 160);
    c.wait_for(
        LONG,
        "the restarted node to report a snapshot install",
        || {
            Ok(c.nodes[victim]
                .log_text()
                .contains("snapshot installed")
                .then_some(()))
        },
    )
    .unwrap();
    // And it stays in step afterwards through the log.
    write_until_acknowledged(&c, "after", 0);
    wait_projects(&c, victim, 161);
}

#[test]
fn acknowledged_writes_survive_kill_restart_cycles_exactly_once() {
    let mut c = TestCluster::start(bin(), 3, &[]).unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cursor = 0;
    let mut down: Option<usize> = None;
    for i in 0..500 {
        // Three kill -9 cycles, the leader first, then random nodes; each victim comes back 60
        // writes later.
        if [100, 220, 340].contains(&i) {
            let victim = if i == 100 {
                c.index_of(c.wait_leader(None, LONG).unwrap()).unwrap()
            } else {
                (rand() % 3) as usize
            };
            eprintln!("write {i}: kill -9 node {}", c.nodes[victim].id);
            c.kill(victim);
            down = Some(victim);
        }
        if [160, 280, 400].contains(&i) {
            if let Some(v) = down.take() {
                c.restart(v).unwrap();
            }
        }
        cursor = write_until_acknowledged(&c, &format!("p{i:03}"), cursor);
    }
    for i in 0..3 {
        c.wait_ready(i, LONG).unwrap();
        wait_projects(&c, i, 500);
        let ids = projects_local(&c, i);
        assert_eq!(ids.len(), 500, "node index {i}");
        // Exactly once: one audit entry per acknowledged write, whatever the retries.
        let r = c
            .get(
                i,
                "/v1/audit?consistency=local&action=project.create&limit=10000",
            )
            .unwrap();
        let mut per_target: HashMap<String, usize> = HashMap::new();
        for a in r.body["items"].as_array().unwrap() {
            *per_target
                .entry(a["target"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(
            per_target.len(),
            500,
            "node index {i}: audit entries for every write"
        );
        let twice: Vec<_> = per_target.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "node index {i}: applied more than once: {twice:?}"
        );
    }
}

#[test]
fn a_fourth_node_joins_a_member_is_removed_and_impostors_are_refused() {
    let mut c = TestCluster::start(bin(), 3, &[]).unwrap();
    let token = c.create_token().unwrap();
    let fourth = c.join_node_with(&token).unwrap();
    let s = c.status(0).unwrap();
    let voters = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{s}");
    assert_eq!(create_project(&c, fourth, "via-four"), 201);

    // A token is spent by one join.
    let spare = c.dir.path().join("spare");
    let token_file = c.dir.path().join("spent.token");
    std::fs::write(&token_file, &token).unwrap();
    let join = |how: &[&str]| {
        let mut args = vec!["join"];
        args.extend_from_slice(how);
        args.extend_from_slice(&[
            "--data-dir",
            spare.to_str().unwrap(),
            "--cluster-addr",
            "127.0.0.1:1",
        ]);
        c.run_cli(&args).unwrap()
    };
    let r = join(&["--token-file", token_file.to_str().unwrap()]);
    let line = one_error_line(&r);
    assert!(line.contains("unknown or already used"), "{line}");
    // On the command line the token would be in the process list: it still works, with a
    // warning saying so.
    let r = join(&["--token", &token]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("warning: --token leaves the join token in the process list"),
        "{err}"
    );
    assert!(err.contains("unknown or already used"), "{err}");

    // Remove node 2: the others carry on without it.
    let two = c.index_of(2).unwrap();
    let r = c.delete(0, "/v1/cluster/members/2").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    c.kill(two);
    let ids = c.member_ids(0).unwrap();
    assert!(!ids.contains(&2), "{ids:?}");
    assert_eq!(create_project(&c, 0, "after-removal"), 201);

    // Impostors. node 3's data dir proves node 3, and only that.
    let three = c.index_of(3).unwrap();
    let dir3 = c.nodes[three].dir.display().to_string();
    let addr1 = c.nodes[0].cluster_addr.clone();
    let ok = c
        .run_cli(&[
            "ping",
            "--data-dir",
            &dir3,
            "--peer",
            &addr1,
            "--peer-id",
            "1",
        ])
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("as Some(3)"));
    // Claiming to be another node with node 3's certificate.
    let lie = c
        .run_cli(&[
            "ping",
            "--data-dir",
            &dir3,
            "--peer",
            &addr1,
            "--peer-id",
            "1",
            "--as-node",
            "4",
        ])
        .unwrap();
    assert!(!lie.status.success());
    assert!(
        String::from_utf8_lossy(&lie.stderr).contains("certificate is for node 3"),
        "{}",
        String::from_utf8_lossy(&lie.stderr)
    );
    // A server that is not the node we meant to reach.
    let wrong = c
        .run_cli(&[
            "ping",
            "--data-dir",
            &dir3,
            "--peer",
            &addr1,
            "--peer-id",
            "4",
        ])
        .unwrap();
    assert!(!wrong.status.success());
    // A certificate from another cluster's CA.
    let other = c.dir.path().join("other-cluster");
    let out = c
        .run_cli(&[
            "init",
            "--data-dir",
            other.to_str().unwrap(),
            "--cluster-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = c
        .run_cli(&[
            "ping",
            "--data-dir",
            other.to_str().unwrap(),
            "--peer",
            &addr1,
            "--peer-id",
            "1",
        ])
        .unwrap();
    assert!(!foreign.status.success());
    let err = String::from_utf8_lossy(&foreign.stderr);
    assert!(
        err.contains("cannot reach") || err.contains("refused") || err.contains("certificate"),
        "{err}"
    );
}

/// `text` with `key` in `[section]` set to `value` (a TOML literal).
fn set_in_section(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line.trim() == format!("[{section}]");
        }
        if in_section && line.split('=').next().map(str::trim) == Some(key) {
            out.push(format!("{key} = {value}"));
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

fn one_error_line(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one error line, got: {err}");
    lines[0].to_string()
}

#[test]
fn bad_config_and_damaged_data_dirs_fail_with_one_clear_line() {
    let mut c = TestCluster::start(bin(), 1, &[]).unwrap();
    let dir = c.nodes[0].dir.clone();
    // SIGTERM: clean exit.
    let status = c.terminate(0, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");

    let cfg_path = dir.join("palisade.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let run = |c: &TestCluster| {
        c.run_cli(&["run", "--config", cfg_path.to_str().unwrap()])
            .unwrap()
    };

    std::fs::write(
        &cfg_path,
        set_in_section(&good, "admin", "listen", "\"0.0.0.0:7001\""),
    )
    .unwrap();
    let line = one_error_line(&run(&c));
    assert!(
        line.contains("admin.listen") && line.contains("0.0.0.0"),
        "{line}"
    );

    std::fs::write(
        &cfg_path,
        set_in_section(&good, "cluster", "listen", "\"not-an-address\""),
    )
    .unwrap();
    let line = one_error_line(&run(&c));
    assert!(
        line.contains("cluster.listen") && line.contains("not-an-address"),
        "{line}"
    );

    std::fs::write(&cfg_path, format!("{good}\n[bogus]\nx = 1\n")).unwrap();
    let line = one_error_line(&run(&c));
    assert!(line.contains("bogus"), "{line}");
    std::fs::write(&cfg_path, &good).unwrap();

    // Damaged RocksDB: the CURRENT file names a manifest that does not exist.
    let current = dir.join("db/CURRENT");
    let saved = std::fs::read(&current).unwrap();
    std::fs::write(&current, "MANIFEST-999999\n").unwrap();
    let line = one_error_line(&run(&c));
    assert!(
        line.contains("cannot be opened") && line.contains("untouched"),
        "{line}"
    );
    std::fs::write(&current, &saved).unwrap();

    // node.json damaged.
    let node_json = dir.join("node.json");
    let saved = std::fs::read(&node_json).unwrap();
    std::fs::write(&node_json, "{ not json").unwrap();
    let line = one_error_line(&run(&c));
    assert!(line.contains("node.json"), "{line}");

    // A data dir of another cluster.
    let v: Value = serde_json::from_slice(&saved).unwrap();
    let mut other = v.clone();
    other["cluster_id"] = json!("00000000000000000000000000000000");
    std::fs::write(&node_json, serde_json::to_vec(&other).unwrap()).unwrap();
    let line = one_error_line(&run(&c));
    assert!(line.contains("belongs to cluster"), "{line}");
    std::fs::write(&node_json, &saved).unwrap();

    // Nothing was wiped: the node starts again with its data.
    c.restart(0).unwrap();
    c.wait_ready(0, LONG).unwrap();
}
