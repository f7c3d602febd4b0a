//! The admin control plane through real node processes: keys, roles and scopes, validation,
//! the audit log on every node, the private surface, probes, metrics and `?wait=all`, the
//! OpenAPI document, configuration export and import, and the CLI.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use palisade_testkit::{wait, Reply, TestCluster};
use serde_json::{json, Value};

use super::bin;

/// A call to node `idx` as `key` (none when empty) with a JSON body (none when `Null`).
fn call(c: &TestCluster, idx: usize, method: &str, path: &str, key: &str, body: Value) -> Reply {
    let mut headers = Vec::new();
    if !key.is_empty() {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        headers.push(("Content-Type", "application/json".to_string()));
        serde_json::to_vec(&body).unwrap()
    };
    c.call(idx, method, path, &headers, bytes).unwrap()
}

fn make_key(c: &TestCluster, idx: usize, as_key: &str, body: Value) -> (String, String) {
    let r = call(c, idx, "POST", "/v1/keys", as_key, body.clone());
    assert_eq!(r.status, 201, "{body} -> {}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("pal_") && secret.len() > 40,
        "{}",
        r.body
    );
    (r.body["id"].as_str().unwrap().to_string(), secret)
}

fn project(c: &TestCluster, idx: usize, id: &str) {
    let r = c
        .post(idx, "/v1/projects", json!({ "id": id, "name": id }), None)
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
}

const ROLES: [&str; 4] = ["viewer", "operator", "admin", "owner"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

/// The id in a key `pal_{id}_{secret}`.
fn key_id(key: &str) -> String {
    key[4..].split('_').next().unwrap().to_string()
}

/// Every action with the least role that may do it, as key number `k` (of role `role`) sends it.
#[rustfmt::skip]
fn role_matrix(role: &str, k: usize) -> Vec<(&'static str, String, Value, &'static str)> {
    let null = Value::Null;
    vec![
        ("GET", "/v1/projects".into(), null.clone(), "viewer"),
        ("GET", "/v1/projects/alpha".into(), null.clone(), "viewer"),
        ("GET", "/v1/projects/alpha/ip-rules?list=block".into(), null.clone(), "viewer"),
        ("GET", "/v1/projects/alpha/bot".into(), null.clone(), "viewer"),
        ("GET", "/v1/domains".into(), null.clone(), "viewer"),
        ("GET", "/v1/certificates".into(), null.clone(), "viewer"),
        ("GET", "/v1/audit?limit=5".into(), null.clone(), "viewer"),
        ("GET", "/v1/cluster/status".into(), null.clone(), "viewer"),
        ("GET", "/v1/settings".into(), null.clone(), "viewer"),
        ("GET", "/metrics".into(), null.clone(), "viewer"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), json!({ "list": "block", "cidr": format!("10.77.{k}.0/24") }), "operator"),
        ("PUT", format!("/v1/domains/{role}.alpha.test"), json!({ "project": "alpha", "upstreams": ["127.0.0.1:9"] }), "operator"),
        ("PUT", "/v1/projects/alpha/bot".into(), json!({ "mode": "always_on", "difficulty_bits": 16 }), "operator"),
        ("POST", "/v1/projects".into(), json!({ "id": format!("by-{role}"), "name": "x" }), "admin"),
        ("PATCH", "/v1/projects/beta".into(), json!({ "name": format!("beta by {role}") }), "admin"),
        ("POST", "/v1/keys".into(), json!({ "role": "viewer" }), "admin"),
        ("GET", "/v1/keys".into(), null.clone(), "admin"),
        ("POST", "/v1/cluster/ip-rules".into(), json!({ "cidr": format!("192.0.2.{k}") }), "admin"),
        ("POST", "/v1/cluster/join-tokens".into(), json!({ "ttl_seconds": 60 }), "owner"),
        ("PUT", "/v1/settings".into(), json!({ "values": { "min_tls": "1.2" } }), "owner"),
        ("POST", "/v1/keys".into(), json!({ "role": "admin" }), "owner"),
        ("POST", "/v1/cluster/members/1/promote".into(), null, "owner"),
    ]
}

#[test]
fn roles_scopes_and_the_life_of_a_key() {
    let c = TestCluster::start(bin(), 3, &[("PALISADE_ADMIN_LAST_USED_FLUSH_MS", "200")]).unwrap();
    let owner = c.key.clone();
    project(&c, 0, "alpha");
    project(&c, 0, "beta");

    // The only owner key cannot be revoked: nobody could manage the cluster after it.
    let r = call(
        &c,
        1,
        "DELETE",
        &format!("/v1/keys/{}", key_id(&owner)),
        &owner,
        Value::Null,
    );
    assert_eq!(r.status, 409, "{}", r.body);

    // Keys made on one node work at once on another (which may not have applied them yet).
    let mut keys = BTreeMap::new();
    for (i, role) in ROLES.iter().enumerate() {
        let (_, secret) = make_key(
            &c,
            i % 3,
            &owner,
            json!({ "role": role, "description": role }),
        );
        keys.insert(*role, secret);
    }
    for (i, role) in ROLES.iter().enumerate() {
        let r = call(
            &c,
            (i + 1) % 3,
            "GET",
            "/v1/projects/alpha",
            &keys[role],
            Value::Null,
        );
        assert_eq!(r.status, 200, "{role}: {}", r.body);
    }

    // The role x action matrix: each action with the least role that may do it.
    for (k, role) in ROLES.iter().enumerate() {
        for (method, path, body, least) in role_matrix(role, k) {
            let r = call(&c, k % 3, method, &path, &keys[role], body);
            if rank(role) >= rank(least) {
                assert!(
                    (200..300).contains(&r.status),
                    "{role} may {method} {path}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(r.status, 403, "{role} may not {method} {path}: {}", r.body);
                assert_eq!(r.body["code"], "forbidden", "{}", r.body);
            }
        }
    }

    // A key scoped to a project touches that project only; a scoped admin makes keys below
    // admin, in its own project only; an admin cannot revoke an owner key.
    let (_, op_alpha) = make_key(
        &c,
        0,
        &owner,
        json!({ "role": "operator", "project": "alpha" }),
    );
    let (_, admin_alpha) = make_key(
        &c,
        0,
        &owner,
        json!({ "role": "admin", "project": "alpha" }),
    );
    let admin = keys["admin"].clone();
    let revoke_owner = format!("/v1/keys/{}", key_id(&keys["owner"]));
    #[rustfmt::skip]
    let scoped: Vec<(&str, &str, &str, Value, u16)> = vec![
        (&op_alpha, "POST", "/v1/projects/alpha/ip-rules", json!({ "list": "allow", "cidr": "10.1.0.0/16" }), 201),
        (&op_alpha, "POST", "/v1/projects/beta/ip-rules", json!({ "list": "allow", "cidr": "10.1.0.0/16" }), 403),
        (&op_alpha, "GET", "/v1/projects/beta", Value::Null, 403),
        (&op_alpha, "PUT", "/v1/domains/x.beta.test", json!({ "project": "beta", "upstreams": ["127.0.0.1:9"] }), 403),
        (&op_alpha, "GET", "/v1/cluster/status", Value::Null, 403),
        (&op_alpha, "GET", "/v1/audit", Value::Null, 403),
        (&op_alpha, "POST", "/v1/cluster/ip-rules", json!({ "cidr": "192.0.2.99" }), 403),
        (&admin_alpha, "POST", "/v1/keys", json!({ "role": "viewer", "project": "beta" }), 403),
        // An unscoped key from a scoped admin.
        (&admin_alpha, "POST", "/v1/keys", json!({ "role": "viewer" }), 403),
        (&admin_alpha, "POST", "/v1/keys", json!({ "role": "admin", "project": "alpha" }), 403),
        (&admin, "DELETE", &revoke_owner, Value::Null, 403),
    ];
    for (i, (key, method, path, body, status)) in scoped.into_iter().enumerate() {
        let r = call(&c, i % 3, method, path, key, body);
        assert_eq!(r.status, status, "case {i}: {method} {path}: {}", r.body);
    }
    // What a scoped admin may make: a key below admin in its own project.
    make_key(
        &c,
        0,
        &admin_alpha,
        json!({ "role": "viewer", "project": "alpha" }),
    );
    // Listings show a scoped key its own project only.
    let r = call(&c, 2, "GET", "/v1/projects", &op_alpha, Value::Null);
    let ids: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha"], "{}", r.body);
    let r = call(&c, 2, "GET", "/v1/domains", &op_alpha, Value::Null);
    let domains = r.body["items"].as_array().unwrap();
    assert!(
        domains.iter().all(|d| d["project"] == "alpha"),
        "{}",
        r.body
    );

    // Revoked, with ?wait=all: refused by every node the moment the answer arrives.
    let (victim_id, victim) = make_key(&c, 0, &owner, json!({ "role": "operator" }));
    let r = call(
        &c,
        1,
        "DELETE",
        &format!("/v1/keys/{victim_id}?wait=all"),
        &owner,
        Value::Null,
    );
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("revoked")),
        "{}",
        r.body
    );
    for idx in 0..3 {
        let r = call(
            &c,
            idx,
            "GET",
            "/v1/projects?consistency=local",
            &victim,
            Value::Null,
        );
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (401, Some("unauthenticated")),
            "node index {idx}: {}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains("revoked"),
            "{}",
            r.body
        );
    }

    // Expired: works until its expiry, then 401 everywhere.
    let (_, brief) = make_key(&c, 2, &owner, json!({ "role": "viewer", "ttl_seconds": 2 }));
    let r = call(&c, 0, "GET", "/v1/projects", &brief, Value::Null);
    assert_eq!(r.status, 200, "{}", r.body);
    wait::until("the key to expire", Duration::from_secs(10), || {
        call(&c, 1, "GET", "/v1/projects", &brief, Value::Null).status == 401
    })
    .unwrap();
    let r = call(&c, 2, "GET", "/v1/projects", &brief, Value::Null);
    assert!(
        r.body["message"].as_str().unwrap().contains("expired"),
        "{}",
        r.body
    );

    // Listings show the prefix and when a key was last used, never the secret or its hash.
    wait::until("last use to be recorded", Duration::from_secs(10), || {
        let r = call(&c, 0, "GET", "/v1/keys", &owner, Value::Null);
        r.body["items"].as_array().unwrap().iter().any(|k| {
            k["role"] == "viewer" && k["description"] == "viewer" && k["last_used_at"].is_u64()
        })
    })
    .unwrap();
    let r = call(&c, 0, "GET", "/v1/keys?all=true", &owner, Value::Null);
    let text = r.body.to_string();
    for secret in keys.values() {
        assert!(!text.contains(&secret[20..]), "a listing shows a secret");
    }
    assert!(!text.contains("hash"), "{text}");
    let statuses: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["status"].as_str())
        .collect();
    assert!(
        statuses.contains(&"revoked") && statuses.contains(&"expired"),
        "{statuses:?}"
    );
}

