//! A frame on the cluster port, as a stranger may send it: version, length, JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_raft::transport::decode_frame;
use palisade_raft::transport::proto::{Rpc, MAX_STRANGER_FRAME};

fuzz_target!(|data: &[u8]| {
    if let Ok(len) = decode_frame::<Rpc>(data, MAX_STRANGER_FRAME).map(|_| data.len()) {
        // Whatever decodes was within the stranger's limit.
        assert!(len <= 5 + MAX_STRANGER_FRAME);
    }
});
