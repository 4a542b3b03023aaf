//! The Wasm build's allocator: a free list per power-of-two size class, over pages the module grows its
//! memory by. It replaced wasi-libc's dlmalloc, whose code took about 10 KB of the module and whose
//! path for a kilobyte block ran about 250 instructions; here a block is a pop or a push.
//!
//! A block of class `c` is `2^c` bytes (16 at least), aligned to its size: classes under a page are cut
//! from 64 KiB pages of their own (a page per class at a time, cut as needed, so an untouched part
//! costs no resident memory), larger ones are whole pages. A freed block goes to its class's list and
//! serves that class again; memory is never given back (Wasm memory cannot shrink, and dlmalloc kept
//! it too). The cost: a block holds up to twice what was asked, and what a class holds at its peak
//! stays with that class.
//!
//! Natively (tests) the same code runs over pages a test hands out, so it is checked there.

/// Wasm's page: what memory grows by.
pub const PAGE: usize = 65536;
/// The smallest class, 16 bytes: room for a list link, and the alignment `malloc` gave.
const MIN_CLASS: u32 = 4;
/// Classes from `2^MIN_CLASS` up to 2 GiB, more than a 32-bit memory can hold.
const CLASSES: usize = 32;
/// The classes cut from pages: under 64 KiB.
const PAGE_CLASS: u32 = 16;

/// The allocator's state: addresses, 0 for none.
pub struct Heap {
    /// Each class's freed blocks; each holds the address of the next.
    free: [usize; CLASSES],
    /// Where each small class's current page has its next uncut block, and where that page ends.
    next: [usize; PAGE_CLASS as usize],
    end: [usize; PAGE_CLASS as usize],
}

impl Heap {
    pub const fn new() -> Self {
        Heap {
            free: [0; CLASSES],
            next: [0; PAGE_CLASS as usize],
            end: [0; PAGE_CLASS as usize],
        }
    }

    /// The class of a block of `size` bytes aligned to `align` (a power of two); `None` past 2 GiB, or
    /// for an alignment past a page (no block has it).
    pub fn class(size: usize, align: usize) -> Option<u32> {
        if align > PAGE {
            return None;
        }
        let s = size.max(align).max(1 << MIN_CLASS);
        let c = usize::BITS - (s - 1).leading_zeros();
        (c < CLASSES as u32).then_some(c)
    }

    /// A block of class `c`, or 0 when `grow` (which adds that many pages and says where they start)
    /// has none to give.
    ///
    /// # Safety
    /// Every block on a list is one [`Heap::free`] took, which nothing else uses.
    pub unsafe fn take(&mut self, c: u32, grow: impl FnOnce(usize) -> Option<usize>) -> usize {
        let ci = c as usize;
        let head = self.free[ci];
        if head != 0 {
            // SAFETY: a freed block of at least 16 bytes, aligned, whose first word is the link.
            self.free[ci] = unsafe { *(head as *const usize) };
            return head;
        }
        if c >= PAGE_CLASS {
            return grow(1 << (c - PAGE_CLASS)).unwrap_or(0);
        }
        if self.next[ci] == self.end[ci] {
            let Some(page) = grow(1) else { return 0 };
            self.next[ci] = page;
            self.end[ci] = page + PAGE;
        }
        let block = self.next[ci];
        self.next[ci] += 1 << c;
        block
    }