/// `(method, path, content type, body, status, field)`: what is sent and what must come back.
type Case = (
    &'static str,
    String,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

fn j(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn bad_input_is_refused_naming_the_field_and_odd_text_is_kept_verbatim() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    project(&c, 0, "alpha");
    const JSON: &str = "application/json";
    let huge = j(json!({ "id": "big", "name": "x".repeat(2 << 20) }));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "Bad Id!", "name": "x" })), 400, "id"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "ok1", "name": "" })), 400, "name"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "ok1", "name": "   " })), 400, "name"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "ok2", "name": "x", "colour": "red" })), 400, "colour"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "ok3", "name": "x", "headers": { "hsts_max_age": "long" } })), 400, "headers.hsts_max_age"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": "ok4", "name": "x", "headers": { "nosniff": true, "extra": 1 } })), 400, "headers.extra"),
        ("POST", "/v1/projects".into(), JSON, j(json!({ "id": 5, "name": "x" })), 400, "id"),
        ("POST", "/v1/projects".into(), JSON, b"{not json".to_vec(), 400, "body"),
        ("POST", "/v1/projects".into(), JSON, Vec::new(), 400, "body"),
        ("POST", "/v1/projects".into(), JSON, huge, 413, "body"),
        ("POST", "/v1/projects".into(), "text/plain", j(json!({ "id": "ok5", "name": "x" })), 415, "content-type"),
        ("POST", "/v1/projects?wait=sometimes".into(), JSON, j(json!({ "id": "ok6", "name": "x" })), 400, "wait"),
        ("PUT", "/v1/domains/bad..host".into(), JSON, j(json!({ "project": "alpha", "upstreams": ["127.0.0.1:80"] })), 400, "host"),
        ("PUT", "/v1/domains/ok.test".into(), JSON, j(json!({ "project": "alpha", "upstreams": ["nope"] })), 400, "upstreams[0]"),
        ("PUT", "/v1/domains/ok.test".into(), JSON, j(json!({ "project": "alpha", "upstreams": ["127.0.0.1:80", "h:0"] })), 400, "upstreams[1]"),
        ("PUT", "/v1/domains/ok.test".into(), JSON, j(json!({ "project": "alpha", "upstreams": [] })), 400, "upstreams"),
        ("PUT", "/v1/domains/ok.test".into(), JSON, j(json!({ "project": "alpha", "upstreams": ["a:1"], "tls": "sometimes" })), 400, "tls"),
        ("PUT", "/v1/domains/ok.test".into(), JSON, j(json!({ "project": "", "upstreams": ["a:1"] })), 400, "project"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), JSON, j(json!({ "list": "block", "cidr": "10.0.0.0/33" })), 400, "cidr"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), JSON, j(json!({ "list": "block", "cidr": "::1/129" })), 400, "cidr"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), JSON, j(json!({ "list": "block", "cidr": "" })), 400, "cidr"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), JSON, j(json!({ "list": "maybe", "cidr": "10.0.0.1" })), 400, "list"),
        ("POST", "/v1/projects/alpha/ip-rules".into(), JSON, j(json!({ "list": "block", "cidr": "10.0.0.1", "ttl_seconds": 0 })), 400, "ttl_seconds"),
        ("POST", "/v1/keys".into(), JSON, j(json!({ "role": "superuser" })), 400, "role"),
        ("POST", "/v1/keys".into(), JSON, j(json!({ "role": "viewer", "ttl_seconds": -5 })), 400, "ttl_seconds"),
        ("POST", "/v1/keys".into(), JSON, j(json!({ "role": "viewer", "project": "nope!" })), 400, "project"),
        ("PUT", "/v1/projects/alpha/bot".into(), JSON, j(json!({ "difficulty_bits": 40 })), 400, "difficulty_bits"),
        ("PUT", "/v1/projects/alpha/bot".into(), JSON, j(json!({ "mode": "sometimes" })), 400, "mode"),
        ("GET", "/v1/audit?limit=0".into(), JSON, Vec::new(), 400, "limit"),
        ("GET", "/v1/audit?since=yesterday".into(), JSON, Vec::new(), 400, "since"),
        ("GET", "/v1/audit?format=xml".into(), JSON, Vec::new(), 400, "format"),
        ("POST", "/v1/cluster/join-tokens".into(), JSON, j(json!({ "ttl_seconds": 0 })), 400, "ttl_seconds"),
        ("PUT", "/v1/settings".into(), JSON, j(json!({ "values": { "min_tls": "1.1" } })), 400, "values.min_tls"),
        ("PUT", "/v1/settings".into(), JSON, j(json!({ "values": { "colour": "red" } })), 400, "values.colour"),
        ("GET", "/v1/projects/Not%20An%20Id".into(), JSON, Vec::new(), 400, "id"),
        ("POST", "/v1/cluster/leader".into(), JSON, j(json!({ "node_id": 99 })), 409, "node_id"),
        // What the document does not list is refused, naming it.
        ("POST", "/v1/cluster/leader?wiat=all".into(), JSON, j(json!({ "node_id": 1 })), 400, "wiat"),
        ("GET", "/v1/projects?limt=5".into(), JSON, Vec::new(), 400, "limt"),
        ("POST", "/v1/cluster/join-tokens".into(), JSON, j(json!({ "ttl_seconds": 60, "ttl": 5 })), 400, "ttl"),
    ];
    assert!(cases.len() >= 20);
    for (method, path, ct, body, status, field) in cases {
        let headers = vec![
            ("Authorization", format!("Bearer {}", c.key)),
            ("Content-Type", ct.to_string()),
        ];
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
        let r = c.call(0, method, &path, &headers, body).unwrap();
        assert_eq!(r.status, status, "{method} {path} {shown}: {}", r.body);
        assert_eq!(
            r.body["field"], field,
            "{method} {path} {shown}: {}",
            r.body
        );
        let message = r.body["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{}", r.body);
        assert!(r.body["code"].is_string(), "{}", r.body);
    }
    // A bad value is named in the message too.
    let r = call(
        &c,
        0,
        "POST",
        "/v1/projects/alpha/ip-rules",
        &c.key,
        json!({ "list": "block", "cidr": "10.0.0.0/33" }),
    );
    assert!(
        r.body["message"].as_str().unwrap().contains("10.0.0.0/33"),
        "{}",
        r.body
    );
    // An over-long Idempotency-Key is refused on every change, whether or not the route
    // would have used it.
    for (path, body) in [
        ("/v1/projects", json!({ "id": "idem", "name": "x" })),
        ("/v1/cluster/join-tokens", json!({ "ttl_seconds": 60 })),
    ] {
        let r = c
            .call(
                0,
                "POST",
                path,
                &[
                    ("Authorization", format!("Bearer {}", c.key)),
                    ("Idempotency-Key", "x".repeat(300)),
                ],
                j(body),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (400, Some("idempotency-key")),
            "{path}: {}",
            r.body
        );
    }

    // Nothing was written by any of them.
    let r = c.get(0, "/v1/projects").unwrap();
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);

    // Text that looks like an attack is data: stored as given, returned as JSON-escaped text.
    let odd = "<script>alert(1)</script> '; DROP TABLE projects; -- \"quoted\" \\ ${jndi:x}";
    let r = c
        .post(0, "/v1/projects", json!({ "id": "odd", "name": odd }), None)
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let (status, raw) = c.get_text(0, "/v1/projects/odd").unwrap();
    assert_eq!(status, 200);
    assert!(
        !raw.contains("\"quoted\""),
        "quotes must be escaped in JSON: {raw}"
    );
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["name"], odd);
}

