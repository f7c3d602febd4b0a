//! The proxy scenarios: keep-alive throughput and latency over HTTP and HTTPS, and full TLS
//! handshakes.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::load::{self, Mode, Outcome, Spec, Target};
use crate::outside;
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
            "One Palisade node, nginx and HAProxy, one worker each, in front of the same local upstream (keep-alive to it), each adding the same security headers and checking the same 1,001-entry IP block list (nginx: `geo`; HAProxy: an ACL file); \
             Palisade also with bot protection `automatic` (every request counted, thresholds no client reaches). \
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
    if https {
        // The headline figure again, from an outside generator.
        let (mut rate, mut cpu_us) = (per_target(3), per_target(3));
        for rep in 0..ctx.repeats() {
            for i in 0..3 {
                let c0 = p.cpu(i);
                let t = outside::wrk(
                    p.https[i],
                    HOST,
                    CONNS,
                    ctx.measure(),
                    p.dir.path(),
                    &mut ctx.commands,
                )?;
                let used = p.cpu(i) - c0;
                ctx.progress(&format!(
                    "{scenario} wrk, {}, run {}/{}: {:.0}/s{}",
                    names[i],
                    rep + 1,
                    ctx.repeats(),
                    t.rate(),
                    t.problem()
                        .map(|p| format!(" INVALID: {p}"))
                        .unwrap_or_default()
                ));
                rate[i].push(Run::checked(t.rate(), t.problem()));
                cpu_us[i].push(Run::checked(used * 1e6 / t.ok.max(1) as f64, t.problem()));
            }
        }
        sec.push(row(
            &format!("maximum rate, closed loop, {CONNS} connections, measured by wrk"),
            "requests/s",
            Better::Higher,
            &names,
            rate,
        ));
        sec.push(row(
            "proxy CPU per request, measured by wrk",
            "µs",
            Better::Lower,
            &names,
            cpu_us,
        ));
        sec.notes.push(format!(
            "wrk: `wrk -t1 -c{CONNS} -d{}s https://{HOST}:PORT/` (Debian's wrk, one thread, on the load generator's cores), {} runs each after the suite's own, interleaved;              it resolves the name through a hosts file bound over /etc/hosts in a mount namespace of its own (`unshare --mount`), so it sends the right SNI.              Its run includes its 32 handshakes; the suite's own generator is warmed up.",
            ctx.measure().as_secs_f64().ceil(),
            ctx.repeats()
        ));
    }
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

/// Streams per HTTP/2 connection in `h2`, as a browser loading a page keeps several in flight.
const H2_STREAMS: usize = 10;

