//! A request's headers as the host hands them over in one piece (`proxy_get_header_map_pairs`): one host
//! call and one copy per request instead of one of each per header, and no allocation per header.
//!
//! The proxy-wasm encoding: a little-endian `u32` count, then a `u32` name length and a `u32` value length
//! per pair, then each name and each value followed by a NUL byte.

use alloc::string::String;
use alloc::vec::Vec;

use alloc::borrow::Cow;

/// The serialized header map, checked once; lookups then walk its length table without copying (a map
/// holds a dozen headers or so: walking it is cheaper than allocating an index of it per request).
pub struct HeaderBlock {
    bytes: Vec<u8>,
    count: usize,
    /// Where the first `:path` and `cookie` values are (start, length), noted by `parse`: every request
    /// reads both, and a walk for each cost a few hundred instructions.
    path: Option<(usize, usize)>,
    cookie: Option<(usize, usize)>,
    /// More than one `cookie` header (HTTP/1.1 lets a client send several; Envoy joins HTTP/2's pieces).
    more_cookies: bool,
    /// A bit for each name's length and last byte ([`name_bit`]): a lookup of a name the request does not
    /// carry (an identity header, most of `is_browser`'s) then usually ends without a walk.
    names: u64,
    /// A bit for each name's length (lengths from 63 on share the last): with `names`, it tells most
    /// requests apart from a name they do not carry at the cost of one more test ([`HeaderBlock::may_carry`]).
    lengths: u64,
    /// The request carries one of [`NEVER_FROM_CLIENT`], in any spelling [`HeaderBlock::other_spellings`]
    /// finds, noted by `parse`: every request sent on must lose them.
    never_from_client: bool,
    /// A body follows these headers (they did not end the stream): the adapter says so.
    pub body_follows: bool,
}

