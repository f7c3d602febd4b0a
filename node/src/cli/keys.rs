//! `palisade key ls|create|revoke`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::client::{call_json, q, ClientArgs, Payload};
use super::output::show;

const KEY_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("PREFIX", "prefix"),
    ("ROLE", "role"),
    ("PROJECT", "project"),
    ("STATUS", "status"),
    ("CREATED_AT", "created_at"),
    ("EXPIRES_AT", "expires_at"),
    ("LAST_USED_AT", "last_used_at"),
    ("DESCRIPTION", "description"),
];

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// List API keys (active ones; `--all` adds revoked and expired).
    Ls {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a key; its secret is printed once.
    Create {
        /// viewer, operator, admin or owner.
        #[arg(long)]
        role: String,
        /// Limit the key to one project.
        #[arg(long, short)]
        project: Option<String>,
        /// Expire the key after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn key(cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Ls { all, json, client } => {
            let v = call_json(
                "GET",
                &client,
                &format!("/v1/keys?all={all}"),
                Payload::None,
            )?;
            show(&v, json, KEY_COLUMNS);
        }
        KeyCmd::Create {
            role,
            project,
            ttl,
            description,
            json,
            client,
        } => {
            let mut body = json!({ "role": role, "description": description });
            if let Some(p) = project {
                body["project"] = json!(p);
            }
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t);
            }
            let v = call_json("POST", &client, "/v1/keys", Payload::Json(body))?;
            if json {
                println!("{v:#}");
            } else {
                println!("{}", v["secret"].as_str().unwrap_or_default());
                eprintln!(
                    "key {} ({role}) created; the secret above is shown only once",
                    v["id"].as_str().unwrap_or("?")
                );
            }
        }
        KeyCmd::Revoke { id, client } => {
            call_json(
                "DELETE",
                &client,
                &format!("/v1/keys/{}", q(&id)),
                Payload::None,
            )?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}
