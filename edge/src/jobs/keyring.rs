//! The rotation of bot protection's replicated keyring, the keys that sign clearance cookies.
//!
//! There is always one `active` key (signs new cookies) and one `next` key, replicated before it
//! becomes active so that every node can verify its cookies the moment it is used. At each
//! rotation (`bot.key_rotation_seconds`, a day by default) `next` becomes `active`, the old active
//! key becomes `verify_only` until every cookie it signed has expired (the longest session of any
//! project), and a new `next` is made. Expired verify-only keys are deleted. The leader does this
//! under the lease `bot-keyring`, each write fenced by its token, and records each change in the
//! audit log (`botkey.create`, `botkey.rotate`, `botkey.expire`, actor `node:{id}`). Secrets are
//! sealed with the master key.

use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::Cluster;
use palisade_raft::command::Command;
use palisade_raft::ids::Name;
use palisade_raft::model::{
    prefix, AuditEntry, BotKey, BotKeyState, ClusterSettings, Millis, Record, RecordKey,
};
use palisade_raft::now_ms;
use palisade_raft::task::{every, Shutdown};

/// Verify-only keys live at least this long (the default session).
const MIN_VERIFY_MS: u64 = 30 * 60_000;
/// The lease the leader takes to change the keyring.
const LEASE: &str = "bot-keyring";
const LEASE_TTL: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);

/// One change of the keyring: records to write, keys to delete, and what it was.
#[derive(Debug, PartialEq)]
pub struct KeyringChange {
    pub put: Vec<BotKey>,
    pub delete: Vec<Name>,
    pub action: &'static str,
    pub target: String,
}

/// A new key, secret sealed under its record key.
fn new_key(
    cluster_master: &palisade_raft::crypto::MasterKey,
    state: BotKeyState,
    not_after: Millis,
) -> BotKey {
    let mut id = [0u8; 8];
    palisade_raft::crypto::fill_random(&mut id);
    let kid: Name = hex::encode(id).parse().expect("hex is a valid name");
    let mut secret = [0u8; 32];
    palisade_raft::crypto::fill_random(&mut secret);
    let sealed = cluster_master.seal(&secret, &RecordKey::BotKey { kid: kid.clone() }.encode());
    BotKey {
        kid,
        secret: sealed,
        state,
        not_after,
    }
}

/// What the keyring needs at `now`, or `None` when it is right. For `active` keys `not_after`
/// is when they rotate; for `verify_only` keys, when they stop verifying. Shortening the
/// rotation period rotates at once.
pub fn plan(
    keys: &[BotKey],
    now: Millis,
    rotate_ms: u64,
    verify_ms: u64,
    master: &palisade_raft::crypto::MasterKey,
) -> Option<KeyringChange> {
    let expired: Vec<Name> = keys
        .iter()
        .filter(|k| k.state == BotKeyState::VerifyOnly && k.not_after <= now)
        .map(|k| k.kid.clone())
        .collect();
    if !expired.is_empty() {
        return Some(KeyringChange {
            target: format!("botkey/{}", join(&expired)),
            put: Vec::new(),
            delete: expired,
            action: "botkey.expire",
        });
    }
    let active = keys
        .iter()
        .filter(|k| k.state == BotKeyState::Active)
        .max_by_key(|k| k.not_after);
    let next = keys.iter().find(|k| k.state == BotKeyState::Next);
    match (active, next) {
        (None, next) => {
            // A new cluster (or a lost active key): the next key, if any, steps up at once.
            let mut put = Vec::new();
            let active = match next {
                Some(n) => BotKey {
                    state: BotKeyState::Active,
                    not_after: now + rotate_ms,
                    ..n.clone()
                },
                None => new_key(master, BotKeyState::Active, now + rotate_ms),
            };
            put.push(active.clone());
            put.push(new_key(master, BotKeyState::Next, 0));
            Some(KeyringChange {
                target: format!("botkey/{}", active.kid),
                put,
                delete: Vec::new(),
                action: "botkey.create",
            })
        }
        // Due, or due later than the rotation setting now allows (it was shortened): rotate.
        (Some(a), Some(n)) if a.not_after <= now || a.not_after > now + rotate_ms => {
            let retired = BotKey {
                state: BotKeyState::VerifyOnly,
                not_after: now + verify_ms,
                ..a.clone()
            };
            let promoted = BotKey {
                state: BotKeyState::Active,
                not_after: now + rotate_ms,
                ..n.clone()
            };
            Some(KeyringChange {
                target: format!("botkey/{} -> botkey/{}", a.kid, n.kid),
                put: vec![retired, promoted, new_key(master, BotKeyState::Next, 0)],
                delete: Vec::new(),
                action: "botkey.rotate",
            })
        }
        (Some(a), None) => {
            let next = new_key(master, BotKeyState::Next, 0);
            Some(KeyringChange {
                target: format!("botkey/{} (next after {})", next.kid, a.kid),
                put: vec![next],
                delete: Vec::new(),
                action: "botkey.create",
            })
        }
        (Some(_), Some(_)) => None,
    }
}

fn join(kids: &[Name]) -> String {
    kids.iter().map(Name::as_str).collect::<Vec<_>>().join(",")
}

/// Keep the keyring right while this node leads, until `shutdown`.
pub async fn run(cluster: Arc<Cluster>, shutdown: Shutdown) {
    every(TICK, &shutdown, "bot keyring", || async {
        match cluster.is_leader() {
            true => pass(&cluster).await,
            false => Ok(()),
        }
    })
    .await
}

