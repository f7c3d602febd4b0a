//! Bot protection: a project's policy, its decisions (who is challenged or blocked, until when;
//! added and lifted by hand), revoking every clearance at once, and the signing keyring.

use std::sync::Arc;

use palisade_raft::command::Command;
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::{
    prefix, schema, BotPolicy, Decision, DecisionAction, Record, RecordKey, Role,
};
use palisade_raft::now_ms;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{error, invalid, path_param, Caller, JsonBody, QueryParams};
use crate::openapi::{op, Op, ADMIN, OPERATOR, VIEWER};
use crate::read::{get_record, project, read_barrier, ReadOpts};
use crate::state::AdminState;
use crate::write::{apply, audit, internal, optional_text, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(Method::GET, "/v1/projects/:id/bot", VIEWER, "A project's bot protection policy", get_bot).query::<ReadOpts>(),
        op(Method::PUT, "/v1/projects/:id/bot", OPERATOR, "Set a project's bot protection policy", put_bot).json::<BotPolicy>(),
        op(Method::GET, "/v1/projects/:id/bot/decisions", VIEWER, "Sources the project challenges or blocks now (from triggers or by hand), and until when", list_decisions).query::<ReadOpts>(),
        op(Method::POST, "/v1/projects/:id/bot/decisions", OPERATOR, "Challenge or block an address or prefix for a while, on every node", add_decision).json::<NewDecision>(),
        op(Method::DELETE, "/v1/projects/:id/bot/decisions", OPERATOR, "Lift a decision (?prefix=)", remove_decision).query::<DecisionQuery>(),
        op(Method::POST, "/v1/projects/:id/bot/sessions/revoke", OPERATOR, "End every clearance of the project at once (bumps its epoch)", revoke_sessions),
        op(Method::GET, "/v1/bot/keys", ADMIN, "The bot-protection keyring: key ids, states and times (never the secrets)", list_bot_keys),
    ]
}

pub(crate) fn check_bot(field: &str, b: &BotPolicy) -> poem::Result<()> {
    let bad = |name: &str, why: String| match field {
        "" => invalid(name, why),
        _ => invalid(&format!("{field}.{name}"), why),
    };
    let range = |name: &str, v: u64, lo: u64, hi: u64| match (lo..=hi).contains(&v) {
        true => Ok(()),
        false => Err(bad(name, format!("{v} is not between {lo} and {hi}"))),
    };
    range("difficulty_bits", b.difficulty_bits.into(), 8, 28)?;
    range("session_minutes", b.session_minutes.into(), 1, 43_200)?;
    range(
        "manual_session_minutes",
        b.manual_session_minutes.into(),
        1,
        43_200,
    )?;
    range(
        "answer_within_seconds",
        b.answer_within_seconds.into(),
        10,
        300,
    )?;
    // The wait must end well before the challenge does.
    range(
        "no_script_wait_seconds",
        b.no_script_wait_seconds.into(),
        1,
        u64::from(b.answer_within_seconds / 2).min(120),
    )?;
    for (name, paths) in [
        ("exempt_paths", &b.exempt_paths),
        ("login_paths", &b.login_paths),
    ] {
        if paths.len() > 200 {
            return Err(bad(name, format!("{} entries; at most 200", paths.len())));
        }
        for (i, p) in paths.iter().enumerate() {
            let star = p.find('*');
            if !p.starts_with('/')
                || p.len() > 512
                || star.is_some_and(|at| at != p.len() - 1)
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(
                    &format!("{name}[{i}]"),
                    format!("{p:?} is not a path: it must start with /, have no spaces, and may end in one *"),
                ));
            }
            // Requests are compared in normal form, so a pattern in another form would never match.
            let stem = p.strip_suffix('*').unwrap_or(p);
            let normal = palisade_raft::model::path::normalize(stem);
            if normal != stem {
                return Err(bad(
                    &format!("{name}[{i}]"),
                    format!(
                        "{p:?} is not in normal form (percent-encoded letters decoded, no dot segments, \
                         no repeated slashes): write {:?}",
                        format!("{normal}{}", if p.ends_with('*') { "*" } else { "" })
                    ),
                ));
            }
        }
    }
    for (name, t) in b.triggers.all() {
        let at = |f: &str| format!("triggers.{name}.{f}");
        range(&at("threshold"), t.threshold.into(), 1, 10_000_000)?;
        range(&at("ipv6_prefix"), t.ipv6_prefix.into(), 48, 128)?;
        range(&at("window_seconds"), t.window_seconds.into(), 4, 86_400)?;
        range(
            &at("challenge_seconds"),
            t.challenge_seconds.into(),
            1,
            7 * 86_400,
        )?;
    }
    Ok(())
}

#[handler]
async fn get_bot(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    authorize(&state, &caller, Role::Viewer, Within::Project(&id)).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    Ok(Json(project(&state, &id)?.bot).into_response())
}

