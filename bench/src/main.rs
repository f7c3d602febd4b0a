//! `palisade-bench`: run a scenario and print its figures.

use std::path::PathBuf;

use anyhow::{bail, Result};
use palisade_bench::scenarios::{self, ms, percentile};

fn usage() -> ! {
    eprintln!("usage: palisade-bench [--palisade PATH] election [RUNS] | write-latency [WRITES]");
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut bin = std::env::current_exe()?.with_file_name("palisade");
    if args.first().map(String::as_str) == Some("--palisade") {
        if args.len() < 2 {
            usage();
        }
        bin = PathBuf::from(args.remove(1));
        args.remove(0);
    }
    if !bin.exists() {
        bail!(
            "palisade binary not found at {} (build it, or pass --palisade PATH)",
            bin.display()
        );
    }
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("election") => {
            let runs = num(1, 10);
            let (elections, writable) = scenarios::election(&bin, runs)?;
            println!("leader killed {runs} times (3 nodes, loopback, fsync on)");
            println!(
                "new leader agreed:  median {}  worst {}",
                ms(percentile(&elections, 50.0)),
                ms(*elections.last().unwrap())
            );
            println!(
                "first write again:  median {}  worst {}",
                ms(percentile(&writable, 50.0)),
                ms(*writable.last().unwrap())
            );
        }
        Some("write-latency") => {
            let n = num(1, 500);
            let s = scenarios::write_latency(&bin, n)?;
            println!("{n} sequential writes, 1 client, 3 nodes, fsync on, through the leader's admin API");
            println!(
                "p50 {}  p90 {}  p99 {}  max {}",
                ms(percentile(&s, 50.0)),
                ms(percentile(&s, 90.0)),
                ms(percentile(&s, 99.0)),
                ms(*s.last().unwrap())
            );
        }
        _ => usage(),
    }
    Ok(())
}
