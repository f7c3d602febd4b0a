//! Idle connections held by a process of their own (`hold_connections.py`), so that a test can
//! hold tens of thousands without spending its own open-files limit on them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};

const SCRIPT: &str = include_str!("hold_connections.py");

pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Connections it opened (the server may have closed some since).
    pub opened: usize,
}

/// What the server did to the held connections so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub closed: usize,
    /// Connections the server sent at least one byte on.
    pub answered: usize,
}

impl Holder {
    /// Open `n` connections from each `(source address, n)` to `dest`, sending nothing.
    pub fn open(dest: &str, plan: &[(&str, usize)]) -> Result<Holder> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(dest)
            .args(plan.iter().map(|(src, n)| format!("{src}={n}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 to hold connections")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(opened) = line.trim().strip_prefix("opened ") else {
            bail!("the holder said {line:?}");
        };
        Ok(Holder {
            opened: opened.parse()?,
            child,
            stdin,
            stdout,
        })
    }

    /// How many of the held connections the server has closed, and sent bytes on.
    pub fn check(&mut self) -> Result<Held> {
        let stdin = self.stdin.as_mut().context("closed")?;
        stdin.write_all(b"check\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["closed", c, "answered", a] => Ok(Held {
                closed: c.parse()?,
                answered: a.parse()?,
            }),
            _ => bail!("the holder said {line:?}"),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