#[handler]
async fn put_bot(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<BotPolicy>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let bot = body.0;
    check_bot("", &bot)?;
    let mut project = project(&state, &id)?;
    // The epoch only grows (the state machine holds to it too, against a racing revocation):
    // a policy written without it, or from an older read, does not bring revoked cookies back.
    let epoch = project.bot.epoch.max(bot.epoch);
    project.bot = BotPolicy { epoch, ..bot };
    let entry = audit(&p, &caller, "bot.policy.put", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        false,
        json!({ "bot": project.bot }),
    )
    .await
}

#[handler]
async fn revoke_sessions(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let mut project = project(&state, &id)?;
    project.bot.epoch = project.bot.epoch.saturating_add(1);
    let entry = audit(&p, &caller, "bot.sessions.revoke", &format!("project/{id}"));
    apply(
        &state,
        &caller,
        Record::Project(project.clone()),
        entry,
        false,
        json!({ "epoch": project.bot.epoch }),
    )
    .await
}

#[handler]
async fn list_decisions(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    opts: QueryParams<ReadOpts>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    authorize(&state, &caller, Role::Viewer, Within::Project(&id)).await?;
    read_barrier(&state, opts.0.consistency.as_deref()).await?;
    project(&state, &id)?;
    let now = now_ms();
    let mut items = Vec::new();
    state
        .cluster
        .reader
        .for_each(&format!("{}{id}/", prefix::DECISION), |r| {
            if let Record::Decision(d) = r {
                if d.until > now {
                    items.push(d);
                }
            }
        })
        .map_err(internal)?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct NewDecision {
    /// An address or CIDR.
    #[schemars(with = "schema::CidrText")]
    prefix: String,
    /// `challenge` (default) or `block`.
    #[serde(default)]
    action: Option<DecisionAction>,
    /// 1 to 43,200 (30 days).
    #[schemars(range(min = 1, max = 43_200))]
    minutes: u32,
    #[serde(default)]
    #[schemars(schema_with = "schema::text::<200>")]
    reason: String,
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
struct DecisionQuery {
    /// The decision's address or CIDR.
    #[schemars(with = "schema::CidrText")]
    prefix: Option<String>,
}

fn parse_prefix(field: &str, raw: &str) -> poem::Result<Cidr> {
    raw.trim()
        .parse()
        .map_err(|e| invalid(field, format!("{raw:?} is not an address or CIDR: {e}")))
}

#[handler]
async fn add_decision(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<NewDecision>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let body = body.0;
    let prefix = parse_prefix("prefix", &body.prefix)?;
    optional_text("reason", &body.reason, 200)?;
    if body.minutes == 0 || body.minutes > 43_200 {
        return Err(invalid(
            "minutes",
            format!("{} is not between 1 and 43200", body.minutes),
        ));
    }
    project(&state, &id)?;
    let action = body.action.unwrap_or(DecisionAction::Challenge);
    let decision = Decision {
        project: id.clone(),
        prefix,
        action,
        until: now_ms() + u64::from(body.minutes) * 60_000,
        since: now_ms(),
        reason: match body.reason.trim() {
            "" => format!("by {}", p.actor()),
            r => r.to_string(),
        },
    };
    let target = format!("project/{id}/bot/decisions/{prefix}");
    let entry = audit(&p, &caller, "bot.decision.add", &target);
    apply(
        &state,
        &caller,
        Record::Decision(decision.clone()),
        entry,
        true,
        json!({ "decision": decision }),
    )
    .await
}

#[handler]
async fn remove_decision(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DecisionQuery>,
) -> ApiResult {
    let id: ProjectId = path_param("id", &id)?;
    let p = authorize(&state, &caller, Role::Operator, Within::Project(&id)).await?;
    let prefix = parse_prefix("prefix", q.prefix.as_deref().unwrap_or(""))?;
    let key = RecordKey::Decision {
        project: id.clone(),
        prefix,
    };
    if get_record(&state, &key)?.is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("project {id} has no decision for {prefix}"),
        ));
    }
    let entry = audit(
        &p,
        &caller,
        "bot.decision.remove",
        &format!("project/{id}/bot/decisions/{prefix}"),
    );
    apply(
        &state,
        &caller,
        Command::Delete { key },
        entry,
        false,
        json!({}),
    )
    .await
}

/// The keyring that signs clearance cookies, as operators may see it.
#[handler]
async fn list_bot_keys(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Admin, Within::Cluster).await?;
    read_barrier(&state, None).await?;
    let mut items = Vec::new();
    state
        .cluster
        .reader
        .for_each(prefix::BOTKEY, |r| {
            if let Record::BotKey(k) = r {
                items.push(json!({ "kid": k.kid, "state": k.state, "not_after": k.not_after }));
            }
        })
        .map_err(internal)?;
    Ok(Json(json!({ "items": items })).into_response())
}
