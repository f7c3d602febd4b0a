//! `palisade`: one binary for every node of a cluster, and the operator's command line.
//!
//! - `cli`: the command tree, and one file per resource group of the admin API;
//! - `config`: the TOML file, the environment's overrides, validation;
//! - `lifecycle`: `init` (a new cluster), `join` (spend a token), finishing a join;
//! - `serve`: start a node (the composition root: cluster member, edge, jobs, admin API) and
//!   stop it on a signal;
//! - `dev`: `palisade dev`, a one-node cluster with a demo site;
//! - `datadir`: the data dir's files;
//! - `alloc`: the memory allocator (mimalloc, or the system's), the one module with `unsafe`.

#![deny(unsafe_code)]

mod alloc;
mod cli;
mod config;
mod datadir;
mod dev;
mod lifecycle;
mod serve;

use anyhow::Result;
use clap::Parser;

fn main() {
    if let Some(v) = alloc::invalid_setting() {
        eprintln!(
            "error: {}={v:?} is not an allocator this build has: use \"mimalloc\" (the default) or \"system\"",
            alloc::VARIABLE
        );
        std::process::exit(1);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Threads of a running node's control plane: Raft, RocksDB, the admin API and the background
/// jobs. The data plane has its own threads ([`palisade_edge::workers`]).
const CONTROL_THREADS: usize = 2;

/// A multi-threaded runtime with `workers` threads (0: one per CPU).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
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