/// Headers no client may hand the app, removed from every request the filter sends on (with their copies
/// spelled with `_`), whatever `identity_headers` says:
/// - by which some apps take the path they serve instead of the request's (IIS URL Rewrite; Symfony and
///   Zend Framework before their fix of CVE-2018-14773): found in review, `GET /healthz` with
///   `X-Original-URL: /admin` reached such an app's `/admin` without a login;
/// - by which apps set up behind oauth2-proxy take the user and its token, in either of its modes (behind
///   ext_authz, `X-Auth-Request-*`; as the reverse proxy, `X-Forwarded-*`): found by a black-box test of a
///   migration, an app still reading `X-Forwarded-Email` took a client's, with the default configuration.
///
/// No two of one length, so that `parse` tells a request that carries one with one compare per header
/// at most ([`NEVER_BY_LENGTH`]; a name of a length already taken fails the build).
pub const NEVER_FROM_CLIENT: [&str; 12] = [
    "x-original-url",
    "x-rewrite-url",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// Where in [`NEVER_FROM_CLIENT`] the name of each length is, plus one (0: none of that length), and the
/// bits of their lengths.
const NEVER_BY_LENGTH: [u8; 64] = by_length(&NEVER_FROM_CLIENT);
const NEVER_LENGTHS: u64 = {
    let (mut bits, mut i) = (0, 0);
    while i < NEVER_FROM_CLIENT.len() {
        bits |= length_bit(NEVER_FROM_CLIENT[i].len());
        i += 1;
    }
    bits
};

const fn by_length(names: &[&str]) -> [u8; 64] {
    let mut out = [0; 64];
    let mut i = 0;
    while i < names.len() {
        let n = names[i].len();
        assert!(
            n > 0 && n < 63 && out[n] == 0,
            "one name of each length, under 63"
        );
        out[n] = i as u8 + 1;
        i += 1;
    }
    out
}

impl HeaderBlock {
    /// Checks the encoding; `None` when it is malformed (then the request has no headers we trust).
    pub fn parse(bytes: Vec<u8>) -> Option<HeaderBlock> {
        if bytes.is_empty() {
            return Some(HeaderBlock::empty());
        }
        let count = word(&bytes, 0)?;
        // Each pair takes at least 8 bytes of lengths and 2 NULs: a count beyond that is a lie.
        if count > bytes.len() / 10 {
            return None;
        }
        // Every name and value must end in a NUL inside the block: then `raw` walks it without checks.
        let mut at = 4 + count * 8;
        let (mut path, mut cookie, mut names, mut lengths) = (None, None, 0, 0u64);
        let (mut more_cookies, mut never_from_client) = (false, false);
        for i in 0..count {
            let name_end = at.checked_add(word(&bytes, 4 + i * 8)?)?;
            let value_end = name_end
                .checked_add(1)?
                .checked_add(word(&bytes, 8 + i * 8)?)?;
            // A pattern, not `!= Some(&0)`: at `opt-level=z` that stays two calls of `Option`'s
            // `PartialEq` per check, 40 per request.
            if !matches!(bytes.get(name_end), Some(0)) || !matches!(bytes.get(value_end), Some(0)) {
                return None;
            }
            let b = bytes.as_slice();
            let n = name_end - at;
            // `name_end` is past the length table, so the byte before it is in the block.
            let last = if n > 0 { b[name_end - 1] } else { 0 };
            names |= name_bit(n, last);
            let length = length_bit(n);
            lengths |= length;
            // A compare for a name of such a length and last byte: its last byte first, as the names a
            // request usually carries of those lengths share a prefix with them (`x-forwarded-proto`).
            if NEVER_LENGTHS & length != 0 {
                let i = NEVER_BY_LENGTH.get(n).map_or(0, |i| usize::from(*i));
                if let Some(never) = NEVER_FROM_CLIENT.get(i.wrapping_sub(1))
                    && never.as_bytes().last() == Some(&last.to_ascii_lowercase())
                {
                    let name = b.get(at..name_end).unwrap_or_default();
                    never_from_client |= spells(name, never.as_bytes());
                }
            }
            // `:path` and `cookie`: the name's first four bytes as a word, then the rest byte by byte (a
            // slice compare would be a `memcmp` call). The name ends inside the block (at `name_end`).
            let value = Some((name_end + 1, value_end - name_end - 1));
            match n {
                5 if path.is_none() && word(b, at) == Some(PATH) && b[at + 4] == b'h' => {
                    path = value;
                }
                6 if word(b, at) == Some(COOK) && b[at + 4] == b'i' && b[at + 5] == b'e' => {
                    more_cookies |= cookie.is_some();
                    cookie = cookie.or(value);
                }
                _ => {}
            }
            at = value_end + 1;
        }
        Some(HeaderBlock {
            bytes,
            count,
            path,
            cookie,
            more_cookies,
            names,
            lengths,
            never_from_client,
            body_follows: false,
        })
    }

    /// True for a block without headers: what a failed read gives (every request has `:path`).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// An empty block.
    pub fn empty() -> HeaderBlock {
        HeaderBlock {
            bytes: Vec::new(),
            count: 0,
            path: None,
            cookie: None,
            more_cookies: false,
            body_follows: false,
            names: 0,
            lengths: 0,
            never_from_client: false,
        }
    }

    /// The first `:path` value, as [`HeaderBlock::get`] would give it, without a walk.
    pub fn path(&self) -> Option<Cow<'_, str>> {
        self.noted(self.path)
    }

    /// The `cookie` value: the first, as [`HeaderBlock::get`] would give it, without a walk; every one
    /// joined when the request carries several ([`HeaderBlock::joined_cookies`]).
    pub fn cookie(&self) -> Option<Cow<'_, str>> {
        if self.more_cookies {
            return Some(Cow::Owned(self.joined_cookies()));
        }
        self.noted(self.cookie)
    }

    /// Every `cookie` header's value, joined as one header (RFC 9113 8.2.3 joins HTTP/2's pieces so).
    /// Found in review: with two `Cookie` headers over HTTP/1.1, only the first was read, a session in
    /// the second was missed, the filter's cookies in the second reached the app, and the rewrite of the
    /// first (which replaces them all) dropped the app's cookies in the others.
    #[cold]
    #[inline(never)]
    fn joined_cookies(&self) -> String {
        let mut out = String::new();
        self.each_pair(|name, value| {
            if name == b"cookie" && !value.is_empty() {
                if !out.is_empty() {
                    out.push_str("; ");
                }
                out.push_str(&text(value));
            }
        });
        out
    }

    /// Every header's name and value, in order: the walk of the cold lookups ([`HeaderBlock::raw`], which
    /// runs several times per request, keeps a loop of its own that stops at the first match).
    fn each_pair<'a>(&'a self, mut f: impl FnMut(&'a [u8], &'a [u8])) {
        let b = self.bytes.as_slice();
        let (mut lengths, mut at) = (4, self.data_start());
        for _ in 0..self.count {
            let (Some(n), Some(v)) = (word(b, lengths), word(b, lengths + 4)) else {
                break;
            };
            if let (Some(name), Some(value)) =
                (b.get(at..at + n), b.get(at + n + 1..at + n + 1 + v))
            {
                f(name, value);
            }
            at += n + v + 2;
            lengths += 8;
        }
    }

    fn noted(&self, at: Option<(usize, usize)>) -> Option<Cow<'_, str>> {
        let (start, len) = at?;
        // `?`, not `Option::map`: at `opt-level=z` that stays a call.
        let raw = self.bytes.get(start..start + len)?;
        Some(text(raw))
    }

    /// The serialized block, for its buffer to be used again.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn data_start(&self) -> usize {
        4 + self.count * 8
    }

    /// The first value of header `name`. A plain loop over the length table: `parse` checked every length
    /// and offset, and this runs several times per request (iterator adaptors stay calls at `opt-level=z`).
    fn raw(&self, name: &str) -> Option<&[u8]> {
        let last = match name.as_bytes() {
            [.., last] => *last,
            [] => 0,
        };
        if self.names & name_bit(name.len(), last) == 0 {
            return None;
        }
        let b = self.bytes.as_slice();
        let mut lengths = 4;
        let mut at = self.data_start();
        let mut left = self.count;
        while left > 0 {
            let n = word(b, lengths)?;
            let v = word(b, lengths + 4)?;
            if n == name.len() && b.get(at..at + n) == Some(name.as_bytes()) {
                return b.get(at + n + 1..at + n + 1 + v);
            }
            at += n + v + 2;
            lengths += 8;
            left -= 1;
        }
        None
    }

    /// The first value of `name` (lowercase, as Envoy keeps them). Bytes that are not UTF-8 (Envoy lets
    /// obs-text through) become U+FFFD, which matches no name, path or cookie of ours.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.raw(name).map(text)
    }

    /// Whether the request carries `name` at all.
    pub fn contains(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// False when the request carries no name of `name`'s length and last byte (nor, then, `name` with
    /// `_` for some `-` before its end): the bit `parse` set for such names, without a walk.
    pub fn may_carry(&self, name: &str) -> bool {
        match name.as_bytes() {
            [.., last] if *last != b'-' => {
                self.lengths & length_bit(name.len()) != 0
                    && self.names & name_bit(name.len(), *last) != 0
            }
            _ => self.lengths & length_bit(name.len()) != 0,
        }
    }

    /// Whether the request carries one of [`NEVER_FROM_CLIENT`], in any spelling
    /// [`HeaderBlock::other_spellings`] finds: noted by `parse`, no walk.
    pub fn carries_never_from_client(&self) -> bool {
        self.never_from_client
    }

    /// The names the request carries that an app may read as `name` (a lowercase name with `-`): the
    /// same name with `_` for some `-`. Envoy lets underscores through by default, and CGI-style servers
    /// (WSGI, PHP, Rack) file `x_auth_request_user` and `x-auth-request-user` under one key.
    /// (A walk of the block: ask [`HeaderBlock::may_carry`] first.)
    pub fn other_spellings(&self, name: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let want = name.as_bytes();
        if !want.contains(&b'-') {
            return out;
        }
        self.each_pair(|have, _| {
            if have != want
                && spells(have, want)
                && let Ok(have) = core::str::from_utf8(have)
            {
                out.push(have);
            }
        });
        out
    }
}

