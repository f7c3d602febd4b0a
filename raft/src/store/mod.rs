//! RocksDB storage: one database per node with four column families.
//!
//! - `log`: Raft log entries, key = index (u64 big-endian);
//! - `raft_meta`: vote, committed log id, last purged log id, cluster id;
//! - `sm_data`: the replicated records, one key per record (see [`crate::model`]);
//! - `sm_meta`: last applied log id, membership, current snapshot, pending install.
//!
//! Every value written by this module starts with a one-byte format version so that the next
//! release can read what this one wrote.

mod apply;
mod log;
mod reader;
mod sm;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use log::LogStore;
pub use reader::StateReader;
pub use sm::{Change, ChangeSet, StateMachine};
pub use snapshot::SnapshotFile;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM_DATA: &str = "sm_data";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// Format version of every value this store writes.
pub(crate) const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path} cannot be opened: {detail} (it is left untouched; restore it from a backup or remove it to rejoin the node)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("data dir {path} is in use by another process (is a node already running on it?)")]
    InUse { path: PathBuf },
    #[error("data dir {path} belongs to cluster {found}, but this node is configured for cluster {expected}")]
    OtherCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("storage error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("snapshot error: {0}")]
    Snapshot(String),
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    serde_json::to_writer(&mut out, v).expect("in-memory JSON encoding cannot fail");
    out
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => serde_json::from_slice(body).map_err(std::io::Error::other),
        Some((v, _)) => Err(std::io::Error::other(format!(
            "unknown value format version {v}"
        ))),
        None => Err(std::io::Error::other("empty value")),
    }
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The opened storage of one node.
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StateReader,
}

impl Store {
    /// Open (or create) the store under `dir`, checking that it belongs to `cluster_id`.
    pub fn open(dir: &Path, cluster_id: &str) -> Result<Store, StoreError> {
        let db_path = dir.join("db");
        let corrupt = |detail: String| StoreError::Corrupt {
            path: dir.to_path_buf(),
            detail,
        };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        let mut data_opts = Options::default();
        data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, Options::default()),
            ColumnFamilyDescriptor::new(CF_RAFT_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_SM_DATA, data_opts),
            ColumnFamilyDescriptor::new(CF_SM_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, &db_path, cfs).map_err(|e| {
            if e.to_string().contains("LOCK") {
                StoreError::InUse {
                    path: dir.to_path_buf(),
                }
            } else {
                corrupt(e.to_string())
            }
        })?;
        let db = Arc::new(db);

        let meta = db.cf_handle(CF_RAFT_META).expect("column family exists");
        match db
            .get_cf(meta, b"cluster_id")
            .map_err(|e| corrupt(e.to_string()))?
        {
            Some(found) => {
                let found: String =
                    decode(&found).map_err(|e| corrupt(format!("cluster id: {e}")))?;
                if found != cluster_id {
                    return Err(StoreError::OtherCluster {
                        path: dir.to_path_buf(),
                        found,
                        expected: cluster_id.to_string(),
                    });
                }
            }
            None => {
                let log = db.cf_handle(CF_LOG).expect("column family exists");
                if db
                    .iterator_cf(log, rocksdb::IteratorMode::Start)
                    .next()
                    .is_some()
                {
                    return Err(corrupt("raft log present but cluster id missing".into()));
                }
                let mut w = rocksdb::WriteOptions::default();
                w.set_sync(true);
                db.put_cf_opt(meta, b"cluster_id", encode(&cluster_id), &w)?;
            }
        }

        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| corrupt(format!("snapshots dir: {e}")))?;
        let state_machine =
            StateMachine::open(db.clone(), snapshot_dir).map_err(|e| corrupt(e.to_string()))?;
        let reader = state_machine.reader();
        Ok(Store {
            log: LogStore::new(db),
            state_machine,
            reader,
        })
    }
}

#[cfg(test)]
mod tests;
