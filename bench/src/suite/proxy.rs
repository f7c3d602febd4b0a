//! The proxy scenarios: keep-alive throughput and latency over HTTP and HTTPS, and full TLS
//! handshakes.

use std::time::Duration;

use anyhow::Result;

use crate::load::{self, Mode, Outcome, Spec, Target};
use crate::report::{latency_svg, median, Better, Run, Section};

use super::*;

/// `proxy-http` and `proxy-https`: closed-loop maximum, then open-loop latency at fixed shares
/// of the slowest proxy's maximum.
pub fn proxy(ctx: &mut Ctx, https: bool) -> Result<Section> {
    let scenario = if https { "proxy-https" } else { "proxy-http" };
    ctx.progress(&format!("{scenario}: starting Palisade, nginx and HAProxy"));
    let p = Proxies::start(ctx)?;
    let names = p.names;
    let targets: Vec<Target> = (0..3).map(|i| p.target(i, https)).collect();
    let mut sec = Section::new(
        scenario,
        if https {
            "keep-alive HTTPS (TLS 1.3, X25519, ECDSA P-256), 1 KiB answers"
        } else {
            "keep-alive plain HTTP, 1 KiB answers"
        },
        &format!(
            "One Palisade node, nginx and HAProxy, one worker each, in front of the same local upstream (keep-alive to it), each adding the same security headers. \
             Closed loop: {CONNS} connections sending back to back for {:.1} s. Open loop: {CONNS} connections at a fixed total rate (50%, 75%, 90% of the slowest proxy's closed-loop median), \
             latency timed from each request's scheduled send time when the previous answer made it late (coordinated omission corrected), after {:.1} s of warm-up. \
             {} runs each, targets interleaved. CPU: the proxy's user + system time over the run (nginx: master and worker).",
            ctx.measure().as_secs_f64(),
            ctx.warmup().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(p.pinning_note());
    for t in &targets {
        load::run(std::slice::from_ref(t), &ctx.closed(CONNS));
    }
    let (mut rate, mut cpu_us, mut busy) = (per_target(3), per_target(3), per_target(3));
    for rep in 0..ctx.repeats() {
        for i in 0..3 {
            let what = format!("{scenario} closed loop, {}", names[i]);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &ctx.closed(CONNS), || {
                p.cpu(i)
            });
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
            busy[i].push(Run::of(used / o.seconds * 100.0, &o));
        }
    }
    sec.push(row(
        &format!("maximum rate, closed loop, {CONNS} connections"),
        "requests/s",
        Better::Higher,
        &names,
        rate,
    ));
    sec.push(row(
        "proxy CPU per request",
        "µs",
        Better::Lower,
        &names,
        cpu_us,
    ));
    sec.push(row(
        "proxy CPU busy during the closed-loop run",
        "% of one core",
        Better::Lower,
        &names,
        busy,
    ));
    // The slowest valid closed-loop median; invalid cells have none.
    let slowest = sec.rows[0]
        .cells
        .iter()
        .filter_map(|c| c.median())
        .fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() {
        sec.notes
            .push("No proxy had a valid closed-loop maximum: open-loop runs skipped.".into());
        return Ok(sec);
    }
    for share in OPEN_LOOP_SHARES {
        let r = (share * slowest).round();
        let spec = Spec {
            conns: CONNS,
            warmup: ctx.warmup(),
            measure: ctx.measure(),
            mode: Mode::Open { rate: r },
        };
        let (mut p50, mut p99, mut p999) = (per_target(3), per_target(3), per_target(3));
        let mut spectra: Vec<Vec<Outcome>> = vec![Vec::new(); 4];
        for rep in 0..ctx.repeats() {
            for i in 0..3 {
                let o = load::run(std::slice::from_ref(&targets[i]), &spec).remove(0);
                ctx.progress(&format!(
                    "{scenario} open loop {:.0}% ({r} req/s), run {}/{}: {} p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms{}",
                    share * 100.0,
                    rep + 1,
                    ctx.repeats(),
                    names[i],
                    o.percentile_ms(50.0),
                    o.percentile_ms(99.0),
                    o.percentile_ms(99.9),
                    invalid(&o)
                ));
                p50[i].push(Run::of(o.percentile_ms(50.0), &o));
                p99[i].push(Run::of(o.percentile_ms(99.0), &o));
                p999[i].push(Run::of(o.percentile_ms(99.9), &o));
                spectra[i].push(o);
            }
            // The floor of the measurement: the same schedule straight to the upstream.
            let o = load::run(&[Target::new(p.up.addr, HOST)], &spec).remove(0);
            spectra[3].push(o);
        }
        let label = format!(
            "{:.0}% of the slowest maximum ({} req/s)",
            share * 100.0,
            crate::report::num(r)
        );
        for (name, runs) in [("p50", p50), ("p99", p99), ("p99.9", p999)] {
            sec.push(row(
                &format!("{name} latency at {label}"),
                "ms",
                Better::Lower,
                &names,
                runs,
            ));
        }
        let floor: Vec<String> = [50.0, 99.0, 99.9]
            .iter()
            .map(|q| {
                let mut v: Vec<f64> = spectra[3].iter().map(|o| o.percentile_ms(*q)).collect();
                v.sort_by(f64::total_cmp);
                format!("p{q} {} ms", crate::report::num(median(&v)))
            })
            .collect();
        let floor_problem = spectra[3].iter().find_map(|o| o.problem());
        sec.notes.push(format!(
            "Measurement floor at {label}: the load generator straight to the upstream (plain HTTP, no proxy), same schedule, medians of {} runs: {}{}.",
            ctx.repeats(),
            floor.join(", "),
            floor_problem.map(|p| format!(" (INVALID: {p})")).unwrap_or_default()
        ));
        // The chart shows, per proxy, the run whose p99 is the median of its runs.
        let series: Vec<(String, Vec<(f64, f64)>)> = spectra
            .iter_mut()
            .zip(names.iter().copied().chain(["no proxy (floor)"]))
            .map(|(runs, name)| {
                runs.sort_by(|a, b| a.percentile_ms(99.0).total_cmp(&b.percentile_ms(99.0)));
                let mid = &runs[runs.len() / 2];
                (
                    name.to_string(),
                    CHART_PERCENTILES
                        .iter()
                        .map(|p| (*p, mid.percentile_ms(*p)))
                        .collect(),
                )
            })
            .collect();
        let file = format!("{scenario}-latency-{:.0}.svg", share * 100.0);
        std::fs::write(
            ctx.out_dir.join(&file),
            latency_svg(
                &format!("{scenario}: latency at {label}, {CONNS} connections"),
                &series,
            ),
        )?;
        sec.charts.push(file);
    }
    Ok(sec)
}

/// `tls-handshakes`: new connections a second, a full TLS 1.3 handshake and one request each.
pub fn tls_handshakes(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("tls-handshakes: starting Palisade, nginx and HAProxy");
    let p = Proxies::start(ctx)?;
    let names = p.names;
    let mut sec = Section::new(
        "tls-handshakes",
        "new TLS 1.3 connections, one request each",
        &format!(
            "{HANDSHAKE_LOOPS} loops each connecting, doing a full handshake (X25519, ECDSA P-256; the client offers no resumption, nginx and HAProxy have their session caches and tickets off), \
             sending one request with `Connection: close` and reading the answer, for {:.1} s; {} runs each, interleaved.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(p.pinning_note());
    let spec = Spec {
        conns: HANDSHAKE_LOOPS,
        warmup: Duration::ZERO,
        measure: ctx.measure(),
        mode: Mode::NewConnections,
    };
    let targets: Vec<Target> = (0..3).map(|i| p.target(i, true)).collect();
    for t in &targets {
        load::run(
            std::slice::from_ref(t),
            &Spec {
                measure: ctx.warmup(),
                ..spec
            },
        );
    }
    let (mut rate, mut cpu_us) = (per_target(3), per_target(3));
    for rep in 0..ctx.repeats() {
        for i in 0..3 {
            let what = format!("tls-handshakes, {}", names[i]);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &spec, || p.cpu(i));
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
        }
    }
    sec.push(row(
        "new connections",
        "per second",
        Better::Higher,
        &names,
        rate,
    ));
    sec.push(row(
        "proxy CPU per connection",
        "µs",
        Better::Lower,
        &names,
        cpu_us,
    ));
    Ok(sec)
}
