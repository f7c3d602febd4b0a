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
}

impl Keyring {
    pub fn insert(&mut self, key: SigningKey) {
        self.keys.insert(key.kid, key);
    }

    pub fn remove(&mut self, kid: &Kid) {
        self.keys.remove(kid);
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
