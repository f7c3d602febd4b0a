//! `palisade ip add|rm|clear|ls|import|export|check`: IP allow and block lists, per project or
//! the cluster-wide block list.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{call, call_json, q, ClientArgs, Payload};

#[derive(clap::Args)]
pub(crate) struct Scope {
    /// The project whose lists to use; without it, the cluster-wide block list.
    #[arg(long, short)]
    project: Option<String>,
}

impl Scope {
    fn base(&self) -> String {
        match &self.project {
            Some(p) => format!("/v1/projects/{}/ip-rules", q(p)),
            None => "/v1/cluster/ip-rules".into(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum IpCmd {
    /// Add an address or CIDR to a list.
    Add {
        #[command(flatten)]
        scope: Scope,
        /// allow or block.
        #[arg(long, default_value = "block")]
        list: String,
        cidr: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Expire the entry after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an entry.
    Rm {
        #[command(flatten)]
        scope: Scope,
        #[arg(long, default_value = "block")]
        list: String,
        cidr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove every entry of a list.
    Clear {
        #[command(flatten)]
        scope: Scope,
        #[arg(long)]
        list: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List entries (first page; `--after` continues).
    Ls {
        #[command(flatten)]
        scope: Scope,
        #[arg(long)]
        list: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import a file: one address/CIDR per line, or CSV (`cidr,note,expires_at`) when the file
    /// name ends in `.csv`. Nothing is written unless every line is good (or `--partial`).
    Import {
        #[command(flatten)]
        scope: Scope,
        #[arg(long, default_value = "block")]
        list: String,
        file: PathBuf,
        #[arg(long)]
        partial: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Export a list as CSV (or JSON with `--json`) to standard output.
    Export {
        #[command(flatten)]
        scope: Scope,
        #[arg(long, default_value = "block")]
        list: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Would this address be let through for this project, and by which entry?
    Check {
        #[arg(long, short)]
        project: String,
        ip: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn print_rules(items: &[Value]) {
    println!(
        "{:<6} {:<44} {:<14} {:<24} NOTE",
        "LIST", "CIDR", "EXPIRES_AT", "CREATED_BY"
    );
    for r in items {
        println!(
            "{:<6} {:<44} {:<14} {:<24} {}",
            r["list"].as_str().unwrap_or(""),
            r["cidr"].as_str().unwrap_or(""),
            r["expires_at"]
                .as_u64()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            r["created_by"].as_str().unwrap_or(""),
            r["note"].as_str().unwrap_or("")
        );
    }
}

pub(crate) fn ip(cmd: IpCmd) -> Result<()> {
    match cmd {
        IpCmd::Add {
            scope,
            list,
            cidr,
            note,
            ttl,
            client,
        } => {
            let mut body = json!({ "list": list, "cidr": cidr, "note": note });
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(t);
            }
            let v = call_json("POST", &client, &scope.base(), Payload::Json(body))?;
            println!(
                "added {} to the {list} list (log index {})",
                v["rule"]["cidr"].as_str().unwrap_or(&cidr),
                v["index"]
            );
        }
        IpCmd::Rm {
            scope,
            list,
            cidr,
            client,
        } => {
            let path = format!("{}?list={}&cidr={}", scope.base(), q(&list), q(&cidr));
            let v = call_json("DELETE", &client, &path, Payload::None)?;
            println!(
                "removed {cidr} from the {list} list (log index {})",
                v["index"]
            );
        }
        IpCmd::Clear {
            scope,
            list,
            client,
        } => {
            let path = format!("{}?list={}&all=true", scope.base(), q(&list));
            let v = call_json("DELETE", &client, &path, Payload::None)?;
            println!("removed {} entries from the {list} list", v["removed"]);
        }
        IpCmd::Ls {
            scope,
            list,
            limit,
            after,
            json,
            client,
        } => {
            let mut path = format!("{}?limit={limit}", scope.base());
            if let Some(l) = list {
                path.push_str(&format!("&list={}", q(&l)));
            }
            if let Some(a) = after {
                path.push_str(&format!("&after={}", q(&a)));
            }
            let v = call_json("GET", &client, &path, Payload::None)?;
            if json {
                println!("{v:#}");
            } else {
                print_rules(v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]));
                if let Some(next) = v["next"].as_str() {
                    println!("(more: --after {next})");
                }
            }
        }
        IpCmd::Import {
            scope,
            list,
            file,
            partial,
            json,
            client,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let ctype = if file.extension().is_some_and(|e| e == "csv") {
                "text/csv"
            } else {
                "text/plain"
            };
            let path = format!(
                "{}/import?list={}&partial={partial}",
                scope.base(),
                q(&list)
            );
            let v = call_json("POST", &client, &path, Payload::Raw(ctype, bytes))?;
            if json {
                println!("{v:#}");
            } else {
                println!(
                    "imported {} entries into the {list} list in {} ms ({} bad lines skipped)",
                    v["imported"], v["elapsed_ms"], v["invalid"]
                );
                for e in v["errors"].as_array().into_iter().flatten() {
                    println!(
                        "  line {}: {}",
                        e["line"],
                        e["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
        IpCmd::Export {
            scope,
            list,
            json,
            client,
        } => {
            let format = if json { "json" } else { "csv" };
            let path = format!("{}/export?list={}&format={format}", scope.base(), q(&list));
            print!("{}", call("GET", &client, &path, Payload::None)?);
        }
        IpCmd::Check {
            project,
            ip,
            json,
            client,
        } => {
            let path = format!("/v1/projects/{}/ip-rules/check?ip={}", q(&project), q(&ip));
            let v = call_json("GET", &client, &path, Payload::None)?;
            if json {
                println!("{v:#}");
            } else {
                let verdict = if v["allowed"].as_bool() == Some(true) {
                    "allowed"
                } else {
                    "refused"
                };
                let rule = &v["rule"];
                match rule["cidr"].as_str() {
                    Some(c) => println!(
                        "{} is {verdict} ({}): {} list entry {c} {}",
                        v["ip"].as_str().unwrap_or(&ip),
                        v["reason"].as_str().unwrap_or(""),
                        rule["list"].as_str().unwrap_or(""),
                        rule["note"].as_str().unwrap_or("")
                    ),
                    None => println!(
                        "{} is {verdict} ({})",
                        v["ip"].as_str().unwrap_or(&ip),
                        v["reason"].as_str().unwrap_or("")
                    ),
                }
            }
        }
    }
    Ok(())
}