async fn pass(cluster: &Arc<Cluster>) -> Result<(), String> {
    if planned(cluster)?.is_none() {
        return Ok(());
    }
    let Some(lease) = cluster
        .take_lease(LEASE.parse().expect("a valid name"), LEASE_TTL)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    // Another node (a leader before this one) may have changed the keyring just before the
    // grant: plan again from the state as of the grant, never from an older read.
    cluster.reader.wait_applied(lease.token()).await;
    let Some(change) = planned(cluster)? else {
        lease.release().await;
        return Ok(());
    };
    let mut records: Vec<Record> = change.put.into_iter().map(Record::BotKey).collect();
    let deletes: Vec<RecordKey> = change
        .delete
        .into_iter()
        .map(|kid| RecordKey::BotKey { kid })
        .collect();
    let command = if deletes.is_empty() {
        Command::PutMany {
            records: std::mem::take(&mut records),
        }
    } else {
        Command::DeleteMany { keys: deletes }
    };
    let audit = AuditEntry::by_node(cluster.node_id, change.action, change.target, "ok");
    let written = lease.write(command, Some(audit)).await;
    lease.release().await;
    written.map_err(|e| e.to_string())?;
    tracing::info!(action = change.action, "bot keyring changed");
    Ok(())
}

/// What the keyring needs now, from this node's applied state.
fn planned(cluster: &Cluster) -> Result<Option<KeyringChange>, String> {
    let now = now_ms();
    let reader = &cluster.reader;
    let mut keys = Vec::new();
    let mut longest_session_ms = MIN_VERIFY_MS;
    reader
        .for_each(prefix::BOTKEY, |r| {
            if let Record::BotKey(k) = r {
                keys.push(k)
            }
        })
        .map_err(|e| e.to_string())?;
    reader
        .for_each(prefix::PROJECT, |r| {
            if let Record::Project(p) = r {
                longest_session_ms = longest_session_ms.max(p.bot.longest_session_ms());
            }
        })
        .map_err(|e| e.to_string())?;
    let settings = match reader.get(&RecordKey::Settings) {
        Ok(Some(Record::Settings(s))) => s,
        _ => ClusterSettings::default(),
    };
    let rotate_ms = settings.bot_key_rotation().as_millis() as u64;
    // A verify-only key must outlive every cookie it signed, and a cookie lives at most one
    // session (plus a minute of clock skew between nodes).
    let verify_ms = longest_session_ms + 60_000;
    Ok(plan(&keys, now, rotate_ms, verify_ms, cluster.master_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_raft::crypto::MasterKey;

    fn apply(keys: &mut Vec<BotKey>, c: KeyringChange) {
        keys.retain(|k| !c.delete.contains(&k.kid) && !c.put.iter().any(|p| p.kid == k.kid));
        keys.extend(c.put);
    }

    fn state_of(keys: &[BotKey], s: BotKeyState) -> Vec<Name> {
        keys.iter()
            .filter(|k| k.state == s)
            .map(|k| k.kid.clone())
            .collect()
    }

    #[test]
    fn the_next_key_exists_before_it_signs_and_old_keys_verify_until_their_cookies_expire() {
        let master = MasterKey::generate();
        let (rotate, verify) = (1000, 5000);
        let mut keys = Vec::new();
        let c = plan(&keys, 0, rotate, verify, &master).unwrap();
        assert_eq!(c.action, "botkey.create");
        apply(&mut keys, c);
        assert!(
            plan(&keys, 500, rotate, verify, &master).is_none(),
            "settled"
        );
        let first = state_of(&keys, BotKeyState::Active);
        let next = state_of(&keys, BotKeyState::Next);
        assert_eq!((first.len(), next.len()), (1, 1));

        let c = plan(&keys, 1000, rotate, verify, &master).unwrap();
        assert_eq!(c.action, "botkey.rotate");
        apply(&mut keys, c);
        assert_eq!(
            state_of(&keys, BotKeyState::Active),
            next,
            "the replicated next key signs"
        );
        assert_eq!(state_of(&keys, BotKeyState::VerifyOnly), first);
        assert_eq!(state_of(&keys, BotKeyState::Next).len(), 1);

        // Rotations go on; the first key is dropped once its cookies are all expired.
        let mut now = 2000;
        while now <= 6000 {
            if let Some(c) = plan(&keys, now, rotate, verify, &master) {
                apply(&mut keys, c);
            }
            now += 500;
        }
        assert!(
            !keys.iter().any(|k| k.kid == first[0]),
            "expired verify-only key deleted"
        );
        assert_eq!(state_of(&keys, BotKeyState::Active).len(), 1);
        assert_eq!(state_of(&keys, BotKeyState::Next).len(), 1);
        assert!(
            keys.len() <= 2 + (verify / rotate) as usize + 1,
            "{} keys",
            keys.len()
        );

        // A shorter period than the active key's rotation time: rotate now.
        let active = state_of(&keys, BotKeyState::Active);
        let c = plan(&keys, now, 100, verify, &master).unwrap();
        assert_eq!(c.action, "botkey.rotate");
        apply(&mut keys, c);
        assert_eq!(
            state_of(&keys, BotKeyState::VerifyOnly).last(),
            active.last()
        );
    }

    #[test]
    fn secrets_are_sealed_to_their_record() {
        let master = MasterKey::generate();
        let k = new_key(&master, BotKeyState::Next, 0);
        let ctx = RecordKey::BotKey { kid: k.kid.clone() }.encode();
        assert_eq!(master.open(&k.secret, &ctx).unwrap().len(), 32);
        assert!(master.open(&k.secret, "botkey/other").is_err());
    }
}