#[test]
fn every_change_is_audited_on_every_node_and_exports_parse_back() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    let since = palisade_raft::now_ms();
    project(&c, 1, "shop");
    let r = c
        .put(
            2,
            "/v1/domains/www.shop.test",
            json!({ "project": "shop", "upstreams": ["127.0.0.1:9"] }),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c
        .post(
            0,
            "/v1/projects/shop/ip-rules",
            json!({ "list": "block", "cidr": "203.0.113.0/24", "note": "a, \"quoted\" note" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let (key_id, _) = make_key(&c, 1, &c.key, json!({ "role": "viewer" }));
    let r = call(
        &c,
        2,
        "DELETE",
        &format!("/v1/keys/{key_id}"),
        &c.key,
        Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.delete(0, "/v1/domains/www.shop.test").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let owner_actor = format!("key:{} (owner)", c.key[4..].split('_').next().unwrap());
    let wanted = [
        ("project.create", "project/shop"),
        ("domain.put", "domain/www.shop.test"),
        ("ip_rule.add", "project/shop/ip-rules/block/203.0.113.0/24"),
        ("key.create", &*format!("key/{key_id}")),
        ("key.revoke", &*format!("key/{key_id}")),
        ("domain.delete", "domain/www.shop.test"),
    ];
    let mut first: Option<Value> = None;
    for idx in 0..3 {
        let r = c
            .get(idx, &format!("/v1/audit?since={since}&limit=1000"))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let items = r.body["items"].as_array().unwrap().clone();
        for (action, target) in wanted {
            let e = items
                .iter()
                .find(|e| {
                    e["action"] == action && e["target"].as_str().unwrap().starts_with(target)
                })
                .unwrap_or_else(|| panic!("node index {idx}: no {action} {target} in {items:#?}"));
            assert_eq!(e["actor"], owner_actor.as_str(), "{e}");
            assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
            assert_eq!(e["outcome"], "ok", "{e}");
        }
        // Every node holds the same log.
        let same: Vec<Value> = items.clone();
        match &first {
            None => first = Some(Value::Array(same)),
            Some(f) => assert_eq!(f, &Value::Array(same), "node index {idx} disagrees"),
        }
    }
    // Failed authentication: audited with the source, and slowed down after a few tries.
    let bad = format!("pal_{}_wrongsecret", "ab12cd34ef56");
    let mut took = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let r = call(&c, 1, "GET", "/v1/projects", &bad, Value::Null);
        took.push(t.elapsed());
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert!(took[0] < Duration::from_millis(200), "{took:?}");
    assert!(
        took[4] >= Duration::from_millis(450) && took[5] >= Duration::from_millis(900),
        "failures must be slowed: {took:?}"
    );
    let r = call(&c, 1, "GET", "/v1/projects", "", Value::Null);
    assert_eq!(r.status, 401);

    wait::until(
        "auth failures in the audit log",
        Duration::from_secs(10),
        || {
            let r = c.get(0, "/v1/audit?action=auth.failure&limit=100").unwrap();
            let items = r.body["items"].as_array().unwrap();
            items.len() >= 7
                && items.iter().any(|e| {
                    e["actor"] == "key:ab12cd34ef56"
                        && e["source_ip"] == "127.0.0.1"
                        && e["target"] == "GET /v1/projects"
                })
                && items.iter().any(|e| e["actor"] == "anonymous")
        },
    )
    .unwrap();
    let failures = c
        .get(0, "/v1/audit?action=auth.failure")
        .unwrap()
        .body
        .to_string();
    assert!(
        !failures.contains("wrongsecret"),
        "a presented secret reached the audit log"
    );

    // Queries: by actor, by action prefix, by target, by time.
    let r = c
        .get(2, &format!("/v1/audit?actor={}", urlencode(&owner_actor)))
        .unwrap();
    assert!(r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == owner_actor.as_str()));
    let r = c.get(2, "/v1/audit?action=domain.").unwrap();
    let actions: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["domain.put", "domain.delete"], "{}", r.body);
    let r = c.get(2, "/v1/audit?target=project/shop").unwrap();
    assert!(r.body["items"].as_array().unwrap().len() >= 2, "{}", r.body);
    let r = c.get(2, &format!("/v1/audit?until={since}")).unwrap();
    assert!(r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["at"].as_u64().unwrap() < since));
    // Pages: two halves make the whole.
    let all = c.get(1, "/v1/audit?limit=1000").unwrap().body["items"]
        .as_array()
        .unwrap()
        .clone();
    let half = all.len() / 2;
    let p1 = c.get(1, &format!("/v1/audit?limit={half}")).unwrap();
    let next = p1.body["next"].as_str().unwrap().to_string();
    let p2 = c
        .get(1, &format!("/v1/audit?limit=1000&after={next}"))
        .unwrap();
    let mut joined = p1.body["items"].as_array().unwrap().clone();
    joined.extend(p2.body["items"].as_array().unwrap().iter().cloned());
    assert_eq!(joined, all);

    // The CSV export parses back to the JSON entries.
    let (status, text) = c.get_text(1, "/v1/audit?limit=1000&format=csv").unwrap();
    assert_eq!(status, 200);
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "seq",
            "at",
            "actor",
            "source_ip",
            "action",
            "target",
            "outcome",
            "class"
        ]
    );
    let from_csv: Vec<Value> = rd
        .records()
        .map(|r| {
            let r = r.unwrap();
            let mut e = json!({
                "seq": r[0].parse::<u64>().unwrap(), "at": r[1].parse::<u64>().unwrap(),
                "actor": &r[2], "source_ip": &r[3], "action": &r[4], "target": &r[5], "outcome": &r[6],
            });
            // JSON names the class only when it is not the operators'.
            if &r[7] != "operator" {
                e["class"] = json!(&r[7]);
            }
            e
        })
        .collect();
    let all_now = c.get(1, "/v1/audit?limit=1000").unwrap().body["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(from_csv.len(), all_now.len());
    assert_eq!(Value::Array(from_csv), Value::Array(all_now));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A raw HTTP/1.1 GET from a chosen loopback source; the status and body.
fn get_from(source: IpAddr, to: SocketAddr, path: &str, key: &str) -> (u16, String) {
    request_from(source, to, "GET", path, key)
}

/// A raw HTTP/1.1 request without a body from a chosen loopback source; the status and body.
fn request_from(
    source: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
) -> (u16, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_admin_surface_is_private() {
    // Only 127.0.0.1 may reach it; 127.0.0.2 is a foreign source.
    let mut c =
        TestCluster::start(bin(), 1, &[("PALISADE_ADMIN_ALLOWED_IPS", "127.0.0.1/32")]).unwrap();
    let admin: SocketAddr = c.nodes[0].admin_addr.parse().unwrap();
    let inside: IpAddr = "127.0.0.1".parse().unwrap();
    let outside: IpAddr = "127.0.0.2".parse().unwrap();
    let (s, body) = get_from(inside, admin, "/v1/cluster/status", &c.key);
    assert_eq!(s, 200, "{body}");
    let (nowhere_status, nowhere_body) = get_from(inside, admin, "/no/such/route", &c.key);
    assert_eq!(nowhere_status, 404);
    for path in [
        "/v1/cluster/status",
        "/healthz",
        "/metrics",
        "/v1/keys",
        "/no/such/route",
    ] {
        let (s, body) = get_from(outside, admin, path, &c.key);
        assert_eq!(
            (s, &body),
            (404, &nowhere_body),
            "{path} from a foreign source"
        );
    }
    let before = c.get(0, "/v1/audit?action=auth.failure").unwrap();
    assert_eq!(
        before.body["items"].as_array().unwrap().len(),
        0,
        "a foreign source must not even reach authentication"
    );

    // The public listeners answer no admin route.
    let public = c.nodes[0].http_addr.clone();
    for path in [
        "/v1/cluster/status",
        "/v1/projects",
        "/metrics",
        "/healthz",
        "/v1/keys",
    ] {
        let (s, body) = get_from(inside, public.parse().unwrap(), path, &c.key);
        assert_ne!(s, 200, "{path} on the public listener: {body}");
        assert!(
            !body.contains("cluster_id") && !body.contains("\"items\""),
            "{path}: {body}"
        );
    }

    // A public or wildcard admin address is refused unless allowed, and then warned about.
    let cfg_path = c.nodes[0].dir.join("palisade.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let port = admin.port();
    let wildcard = cfg.replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
    assert_ne!(wildcard, cfg, "the config names the admin address");
    c.kill(0);
    std::fs::write(&cfg_path, &wildcard).unwrap();
    let out = c
        .run_cli(&["run", "--config", cfg_path.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.listen") && err.contains("allow_public"),
        "{err}"
    );
    let allowed = wildcard.replace("allow_public = false", "allow_public = true");
    assert_ne!(allowed, wildcard, "the config spells out allow_public");
    std::fs::write(&cfg_path, allowed).unwrap();
    c.restart(0).unwrap();
    c.wait_ready(0, Duration::from_secs(60)).unwrap();
    let log = c.nodes[0].log_text();
    assert!(log.contains("admin.allow_public is set"), "{log}");
    let (s, _) = get_from(inside, admin, "/v1/cluster/status", &c.key);
    assert_eq!(s, 200);
}

/// Prometheus text format, strictly enough to catch a broken exposition: every sample line is
/// `name{labels} value` with a valid name and a float value; every `# TYPE` names a known type.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (_, kind) = rest.rsplit_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        out.insert(series.to_string(), value);
    }
    out
}

#[test]
fn probes_metrics_leadership_and_wait_all() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    for idx in 0..3 {
        let r = call(&c, idx, "GET", "/healthz", "", Value::Null);
        assert_eq!((r.status, &r.body["status"]), (200, &json!("ok")));
        let r = call(&c, idx, "GET", "/readyz", "", Value::Null);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["ready"], true);
    }

    // ?wait=all: once the answer is in, every node has the write, without a barrier.
    let leader = c.wait_leader(None, Duration::from_secs(30)).unwrap();
    let follower = (0..3).find(|&i| c.nodes[i].id != leader).unwrap();
    for n in 0..20 {
        let id = format!("w{n}");
        let r = c
            .post(
                follower,
                "/v1/projects?wait=all",
                json!({ "id": id, "name": id }),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body["index"].as_u64().unwrap() > 0);
        for idx in 0..3 {
            let r = c
                .get(idx, &format!("/v1/projects/{id}?consistency=local"))
                .unwrap();
            assert_eq!(
                r.status, 200,
                "node index {idx} lacks {id} after wait=all: {}",
                r.body
            );
        }
    }

    // Metrics: valid Prometheus text with raft, edge and admin series.
    let public: SocketAddr = c.nodes[0].http_addr.parse().unwrap();
    let (s, _) = get_from("127.0.0.1".parse().unwrap(), public, "/", "");
    assert!(s >= 400, "an unknown host on the public listener");
    let (status, text) = c.get_text(0, "/metrics").unwrap();
    assert_eq!(status, 200);
    let m = parse_prometheus(&text);
    for name in [
        "palisade_raft_applied_index",
        "palisade_raft_is_leader",
        "palisade_raft_term",
        "palisade_admin_requests_total",
        "palisade_admin_request_seconds",
        "palisade_requests_total",
    ] {
        assert!(
            m.keys().any(|k| k.starts_with(name)),
            "no {name} in:\n{text}"
        );
    }
    assert!(m["palisade_raft_applied_index"] > 0.0);

    // Leadership moves on request, and the cluster keeps taking writes.
    let to = c.nodes[follower].id;
    let r = c
        .post(2, "/v1/cluster/leader", json!({ "node_id": to }), None)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.status(0).unwrap()["leader"], to);
    project(&c, 0, "after-transfer");
    let r = c
        .get(1, "/v1/audit?action=cluster.leader.transfer")
        .unwrap();
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
}

