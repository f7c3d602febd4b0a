//! A node's life before `run`: `init` makes a new one-node cluster (CA, master key, the first
//! owner key), `join` spends a token at a member to become one, and the join finishes on the
//! node's first run (it is made a voter).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use palisade_raft::cluster::{self, Cluster, JoinToken};
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::crypto::{node_key_and_csr, CaMaterial, MasterKey};
use palisade_raft::model::{Record, Role};
use palisade_raft::transport::proto::JoinRequest;
use palisade_raft::types::NodeInfo;

use crate::config::{self, Config};
use crate::datadir::{DataDir, NodeFile};
use crate::{init_logging, serve};

#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// This node's cluster (QUIC) address, reachable by the other nodes.
    #[arg(long)]
    pub(crate) cluster_addr: String,
    /// Admin API address (private network). Defaults to the cluster address's IP, port + 1.
    #[arg(long)]
    pub(crate) admin_addr: Option<String>,
    /// Public HTTPS address.
    #[arg(long, default_value = "0.0.0.0:443")]
    pub(crate) public_addr: String,
    /// Public HTTP address.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub(crate) http_addr: String,
}

/// The config file a new node starts with; the operator may edit it afterwards.
pub(crate) fn write_config(dd: &DataDir, args: &NodeArgs) -> Result<config::Validated> {
    let admin = match &args.admin_addr {
        Some(a) => a.clone(),
        None => {
            let sock: std::net::SocketAddr = args
                .cluster_addr
                .parse()
                .map_err(|_| anyhow!("--cluster-addr {:?} must be IP:PORT", args.cluster_addr))?;
            std::net::SocketAddr::new(sock.ip(), sock.port() + 1).to_string()
        }
    };
    let root = std::fs::canonicalize(&dd.root)?;
    let mut cfg = Config {
        data_dir: root,
        ..Config::default()
    };
    cfg.cluster.listen = args.cluster_addr.clone();
    // Off this machine the admin API speaks TLS from the start: keys cross the network.
    cfg.admin.tls = !admin
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    cfg.admin.listen = admin;
    cfg.public.https = args.public_addr.clone();
    cfg.public.http = args.http_addr.clone();
    let validated = cfg.clone().apply_env()?.validate()?;
    dd.write_public("palisade.toml", &toml::to_string_pretty(&cfg)?)?;
    Ok(validated)
}

pub(crate) fn config_path(dd: &DataDir) -> PathBuf {
    dd.root.join("palisade.toml")
}

pub(crate) async fn init(args: NodeArgs) -> Result<()> {
    let dd = DataDir::new(&args.data_dir);
    let (cluster_id, key) = create_cluster(&dd, &args).await?;
    println!("initialised cluster {cluster_id}; this is node 1");
    println!("owner API key (shown once, store it now): {key}");
    println!(
        "start the node: palisade run --config {}",
        config_path(&dd).display()
    );
    let cfg = Config::load(&config_path(&dd))?;
    if cfg.admin.tls {
        println!(
            "the admin API speaks TLS: give the CLI the cluster CA, {} (--ca, PALISADE_ADMIN_CA, or ca = \"…\" in ~/.config/palisade/client.toml)",
            dd.root.join("tls/ca.pem").display()
        );
    }
    Ok(())
}

