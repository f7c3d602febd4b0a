//! Bot protection in the request pipeline: who must pass the challenge, the page that sets it,
//! the answer that earns a clearance cookie, and what the triggers count.
//!
//! A request is challenged when its domain's mode (the domain's override, else the project's) is
//! `always_on`, or `automatic` and a decision covers the client (this node's, or the cluster's),
//! unless it carries a valid clearance cookie or its path is exempt. A `block` decision answers
//! 403 before anything else, exempt paths included. Browsers navigating (GET or
//! HEAD accepting `text/html`) get the challenge page; other clients get 429 with a JSON body,
//! `Retry-After` and `x-palisade-mitigated: challenge`.
//!
//! The page's script finds the proof of work and submits it to `/.well-known/palisade/verify`;
//! without JavaScript, a meta refresh in `<noscript>` submits a wait token that is accepted only
//! after `no_script_wait_seconds`. Either way the answer comes back as a `303` to the page asked
//! for, with the clearance cookie.

use std::sync::{Arc, OnceLock};

use crate::h1::RequestBody;
use base64::Engine;
use hyper::header::{HeaderValue, ACCEPT, COOKIE, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use palisade_raft::model::path::merge_slashes;
use palisade_raft::model::{login_matches, path_matches, BotMode, DecisionAction, Project};
use palisade_raft::now_ms;

use super::challenge::{
    challenge_binding, clearance_binding, ip_prefix, project_tag, work_bits, Challenge,
    ChallengeKind, Clearance, Expect, Refusal, ReplayGuard,
};
use super::detect::{Detector, Signal};
use super::memo;
use crate::pipeline::{Gate, RequestCtx};
use crate::response::{error_page, full, Body};
use crate::view::{LiveView, Running, View};

/// Where the edge answers its own bot-protection requests, on every protected host.
pub const PREFIX: &str = "/.well-known/palisade/";
pub const VERIFY_PATH: &str = "/.well-known/palisade/verify";
/// The clearance cookie over HTTPS (`__Host-`: Secure, no Domain, Path=/) and over plain HTTP.
pub const CLEARANCE_COOKIE: &str = "__Host-palisade_clearance";
pub const CLEARANCE_COOKIE_PLAIN: &str = "palisade_clearance";
/// Answers remembered against replay.
const REPLAY_CAP: usize = 200_000;

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}\
main{max-width:34rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin-top:0}#status{min-height:3em}button{font:inherit;padding:.5rem 1rem}\
.rid{color:#555;font-size:.85rem}";
const SCRIPT: &str = include_str!("challenge.js");

fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
        };
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        )
    })
}

pub struct BotGate {
    view: Arc<LiveView>,
    detector: Arc<Detector>,
    replay: ReplayGuard,
}

impl BotGate {
    pub fn new(view: Arc<LiveView>, detector: Arc<Detector>) -> BotGate {
        BotGate {
            view,
            detector,
            replay: ReplayGuard::new(REPLAY_CAP),
        }
    }
}

fn mode_of(ctx: &RequestCtx<'_>, project: &Project) -> BotMode {
    ctx.route.domain.bot_override.unwrap_or(project.bot.mode)
}

fn header(req: &Request<RequestBody>, name: hyper::header::HeaderName) -> &[u8] {
    req.headers()
        .get(name)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"")
}

/// A browser navigation: GET or HEAD that accepts HTML.
fn navigation(req: &Request<RequestBody>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && std::str::from_utf8(header(req, ACCEPT)).is_ok_and(|a| a.contains("text/html"))
}

