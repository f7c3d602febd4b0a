//! Challenge tokens and clearance cookies as a client sends them back: nothing but what the
//! keyring signed verifies, a genuine cookie changed anywhere is refused, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_edge::bot::challenge::{Challenge, Clearance, Expect};
use palisade_edge::bot::keyring::{Keyring, SigningKey};

fn key() -> SigningKey {
    SigningKey::new([7; 8], &[42; 32], true)
}

fuzz_target!(|data: &[u8]| {
    let mut keys = Keyring::default();
    keys.insert(key());
    let genuine = Clearance {
        kid: [7; 8],
        issued_ms: 1,
        expires_ms: 1 << 60,
        level: 18,
        epoch: 3,
        project: [1; 16],
        binding: [2; 16],
    };
    let expect = Expect {
        now_ms: 2,
        project: [1; 16],
        epoch: 3,
        binding: [2; 16],
    };
    let cookie = genuine.encode(&key());
    assert_eq!(Clearance::verify(&keys, &cookie, &expect), Ok(genuine.clone()));

    // The input as a token of its own.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Challenge::decode(&keys, text);
        if let Ok(c) = Clearance::verify(&keys, text, &expect) {
            assert_eq!(c, genuine, "a cookie the keyring did not sign verified");
        }
    }
    // The input as edits of the genuine cookie: (position, xor) pairs.
    let mut edited = cookie.clone().into_bytes();
    for pair in data.chunks_exact(2) {
        let at = usize::from(pair[0]) % edited.len();
        edited[at] ^= pair[1];
    }
    if let Ok(text) = String::from_utf8(edited) {
        if let Ok(c) = Clearance::verify(&keys, &text, &expect) {
            assert_eq!(c, genuine, "an edited cookie verified as something else");
            assert_eq!(text, cookie, "an edited cookie verified");
        }
    }
});
