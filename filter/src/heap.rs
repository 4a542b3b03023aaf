//! The Wasm build's allocator: power-of-two size classes over 64 KiB pages the module grows its memory
//! by. It replaced wasi-libc's dlmalloc, whose code took about 10 KB of the module and whose path for a
//! kilobyte block ran about 250 instructions; here a block is a pop or a push and a little bookkeeping.
//!
//! A block of class `c` is `2^c` bytes (16 at least), aligned to its size. Classes under a page are cut
//! from pages of their own, each page cut as needed (an untouched part costs no resident memory), its
//! freed blocks on a list of its own. A page whose blocks are all freed goes back to a pool that serves
//! every class (found in review: with a list per class, memory one class had once held stayed with it,
//! and a user's bursts of parked requests with paths of other lengths each time held seven times the
//! bytes they were capped at). A block of a page is a pool page; a larger one is whole pages, kept for
//! its class when freed. Memory is never given back to the host (Wasm memory cannot shrink; dlmalloc
//! kept it too). The cost: a block holds up to twice what was asked.
//!
//! The pages' bookkeeping sits apart from them (a header in a page would cost a 32 KiB class half of
//! it), in a table indexed by page number: 16 bytes per page of a 32-bit memory, in memory never
//! touched for pages never used. Natively (tests) the same code runs over pages a test hands out.

/// Wasm's page: what memory grows by.
pub const PAGE: usize = 65536;
/// The smallest class, 16 bytes: room for a list link, and the alignment `malloc` gave.
const MIN_CLASS: u32 = 4;
/// Classes from `2^MIN_CLASS` up to 2 GiB, more than a 32-bit memory can hold.
const CLASSES: usize = 32;
/// The first class of whole pages; those below are cut from pages.
const PAGE_CLASS: u32 = 16;
/// The unit a page is cut in, and its count in a page.
const UNIT: usize = 1 << MIN_CLASS;
const UNITS: u16 = (PAGE / UNIT) as u16;

/// A page's bookkeeping.
#[derive(Clone, Copy)]
struct Page {
    /// The address of the page's first freed block, 0 for none; each holds the next one's.
    free: usize,
    /// Units cut from the page so far.
    cut: u16,
    /// Blocks handed out and not freed.
    live: u16,
    /// Neighbours on its class's list of pages with room, or `next` on the pool's list: page numbers,
    /// 0 for none.
    prev: u16,
    next: u16,
    /// The class of its blocks.
    class: u8,
}

const NO_PAGE: Page = Page {
    free: 0,
    cut: 0,
    live: 0,
    prev: 0,
    next: 0,
    class: 0,
};

/// The allocator's state over `N` pages at most (page 0 is never one: it holds the module's data).
pub struct Heap<const N: usize> {
    pages: [Page; N],
    /// The address of page number 0.
    base: usize,
    /// Each class's first page with room (or a block freed), 0 for none.
    room: [u16; PAGE_CLASS as usize],
    /// The pool's first page, every block of it free.
    pool: u16,
    /// Freed blocks of whole pages, per class; each holds the address of the next.
    large: [usize; CLASSES],
}

