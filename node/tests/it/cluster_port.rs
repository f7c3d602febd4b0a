//! The cluster port as an outsider meets it: strangers (no node certificate) cost a node little
//! and write nothing, and a node removed from the cluster is out for good.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_raft::cluster::strangers;
use palisade_raft::command::{Command, Request};
use palisade_raft::model::Record;
use palisade_raft::transport::proto::{JoinRequest, Rpc};
use palisade_raft::transport::STRANGER_STREAMS;
use palisade_raft::types::NodeInfo;
use palisade_testkit::quic::{header, Conn};
use palisade_testkit::{wait, TestCluster};

use super::bin;

fn rt() -> tokio::runtime::Runtime {
    palisade_testkit::http::rt()
}

fn applied(c: &TestCluster, idx: usize) -> u64 {
    let r = c.get(idx, "/v1/health").unwrap();
    r.body["applied"].as_u64().unwrap()
}

/// Nothing a quiet cluster writes by itself for a while: no key-use flush, no sweep.
const QUIET: [(&str, &str); 2] = [
    ("PALISADE_ADMIN_LAST_USED_FLUSH_MS", "3600000"),
    ("PALISADE_EDGE_RULE_SWEEP_INTERVAL_MS", "3600000"),
];

fn join_frame(secret: &str) -> Vec<u8> {
    serde_json::to_vec(&Rpc::Join(JoinRequest {
        secret: secret.to_string(),
        csr_pem: String::new(),
        node: NodeInfo {
            cluster_addr: "203.0.113.66:7000 \u{1b}[31mforged".into(),
            admin_addr: "forged".into(),
            public_addr: String::new(),
        },
    }))
    .unwrap()
}

#[test]
fn join_attempts_by_strangers_write_nothing_and_a_real_join_still_works() {
    let mut c = TestCluster::start(bin(), 3, &QUIET).unwrap();
    // The keyring is the last thing a new cluster writes by itself.
    wait::until("the keyring", Duration::from_secs(30), || {
        c.get(0, "/v1/bot/keys").unwrap().body["items"]
            .as_array()
            .is_some_and(|k| k.len() >= 2)
    })
    .unwrap();
    let token = c.create_token().unwrap();
    let before = applied(&c, 0);

    // 500 bad joins from one address, on one connection.
    let stranger: IpAddr = "127.0.0.2".parse().unwrap();
    let answers = rt().block_on(async {
        let s = Conn::stranger(&token, stranger).await.unwrap();
        let mut answers = Vec::new();
        for i in 0..500 {
            answers.push(s.call(&join_frame(&format!("guess-{i}"))).await.unwrap());
        }
        answers
    });
    assert!(
        answers.iter().all(|a| a.contains("refused")),
        "{:?}",
        &answers[..3]
    );
    let limited = answers
        .iter()
        .filter(|a| a.contains("too many join attempts"))
        .count();
    assert_eq!(
        limited,
        500 - strangers::JOINS_PER_MINUTE as usize,
        "{:?}",
        answers[12]
    );

    // One audit entry for them all, under the address the packets came from; nothing the
    // stranger claimed.
    let audit = c.get(0, "/v1/audit?action=cluster.join").unwrap();
    let entries: Vec<_> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] != "ok")
        .collect();
    assert_eq!(entries.len(), 1, "{}", audit.body);
    assert_eq!(entries[0]["source_ip"], "127.0.0.2");
    assert!(entries[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("refused"));
    assert!(!audit.body.to_string().contains("forged"), "{}", audit.body);
    let after = applied(&c, 0);
    assert!(
        after - before <= 1,
        "500 refused joins applied {} entries",
        after - before
    );

    // A real join right after, from another address, still works.
    let fourth = c.join_node_with(&token).unwrap();
    let r = c.get(fourth, "/v1/health").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = c.get(1, "/v1/audit?action=cluster.join").unwrap();
    let ok: Vec<_> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .collect();
    // Nodes 2 and 3 at the start, and node 4 now, each from the address it came from.
    assert_eq!(ok.len(), 3, "{}", audit.body);
    assert!(
        ok.iter().all(|e| e["source_ip"] == "127.0.0.1"),
        "{}",
        audit.body
    );
}

