//! Bot protection through real `palisade` processes.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_bench::harness::TestCluster;
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_palisade"))
}

/// `(kid, state)` of every key, as node `idx` sees them.
fn keyring(c: &TestCluster, idx: usize) -> Vec<(String, String)> {
    let r = c.get(idx, "/v1/bot/keys").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut keys: Vec<(String, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(k.get("secret").is_none(), "a secret was shown: {k}");
            (
                k["kid"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn with_state(keys: &[(String, String)], state: &str) -> Vec<String> {
    keys.iter()
        .filter(|(_, s)| s == state)
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn the_keyring_rotates_through_the_replicated_next_key_and_every_change_is_audited() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    // A new cluster gets an active key and the next one within a second or two.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let k = keyring(&c, 1);
        if with_state(&k, "active").len() == 1 && with_state(&k, "next").len() == 1 {
            break k;
        }
        assert!(Instant::now() < deadline, "no keyring: {k:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let active = with_state(&first, "active")[0].clone();
    let next = with_state(&first, "next")[0].clone();

    // Too short a rotation is refused with the setting named.
    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "bot.key_rotation_seconds": "1" } }),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["field"], "values.bot.key_rotation_seconds");

    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "bot.key_rotation_seconds": "5" } }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The active key was due in a day; a shorter period rotates at once: the replicated next
    // key signs, the old one only verifies, and a new next key is made.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let k = keyring(&c, 2);
        if with_state(&k, "active") == vec![next.clone()] {
            break k;
        }
        assert!(Instant::now() < deadline, "no rotation: {k:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        with_state(&second, "verify_only").contains(&active),
        "{second:?}"
    );
    let next2 = with_state(&second, "next");
    assert_eq!(next2.len(), 1);
    assert!(next2[0] != active && next2[0] != next);

    // Five seconds on, again: the key that was next at the last rotation signs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let k = keyring(&c, 0);
        if with_state(&k, "active") == next2 {
            assert!(with_state(&k, "verify_only").contains(&next), "{k:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no second rotation: {k:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every node holds the same keyring.
    assert_eq!(keyring(&c, 0), keyring(&c, 1));
    assert_eq!(keyring(&c, 1), keyring(&c, 2));

    // Every change is in the audit log on every node, made by a node, naming the keys.
    for idx in 0..3 {
        let r = c.get(idx, "/v1/audit?action=botkey.&limit=1000").unwrap();
        let entries = r.body["items"].as_array().cloned().unwrap_or_default();
        let named = |action: &str, kid: &str| {
            entries.iter().any(|e: &Value| {
                e["action"] == action
                    && e["actor"].as_str().unwrap().starts_with("node:")
                    && e["target"].as_str().unwrap().contains(kid)
            })
        };
        assert!(named("botkey.create", &active), "{entries:#?}");
        assert!(named("botkey.rotate", &next), "{entries:#?}");
        assert!(named("botkey.rotate", &next2[0]), "{entries:#?}");
    }
}
