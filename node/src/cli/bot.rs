//! `palisade bot show|set|revoke-sessions|decisions|lift`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::client::{call_json, q, ClientArgs, Payload};

#[derive(Subcommand)]
pub(crate) enum BotCmd {
    /// Show a project's bot protection policy.
    Show {
        #[arg(long, short)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a project's bot protection policy (unnamed settings keep their value).
    Set {
        #[arg(long, short)]
        project: String,
        /// off, automatic or always_on.
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        difficulty_bits: Option<u8>,
        #[arg(long)]
        session_minutes: Option<u32>,
        #[arg(long)]
        manual_session_minutes: Option<u32>,
        /// Any field by its dotted path, the value as JSON or a bare string; repeatable:
        /// `--set triggers.failed_logins.threshold=3 --set 'exempt_paths=["/hooks/*"]'`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End every clearance cookie of a project at once (visitors solve a new challenge).
    RevokeSessions {
        #[arg(long, short)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sources challenged or blocked now, by trigger or by hand.
    Decisions {
        #[arg(long, short)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a decision.
    Lift {
        #[arg(long, short)]
        project: String,
        /// The address or CIDR the decision covers.
        prefix: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Set `path` (dotted) in `doc` to `raw`, read as JSON when it parses, else as a string.
fn set_path(doc: &mut Value, assignment: &str) -> Result<()> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--set {assignment:?}: expected PATH=VALUE"))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
    let mut at = doc;
    for part in path.split('.') {
        at = at
            .as_object_mut()
            .ok_or_else(|| {
                anyhow::anyhow!("--set {path}: {part:?} is inside a value that is not an object")
            })?
            .entry(part.to_string())
            .or_insert(Value::Null);
    }
    *at = value;
    Ok(())
}

pub(crate) fn bot(cmd: BotCmd) -> Result<()> {
    match cmd {
        BotCmd::Show { project, client } => {
            let v = call_json(
                "GET",
                &client,
                &format!("/v1/projects/{}/bot", q(&project)),
                Payload::None,
            )?;
            println!("{v:#}");
        }
        BotCmd::Set {
            project,
            mode,
            difficulty_bits,
            session_minutes,
            manual_session_minutes,
            set,
            client,
        } => {
            let path = format!("/v1/projects/{}/bot", q(&project));
            let mut policy = call_json("GET", &client, &path, Payload::None)?;
            let changes = [
                ("mode", mode.map(Value::from)),
                ("difficulty_bits", difficulty_bits.map(Value::from)),
                ("session_minutes", session_minutes.map(Value::from)),
                (
                    "manual_session_minutes",
                    manual_session_minutes.map(Value::from),
                ),
            ];
            for (k, v) in changes {
                if let Some(v) = v {
                    policy[k] = v;
                }
            }
            for a in &set {
                set_path(&mut policy, a)?;
            }
            let v = call_json("PUT", &client, &path, Payload::Json(policy))?;
            println!("{:#}", v["bot"]);
        }
        BotCmd::RevokeSessions { project, client } => {
            let path = format!("/v1/projects/{}/bot/sessions/revoke", q(&project));
            let v = call_json("POST", &client, &path, Payload::None)?;
            println!("every clearance of {project} ended (epoch {})", v["epoch"]);
        }
        BotCmd::Decisions { project, client } => {
            let path = format!("/v1/projects/{}/bot/decisions", q(&project));
            let v = call_json("GET", &client, &path, Payload::None)?;
            for d in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\tuntil {}\t{}",
                    d["prefix"].as_str().unwrap_or(""),
                    d["action"].as_str().unwrap_or(""),
                    d["until"],
                    d["reason"].as_str().unwrap_or("")
                );
            }
        }
        BotCmd::Lift {
            project,
            prefix,
            client,
        } => {
            let path = format!(
                "/v1/projects/{}/bot/decisions?prefix={}",
                q(&project),
                q(&prefix)
            );
            call_json("DELETE", &client, &path, Payload::None)?;
            println!("decision for {prefix} lifted");
        }
    }
    Ok(())
}
