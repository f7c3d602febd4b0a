//! `palisade`: one binary for every node of a cluster, and the operator's command line.

#![forbid(unsafe_code)]

mod config;
mod ctl;
mod datadir;
mod dev;
mod manage;
mod serve;
mod sweep;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use palisade_raft::cluster::{self, Cluster, JoinToken};
use palisade_raft::command::{Command, Request, Response};
use palisade_raft::crypto::{node_key_and_csr, CaMaterial, MasterKey};
use palisade_raft::model::{Record, Role};
use palisade_raft::transport::proto::JoinRequest;
use palisade_raft::types::NodeInfo;
use serde_json::Value;

use config::Config;
use ctl::ClientArgs;
use datadir::{DataDir, NodeFile};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A clustered, self-hosted security edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new one-node cluster in a data dir and print its first (owner) API key.
    Init(NodeArgs),
    /// Join an existing cluster with a token from `palisade token create`, then run.
    Join {
        #[arg(long)]
        token: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run a node from its configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the cluster: leader, members, roles, applied index and lag.
    Status(ClientArgs),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Cluster membership.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// IP allow and block lists: per project, or the cluster-wide block list.
    Ip {
        #[command(subcommand)]
        cmd: ctl::IpCmd,
    },
    /// Projects.
    Project {
        #[command(subcommand)]
        cmd: manage::ProjectCmd,
    },
    /// Domains: host, project, upstreams, TLS mode, redirect, bot override.
    Domain {
        #[command(subcommand)]
        cmd: manage::DomainCmd,
    },
    /// Bot protection policy per project.
    Bot {
        #[command(subcommand)]
        cmd: manage::BotCmd,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        cmd: manage::CertCmd,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        cmd: manage::KeyCmd,
    },
    /// Query or export the audit log.
    Audit(manage::AuditArgs),
    /// The cluster: status, leadership, members.
    Cluster {
        #[command(subcommand)]
        cmd: manage::ClusterCmd,
    },
    /// Any admin API call, printed as it comes back.
    Api(manage::ApiArgs),
    /// A one-node cluster on this machine with a demo site, for trying Palisade out.
    Dev(dev::DevArgs),
    /// Check that a peer accepts this data dir's identity over the cluster transport.
    Ping {
        #[arg(long)]
        data_dir: PathBuf,
        /// The peer's cluster address.
        #[arg(long)]
        peer: String,
        /// The node id the peer must prove.
        #[arg(long)]
        peer_id: u64,
        /// The node id to claim (defaults to this data dir's).
        #[arg(long)]
        as_node: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a one-use join token.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Remove a node from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

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

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(0)
}

/// A multi-threaded runtime with `workers` threads (0: one per CPU).
fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

pub(crate) fn init_logging(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .try_init();
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Init(args) => runtime()?.block_on(init(args)),
        Cmd::Join { token, node } => runtime()?.block_on(join(&token, node)),
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?.apply_env()?.validate()?;
            init_logging(&cfg.raw.log.level);
            runtime_with(cfg.raw.workers)?.block_on(serve::run(cfg))
        }
        Cmd::Status(c) => status(&c),
        Cmd::Ip { cmd } => ctl::ip(cmd),
        Cmd::Project { cmd } => manage::project(cmd),
        Cmd::Domain { cmd } => manage::domain(cmd),
        Cmd::Bot { cmd } => manage::bot(cmd),
        Cmd::Cert { cmd } => manage::cert(cmd),
        Cmd::Key { cmd } => manage::key(cmd),
        Cmd::Audit(a) => manage::audit(a),
        Cmd::Cluster { cmd } => manage::cluster(cmd),
        Cmd::Api(a) => manage::api(a),
        Cmd::Dev(args) => {
            init_logging("warn,palisade=info");
            runtime()?.block_on(dev::run(args))
        }
        Cmd::Token {
            cmd: TokenCmd::Create { client, ttl },
        } => {
            let v = admin_call(
                "POST",
                &client,
                "/v1/cluster/join-tokens",
                Some(serde_json::json!({ "ttl_seconds": ttl })),
            )?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Cmd::Member {
            cmd: MemberCmd::Remove { id, client },
        } => {
            admin_call(
                "DELETE",
                &client,
                &format!("/v1/cluster/members/{id}"),
                None,
            )?;
            println!("node {id} removed");
            Ok(())
        }
        Cmd::Ping {
            data_dir,
            peer,
            peer_id,
            as_node,
        } => {
            let dd = DataDir::new(&data_dir);
            let nf = dd.node_file()?;
            let pong = runtime()?.block_on(cluster::ping(
                &dd.identity()?,
                &peer,
                peer_id,
                as_node.unwrap_or(nf.node_id),
            ))?;
            println!(
                "node {} of cluster {} accepted this node as {:?}",
                pong.node_id, pong.cluster_id, pong.you_are
            );
            Ok(())
        }
    }
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

async fn init(args: NodeArgs) -> Result<()> {
    let dd = DataDir::new(&args.data_dir);
    let (cluster_id, key) = create_cluster(&dd, &args).await?;
    println!("initialised cluster {cluster_id}; this is node 1");
    println!("owner API key (shown once, store it now): {key}");
    println!(
        "start the node: palisade run --config {}",
        config_path(&dd).display()
    );
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
    let node_cert = ca.sign_node_csr(1, &csr)?;
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

async fn join(token: &str, args: NodeArgs) -> Result<()> {
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

fn admin_call(method: &str, c: &ClientArgs, path: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map(ctl::Payload::Json).unwrap_or(ctl::Payload::None);
    ctl::call_json(method, c, path, body)
}

pub(crate) fn status(c: &ClientArgs) -> Result<()> {
    let s = admin_call("GET", c, "/v1/cluster/status", None)?;
    let leader = s["leader"].as_u64();
    println!("cluster {}", s["cluster_id"].as_str().unwrap_or("?"));
    println!(
        "leader  {}",
        leader
            .map(|l| format!("node {l}"))
            .unwrap_or_else(|| "none".into())
    );
    println!(
        "term {}  committed {}  applied (node {}) {}",
        s["term"], s["committed"], s["node_id"], s["applied"]
    );
    println!(
        "{:<6} {:<8} {:<22} {:<22} {:>10} {:>6}",
        "NODE", "ROLE", "CLUSTER ADDR", "ADMIN ADDR", "MATCHED", "LAG"
    );
    for m in s["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_u64().unwrap_or(0);
        let role = if Some(id) == leader {
            "leader"
        } else if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        let opt = |v: &Value| {
            v.as_u64()
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<6} {:<8} {:<22} {:<22} {:>10} {:>6}",
            id,
            role,
            m["node"]["cluster_addr"].as_str().unwrap_or(""),
            m["node"]["admin_addr"].as_str().unwrap_or(""),
            opt(&m["matched"]),
            opt(&m["lag"])
        );
    }
    Ok(())
}