/// `h2`: HTTP/2 over TLS with `h2load`, {CONNS} connections of {H2_STREAMS} concurrent streams;
/// and `h2load --h1` (HTTP/1.1, one request at a time per connection) next to the suite's own
/// generator, so that the two generators can be compared on the same figure.
pub fn h2(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("h2: starting Palisade, nginx and HAProxy");
    let p = Proxies::start(ctx)?;
    let names = p.names;
    let mut sec = Section::new(
        "h2",
        "HTTP/2 over TLS 1.3, many streams over few connections, 1 KiB answers",
        &format!(
            "`h2load -t 1 -c {CONNS} -m {H2_STREAMS} -D {:.1}s --connect-to=ADDR https://{HOST}/` (Debian's nghttp2-client, one thread, on the load generator's cores) \
             against each proxy's HTTPS listener, HTTP/2 by ALPN (nginx: `listen ... ssl http2`, HAProxy: `alpn h2,http/1.1`), upstream over HTTP/1.1 keep-alive as in the other scenarios. \
             Then `h2load --h1 -m 1` (HTTP/1.1) and the suite's own generator, both with {CONNS} connections. {} runs each, targets interleaved, after one warm-up run each. \
             CPU: the proxy's user + system time over the run, per succeeded request.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(p.pinning_note());
    for i in 0..3 {
        outside::h2load(
            h2load_run(p.https[i], Some(H2_STREAMS), ctx.warmup()),
            &mut ctx.commands,
        )?;
    }
    // `Some(streams)`: h2load (HTTP/2 with that many streams, or `--h1` without); `None`: the
    // suite's own generator.
    let kinds: [(&str, Option<Option<usize>>); 3] = [
        ("HTTP/2, h2load", Some(Some(H2_STREAMS))),
        ("HTTP/1.1, h2load --h1", Some(None)),
        ("HTTP/1.1, the suite's own generator", None),
    ];
    for (kind, streams) in kinds {
        let (mut rate, mut cpu_us) = (per_target(3), per_target(3));
        for rep in 0..ctx.repeats() {
            for i in 0..3 {
                let (r, cpu) = match streams {
                    Some(m) => {
                        let c0 = p.cpu(i);
                        let t = outside::h2load(
                            h2load_run(p.https[i], m, ctx.measure()),
                            &mut ctx.commands,
                        )?;
                        let used = p.cpu(i) - c0;
                        (
                            Run::checked(t.rate(), t.problem()),
                            Run::checked(used * 1e6 / t.ok.max(1) as f64, t.problem()),
                        )
                    }
                    None => {
                        let what = format!("h2, {kind}, {}", names[i]);
                        let (o, used) = measured(
                            ctx,
                            &what,
                            rep,
                            &p.target(i, true),
                            &ctx.closed(CONNS),
                            || p.cpu(i),
                        );
                        (
                            Run::of(o.rate(), &o),
                            Run::of(used * 1e6 / o.ok.max(1) as f64, &o),
                        )
                    }
                };
                ctx.progress(&format!(
                    "h2, {kind}, {}, run {}/{}: {:.0}/s, {:.1} µs{}",
                    names[i],
                    rep + 1,
                    ctx.repeats(),
                    r.value,
                    cpu.value,
                    r.invalid
                        .as_deref()
                        .map(|p| format!(" INVALID: {p}"))
                        .unwrap_or_default()
                ));
                rate[i].push(r);
                cpu_us[i].push(cpu);
            }
        }
        let conns = match streams {
            Some(Some(m)) => format!("{CONNS} connections × {m} streams"),
            _ => format!("{CONNS} connections"),
        };
        sec.push(row(
            &format!("maximum rate, {kind}, {conns}"),
            "requests/s",
            Better::Higher,
            &names,
            rate,
        ));
        sec.push(row(
            &format!("proxy CPU per request, {kind}"),
            "µs",
            Better::Lower,
            &names,
            cpu_us,
        ));
    }
    Ok(sec)
}

/// `allocator`: the same Palisade binary on mimalloc (its default) and on the system allocator
/// (`PALISADE_ALLOCATOR=system`), side by side over keep-alive HTTPS.
pub fn allocator(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("allocator: starting Palisade twice, on mimalloc and on the system allocator");
    cpu::pin_self(&cpu::all_cores());
    let pinned = cpu::can_pin();
    let up = Upstream::spawn()?;
    let pki = pki(&[HOST]);
    let bin = ctx.bin.clone();
    let (mi, mi_pid) = start_palisade(
        ctx,
        &bin,
        &[("PALISADE_ALLOCATOR", "mimalloc")],
        up.addr,
        &pki,
        pinned,
    )?;
    let (sys, sys_pid) = start_palisade(
        ctx,
        &bin,
        &[("PALISADE_ALLOCATOR", "system")],
        up.addr,
        &pki,
        pinned,
    )?;
    if pinned {
        cpu::pin_self(&cpu::other_cores());
    }
    let names = ["Palisade, mimalloc", "Palisade, system allocator"];
    let pids = [mi_pid, sys_pid];
    let tls = Tls::new(&pki.leaf_der, HOST)?;
    let targets: Vec<Target> = [&mi, &sys]
        .iter()
        .map(|c| Ok(Target::new(c.nodes[0].https_addr.parse()?, HOST).with_tls(tls.clone())))
        .collect::<Result<_>>()?;
    let mut sec = Section::new(
        "allocator",
        "the same Palisade on two allocators: keep-alive HTTPS, 1 KiB answers",
        &format!(
            "Two one-node Palisade clusters from the same binary, one started with `PALISADE_ALLOCATOR=mimalloc` (the default) and one with `PALISADE_ALLOCATOR=system` (glibc malloc), \
             one worker each, both in front of the same upstream. Closed loop, {CONNS} connections, {:.1} s, {} runs each, interleaved, after one warm-up run each. \
             CPU: the node's user + system time over the run, per request.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(if pinned {
        "Pinning: both nodes on core 0 (`taskset`; one runs at a time), the load generator and the upstream on the other cores.".into()
    } else {
        "Not pinned (one core, or no `taskset`).".into()
    });
    for t in &targets {
        load::run(std::slice::from_ref(t), &ctx.closed(CONNS));
    }
    let (mut rate, mut cpu_us) = (per_target(2), per_target(2));
    for rep in 0..ctx.repeats() {
        for i in 0..2 {
            let what = format!("allocator, {}", names[i]);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &ctx.closed(CONNS), || {
                cpu::family_cpu_seconds(pids[i])
            });
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
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
        "node CPU per request",
        "µs",
        Better::Lower,
        &names,
        cpu_us,
    ));
    Ok(sec)
}

/// Connections held open in `idle-tls`, when the open-files limit allows.
const IDLE_CONNS: usize = 10_000;
/// Sources they come from (each under Palisade's default cap of 1,024 per address).
const IDLE_SOURCES: u8 = 10;

/// `idle-tls`: the memory one idle keep-alive TLS connection costs each proxy, with
/// [`IDLE_CONNS`] held at once (fewer when the open-files limit, which the proxies inherit, is
/// too low for HAProxy: it reserves two descriptors per connection).
pub fn idle_tls(ctx: &mut Ctx) -> Result<Section> {
    let files = cpu::raise_open_files(4 * IDLE_CONNS as u64);
    let n = IDLE_CONNS.min(((files as usize).saturating_sub(64) / 2).saturating_sub(200));
    if n < 1_000 {
        bail!("the open-files limit is {files}: too low to hold even 1,000 connections");
    }
    ctx.progress(&format!(
        "idle-tls: starting Palisade, nginx and HAProxy (open-files limit {files}: {n} connections)"
    ));
    // Idle connections hold no upstream one: Palisade's cap (sized for proxied ones, two
    // descriptors each) is set above what is held.
    let cap = (n + 2_000).to_string();
    let env = [("PALISADE_EDGE_MAX_CONNECTIONS", cap.as_str())];
    let names = ["Palisade", "nginx", "HAProxy"];
    let mut sec = Section::new(
        "idle-tls",
        "memory per idle keep-alive TLS connection",
        &format!(
            "For each proxy in turn, freshly started for each run (memory a process has had is rarely given back, so a second run on the same one measures nothing): \
             {n} TLS 1.3 connections from {IDLE_SOURCES} loopback addresses (127.0.0.1 to 127.0.0.{IDLE_SOURCES}), each through a full handshake and one answered `GET`, then left idle; \
             the proxy's resident memory (`VmRSS`, nginx's master and worker together) half a second after the last answer, less its memory before, over the connections held. \
             {} runs each. \
             {n} rather than {IDLE_CONNS} when this process's open-files limit ({files}, inherited by the proxies) is too low for HAProxy, which reserves two descriptors per connection; \
             Palisade runs with `PALISADE_EDGE_MAX_CONNECTIONS={cap}` (its default cap is sized for proxied connections, two descriptors each).",
            ctx.repeats()
        ),
        &names,
    );
    let sources: Vec<std::net::IpAddr> = (1..=IDLE_SOURCES)
        .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
        .collect();
    let mut per_conn = per_target(3);
    let mut total = per_target(3);
    for rep in 0..ctx.repeats() {
        let p = Proxies::start_with(ctx, &env)?;
        if rep == 0 {
            sec.notes.push(p.pinning_note());
        }
        let rss = |i: usize| -> u64 {
            cpu::family(p.pids[i])
                .into_iter()
                .map(|pid| palisade_testkit::proc::rss_kib(pid).0)
                .sum()
        };
        for i in 0..3 {
            let target = p.target(i, true);
            let before = rss(i);
            let (held, after) = load::hold(&target, &sources, n, || rss(i))
                .map_err(|e| anyhow::anyhow!("{}: {e}", names[i]))?;
            let kib = after.saturating_sub(before) as f64 / held as f64;
            ctx.progress(&format!(
                "idle-tls, {}, run {}/{}: {held} held, {before} KiB before, {after} KiB with them: {kib:.1} KiB each",
                names[i],
                rep + 1,
                ctx.repeats()
            ));
            per_conn[i].push(Run::valid(kib));
            total[i].push(Run::valid(after as f64 / 1024.0));
        }
    }
    sec.push(row(
        "resident memory per idle TLS connection",
        "KiB",
        Better::Lower,
        &names,
        per_conn,
    ));
    sec.push(row(
        &format!("resident memory with {n} idle TLS connections"),
        "MiB",
        Better::Lower,
        &names,
        total,
    ));
    Ok(sec)
}

/// Requests counted per node in `instructions`, after as many again unmeasured.
const COUNTED: usize = 10_000;

/// `instructions`: instructions a proxied request costs, counted by `valgrind --tool=callgrind`
/// (a count, not a time: the machine's noise does not move it), on both allocators, over
/// keep-alive HTTPS and plain HTTP.
pub fn instructions(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress(
        "instructions: starting Palisade under callgrind, on mimalloc and on the system allocator",
    );
    let dir = tempfile::Builder::new()
        .prefix("palisade-callgrind-")
        .tempdir()?;
    // The node's `run` goes under callgrind, with instrumentation on and the counters zeroed
    // and dumped from outside (`callgrind_control`); `init` runs as it is.
    let wrapper = dir.path().join("palisade");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = run ]; then exec valgrind --tool=callgrind --callgrind-out-file={}/callgrind.out.%p {} \"$@\"; fi\nexec {} \"$@\"\n",
            dir.path().display(),
            ctx.bin.display(),
            ctx.bin.display()
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let up = Upstream::spawn()?;
    let pki = pki(&[HOST]);
    let names = ["Palisade, mimalloc", "Palisade, system allocator"];
    let mut sec = Section::new(
        "instructions",
        "instructions per proxied request (callgrind), keep-alive, 1 KiB answers",
        &format!(
            "Each node runs under `valgrind --tool=callgrind` (one worker; `PALISADE_ALLOCATOR` picks the allocator). \
             For each protocol: {COUNTED} requests by `h2load --h1 -c 32 -n {COUNTED}` unmeasured, then the counters zeroed (`callgrind_control -z`), \
             {COUNTED} more, and the counters dumped (`callgrind_control -d`): all of the node's threads' instructions (`Ir`) over those requests, divided by them \
             (the dumps are kept next to the report as `callgrind-ALLOCATOR-SCHEME.out`, for `callgrind_annotate`). \
             A count of instructions, not of time: it does not see cache misses or the kernel, but no noise moves it."
        ),
        &names,
    );
    let (mut https, mut http) = (per_target(2), per_target(2));
    for (i, alloc) in ["mimalloc", "system"].iter().enumerate() {
        let (c, pid) = start_palisade(
            ctx,
            &wrapper,
            &[("PALISADE_ALLOCATOR", alloc)],
            up.addr,
            &pki,
            false,
        )?;
        for (tls, runs) in [(true, &mut https), (false, &mut http)] {
            let addr: std::net::SocketAddr = match tls {
                true => c.nodes[0].https_addr.parse()?,
                false => c.nodes[0].http_addr.parse()?,
            };
            let scheme = if tls { "https" } else { "http" };
            let counted = |ctx: &mut Ctx| {
                let spec = outside::H2load {
                    addr,
                    host: HOST,
                    scheme,
                    conns: 32,
                    streams: None,
                    bound: outside::Bound::Count(COUNTED),
                };
                outside::h2load(spec, &mut ctx.commands)
            };
            counted(ctx)?;
            callgrind_control(&["-z", &pid.to_string()])?;
            let t = counted(ctx)?;
            if let Some(p) = t.problem() {
                bail!("{}, {scheme}: {p}", names[i]);
            }
            let before: std::collections::HashSet<_> = dumps(dir.path())?.into_iter().collect();
            callgrind_control(&["-d", &pid.to_string()])?;
            let dump =
                palisade_testkit::wait::until("callgrind's dump", Duration::from_secs(30), || {
                    dumps(dir.path())
                        .ok()?
                        .into_iter()
                        .find(|d| !before.contains(d))
                })?;
            let total =
                palisade_testkit::wait::until("the dump written", Duration::from_secs(30), || {
                    let text = std::fs::read_to_string(&dump).ok()?;
                    text.lines()
                        .find_map(|l| {
                            l.strip_prefix("totals:")
                                .or_else(|| l.strip_prefix("summary:"))
                        })?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })?;
            let per = total / t.ok as f64;
            // Kept next to the report, so the figure can be taken apart by function
            // (`callgrind_annotate FILE`).
            let kept = ctx.out_dir.join(format!("callgrind-{alloc}-{scheme}.out"));
            std::fs::create_dir_all(&ctx.out_dir)?;
            std::fs::copy(&dump, &kept)?;
            ctx.progress(&format!(
                "instructions, {}, {scheme}: {total:.0} over {} requests: {per:.0} each",
                names[i], t.ok
            ));
            runs[i].push(Run::valid(per));
        }
        drop(c);
    }
    sec.push(row(
        "instructions per request, HTTPS",
        "instructions",
        Better::Lower,
        &names,
        https,
    ));
    sec.push(row(
        "instructions per request, plain HTTP",
        "instructions",
        Better::Lower,
        &names,
        http,
    ));
    Ok(sec)
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("callgrind_control")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "callgrind_control {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The dump files callgrind wrote in `dir` so far.
fn dumps(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out."))
        })
        .collect())
}

/// An `h2load` run of [`CONNS`] connections over HTTPS to the benchmark's host at `addr`, for
/// `duration`: HTTP/2 with `streams` streams each, or HTTP/1.1 without.
fn h2load_run(
    addr: std::net::SocketAddr,
    streams: Option<usize>,
    duration: Duration,
) -> outside::H2load<'static> {
    outside::H2load {
        addr,
        host: HOST,
        scheme: "https",
        conns: CONNS,
        streams,
        bound: outside::Bound::For(duration),
    }
}
