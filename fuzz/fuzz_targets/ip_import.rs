//! One line of an IP-list import (plain or CSV, with or without a header).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, line) = text.split_once('\n').unwrap_or(("", text));
    for header in [None, Some(header)] {
        if let Ok(Some((cidr, note, _))) = palisade_admin::routes::import_line(header, line, 0) {
            assert!(note.len() <= 4 * line.len() + 16);
            let _ = cidr.to_string();
        }
    }
});
