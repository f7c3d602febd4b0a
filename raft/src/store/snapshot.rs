//! Snapshots as files: built from a RocksDB snapshot of `sm_data`, streamed record by record, so
//! a large state is never held whole in memory, and installed with a redo marker so that a crash
//! mid-install is finished at the next start instead of leaving half a state.
//!
//! File layout: `PALISNAP` magic, version byte, u32 length + JSON [`SnapshotMeta`], then records
//! as (u32 key length, key, u32 value length, value), an end marker (`u32::MAX`), and the SHA-256
//! of everything before it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftSnapshotBuilder;
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::sm::{KEY_APPLIED, KEY_INSTALLING, KEY_MEMBERSHIP, KEY_SNAPSHOT};
use super::{decode, encode, io_err, CF_SM_DATA, CF_SM_META};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

const MAGIC: &[u8; 8] = b"PALISNAP";
const VERSION: u8 = 1;
const END: u32 = u32::MAX;
/// Records per write batch while installing.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

pub(crate) fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// A snapshot on disk: what openraft passes around as `SnapshotData`.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

impl SnapshotFile {
    /// A fresh path inside `dir` for a snapshot being received.
    pub fn incoming(dir: &Path) -> SnapshotFile {
        let mut b = [0u8; 8];
        crate::crypto::fill_random(&mut b);
        SnapshotFile {
            path: dir.join(format!("incoming-{}.snap", hex::encode(b))),
        }
    }
}

/// The current snapshot as recorded in `sm_meta`.
#[derive(Serialize, Deserialize)]
struct Current {
    meta: SnapshotMeta,
    file: PathBuf,
}

/// An install in progress: survives a crash in `sm_meta`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) meta: SnapshotMeta,
    pub(crate) file: PathBuf,
}

impl Pending {
    /// Check the received file and move it to its final name in `dir`.
    pub(crate) fn stage(
        dir: &Path,
        meta: &SnapshotMeta,
        snap: &SnapshotFile,
    ) -> io::Result<Pending> {
        let file_meta = verify(&snap.path)?;
        if file_meta.last_log_id != meta.last_log_id {
            return Err(io_err(format!(
                "snapshot file is for {:?}, openraft asked to install {:?}",
                file_meta.last_log_id, meta.last_log_id
            )));
        }
        let file = dir.join(file_name(meta));
        if snap.path != file {
            std::fs::rename(&snap.path, &file)?;
        }
        Ok(Pending {
            meta: meta.clone(),
            file,
        })
    }
}

fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!(
            "snap-{}-{}-{}.snap",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => "snap-empty.snap".to_string(),
    }
}

fn write_u32(w: &mut impl Write, n: u32, digest: &mut ring::digest::Context) -> io::Result<()> {
    let b = n.to_be_bytes();
    digest.update(&b);
    w.write_all(&b)
}

fn write_bytes(w: &mut impl Write, b: &[u8], digest: &mut ring::digest::Context) -> io::Result<()> {
    write_u32(w, u32::try_from(b.len()).map_err(io_err)?, digest)?;
    digest.update(b);
    w.write_all(b)
}

/// Reads a snapshot file, checking its digest as it goes.
struct SnapReader {
    r: BufReader<File>,
    digest: ring::digest::Context,
}

impl SnapReader {
    fn open(path: &Path) -> io::Result<(SnapReader, SnapshotMeta)> {
        let mut r = SnapReader {
            r: BufReader::new(File::open(path)?),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        };
        let mut head = [0u8; 9];
        r.read_exact(&mut head)?;
        if &head[..8] != MAGIC || head[8] != VERSION {
            return Err(io_err(format!(
                "{} is not a version-{VERSION} Palisade snapshot",
                path.display()
            )));
        }
        let len = r.read_u32()?;
        let meta_bytes = r.read_vec(len)?;
        let meta = serde_json::from_slice(&meta_bytes).map_err(io_err)?;
        Ok((r, meta))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(buf)?;
        self.digest.update(buf);
        Ok(())
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_vec(&mut self, len: u32) -> io::Result<Vec<u8>> {
        if len > 64 << 20 {
            return Err(io_err("snapshot record larger than 64 MiB"));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// The next record, or None at the end marker (after checking the digest).
    fn next(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let klen = self.read_u32()?;
        if klen == END {
            let expected = std::mem::replace(
                &mut self.digest,
                ring::digest::Context::new(&ring::digest::SHA256),
            )
            .finish();
            let mut found = [0u8; 32];
            self.r.read_exact(&mut found)?;
            if expected.as_ref() != found {
                return Err(io_err("snapshot checksum mismatch: the file is damaged"));
            }
            return Ok(None);
        }
        let k = self.read_vec(klen)?;
        let vlen = self.read_u32()?;
        let v = self.read_vec(vlen)?;
        Ok(Some((k, v)))
    }
}

/// Read the whole file once to check it; returns its meta.
fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    let check = || -> io::Result<SnapshotMeta> {
        let (mut r, meta) = SnapReader::open(path)?;
        while r.next()?.is_some() {}
        Ok(meta)
    };
    check().map_err(|e| io_err(format!("snapshot file {} is damaged: {e}", path.display())))
}

pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>, dir: PathBuf) -> Self {
        SnapshotBuilder { db, dir }
    }

