//! The command line: the command tree, and one file per resource group of the admin API
//! (`palisade project …`, `palisade ip …`) over one client ([`client`]). Node lifecycle commands
//! (`init`, `join`, `run`, `dev`) hand over to [`crate::lifecycle`], [`crate::serve`] and
//! [`crate::dev`].

mod api;
mod audit;
mod bot;
mod certs;
pub(crate) mod client;
mod cluster;
mod domains;
mod ip;
mod keys;
mod output;
mod projects;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::datadir::DataDir;
use crate::lifecycle::{self, NodeArgs};
use crate::{init_logging, runtime, serve, CONTROL_THREADS};
use client::ClientArgs;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A clustered, self-hosted security edge"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Create a new one-node cluster in a data dir and print its first (owner) API key.
    Init(NodeArgs),
    /// Join an existing cluster with a token from `palisade token create`, then run.
    /// The token comes from `--token-file` (`-`: standard input) or `PALISADE_JOIN_TOKEN`;
    /// `--token` works too, but leaves it in the process list for as long as the node runs.
    Join {
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
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
        cmd: cluster::TokenCmd,
    },
    /// Cluster membership.
    Member {
        #[command(subcommand)]
        cmd: cluster::MemberCmd,
    },
    /// IP allow and block lists: per project, or the cluster-wide block list.
    Ip {
        #[command(subcommand)]
        cmd: ip::IpCmd,
    },
    /// Projects.
    Project {
        #[command(subcommand)]
        cmd: projects::ProjectCmd,
    },
    /// Domains: host, project, upstreams, TLS mode, redirect, bot override.
    Domain {
        #[command(subcommand)]
        cmd: domains::DomainCmd,
    },
    /// Bot protection policy per project.
    Bot {
        #[command(subcommand)]
        cmd: bot::BotCmd,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        cmd: certs::CertCmd,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        cmd: keys::KeyCmd,
    },
    /// Query or export the audit log.
    Audit(audit::AuditArgs),
    /// The cluster: status, leadership, members.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Any admin API call, printed as it comes back.
    Api(api::ApiArgs),
    /// A one-node cluster on this machine with a demo site, for trying Palisade out.
    Dev(crate::dev::DevArgs),
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

/// Carry out one command.
pub(crate) fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Init(args) => runtime(0)?.block_on(lifecycle::init(args)),
        Cmd::Join {
            token,
            token_file,
            node,
        } => {
            let token = lifecycle::join_token(token, token_file.as_deref())?;
            runtime(0)?.block_on(lifecycle::join(&token, node))
        }
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?.apply_env()?.validate()?;
            init_logging(&cfg.raw.log.level);
            runtime(CONTROL_THREADS)?.block_on(serve::run(cfg))
        }
        Cmd::Status(c) => cluster::status(&c),
        Cmd::Ip { cmd } => ip::ip(cmd),
        Cmd::Project { cmd } => projects::project(cmd),
        Cmd::Domain { cmd } => domains::domain(cmd),
        Cmd::Bot { cmd } => bot::bot(cmd),
        Cmd::Cert { cmd } => certs::cert(cmd),
        Cmd::Key { cmd } => keys::key(cmd),
        Cmd::Audit(a) => audit::audit(a),
        Cmd::Cluster { cmd } => cluster::cluster(cmd),
        Cmd::Api(a) => api::api(a),
        Cmd::Dev(args) => {
            init_logging("warn,palisade=info");
            runtime(0)?.block_on(crate::dev::run(args))
        }
        Cmd::Token { cmd } => cluster::token(cmd),
        Cmd::Member { cmd } => cluster::member(cmd),
        Cmd::Ping {
            data_dir,
            peer,
            peer_id,
            as_node,
        } => {
            let dd = DataDir::new(&data_dir);
            let nf = dd.node_file()?;
            let pong = runtime(0)?.block_on(palisade_raft::cluster::ping(
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