#[test]
fn a_stranger_gets_a_few_streams_small_frames_and_a_short_connection() {
    let c = TestCluster::start(bin(), 1, &QUIET).unwrap();
    let token = c.create_token().unwrap();
    let pid = c.nodes[0].pid().unwrap();
    let (rss_before, _) = palisade_testkit::proc::rss_kib(pid);
    rt().block_on(async {
        let s = Conn::stranger(&token, "127.0.0.3".parse().unwrap())
            .await
            .unwrap();
        let connected = Instant::now();
        // A stranger may have a few streams open at once, however many it asks for.
        let mut open = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(300), s.conn.open_bi()).await {
                Ok(Ok(pair)) => open.push(pair),
                _ => break,
            }
        }
        assert_eq!(open.len(), STRANGER_STREAMS as usize);
        // Each announces a 32 MiB frame and trickles bytes: refused at once, nothing held.
        for (send, _) in &mut open {
            send.write_all(&header(32 << 20)).await.unwrap();
        }
        for _ in 0..10 {
            for (send, _) in &mut open {
                let _ = send.write_all(b"x").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (_, recv) in &mut open {
            let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
                .await
                .expect("an answer")
                .unwrap();
            let text = String::from_utf8_lossy(&answer);
            assert!(text.contains("exceeds 65536"), "{text}");
        }
        let (rss_after, _) = palisade_testkit::proc::rss_kib(pid);
        assert!(
            rss_after < rss_before + 50 * 1024,
            "RSS grew from {rss_before} KiB to {rss_after} KiB"
        );
        // Done with those: their places come back once both sides have closed them.
        drop(open);
        // A small frame that never arrives whole is given up at the read deadline.
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), s.conn.open_bi())
            .await
            .expect("a stream's place back")
            .unwrap();
        send.write_all(&header(60 << 10)).await.unwrap();
        send.write_all(b"{\"join\":").await.unwrap();
        let started = Instant::now();
        let answer = recv.read_to_end(1 << 16).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= strangers::READ_DEADLINE - Duration::from_secs(1)
                && took < strangers::READ_DEADLINE + Duration::from_secs(3),
            "the read was cut after {took:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        // And the connection itself ends with its lifetime.
        let within = strangers::LIFETIME + Duration::from_secs(5);
        let closed = tokio::time::timeout(within, s.conn.closed()).await;
        assert!(closed.is_ok(), "still open after {:?}", connected.elapsed());
        assert!(connected.elapsed() >= strangers::LIFETIME - Duration::from_secs(1));
    });
    // The node serves on.
    assert_eq!(c.get(0, "/v1/health").unwrap().status, 200);
}

#[test]
fn a_removed_node_is_out_for_good() {
    let mut c = TestCluster::start(bin(), 3, &QUIET).unwrap();
    let three = c.index_of(3).unwrap();
    let r = c.delete(0, "/v1/cluster/members/3").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    c.kill(three);
    let leader = c.wait_leader(None, Duration::from_secs(10)).unwrap();
    let at = c.index_of(leader).unwrap();
    let (dir, addr) = (c.nodes[three].dir.clone(), c.nodes[at].cluster_addr.clone());

    // Its data dir still holds a certificate of the cluster's CA. What it forwards to the
    // leader (an owner key, say) is refused, and nothing is applied; it cannot add itself back,
    // nor take part in elections.
    let key = palisade_admin::auth::new_key(
        palisade_admin::auth::KeySpec {
            role: palisade_raft::model::Role::Owner,
            project: None,
            expires_at: None,
            description: "minted by a removed node",
            created_by: "node:3",
        },
        palisade_raft::now_ms(),
    );
    let forward = Rpc::Forward {
        req: Request::new(Command::Put {
            record: Record::ApiKey(key.record.clone()),
        }),
    };
    let add_back = Rpc::AddMember {
        id: 3,
        node: NodeInfo::default(),
    };
    let answers = rt().block_on(async {
        let me = Conn::peer(&dir, &addr, leader).await.unwrap();
        let mut answers = Vec::new();
        for rpc in [&forward, &add_back, &Rpc::Status] {
            answers.push(me.call(&serde_json::to_vec(rpc).unwrap()).await.unwrap());
        }
        answers
    });
    for a in &answers {
        assert!(
            a.contains("unauthenticated") && a.contains("node 3 was removed"),
            "{a}"
        );
    }
    let keys = c.get(0, "/v1/keys?all=true").unwrap();
    let minted = keys.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == key.record.id.as_str());
    assert!(!minted, "{}", keys.body);
    assert_eq!(c.member_ids(0).unwrap(), [1, 2]);
    // A ping still answers, so an operator can see why.
    let pong = c
        .run_cli(&[
            "ping",
            "--data-dir",
            dir.to_str().unwrap(),
            "--peer",
            &addr,
            "--peer-id",
            &leader.to_string(),
        ])
        .unwrap();
    assert!(
        pong.status.success(),
        "{}",
        String::from_utf8_lossy(&pong.stderr)
    );
}