/// Whether an app may read header name `have` as `want` (lowercase, with `-`): the same letters in any
/// case, with `_` for some `-`.
fn spells(have: &[u8], want: &[u8]) -> bool {
    have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|(h, w)| h.eq_ignore_ascii_case(w) || (*h == b'_' && *w == b'-'))
}

/// One of 64 bits for a header name of length `len`.
const fn length_bit(len: usize) -> u64 {
    1 << if len < 63 { len } else { 63 }
}

/// `:pat` and `cook` as [`word`] reads them.
const PATH: usize = u32::from_le_bytes(*b":pat") as usize;
const COOK: usize = u32::from_le_bytes(*b"cook") as usize;

/// One of 64 bits for a header name of length `len` ending in byte `last` (0 for an empty name).
const fn name_bit(len: usize, last: u8) -> u64 {
    1 << ((len as u32).wrapping_mul(7).wrapping_add(last as u32) & 63)
}

/// A header value as text. Bytes that are not UTF-8 become U+FFFD.
fn text(raw: &[u8]) -> Cow<'_, str> {
    // ASCII, the usual case, is checked 32 bytes a step; `from_utf8` (a word at a time) only for the
    // rest, and only what is not UTF-8 is copied.
    if is_ascii(raw) {
        // SAFETY: ASCII is UTF-8.
        return Cow::Borrowed(unsafe { core::str::from_utf8_unchecked(raw) });
    }
    match core::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(crate::form::lossy(raw)),
    }
}

