//! Read access to the locally applied state, shared by every task of the node.
//!
//! Reads go straight to RocksDB (thread-safe, no lock of ours): the data plane reads what this
//! node has applied and keeps serving through partitions.

use std::io;
use std::sync::Arc;

use rocksdb::DB;
use tokio::sync::{broadcast, watch};

use super::sm::ChangeSet;
use super::{decode, io_err, CF_SM_DATA};
use crate::model::{Record, RecordKey};

#[derive(Clone)]
pub struct StateReader {
    pub(crate) db: Arc<DB>,
    pub(crate) applied: watch::Receiver<u64>,
    pub(crate) events: broadcast::Sender<Arc<ChangeSet>>,
}

impl StateReader {
    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_SM_DATA).expect("column family exists")
    }

    pub fn get(&self, key: &RecordKey) -> io::Result<Option<Record>> {
        match self
            .db
            .get_pinned_cf(self.cf(), key.encode())
            .map_err(io_err)?
        {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Records whose key starts with `prefix` (see [`crate::model::prefix`]), in key order,
    /// starting after `after` when given, at most `limit`.
    pub fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> io::Result<Vec<Record>> {
        let start = after
            .map(|a| format!("{a}\0"))
            .unwrap_or_else(|| prefix.to_string());
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(),
            rocksdb::IteratorMode::From(start.as_bytes(), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    /// Visit every record under `prefix` in key order without collecting them (start-up loads
    /// of large lists).
    pub fn for_each(&self, prefix: &str, mut f: impl FnMut(Record)) -> io::Result<()> {
        self.each_value(prefix, |v| {
            f(decode(v)?);
            Ok(())
        })
    }

    /// Number of records under `prefix`.
    pub fn count(&self, prefix: &str) -> io::Result<u64> {
        let mut n = 0;
        self.each_value(prefix, |_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    fn each_value(
        &self,
        prefix: &str,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let it = self.db.iterator_cf(
            self.cf(),
            rocksdb::IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            f(&v)?;
        }
        Ok(())
    }

    /// The last log index applied on this node.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wait until this node has applied `index`; false if the state machine stopped first.
    pub async fn wait_applied(&self, index: u64) -> bool {
        let mut rx = self.applied.clone();
        let reached = rx.wait_for(|&i| i >= index).await.is_ok();
        reached
    }

    /// Change events from now on. A subscriber that lags behind receives `Lagged` and must
    /// rebuild from a scan, as it does at start-up.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeSet>> {
        self.events.subscribe()
    }
}
