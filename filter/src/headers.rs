//! A request's headers as the host hands them over in one piece (`proxy_get_header_map_pairs`): one host
//! call and one copy per request instead of one of each per header, and no allocation per header.
//!
//! The proxy-wasm encoding: a little-endian `u32` count, then a `u32` name length and a `u32` value length
//! per pair, then each name and each value followed by a NUL byte.

use std::borrow::Cow;

/// The serialized header map, checked once; lookups then walk it without copying.
pub struct HeaderBlock {
    bytes: Vec<u8>,
    /// Each pair's name and value as byte ranges of `bytes`.
    pairs: Vec<(usize, usize, usize, usize)>,
}

impl HeaderBlock {
    /// Checks the encoding; `None` when it is malformed (then the request has no headers we trust).
    pub fn parse(bytes: Vec<u8>) -> Option<HeaderBlock> {
        if bytes.is_empty() {
            return Some(HeaderBlock {
                bytes,
                pairs: Vec::new(),
            });
        }
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = word(0)?;
        // Each pair takes at least 8 bytes of lengths and 2 NULs: a count beyond that is a lie.
        if count > bytes.len() / 10 {
            return None;
        }
        let mut pairs = Vec::with_capacity(count);
        let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
        for i in 0..count {
            let name_len = word(4 + i * 8)?;
            let value_len = word(8 + i * 8)?;
            let name_end = data.checked_add(name_len)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            if bytes.get(name_end) != Some(&0) || bytes.get(value_end) != Some(&0) {
                return None;
            }
            pairs.push((data, name_end, value_start, value_end));
            data = value_end + 1;
        }
        Some(HeaderBlock { bytes, pairs })
    }

    /// An empty block.
    pub fn empty() -> HeaderBlock {
        HeaderBlock {
            bytes: Vec::new(),
            pairs: Vec::new(),
        }
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.pairs.iter().find_map(|&(n0, n1, v0, v1)| {
            if self.bytes.get(n0..n1)? == name.as_bytes() {
                self.bytes.get(v0..v1)
            } else {
                None
            }
        })
    }

    /// The first value of `name` (lowercase, as Envoy keeps them). Bytes that are not UTF-8 (Envoy lets
    /// obs-text through) become U+FFFD, which matches no name, path or cookie of ours.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        // `from_utf8` checks a word at a time; `from_utf8_lossy` goes byte by byte even over ASCII, which
        // for a kilobyte of cookie is thousands of instructions on every request.
        self.raw(name).map(|raw| {
            if is_ascii(raw) {
                // SAFETY: ASCII is UTF-8.
                return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) });
            }
            match std::str::from_utf8(raw) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(raw),
            }
        })
    }

    /// Whether the request carries `name` at all.
    pub fn contains(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }
}

/// Whether every byte is below 0x80, eight bytes per step (core's check reads a `usize`, four bytes in
/// Wasm): header values are ASCII, and a session cookie can be kilobytes long.
fn is_ascii(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let mut high = 0u64;
    for w in words.by_ref() {
        // `chunks_exact` makes every index valid; LLVM makes the eight bytes one load.
        high |= u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    }
    high & 0x8080_8080_8080_8080 == 0 && words.remainder().iter().all(|&c| c < 0x80)
}

/// Encodes pairs the way the host does (for tests and for callers that build a block).
pub fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    encode_pairs(pairs)
}

/// [`encode`] for any text or byte pairs: the maps the filter hands the host (local responses, callouts)
/// go from the core's `(String, String)` lists without a copy into borrowed pairs first.
pub fn encode_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = pairs
        .iter()
        .fold(4, |n, (k, v)| n + 10 + k.as_ref().len() + v.as_ref().len());
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.as_ref().len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_by_exact_name() {
        let b = HeaderBlock::parse(encode(&[
            (":path", b"/a?b=c"),
            ("cookie", b"x=1; y=2"),
            ("empty", b""),
            ("cookie", b"second"),
        ]))
        .unwrap();
        assert_eq!(b.get(":path").as_deref(), Some("/a?b=c"));
        assert_eq!(b.get("cookie").as_deref(), Some("x=1; y=2"));
        assert_eq!(b.get("empty").as_deref(), Some(""));
        assert!(b.contains("empty"));
        assert_eq!(b.get("Cookie"), None);
        assert_eq!(b.get("cook"), None);
        assert!(!b.contains("authorization"));
    }

    #[test]
    fn ascii_check_looks_at_every_byte() {
        for len in 0..40 {
            assert!(is_ascii(&vec![b'a'; len]));
            for at in 0..len {
                let mut v = vec![b'a'; len];
                v[at] = 0x80;
                assert!(!is_ascii(&v), "{len} {at}");
            }
        }
        let b = HeaderBlock::parse(encode(&[("x", "é ü".as_bytes())])).unwrap();
        assert_eq!(b.get("x").as_deref(), Some("é ü"));
    }

    #[test]
    fn non_utf8_values_read_as_replacement_characters() {
        let b = HeaderBlock::parse(encode(&[("x", b"a\xffb")])).unwrap();
        assert_eq!(b.get("x").as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn an_empty_map_is_empty() {
        let b = HeaderBlock::parse(Vec::new()).unwrap();
        assert_eq!(b.get(":path"), None);
        let b = HeaderBlock::parse(encode(&[])).unwrap();
        assert_eq!(b.get(":path"), None);
    }

    #[test]
    fn malformed_blocks_are_refused_without_panicking() {
        let good = encode(&[(":path", b"/"), ("cookie", b"a=b")]);
        // Every truncation, and every single-byte change, either parses or is refused: never a panic.
        for n in 0..good.len() {
            let _ = HeaderBlock::parse(good[..n].to_vec());
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Some(h) = HeaderBlock::parse(b) {
                    let _ = h.get(":path");
                    let _ = h.get("cookie");
                }
            }
        }
        assert!(HeaderBlock::parse(good[..good.len() - 1].to_vec()).is_none());
        assert!(HeaderBlock::parse(vec![0xff, 0xff, 0xff, 0xff]).is_none());
        let mut lying = good.clone();
        lying[4] = 200; // the first name's length runs past the end
        assert!(HeaderBlock::parse(lying).is_none());
    }
}