/// The little-endian `u32` at `at`.
fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Whether every byte is below 0x80, 32 bytes per step (core's check reads a `usize`, four bytes in Wasm):
/// header values are ASCII, and a session cookie can be kilobytes long. In Wasm with SIMD: two 16-byte
/// loads per step.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
fn is_ascii(b: &[u8]) -> bool {
    use core::arch::wasm32::*;
    let (blocks, rest) = b.as_chunks::<32>();
    let mut high = u64x2_splat(0);
    for c in blocks {
        let (x, y) = load_block(c);
        high = v128_or(high, v128_or(x, y));
    }
    u8x16_bitmask(high) == 0 && rest.iter().all(|&c| c < 0x80)
}

/// The same for a native build (the tests and fuzzing), which never serves a request: core's check.
#[cfg(not(target_arch = "wasm32"))]
fn is_ascii(b: &[u8]) -> bool {
    b.is_ascii()
}

/// The two 16-byte halves of a block as SIMD vectors.
///
/// The module is built with Wasm SIMD (`simd128`) for these byte loops: Envoy's V8 (and wasmtime) run it;
/// a runtime without SIMD refuses the module when it loads, so the plugin does not start, rather than
/// failing on a request.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
#[inline]
pub(crate) fn load_block(c: &[u8; 32]) -> (core::arch::wasm32::v128, core::arch::wasm32::v128) {
    use core::arch::wasm32::v128_load;
    let p = c.as_ptr();
    // SAFETY: `c` is 32 readable bytes, and `v128_load` needs no alignment.
    unsafe { (v128_load(p.cast()), v128_load(p.add(16).cast())) }
}

/// The eight bytes of `c` from `at` as a little-endian word. Indexing an array with constants is what LLVM
/// turns into one `i64.load`; a `chunks_exact` slice or a `copy_from_slice` at `opt-level=z` becomes eight
/// byte loads or a `memory.copy`, which V8 runs as a call.
#[inline(always)]
pub(crate) fn le64<const N: usize>(c: &[u8; N], at: usize) -> u64 {
    u64::from_le_bytes([
        c[at],
        c[at + 1],
        c[at + 2],
        c[at + 3],
        c[at + 4],
        c[at + 5],
        c[at + 6],
        c[at + 7],
    ])
}

/// Whether `hay` starts with `needle`, compared as [`same_bytes`] does.
pub(crate) fn starts_with(hay: &[u8], needle: &[u8]) -> bool {
    hay.get(..needle.len())
        .is_some_and(|start| same_bytes(start, needle))
}

/// Whether `a` and `b` hold the same bytes, a word at a time. In Wasm a slice compare (`==`,
/// `starts_with`) is a call of `memcmp`, which goes a byte at a time: about a hundred instructions for a
/// cookie name. Not for secrets: it stops at the first differing word.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (aw, at) = a.as_chunks::<8>();
    let (bw, bt) = b.as_chunks::<8>();
    // Plain loops: at `opt-level=z` a `zip` stays calls.
    for (i, x) in aw.iter().enumerate() {
        match bw.get(i) {
            Some(y) if le64(x, 0) == le64(y, 0) => {}
            _ => return false,
        }
    }
    for (i, &x) in at.iter().enumerate() {
        match bt.get(i) {
            Some(&y) if x == y => {}
            _ => return false,
        }
    }
    true
}

