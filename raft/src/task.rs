//! The shape of a node's long-running work: one shutdown signal that every task watches, and the
//! loop every background job runs in.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;

/// The one shutdown signal of a node: cancelled once, watched by every task (listeners, jobs,
/// the admin API). Clones share the signal.
pub type Shutdown = tokio_util::sync::CancellationToken;

/// Run `pass` every `interval` until `shutdown`, the first time after one interval. A pass that
/// fails is logged as `who`'s and the next one retries.
pub async fn every<F, Fut, E>(interval: Duration, shutdown: &Shutdown, who: &str, pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    every_or_woken(interval, &Notify::new(), shutdown, who, pass).await
}

/// [`every`], and also as soon as `wake` is notified (a burst of notifications makes one pass).
pub async fn every_or_woken<F, Fut, E>(
    interval: Duration,
    wake: &Notify,
    shutdown: &Shutdown,
    who: &str,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = pass() => r,
        };
        if let Err(e) = result {
            tracing::warn!(job = who, error = %e, "a pass of background work failed; the next one retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn passes_come_every_interval_and_when_woken_and_end_with_shutdown() {
        let passes = Arc::new(AtomicU32::new(0));
        let wake = Arc::new(Notify::new());
        let shutdown = Shutdown::new();
        let job = {
            let (passes, wake, shutdown) = (passes.clone(), wake.clone(), shutdown.clone());
            tokio::spawn(async move {
                every_or_woken(Duration::from_secs(10), &wake, &shutdown, "test", || {
                    let n = passes.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if n == 0 {
                            Err("first pass fails")
                        } else {
                            Ok(())
                        }
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(passes.load(Ordering::Relaxed), 2, "at 10 s and 20 s");
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(passes.load(Ordering::Relaxed), 3, "woken");
        shutdown.cancel();
        job.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(passes.load(Ordering::Relaxed), 3, "no pass after shutdown");
    }
}