/// Write a new one-node cluster into `dd`; returns its id and the owner API key.
pub(crate) async fn create_cluster(dd: &DataDir, args: &NodeArgs) -> Result<(String, String)> {
    dd.ensure_fresh()?;
    let cfg = write_config(dd, args)?;
    let mut cluster_id = [0u8; 16];
    palisade_raft::crypto::fill_random(&mut cluster_id);
    let cluster_id = hex::encode(cluster_id);
    let ca = CaMaterial::generate(&cluster_id)?;
    let (node_key, csr) = node_key_and_csr()?;
    // The node renews it at start to its configured validity.
    let node_cert = ca.sign_node_csr(1, &csr, palisade_raft::crypto::NODE_CERT_VALIDITY)?;
    dd.save_tls(&ca, &node_cert, &node_key)?;
    dd.write_secret("master.key", &MasterKey::generate().to_hex())?;
    dd.save_node_file(&NodeFile {
        format: 1,
        cluster_id: cluster_id.clone(),
        node_id: 1,
        joined: true,
        seed: None,
    })?;

    // Bring the one-node cluster up once to commit its membership and the first key, in a
    // runtime of its own: dropping it ends every task, so the store is closed on return.
    let root = dd.root.clone();
    let key = tokio::task::spawn_blocking(move || -> Result<palisade_admin::auth::NewKey> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let result = rt.block_on(async {
            let p = serve::prepare(&cfg)?;
            let cluster = Cluster::start(p.setup, p.store, &root).await?;
            cluster.bootstrap().await?;
            let key = palisade_admin::auth::new_key(
                palisade_admin::auth::KeySpec {
                    role: Role::Owner,
                    project: None,
                    expires_at: None,
                    description: "created by palisade init",
                    created_by: "init",
                },
                palisade_raft::now_ms(),
            );
            let resp = cluster
                .write(Request::new(Command::Put {
                    record: Record::ApiKey(key.record.clone()),
                }))
                .await;
            cluster.shutdown().await;
            match resp? {
                Response::Applied { .. } => Ok(key),
                other => bail!("storing the first API key failed: {other:?}"),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    })
    .await??;
    Ok((cluster_id, key.secret))
}

/// The join token: from a file (`-`: standard input), else `PALISADE_JOIN_TOKEN`, else
/// `--token` (with a warning: a command line is visible to every user of the machine).
pub(crate) fn join_token(flag: Option<String>, file: Option<&std::path::Path>) -> Result<String> {
    if let Some(path) = file {
        let text = match path.to_str() {
            Some("-") => std::io::read_to_string(std::io::stdin())
                .context("reading the join token from standard input")?,
            _ => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the join token from {}", path.display()))?,
        };
        return Ok(text.trim().to_string());
    }
    if let Ok(token) = std::env::var("PALISADE_JOIN_TOKEN") {
        return Ok(token.trim().to_string());
    }
    match flag {
        Some(token) => {
            eprintln!("warning: --token leaves the join token in the process list; prefer --token-file or PALISADE_JOIN_TOKEN");
            Ok(token)
        }
        None => bail!("no join token: give --token-file FILE (- for standard input), set PALISADE_JOIN_TOKEN, or --token"),
    }
}

pub(crate) async fn join(token: &str, args: NodeArgs) -> Result<()> {
    let token = JoinToken::decode(token).map_err(|e| anyhow!(e))?;
    let dd = DataDir::new(&args.data_dir);
    dd.ensure_fresh()?;
    let cfg = write_config(&dd, &args)?;
    let (node_key, csr) = node_key_and_csr()?;
    let node = NodeInfo {
        cluster_addr: cfg.cluster_advertise.clone(),
        admin_addr: cfg.raw.admin.listen.clone(),
        public_addr: cfg.raw.public.https.clone(),
    };
    let grant = cluster::request_join(
        &token,
        JoinRequest {
            secret: token.secret.clone(),
            csr_pem: csr,
            node,
        },
    )
    .await
    .with_context(|| format!("joining through {}", token.addr))?;
    let ca = CaMaterial {
        cert_pem: grant.ca_cert_pem.clone(),
        key_pem: grant.ca_key_pem.clone(),
    };
    dd.save_tls(&ca, &grant.node_cert_pem, &node_key)?;
    dd.write_secret("master.key", &grant.master_key_hex)?;
    dd.save_node_file(&NodeFile {
        format: 1,
        cluster_id: grant.cluster_id.clone(),
        node_id: grant.node_id,
        joined: false,
        seed: Some((token.node_id, token.addr.clone())),
    })?;
    println!(
        "joined cluster {} as node {}",
        grant.cluster_id, grant.node_id
    );
    println!(
        "restart later with: palisade run --config {}",
        config_path(&dd).display()
    );
    init_logging(&cfg.raw.log.level);
    serve::run(cfg).await
}

/// Keep asking until the cluster has made this node a voter, then record it.
pub(crate) async fn finish_join(cluster: Arc<Cluster>, dd: DataDir, mut nf: NodeFile) {
    loop {
        // Until this node hears from a leader, only the member that let it in knows it.
        let attempt = match (cluster.local_status().leader, nf.seed.clone()) {
            (None, Some(seed)) => cluster.join_via(seed).await,
            _ => cluster.add_member(nf.node_id, cluster.node.clone()).await,
        };
        match attempt {
            Ok(()) => {
                nf.joined = true;
                if let Err(e) = dd.save_node_file(&nf) {
                    tracing::error!(error = %format!("{e:#}"), "cannot record the finished join");
                }
                tracing::info!(node = nf.node_id, "joined the cluster as a voter");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "joining as a voter failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_api_off_this_machine_speaks_tls_from_the_start() {
        for (admin, tls) in [("127.0.0.1:7001", false), ("10.0.0.5:7001", true)] {
            let dir = tempfile::tempdir().unwrap();
            let dd = DataDir::new(dir.path());
            let args = NodeArgs {
                data_dir: dir.path().to_path_buf(),
                cluster_addr: "127.0.0.1:7000".into(),
                admin_addr: Some(admin.into()),
                public_addr: "127.0.0.1:8443".into(),
                http_addr: "127.0.0.1:8080".into(),
            };
            write_config(&dd, &args).unwrap();
            let written = Config::load(&config_path(&dd)).unwrap();
            assert_eq!(written.admin.tls, tls, "{admin}");
        }
    }
}
