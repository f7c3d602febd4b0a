//! Waiting for something to become true, by polling up to a deadline: never a fixed sleep that
//! hopes it is long enough.

use std::time::{Duration, Instant};

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// What a check answers: done or not (`bool`), or done with a value (`Option<T>`).
pub trait Outcome {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// A wait that ran out of time.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub after: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.after, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// Look at `check` every [`POLL`] until it is ready, or `timeout` has passed (then an error
/// naming `what`). The check always runs at least once.
pub fn until<O: Outcome>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> O,
) -> Result<O::Value, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().ready() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// [`until`] in an async test: the check is polled without blocking the runtime.
pub async fn until_async<O: Outcome, F: std::future::Future<Output = O>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Result<O::Value, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await.ready() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_the_value_once_ready_and_names_what_timed_out() {
        let mut n = 0;
        let got = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
        let e = until("never", Duration::from_millis(50), || false).unwrap_err();
        assert_eq!(e.to_string(), "timed out after 50ms waiting for never");
    }
}