    fn build(&self) -> io::Result<(SnapshotMeta, PathBuf)> {
        // Make every applied write durable before the log it came from may be purged.
        self.db.flush_wal(true).map_err(io_err)?;
        let snap = self.db.snapshot();
        let meta_cf = self.db.cf_handle(CF_SM_META).expect("column family exists");
        let data_cf = self.db.cf_handle(CF_SM_DATA).expect("column family exists");
        let get = |k: &[u8]| snap.get_cf(meta_cf, k).map_err(io_err);
        let last_log_id: Option<LogId> =
            get(KEY_APPLIED)?.map(|v| decode(&v)).transpose()?.flatten();
        let last_membership: StoredMembership = get(KEY_MEMBERSHIP)?
            .map(|v| decode(&v))
            .transpose()?
            .unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };

        let path = self.dir.join(file_name(&meta));
        let tmp = path.with_extension("tmp");
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&[VERSION])?;
        digest.update(MAGIC);
        digest.update(&[VERSION]);
        write_bytes(
            &mut w,
            &serde_json::to_vec(&meta).map_err(io_err)?,
            &mut digest,
        )?;
        for item in snap.iterator_cf(data_cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(io_err)?;
            write_bytes(&mut w, &k, &mut digest)?;
            write_bytes(&mut w, &v, &mut digest)?;
        }
        write_u32(&mut w, END, &mut digest)?;
        w.write_all(digest.finish().as_ref())?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        Ok((meta, path))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>> {
        let (meta, path) = self.build()?;
        let meta_cf = self.db.cf_handle(CF_SM_META).expect("column family exists");
        let previous = current_record(&self.db)?;
        self.db
            .put_cf_opt(
                meta_cf,
                KEY_SNAPSHOT,
                encode(&Current {
                    meta: meta.clone(),
                    file: path.clone(),
                }),
                &synced(),
            )
            .map_err(io_err)?;
        if let Some(prev) = previous {
            if prev.file != path {
                let _ = std::fs::remove_file(prev.file);
            }
        }
        tracing::info!(index = ?meta.last_log_id.as_ref().map(|l| l.index), "snapshot built");
        Ok(openraft::storage::Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

fn current_record(db: &DB) -> io::Result<Option<Current>> {
    let meta_cf = db.cf_handle(CF_SM_META).expect("column family exists");
    db.get_cf(meta_cf, KEY_SNAPSHOT)
        .map_err(io_err)?
        .map(|v| decode(&v))
        .transpose()
}

pub(crate) fn current(
    db: &DB,
    _dir: &Path,
) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>> {
    Ok(current_record(db)?
        .filter(|c| c.file.exists())
        .map(|c| openraft::storage::Snapshot {
            meta: c.meta,
            snapshot: SnapshotFile { path: c.file },
        }))
}

/// Replace the whole state with the snapshot in `pending.file`. Idempotent: a crash at any point
/// leaves the `installing` marker, and the next start runs this again from the top.
pub(crate) fn install(db: &DB, pending: &Pending) -> io::Result<()> {
    let data_cf = db.cf_handle(CF_SM_DATA).expect("column family exists");
    let meta_cf = db.cf_handle(CF_SM_META).expect("column family exists");
    let (mut r, meta) = SnapReader::open(&pending.file)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(data_cf, &[][..], &[0xffu8][..]);
    let mut bytes = 0;
    while let Some((k, v)) = r.next()? {
        bytes += k.len() + v.len();
        batch.put_cf(data_cf, k, v);
        if bytes >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(io_err)?;
            bytes = 0;
        }
    }
    let previous = current_record(db)?;
    batch.put_cf(meta_cf, KEY_APPLIED, encode(&meta.last_log_id));
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&meta.last_membership));
    batch.put_cf(
        meta_cf,
        KEY_SNAPSHOT,
        encode(&Current {
            meta: meta.clone(),
            file: pending.file.clone(),
        }),
    );
    batch.delete_cf(meta_cf, KEY_INSTALLING);
    db.write_opt(batch, &synced()).map_err(io_err)?;
    if let Some(prev) = previous {
        if prev.file != pending.file {
            let _ = std::fs::remove_file(prev.file);
        }
    }
    tracing::info!(index = ?meta.last_log_id.as_ref().map(|l| l.index), "snapshot installed");
    Ok(())
}
