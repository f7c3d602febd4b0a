//! Request paths in normal form: one form, reached in one step, with no way back out of `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_raft::model::path::{forward_form, normalize, path_matches};

/// The path as the most liberal upstream reads it: `;` parameters dropped, encoded and literal
/// backslashes and encoded slashes taken as separators.
fn liberal(path: &str) -> String {
    let path = path
        .replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/");
    let stripped: Vec<&str> = path
        .split('/')
        .map(|s| s.split_once(';').map_or(s, |(s, _)| s))
        .collect();
    normalize(&stripped.join("/")).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    // The form sent upstream: a fixed point, with no dot segment, compared as `normalize`.
    let forward = forward_form(path);
    assert_eq!(forward_form(&forward), forward, "forward form is a fixed point");
    assert_eq!(normalize(&forward), normalize(path), "{path:?} -> {forward:?}");
    if path.starts_with('/') {
        for seg in forward.split('/').skip(1) {
            assert!(seg != "." && seg != "..", "{path:?} -> {forward:?}");
        }
    }
    let once = normalize(path);
    assert_eq!(normalize(&once), once, "normal form is a fixed point");
    if path.starts_with('/') {
        assert!(once.starts_with('/'));
        for seg in once.split('/').skip(1) {
            assert!(seg != "." && seg != "..", "{path:?} -> {once:?}");
        }
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
        // An exempt prefix covers only paths that every upstream reads as inside it.
        let exempt = ["/hooks/*".to_string()];
        if path_matches(&exempt, &once) {
            assert!(liberal(&once).starts_with("/hooks/"), "{path:?} -> {once:?}");
        }
    }
});
