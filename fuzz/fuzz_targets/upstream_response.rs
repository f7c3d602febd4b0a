//! An upstream's answer as the edge's own HTTP/1.1 codec reads it: the response head (with the
//! first byte choosing whether the request was `HEAD`), then the body by the framing the head
//! declared, the bytes arriving in two pieces at a point the input chooses.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_edge::codec::{self, Chunked, Framing, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let split = (usize::from(flags >> 1) * rest.len() / 128).min(rest.len());
    let (first, second) = rest.split_at(split);
    let mut buf = BytesMut::from(first);
    let head = match codec::parse_head(&mut buf, flags & 1 == 1) {
        Ok(Some(h)) => h,
        Ok(None) => {
            buf.extend_from_slice(second);
            match codec::parse_head(&mut buf, flags & 1 == 1) {
                Ok(Some(h)) => h,
                _ => return,
            }
        }
        Err(_) => return,
    };
    if !second.is_empty() && buf.len() < second.len() {
        buf.extend_from_slice(second);
    }
    let available = buf.len() as u64;
    match head.framing {
        Framing::Chunked => {
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
            assert!(body <= available, "a body is never longer than the bytes it came in");
        }
        Framing::Length(n) => assert!(n > 0, "an empty length is no body"),
        Framing::Empty | Framing::Close => {}
    }
    if head.framing != Framing::Chunked {
        // Transfer-Encoding present: the length it overrides is gone.
        assert!(
            !head.headers.contains_key("transfer-encoding")
                || head.framing == Framing::Close
                || head.framing == Framing::Empty
        );
    } else {
        assert!(!head.headers.contains_key("content-length"));
    }
});
