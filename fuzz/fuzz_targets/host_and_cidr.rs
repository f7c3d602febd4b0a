//! Host names and CIDRs as the admin API and the public listeners read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_raft::ids::{Cidr, Hostname};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = text.parse::<Cidr>() {
        // What is stored reads back as itself.
        let again: Cidr = c.to_string().parse().expect("a CIDR's text parses");
        assert_eq!(again, c);
    }
    if let Ok(h) = text.parse::<Hostname>() {
        let again: Hostname = h.to_string().parse().expect("a host name's text parses");
        assert_eq!(again, h);
    }
    if palisade_edge::pipeline::valid_host(text) {
        assert!(text.len() <= 253 || text.parse::<std::net::IpAddr>().is_ok());
        assert!(!text.contains('/') && !text.contains('%'));
    }
});
