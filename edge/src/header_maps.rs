//! Each worker's free list of header maps.
//!
//! A proxied request builds two maps (the request's, parsed by [`crate::h1`], and the
//! upstream response's, parsed by [`crate::codec`]), each two allocations (its index and its
//! entries) and a drop. A map that has served a message goes back to the worker's list,
//! emptied (its values, slices of a connection's read buffer, are dropped then, so it holds no
//! buffer), and the next message's head is parsed into it. The list is bounded in length, and a
//! map that grew past [`KEPT_CAPACITY`] fields is not kept, so it costs at most
//! `FREE_LIST × KEPT_CAPACITY` entries per worker.

use std::cell::RefCell;

use hyper::HeaderMap;

/// How many maps a worker keeps free.
const FREE_LIST: usize = 64;
/// A map with room for more fields than this is dropped, not kept.
const KEPT_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `fields`: from the worker's list when it has one.
pub fn take(fields: usize) -> HeaderMap {
    match MAPS.with(|l| l.borrow_mut().pop()) {
        Some(mut m) => {
            if m.capacity() < fields {
                m.reserve(fields);
            }
            m
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Back onto the worker's list, emptied; dropped when the list is full or the map is large.
pub fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > KEPT_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < FREE_LIST {
            l.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, HOST};

    #[test]
    fn a_map_comes_back_empty_with_its_room_and_large_ones_are_not_kept() {
        MAPS.with(|l| l.borrow_mut().clear());
        let mut m = take(12);
        assert!(m.capacity() >= 12);
        m.insert(HOST, HeaderValue::from_static("a.test"));
        let room = m.capacity();
        give(m);
        let again = take(4);
        assert!(
            again.is_empty(),
            "a reused map holds nothing of its last message"
        );
        assert_eq!(again.capacity(), room);
        // More room than it has: it grows.
        give(again);
        assert!(take(room + 20).capacity() >= room + 20);
        // A map that grew large is dropped, not kept.
        give(HeaderMap::with_capacity(KEPT_CAPACITY * 4));
        assert_eq!(MAPS.with(|l| l.borrow().len()), 0);
        // The list is bounded.
        for _ in 0..FREE_LIST + 10 {
            give(HeaderMap::with_capacity(8));
        }
        assert_eq!(MAPS.with(|l| l.borrow().len()), FREE_LIST);
    }
}