fn cookie_value<'a>(req: &'a Request<RequestBody>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Gate for BotGate {
    fn check(&self, ctx: &RequestCtx<'_>, req: &Request<RequestBody>) -> Option<Response<Body>> {
        let project = ctx.project?;
        let mode = mode_of(ctx, project);
        // The pipeline has put the path in forward form; comparisons are in normal form (its
        // slashes merged). A `block` outranks every exemption, whatever the domain's bot mode.
        let normal = merge_slashes(req.uri().path());
        let path = normal.as_ref();
        let now = ctx.now;
        let ip = ctx.client_ip;
        let view = self.view.get();
        let decided = view.decision(&project.id, ip, now);
        if let Some(Running {
            action: DecisionAction::Block,
            ..
        }) = decided
        {
            return Some(error_page(
                StatusCode::FORBIDDEN,
                "Access to this site is not allowed from your network for now.",
                ctx.request_id,
                !navigation(req),
            ));
        }
        if mode == BotMode::Off {
            return None;
        }
        if path == VERIFY_PATH {
            return Some(self.verify(ctx, req, project, mode));
        }
        // The ACME path needs no exemption: over plain HTTP the edge answers it before any gate,
        // and over HTTPS it is the upstream's like any other path.
        if path == "/robots.txt" || path_matches(&project.bot.exempt_paths, path) {
            return None;
        }
        let cleared_at = self.clearance(ctx, req, project, &view, now);
        ctx.cleared_at.set(cleared_at);
        // Until when the client is challenged, and since when (a clearance older than that
        // does not pass).
        let mut until: Option<(u64, u64)> = None;
        if mode == BotMode::Automatic {
            let (id, t) = (&project.id, &project.bot.triggers);
            let d = &self.detector;
            d.count(
                id,
                Signal::RequestRate,
                ip,
                &t.request_rate,
                now,
                cleared_at,
            );
            d.count(
                id,
                Signal::RequestRateV6_64,
                ip,
                &t.request_rate_v6_64,
                now,
                cleared_at,
            );
            // One pass over the names the request has, not two lookups.
            let (mut agent, mut accept) = (false, false);
            for name in req.headers().keys() {
                agent |= name == USER_AGENT;
                accept |= name == ACCEPT;
            }
            if !agent || !accept {
                d.count(
                    id,
                    Signal::MissingHeaders,
                    ip,
                    &t.missing_headers,
                    now,
                    cleared_at,
                );
            }
            until = d.decided(id, ip, now);
        }
        if let Some(r) = decided {
            until = Some(match until {
                Some((u, at)) => (u.max(r.until), at.max(r.since)),
                None => (r.until, r.since),
            });
        }
        if mode == BotMode::Automatic && until.is_none() {
            return None;
        }
        let since = until.map_or(0, |(_, since)| since);
        if cleared_at.is_some_and(|issued| issued >= since) {
            return None;
        }
        // Switched on by hand, the challenge has no end to announce.
        let retry_after = until
            .filter(|_| mode == BotMode::Automatic)
            .map(|(u, _)| u.saturating_sub(now).div_ceil(1000))
            .unwrap_or(60);
        Some(self.challenge(ctx, req, project, &view, retry_after, None))
    }

    fn observe(&self, ctx: &RequestCtx<'_>, path: &str, status: StatusCode) {
        let Some(project) = ctx.project else {
            return;
        };
        if mode_of(ctx, project) != BotMode::Automatic || !status.is_client_error() {
            return;
        }
        // The clock now, not the request's arrival: an answer may come long after (a slow
        // upload), and counting it in a sub-window already reused would clear that one.
        let (id, t, now) = (&project.id, &project.bot.triggers, now_ms());
        let cleared_at = ctx.cleared_at.get();
        self.detector.count(
            id,
            Signal::ClientErrors,
            ctx.client_ip,
            &t.client_errors,
            now,
            cleared_at,
        );
        if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
            && login_matches(&project.bot.login_paths, path)
        {
            self.detector.count(
                id,
                Signal::FailedLogins,
                ctx.client_ip,
                &t.failed_logins,
                now,
                cleared_at,
            );
        }
    }
}

