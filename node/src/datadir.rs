//! The files of a node's data dir besides RocksDB: who the node is, its TLS material and the
//! master key. Secrets are written with mode 0600 and never logged.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use palisade_raft::crypto::{CaMaterial, MasterKey};
use palisade_raft::ids::NodeId;
use palisade_raft::transport::tls::Identity;
use serde::{Deserialize, Serialize};

/// `node.json`: which cluster and node this data dir is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: NodeId,
    /// False until the cluster has made this node a voter (a join that was interrupted resumes).
    pub joined: bool,
    /// The member that let this node in (id, cluster address): asked to finish the join.
    #[serde(default)]
    pub seed: Option<(NodeId, String)>,
}

pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        DataDir {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn is_initialised(&self) -> bool {
        self.path("node.json").exists()
    }

    /// Refuse to overwrite an existing node.
    pub fn ensure_fresh(&self) -> Result<()> {
        if self.is_initialised() {
            bail!(
                "data dir {} already holds a node (node.json exists); refusing to overwrite it",
                self.root.display()
            );
        }
        std::fs::create_dir_all(self.path("tls"))
            .with_context(|| format!("cannot create data dir {}", self.root.display()))?;
        Ok(())
    }

    pub fn write_public(&self, name: &str, content: &str) -> Result<()> {
        write_atomic(&self.path(name), content.as_bytes(), 0o644)
    }

    pub fn write_secret(&self, name: &str, content: &str) -> Result<()> {
        write_atomic(&self.path(name), content.as_bytes(), 0o600)
    }

    fn read(&self, name: &str) -> Result<String> {
        let p = self.path(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "data dir {} is incomplete or damaged: cannot read {}",
                self.root.display(),
                p.display()
            )
        })
    }

    pub fn node_file(&self) -> Result<NodeFile> {
        if !self.is_initialised() {
            bail!(
                "data dir {} holds no node: run `palisade init` or `palisade join` first",
                self.root.display()
            );
        }
        let text = self.read("node.json")?;
        let nf: NodeFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "data dir {} is damaged: node.json is not valid",
                self.root.display()
            )
        })?;
        if nf.format != 1 {
            bail!(
                "data dir {} was written by an unknown release (node.json format {})",
                self.root.display(),
                nf.format
            );
        }
        Ok(nf)
    }

    pub fn save_node_file(&self, nf: &NodeFile) -> Result<()> {
        self.write_public("node.json", &serde_json::to_string_pretty(nf)?)
    }

    pub fn master_key(&self) -> Result<MasterKey> {
        let text = self.read("master.key")?;
        let mode = std::fs::metadata(self.path("master.key"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "master.key is readable by other users (mode {:o}); it should be 0600",
                mode & 0o777
            );
        }
        MasterKey::from_hex(&text)
            .with_context(|| format!("data dir {} is damaged: master.key", self.root.display()))
    }

    pub fn ca(&self) -> Result<CaMaterial> {
        Ok(CaMaterial {
            cert_pem: self.read("tls/ca.pem")?,
            key_pem: self.read("tls/ca.key")?,
        })
    }

    pub fn identity(&self) -> Result<Identity> {
        Ok(Identity {
            ca_pem: self.read("tls/ca.pem")?,
            cert_pem: self.read("tls/node.pem")?,
            key_pem: self.read("tls/node.key")?,
        })
    }

    pub fn save_tls(&self, ca: &CaMaterial, node_cert_pem: &str, node_key_pem: &str) -> Result<()> {
        self.write_public("tls/ca.pem", &ca.cert_pem)?;
        self.write_secret("tls/ca.key", &ca.key_pem)?;
        self.write_public("tls/node.pem", node_cert_pem)?;
        self.write_secret("tls/node.key", node_key_pem)
    }
}

/// Write `path` whole or not at all: a fresh temporary file beside it (a random name, created
/// exclusively, so never a leftover file or a symlink someone planted), given its final mode
/// before the content goes in, synced, then renamed over `path`.
fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".palisade-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_never_follows_a_planted_symlink_and_has_its_mode_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        // Where an earlier release put its temporary file: a symlink planted there.
        std::os::unix::fs::symlink(&victim, dir.path().join("master.tmp")).unwrap();
        let dd = DataDir::new(dir.path());
        dd.write_secret("master.key", "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let written = dir.path().join("master.key");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "secret");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".palisade-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
