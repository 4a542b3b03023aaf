//! A tiny binary encoding for what the filter stores itself: sealed cookies ([`crate::session`]) and
//! tables in Envoy's shared data ([`crate::renewal`], [`crate::revocation`]).
//!
//! A value starts with a version byte, then its fields in a fixed order, without names:
//!
//! - an integer is unsigned LEB128 (7 bits a byte, low bits first, high bit set on all but the last
//!   byte), in its shortest form: a Unix time takes 5 bytes, a length under 128 one;
//! - a string is its length (an integer) then its UTF-8 bytes;
//! - an optional field is a tag byte, 0 (absent) or 1 (present, the value follows);
//! - a list is its count (an integer) then its items.
//!
//! [`Reader`] refuses anything else: a wrong version, a value cut short, bytes left over, an
//! overlong or overflowing integer, a tag other than 0 or 1, text that is not UTF-8. Every encoding
//! then has exactly one reading and every reading exactly one encoding. Nothing here panics or
//! allocates more than the input could hold, whatever the input.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

/// Builds an encoding; [`Writer::finish`] hands over the bytes.
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a value of format `version`, with room for about `capacity` bytes.
    pub fn new(version: u8, capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity.saturating_add(1));
        buf.push(version);
        Writer { buf }
    }

    /// An unsigned integer.
    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }

    /// A count (of list items, or of a string's bytes).
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    /// A string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.count(s.len());
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    /// The tag of an optional field: whether its value follows.
    pub fn flag(&mut self, present: bool) -> &mut Self {
        self.buf.push(u8::from(present));
        self
    }

    /// An optional string.
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        self.flag(s.is_some());
        if let Some(s) = s {
            self.str(s);
        }
        self
    }

    /// A list: its count, then each item as `item` writes it.
    pub fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.count(items.len());
        for i in items {
            item(self, i);
        }
        self
    }

    /// The encoding.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads an encoding field by field; each method returns `None` when the input does not hold what
/// it reads, and the caller gives up on the whole value.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

/// Whether `bytes` is a value of a later format than `version`: another build's, running beside this one
/// through an upgrade, that this build must leave alone rather than overwrite. (A first byte that is no
/// format number, as of format 1's JSON, is not one.)
pub fn later_format(bytes: &[u8], version: u8) -> bool {
    bytes.first().is_some_and(|&v| v > version && v < b' ')
}