impl BotGate {
    /// When the clearance the request carries was issued, if it is one this project honours for
    /// this client: signed by the keyring, this project's and epoch's, bound to this client,
    /// unexpired, and earned by the proof of work unless the project allows the no-script wait.
    fn clearance(
        &self,
        ctx: &RequestCtx<'_>,
        req: &Request<RequestBody>,
        project: &Project,
        view: &View,
        now: u64,
    ) -> Option<u64> {
        let name = if ctx.https {
            CLEARANCE_COOKIE
        } else {
            CLEARANCE_COOKIE_PLAIN
        };
        let value = cookie_value(req, name)?;
        let user_agent = header(req, USER_AGENT);
        let refused = |why: &'static str| {
            metrics::counter!("palisade_bot_cookies_refused_total", "reason" => why).increment(1);
            None
        };
        let presented = memo::Presented {
            value,
            prefix: ip_prefix(ctx.client_ip),
            user_agent,
            project: &project.id,
            epoch: project.bot.epoch,
            keys: view.bot_keys.generation(),
        };
        let honoured = match memo::get(&presented, now) {
            Some(h) => h,
            None => {
                let expect = Expect {
                    now_ms: now,
                    project: project_tag(project.id.as_str()),
                    epoch: project.bot.epoch,
                    binding: clearance_binding(ctx.client_ip, user_agent),
                };
                match Clearance::verify(&view.bot_keys, value, &expect) {
                    Ok(c) => {
                        let h = memo::Honoured {
                            issued_ms: c.issued_ms,
                            expires_ms: c.expires_ms,
                            level: c.level,
                        };
                        memo::put(&presented, h);
                        h
                    }
                    Err(why) => return refused(why.as_str()),
                }
            }
        };
        if honoured.level == 0 && !project.bot.allow_no_script {
            return refused("no_script");
        }
        Some(honoured.issued_ms)
    }

    /// The challenge page for a navigation, 429 JSON for anything else.
    fn challenge(
        &self,
        ctx: &RequestCtx<'_>,
        req: &Request<RequestBody>,
        project: &Project,
        view: &View,
        retry_after: u64,
        refused: Option<Refusal>,
    ) -> Response<Body> {
        metrics::counter!("palisade_bot_challenges_total", "project" => project.id.to_string(), "kind" => if navigation(req) { "page" } else { "api" }).increment(1);
        if !navigation(req) {
            let detail = match refused {
                Some(r) => format!("The challenge answer was refused: {}", r.explain()),
                None => "This client must pass a browser check before it can continue. \
                         Retry later, or open the site in a browser."
                    .to_string(),
            };
            let body = serde_json::json!({
                "status": 429,
                "error": "Too Many Requests",
                "detail": detail,
                "reason": refused.map(Refusal::as_str).unwrap_or("challenge"),
                "retry_after": retry_after,
                "request_id": ctx.request_id,
            });
            let mut r = Response::new(full(body.to_string()));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("retry-after", HeaderValue::from(retry_after));
            h.insert(
                "x-palisade-mitigated",
                HeaderValue::from_static("challenge"),
            );
            h.insert("cache-control", HeaderValue::from_static("no-store"));
            return r;
        }
        let Some(key) = view.bot_keys.active() else {
            return starting(ctx.request_id);
        };
        let now = now_ms();
        let binding = challenge_binding(
            ctx.client_ip,
            header(req, USER_AGENT),
            ctx.host,
            project.id.as_str(),
        );
        let mut seed = [0u8; 16];
        palisade_raft::crypto::fill_random(&mut seed);
        let work = Challenge {
            kid: key.kid,
            issued_ms: now,
            expires_ms: now + u64::from(project.bot.answer_within_seconds.min(300)) * 1000,
            bits: project.bot.difficulty_bits,
            kind: ChallengeKind::Work,
            seed,
            binding,
        };
        palisade_raft::crypto::fill_random(&mut seed);
        let wait_s = project.bot.no_script_wait_seconds.min(255) as u8;
        let wait = Challenge {
            bits: wait_s,
            kind: ChallengeKind::Wait,
            seed,
            ..work.clone()
        };
        let back = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let wait_url = format!(
            "{VERIFY_PATH}?t={}&n=&r={}",
            wait.encode(key),
            form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
        );
        let notice = refused
            .map(|r| format!("<p>{} A new check follows.</p>", r.explain()))
            .unwrap_or_default();
        // Without JavaScript the check is a wait, where the project allows it.
        let (refresh, no_script) = match project.bot.allow_no_script {
            true => (
                format!(
                    r#"<noscript><meta http-equiv="refresh" content="{wait_s};url={wait_attr}"></noscript>"#,
                    wait_attr = escape(&wait_url)
                ),
                format!(
                    r#"<noscript><p>JavaScript is off, so this check is a wait: the page continues by itself in {wait_s} seconds. If it does not, follow <a href="{wait_attr}">this link</a> once the wait is over.</p></noscript>"#,
                    wait_attr = escape(&wait_url)
                ),
            ),
            false => (
                String::new(),
                "<noscript><p>This site needs JavaScript for the check: please turn it on and reload the page.</p></noscript>".to_string(),
            ),
        };
        let html = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex">
<title>Checking your browser</title>
{refresh}
<style>{STYLE}</style></head>
<body><main>
<h1>One moment, please</h1>
{notice}<p id="status" role="status" aria-live="polite">Checking that this is a browser operated by a person&hellip;</p>
{no_script}
<form id="answer" method="get" action="{VERIFY_PATH}" data-seed="{seed}" data-bits="{bits}">
<input type="hidden" name="t" value="{token}"><input type="hidden" id="nonce" name="n" value=""><input type="hidden" id="ms" name="ms" value="">
<input type="hidden" name="r" value="{back_attr}">
<button type="submit" id="go">Continue</button>
</form>
<p class="rid">Request id: <code>{rid}</code></p>
</main>
<script>{SCRIPT}</script>
</body></html>
"#,
            seed = work.seed_hex(),
            bits = work.bits,
            token = work.encode(key),
            back_attr = escape(back),
            rid = escape(ctx.request_id),
        );
        let mut r = Response::new(full(if req.method() == Method::HEAD {
            String::new()
        } else {
            html
        }));
        *r.status_mut() = StatusCode::FORBIDDEN;
        let h = r.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert("content-security-policy", HeaderValue::from_static(csp()));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        h.insert(
            "x-palisade-mitigated",
            HeaderValue::from_static("challenge"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
        r
    }

    /// Check an answer and, when it holds, set the clearance and send the client back.
    fn verify(
        &self,
        ctx: &RequestCtx<'_>,
        req: &Request<RequestBody>,
        project: &Project,
        mode: BotMode,
    ) -> Response<Body> {
        let view = self.view.get();
        let now = now_ms();
        let (mut token, mut nonce, mut back, mut ms) = (None, String::new(), String::new(), None);
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "t" => token = Some(v.into_owned()),
                "n" => nonce = v.into_owned(),
                "r" => back = v.into_owned(),
                "ms" => ms = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let ua = header(req, USER_AGENT);
        let checked = token
            .as_deref()
            .ok_or(Refusal::Malformed)
            .and_then(|t| Challenge::decode(&view.bot_keys, t))
            .and_then(|c| {
                if c.expires_ms <= now {
                    return Err(Refusal::Expired);
                }
                let bound = challenge_binding(ctx.client_ip, ua, ctx.host, project.id.as_str());
                if c.binding != bound {
                    return Err(Refusal::OtherClient);
                }
                match c.kind {
                    ChallengeKind::Work if work_bits(&c.seed, &nonce) < u32::from(c.bits) => {
                        Err(Refusal::WrongAnswer)
                    }
                    ChallengeKind::Wait if !project.bot.allow_no_script => {
                        Err(Refusal::NoScriptOff)
                    }
                    ChallengeKind::Wait if now < c.issued_ms + u64::from(c.bits) * 1000 => {
                        Err(Refusal::TooEarly)
                    }
                    _ if !self.replay.first_use(c.seed, c.expires_ms, now) => {
                        Err(Refusal::Replayed)
                    }
                    _ => Ok(c),
                }
            });
        let outcome = match &checked {
            Ok(_) => "accepted",
            Err(r) => r.as_str(),
        };
        metrics::counter!("palisade_bot_answers_total", "outcome" => outcome).increment(1);
        let c = match checked {
            Ok(c) => c,
            Err(why) => {
                tracing::info!(client_ip = %ctx.client_ip, request_id = ctx.request_id, reason = why.as_str(), "challenge answer refused");
                let mut r = self.challenge(ctx, req, project, &view, 60, Some(why));
                if r.status() == StatusCode::TOO_MANY_REQUESTS {
                    *r.status_mut() = StatusCode::FORBIDDEN;
                }
                return r;
            }
        };
        if let Some(ms) = ms {
            metrics::histogram!("palisade_bot_solve_seconds").record(ms as f64 / 1000.0);
        }
        // How much work the answer took (the nonce counts the tries): what tunes the difficulty.
        let tries = u64::from_str_radix(&nonce, 16).map(|n| n + 1).unwrap_or(0);
        tracing::info!(request_id = ctx.request_id, project = %project.id, bits = c.bits, tries, solve_ms = ms, "challenge answered");
        let Some(key) = view.bot_keys.active() else {
            return starting(ctx.request_id);
        };
        let minutes = match mode {
            BotMode::AlwaysOn => project.bot.manual_session_minutes,
            _ => project.bot.session_minutes,
        };
        let lifetime_ms = u64::from(minutes) * 60_000;
        let clearance = Clearance {
            kid: key.kid,
            issued_ms: now,
            expires_ms: now + lifetime_ms,
            level: match c.kind {
                ChallengeKind::Work => c.bits,
                ChallengeKind::Wait => 0,
            },
            epoch: project.bot.epoch,
            project: project_tag(project.id.as_str()),
            binding: clearance_binding(ctx.client_ip, ua),
        };
        // A `Secure` cookie cannot be set over plain HTTP, nor the `__Host-` name without it.
        let (name, secure) = match ctx.https {
            true => (CLEARANCE_COOKIE, "; Secure"),
            false => (CLEARANCE_COOKIE_PLAIN, ""),
        };
        let cookie = format!(
            "{name}={}; Path=/; Max-Age={}{secure}; HttpOnly; SameSite=Lax",
            clearance.encode(key),
            lifetime_ms / 1000
        );
        let back = match local_path(&back) {
            true => back,
            false => "/".to_string(),
        };
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SEE_OTHER;
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&back) {
            h.insert("location", v);
        } else {
            h.insert("location", HeaderValue::from_static("/"));
        }
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert("set-cookie", v);
        }
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        r
    }
}

/// Before the cluster's first key exists (seconds after it starts), no challenge can be signed.
fn starting(request_id: &str) -> Response<Body> {
    let mut r = error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "This site's browser check is starting. Try again in a few seconds.",
        request_id,
        false,
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("5"));
    r
}

/// Whether `back` is a path on this site, so that the redirect after an answer is never an open
/// redirect: one leading `/`, no backslash, and nothing a browser strips from a URL (tabs, line
/// breaks, spaces: `/<TAB>/evil.test` would become `//evil.test`).
fn local_path(back: &str) -> bool {
    back.starts_with('/')
        && !back.starts_with("//")
        && !back.bytes().any(|b| b == b'\\' || b <= b' ' || b == 0x7f)
}

/// Escape for HTML text and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_only_ever_redirects_within_the_site() {
        for ok in ["/", "/account?tab=1", "/a/b%2F%2Fc"] {
            assert!(local_path(ok), "{ok}");
        }
        for bad in [
            "",
            "https://evil.test/",
            "//evil.test",
            "/\\evil.test",
            "/\t/evil.test",
            "/\n/evil.test",
            " //evil.test",
            "evil",
        ] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }
}
