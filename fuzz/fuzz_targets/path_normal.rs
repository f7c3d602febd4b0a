//! Request paths in normal form: one form, reached in one step, with no way back out of `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_raft::model::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize(path);
    assert_eq!(normalize(&once), once, "normal form is a fixed point");
    if path.starts_with('/') {
        assert!(once.starts_with('/'));
        for seg in once.split('/').skip(1) {
            assert!(seg != "." && seg != "..", "{path:?} -> {once:?}");
        }
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
    }
});