#[test]
fn the_cli_drives_every_resource() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let admin = c.nodes[0].admin_addr.clone();
    // Address and key from a client file this time; flags and the environment work the same.
    let client = c.dir.path().join("client.toml");
    std::fs::write(
        &client,
        format!("admin = \"{admin}\"\nkey = \"{}\"\n", c.key),
    )
    .unwrap();
    let cli = |args: &[&str]| -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--client-config", client.to_str().unwrap()]);
        let out = c.run_cli(&all).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    cli(&["project", "add", "shop", "--name", "The Shop"]);
    let table = cli(&["project", "ls"]);
    assert!(
        table.lines().next().unwrap().starts_with("ID") && table.contains("The Shop"),
        "{table}"
    );
    cli(&[
        "domain",
        "put",
        "www.shop.test",
        "-p",
        "shop",
        "--upstream",
        "127.0.0.1:9",
        "--upstream",
        "127.0.0.1:10",
        "--bot",
        "always_on",
    ]);
    let v: Value = serde_json::from_str(&cli(&["domain", "ls", "--json"])).unwrap();
    assert_eq!(
        v["items"][0]["upstreams"],
        json!(["127.0.0.1:9", "127.0.0.1:10"])
    );
    assert_eq!(v["items"][0]["bot_override"], "always_on");
    cli(&[
        "bot",
        "set",
        "-p",
        "shop",
        "--mode",
        "off",
        "--difficulty-bits",
        "12",
        "--set",
        "triggers.failed_logins.threshold=3",
        "--set",
        r#"exempt_paths=["/hooks/*"]"#,
    ]);
    let v: Value = serde_json::from_str(&cli(&["bot", "show", "-p", "shop"])).unwrap();
    assert_eq!(
        (v["mode"].as_str(), v["difficulty_bits"].as_u64()),
        (Some("off"), Some(12))
    );
    assert_eq!(v["triggers"]["failed_logins"]["threshold"], 3);
    assert_eq!(v["exempt_paths"], json!(["/hooks/*"]));
    assert!(cli(&["bot", "revoke-sessions", "-p", "shop"]).contains("epoch 1"));
    cli(&[
        "api",
        "POST",
        "/v1/projects/shop/bot/decisions",
        r#"{"prefix":"203.0.113.0/24","minutes":5,"reason":"test"}"#,
    ]);
    assert!(cli(&["bot", "decisions", "-p", "shop"]).contains("203.0.113.0/24\tchallenge"));
    assert!(cli(&["bot", "lift", "-p", "shop", "203.0.113.0/24"]).contains("lifted"));
    assert!(!cli(&["bot", "decisions", "-p", "shop"]).contains("203.0.113.0/24"));
    let secret = cli(&[
        "key",
        "create",
        "--role",
        "viewer",
        "-p",
        "shop",
        "--description",
        "ci",
    ]);
    let secret = secret.trim();
    assert!(secret.starts_with("pal_"), "{secret}");
    let keys = cli(&["key", "ls"]);
    assert!(
        keys.contains("viewer") && keys.contains("shop") && !keys.contains(&secret[20..]),
        "{keys}"
    );
    let id = secret[4..].split('_').next().unwrap();
    cli(&["key", "revoke", id]);
    let v: Value = serde_json::from_str(&cli(&["key", "ls", "--all", "--json"])).unwrap();
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id && k["status"] == "revoked"));
    let status = cli(&["cluster", "status"]);
    assert!(status.contains("leader  node 1"), "{status}");
    let csv_text = cli(&["audit", "--export", "csv"]);
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let actions: Vec<String> = rd.records().map(|r| r.unwrap()[4].to_string()).collect();
    for a in [
        "project.create",
        "domain.put",
        "bot.policy.put",
        "key.create",
        "key.revoke",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    let json_text = cli(&["audit", "--export", "json", "--action", "key."]);
    let v: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let raw = cli(&["api", "GET", "/v1/projects/shop"]);
    assert!(raw.contains("The Shop"), "{raw}");
    // An error is the API's, on one line, naming the field.
    let out = c
        .run_cli(&[
            "project",
            "add",
            "Bad Id",
            "--name",
            "x",
            "--client-config",
            client.to_str().unwrap(),
        ])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("400") && err.contains("id:"), "{err}");
    cli(&["domain", "rm", "www.shop.test"]);
    cli(&["project", "rm", "shop"]);
    assert!(!cli(&["project", "ls"]).contains("The Shop"));
}

