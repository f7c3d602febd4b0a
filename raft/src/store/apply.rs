//! What one committed request does to the store: the request id's exactly-once check (and its
//! fingerprint, for ids a client chose), each command's effect, and the rules every record
//! written obeys. All of it runs inside one [`Txn`], the writes of one apply batch.

use std::collections::HashMap;
use std::io;

use rocksdb::{WriteBatch, DB};

use super::sm::Change;
use super::{decode, encode, io_err, CF_SM_DATA};
use crate::command::{Command, Refusal, Request, Response, OWN_COMMANDS_ONLY};
use crate::model::{
    prefix, AuditEntry, CertStatus, Decision, JoinToken, Lease, Millis, RateWindow, Record,
    RecordKey,
};

/// How long a request id is remembered for exactly-once retries.
const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Expired request ids dropped per applied request, so pruning keeps pace without bursts.
const DEDUP_PRUNE_PER_APPLY: usize = 8;
const FIRST_JOINED_NODE_ID: u64 = 2;

/// The writes of one apply batch: reads see earlier writes of the same batch.
pub(super) struct Txn<'a> {
    db: &'a DB,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    pub(super) batch: WriteBatch,
    pub(super) changes: Vec<Change>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(db: &'a DB) -> Self {
        Txn {
            db,
            overlay: HashMap::new(),
            batch: WriteBatch::default(),
            changes: Vec::new(),
        }
    }

    fn cf(&self) -> &'a rocksdb::ColumnFamily {
        self.db.cf_handle(CF_SM_DATA).expect("column family exists")
    }

    fn get_raw(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.db.get_cf(self.cf(), key).map_err(io_err)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        self.get_raw(key.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put_cf(self.cf(), &key, &value);
        self.overlay.insert(key, Some(value));
    }

    fn delete_raw(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(self.cf(), &key);
        self.overlay.insert(key, None);
    }

    fn put_record(&mut self, record: Record) {
        self.put_raw(record.key().encode().into_bytes(), encode(&record));
        self.changes.push(Change::Put(record));
    }

    fn delete_record(&mut self, key: RecordKey) {
        self.delete_raw(key.encode().into_bytes());
        self.changes.push(Change::Delete(key));
    }

    fn get_record(&self, key: &RecordKey) -> io::Result<Option<Record>> {
        self.get(&key.encode())
    }

    /// Every record under `pfx` as this batch sees it (earlier writes of the batch included).
    fn scan(&self, pfx: &str) -> io::Result<Vec<Record>> {
        let mut found: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
            std::collections::BTreeMap::new();
        let it = self.db.iterator_cf(
            self.cf(),
            rocksdb::IteratorMode::From(pfx.as_bytes(), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            if !k.starts_with(pfx.as_bytes()) {
                break;
            }
            found.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in &self.overlay {
            if k.starts_with(pfx.as_bytes()) {
                match v {
                    Some(v) => found.insert(k.clone(), v.clone()),
                    None => found.remove(k),
                };
            }
        }
        found.values().map(|v| decode(v)).collect()
    }
}

fn refused(reason: Refusal) -> Response {
    Response::Refused { reason }
}

fn dedup_key(id: &str) -> Vec<u8> {
    format!("{}{id}", prefix::DEDUP).into_bytes()
}

fn fingerprint_key(id: &str) -> Vec<u8> {
    format!("{}{id}", prefix::FINGERPRINT).into_bytes()
}

fn dedup_time_key(at: Millis, id: &str) -> Vec<u8> {
    format!("{}t/{at:020}/{id}", prefix::DEDUP).into_bytes()
}

pub(super) fn apply_request(txn: &mut Txn<'_>, index: u64, req: &Request) -> io::Result<Response> {
    if let Some(v) = txn.get_raw(&dedup_key(req.id.as_str()))? {
        // A retry answers with the first outcome; a different request under the same id (a
        // client's idempotency key reused) is refused and changes nothing.
        if let Some(fingerprint) = &req.fingerprint {
            let first = txn.get_raw(&fingerprint_key(req.id.as_str()))?;
            if first.is_some_and(|f| f != fingerprint.as_bytes()) {
                return Ok(refused(Refusal::IdempotencyReused));
            }
        }
        let (_at, resp): (Millis, Response) = decode(&v)?;
        return Ok(resp.as_duplicate());
    }
    let resp = apply_command(txn, index, req.at, &req.command)?;
    if let Some(audit) = &req.audit {
        let outcome = match &resp {
            Response::Refused { reason } => format!("refused: {reason}"),
            _ => audit.outcome.clone(),
        };
        txn.put_record(Record::Audit(AuditEntry {
            seq: index,
            outcome,
            ..audit.clone()
        }));
    }
    txn.put_raw(dedup_key(req.id.as_str()), encode(&(req.at, &resp)));
    if let Some(fingerprint) = &req.fingerprint {
        txn.put_raw(
            fingerprint_key(req.id.as_str()),
            fingerprint.as_bytes().to_vec(),
        );
    }
    txn.put_raw(dedup_time_key(req.at, req.id.as_str()), Vec::new());
    prune_dedup(txn, req.at.saturating_sub(DEDUP_WINDOW_MS))?;
    Ok(resp)
}

fn prune_dedup(txn: &mut Txn<'_>, before: Millis) -> io::Result<()> {
    let start = format!("{}t/", prefix::DEDUP);
    let end = dedup_time_key(before, "");
    let mut doomed = Vec::new();
    let it = txn.db.iterator_cf(
        txn.cf(),
        rocksdb::IteratorMode::From(start.as_bytes(), rocksdb::Direction::Forward),
    );
    for item in it.take(DEDUP_PRUNE_PER_APPLY) {
        let (k, _) = item.map_err(io_err)?;
        if k.as_ref() >= end.as_slice() || !k.starts_with(start.as_bytes()) {
            break;
        }
        doomed.push(k.to_vec());
    }
    for k in doomed {
        let id = String::from_utf8_lossy(&k[start.len() + 21..]).into_owned();
        txn.delete_raw(dedup_key(&id));
        txn.delete_raw(fingerprint_key(&id));
        txn.delete_raw(k);
    }
    Ok(())
}

fn apply_command(txn: &mut Txn<'_>, index: u64, at: Millis, cmd: &Command) -> io::Result<Response> {
    let applied = Response::Applied {
        index,
        duplicate: false,
    };
    Ok(match cmd {
        Command::Put { record } => {
            if let Some(why) = not_puttable(record) {
                return Ok(refused(why));
            }
            let record = kept_monotonic(txn, record.clone())?;
            txn.put_record(record);
            applied
        }
        Command::Delete { key } => {
            txn.delete_record(key.clone());
            applied
        }
        Command::PutMany { records } => {
            if let Some(why) = records.iter().find_map(not_puttable) {
                return Ok(refused(why));
            }
            for r in records {
                let r = kept_monotonic(txn, r.clone())?;
                txn.put_record(r);
            }
            applied
        }
        Command::DeleteMany { keys } => {
            for k in keys {
                txn.delete_record(k.clone());
            }
            applied
        }
        Command::DeleteExpired { keys, at } => {
            for k in keys {
                let expires_at = match txn.get_record(k)? {
                    Some(Record::IpRule(r)) => r.expires_at,
                    Some(Record::Decision(d)) => Some(d.until),
                    _ => None,
                };
                if expires_at.is_some_and(|e| e <= *at) {
                    txn.delete_record(k.clone());
                }
            }
            applied
        }
        Command::Decide { decisions } => {
            for d in decisions {
                let record = Record::Decision(d.clone());
                match txn.get_record(&record.key())? {
                    // A longer decision stays, but a newer one's `since` still reaches it, so
                    // that a clearance earned before the newer decision no longer passes.
                    Some(Record::Decision(old)) if old.until >= d.until => {
                        if d.since > old.since {
                            txn.put_record(Record::Decision(Decision {
                                since: d.since,
                                ..old
                            }));
                        }
                    }
                    _ => txn.put_record(record),
                }
            }
            applied
        }
        Command::TouchKeys { used } => {
            for (id, when) in used {
                let key = RecordKey::ApiKey { id: id.clone() };
                if let Some(Record::ApiKey(mut k)) = txn.get_record(&key)? {
                    if k.last_used_at.is_none_or(|t| t < *when) {
                        k.last_used_at = Some(*when);
                        txn.put_record(Record::ApiKey(k));
                    }
                }
            }
            applied
        }
        Command::Create { record } => {
            if let Some(why) = not_puttable(record) {
                return Ok(refused(why));
            }
            let key = record.key();
            if txn.get_record(&key)?.is_some() {
                return Ok(refused(Refusal::Exists { key: key.encode() }));
            }
            txn.put_record(record.clone());
            applied
        }
        Command::Spend {
            name,
            window_ms,
            limit,
        } => {
            let key = RecordKey::RateWindow { name: name.clone() };
            let mut stamps = match txn.get_record(&key)? {
                Some(Record::RateWindow(w)) => w.stamps,
                _ => Vec::new(),
            };
            let since = at.saturating_sub(*window_ms);
            stamps.retain(|&t| t > since);
            if stamps.len() >= *limit as usize {
                let free_at = stamps.iter().min().map_or(at, |t| t + window_ms);
                return Ok(refused(Refusal::BudgetSpent {
                    name: name.clone(),
                    limit: *limit,
                    window_ms: *window_ms,
                    free_at,
                }));
            }
            stamps.push(at);
            txn.put_record(Record::RateWindow(RateWindow {
                name: name.clone(),
                stamps,
            }));
            applied
        }
        Command::RequestRenewal { host } => {
            let key = RecordKey::CertStatus { host: host.clone() };
            let mut status = match txn.get_record(&key)? {
                Some(Record::CertStatus(s)) => s,
                _ => CertStatus::new(host.clone(), at),
            };
            status.renew_requested_at = Some(at);
            status.next_attempt_at = at;
            txn.put_record(Record::CertStatus(status));
            applied
        }
        Command::AcquireLease {
            name,
            holder,
            ttl_ms,
        } => {
            let key = RecordKey::Lease { name: name.clone() };
            let current = match txn.get_record(&key)? {
                Some(Record::Lease(l)) => Some(l),
                _ => None,
            };
            let lease = match current {
                Some(l) if l.expires_at > at && l.holder != *holder => {
                    return Ok(Response::LeaseHeld {
                        holder: l.holder,
                        expires_at: l.expires_at,
                    });
                }
                // The holder renews: same token, later expiry.
                Some(l) if l.expires_at > at => Lease {
                    expires_at: at + ttl_ms,
                    ..l
                },
                _ => Lease {
                    name: name.clone(),
                    holder: *holder,
                    token: index,
                    expires_at: at + ttl_ms,
                },
            };
            txn.put_record(Record::Lease(lease.clone()));
            Response::LeaseGranted {
                lease,
                duplicate: false,
            }
        }
        Command::ReleaseLease { name, token } => {
            let key = RecordKey::Lease { name: name.clone() };
            match txn.get_record(&key)? {
                Some(Record::Lease(l)) if l.token == *token => {
                    txn.delete_record(key);
                    applied
                }
                _ => refused(Refusal::LeaseNotHeld {
                    lease: name.clone(),
                    token: *token,
                }),
            }
        }
        Command::Fenced {
            lease,
            token,
            command,
        } => {
            match txn.get_record(&RecordKey::Lease {
                name: lease.clone(),
            })? {
                Some(Record::Lease(l)) if l.token == *token && l.expires_at > at => {
                    apply_command(txn, index, at, command)?
                }
                _ => refused(Refusal::StaleFence {
                    lease: lease.clone(),
                    token: *token,
                }),
            }
        }
        Command::CreateJoinToken {
            hash,
            expires_ms,
            created_by,
        } => {
            txn.put_record(Record::JoinToken(JoinToken {
                hash: hash.clone(),
                expires_at: *expires_ms,
                created_by: created_by.clone(),
            }));
            applied
        }
        Command::ConsumeJoinToken { hash } => {
            let key = RecordKey::JoinToken { hash: hash.clone() };
            match txn.get_record(&key)? {
                Some(Record::JoinToken(t)) if t.expires_at > at => {
                    txn.delete_record(key);
                    let counter = format!("{}next_node_id", prefix::COUNTER);
                    let node_id: u64 = txn.get(&counter)?.unwrap_or(FIRST_JOINED_NODE_ID);
                    txn.put_raw(counter.into_bytes(), encode(&(node_id + 1)));
                    Response::NodeIdAllocated {
                        node_id,
                        duplicate: false,
                    }
                }
                Some(_) => refused(Refusal::JoinTokenExpired),
                None => refused(Refusal::JoinTokenUnknown),
            }
        }
        Command::AuditOnly => applied,
        Command::DeleteProject { id } => {
            for r in txn.scan(prefix::APIKEY)? {
                if let Record::ApiKey(mut k) = r {
                    if k.project.as_ref() == Some(id) && !k.revoked {
                        k.revoked = true;
                        txn.put_record(Record::ApiKey(k));
                    }
                }
            }
            for r in txn.scan(&format!("{}{id}/", prefix::DECISION))? {
                txn.delete_record(r.key());
            }
            txn.delete_record(RecordKey::Project { id: id.clone() });
            applied
        }
        Command::PruneAudit {
            before,
            below_seq,
            limit,
            class,
        } => {
            let pfx = class.prefix().as_bytes();
            let it = txn.db.iterator_cf(
                txn.cf(),
                rocksdb::IteratorMode::From(pfx, rocksdb::Direction::Forward),
            );
            let mut doomed = Vec::new();
            for item in it.take(*limit as usize) {
                let (k, v) = item.map_err(io_err)?;
                if !k.starts_with(pfx) {
                    break;
                }
                match decode::<Record>(&v)? {
                    Record::Audit(a) if a.at < *before || a.seq < *below_seq => doomed.push(a.seq),
                    _ => break,
                }
            }
            for seq in doomed {
                txn.delete_record(class.key(seq));
            }
            applied
        }
    })
}

/// What may only grow keeps growing, whoever writes the record: a project's bot-protection
/// epoch (revoking every clearance bumps it; a policy written from an older read, or racing the
/// revocation, must not bring revoked cookies back).
fn kept_monotonic(txn: &Txn<'_>, record: Record) -> io::Result<Record> {
    Ok(match record {
        Record::Project(mut p) => {
            if let Some(Record::Project(old)) =
                txn.get_record(&RecordKey::Project { id: p.id.clone() })?
            {
                p.bot.epoch = p.bot.epoch.max(old.bot.epoch);
            }
            Record::Project(p)
        }
        other => other,
    })
}

/// Records that only their own commands may write. (The texts go into audit outcomes, which
/// every node must write alike: they do not change.)
fn not_puttable(r: &Record) -> Option<Refusal> {
    let rule = match r {
        Record::Lease(_) => OWN_COMMANDS_ONLY[0],
        Record::Audit(_) => OWN_COMMANDS_ONLY[1],
        Record::JoinToken(_) => OWN_COMMANDS_ONLY[2],
        Record::RateWindow(_) => OWN_COMMANDS_ONLY[3],
        _ => return None,
    };
    Some(Refusal::OwnCommandsOnly { rule: rule.into() })
}
