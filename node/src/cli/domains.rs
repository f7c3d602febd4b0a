//! `palisade domain ls|put|rm`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::client::{call_json, q, ClientArgs, Payload};
use super::output::show;

const DOMAIN_COLUMNS: &[(&str, &str)] = &[
    ("HOST", "host"),
    ("PROJECT", "project"),
    ("UPSTREAMS", "upstreams"),
    ("TLS", "tls"),
    ("REDIRECT", "redirect_https"),
    ("BOT", "bot_override"),
];

#[derive(Subcommand)]
pub(crate) enum DomainCmd {
    /// List domains.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a domain.
    Put {
        host: String,
        #[arg(long, short)]
        project: String,
        /// An upstream HOST:PORT; repeat for several.
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// acme (automatic certificates), manual (uploaded certificate) or off.
        #[arg(long)]
        tls: Option<String>,
        /// Do not redirect HTTP to HTTPS.
        #[arg(long)]
        no_redirect: bool,
        /// Bot protection for this domain only: off, automatic or always_on.
        #[arg(long)]
        bot: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a domain.
    Rm {
        host: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn domain(cmd: DomainCmd) -> Result<()> {
    match cmd {
        DomainCmd::Ls { json, client } => {
            let v = call_json("GET", &client, "/v1/domains?limit=10000", Payload::None)?;
            show(&v, json, DOMAIN_COLUMNS);
        }
        DomainCmd::Put {
            host,
            project,
            upstreams,
            tls,
            no_redirect,
            bot,
            client,
        } => {
            let mut body = json!({ "project": project, "upstreams": upstreams, "redirect_https": !no_redirect });
            if let Some(t) = tls {
                body["tls"] = json!(t);
            }
            if let Some(b) = bot {
                body["bot_override"] = json!(b);
            }
            let v = call_json(
                "PUT",
                &client,
                &format!("/v1/domains/{}", q(&host)),
                Payload::Json(body),
            )?;
            println!("domain {host} saved (log index {})", v["index"]);
        }
        DomainCmd::Rm { host, client } => {
            let v = call_json(
                "DELETE",
                &client,
                &format!("/v1/domains/{}", q(&host)),
                Payload::None,
            )?;
            println!("domain {host} deleted (log index {})", v["index"]);
        }
    }
    Ok(())
}