#[test]
fn the_openapi_document_validates_and_matches_the_routes() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    let r = call(&c, 0, "GET", "/openapi.json", "", Value::Null);
    assert_eq!(r.status, 200);
    let raw = r.body;
    let doc: openapiv3::OpenAPI =
        serde_json::from_value(raw.clone()).expect("a valid OpenAPI 3.0 document");
    assert!(doc.openapi.starts_with("3.0"));

    // Every reference resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&raw, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("odd $ref {r}"));
        assert!(
            raw["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }

    // Every documented operation is served: open ones answer, keyed ones ask for a key (each
    // from its own loopback source, so no source collects enough failures to be slowed down).
    let admin: SocketAddr = c.nodes[0].admin_addr.parse().unwrap();
    let mut n = 0;
    for (path, item) in &doc.paths.paths {
        let item = item.as_item().unwrap();
        for (method, op) in item.iter() {
            let declared: Vec<String> = op
                .parameters
                .iter()
                .filter_map(|p| p.as_item())
                .filter_map(|p| match p {
                    openapiv3::Parameter::Path { parameter_data, .. } => {
                        Some(parameter_data.name.clone())
                    }
                    _ => None,
                })
                .collect();
            let templated: Vec<String> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')))
                .map(String::from)
                .collect();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
            let concrete = path.replace("{id}", "1").replace("{host}", "a.example");
            n += 1;
            let source: IpAddr = format!("127.0.0.{}", 10 + n).parse().unwrap();
            let (status, body) = request_from(source, admin, &method.to_uppercase(), &concrete, "");
            let keyed = op.security.as_ref().is_some_and(|s| !s.is_empty());
            if keyed {
                assert_eq!(status, 401, "{method} {path} without a key: {body}");
                assert!(raw["paths"][path][method]["x-palisade-role"].is_string());
            } else {
                assert!(
                    ![401, 404, 405].contains(&status),
                    "{method} {path}: {status} {body}"
                );
            }
        }
    }
    assert!(n >= 40, "only {n} operations documented");
    // A method the document does not list is not served either, and the answer says which are.
    let (status, _) = request_from("127.0.0.9".parse().unwrap(), admin, "PATCH", "/v1/keys", "");
    assert_eq!(status, 405);
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "DELETE /v1/keys HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        c.key
    )
    .unwrap();
    let mut raw405 = String::new();
    s.read_to_string(&mut raw405).unwrap();
    let head = raw405.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 405"), "{raw405}");
    assert!(head.contains("\r\nallow: get, post, head\r\n"), "{raw405}");
    // A body whose fields all default may be left out, and the document says so.
    assert_eq!(
        raw["paths"]["/v1/cluster/join-tokens"]["post"]["requestBody"]["required"],
        false
    );
    assert_eq!(
        raw["paths"]["/v1/keys"]["post"]["requestBody"]["required"],
        true
    );
    // The interactive page reads the document.
    let (status, page) = c.get_text(0, "/docs").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("/openapi.json") && page.contains("<script>"),
        "{page}"
    );
}

