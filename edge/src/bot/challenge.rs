//! Challenge tokens, proofs of work and clearance cookies: fixed-length binary fields under
//! HMAC-SHA-256 with a key of the replicated keyring, so any node can check what another issued.
//!
//! A **challenge** is stateless: `version | kid | issued | expires | bits | kind | seed | binding`
//! then the MAC. The binding is a hash of the client's IP prefix, user agent, host and project,
//! so a token answers only for the client it was made for. The proof of work is a `nonce` (8 hex
//! digits) such that SHA-256 over the 32 hex digits of the seed followed by the nonce starts with
//! `bits` zero bits: one 64-byte SHA-256 block, cheap to check.
//!
//! A **clearance** (the cookie) is `version | kid | issued | expires | level | epoch | project |
//! binding` then the MAC; its binding covers only the IP prefix and user agent, so one session
//! holds across every host of a project. Prefixes are /24 for IPv4 and /64 for IPv6: a client
//! whose address changes within its network keeps its session.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::digest::{digest, Context, SHA256};

pub use super::keyring::{Keyring, Kid, SigningKey};

const CHALLENGE_V1: u8 = 0x81;
const CLEARANCE_V1: u8 = 0x01;
const CHALLENGE_LEN: usize = 1 + 8 + 8 + 8 + 1 + 1 + 16 + 16;
const CLEARANCE_LEN: usize = 1 + 8 + 8 + 8 + 1 + 4 + 16 + 16;
pub(super) const MAC_LEN: usize = 32;

/// Why a token or cookie was not accepted: a label for metrics and logs (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    UnknownKey,
    BadMac,
    Expired,
    OtherProject,
    OldEpoch,
    OtherClient,
    TooEarly,
    WrongAnswer,
    Replayed,
    /// A wait token, where the project asks for the proof of work.
    NoScriptOff,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadMac => "bad_mac",
            Refusal::Expired => "expired",
            Refusal::OtherProject => "other_project",
            Refusal::OldEpoch => "old_epoch",
            Refusal::OtherClient => "other_client",
            Refusal::TooEarly => "too_early",
            Refusal::WrongAnswer => "wrong_answer",
            Refusal::Replayed => "replayed",
            Refusal::NoScriptOff => "no_script_off",
        }
    }

    /// What the visitor is told when an answer is refused.
    pub fn explain(self) -> &'static str {
        match self {
            Refusal::Expired => "The check had expired.",
            Refusal::TooEarly => "The wait was not over yet.",
            Refusal::Replayed => "That answer was already used.",
            Refusal::WrongAnswer => "The answer was not right.",
            Refusal::NoScriptOff => "This site needs JavaScript for the check.",
            _ => "The check was not valid for this browser or network.",
        }
    }
}

/// The client's network for bindings: family tag and the address cut to /24 or /64.
pub fn ip_prefix(ip: IpAddr) -> [u8; 17] {
    let mut out = [0u8; 17];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    out
}

/// SHA-256 over length-prefixed parts, cut to 16 bytes: no two part lists hash alike by
/// concatenation.
fn tag(domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(domain);
    for p in parts {
        ctx.update(&(p.len() as u32).to_be_bytes());
        ctx.update(p);
    }
    ctx.finish().as_ref()[..16].try_into().expect("16 bytes")
}

pub fn project_tag(project: &str) -> [u8; 16] {
    tag(b"palisade-project", &[project.as_bytes()])
}

/// What a clearance is bound to: the client's IP prefix and user agent.
pub fn clearance_binding(ip: IpAddr, user_agent: &[u8]) -> [u8; 16] {
    tag(b"palisade-clearance", &[&ip_prefix(ip), user_agent])
}