/// A shared value of format `version` to change and write back: `bytes` decoded (none yet: empty), or
/// `None` when they are of a later format ([`later_format`]), to be left alone.
pub fn for_update<T: Default>(
    bytes: Option<&[u8]>,
    version: u8,
    decode: impl FnOnce(&[u8]) -> T,
) -> Option<T> {
    match bytes {
        Some(b) if later_format(b, version) => None,
        Some(b) => Some(decode(b)),
        None => Some(T::default()),
    }
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`, which must be of format `version`.
    pub fn new(bytes: &'a [u8], version: u8) -> Option<Reader<'a>> {
        match bytes.split_first() {
            Some((&v, rest)) if v == version => Some(Reader { rest }),
            _ => None,
        }
    }

    /// An unsigned integer, in its shortest form.
    pub fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let (&b, rest) = self.rest.split_first()?;
            self.rest = rest;
            let low = u64::from(b & 0x7f);
            // Bits that would fall off the top make the value overflow.
            if shift > 0 && low.checked_shl(shift)? >> shift != low {
                return None;
            }
            v |= low.checked_shl(shift)?;
            if b & 0x80 == 0 {
                // A last byte of 0 (after the first) means the value had a shorter form.
                return (shift == 0 || b != 0).then_some(v);
            }
            shift = shift.checked_add(7).filter(|&s| s < 64)?;
        }
    }

    /// A count (of list items, or of a string's bytes), which cannot exceed what is left to read
    /// (each item takes a byte at least), so that no hostile count makes anyone reserve memory for it.
    pub fn count(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?)
            .ok()
            .filter(|&n| n <= self.rest.len())
    }

    /// A string, borrowed from the input.
    pub fn str(&mut self) -> Option<&'a str> {
        let n = self.count()?;
        let (bytes, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        core::str::from_utf8(bytes).ok()
    }

    /// A string.
    pub fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// The tag of an optional field: whether its value follows.
    pub fn flag(&mut self) -> Option<bool> {
        let (&tag, rest) = self.rest.split_first()?;
        self.rest = rest;
        match tag {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// An optional string.
    pub fn opt_string(&mut self) -> Option<Option<String>> {
        match self.flag()? {
            false => Some(None),
            true => self.string().map(Some),
        }
    }

    /// A list: its count, then each item as `item` reads it.
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.count()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(item(self)?);
        }
        Some(items)
    }

    /// True when every byte has been read (an optional last field is absent).
    pub fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// Ends the reading: `Some` only if every byte was read.
    pub fn finish(self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

/// Inputs for the decoders' no-panic tests: `valid` with one byte changed or added, and random bytes,
/// each starting with `version` so the decoder reads past it.
#[cfg(test)]
pub(crate) fn mutations(valid: Vec<u8>, version: u8, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut seed = seed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..10_000).map(move |round| {
        let mut b = if round % 2 == 0 {
            valid.clone()
        } else {
            (0..next() % 64).map(|_| next() as u8).collect()
        };
        if let Some(first) = b.first_mut() {
            *first = version;
        }
        let at = (next() % (b.len() as u64 + 1)) as usize;
        match b.get_mut(at) {
            Some(byte) => *byte = next() as u8,
            None => b.push(next() as u8),
        }
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: u64) -> Vec<u8> {
        let mut w = Writer::new(9, 0);
        w.u64(v);
        w.finish()
    }

    #[test]
    fn integers_round_trip_in_their_shortest_form() {
        for (v, len) in [
            (0, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (300, 2),
            (16_383, 2),
            (16_384, 3),
            (1_700_000_000, 5),
            (u64::from(u32::MAX), 5),
            (u64::MAX - 1, 10),
            (u64::MAX, 10),
        ] {
            let bytes = ints(v);
            assert_eq!(bytes.len(), 1 + len, "{v}");
            let mut r = Reader::new(&bytes, 9).unwrap();
            assert_eq!(r.u64(), Some(v));
            assert_eq!(r.finish(), Some(()));
        }
        assert_eq!(ints(300), [9, 0xac, 0x02]);
    }

    #[test]
    fn overlong_and_overflowing_integers_are_refused() {
        for bad in [
            &[0x80, 0x00][..],
            &[0x81, 0x00],
            &[0xff, 0x80, 0x00],
            // 2^64: one bit past the top.
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            // Eleven bytes.
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
            ],
            &[0x80],
            &[],
        ] {
            let mut bytes = vec![9];
            bytes.extend_from_slice(bad);
            assert_eq!(Reader::new(&bytes, 9).unwrap().u64(), None, "{bad:?}");
        }
    }

    #[test]
    fn strings_and_options_round_trip() {
        let mut w = Writer::new(3, 16);
        w.str("")
            .str("héllo")
            .opt_str(None)
            .opt_str(Some("x"))
            .count(2);
        let bytes = w.finish();
        assert_eq!(bytes, b"\x03\x00\x06h\xc3\xa9llo\x00\x01\x01x\x02");
        let mut r = Reader::new(&bytes, 3).unwrap();
        assert_eq!(r.str(), Some(""));
        assert_eq!(r.string().as_deref(), Some("héllo"));
        assert_eq!(r.opt_string(), Some(None));
        assert_eq!(r.opt_string(), Some(Some("x".into())));
        // A count larger than what is left is refused; this one fits nothing after it.
        assert_eq!(r.count(), None);
        assert!(Reader::new(&bytes, 4).is_none(), "another version");
        assert!(Reader::new(b"", 3).is_none());
    }

    #[test]
    fn lists_round_trip() {
        let mut w = Writer::new(5, 0);
        w.list(&["a", "bc"], |w, s| {
            w.str(s);
        })
        .list(&[] as &[u64], |w, v| {
            w.u64(*v);
        })
        .flag(true);
        let bytes = w.finish();
        assert_eq!(bytes, b"\x05\x02\x01a\x02bc\x00\x01");
        let mut r = Reader::new(&bytes, 5).unwrap();
        assert_eq!(r.list(Reader::string), Some(vec!["a".into(), "bc".into()]));
        assert_eq!(r.list(Reader::u64), Some(vec![]));
        assert_eq!(r.flag(), Some(true));
        assert_eq!(r.finish(), Some(()));
        // A count beyond the items there are.
        let mut r = Reader::new(b"\x05\x03\x01a\x01b", 5).unwrap();
        assert_eq!(r.list(Reader::string), None);
    }

    #[test]
    fn bad_strings_and_tags_are_refused() {
        let read = |bytes: &[u8]| {
            let mut r = Reader::new(bytes, 1)?;
            let s = r.opt_string()?;
            r.finish().map(|()| s)
        };
        assert_eq!(read(b"\x01\x01\x02ab"), Some(Some("ab".into())));
        assert_eq!(read(b"\x01\x00"), Some(None));
        assert_eq!(read(b"\x01\x02\x02ab"), None, "tag 2");
        assert_eq!(read(b"\x01\x01\x02\xff\xfe"), None, "not UTF-8");
        assert_eq!(read(b"\x01\x01\x03ab"), None, "cut short");
        assert_eq!(read(b"\x01\x01\x02abc"), None, "a byte left over");
        assert_eq!(read(b"\x01\x01\xff\xff\xff\xff\x0fab"), None, "huge length");
    }

    #[test]
    fn a_later_format_is_a_greater_byte_below_the_space() {
        assert!(later_format(&[3], 2) && later_format(&[0x1f], 2));
        // Not format numbers: JSON of format 1, whitespace first or not.
        assert!(!later_format(b" {}", 2) && !later_format(b"{}", 2));
        assert!(!later_format(&[2], 2) && !later_format(&[1], 2) && !later_format(&[], 2));
    }
}
