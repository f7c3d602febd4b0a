//! Clearance cookies this worker thread verified lately, so that a client's next requests skip
//! the base64, the MAC and the two binding hashes ([`super::challenge::Clearance::verify`]).
//!
//! What `verify` decides depends on the cookie, the client's address prefix and user agent (the
//! binding), the project and its epoch, the keyring and the time. An entry is kept only for a
//! cookie `verify` honoured, and answers only for exactly the same cookie, prefix, user agent,
//! project, epoch and keyring contents ([`super::keyring::Keyring::generation`]), with the
//! expiry checked again: it never honours a cookie `verify` would refuse. A refused cookie is
//! never kept. Direct-mapped: [`SLOTS`] entries per thread, a newer cookie replacing whichever
//! held its slot (cookies crafted to collide only cost their sender a verification).

use std::cell::RefCell;
use std::hash::BuildHasher;

use palisade_raft::ids::ProjectId;

const SLOTS: usize = 256;
/// User agents longer than this are verified on every request (an entry holds the bytes).
const MAX_USER_AGENT: usize = 512;

/// What a request presents with its cookie, besides the cookie.
pub struct Presented<'a> {
    pub value: &'a str,
    pub prefix: [u8; 17],
    pub user_agent: &'a [u8],
    pub project: &'a ProjectId,
    pub epoch: u32,
    pub keys: u64,
}

/// What `verify` found in an honoured cookie, as the gate needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Honoured {
    pub issued_ms: u64,
    pub expires_ms: u64,
    pub level: u8,
}

struct Entry {
    value: Box<str>,
    prefix: [u8; 17],
    user_agent: Box<[u8]>,
    project: ProjectId,
    epoch: u32,
    keys: u64,
    honoured: Honoured,
}

impl Entry {
    fn answers(&self, p: &Presented<'_>) -> bool {
        *self.value == *p.value
            && self.prefix == p.prefix
            && *self.user_agent == *p.user_agent
            && self.project == *p.project
            && self.epoch == p.epoch
            && self.keys == p.keys
    }
}

thread_local! {
    static MEMO: RefCell<Vec<Option<Entry>>> = RefCell::new((0..SLOTS).map(|_| None).collect());
}

fn slot(value: &str) -> usize {
    foldhash::fast::FixedState::with_seed(0x6c62_272e).hash_one(value) as usize % SLOTS
}

/// The earlier verdict on exactly this presentation, if it still holds at `now_ms`.
pub fn get(p: &Presented<'_>, now_ms: u64) -> Option<Honoured> {
    MEMO.with_borrow(|m| {
        m[slot(p.value)]
            .as_ref()
            .filter(|e| e.answers(p) && e.honoured.expires_ms > now_ms)
            .map(|e| e.honoured)
    })
}

/// Keep what `verify` honoured for this presentation.
pub fn put(p: &Presented<'_>, honoured: Honoured) {
    if p.user_agent.len() > MAX_USER_AGENT {
        return;
    }
    let entry = Entry {
        value: p.value.into(),
        prefix: p.prefix,
        user_agent: p.user_agent.into(),
        project: p.project.clone(),
        epoch: p.epoch,
        keys: p.keys,
        honoured,
    };
    MEMO.with_borrow_mut(|m| m[slot(p.value)] = Some(entry));
}

#[cfg(test)]
mod tests {
    use super::*;

    const HONOURED: Honoured = Honoured {
        issued_ms: 1_000,
        expires_ms: 10_000,
        level: 8,
    };

    fn presented<'a>(project: &'a ProjectId, value: &'a str) -> Presented<'a> {
        Presented {
            value,
            prefix: [4, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            user_agent: b"Mozilla/5.0",
            project,
            epoch: 1,
            keys: 7,
        }
    }

    #[test]
    fn answers_only_the_same_presentation_and_only_until_expiry() {
        let (shop, blog) = ("shop".parse().unwrap(), "blog".parse().unwrap());
        let p = presented(&shop, "cookie-a");
        assert_eq!(get(&p, 2_000), None, "nothing kept yet");
        put(&p, HONOURED);
        assert_eq!(get(&p, 2_000), Some(HONOURED));
        assert_eq!(get(&p, 10_000), None, "expired");

        let others = [
            Presented {
                value: "cookie-b",
                ..presented(&shop, "")
            },
            Presented {
                prefix: [4, 10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..presented(&shop, "cookie-a")
            },
            Presented {
                user_agent: b"curl/8",
                ..presented(&shop, "cookie-a")
            },
            presented(&blog, "cookie-a"),
            Presented {
                epoch: 2,
                ..presented(&shop, "cookie-a")
            },
            Presented {
                keys: 8,
                ..presented(&shop, "cookie-a")
            },
        ];
        for (i, other) in others.iter().enumerate() {
            assert_eq!(
                get(other, 2_000),
                None,
                "variation {i} must be verified again"
            );
        }
        // Still there for the original.
        assert_eq!(get(&p, 2_000), Some(HONOURED));
    }

    #[test]
    fn a_long_user_agent_is_not_kept() {
        let shop = "shop".parse().unwrap();
        let ua = vec![b'a'; MAX_USER_AGENT + 1];
        let p = Presented {
            user_agent: &ua,
            ..presented(&shop, "cookie-long-ua")
        };
        put(&p, HONOURED);
        assert_eq!(get(&p, 2_000), None);
    }
}
