//! What std gave the Wasm build, now that it is `no_std`: the global allocator ([`crate::heap`]),
//! environment variables (WASI's `environ_get`), and the panic handler (a critical log line with the
//! place, then a trap).
//!
//! Tests built for wasm32 keep std (the crate is `no_std` only outside `cfg(test)`), hence the `cfg`s.

#[cfg(not(test))]
use alloc::string::String;
#[cfg(not(test))]
use core::alloc::{GlobalAlloc, Layout};

// wasi-libc, for the `memcmp` the compiler's code calls.
#[cfg(not(test))]
#[link(name = "c")]
unsafe extern "C" {}

#[cfg(not(test))]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn environ_sizes_get(count: *mut usize, bytes: *mut usize) -> u16;
    fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
}

/// The allocator ([`crate::heap`]) over every page a 32-bit memory can have.
#[cfg(not(test))]
type Heap = crate::heap::Heap<65536>;

/// The allocator and its state, in a static: one thread (see `host::VmLocal`).
#[cfg(not(test))]
struct Global(core::cell::UnsafeCell<Heap>);

// SAFETY: one thread only; nothing the allocator calls allocates, so it is never re-entered.
#[cfg(not(test))]
unsafe impl Sync for Global {}

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: Global = Global(core::cell::UnsafeCell::new(Heap::new(0)));

#[cfg(not(test))]
impl Global {
    /// # Safety
    /// No other reference to the state is live: true within one allocator call (see `Sync` above).
    #[allow(clippy::mut_from_ref)]
    unsafe fn heap(&self) -> &mut Heap {
        // SAFETY: see above.
        unsafe { &mut *self.0.get() }
    }
}

#[cfg(not(test))]
// SAFETY: a block of class `c` holds `2^c` bytes, at least the size asked, aligned to its size (at
// least the alignment asked) or to a page; a block is handed out once until it is freed.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = Heap::class(layout.size(), layout.align()) else {
            return core::ptr::null_mut();
        };
        let grow = |pages| match core::arch::wasm32::memory_grow(0, pages) {
            usize::MAX => None,
            old => Some(old * crate::heap::PAGE),
        };
        // SAFETY: only `dealloc` puts blocks on the lists.
        unsafe { self.heap().take(c, grow) as *mut u8 }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` and is no longer used.
        unsafe { self.heap().free(ptr as usize) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Heap::class(new_size, layout.align()) == Heap::class(layout.size(), layout.align()) {
            return ptr;
        }
        // SAFETY: the caller's contract for `realloc`; the layout is valid (checked by the caller).
        unsafe {
            let p = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !p.is_null() {
                core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

/// The environment variable `name` if it is set and UTF-8 (what `std::env::var(name).ok()` gives), read
/// through WASI's `environ_get` (wasi-libc's `getenv` would bring in its `malloc`).
#[cfg(not(test))]
pub fn env_var(name: &str) -> Option<String> {
    let (mut count, mut bytes) = (0, 0);
    // SAFETY: the host writes two numbers through pointers to locals.
    if unsafe { environ_sizes_get(&mut count, &mut bytes) } != 0 {
        return None;
    }
    let mut pointers = alloc::vec![core::ptr::null_mut(); count];
    let mut buf = alloc::vec![0u8; bytes];
    // SAFETY: room for `count` pointers and `bytes` bytes, as the host said it needs.
    if unsafe { environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return None;
    }
    env_entry(&buf, name).map(String::from)
}

/// The value of `name` in WASI's environment block: `NAME=value` entries, each ended by a NUL; `None`
/// if absent or not UTF-8.
fn env_entry<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    block.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        core::str::from_utf8(value).ok()
    })
}

#[cfg(test)]
pub fn env_var(name: &str) -> Option<alloc::string::String> {
    std::env::var(name).ok()
}

/// Under `panic = "abort"` the VM dies after this; at least say where, without any request data (never
/// the message, which could hold one). Allocates nothing: an allocation failure ends here too.
#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    use core::sync::atomic::{AtomicBool, Ordering};
    static PANICKED: AtomicBool = AtomicBool::new(false);
    if !PANICKED.swap(true, Ordering::Relaxed) {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        let _ = line.write_str("oidc-filter: panic at ");
        if let Some(l) = info.location() {
            let _ = write!(line, "{}:{}", l.file(), l.line());
        }
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap_or("oidc-filter: panic");
        crate::host::log(crate::host::LogLevel::Critical, text);
    }
    core::arch::wasm32::unreachable()
}

/// A log line on the stack; what does not fit is cut at a character boundary.
#[cfg(not(test))]
struct Line {
    buf: [u8; 256],
    len: usize,
}

#[cfg(not(test))]
impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_environment_entry_is_found_by_its_whole_name() {
        let block = b"OIDC_SECRET_X=no\0OIDC_SECRET=a=b c\0EMPTY=\0BAD=\xff\0";
        assert_eq!(super::env_entry(block, "OIDC_SECRET"), Some("a=b c"));
        assert_eq!(super::env_entry(block, "OIDC_SECRET_X"), Some("no"));
        assert_eq!(super::env_entry(block, "OIDC"), None);
        assert_eq!(super::env_entry(block, "EMPTY"), Some(""));
        assert_eq!(super::env_entry(block, "BAD"), None);
        assert_eq!(super::env_entry(b"", "X"), None);
    }

    /// A name set twice reads as its first entry, as `getenv` (and so `std::env::var`) reads it.
    #[test]
    fn a_name_set_twice_is_its_first_entry() {
        let block = b"A=1\0NAME=first\0B=2\0NAME=second\0";
        assert_eq!(super::env_entry(block, "NAME"), Some("first"));
    }
}