/// What a challenge is bound to: the clearance binding plus the host and project.
pub fn challenge_binding(ip: IpAddr, user_agent: &[u8], host: &str, project: &str) -> [u8; 16] {
    tag(
        b"palisade-challenge",
        &[
            &ip_prefix(ip),
            user_agent,
            host.as_bytes(),
            project.as_bytes(),
        ],
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// Solved by a proof of work (the script).
    Work = 0,
    /// Solved by waiting (clients without JavaScript).
    Wait = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kid: Kid,
    pub issued_ms: u64,
    pub expires_ms: u64,
    pub bits: u8,
    pub kind: ChallengeKind,
    pub seed: [u8; 16],
    pub binding: [u8; 16],
}

impl Challenge {
    pub fn encode(&self, key: &SigningKey) -> String {
        let mut p = Vec::with_capacity(CHALLENGE_LEN);
        p.push(CHALLENGE_V1);
        p.extend_from_slice(&key.kid);
        p.extend_from_slice(&self.issued_ms.to_be_bytes());
        p.extend_from_slice(&self.expires_ms.to_be_bytes());
        p.push(self.bits);
        p.push(self.kind as u8);
        p.extend_from_slice(&self.seed);
        p.extend_from_slice(&self.binding);
        debug_assert_eq!(p.len(), CHALLENGE_LEN);
        key.seal(&p)
    }

    /// Decode and authenticate a token (not yet its expiry or binding).
    pub fn decode(keys: &Keyring, token: &str) -> Result<Challenge, Refusal> {
        let raw = B64
            .decode(token.as_bytes())
            .map_err(|_| Refusal::Malformed)?;
        if raw.first() != Some(&CHALLENGE_V1) {
            return Err(Refusal::Malformed);
        }
        let p = keys.open(&raw, CHALLENGE_LEN)?;
        let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        Ok(Challenge {
            kid: p[1..9].try_into().expect("8 bytes"),
            issued_ms: u64_at(9),
            expires_ms: u64_at(17),
            bits: p[25],
            kind: match p[26] {
                0 => ChallengeKind::Work,
                1 => ChallengeKind::Wait,
                _ => return Err(Refusal::Malformed),
            },
            seed: p[27..43].try_into().expect("16 bytes"),
            binding: p[43..59].try_into().expect("16 bytes"),
        })
    }

    /// The seed as the script sees it: 32 hex digits.
    pub fn seed_hex(&self) -> String {
        hex::encode(self.seed)
    }
}

/// Leading zero bits of SHA-256(seed hex digits || nonce).
pub fn work_bits(seed: &[u8; 16], nonce: &str) -> u32 {
    let mut input = [0u8; 40];
    hex::encode_to_slice(seed, &mut input[..32]).expect("32 hex digits");
    if nonce.len() != 8 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return 0;
    }
    input[32..].copy_from_slice(nonce.as_bytes());
    let d = digest(&SHA256, &input);
    let mut zeros = 0;
    for b in d.as_ref() {
        if *b == 0 {
            zeros += 8;
        } else {
            return zeros + b.leading_zeros();
        }
    }
    zeros
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearance {
    pub kid: Kid,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Proof-of-work bits solved; 0 for the wait of a client without JavaScript.
    pub level: u8,
    pub epoch: u32,
    pub project: [u8; 16],
    pub binding: [u8; 16],
}

/// What a clearance must match to be honoured.
pub struct Expect {
    pub now_ms: u64,
    pub project: [u8; 16],
    pub epoch: u32,
    pub binding: [u8; 16],
}

impl Clearance {
    pub fn encode(&self, key: &SigningKey) -> String {
        let mut p = Vec::with_capacity(CLEARANCE_LEN);
        p.push(CLEARANCE_V1);
        p.extend_from_slice(&key.kid);
        p.extend_from_slice(&self.issued_ms.to_be_bytes());
        p.extend_from_slice(&self.expires_ms.to_be_bytes());
        p.push(self.level);
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&self.project);
        p.extend_from_slice(&self.binding);
        debug_assert_eq!(p.len(), CLEARANCE_LEN);
        key.seal(&p)
    }

    /// Decode, authenticate and check a cookie value against what the request must match.
    pub fn verify(keys: &Keyring, value: &str, expect: &Expect) -> Result<Clearance, Refusal> {
        let mut raw = [0u8; CLEARANCE_LEN + MAC_LEN];
        match B64.decode_slice(value.as_bytes(), &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(Refusal::Malformed),
        }
        if raw[0] != CLEARANCE_V1 {
            return Err(Refusal::Malformed);
        }
        let p = keys.open(&raw, CLEARANCE_LEN)?;
        let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        let c = Clearance {
            kid: p[1..9].try_into().expect("8 bytes"),
            issued_ms: u64_at(9),
            expires_ms: u64_at(17),
            level: p[25],
            epoch: u32::from_be_bytes(p[26..30].try_into().expect("4 bytes")),
            project: p[30..46].try_into().expect("16 bytes"),
            binding: p[46..62].try_into().expect("16 bytes"),
        };
        if c.expires_ms <= expect.now_ms {
            return Err(Refusal::Expired);
        }
        if c.project != expect.project {
            return Err(Refusal::OtherProject);
        }
        if c.epoch != expect.epoch {
            return Err(Refusal::OldEpoch);
        }
        if c.binding != expect.binding {
            return Err(Refusal::OtherClient);
        }
        Ok(c)
    }
}

/// Seeds of accepted answers until their challenge expires, so that each is accepted once.
/// Bounded: past `cap` entries the oldest is forgotten first (answers cost work, so filling it
/// costs an attacker `cap` solutions within one challenge lifetime).
pub struct ReplayGuard {
    inner: Mutex<Replay>,
    cap: usize,
}

#[derive(Default)]
struct Replay {
    seen: HashSet<[u8; 16]>,
    order: VecDeque<([u8; 16], u64)>,
}

impl ReplayGuard {
    pub fn new(cap: usize) -> ReplayGuard {
        ReplayGuard {
            inner: Mutex::new(Replay::default()),
            cap,
        }
    }

