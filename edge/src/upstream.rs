//! Upstream targets of a domain: selection (round-robin over healthy targets, least-outstanding
//! as tie-break), passive ejection on connect failures, active health checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::egress::Egress;

/// How long an ejected target stays out before the active check may bring it back.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Target {
    /// `host:port` as configured (also the key of the workers' connection pools).
    pub addr: std::sync::Arc<str>,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    pub failures: AtomicU64,
}

impl Target {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Take the target out of rotation (a connect failed).
    pub fn eject(&self) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(target = %self.addr, "upstream ejected");
            metrics::counter!("palisade_upstream_ejections_total").increment(1);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight to a target; counts toward least-outstanding selection.
pub struct InFlight(Arc<Target>);

impl InFlight {
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct UpstreamGroup {
    pub targets: Vec<Arc<Target>>,
    next: AtomicUsize,
}

impl UpstreamGroup {
    pub fn new(addrs: &[String]) -> Arc<UpstreamGroup> {
        Arc::new(UpstreamGroup {
            targets: addrs
                .iter()
                .map(|a| {
                    Arc::new(Target {
                        addr: a.as_str().into(),
                        healthy: AtomicBool::new(true),
                        outstanding: AtomicUsize::new(0),
                        failures: AtomicU64::new(0),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The next healthy target not in `exclude`, round-robin, preferring the less busy of two
    /// neighbours. None when every target is down.
    pub fn pick(&self, exclude: &[Arc<Target>]) -> Option<InFlight> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let usable = |t: &Arc<Target>| t.is_healthy() && !exclude.iter().any(|e| Arc::ptr_eq(e, t));
        let first = (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| usable(t))?;
        let second = (1..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| usable(t) && !Arc::ptr_eq(t, first));
        let chosen = match second {
            Some(s)
                if s.outstanding.load(Ordering::Relaxed)
                    < first.outstanding.load(Ordering::Relaxed) =>
            {
                s
            }
            _ => first,
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen.clone()))
    }

    /// One round of active checks: a TCP connect to each target, all at once, to addresses
    /// `egress` allows only.
    pub async fn check(&self, egress: &Egress) {
        futures::future::join_all(self.targets.iter().map(|t| check_target(t, egress))).await;
    }
}

async fn check_target(t: &Target, egress: &Egress) {
    let ok = match egress.resolve(&t.addr).await {
        Ok(addrs) => match addrs.first() {
            Some(&addr) => probe(addr, egress).await,
            None => false,
        },
        Err(e) => {
            if t.is_healthy() {
                tracing::warn!(target = %t.addr, error = %e, "upstream not usable");
            }
            false
        }
    };
    let was = t.healthy.swap(ok, Ordering::Relaxed);
    if ok && !was {
        tracing::info!(target = %t.addr, "upstream healthy again");
    } else if !ok && was {
        tracing::warn!(target = %t.addr, "upstream failed its health check");
    }
    metrics::gauge!("palisade_upstream_healthy", "target" => t.addr.to_string()).set(if ok {
        1.0
    } else {
        0.0
    });
}

async fn probe(addr: SocketAddr, egress: &Egress) -> bool {
    match tokio::time::timeout(HEALTH_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => egress.check_connected(&stream).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_targets_are_skipped_and_none_when_all_are_down() {
        let g = UpstreamGroup::new(&["a:1".into(), "b:1".into()]);
        g.targets[0].eject();
        for _ in 0..4 {
            assert_eq!(&*g.pick(&[]).unwrap().target().addr, "b:1");
        }
        g.targets[1].eject();
        assert!(g.pick(&[]).is_none());
    }

    #[test]
    fn selection_rotates_and_prefers_the_less_busy() {
        let g = UpstreamGroup::new(&["a:1".into(), "b:1".into()]);
        let held = g.pick(&[]).unwrap();
        let busy = held.target().addr.clone();
        let next = g.pick(&[]).unwrap();
        assert_ne!(next.target().addr, busy);
        drop(next);
        // `a` still has one request outstanding: the less busy one wins whoever's turn it is.
        for _ in 0..3 {
            assert_ne!(g.pick(&[]).unwrap().target().addr, busy);
        }
    }
}