#[test]
fn a_configuration_export_restores_into_an_empty_cluster() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (up, _task) = rt.block_on(palisade_testkit::origin::upstream("restored"));
    let a = TestCluster::start(bin(), 1, &[]).unwrap();
    project(&a, 0, "shop");
    let r = a
        .put(
            0,
            "/v1/domains/shop.test",
            json!({ "project": "shop", "upstreams": [up.to_string()] }),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    for cidr in ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"] {
        let r = a
            .post(
                0,
                "/v1/projects/shop/ip-rules",
                json!({ "list": "block", "cidr": cidr }),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let pki = palisade_testkit::pki::pki(&["shop.test"]);
    let r = a
        .post(
            0,
            "/v1/certificates",
            json!({ "name": "shop", "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let (_, kept_key) = make_key(
        &a,
        0,
        &a.key,
        json!({ "role": "operator", "project": "shop" }),
    );

    let r = call(
        &a,
        0,
        "POST",
        "/v1/config/export",
        &a.key,
        json!({ "passphrase": "short" }),
    );
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("passphrase")),
        "{}",
        r.body
    );
    let pass = "correct horse battery staple";
    let r = call(
        &a,
        0,
        "POST",
        "/v1/config/export",
        &a.key,
        json!({ "passphrase": pass }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let export = r.body;
    let text = export.to_string();
    assert!(
        !text.contains("PRIVATE KEY"),
        "a certificate key left the cluster in the clear"
    );
    let kinds: Vec<&str> = export["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in ["project", "domain", "ip_rule", "cert", "api_key"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }

    let b = TestCluster::start(bin(), 1, &[]).unwrap();
    let import_doc = |doc: &Value, pass: &str| {
        b.call(
            0,
            "POST",
            "/v1/config/import",
            &[
                ("Authorization", format!("Bearer {}", b.key)),
                ("Content-Type", "application/json".into()),
                ("X-Palisade-Passphrase", pass.into()),
            ],
            serde_json::to_vec(doc).unwrap(),
        )
        .unwrap()
    };
    let import = |pass: &str| import_doc(&export, pass);
    // A settings record is held to the same table as `PUT /v1/settings`.
    let mut tampered = export.clone();
    let records = tampered["records"].as_array_mut().unwrap();
    records.push(json!({ "kind": "settings", "values": { "min_tls": "1.1" } }));
    let at = records.len() - 1;
    let r = import_doc(&tampered, pass);
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some(format!("records[{at}].values.min_tls").as_str())),
        "{}",
        r.body
    );
    let r = import("the wrong passphrase entirely");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["field"].as_str().unwrap().starts_with("records["),
        "{}",
        r.body
    );
    assert_eq!(
        b.get(0, "/v1/projects").unwrap().body["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing written"
    );
    let r = import(pass);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["imported"].as_u64().unwrap() as usize, kinds.len());

    // B now holds A's configuration, and A's certificate opens under B's master key.
    for path in ["/v1/projects/shop", "/v1/domains/shop.test"] {
        assert_eq!(
            b.get(0, path).unwrap().body,
            a.get(0, path).unwrap().body,
            "{path}"
        );
    }
    let rules =
        |c: &TestCluster| c.get(0, "/v1/projects/shop/ip-rules").unwrap().body["items"].clone();
    assert_eq!(rules(&b), rules(&a));
    let r = call(&b, 0, "GET", "/v1/projects/shop", &kept_key, Value::Null);
    assert_eq!(r.status, 200, "a key of A works on B: {}", r.body);
    let https = b.nodes[0].https_addr.clone();
    let ca = pki.ca_pem.clone();
    let served = rt.block_on(wait::until_async(
        "B to serve shop.test",
        Duration::from_secs(10),
        || async {
            let got = palisade_testkit::http::https_get(&https, "shop.test", "/", &ca).await;
            got.ok().map(|a| a.status)
        },
    ));
    let served = served.unwrap_or(0);
    assert_eq!(
        served, 200,
        "B serves shop.test with the imported certificate"
    );
    let r = import(pass);
    assert_eq!(
        r.status, 409,
        "an import only restores into an empty cluster: {}",
        r.body
    );
    let r = b.get(0, "/v1/audit?action=config.import").unwrap();
    assert!(!r.body["items"].as_array().unwrap().is_empty());
}

#[test]
fn the_audit_log_is_kept_within_its_limit_by_the_leader() {
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_ADMIN_AUDIT_MAX_ENTRIES", "1000"),
            ("PALISADE_EDGE_RULE_SWEEP_INTERVAL_MS", "300"),
        ],
    )
    .unwrap();
    project(&c, 0, "busy");
    // 1,100 audited changes, each a write of its own.
    for i in 0..1100u32 {
        let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
        let r = c
            .post(
                0,
                "/v1/projects/busy/ip-rules",
                json!({ "list": "block", "cidr": cidr }),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let count = || {
        let r = c.get(0, "/v1/audit?limit=10000").unwrap();
        r.body["items"].as_array().unwrap().clone()
    };
    wait::until(
        "the audit log to be pruned",
        Duration::from_secs(30),
        || count().len() <= 1000,
    )
    .unwrap();
    let items = count();
    // The newest entries stay, oldest first out, and the prune itself is on record.
    assert!(items.len() >= 980, "pruned too far: {}", items.len());
    let last = items.last().unwrap();
    assert!(
        last["action"] == "audit.prune"
            || items
                .iter()
                .rev()
                .take(5)
                .any(|e| e["action"] == "audit.prune"),
        "{last}"
    );
    assert!(
        items
            .iter()
            .any(|e| e["target"].as_str().unwrap().ends_with("10.4.75.0/24")),
        "the newest change is kept"
    );
    assert!(
        !items.iter().any(|e| e["action"] == "project.create"),
        "the oldest entry went first"
    );
}

#[test]
fn the_admin_api_can_be_served_over_tls_with_the_cluster_ca() {
    let mut c = TestCluster::start(bin(), 1, &[]).unwrap();
    let cfg_path = c.nodes[0].dir.join("palisade.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let with_tls = cfg.replace("tls = false", "tls = true");
    assert_ne!(with_tls, cfg, "the config spells out admin.tls");
    c.kill(0);
    std::fs::write(&cfg_path, with_tls).unwrap();
    c.restart(0).unwrap();

    let ca = c.nodes[0].dir.join("tls/ca.pem");
    let admin = c.nodes[0].admin_addr.clone();
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "api",
            "GET",
            "/v1/cluster/status",
            "--admin",
            &admin,
            "--key",
            &c.key,
        ];
        args.extend(extra);
        c.run_cli(&args).unwrap()
    };
    let ca_arg = ca.to_str().unwrap();
    wait::until("the admin API over TLS", Duration::from_secs(60), || {
        cli(&["--ca", ca_arg]).status.success()
    })
    .unwrap();
    let out = cli(&["--ca", ca_arg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster_id"));

    // Plain HTTP gets no answer from it.
    let mut s = std::net::TcpStream::connect(&admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = String::from_utf8_lossy(&out)
        .get(9..12)
        .and_then(|x| x.parse::<u16>().ok())
        .unwrap_or(0);
    assert_eq!(
        status, 0,
        "plain HTTP must not be answered on a TLS listener"
    );

    // A client that trusts another CA refuses the node.
    let other = palisade_testkit::pki::pki(&["elsewhere.test"]);
    let other_ca = c.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.ca_pem).unwrap();
    let out = cli(&["--ca", other_ca.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[test]
fn a_project_with_ip_rules_is_not_deleted_until_its_lists_are_cleared() {
    let c = TestCluster::start(bin(), 3, &[]).unwrap();
    project(&c, 0, "gone");
    let lines: String = (0..5000u32)
        .map(|i| format!("10.{}.{}.0/24\n", i / 256, i % 256))
        .collect();
    let (status, body) = c
        .post_raw(
            1,
            "/v1/projects/gone/ip-rules/import?list=block",
            "text/plain",
            lines.into_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let r = c
        .post(
            2,
            "/v1/projects/gone/ip-rules",
            json!({ "list": "allow", "cidr": "192.0.2.0/24" }),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.delete(0, "/v1/projects/gone").unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("5001 IP rules"),
        "{}",
        r.body
    );

    let r = c
        .delete(1, "/v1/projects/gone/ip-rules?list=block&all=true&wait=all")
        .unwrap();
    assert_eq!(
        (r.status, r.body["removed"].as_u64()),
        (200, Some(5000)),
        "{}",
        r.body
    );
    let out = c
        .run_cli(&[
            "ip",
            "clear",
            "-p",
            "gone",
            "--list",
            "allow",
            "--admin",
            &c.nodes[2].admin_addr,
            "--key",
            &c.key,
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 entries"));
    for idx in 0..3 {
        let r = c.get(idx, "/v1/projects/gone/ip-rules").unwrap();
        assert_eq!(
            r.body["items"].as_array().unwrap().len(),
            0,
            "node index {idx}: {}",
            r.body
        );
    }
    let r = c.delete(0, "/v1/projects/gone").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.get(0, "/v1/audit?action=ip_rule.clear").unwrap();
    assert_eq!(
        r.body["items"].as_array().unwrap().len(),
        4,
        "3 batches of the block list, 1 of the allow list: {}",
        r.body
    );
}

#[test]
fn revocations_stay_revoked() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    project(&c, 0, "shop");
    let epoch = |c: &TestCluster| c.get(0, "/v1/projects/shop/bot").unwrap().body["epoch"].clone();

    // Revoking every clearance bumps the epoch; a policy written without it, or with an older
    // one (a read-modify-write that raced the revocation), keeps it.
    let r = c
        .post(0, "/v1/projects/shop/bot/sessions/revoke", json!({}), None)
        .unwrap();
    assert_eq!(
        (r.status, r.body["epoch"].as_u64()),
        (200, Some(1)),
        "{}",
        r.body
    );
    for body in [
        json!({ "mode": "always_on" }),
        json!({ "mode": "automatic", "epoch": 0 }),
    ] {
        let r = c.put(0, "/v1/projects/shop/bot", body.clone()).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["bot"]["epoch"], 1, "{body}: {}", r.body);
        assert_eq!(epoch(&c), 1, "{body}");
    }

    // Deleting a project revokes its scoped keys and lifts its decisions: the same id made
    // again inherits neither.
    let (_, scoped) = make_key(
        &c,
        0,
        &c.key,
        json!({ "role": "operator", "project": "shop" }),
    );
    let decision = json!({ "prefix": "203.0.113.0/24", "action": "block", "minutes": 60 });
    let r = c
        .post(0, "/v1/projects/shop/bot/decisions", decision, None)
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.delete(0, "/v1/projects/shop").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    project(&c, 0, "shop");
    let r = call(&c, 0, "GET", "/v1/projects/shop", &scoped, Value::Null);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("revoked"),
        "{}",
        r.body
    );
    let r = c.get(0, "/v1/projects/shop/bot/decisions").unwrap();
    assert_eq!(r.body["items"], json!([]), "{}", r.body);
    let r = c.get(0, "/v1/audit?action=project.delete").unwrap();
    let outcome = r.body["items"][0]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(outcome.contains("keys revoked"), "{}", r.body);
}

#[test]
fn a_tenant_sees_no_operator_notes_and_imports_and_domains_have_limits() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    project(&c, 0, "shop");

    // A project-scoped viewer learns that a cluster-wide entry decides, not what the operators
    // wrote about it.
    let note = "case 4711: the fraud team's list";
    let rule = json!({ "cidr": "198.51.100.9", "note": note, "ttl_seconds": 3600 });
    assert_eq!(
        c.post(0, "/v1/cluster/ip-rules", rule, None)
            .unwrap()
            .status,
        201
    );
    let (_, viewer) = make_key(
        &c,
        0,
        &c.key,
        json!({ "role": "viewer", "project": "shop" }),
    );
    let check = "/v1/projects/shop/ip-rules/check?ip=198.51.100.9";
    let r = call(&c, 0, "GET", check, &viewer, Value::Null);
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (200, Some("cluster_block")),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["rule"],
        json!({ "list": "block", "cidr": "198.51.100.9/32" }),
        "{}",
        r.body
    );
    let r = call(&c, 0, "GET", check, &c.key, Value::Null);
    assert_eq!(
        r.body["rule"]["note"], note,
        "an unscoped key sees it all: {}",
        r.body
    );

    // A project holds at most `project.max_domains` domains; replacing one is not adding one.
    let r = c
        .put(
            0,
            "/v1/settings",
            json!({ "values": { "project.max_domains": "2" } }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let domain = json!({ "project": "shop", "upstreams": ["127.0.0.1:9"] });
    #[rustfmt::skip]
    let puts = [("a.shop.test", 201), ("b.shop.test", 201), ("c.shop.test", 409), ("a.shop.test", 201)];
    for (host, want) in puts {
        let r = c
            .put(0, &format!("/v1/domains/{host}"), domain.clone())
            .unwrap();
        assert_eq!(r.status, want, "{host}: {}", r.body);
        if want == 409 {
            assert!(
                r.body["message"]
                    .as_str()
                    .unwrap()
                    .contains("project.max_domains"),
                "{}",
                r.body
            );
        }
    }

    // Imports run one at a time on a node: while one is still sending its body, another gets
    // 429 with Retry-After; the first then completes.
    let admin: SocketAddr = c.nodes[0].admin_addr.parse().unwrap();
    let body = (0..1000)
        .map(|i| format!("10.7.{}.{}\n", i / 250, i % 250 + 1))
        .collect::<String>();
    let import = "/v1/projects/shop/ip-rules/import?list=block";
    // The second import may reach the node before the first one's handler has started (on a
    // loaded machine): it then takes the slot and the first is the one refused. Such a round
    // proves nothing, so it is dropped (a half-sent import writes nothing) and tried again.
    let mut outcome = None;
    for round in 0..20u64 {
        let mut first = std::net::TcpStream::connect(admin).unwrap();
        first
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            first,
            "POST {import} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            c.key,
            body.len(),
            &body[..body.len() / 2]
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100 * (round + 1)));
        let (status, text) = c
            .post_raw(0, import, "text/plain", b"10.8.0.1\n".to_vec())
            .unwrap();
        if status == 429 {
            outcome = Some((first, text));
            break;
        }
        assert_eq!(status, 200, "the second import: {text}");
    }
    let (mut first, second) =
        outcome.expect("in 20 rounds, the second import never found the first one running");
    assert!(second.contains("another import is running"), "{second}");
    first.write_all(&body.as_bytes()[body.len() / 2..]).unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"imported\":1000"), "{answer}");
}

#[test]
fn an_idempotency_key_answers_its_own_request_and_refuses_another() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    project(&c, 0, "shop");
    let (_, other) = make_key(&c, 0, &c.key, json!({ "role": "operator" }));
    let send = |key: &str, idem: &str, path: &str, ct: &str, body: &[u8]| {
        let headers = [
            ("Authorization", format!("Bearer {key}")),
            ("Idempotency-Key", idem.to_string()),
            ("Content-Type", ct.to_string()),
        ];
        c.call(0, "POST", path, &headers, body.to_vec()).unwrap()
    };
    let rules = "/v1/projects/shop/ip-rules";
    let rule = |cidr: &str| j(json!({ "list": "block", "cidr": cidr }));
    let json_ct = "application/json";
    let listed = |c: &TestCluster| {
        let r = c.get(0, "/v1/projects/shop/ip-rules?list=block").unwrap();
        let mut cidrs: Vec<String> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["cidr"].as_str().unwrap().to_string())
            .collect();
        cidrs.sort();
        cidrs
    };

    // A retry of the same request is applied once and says it was a retry; `?wait=all` on the
    // retry changes nothing about what it is.
    let first = send(&c.key, "k-1", rules, json_ct, &rule("198.51.100.1/32"));
    assert_eq!(first.status, 201, "{}", first.body);
    let again = send(
        &c.key,
        "k-1",
        &format!("{rules}?wait=all"),
        json_ct,
        &rule("198.51.100.1/32"),
    );
    assert_eq!(again.body["duplicate"], true, "{}", again.body);
    assert_eq!(again.body["index"], first.body["index"], "{}", again.body);

    // The same key on another body, another path or another method is refused by name, and
    // nothing of it is written.
    #[rustfmt::skip]
    let reused: [(&str, &str, Vec<u8>); 3] = [
        ("POST", rules, rule("198.51.100.2/32")),
        ("POST", "/v1/projects/shop/bot/sessions/revoke", j(json!({}))),
        ("PUT", "/v1/projects/shop/bot", j(json!({ "mode": "always_on" }))),
    ];
    for (method, path, body) in reused {
        let headers = [
            ("Authorization", format!("Bearer {}", c.key)),
            ("Idempotency-Key", "k-1".to_string()),
            ("Content-Type", json_ct.to_string()),
        ];
        let r = c.call(0, method, path, &headers, body).unwrap();
        assert_eq!(
            (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
            (422, Some("idempotency_key_reused"), Some("idempotency-key")),
            "{method} {path}: {}",
            r.body
        );
    }
    assert_eq!(listed(&c), ["198.51.100.1/32"]);
    let r = c.get(0, "/v1/projects/shop/bot").unwrap();
    assert_eq!(
        (r.body["mode"].as_str(), r.body["epoch"].as_u64()),
        (Some("automatic"), Some(0)),
        "{}",
        r.body
    );

    // Another API key has keys of its own: the same text from it is a new request.
    let theirs = send(&other, "k-1", rules, json_ct, &rule("198.51.100.3/32"));
    assert_eq!(
        (theirs.status, &theirs.body["duplicate"]),
        (201, &json!(false)),
        "{}",
        theirs.body
    );
    assert_eq!(listed(&c), ["198.51.100.1/32", "198.51.100.3/32"]);

    // An import is one request: repeated, it is applied once; the key on another body is
    // refused before any of that body is written.
    let import = "/v1/projects/shop/ip-rules/import?list=block";
    let body = b"203.0.113.1\n203.0.113.2\n";
    let r = send(&c.key, "imp", import, "text/plain", body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&c.key, "imp", import, "text/plain", body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        &c.key,
        "imp",
        import,
        "text/plain",
        b"203.0.113.1\n203.0.113.9\n",
    );
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (422, Some("idempotency-key")),
        "{}",
        r.body
    );
    assert_eq!(
        listed(&c),
        [
            "198.51.100.1/32",
            "198.51.100.3/32",
            "203.0.113.1/32",
            "203.0.113.2/32"
        ]
    );
}

