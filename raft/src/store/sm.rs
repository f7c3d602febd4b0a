//! The replicated state machine: applies committed commands into `sm_data` and tells
//! subscribers what changed.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::DB;
use tokio::sync::{broadcast, watch};

use super::apply::{apply_request, Txn};
use super::reader::StateReader;
use super::snapshot::{self, SnapshotBuilder, SnapshotFile};
use super::{decode, encode, io_err, CF_SM_META};
use crate::command::Response;
use crate::model::{Record, RecordKey};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub(crate) const KEY_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_SNAPSHOT: &[u8] = b"snapshot";
pub(crate) const KEY_INSTALLING: &[u8] = b"installing";

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
        let mut txn = Txn::new(&db);
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
        // Sent with no changes too: followers of the events (the edge view) learn that they
        // reflect everything up to this index, a blank leader entry or a refused write included.
        let _ = self.events.send(Arc::new(ChangeSet {
            index: last.index,
            changes,
        }));
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
