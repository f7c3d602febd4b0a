//! What each security feature costs one node: headers, a large IP list, bot protection.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_testkit::cluster::TestCluster;
use palisade_testkit::probe::Upstream;
use serde_json::json;

use crate::bot::{clearance_cookie, set_bot, USER_AGENT};
use crate::cpu;
use crate::iprules::{http_addrs, site, BigList};
use crate::load::{self, Spec, Target};
use crate::report::{Better, Row, Run, Section};

use super::*;

/// `features`: one node's throughput with each security feature on alone, against all off.
pub fn features(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("features: starting one node");
    cpu::pin_self(&cpu::all_cores());
    let up = Upstream::spawn()?;
    let c = TestCluster::start(
        &ctx.bin,
        1,
        &[
            ("PALISADE_WORKERS", "1"),
            ("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )?;
    let no_headers = json!({ "headers": { "hsts_max_age": 0, "hsts_include_subdomains": false, "nosniff": false, "frame_deny": false, "xss_protection": false, "keep_upstream": true } });
    let variants = [
        ("off", "all features off"),
        ("headers", "security headers"),
        ("ip1k", "IP block list, 1,000 entries"),
        ("ip1m", "IP block list, 1,000,000 entries"),
        ("bot", "bot protection on, valid clearance cookie"),
    ];
    for (id, _) in variants {
        site(&c, 0, id, &format!("{id}.test"), up.addr)?;
        if id != "headers" {
            let r = c.patch(0, &format!("/v1/projects/{id}"), no_headers.clone())?;
            if r.status != 200 {
                bail!("turning headers off for {id}: {} {}", r.status, r.body);
            }
        }
    }
    let big = BigList::generate(1_000_000, 3);
    let small = BigList::generate(1_000, 4);
    for (id, list) in [("ip1k", &small), ("ip1m", &big)] {
        ctx.progress(&format!(
            "features: importing {} entries into {id}",
            list.len()
        ));
        let (status, body) = c.post_raw(
            0,
            &format!("/v1/projects/{id}/ip-rules/import?list=block"),
            "text/plain",
            list.text.clone().into_bytes(),
        )?;
        if status != 200 {
            bail!("importing into {id}: {status} {body}");
        }
    }
    // Every request comes from another address that neither list holds (a full lookup that
    // ends in "allowed"); the bot project's from the one address its cookie is bound to.
    let xff: Vec<String> = big
        .non_members(4096, 5)
        .into_iter()
        .filter(|a| !small.covers(*a))
        .map(|a| Ipv4Addr::from(a).to_string())
        .collect();
    set_bot(
        &c,
        "bot",
        json!({ "mode": "always_on", "difficulty_bits": 8 }),
    )?;
    let addr = http_addrs(&c)[0];
    let cookie = clearance_cookie(addr, "bot.test", Some(&xff[0]))?;
    let targets: Vec<Target> = variants
        .iter()
        .map(|(id, _)| {
            let mut t = Target::new(addr, &format!("{id}.test"));
            t.headers = vec![
                ("user-agent".into(), USER_AGENT.into()),
                ("accept".into(), "text/html".into()),
            ];
            if *id == "bot" {
                t.headers.push(("cookie".into(), cookie.clone()));
                t.xff = vec![xff[0].clone()];
            } else {
                t.xff = xff.clone();
            }
            t
        })
        .collect();
    let pid = c.nodes[0].pid().context("the node is running")?;
    // After a million-rule import the node compacts and rebuilds for a while, on the core it
    // is pinned to: measured then, that work lands on whichever variant runs.
    ctx.progress("features: waiting for the node to be idle after the imports");
    let (waited, quiet) = cpu::settle(pid, Duration::from_secs(120));
    let pinned = cpu::pin_apart(pid);
    for t in &targets {
        load::run(
            std::slice::from_ref(t),
            &Spec {
                measure: ctx.warmup(),
                ..ctx.closed(CONNS)
            },
        );
    }
    let n = variants.len();
    let (mut rate, mut cpu_us) = (per_target(n), per_target(n));
    for rep in 0..ctx.repeats() {
        for i in 0..n {
            let what = format!("features, {}", variants[i].1);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &ctx.closed(CONNS), || {
                cpu::cpu_seconds(pid)
            });
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
        }
    }
    let cols = ["feature on", "all features off"];
    let mut sec = Section::new(
        "features",
        "what each security feature costs",
        &format!(
            "One node (one worker) on core 0, plain HTTP keep-alive, {CONNS} connections, closed loop, {:.1} s per run, {} runs per variant, variants interleaved. \
             Five projects on the same node: all features off (no security headers, no IP rules, bot protection off), and each feature on alone. \
             Every request carries `X-Forwarded-For` (the load generator is a trusted proxy) with an address no list holds, so each lookup is a full one; \
             0 IP rules is the all-off baseline.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &cols,
    );
    if !pinned {
        sec.notes
            .push("Not pinned (one core, or no `taskset`).".into());
    }
    sec.notes.push(match quiet {
        true => format!(
            "Measured once the node was idle after the imports (under 2% of a core over half a second; {:.1} s after the last import).",
            waited.as_secs_f64()
        ),
        false => format!(
            "The node was still busy {:.0} s after the imports (compaction): its CPU figures include that work.",
            waited.as_secs_f64()
        ),
    });
    for i in 1..n {
        sec.push(
            Row::new(
                &format!("{}: rate", variants[i].1),
                "requests/s",
                Better::Higher,
            )
            .cell(cols[0], rate[i].clone())
            .cell(cols[1], rate[0].clone()),
        );
        sec.push(
            Row::new(
                &format!("{}: node CPU per request", variants[i].1),
                "µs",
                Better::Lower,
            )
            .cell(cols[0], cpu_us[i].clone())
            .cell(cols[1], cpu_us[0].clone()),
        );
    }
    Ok(sec)
}
