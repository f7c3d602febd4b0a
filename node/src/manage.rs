//! `palisade project|domain|bot|cert|key|audit|cluster|api …`: the admin API's resources from
//! the command line. Tables for people; `--json` prints the API's answer as it came.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::ctl::{call, call_json, q, ClientArgs, Payload};

/// Print `items` as a table of `columns` (header, JSON field); absent values show as `-`.
fn table(items: &[Value], columns: &[(&str, &str)]) {
    let cell = |v: &Value, field: &str| -> String {
        match &v[field] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        }
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| columns.iter().map(|(_, f)| cell(v, f)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn show(v: &Value, json: bool, columns: &[(&str, &str)]) {
    if json {
        println!("{v:#}");
        return;
    }
    match v["items"].as_array() {
        Some(items) => table(items, columns),
        None => table(std::slice::from_ref(v), columns),
    }
    if let Some(next) = v["next"].as_str() {
        println!("(more: --after {next})");
    }
}

const PROJECT_COLUMNS: &[(&str, &str)] =
    &[("ID", "id"), ("NAME", "name"), ("CREATED_AT", "created_at")];
const DOMAIN_COLUMNS: &[(&str, &str)] = &[
    ("HOST", "host"),
    ("PROJECT", "project"),
    ("UPSTREAMS", "upstreams"),
    ("TLS", "tls"),
    ("REDIRECT", "redirect_https"),
    ("BOT", "bot_override"),
];
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
const AUDIT_COLUMNS: &[(&str, &str)] = &[
    ("SEQ", "seq"),
    ("AT", "at"),
    ("ACTOR", "actor"),
    ("SOURCE", "source_ip"),
    ("ACTION", "action"),
    ("TARGET", "target"),
    ("OUTCOME", "outcome"),
];

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

#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    /// From this time on (Unix ms).
    #[arg(long)]
    since: Option<u64>,
    /// Before this time (Unix ms).
    #[arg(long)]
    until: Option<u64>,
    /// Actor prefix, such as `key:ab12` or `node:`.
    #[arg(long)]
    actor: Option<String>,
    /// An action, or a prefix ending in `.` (`ip_rule.`).
    #[arg(long)]
    action: Option<String>,
    /// Target prefix, such as `project/shop`.
    #[arg(long)]
    target: Option<String>,
    /// Print the matching entries as `json` or `csv` (every page), instead of a table.
    #[arg(long)]
    export: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn audit(a: AuditArgs) -> Result<()> {
    let mut filter = String::new();
    for (k, v) in [
        ("since", a.since.map(|t| t.to_string())),
        ("until", a.until.map(|t| t.to_string())),
        ("actor", a.actor),
        ("action", a.action),
        ("target", a.target),
    ] {
        if let Some(v) = v {
            filter.push_str(&format!("&{k}={}", q(&v)));
        }
    }
    match a.export.as_deref() {
        None => {
            let v = call_json(
                "GET",
                &a.client,
                &format!("/v1/audit?limit={}{filter}", a.limit),
                Payload::None,
            )?;
            show(&v, false, AUDIT_COLUMNS);
        }
        Some(format @ ("json" | "csv")) => {
            // Every page, as one JSON array or one CSV document.
            let mut after: Option<String> = None;
            let mut all = Vec::new();
            let mut first = true;
            loop {
                let cursor = after
                    .as_ref()
                    .map(|c| format!("&after={c}"))
                    .unwrap_or_default();
                let path = format!("/v1/audit?limit=10000{filter}{cursor}");
                let v = call_json("GET", &a.client, &path, Payload::None)?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                if format == "csv" {
                    let text = call(
                        "GET",
                        &a.client,
                        &format!("{path}&format=csv"),
                        Payload::None,
                    )?;
                    let body = if first {
                        &text[..]
                    } else {
                        text.split_once('\n').map(|x| x.1).unwrap_or("")
                    };
                    print!("{body}");
                    first = false;
                } else {
                    all.extend(items);
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            if format == "json" {
                println!("{:#}", Value::Array(all));
            }
        }
        Some(other) => anyhow::bail!("--export takes json or csv, not {other:?}"),
    }
    Ok(())
}

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
        ClusterCmd::Status(c) => crate::status(&c)?,
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

/// Any admin API call: `palisade api GET /v1/projects`, `palisade api PUT /v1/settings '{…}'`.
#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    method: String,
    path: String,
    /// A JSON body, or `@FILE` to read one.
    body: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn api(a: ApiArgs) -> Result<()> {
    let body = match a.body {
        None => Payload::None,
        Some(b) => {
            let text = match b.strip_prefix('@') {
                Some(file) => {
                    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
                }
                None => b,
            };
            Payload::Json(serde_json::from_str(&text).context("the body is not JSON")?)
        }
    };
    print!(
        "{}",
        call(&a.method.to_uppercase(), &a.client, &a.path, body)?
    );
    println!();
    Ok(())
}