/// A header value as the host takes it: bytes, from text or raw.
pub trait Value {
    fn bytes(&self) -> &[u8];
}

impl Value for &str {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Value for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Value for String {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Value for Cow<'_, str> {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// `parts` joined by `sep`: header values, lists in messages. (`[T]::join` is 1 KB of module per element
/// type.)
pub fn join<'a>(parts: impl IntoIterator<Item = &'a str>, sep: &str) -> String {
    let mut out = String::new();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(p);
    }
    out
}

/// Encodes pairs the way the host does (for tests and for callers that build a block).
pub fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    encode_pairs(pairs)
}

/// [`encode`] for any text or byte pairs: the maps the filter hands the host (local responses' static
/// names and borrowed or owned values, callouts' `(String, String)` lists) go without a copy into
/// borrowed pairs first.
pub fn encode_pairs<N: AsRef<str>, V: Value>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = pairs
        .iter()
        .fold(4, |n, (k, v)| n + 10 + k.as_ref().len() + v.bytes().len());
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.bytes().len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(value.bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_puts_the_separator_between_parts_only() {
        assert_eq!(join([], ", "), "");
        assert_eq!(join(["a"], ", "), "a");
        assert_eq!(join(["a", "", "c"], "; "), "a; ; c");
    }

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
    fn may_carry_is_false_only_where_no_such_name_is() {
        let b =
            HeaderBlock::parse(encode(&[("x_auth_request_user", b"a"), (":path", b"/")])).unwrap();
        assert!(b.may_carry("x-auth-request-user"));
        assert!(b.may_carry(":path"));
        // A name ending in `-` may be carried as one ending in `_`: only its length is asked.
        assert!(!b.may_carry("ends-with-"));
        let c = HeaderBlock::parse(encode(&[("ends_with_", b"a")])).unwrap();
        assert!(c.may_carry("ends-with-"));
        assert_eq!(c.other_spellings("ends-with-"), ["ends_with_"]);
        assert!(!HeaderBlock::empty().may_carry("x-auth-request-user"));
        // The same length and last byte is not enough without that length; nor the length alone.
        assert!(!b.may_carry("x-auth-request-usr"));
        assert!(!b.may_carry("x-auth-request-usex"));
        assert!(!b.may_carry("x-auth-request-mail"));
    }

    /// `parse` notes a header no client may send in each spelling an app may read it by, and nothing
    /// else: not a browser's usual request, whose names share lengths with them, nor names one byte off.
    #[test]
    fn parse_notes_a_header_no_client_may_send_and_nothing_else() {
        let one = |name: &str| {
            HeaderBlock::parse(encode(&[(":path", b"/".as_slice()), (name, b"v")]))
                .unwrap()
                .carries_never_from_client()
        };
        for name in NEVER_FROM_CLIENT {
            assert!(one(name), "{name}");
            assert!(one(&name.replace('-', "_")), "{name}");
            assert!(one(&name.to_ascii_uppercase()), "{name}");
            let mut off = name.as_bytes().to_vec();
            for i in 0..off.len() {
                let was = off[i];
                off[i] = if was == b'z' { b'y' } else { b'z' };
                let other = core::str::from_utf8(&off).unwrap();
                assert!(!one(other), "{other}");
                off[i] = was;
            }
            assert!(!one(&format!("{name}s")), "{name}");
            assert!(!one(&name[..name.len() - 1]), "{name}");
        }
        let usual = HeaderBlock::parse(encode(&[
            (":path", b"/".as_slice()),
            (":authority", b"app"),
            ("sec-fetch-site", b"none"),
            ("sec-fetch-mode", b"navigate"),
            ("sec-ch-ua-platform", b"Linux"),
            ("cache-control", b"max-age=0"),
            ("x-forwarded-proto", b"https"),
            ("x-envoy-internal", b"true"),
            ("x-forwarded-for", b"10.0.0.1"),
            ("x-envoy-attempt-count", b"1"),
            ("x-forwarded-client-cert", b"x"),
            ("cookie", b"a=b"),
        ]))
        .unwrap();
        assert!(!usual.carries_never_from_client());
        assert!(!HeaderBlock::empty().carries_never_from_client());
    }

    /// Each of oauth2-proxy's user headers, in either of its modes, and each path override is noted, so
    /// none reaches the app: named here one by one (a name dropped from, or misspelled in, the list would
    /// pass), wherever it is in the request, before a name of its length and last byte too (a browser's
    /// `cache-control` after `x-rewrite-url`).
    #[test]
    fn parse_notes_each_header_no_client_may_send_wherever_it_is() {
        for name in [
            "x-original-url",
            "x-rewrite-url",
            "x-auth-request-user",
            "x-auth-request-email",
            "x-auth-request-groups",
            "x-auth-request-preferred-username",
            "x-auth-request-access-token",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-groups",
            "x-forwarded-preferred-username",
            "x-forwarded-access-token",
        ] {
            // Its length and last byte, and none of them.
            let like = format!("y{}", &name[1..]);
            for pairs in [[name, like.as_str()], [like.as_str(), name]] {
                let b = HeaderBlock::parse(encode(&[
                    (":path", b"/".as_slice()),
                    (pairs[0], b"v"),
                    (pairs[1], b"v"),
                ]))
                .unwrap();
                assert!(b.carries_never_from_client(), "{pairs:?}");
            }
        }
        let b = HeaderBlock::parse(encode(&[
            (":path", b"/healthz".as_slice()),
            ("x-rewrite-url", b"/admin"),
            ("cache-control", b"no-cache"),
        ]))
        .unwrap();
        assert!(b.carries_never_from_client());
    }

    #[test]
    fn other_spellings_are_the_underscored_copies_of_a_name() {
        let b = HeaderBlock::parse(encode(&[
            ("x-auth-request-user", b"bob"),
            ("x_auth_request_user", b"admin"),
            ("x_auth-request_user", b"admin"),
            ("x-auth-request-users", b"x"),
            ("x_auth_request_usex", b"x"),
            ("y_auth_request_user", b"x"),
            ("x_auth_request_email", b"admin@example.com"),
        ]))
        .unwrap();
        assert_eq!(
            b.other_spellings("x-auth-request-user"),
            ["x_auth_request_user", "x_auth-request_user"]
        );
        assert_eq!(
            b.other_spellings("x-auth-request-email"),
            ["x_auth_request_email"]
        );
        assert!(b.other_spellings("x-auth-request-groups").is_empty());
        assert!(b.other_spellings("nohyphen").is_empty());
        assert!(HeaderBlock::empty().other_spellings("x-a").is_empty());
    }

    #[test]
    fn word_compares_agree_with_slice_compares() {
        let a: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..a.len() {
            let x = &a[..len];
            let copy = x.to_vec();
            assert!(same_bytes(x, &copy));
            assert!(starts_with(&a, x));
            assert!(!starts_with(x, &a));
            for at in 0..len {
                let mut y = x.to_vec();
                y[at] ^= 1;
                assert!(!same_bytes(x, &y), "{len} {at}");
                assert!(!starts_with(&a, &y), "{len} {at}");
            }
            assert!(!same_bytes(x, &a[..len + 1]));
        }
        let head: [u8; 32] = a[..32].try_into().unwrap();
        let mut other = head;
        other[31] = b'!';
        assert!(same_bytes(&head, &head) && !same_bytes(&head, &other));
    }

    #[test]
    fn path_and_cookie_read_as_get_does() {
        let blocks: [&[(&str, &[u8])]; 6] = [
            &[
                (":path", b"/a"),
                ("cookie", b"x=1"),
                ("cookie", b"y=2"),
                (":path", b"/b"),
            ],
            &[
                ("accept", b"*/*"),
                (":pat", b"/no"),
                (":paths", b"/no"),
                ("cookies", b"no"),
            ],
            &[
                (":patH", b"/no"),
                ("Cookie", b"no"),
                ("cookiE", b"no"),
                ("cook", b"no"),
            ],
            &[(":path", b""), ("cookie", b"a\xffb")],
            &[
                ("origin", b"o"),
                ("pragma", b"p"),
                ("x", b"y"),
                (":path", b"/late"),
            ],
            &[],
        ];
        for pairs in blocks {
            let h = HeaderBlock::parse(encode(pairs)).unwrap();
            assert_eq!(h.path(), h.get(":path"), "{pairs:?}");
            // Every `cookie` header, joined as one.
            let all: Vec<String> = pairs
                .iter()
                .filter(|(n, _)| *n == "cookie")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect();
            let all = (!all.is_empty()).then(|| all.join("; "));
            assert_eq!(h.cookie().map(Cow::into_owned), all, "{pairs:?}");
        }
        let h = HeaderBlock::parse(encode(blocks[0])).unwrap();
        assert_eq!(h.path().as_deref(), Some("/a"));
        assert_eq!(h.cookie().as_deref(), Some("x=1; y=2"));
        let h = HeaderBlock::parse(encode(blocks[2])).unwrap();
        assert_eq!((h.path(), h.cookie()), (None, None));
        let h = HeaderBlock::parse(encode(blocks[3])).unwrap();
        assert_eq!(h.path().as_deref(), Some(""));
        assert_eq!(h.cookie().as_deref(), Some("a\u{fffd}b"));
        assert_eq!(HeaderBlock::empty().path(), None);
    }

    #[test]
    fn lookups_agree_with_a_plain_search() {
        // Names that share a length and last byte with a present one (so pass the name filter), names that
        // differ only there, the empty name, and a block with more names than the filter has bits.
        let many: Vec<String> = (0..80).map(|i| format!("x-h{i}")).collect();
        let mut pairs: Vec<(&str, &[u8])> = vec![
            (":path", b"/"),
            ("accept", b"a"),
            ("", b"empty name"),
            ("x-forwarded-user", b"u"),
        ];
        pairs.extend(many.iter().map(|n| (n.as_str(), n.as_bytes())));
        for pairs in [&pairs[..], &pairs[..4], &pairs[1..2], &[][..]] {
            let h = HeaderBlock::parse(encode(pairs)).unwrap();
            let probes = [
                "x-forwarded-user",
                "x-forwarded-usee",
                "y-forwarded-user",
                "x-forwarded-use",
                "accept",
                "bccept",
                "acceptt",
                "",
                ":path",
                "x-h7",
                "x-h79",
                "x-h80",
                "x-h8",
                "cookie",
            ];
            for name in probes
                .iter()
                .copied()
                .chain(many.iter().map(String::as_str))
            {
                let want = pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
                assert_eq!(h.raw(name), want, "{name:?} in {} pairs", pairs.len());
            }
        }
    }

    #[test]
    fn ascii_check_looks_at_every_byte() {
        for len in 0..100 {
            assert!(is_ascii(&vec![0x7f; len]));
            for at in 0..len {
                for high in [0x80, 0xff] {
                    let mut v = vec![b'a'; len];
                    v[at] = high;
                    assert!(!is_ascii(&v), "{len} {at}");
                }
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
                    assert_eq!(h.path(), h.get(":path"), "{i} {v}");
                    assert_eq!(h.cookie(), h.get("cookie"), "{i} {v}");
                }
            }
        }
        assert!(HeaderBlock::parse(good[..good.len() - 1].to_vec()).is_none());
        assert!(HeaderBlock::parse(vec![0xff, 0xff, 0xff, 0xff]).is_none());
        let mut lying = good.clone();
        lying[4] = 200; // the first name's length runs past the end
        assert!(HeaderBlock::parse(lying).is_none());
    }

    /// Found by mutation testing: an empty `cookie` header among several was not proven left out of the
    /// joined value (it would leave an empty `; ;` segment or a trailing separator in the header sent on).
    #[test]
    fn empty_cookie_headers_add_nothing_to_the_joined_value() {
        for (pairs, want) in [
            (
                &[("cookie", &b"a=1"[..]), ("cookie", b""), ("cookie", b"b=2")][..],
                "a=1; b=2",
            ),
            (&[("cookie", b"a=1"), ("cookie", b"")], "a=1"),
            (&[("cookie", b""), ("cookie", b"b=2")], "b=2"),
        ] {
            let h = HeaderBlock::parse(encode(pairs)).unwrap();
            assert_eq!(h.cookie().as_deref(), Some(want), "{pairs:?}");
        }
    }

    /// Found by mutation testing: the flow takes the host's word that a body follows the block (an HTTP/2
    /// or HTTP/3 body, which no header announces), which nothing checked it read.
    #[test]
    fn the_flow_reads_the_hosts_word_that_a_body_follows() {
        use crate::flow::Headers;
        let mut b = HeaderBlock::parse(encode(&[(":method", &b"OPTIONS"[..])])).unwrap();
        assert!(!Headers::body_follows(&b));
        b.body_follows = true;
        assert!(Headers::body_follows(&b));
    }

    /// Found by mutation testing: a block of no headers is empty however the host encodes it (no bytes,
    /// or a count of zero): the flow takes it for a failed read, and then reports no header removed.
    #[test]
    fn a_block_of_no_headers_is_empty() {
        assert!(HeaderBlock::parse(Vec::new()).unwrap().is_empty());
        assert!(HeaderBlock::parse(encode(&[])).unwrap().is_empty());
        assert!(
            !HeaderBlock::parse(encode(&[(":path", &b"/"[..])]))
                .unwrap()
                .is_empty()
        );
    }

    /// Found by mutation testing: a copy of an identity header spelled in capitals is found too. Envoy
    /// lowercases names, but were one to come through as sent, `X_Auth_Request_User` would reach an app
    /// that files it under `x-auth-request-user`.
    #[test]
    fn other_spellings_are_found_in_any_case() {
        let b = HeaderBlock::parse(encode(&[("X_Auth_Request_User", &b"admin"[..])])).unwrap();
        assert!(b.may_carry("x-auth-request-user"));
        assert_eq!(
            b.other_spellings("x-auth-request-user"),
            ["X_Auth_Request_User"]
        );
    }

    /// Found by mutation testing: an `_` stands for a `-` only, not for a letter of the name.
    #[test]
    fn an_underscore_spells_only_a_hyphen() {
        let b = HeaderBlock::parse(encode(&[
            ("x_auth_request_use_", &b"x"[..]),
            ("_-auth-request-user", b"x"),
            ("x_auth_request_user", b"admin"),
        ]))
        .unwrap();
        assert_eq!(
            b.other_spellings("x-auth-request-user"),
            ["x_auth_request_user"]
        );
    }
}
