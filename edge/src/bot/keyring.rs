//! The keys this node signs and verifies challenges and clearance cookies with: the replicated
//! keyring (`botkey/*`), opened. The active key signs; every key verifies until it is deleted.
//! (The keyring's rotation is a background job: [`crate::jobs::keyring`].)

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;

use super::challenge::{Refusal, MAC_LEN};

/// A key id: the keyring names keys with 16 hex digits.
pub type Kid = [u8; 8];

/// One signing key of the keyring, opened.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Kid,
    /// Signs new tokens and cookies (the keyring's `active` key); others only verify.
    pub active: bool,
    key: hmac::Key,
}

impl SigningKey {
    pub fn new(kid: Kid, secret: &[u8], active: bool) -> SigningKey {
        SigningKey {
            kid,
            active,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub(super) fn seal(&self, payload: &[u8]) -> String {
        let tag = hmac::sign(&self.key, payload);
        let mut out = Vec::with_capacity(payload.len() + MAC_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(tag.as_ref());
        B64.encode(out)
    }
}

/// The keys a node can verify with, by id; the active one signs.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<Kid, SigningKey>,
    /// Which contents these are: a number no other keyring contents of this process have had
    /// (every change draws a new one; a clone keeps it, as it keeps the keys), so that what was
    /// verified with one keyring is known to hold for another with the same number.
    generation: u64,
}

impl Keyring {
    pub fn insert(&mut self, key: SigningKey) {
        self.keys.insert(key.kid, key);
        self.changed();
    }

    pub fn remove(&mut self, kid: &Kid) {
        if self.keys.remove(kid).is_some() {
            self.changed();
        }
    }

    fn changed(&mut self) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        self.generation = NEXT.fetch_add(1, Ordering::Relaxed);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.values().find(|k| k.active)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Split a token into its payload after checking its MAC with the key it names.
    pub(super) fn open<'a>(&self, raw: &'a [u8], len: usize) -> Result<&'a [u8], Refusal> {
        if raw.len() != len + MAC_LEN {
            return Err(Refusal::Malformed);
        }
        let (payload, tag) = raw.split_at(len);
        let kid: Kid = payload[1..9].try_into().expect("8 bytes");
        let key = self.keys.get(&kid).ok_or(Refusal::UnknownKey)?;
        hmac::verify(&key.key, payload, tag).map_err(|_| Refusal::BadMac)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_draws_a_new_generation_and_a_clone_keeps_it() {
        let mut ring = Keyring::default();
        let mut seen = vec![ring.generation()];
        ring.insert(SigningKey::new(*b"kid00001", b"secret one", true));
        seen.push(ring.generation());
        let copy = ring.clone();
        assert_eq!(copy.generation(), ring.generation());
        ring.insert(SigningKey::new(*b"kid00002", b"secret two", false));
        seen.push(ring.generation());
        ring.remove(b"kid00002");
        seen.push(ring.generation());
        let before = ring.generation();
        ring.remove(b"kid00009");
        assert_eq!(ring.generation(), before, "removing no key changes nothing");
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seen.len(), "{seen:?}");
        assert_eq!(copy.generation(), seen[1], "the clone is unaffected");
    }
}
