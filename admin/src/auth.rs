//! API keys: `pal_{id}_{secret}` where `id` names the stored record and `secret` carries 256 bits
//! of randomness. Only the SHA-256 of the whole key is stored; it is shown once, at creation.

use base64::Engine;
use palisade_raft::crypto::{fill_random, sha256_hex};
use palisade_raft::ids::ProjectId;
use palisade_raft::model::{ApiKey, Millis, Record, RecordKey, Role};
use palisade_raft::store::StateReader;

pub const KEY_PREFIX: &str = "pal_";

/// A newly made key: the record to store and the secret to show once.
pub struct NewKey {
    pub record: ApiKey,
    pub secret: String,
}

pub fn new_key(role: Role, description: &str, now: Millis) -> NewKey {
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
        role,
        project: None,
        created_at: now,
        expires_at: None,
        revoked: false,
        description: description.to_string(),
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or malformed API key")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("this key's role does not allow that")]
    Forbidden,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check `key` against the stored records and the role it needs.
pub fn authenticate(
    reader: &StateReader,
    key: &str,
    needs: Role,
    now: Millis,
) -> Result<Principal, AuthError> {
    let rest = key.strip_prefix(KEY_PREFIX).ok_or(AuthError::Missing)?;
    let (id, _) = rest.split_once('_').ok_or(AuthError::Missing)?;
    let id = id.parse().map_err(|_| AuthError::Missing)?;
    let record = match reader.get(&RecordKey::ApiKey { id }) {
        Ok(Some(Record::ApiKey(k))) => k,
        _ => return Err(AuthError::Invalid),
    };
    let presented = sha256_hex(key.as_bytes());
    if !constant_time_eq(presented.as_bytes(), record.hash.as_bytes()) {
        return Err(AuthError::Invalid);
    }
    if record.revoked || record.expires_at.is_some_and(|t| t <= now) {
        return Err(AuthError::Invalid);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_256_bits_and_store_only_a_hash() {
        let k = new_key(Role::Owner, "first", 0);
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
    }
}
