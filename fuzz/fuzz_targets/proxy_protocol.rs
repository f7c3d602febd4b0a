//! The PROXY protocol header (v1 text, v2 binary) as a trusted load balancer's connection starts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let before = input.len();
    let _ = futures::executor::block_on(palisade_edge::proxy_protocol::read_header(&mut input));
    // The header is read and nothing past it: the request bytes stay for HTTP.
    assert!(input.len() <= before);
});
