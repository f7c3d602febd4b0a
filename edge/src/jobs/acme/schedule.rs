//! When a name needs an order, which node owns it, how long a failure waits, and when a
//! certificate is renewed: functions of the applied state and the time, with no I/O.

use std::time::Duration;

use palisade_raft::ids::{Hostname, Name, NodeId};
use palisade_raft::model::{AcmeLimits, Cert, CertState, CertStatus, Lease, Millis, RateWindow};
use palisade_raft::transport::proto::ClusterStatus;

/// A voter the leader has not heard from for this long is not given names.
pub const HEALTHY_ACK: Duration = Duration::from_secs(3);

/// The lease a name's order is placed under.
pub fn lease_name(host: &Hostname) -> Name {
    format!("acme:{host}")
        .parse()
        .expect("a host name is a valid name")
}

/// The certificate record of a name.
pub fn cert_name(host: &Hostname) -> Name {
    host.as_str().parse().expect("a host name is a valid name")
}

/// The rate window of a name's failed validations.
pub fn failure_window(host: &Hostname) -> Name {
    format!("failed:{host}")
        .parse()
        .expect("a host name is a valid name")
}

/// The rate window of an account's new orders, by directory.
pub fn orders_window(directory: &str) -> Name {
    let h = palisade_raft::crypto::sha256_hex(directory.as_bytes());
    format!("orders:{}", &h[..16])
        .parse()
        .expect("hex is a valid name")
}

/// Whether somebody is working on a name now (its lease has not run out).
pub fn held(lease: Option<&Lease>, now: Millis) -> bool {
    lease.is_some_and(|l| l.expires_at > now)
}

/// Whether `host` needs an order at `now`, from its status and its stored certificate;
/// `ari_at` is the CA's suggested renewal time for that certificate, when known.
pub fn needs_order(
    host: &Hostname,
    status: Option<&CertStatus>,
    cert: Option<&Cert>,
    limits: &AcmeLimits,
    ari_at: Option<Millis>,
    now: Millis,
) -> bool {
    if host.is_wildcard() {
        return status.is_none_or(|s| s.state != CertState::Refused);
    }
    let Some(status) = status else {
        return true;
    };
    if status.renew_requested_at.is_some() {
        return true;
    }
    // After a failure, the back-off; a valid certificate goes by its own renewal time.
    if status.state != CertState::Valid && now < status.next_attempt_at {
        return false;
    }
    match cert {
        Some(c) if c.hosts.contains(host) => {
            let reissue_ok = status
                .last_success_at
                .is_none_or(|t| now >= t.saturating_add(limits.min_reissue_ms));
            reissue_ok && now >= renew_at(c, limits, ari_at)
        }
        _ => true,
    }
}

/// When `c` should be renewed: the configured threshold, else the CA's renewal window, else a
/// third of the lifetime before expiry minus a jitter of up to 1/30 of the lifetime (so that
/// names issued together are not renewed together).
pub fn renew_at(c: &Cert, limits: &AcmeLimits, ari_at: Option<Millis>) -> Millis {
    if let Some(before) = limits.renew_before_ms {
        return c.not_after.saturating_sub(before);
    }
    if let Some(at) = ari_at {
        return at;
    }
    let lifetime = c.not_after.saturating_sub(c.not_before);
    let jitter = spread(c.name.as_str(), c.not_after) % (lifetime / 30).max(1);
    c.not_after.saturating_sub(lifetime / 3 + jitter)
}

/// A point in the CA's suggested renewal window `[start, end)`, the same for a certificate on
/// every node, spread over the window by name.
pub fn in_window(name: &str, not_after: Millis, start: Millis, end: Millis) -> Millis {
    start + spread(name, not_after) % end.saturating_sub(start).max(1)
}

/// The leader and the voters it heard from within [`HEALTHY_ACK`], in id order. Unknown counts
/// as unhealthy: a new leader has heard from nobody yet, and a paused node must not keep its
/// names. Right after an election names may gather on the leader for a moment; the leases keep
/// that safe.
pub fn healthy_voters(status: &ClusterStatus) -> Vec<NodeId> {
    let ack = HEALTHY_ACK.as_millis() as u64;
    status
        .members
        .iter()
        .filter(|m| m.voter)
        .filter(|m| Some(m.id) == status.leader || m.last_ack_ms.is_some_and(|ms| ms < ack))
        .map(|m| m.id)
        .collect()
}

/// The owner of `host` among `voters`: highest rendezvous score.
pub fn owner(host: &Hostname, voters: &[NodeId]) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .max_by_key(|id| rendezvous(host.as_str(), *id))
}

fn rendezvous(host: &str, node: NodeId) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{host}\0{node}").as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A stable pseudo-random number per name and salt.
fn spread(name: &str, salt: u64) -> u64 {
    rendezvous(name, salt)
}