/// The `not_after` (Unix ms) of node `idx`'s certificate on disk.
fn cert_not_after(c: &TestCluster, idx: usize) -> u64 {
    let pem = std::fs::read_to_string(c.nodes[idx].dir.join("tls/node.pem")).unwrap();
    palisade_raft::crypto::cert_facts(&pem).unwrap().2
}

#[test]
fn node_certificates_expire_and_are_renewed_before_they_do() {
    let env = [
        QUIET[0],
        QUIET[1],
        ("PALISADE_CLUSTER_NODE_CERT_VALIDITY_SECONDS", "60"),
    ];
    let mut c = TestCluster::start(bin(), 3, &env).unwrap();
    let started = Instant::now();
    // Finite: every node holds a certificate for the configured 60 s (its first one was made
    // for the default 90 days and renewed at start).
    let first: Vec<u64> = (0..3).map(|i| cert_not_after(&c, i)).collect();
    for (i, &t) in first.iter().enumerate() {
        let left = t.saturating_sub(palisade_raft::now_ms());
        assert!(left <= 61_000, "node index {i}: {left} ms left");
    }
    // Keep node index 0's first identity, to present it once it has expired.
    let old = tempfile::tempdir().unwrap();
    std::fs::create_dir(old.path().join("tls")).unwrap();
    for f in ["tls/ca.pem", "tls/node.pem", "tls/node.key"] {
        std::fs::copy(c.nodes[0].dir.join(f), old.path().join(f)).unwrap();
    }

    // Each node renews its own when a third of the validity is left.
    wait::until("every node renewed", Duration::from_secs(60), || {
        (0..3)
            .all(|i| cert_not_after(&c, i) > first[i])
            .then_some(())
    })
    .unwrap();
    let renewed_at = started.elapsed();
    assert!(
        renewed_at >= Duration::from_secs(30),
        "renewed after {renewed_at:?}, before a third was left"
    );

    // Past the first certificates' expiry, new handshakes use the renewed ones: a node that
    // restarts reconnects to both others and catches up on a new write.
    std::thread::sleep(Duration::from_secs(62).saturating_sub(started.elapsed()));
    c.kill(1);
    wait::until(
        "a write with node index 1 down",
        Duration::from_secs(20),
        || {
            let body = serde_json::json!({ "id": "renewed", "name": "renewed" });
            let r = c.post(0, "/v1/projects", body, None).ok()?;
            (r.status == 201 || r.status == 409).then_some(())
        },
    )
    .unwrap();
    c.restart(1).unwrap();
    wait::until(
        "the write on the restarted node",
        Duration::from_secs(30),
        || {
            let r = c.get(1, "/v1/projects/renewed").ok()?;
            (r.status == 200).then_some(())
        },
    )
    .unwrap();

    // The first certificate has expired and is refused.
    let id = c.nodes[1].id;
    let addr = c.nodes[1].cluster_addr.clone();
    let refused = rt().block_on(async {
        match Conn::peer(old.path(), &addr, id).await {
            Err(_) => true,
            Ok(conn) => conn
                .call(&serde_json::to_vec(&Rpc::Status).unwrap())
                .await
                .is_err(),
        }
    });
    assert!(refused, "an expired node certificate was accepted");
}
