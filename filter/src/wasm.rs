//! What std gave the Wasm build, now that it is `no_std`: the global allocator (wasi-libc's `malloc`, as
//! std's `System` used), environment variables (wasi-libc's `getenv`, which reads WASI `environ_get` on
//! first use), and the panic handler (a critical log line with the place, then a trap).
//!
//! Tests built for wasm32 keep std (the crate is `no_std` only outside `cfg(test)`), hence the `cfg`s.

#[cfg(not(test))]
use alloc::string::String;
#[cfg(not(test))]
use core::alloc::{GlobalAlloc, Layout};
#[cfg(not(test))]
use core::ffi::{CStr, c_char, c_void};

#[cfg(not(test))]
#[link(name = "c")]
unsafe extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn calloc(n: usize, size: usize) -> *mut c_void;
    fn aligned_alloc(align: usize, size: usize) -> *mut c_void;
    fn realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn free(p: *mut c_void);
    fn getenv(name: *const c_char) -> *const c_char;
}

/// The alignment std's `System` counts on from `malloc` on wasm32 (wasi-libc's dlmalloc gives 16).
#[cfg(not(test))]
const MIN_ALIGN: usize = 8;

/// wasi-libc's allocator, used the way std's `System` uses it on this target.
#[cfg(not(test))]
struct Libc;

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: Libc = Libc;

#[cfg(not(test))]
// SAFETY: `malloc`, `calloc`, `realloc` and `aligned_alloc` return blocks of at least the size asked,
// aligned to `MIN_ALIGN`, or to `align` for `aligned_alloc`, or null; `free` takes any of them.
unsafe impl GlobalAlloc for Libc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
            // SAFETY: see the impl.
            unsafe { malloc(layout.size()).cast() }
        } else {
            // SAFETY: `align` is a power of two (a `Layout`'s).
            unsafe { aligned_alloc(layout.align(), layout.size()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
            // SAFETY: see the impl.
            unsafe { calloc(layout.size(), 1).cast() }
        } else {
            // SAFETY: as `alloc`; the block is then `size` bytes it may write.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: `p` is a fresh block of `layout.size()` bytes.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
    }

    // `free` ignores the layout: `host.rs` frees the buffer it lends the host with a smaller size than
    // it was allocated with, which this must keep allowing.
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
            // SAFETY: `ptr` came from `malloc`, `calloc` or `aligned_alloc`, all of which dlmalloc's
            // `realloc` takes; the alignment asked is at most `MIN_ALIGN`, which it keeps.
            unsafe { realloc(ptr.cast(), new_size).cast() }
        } else {
            // `GlobalAlloc`'s own fallback: a new block, the bytes copied, the old one freed.
            // SAFETY: the caller's contract for `realloc`; the layout is valid (checked by the caller).
            unsafe {
                let new = Layout::from_size_align_unchecked(new_size, layout.align());
                let p = self.alloc(new);
                if !p.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                p
            }
        }
    }
}

/// The environment variable `name` if it is set and UTF-8 (what `std::env::var(name).ok()` gives).
#[cfg(not(test))]
pub fn env_var(name: &str) -> Option<String> {
    if name.as_bytes().contains(&0) {
        return None;
    }
    let mut c = alloc::vec::Vec::with_capacity(name.len() + 1);
    c.extend_from_slice(name.as_bytes());
    c.push(0);
    // SAFETY: `c` is NUL-terminated; `getenv` returns null or a NUL-terminated string that stays valid
    // until the environment changes (nothing here changes it).
    let value = unsafe { getenv(c.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: see above.
    let value = unsafe { CStr::from_ptr(value) };
    value.to_str().ok().map(String::from)
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
