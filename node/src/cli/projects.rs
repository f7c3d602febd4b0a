//! `palisade project ls|show|add|rm`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::client::{call_json, q, ClientArgs, Payload};
use super::output::show;

const PROJECT_COLUMNS: &[(&str, &str)] =
    &[("ID", "id"), ("NAME", "name"), ("CREATED_AT", "created_at")];

#[derive(Subcommand)]
pub(crate) enum ProjectCmd {
    /// List projects.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one project, with its header policy, bot policy and limits.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a project.
    Add {
        id: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a project (it must have no domains left).
    Rm {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn project(cmd: ProjectCmd) -> Result<()> {
    match cmd {
        ProjectCmd::Ls { json, client } => {
            let v = call_json("GET", &client, "/v1/projects?limit=10000", Payload::None)?;
            show(&v, json, PROJECT_COLUMNS);
        }
        ProjectCmd::Show { id, client } => {
            let v = call_json(
                "GET",
                &client,
                &format!("/v1/projects/{}", q(&id)),
                Payload::None,
            )?;
            println!("{v:#}");
        }
        ProjectCmd::Add { id, name, client } => {
            let v = call_json(
                "POST",
                &client,
                "/v1/projects",
                Payload::Json(json!({ "id": id, "name": name })),
            )?;
            println!("project {id} created (log index {})", v["index"]);
        }
        ProjectCmd::Rm { id, client } => {
            let v = call_json(
                "DELETE",
                &client,
                &format!("/v1/projects/{}", q(&id)),
                Payload::None,
            )?;
            println!("project {id} deleted (log index {})", v["index"]);
        }
    }
    Ok(())
}
