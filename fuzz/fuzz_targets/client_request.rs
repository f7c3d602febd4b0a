//! A client's request as the edge's own HTTP/1.1 server reads it: the head (with a size limit
//! the first byte chooses), arriving in two pieces at a point the input chooses, then the body
//! by the framing the head declared. Besides not panicking: a head is never accepted past the
//! limit, a request never has both framings, and a chunked body is never longer than the
//! bytes it came in.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_edge::codec::{Chunked, Step};
use palisade_edge::h1::{parse_request, RequestBodyFraming};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let max = 64 + usize::from(flags & 0x0f) * 256;
    let split = (usize::from(flags >> 4) * rest.len() / 16).min(rest.len());
    let (first, second) = rest.split_at(split);
    let mut buf = BytesMut::from(first);
    let before = buf.len();
    let head = match parse_request(&mut buf, max) {
        Ok(Some(h)) => Some((h, before - buf.len())),
        Ok(None) => {
            buf.extend_from_slice(second);
            let before = buf.len();
            match parse_request(&mut buf, max) {
                Ok(Some(h)) => Some((h, before - buf.len())),
                _ => None,
            }
        }
        Err(_) => None,
    };
    let Some((head, consumed)) = head else {
        return;
    };
    assert!(consumed <= max, "a head over the limit is refused");
    let te = head.headers.contains_key("transfer-encoding");
    let cl = head.headers.contains_key("content-length");
    assert!(!(te && cl), "never both framings");
    match head.body {
        RequestBodyFraming::Chunked => {
            assert!(te);
            if buf.len() < second.len() {
                buf.extend_from_slice(second);
            }
            let available = buf.len() as u64;
            let mut dec = Chunked::default();
            let mut body = 0u64;
            loop {
                match dec.decode(&mut buf) {
                    Ok(Step::Data(d)) => {
                        assert!(!d.is_empty(), "no empty data frames");
                        body += d.len() as u64;
                    }
                    Ok(Step::More | Step::End) | Err(_) => break,
                }
            }
            assert!(body <= available);
        }
        RequestBodyFraming::Length(n) => assert!(n > 0 && cl && !te),
        RequestBodyFraming::None => assert!(!te),
    }
});