    /// Gives block `p` of class `c` back.
    ///
    /// # Safety
    /// `p` came from [`Heap::take`] for class `c` (or a larger one) and is no longer used.
    pub unsafe fn free(&mut self, p: usize, c: u32) {
        let ci = c as usize;
        // SAFETY: the block is at least 16 bytes, aligned, and ours again.
        unsafe { *(p as *mut usize) = self.free[ci] };
        self.free[ci] = p;
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages from a buffer of the test's, handed out in order until `limit` of them are.
    struct Pages {
        buf: Vec<u8>,
        used: usize,
        limit: usize,
    }

    impl Pages {
        fn new(limit: usize) -> Self {
            Pages {
                buf: vec![0; (limit + 1) * PAGE],
                used: 0,
                limit,
            }
        }
        fn grow(&mut self, n: usize) -> Option<usize> {
            if self.used + n > self.limit {
                return None;
            }
            let base = (self.buf.as_ptr() as usize).next_multiple_of(PAGE);
            let at = base + self.used * PAGE;
            self.used += n;
            Some(at)
        }
    }

    #[test]
    fn classes_are_the_next_power_of_two_from_16() {
        assert_eq!(Heap::class(1, 1), Some(4));
        assert_eq!(Heap::class(16, 8), Some(4));
        assert_eq!(Heap::class(17, 1), Some(5));
        assert_eq!(Heap::class(1, 64), Some(6));
        assert_eq!(Heap::class(65536, 1), Some(16));
        assert_eq!(Heap::class(65537, 1), Some(17));
        assert_eq!(Heap::class(1 << 31, 1), Some(31));
        assert_eq!(Heap::class((1 << 31) + 1, 1), None);
        assert_eq!(Heap::class(usize::MAX, 1), None);
        assert_eq!(Heap::class(1, PAGE), Some(16));
        assert_eq!(Heap::class(1, 2 * PAGE), None);
    }

    #[test]
    fn blocks_are_aligned_apart_and_reused_once_freed() {
        let mut pages = Pages::new(64);
        let mut heap = Heap::new();
        let mut live: Vec<(usize, u32, usize, u8)> = Vec::new();
        // Sizes across the small classes and a few whole-page ones, each block filled with a mark.
        for (i, size) in [
            1usize, 16, 17, 100, 1000, 4096, 5000, 40000, 65536, 70000, 200000,
        ]
        .iter()
        .cycle()
        .take(60)
        .enumerate()
        {
            let c = Heap::class(*size, 1).unwrap();
            let p = unsafe { heap.take(c, |n| pages.grow(n)) };
            assert_ne!(p, 0, "{size} bytes");
            assert_eq!(p % (1 << c).min(PAGE), 0, "{size} bytes at {p:#x}");
            let mark = i as u8;
            unsafe { std::ptr::write_bytes(p as *mut u8, mark, *size) };
            live.push((p, c, *size, mark));
        }
        // No two blocks overlap: every block still holds its own mark.
        for &(p, _, size, mark) in &live {
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            assert!(bytes.iter().all(|&b| b == mark), "{p:#x}");
        }
        let used = pages.used;
        // Freed, each class serves its own blocks again without growing.
        for &(p, c, _, _) in &live {
            unsafe { heap.free(p, c) };
        }
        let mut again: Vec<usize> = live
            .iter()
            .map(|&(_, c, _, _)| unsafe { heap.take(c, |n| pages.grow(n)) })
            .collect();
        assert_eq!(pages.used, used);
        let mut before: Vec<usize> = live.iter().map(|&(p, ..)| p).collect();
        again.sort_unstable();
        before.sort_unstable();
        assert_eq!(again, before);
    }

    #[test]
    fn no_memory_is_a_null_block_not_a_fault() {
        let mut pages = Pages::new(2);
        let mut heap = Heap::new();
        let big = Heap::class(3 * PAGE, 1).unwrap();
        assert_eq!(unsafe { heap.take(big, |n| pages.grow(n)) }, 0);
        let small = Heap::class(PAGE / 2, 1).unwrap();
        // Two pages: two blocks of half a page each, then none.
        let blocks: Vec<usize> = (0..6)
            .map(|_| unsafe { heap.take(small, |n| pages.grow(n)) })
            .collect();
        assert_eq!(blocks.iter().filter(|&&p| p != 0).count(), 4);
        assert_eq!(&blocks[4..], &[0, 0]);
    }
}