    /// Note `seed` as used until `expires_ms`; false when it was used already.
    pub fn first_use(&self, seed: [u8; 16], expires_ms: u64, now_ms: u64) -> bool {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(old, until)) = r.order.front() {
            if until > now_ms && r.order.len() < self.cap {
                break;
            }
            r.order.pop_front();
            r.seen.remove(&old);
        }
        if !r.seen.insert(seed) {
            return false;
        }
        r.order.push_back((seed, expires_ms));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(active: bool, n: u8) -> SigningKey {
        SigningKey::new([n; 8], &[n; 32], active)
    }

    fn solve(seed: &[u8; 16], bits: u32) -> String {
        (0u32..)
            .map(|n| format!("{n:08x}"))
            .find(|n| work_bits(seed, n) >= bits)
            .unwrap()
    }

    #[test]
    fn a_challenge_round_trips_and_any_change_breaks_its_mac() {
        let k = key(true, 1);
        let mut ring = Keyring::default();
        ring.insert(k.clone());
        let c = Challenge {
            kid: k.kid,
            issued_ms: 1,
            expires_ms: 2,
            bits: 12,
            kind: ChallengeKind::Work,
            seed: [7; 16],
            binding: challenge_binding("192.0.2.1".parse().unwrap(), b"ua", "a.test", "shop"),
        };
        let t = c.encode(&k);
        assert_eq!(Challenge::decode(&ring, &t).unwrap(), c);
        let mut raw = B64.decode(&t).unwrap();
        raw[26] ^= 1;
        assert_eq!(
            Challenge::decode(&ring, &B64.encode(&raw)),
            Err(Refusal::BadMac)
        );
        assert_eq!(
            Challenge::decode(&Keyring::default(), &t),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(Challenge::decode(&ring, "abc"), Err(Refusal::Malformed));
        let n = solve(&c.seed, 12);
        assert!(work_bits(&c.seed, &n) >= 12);
        assert_eq!(work_bits(&c.seed, "zzzzzzzz"), 0);
        assert_eq!(work_bits(&c.seed, &n[..7]), 0);
    }

    #[test]
    fn a_clearance_holds_only_for_its_project_epoch_client_and_lifetime() {
        let (old, new) = (key(false, 1), key(true, 2));
        let mut ring = Keyring::default();
        ring.insert(old.clone());
        ring.insert(new.clone());
        let ip: IpAddr = "198.51.100.20".parse().unwrap();
        let c = Clearance {
            kid: old.kid,
            issued_ms: 0,
            expires_ms: 1000,
            level: 18,
            epoch: 3,
            project: project_tag("shop"),
            binding: clearance_binding(ip, b"Firefox"),
        };
        let cookie = c.encode(&old);
        let expect = |now_ms, project: &str, epoch, ip: &str, ua: &[u8]| Expect {
            now_ms,
            project: project_tag(project),
            epoch,
            binding: clearance_binding(ip.parse().unwrap(), ua),
        };
        let ok = Clearance::verify(
            &ring,
            &cookie,
            &expect(10, "shop", 3, "198.51.100.99", b"Firefox"),
        );
        assert_eq!(ok.unwrap(), c, "same /24, verify-only key");
        let refused = |e: Expect| Clearance::verify(&ring, &cookie, &e).unwrap_err();
        assert_eq!(
            refused(expect(1000, "shop", 3, "198.51.100.20", b"Firefox")),
            Refusal::Expired
        );
        assert_eq!(
            refused(expect(10, "blog", 3, "198.51.100.20", b"Firefox")),
            Refusal::OtherProject
        );
        assert_eq!(
            refused(expect(10, "shop", 4, "198.51.100.20", b"Firefox")),
            Refusal::OldEpoch
        );
        assert_eq!(
            refused(expect(10, "shop", 3, "198.51.101.20", b"Firefox")),
            Refusal::OtherClient
        );
        assert_eq!(
            refused(expect(10, "shop", 3, "198.51.100.20", b"curl")),
            Refusal::OtherClient
        );
        ring.remove(&old.kid);
        let e = expect(10, "shop", 3, "198.51.100.20", b"Firefox");
        assert_eq!(
            Clearance::verify(&ring, &cookie, &e),
            Err(Refusal::UnknownKey)
        );
        // IPv6 binds to the /64.
        let a = clearance_binding("2001:db8:1:2::1".parse().unwrap(), b"x");
        assert_eq!(
            a,
            clearance_binding("2001:db8:1:2:ffff::9".parse().unwrap(), b"x")
        );
        assert_ne!(
            a,
            clearance_binding("2001:db8:1:3::1".parse().unwrap(), b"x")
        );
    }

    #[test]
    fn an_answer_is_accepted_once_and_the_guard_stays_bounded() {
        let g = ReplayGuard::new(3);
        assert!(g.first_use([1; 16], 100, 0));
        assert!(!g.first_use([1; 16], 100, 1));
        for i in 2..10u8 {
            assert!(g.first_use([i; 16], 100, 2));
        }
        assert!(g.inner.lock().unwrap().seen.len() <= 3);
        // Expired entries go first.
        assert!(g.first_use([1; 16], 300, 200));
    }
}
