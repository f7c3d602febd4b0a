//! `palisade cert ls|status|renew|upload`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use super::client::{call_json, ClientArgs, Payload};
use super::output::show;

#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// List certificates: names, issuer, validity, status.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Where automatic certificates stand: state, owner node, failures, next attempt, last
    /// error.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask for a new certificate for HOST now (domains with `tls = acme`).
    Renew {
        host: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upload a certificate chain and its key for domains with `tls = manual`.
    Upload {
        #[arg(long)]
        name: String,
        #[arg(long)]
        chain: PathBuf,
        #[arg(long)]
        key_file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn cert(cmd: CertCmd) -> Result<()> {
    match cmd {
        CertCmd::Ls { json, client } => {
            let v = call_json(
                "GET",
                &client,
                "/v1/certificates?limit=10000",
                Payload::None,
            )?;
            show(
                &v,
                json,
                &[
                    ("NAME", "name"),
                    ("HOSTS", "hosts"),
                    ("STATUS", "status"),
                    ("NOT_AFTER", "not_after"),
                    ("SOURCE", "source"),
                    ("ISSUER", "issuer"),
                ],
            );
        }
        CertCmd::Status { json, client } => {
            let v = call_json(
                "GET",
                &client,
                "/v1/certificates/acme?limit=10000",
                Payload::None,
            )?;
            show(
                &v,
                json,
                &[
                    ("HOST", "host"),
                    ("STATE", "state"),
                    ("OWNER", "owner"),
                    ("FAILURES", "failures"),
                    ("NEXT_ATTEMPT_AT", "next_attempt_at"),
                    ("LAST_ERROR", "last_error"),
                ],
            );
        }
        CertCmd::Renew { host, client } => {
            let path = format!("/v1/certificates/{host}/renew");
            let v = call_json("POST", &client, &path, Payload::None)?;
            println!(
                "renewal of {host} requested (log index {}); its owner orders at its next pass",
                v["index"]
            );
        }
        CertCmd::Upload {
            name,
            chain,
            key_file,
            client,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let body =
                json!({ "name": name, "chain_pem": read(&chain)?, "key_pem": read(&key_file)? });
            let v = call_json("POST", &client, "/v1/certificates", Payload::Json(body))?;
            println!("certificate {name} stored (log index {})", v["index"]);
        }
    }
    Ok(())
}