/// Wait after `failures` failures: `base` × 2^(failures-1), at most `cap`, with ±10% jitter.
pub fn backoff(base: Duration, cap: Duration, failures: u32, host: &str, now: Millis) -> u64 {
    let (base, cap) = (base.as_millis() as u64, cap.as_millis() as u64);
    let wait = base
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(cap);
    let jitter = spread(host, now) % (wait / 5).max(1);
    (wait - wait / 10 + jitter).max(1)
}

/// When a full window frees a place (`None`: it is not full).
pub fn full_until(w: &RateWindow, limit: u32, window_ms: u64, now: Millis) -> Option<Millis> {
    // A limit of none (the setting at 0: nothing is ordered) never frees a place; look again
    // a window on.
    if limit == 0 {
        return Some(now.saturating_add(window_ms.max(1)));
    }
    let since = now.saturating_sub(window_ms);
    let mut live: Vec<Millis> = w.stamps.iter().copied().filter(|&t| t > since).collect();
    if live.len() < limit as usize {
        return None;
    }
    live.sort_unstable();
    Some(live[live.len() - limit as usize] + window_ms)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use palisade_raft::model::{CertSource, ClusterSettings, Sealed};
    use palisade_raft::transport::proto::MemberStatus;
    use palisade_raft::types::NodeInfo;

    use super::*;

    const DAY: Millis = 86_400_000;

    fn host(h: &str) -> Hostname {
        h.parse().unwrap()
    }

    fn cert(h: &str, not_before: Millis, not_after: Millis) -> Cert {
        Cert {
            name: cert_name(&host(h)),
            hosts: vec![host(h)],
            chain_pem: String::new(),
            key: Sealed(Vec::new()),
            not_before,
            not_after,
            issuer: "test".into(),
            source: CertSource::Acme,
            project: None,
        }
    }

    fn valid(h: &str, last_success_at: Millis) -> CertStatus {
        CertStatus {
            state: CertState::Valid,
            last_success_at: Some(last_success_at),
            ..CertStatus::new(host(h), 0)
        }
    }

    fn limits(pairs: &[(&str, &str)]) -> AcmeLimits {
        ClusterSettings {
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
        .acme()
    }

    #[test]
    fn a_certificate_is_renewed_with_a_third_of_its_life_left_each_name_at_its_own_time() {
        let l = limits(&[]);
        let at = |h: &str| renew_at(&cert(h, 0, 90 * DAY), &l, None);
        for h in ["a.test", "b.test", "c.test", "d.test"] {
            // A 90-day certificate: renewed between day 57 and day 60.
            assert!(
                (57 * DAY..=60 * DAY).contains(&at(h)),
                "{h}: day {}",
                at(h) as f64 / DAY as f64
            );
        }
        let distinct: std::collections::HashSet<_> =
            ["a.test", "b.test", "c.test", "d.test"].map(at).into();
        assert!(distinct.len() > 1, "names issued together renew apart");
        // Short-lived certificates keep the proportion: 6 days, renewed in day 4.
        let short = renew_at(&cert("a.test", 0, 6 * DAY), &l, None);
        assert!(
            (3 * DAY + DAY * 4 / 5..=4 * DAY).contains(&short),
            "{short}"
        );
    }

    #[test]
    fn the_renew_before_setting_beats_the_cas_window_which_beats_the_thirds() {
        let c = cert("a.test", 0, 90 * DAY);
        let ari = Some(70 * DAY);
        assert_eq!(renew_at(&c, &limits(&[]), ari), 70 * DAY);
        let before = limits(&[("acme.renew_before_hours", "240")]);
        assert_eq!(renew_at(&c, &before, ari), 80 * DAY);
        // A window point is inside the window and the same on every node.
        let p = in_window("a.test", 90 * DAY, 60 * DAY, 62 * DAY);
        assert!((60 * DAY..62 * DAY).contains(&p));
        assert_eq!(p, in_window("a.test", 90 * DAY, 60 * DAY, 62 * DAY));
    }

    #[test]
    fn a_name_is_due_when_new_when_asked_at_its_renewal_point_and_not_while_backing_off() {
        let l = limits(&[]);
        let h = host("a.test");
        let c = cert("a.test", 0, 90 * DAY);
        let renew = renew_at(&c, &l, None);
        let failing = CertStatus {
            state: CertState::Failing,
            next_attempt_at: 5 * DAY,
            ..CertStatus::new(h.clone(), 0)
        };
        let asked = CertStatus {
            renew_requested_at: Some(DAY),
            ..valid("a.test", 0)
        };
        let other = cert("b.test", 0, 90 * DAY);
        type Case<'a> = (
            &'a str,
            Option<&'a CertStatus>,
            Option<&'a Cert>,
            Millis,
            bool,
        );
        let cases: &[Case] = &[
            ("never ordered", None, None, 0, true),
            (
                "valid, before its renewal point",
                Some(&valid("a.test", 0)),
                Some(&c),
                renew - 1,
                false,
            ),
            (
                "valid, at its renewal point",
                Some(&valid("a.test", 0)),
                Some(&c),
                renew,
                true,
            ),
            (
                "asked for, whatever the expiry",
                Some(&asked),
                Some(&c),
                DAY,
                true,
            ),
            (
                "failing, backing off",
                Some(&failing),
                Some(&c),
                5 * DAY - 1,
                false,
            ),
            (
                "failing, back-off over",
                Some(&failing),
                None,
                5 * DAY,
                true,
            ),
            (
                "the stored certificate is another name's",
                Some(&valid("a.test", 0)),
                Some(&other),
                DAY * 2,
                true,
            ),
        ];
        for (what, status, cert, now, due) in cases {
            assert_eq!(
                needs_order(&h, *status, *cert, &l, None, *now),
                *due,
                "{what}"
            );
        }
        // Never reordered within min_reissue of a success, even past the renewal point.
        let eager = limits(&[("acme.renew_before_hours", "100000")]);
        let just_issued = valid("a.test", 10 * DAY);
        assert!(!needs_order(
            &h,
            Some(&just_issued),
            Some(&c),
            &eager,
            None,
            10 * DAY + 1
        ));
        assert!(needs_order(
            &h,
            Some(&just_issued),
            Some(&c),
            &eager,
            None,
            11 * DAY
        ));
        // A wildcard is looked at once, to be refused.
        let refused = CertStatus {
            state: CertState::Refused,
            ..CertStatus::new(host("*.a.test"), 0)
        };
        assert!(needs_order(&host("*.a.test"), None, None, &l, None, 0));
        assert!(!needs_order(
            &host("*.a.test"),
            Some(&refused),
            None,
            &l,
            None,
            0
        ));
    }

    #[test]
    fn names_spread_over_voters_and_move_only_when_their_owner_leaves() {
        let voters = [1, 2, 3];
        let hosts: Vec<Hostname> = (0..300)
            .map(|i| format!("site{i}.example.com").parse().unwrap())
            .collect();
        let mut per = HashMap::new();
        for h in &hosts {
            *per.entry(owner(h, &voters).unwrap()).or_insert(0) += 1;
        }
        for id in voters {
            assert!(per[&id] > 60, "node {id} owns {} of 300", per[&id]);
        }
        // Node 2 leaves: only its names move.
        for h in &hosts {
            let before = owner(h, &voters).unwrap();
            let after = owner(h, &[1, 3]).unwrap();
            if before != 2 {
                assert_eq!(before, after, "{h} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn only_voters_heard_from_lately_and_the_leader_are_healthy() {
        let member = |id, voter, last_ack_ms| MemberStatus {
            id,
            node: NodeInfo::default(),
            voter,
            matched: None,
            lag: None,
            last_ack_ms,
        };
        let status = ClusterStatus {
            cluster_id: String::new(),
            node_id: 1,
            state: "Leader".into(),
            leader: Some(1),
            term: 1,
            last_log_index: None,
            committed: None,
            applied: 0,
            members: vec![
                member(1, true, None),
                member(2, true, Some(100)),
                member(3, true, Some(5_000)),
                member(4, false, Some(10)),
                member(5, true, None),
            ],
        };
        assert_eq!(healthy_voters(&status), vec![1, 2]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(60), Duration::from_secs(3600));
        let w = |n| backoff(base, cap, n, "a.test", 7);
        assert!((54_000..=66_000).contains(&w(1)), "{}", w(1));
        assert!((108_000..=132_000).contains(&w(2)), "{}", w(2));
        assert!((3_240_000..=3_960_000).contains(&w(10)), "{}", w(10));
        assert!((3_240_000..=3_960_000).contains(&w(400)), "{}", w(400));
    }

    #[test]
    fn a_full_window_frees_a_place_when_its_oldest_use_leaves() {
        let w = RateWindow {
            name: "x".parse().unwrap(),
            stamps: vec![1_000, 2_000, 3_000],
        };
        assert_eq!(full_until(&w, 3, 10_000, 5_000), Some(11_000));
        assert_eq!(full_until(&w, 4, 10_000, 5_000), None);
        assert_eq!(full_until(&w, 2, 10_000, 5_000), Some(12_000));
        assert_eq!(full_until(&w, 3, 10_000, 11_500), None);
        // A limit of 0 (ordering switched off) is full, also with nothing in the window.
        let empty = RateWindow {
            name: "x".parse().unwrap(),
            stamps: Vec::new(),
        };
        assert_eq!(full_until(&empty, 0, 10_000, 5_000), Some(15_000));
        assert_eq!(full_until(&w, 0, 10_000, 5_000), Some(15_000));
    }
}
