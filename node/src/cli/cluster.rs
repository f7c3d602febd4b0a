//! `palisade status`, `palisade cluster …`, `palisade token create`, `palisade member remove`:
//! the cluster's state, leadership, members and join tokens.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{call_json, ClientArgs, Payload};

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Leader, members, roles, applied index and lag.
    Status(ClientArgs),
    /// Hand leadership to another voter.
    TransferLeader {
        node: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a learner a voter.
    Promote {
        node: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a node from the cluster.
    Remove {
        node: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn cluster(cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Status(c) => status(&c)?,
        ClusterCmd::TransferLeader { node, client } => {
            call_json(
                "POST",
                &client,
                "/v1/cluster/leader",
                Payload::Json(json!({ "node_id": node })),
            )?;
            println!("node {node} is the leader");
        }
        ClusterCmd::Promote { node, client } => {
            call_json(
                "POST",
                &client,
                &format!("/v1/cluster/members/{node}/promote"),
                Payload::None,
            )?;
            println!("node {node} is a voter");
        }
        ClusterCmd::Remove { node, client } => {
            call_json(
                "DELETE",
                &client,
                &format!("/v1/cluster/members/{node}"),
                Payload::None,
            )?;
            println!("node {node} removed");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum TokenCmd {
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
pub(crate) enum MemberCmd {
    /// Remove a node from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn status(c: &ClientArgs) -> Result<()> {
    let s = call_json("GET", c, "/v1/cluster/status", Payload::None)?;
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

pub(crate) fn token(cmd: TokenCmd) -> Result<()> {
    let TokenCmd::Create { client, ttl } = cmd;
    let v = call_json(
        "POST",
        &client,
        "/v1/cluster/join-tokens",
        Payload::Json(json!({ "ttl_seconds": ttl })),
    )?;
    println!("{}", v["token"].as_str().unwrap_or_default());
    Ok(())
}

pub(crate) fn member(cmd: MemberCmd) -> Result<()> {
    let MemberCmd::Remove { id, client } = cmd;
    call_json(
        "DELETE",
        &client,
        &format!("/v1/cluster/members/{id}"),
        Payload::None,
    )?;
    println!("node {id} removed");
    Ok(())
}