#[test]
fn a_tenant_cannot_claim_another_tenants_names() {
    let c = TestCluster::start(bin(), 1, &[]).unwrap();
    for id in ["a", "b"] {
        project(&c, 0, id);
    }
    let (_, tenant_a) = make_key(&c, 0, &c.key, json!({ "role": "operator", "project": "a" }));
    let (_, operator) = make_key(&c, 0, &c.key, json!({ "role": "operator" }));
    let put = |key: &str, host: &str, project: &str| {
        let body = json!({ "project": project, "upstreams": ["192.0.2.1:80"] });
        call(&c, 0, "PUT", &format!("/v1/domains/{host}"), key, body)
    };
    for (host, project) in [("*.b.example", "b"), ("shop.c.example", "b")] {
        let r = put(&c.key, host, project);
        assert_eq!(r.status, 201, "{host}: {}", r.body);
    }

    // Who asks, what for, and what they are told: a tenant learns nothing about the other
    // project; an operator learns whose name it is; only an admin may take it, and says so.
    #[rustfmt::skip]
    let cases: [(&str, &str, &str, u16, &str); 10] = [
        (&tenant_a, "login.b.example", "a", 403, "overlaps a name of another project"),
        (&tenant_a, "*.c.example", "a", 403, "overlaps a name of another project"),
        (&operator, "login.b.example", "a", 403, "overlaps project b's *.b.example; an admin key may take it with ?claim=true"),
        (&operator, "login.b.example?claim=true", "a", 403, "overlaps project b's"),
        (&tenant_a, "login.b.example?claim=true", "a", 403, "overlaps a name of another project"),
        (&operator, "*.c.example", "a", 403, "overlaps project b's shop.c.example"),
        // Not covered: a wildcard covers one label, and the project's own names are its own.
        (&tenant_a, "deep.login.b.example", "a", 201, ""),
        (&tenant_a, "b.example", "a", 201, ""),
        (&c.key, "own.b.example", "b", 201, ""),
        (&c.key, "login.b.example?claim=true", "a", 201, ""),
    ];
    for (key, host, project, status, says) in cases {
        let r = put(key, host, project);
        assert_eq!(r.status, status, "{host} for {project}: {}", r.body);
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{host}: {}", r.body);
        if key == tenant_a {
            assert!(!message.contains("project b"), "{host}: {}", r.body);
        }
    }
    let r = c.get(0, "/v1/audit?action=domain.claim").unwrap();
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.body);
    assert!(
        items[0]["target"]
            .as_str()
            .unwrap()
            .contains("over project b's *.b.example"),
        "{}",
        r.body
    );
}

