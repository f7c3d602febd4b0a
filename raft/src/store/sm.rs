//! The replicated state machine: applies committed commands into `sm_data` and tells
//! subscribers what changed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{WriteBatch, DB};
use tokio::sync::{broadcast, watch};

use super::reader::StateReader;
use super::snapshot::{self, SnapshotBuilder, SnapshotFile};
use super::{decode, encode, io_err, CF_SM_DATA, CF_SM_META};
use crate::command::{Command, Refusal, Request, Response};
use crate::model::{
    prefix, AuditEntry, CertStatus, JoinToken, Lease, Millis, RateWindow, Record, RecordKey,
};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub(crate) const KEY_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_SNAPSHOT: &[u8] = b"snapshot";
pub(crate) const KEY_INSTALLING: &[u8] = b"installing";

/// How long a request id is remembered for exactly-once retries.
const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Expired request ids dropped per applied request, so pruning keeps pace without bursts.
const DEDUP_PRUNE_PER_APPLY: usize = 8;
const FIRST_JOINED_NODE_ID: u64 = 2;

/// One change to the replicated state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(Record),
    Delete(RecordKey),
    /// The whole state was replaced (snapshot install): rebuild from a scan.
    Reset,
}

/// The changes applied by one batch of log entries, up to and including `index`.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub index: u64,
    pub changes: Vec<Change>,
}

pub struct StateMachine {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    applied_tx: watch::Sender<u64>,
    events: broadcast::Sender<Arc<ChangeSet>>,
}

impl StateMachine {
    pub(crate) fn open(db: Arc<DB>, snapshot_dir: PathBuf) -> io::Result<Self> {
        let (events, _) = broadcast::channel(4096);
        let (applied_tx, _) = watch::channel(0);
        let sm = StateMachine {
            db,
            snapshot_dir,
            applied_tx,
            events,
        };
        // A crash in the middle of a snapshot install left a marker: finish that install first.
        if let Some(v) = sm.db.get_cf(sm.cf_meta(), KEY_INSTALLING).map_err(io_err)? {
            let pending: snapshot::Pending = decode(&v)?;
            tracing::warn!(file = %pending.file.display(), "finishing an interrupted snapshot install");
            snapshot::install(&sm.db, &pending)?;
        }
        let applied: Option<LogId> = sm.get_meta(KEY_APPLIED)?.flatten();
        sm.applied_tx
            .send_replace(applied.map(|l| l.index).unwrap_or(0));
        Ok(sm)
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            db: self.db.clone(),
            applied: self.applied_tx.subscribe(),
            events: self.events.clone(),
        }
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_SM_META).expect("column family exists")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(self.cf_meta(), key).map_err(io_err)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }
}

/// The writes of one apply batch: reads see earlier writes of the same batch.
struct Txn<'a> {
    db: &'a DB,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    batch: WriteBatch,
    changes: Vec<Change>,
}

impl<'a> Txn<'a> {
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
}

fn refused(reason: Refusal) -> Response {
    Response::Refused { reason }
}

fn dedup_key(id: &str) -> Vec<u8> {
    format!("{}{id}", prefix::DEDUP).into_bytes()
}

fn dedup_time_key(at: Millis, id: &str) -> Vec<u8> {
    format!("{}t/{at:020}/{id}", prefix::DEDUP).into_bytes()
}

fn apply_request(txn: &mut Txn<'_>, index: u64, req: &Request) -> io::Result<Response> {
    if let Some(v) = txn.get_raw(&dedup_key(req.id.as_str()))? {
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
            txn.put_record(record.clone());
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
                txn.put_record(r.clone());
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
                let longer = match txn.get_record(&record.key())? {
                    Some(Record::Decision(old)) => old.until >= d.until,
                    _ => false,
                };
                if !longer {
                    txn.put_record(record);
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
        Command::PruneAudit {
            before,
            below_seq,
            limit,
        } => {
            let pfx = prefix::AUDIT.as_bytes();
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
                txn.delete_record(RecordKey::Audit { seq });
            }
            applied
        }
    })
}

/// Records that only their own commands may write. (The texts go into audit outcomes, which
/// every node must write alike: they do not change.)
fn not_puttable(r: &Record) -> Option<Refusal> {
    let rule = match r {
        Record::Lease(_) => "leases are written by lease commands only",
        Record::Audit(_) => "audit entries are written with the change they record",
        Record::JoinToken(_) => "join tokens are written by join-token commands only",
        Record::RateWindow(_) => "budgets are written by spend commands only",
        _ => return None,
    };
    Some(Refusal::OwnCommandsOnly { rule: rule.into() })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied: Option<LogId> = self.get_meta(KEY_APPLIED)?.flatten();
        let membership: StoredMembership = self.get_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let db = self.db.clone();
        let mut txn = Txn {
            db: &db,
            overlay: HashMap::new(),
            batch: WriteBatch::default(),
            changes: Vec::new(),
        };
        let mut replies = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::Internal,
                EntryPayload::Normal(req) => apply_request(&mut txn, entry.log_id.index, req)?,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    Response::Internal
                }
            };
            last = Some(entry.log_id);
            if let Some(r) = responder {
                replies.push((r, resp));
            }
        }
        let Some(last) = last else { return Ok(()) };
        let Txn {
            mut batch, changes, ..
        } = txn;
        let meta = self.cf_meta();
        batch.put_cf(meta, KEY_APPLIED, encode(&Some(last)));
        if let Some(m) = &membership {
            batch.put_cf(meta, KEY_MEMBERSHIP, encode(m));
        }
        // Not synced by itself: the log entries are durable, and the next synced write (a log
        // append or a snapshot) makes this one durable too, as they share one WAL.
        self.db.write(batch).map_err(io_err)?;
        for (r, resp) in replies {
            r.send(resp);
        }
        self.applied_tx.send_replace(last.index);
        if !changes.is_empty() {
            let _ = self.events.send(Arc::new(ChangeSet {
                index: last.index,
                changes,
            }));
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone(), self.snapshot_dir.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let pending = snapshot::Pending::stage(&self.snapshot_dir, meta, &snapshot)?;
        self.db
            .put_cf_opt(
                self.cf_meta(),
                KEY_INSTALLING,
                encode(&pending),
                &snapshot::synced(),
            )
            .map_err(io_err)?;
        snapshot::install(&self.db, &pending)?;
        let index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        self.applied_tx.send_replace(index);
        let _ = self.events.send(Arc::new(ChangeSet {
            index,
            changes: vec![Change::Reset],
        }));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>> {
        snapshot::current(&self.db, &self.snapshot_dir)
    }
}