impl<const N: usize> Heap<N> {
    /// `base`: the address of page number 0 (0 in Wasm, where page numbers are addresses / 64 KiB).
    pub const fn new(base: usize) -> Self {
        Heap {
            pages: [NO_PAGE; N],
            base,
            room: [0; PAGE_CLASS as usize],
            pool: 0,
            large: [0; CLASSES],
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

    /// The number of the page at `address` (a page's start), if the table has room for it.
    fn number(&self, address: usize) -> Option<u16> {
        let n = address.wrapping_sub(self.base) / PAGE;
        (n > 0 && n < N).then_some(n as u16)
    }

    fn address(&self, n: u16) -> usize {
        self.base + n as usize * PAGE
    }

    /// A page for class `c`: one of the pool, or a new one from `grow`.
    fn page(&mut self, c: u32, grow: impl FnOnce(usize) -> Option<usize>) -> Option<u16> {
        let mut n = self.pool;
        if n != 0 {
            self.pool = self.pages[n as usize].next;
        } else {
            n = self.number(grow(1)?)?;
        }
        self.pages[n as usize] = Page {
            class: c as u8,
            ..NO_PAGE
        };
        Some(n)
    }

    fn push_room(&mut self, c: usize, n: u16) {
        let head = self.room[c];
        self.pages[n as usize].prev = 0;
        self.pages[n as usize].next = head;
        if head != 0 {
            self.pages[head as usize].prev = n;
        }
        self.room[c] = n;
    }

    fn unlink_room(&mut self, c: usize, n: u16) {
        let Page { prev, next, .. } = self.pages[n as usize];
        if prev == 0 {
            self.room[c] = next;
        } else {
            self.pages[prev as usize].next = next;
        }
        if next != 0 {
            self.pages[next as usize].prev = prev;
        }
    }

    /// A block of class `c`, or 0 when `grow` (which adds that many pages and says where they start)
    /// has none to give.
    ///
    /// # Safety
    /// Every freed block is one [`Heap::free`] took, which nothing else uses.
    pub unsafe fn take(&mut self, c: u32, grow: impl FnOnce(usize) -> Option<usize>) -> usize {
        let ci = c as usize;
        if c > PAGE_CLASS {
            let head = self.large[ci];
            if head != 0 {
                // SAFETY: a freed block, aligned, whose first word is the link.
                self.large[ci] = unsafe { *(head as *const usize) };
                return head;
            }
            let Some(n) = grow(1 << (c - PAGE_CLASS)).and_then(|a| self.number(a)) else {
                return 0;
            };
            self.pages[n as usize].class = c as u8;
            return self.address(n);
        }
        if c == PAGE_CLASS {
            return self.page(c, grow).map_or(0, |n| self.address(n));
        }
        let mut n = self.room[ci];
        if n == 0 {
            let Some(fresh) = self.page(c, grow) else {
                return 0;
            };
            self.push_room(ci, fresh);
            n = fresh;
        }
        let address = self.address(n);
        let page = &mut self.pages[n as usize];
        let block = if page.free != 0 {
            let block = page.free;
            // SAFETY: a freed block of this page, whose first word is the link.
            page.free = unsafe { *(block as *const usize) };
            block
        } else {
            let block = address + page.cut as usize * UNIT;
            page.cut += (1u16 << c) / UNIT as u16;
            block
        };
        page.live += 1;
        if page.free == 0 && page.cut == UNITS {
            self.unlink_room(ci, n);
        }
        block
    }

    /// Gives block `p` back (its class is its page's).
    ///
    /// # Safety
    /// `p` came from [`Heap::take`] and is no longer used.
    pub unsafe fn free(&mut self, p: usize) {
        let Some(n) = self.number(p & !(PAGE - 1)) else {
            return;
        };
        let c = self.pages[n as usize].class as u32;
        let ci = c as usize;
        if c > PAGE_CLASS {
            // SAFETY: the block is whole pages, and ours again.
            unsafe { *(p as *mut usize) = self.large[ci] };
            self.large[ci] = p;
            return;
        }
        if c == PAGE_CLASS {
            self.pages[n as usize].next = self.pool;
            self.pool = n;
            return;
        }
        let page = &mut self.pages[n as usize];
        let full = page.free == 0 && page.cut == UNITS;
        // SAFETY: the block is at least 16 bytes, aligned, and ours again.
        unsafe { *(p as *mut usize) = page.free };
        page.free = p;
        page.live -= 1;
        if page.live == 0 {
            if !full {
                self.unlink_room(ci, n);
            }
            self.pages[n as usize].next = self.pool;
            self.pool = n;
        } else if full {
            self.push_room(ci, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' heaps: up to 256 pages.
    type TestHeap = Heap<256>;

    /// Pages from a buffer of the test's, handed out in order until `limit` of them are, and a heap
    /// over them.
    struct Pages {
        buf: Vec<u8>,
        used: usize,
        limit: usize,
    }

    impl Pages {
        fn new(limit: usize) -> (Self, Box<TestHeap>) {
            let pages = Pages {
                buf: vec![0; (limit + 1) * PAGE],
                used: 0,
                limit,
            };
            // Page number 1 is the first page handed out.
            let heap = Box::new(TestHeap::new(pages.first() - PAGE));
            (pages, heap)
        }
        fn first(&self) -> usize {
            (self.buf.as_ptr() as usize).next_multiple_of(PAGE)
        }
        fn grow(&mut self, n: usize) -> Option<usize> {
            if self.used + n > self.limit {
                return None;
            }
            let at = self.first() + self.used * PAGE;
            self.used += n;
            Some(at)
        }
    }

    fn take(heap: &mut TestHeap, pages: &mut Pages, size: usize) -> usize {
        let c = TestHeap::class(size, 1).unwrap();
        unsafe { heap.take(c, |n| pages.grow(n)) }
    }

    #[test]
    fn classes_are_the_next_power_of_two_from_16() {
        assert_eq!(TestHeap::class(1, 1), Some(4));
        assert_eq!(TestHeap::class(16, 8), Some(4));
        assert_eq!(TestHeap::class(17, 1), Some(5));
        assert_eq!(TestHeap::class(1, 64), Some(6));
        assert_eq!(TestHeap::class(65536, 1), Some(16));
        assert_eq!(TestHeap::class(65537, 1), Some(17));
        assert_eq!(TestHeap::class(1 << 31, 1), Some(31));
        assert_eq!(TestHeap::class((1 << 31) + 1, 1), None);
        assert_eq!(TestHeap::class(usize::MAX, 1), None);
        assert_eq!(TestHeap::class(1, PAGE), Some(16));
        assert_eq!(TestHeap::class(1, 2 * PAGE), None);
    }

    #[test]
    fn blocks_are_aligned_apart_and_reused_once_freed() {
        let (mut pages, mut heap) = Pages::new(64);
        let mut live: Vec<(usize, usize, u8)> = Vec::new();
        // Sizes across the small classes and a few whole-page ones, each block filled with a mark.
        for (i, size) in [
            1usize, 16, 17, 100, 1000, 4096, 5000, 40000, 65536, 70000, 200000,
        ]
        .iter()
        .cycle()
        .take(60)
        .enumerate()
        {
            let c = TestHeap::class(*size, 1).unwrap();
            let p = take(&mut heap, &mut pages, *size);
            assert_ne!(p, 0, "{size} bytes");
            assert_eq!(p % (1 << c).min(PAGE), 0, "{size} bytes at {p:#x}");
            let mark = i as u8;
            unsafe { std::ptr::write_bytes(p as *mut u8, mark, *size) };
            live.push((p, *size, mark));
        }
        // No two blocks overlap: every block still holds its own mark.
        for &(p, size, mark) in &live {
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            assert!(bytes.iter().all(|&b| b == mark), "{p:#x}");
        }
        let used = pages.used;
        // Freed, their memory serves the same sizes again without growing, each block apart.
        for &(p, ..) in &live {
            unsafe { heap.free(p) };
        }
        let again: Vec<(usize, usize, u8)> = live
            .iter()
            .map(|&(_, size, mark)| (take(&mut heap, &mut pages, size), size, mark))
            .collect();
        assert_eq!(pages.used, used);
        for &(p, size, mark) in &again {
            unsafe { std::ptr::write_bytes(p as *mut u8, mark, size) };
        }
        for &(p, size, mark) in &again {
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            assert!(bytes.iter().all(|&b| b == mark), "{p:#x}");
        }
    }

    /// Found in review: memory one class held stayed with it. Bursts of blocks of one size, all freed
    /// before the next burst of another size, take no more pages than the largest burst.
    #[test]
    fn a_page_one_class_let_go_serves_another() {
        let (mut pages, mut heap) = Pages::new(200);
        let burst = 2 << 20;
        for size in [60_000, 32_769, 16_385, 8_193, 4_097, 2_049, 100, 60_000] {
            let blocks: Vec<usize> = (0..burst / size)
                .map(|_| take(&mut heap, &mut pages, size))
                .collect();
            assert!(blocks.iter().all(|&p| p != 0), "{size}: out of pages");
            for p in blocks {
                unsafe { heap.free(p) };
            }
        }
        // 2 MiB of blocks each up to twice what was asked: 64 pages at most, and a page of slack per
        // class.
        assert!(pages.used <= 64 + 8, "{} pages", pages.used);
    }

    /// Blocks taken and freed in a random order, of random sizes: none overlaps another, and the pages
    /// taken stay within what the live blocks need.
    #[test]
    fn random_takes_and_frees_keep_blocks_apart() {
        let (mut pages, mut heap) = Pages::new(250);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live: Vec<(usize, usize, u8)> = Vec::new();
        for round in 0..20_000u32 {
            if live.len() < 400 && next() % 3 != 0 {
                let size = match next() % 10 {
                    0 => 1 + (next() % 200_000) as usize,
                    1..=3 => 1 + (next() % 16_000) as usize,
                    _ => 1 + (next() % 600) as usize,
                };
                let p = take(&mut heap, &mut pages, size);
                assert_ne!(p, 0, "round {round}: {size} bytes, {} pages", pages.used);
                let mark = (round % 251) as u8;
                unsafe { std::ptr::write_bytes(p as *mut u8, mark, size) };
                live.push((p, size, mark));
            } else if !live.is_empty() {
                let (p, size, mark) = live.swap_remove((next() % live.len() as u64) as usize);
                let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
                assert!(bytes.iter().all(|&b| b == mark), "round {round}: {p:#x}");
                unsafe { heap.free(p) };
            }
        }
    }

    #[test]
    fn no_memory_is_a_null_block_not_a_fault() {
        let (mut pages, mut heap) = Pages::new(2);
        assert_eq!(take(&mut heap, &mut pages, 3 * PAGE), 0);
        // Two pages: two blocks of half a page each, then none.
        let blocks: Vec<usize> = (0..6)
            .map(|_| take(&mut heap, &mut pages, PAGE / 2))
            .collect();
        assert_eq!(blocks.iter().filter(|&&p| p != 0).count(), 4);
        assert_eq!(&blocks[4..], &[0, 0]);
        // Pages past the table's are none either.
        let (mut pages, mut heap) = Pages::new(300);
        let big: Vec<usize> = (0..300)
            .map(|_| take(&mut heap, &mut pages, PAGE))
            .collect();
        assert_eq!(big.iter().filter(|&&p| p != 0).count(), 255);
    }

    /// Page number 0 is never one (in Wasm it holds the module's data, and 0 is the lists' "none"): a
    /// page `grow` hands out there serves no block.
    #[test]
    fn page_number_zero_serves_no_block() {
        let (mut pages, _) = Pages::new(8);
        // A heap whose page number 0 is the first page `grow` hands out.
        let mut heap = Box::new(TestHeap::new(pages.first()));
        let zero = pages.first()..pages.first() + PAGE;
        for size in [16, 1000, PAGE / 2, PAGE, 2 * PAGE] {
            let p = take(&mut heap, &mut pages, size);
            assert!(!zero.contains(&p), "{size} bytes at {p:#x}, in page 0");
        }
        // The same with whole pages first.
        let (mut pages, _) = Pages::new(8);
        let mut heap = Box::new(TestHeap::new(pages.first()));
        let zero = pages.first()..pages.first() + PAGE;
        let p = take(&mut heap, &mut pages, 2 * PAGE);
        assert!(!zero.contains(&p), "{p:#x}, in page 0");
    }

    /// Blocks freed on full pages, a block of each page still held: the next blocks of their class
    /// are those, on both pages, before any new page.
    #[test]
    fn freed_blocks_are_taken_again_before_new_pages() {
        // Four blocks to a page.
        let size = PAGE / 4;
        let (mut pages, mut heap) = Pages::new(16);
        let a: Vec<usize> = (0..4).map(|_| take(&mut heap, &mut pages, size)).collect();
        let b: Vec<usize> = (0..4).map(|_| take(&mut heap, &mut pages, size)).collect();
        assert_eq!(pages.used, 2);
        let mut freed: Vec<usize> = a[1..].iter().chain(&b[1..]).copied().collect();
        for &p in &freed {
            unsafe { heap.free(p) };
        }
        let mut again: Vec<usize> = (0..6).map(|_| take(&mut heap, &mut pages, size)).collect();
        assert_eq!(pages.used, 2);
        freed.sort();
        again.sort();
        assert_eq!(again, freed);
    }

    /// Every small class cuts its page to the last block: as many blocks as fit in a page take one
    /// page, tile it, and the next block is on a second page.
    #[test]
    fn a_page_serves_every_block_it_holds() {
        for c in MIN_CLASS..PAGE_CLASS {
            let size = 1 << c;
            let (mut pages, mut heap) = Pages::new(4);
            let mut blocks: Vec<usize> = (0..PAGE / size)
                .map(|_| take(&mut heap, &mut pages, size))
                .collect();
            assert_eq!(pages.used, 1, "{size} bytes");
            blocks.sort();
            let tiles: Vec<usize> = (0..PAGE / size).map(|i| pages.first() + i * size).collect();
            assert_eq!(blocks, tiles, "{size} bytes");
            let next = take(&mut heap, &mut pages, size);
            assert_eq!(pages.used, 2, "{size} bytes");
            assert_eq!(next, pages.first() + PAGE, "{size} bytes");
        }
    }
}