#[test]
fn outsiders_cannot_evict_the_audit_log() {
    let c = TestCluster::start(
        bin(),
        1,
        &[
            ("PALISADE_ADMIN_AUDIT_MAX_ENTRIES", "1000"),
            ("PALISADE_EDGE_RULE_SWEEP_INTERVAL_MS", "300"),
            // Every failure itemised: the most an outsider can make the log hold.
            ("PALISADE_ADMIN_FAILURE_AUDITS_PER_SECOND", "100000"),
        ],
    )
    .unwrap();
    let (id, _) = make_key(&c, 0, &c.key, json!({ "role": "viewer" }));
    let to: SocketAddr = c.nodes[0].admin_addr.parse().unwrap();

    // 5,001 bad keys, three from each of 1,667 loopback sources (three stay under the per-source
    // slow-down, so this is as fast as an outsider gets).
    let bad = format!("pal_{id}_{}", "0".repeat(43));
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let bad = &bad;
            s.spawn(move || {
                for i in (t..1667).step_by(4) {
                    let source = IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]);
                    for _ in 0..3 {
                        let (status, body) = get_from(source, to, "/v1/projects", bad);
                        assert_eq!(status, 401, "{body}");
                    }
                }
            });
        }
    });
    let outside = |c: &TestCluster| {
        let r = c.get(0, "/v1/audit?class=outside&limit=10000").unwrap();
        r.body["items"].as_array().unwrap().len()
    };
    wait::until(
        "the outside class to be pruned",
        Duration::from_secs(30),
        || outside(&c) <= 1000,
    )
    .unwrap();

    // The outside class overflowed and was pruned; the prune is recorded in the class it
    // pruned, so outside traffic adds nothing to the operator class, and the operator's change
    // is still there.
    let r = c.get(0, "/v1/audit?class=outside&limit=10000").unwrap();
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "audit.prune"
                && e["target"].as_str().unwrap().contains("outside class")),
        "{}",
        r.body
    );
    let r = c.get(0, "/v1/audit?class=operator&limit=10000").unwrap();
    let ours = r.body["items"].as_array().unwrap();
    assert!(
        !ours.iter().any(|e| e["action"] == "audit.prune"),
        "outside traffic wrote operator-class entries: {}",
        r.body
    );
    assert!(
        ours.iter()
            .any(|e| e["action"] == "key.create" && e["target"].as_str().unwrap().contains(&id)),
        "{}",
        r.body
    );
    assert!(ours.iter().all(|e| e.get("class").is_none()), "{}", r.body);
    // Both classes in one listing, in order, with working cursors.
    let r = c.get(0, "/v1/audit?limit=500").unwrap();
    let page: Vec<u64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page.len(), 500);
    assert!(page.windows(2).all(|w| w[0] < w[1]), "{page:?}");
    let next = r.body["next"].as_str().unwrap().to_string();
    let r = c
        .get(0, &format!("/v1/audit?limit=500&after={next}"))
        .unwrap();
    let first = r.body["items"][0]["seq"].as_u64().unwrap();
    assert!(first > *page.last().unwrap(), "{first} after {page:?}");
    let r = c.get(0, "/v1/audit?class=everyone").unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("class")),
        "{}",
        r.body
    );
}
