//! The allocator of the node's Rust code: mimalloc, or the system's (glibc malloc) when the
//! environment says `PALISADE_ALLOCATOR=system`. (RocksDB's C++ allocates with glibc's either
//! way.)
//!
//! mimalloc is the default because `palisade-bench allocator` measures it cheaper per proxied
//! request (2% fewer instructions, by callgrind; the CPU time it saves is within the noise;
//! figures in `bench/README.md`); the system allocator holds less memory per idle connection. The switch lets the two be compared on the same binary in the same run,
//! and lets an operator choose memory over CPU or rule the allocator out of a memory problem. The choice is made once, at the process's first allocation
//! (before `main`, so the environment is read with `getenv`, which does not allocate), and never
//! changes: every block is freed by the allocator that made it.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// The environment variable that picks the allocator.
pub const VARIABLE: &str = "PALISADE_ALLOCATOR";

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

pub struct Allocator;

#[global_allocator]
static GLOBAL: Allocator = Allocator;

#[inline]
fn choice() -> u8 {
    match CHOICE.load(Ordering::Relaxed) {
        UNDECIDED => decide(),
        c => c,
    }
}

#[cold]
fn decide() -> u8 {
    // SAFETY: getenv with a NUL-terminated name; the pointer it returns is read at once, before
    // anything could change the environment (this runs at the process's first allocation).
    let value = unsafe {
        let p = libc::getenv(c"PALISADE_ALLOCATOR".as_ptr());
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_bytes() == b"system")
    };
    let c = if value == Some(true) {
        SYSTEM
    } else {
        MIMALLOC
    };
    // Two threads deciding at once decide the same.
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// The allocator in use, by name.
pub fn name() -> &'static str {
    if choice() == SYSTEM {
        "system"
    } else {
        "mimalloc"
    }
}

/// The value of [`VARIABLE`], if it is not one this module knows: the caller refuses to start.
pub fn invalid_setting() -> Option<String> {
    let v = std::env::var_os(VARIABLE)?;
    (v != "system" && v != "mimalloc").then(|| v.to_string_lossy().into_owned())
}

// SAFETY: each call goes to the one allocator chosen for the whole process, with the caller's
// arguments unchanged.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if choice() == SYSTEM {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if choice() == SYSTEM {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if choice() == SYSTEM {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if choice() == SYSTEM {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }
}
