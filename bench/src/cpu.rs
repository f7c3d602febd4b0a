//! Processes and cores: pinning with `taskset`, CPU time from `/proc`.

use std::process::{Command, Stdio};

/// Cores online on this machine (not this process's affinity mask, which the harness itself
/// narrows when it pins the load generator).
#[allow(unsafe_code)]
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Whether the proxy under test and the load generator can have cores of their own.
pub fn can_pin() -> bool {
    cores() >= 2 && Command::new("taskset").arg("-V").output().is_ok()
}

/// The core list for the proxy under test (`0`) and for everything else (`1-N`).
pub const PROXY_CORES: &str = "0";

pub fn other_cores() -> String {
    format!("1-{}", cores().max(2) - 1)
}

pub fn all_cores() -> String {
    format!("0-{}", cores().max(1) - 1)
}

/// Pin every thread of process `pid` (threads made later inherit it) to the cores in `list`.
///
/// `taskset -a` fails when a thread ends while it walks them (a runtime's idle blocking
/// threads do), so it is tried a few times.
pub fn pin(pid: u32, list: &str) -> bool {
    (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Command::new("taskset")
            .args(["-a", "-p", "-c", list, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Pin this process (load generator, upstream).
pub fn pin_self(list: &str) -> bool {
    pin(std::process::id(), list)
}

/// Pin process `pid` to core 0 and this process to the others; false when that is not possible.
pub fn pin_apart(pid: u32) -> bool {
    can_pin() && pin(pid, PROXY_CORES) && pin_self(&other_cores())
}

/// User plus system CPU time of process `pid` so far, in seconds (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// The process `pid` and its children (nginx's master and worker).
pub fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// CPU seconds of `pid` and its children so far.
/// Wait until process `pid` is quiet (under 2% of a core over half a second) or `within`
/// has passed; how long it took, and whether it did become quiet. A node that has just taken
/// a large import is still compacting RocksDB and rebuilding its view for a while: CPU it
/// spends on that is not the per-request cost a scenario measures.
pub fn settle(pid: u32, within: std::time::Duration) -> (std::time::Duration, bool) {
    let start = std::time::Instant::now();
    let window = std::time::Duration::from_millis(500);
    while start.elapsed() < within {
        let before = cpu_seconds(pid);
        std::thread::sleep(window);
        if cpu_seconds(pid) - before < 0.02 * window.as_secs_f64() {
            return (start.elapsed(), true);
        }
    }
    (start.elapsed(), false)
}

pub fn family_cpu_seconds(pid: u32) -> f64 {
    family(pid).into_iter().map(cpu_seconds).sum()
}

/// Raise this process's open-files limit (soft and hard) to at least `n`, so that it and the
/// servers it starts (which inherit it) can hold `n` connections; the soft limit reached.
/// Raising the hard limit takes root; without it, the soft limit goes up to the hard one.
#[allow(unsafe_code)]
pub fn raise_open_files(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= n {
            return lim.rlim_cur;
        }
        let want = libc::rlimit {
            rlim_cur: n,
            rlim_max: lim.rlim_max.max(n),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return n;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// This process's open-files limit (soft), which the servers it starts inherit.
#[allow(unsafe_code)]
pub fn open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
        0 => lim.rlim_cur,
        _ => 1_024,
    }
}
