//! API keys: `pal_{id}_{secret}` where `id` names the stored record and `secret` carries 256 bits
//! of randomness. Only the SHA-256 of the whole key is stored; it is shown once, at creation.

use base64::Engine;
use palisade_raft::crypto::{fill_random, sha256_hex};
use palisade_raft::ids::ProjectId;
use palisade_raft::model::{ApiKey, Millis, Record, RecordKey, Role};
use palisade_raft::store::StateReader;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const KEY_PREFIX: &str = "pal_";

/// What a new key may do, and for how long.
pub struct KeySpec<'a> {
    pub role: Role,
    pub project: Option<ProjectId>,
    pub expires_at: Option<Millis>,
    pub description: &'a str,
    pub created_by: &'a str,
}

/// A newly made key: the record to store and the secret to show once.
pub struct NewKey {
    pub record: ApiKey,
    pub secret: String,
}

pub fn new_key(spec: KeySpec<'_>, now: Millis) -> NewKey {
    let mut id = [0u8; 6];
    fill_random(&mut id);
    let id = hex::encode(id);
    let mut secret = [0u8; 32];
    fill_random(&mut secret);
    let key = format!(
        "{KEY_PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let record = ApiKey {
        id: id.parse().expect("hex id is a valid name"),
        prefix: key[..KEY_PREFIX.len() + id.len()].to_string(),
        hash: sha256_hex(key.as_bytes()),
        role: spec.role,
        project: spec.project,
        created_at: now,
        expires_at: spec.expires_at,
        revoked: false,
        description: spec.description.to_string(),
        last_used_at: None,
        created_by: spec.created_by.to_string(),
    };
    NewKey {
        record,
        secret: key,
    }
}

/// Who is calling, once their key checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    /// The one project a scoped key may touch.
    pub project: Option<ProjectId>,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("key:{} ({})", self.key_id, self.role.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or malformed API key")]
    Missing,
    /// No key with this id on this node (yet: it may have been made a moment ago elsewhere).
    #[error("invalid API key")]
    Unknown,
    #[error("invalid API key")]
    Invalid,
    #[error("this key has expired")]
    Expired,
    #[error("this key has been revoked")]
    Revoked,
    #[error("this key's role does not allow that")]
    Forbidden,
}

impl AuthError {
    /// A failure to prove who is calling (401), as opposed to a refusal of what they asked (403).
    pub fn is_authentication(&self) -> bool {
        !matches!(self, AuthError::Forbidden)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key id a presented key names, for the audit log of a failed attempt (never the secret).
pub fn claimed_id(key: &str) -> Option<&str> {
    let (id, _) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Check `key` against the stored records and the role it needs.
pub fn authenticate(
    reader: &StateReader,
    key: &str,
    needs: Role,
    now: Millis,
) -> Result<Principal, AuthError> {
    let id = claimed_id(key).ok_or(AuthError::Missing)?;
    let id = id.parse().map_err(|_| AuthError::Missing)?;
    let record = match reader.get(&RecordKey::ApiKey { id }) {
        Ok(Some(Record::ApiKey(k))) => k,
        _ => return Err(AuthError::Unknown),
    };
    let presented = sha256_hex(key.as_bytes());
    if !constant_time_eq(presented.as_bytes(), record.hash.as_bytes()) {
        return Err(AuthError::Invalid);
    }
    if record.revoked {
        return Err(AuthError::Revoked);
    }
    if record.expires_at.is_some_and(|t| t <= now) {
        return Err(AuthError::Expired);
    }
    if record.role < needs {
        return Err(AuthError::Forbidden);
    }
    Ok(Principal {
        key_id: record.id.to_string(),
        role: record.role,
        project: record.project,
    })
}

/// Failed authentications by source address, to slow a guesser down.
///
/// Each source's failures are counted in a ten-minute window; from the fourth on, the answer
/// waits 250 ms, doubling per failure up to 8 s. A success does not reset the count (a guesser
/// holding one valid key must not get a free pass for guessing others). The table is bounded:
/// when it is full, windows that have ended are dropped, and then the oldest.
pub struct FailureTracker {
    by_source: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(600);
const FREE_FAILURES: u32 = 3;
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);
const MAX_SOURCES: usize = 65_536;

impl Default for FailureTracker {
    fn default() -> Self {
        FailureTracker {
            by_source: Mutex::new(HashMap::new()),
        }
    }
}

impl FailureTracker {
    /// Count a failure from `ip`; how long to hold the answer back.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.by_source.lock().expect("failure table lock");
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            map.retain(|_, (_, start)| now.duration_since(*start) < FAILURE_WINDOW);
            if map.len() >= MAX_SOURCES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        delay_after(entry.0)
    }
}

fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(10);
    (Duration::from_millis(250) * (1 << doublings)).min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_256_bits_and_store_only_a_hash() {
        let k = new_key(
            KeySpec {
                role: Role::Owner,
                project: None,
                expires_at: None,
                description: "first",
                created_by: "init",
            },
            0,
        );
        assert!(k.secret.starts_with("pal_"));
        let (_id, secret_part) = k
            .secret
            .strip_prefix(KEY_PREFIX)
            .unwrap()
            .split_once('_')
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret_part)
                .unwrap()
                .len(),
            32
        );
        assert_ne!(k.record.hash, k.secret);
        assert!(!serde_json::to_string(&k.record)
            .unwrap()
            .contains(secret_part));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
        assert_eq!(claimed_id(&k.secret), Some(k.record.id.as_str()));
        assert_eq!(claimed_id("pal_zz_secret"), None);
    }

    #[test]
    fn failures_are_free_three_times_then_double_up_to_a_cap() {
        let got: Vec<u64> = (1..=10)
            .map(|n| delay_after(n).as_millis() as u64)
            .collect();
        assert_eq!(got, [0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 8000]);
        let t = FailureTracker::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..4 {
            t.fail(a);
        }
        assert_eq!(t.fail(a), Duration::from_millis(500));
        assert_eq!(t.fail(b), Duration::ZERO, "counts are per source");
    }
}
