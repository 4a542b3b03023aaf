//! Sealed cookies: XChaCha20-Poly1305 bound to the cookie name, key rotation, chunking, payloads.
//!
//! XChaCha20-Poly1305 rather than AES-GCM: in Wasm there is no AES instruction, and software AES costs
//! about 16 µs/KB against about 3 µs/KB for ChaCha. The 24-byte nonce is safe to pick at random.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::borrow::Cow;
use core::cell::Cell;
use core::fmt;

use crate::aead::XChaCha20Poly1305;
use crate::b64;
use crate::cookies;
use crate::headers::le64;
use crate::secret::Secret;
use crate::wire::{Reader, Writer};

/// The most cookies one sealed value may be split into.
pub const MAX_CHUNKS: usize = 16;

/// The longest cookie value [`split`] emits. Browsers cap a cookie near 4096 bytes including its name
/// and attributes; this leaves about 290 bytes for those.
pub const MAX_CHUNK_VALUE: usize = 3800;

/// The longest sealed value [`Keys::open`] looks at; anything longer is not ours.
pub const MAX_SEALED_LEN: usize = 64 * 1024;

/// The first byte of every sealed value; a new format gets a new number so old cookies fail cleanly.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
const HKDF_INFO: &[u8] = b"oidc-filter cookie v1";
pub const MIN_RAW_KEY_LEN: usize = 32;

/// Part of a value in each chunk: the first chunk also carries `"{n}."`, at most 3 bytes.
const CHUNK_PART: usize = MAX_CHUNK_VALUE - 3;

/// The cookie keys. The first one seals; every one opens, so a key can be rotated in without logging
/// anybody out: added second until every replica has it, then put first, then the old one dropped once
/// old sessions have expired.
#[derive(Clone)]
pub struct Keys {
    // Never empty: `new` refuses an empty list.
    ciphers: Vec<XChaCha20Poly1305>,
}

/// Why the configured keys were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No key at all.
    None,
    /// The key at `index` (0-based) has only `len` bytes.
    TooShort { index: usize, len: usize },
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not something we produced: too long, not base64url, too short, an unknown version, or a
    /// payload that does not decode.
    Malformed,
    /// Well-formed but no key authenticates it: tampered, sealed for another cookie name, or sealed
    /// with a key that is no longer configured.
    Invalid,
}

/// Why a value could not be split into cookies, or the cookies joined back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// More than [`MAX_CHUNKS`] cookies would be needed.
    TooLarge,
    /// The first cookie has no valid `"{n}."` count prefix.
    BadCount,
    /// Chunk `i` (1-based suffix, as in `name.i`) is missing.
    MissingChunk(usize),
}

impl Keys {
    /// Derives one AEAD key per configured key. Each raw key must have at least 32 bytes.
    pub fn new(raw: &[Vec<u8>]) -> Result<Keys, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::None);
        }
        let mut ciphers = Vec::with_capacity(raw.len());
        for (index, key) in raw.iter().enumerate() {
            if key.len() < MIN_RAW_KEY_LEN {
                return Err(KeyError::TooShort {
                    index,
                    len: key.len(),
                });
            }
            ciphers.push(XChaCha20Poly1305::new(&derive(key)));
        }
        Ok(Keys { ciphers })
    }

    /// True when each of the two opens what the other seals for the cookie `name` (the same keys, or one
    /// set rotated ahead of the other).
    pub fn open_each_other(&self, other: &Keys, name: &str) -> bool {
        let probe = |a: &Keys, b: &Keys| b.open(name, &a.seal(name, b"probe", [0; 24])).is_ok();
        probe(self, other) && probe(other, self)
    }

    /// Seals `plaintext` for the cookie `name` with the first key, as base64url (no padding) of
    /// `version (1) || nonce (24) || ciphertext || tag (16)`.
    ///
    /// The name is the associated data, so a value cannot be replayed under another cookie name.
    /// `nonce` must be fresh random bytes; it comes in as an argument so that tests are deterministic.
    pub fn seal(&self, name: &str, plaintext: &[u8], nonce: [u8; 24]) -> String {
        let Some(cipher) = self.ciphers.first() else {
            return String::new();
        };
        let mut buf = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let Some(body) = buf.get_mut(HEADER_LEN..) else {
            return String::new();
        };
        let tag = cipher.encrypt(&nonce, name.as_bytes(), body);
        buf.extend_from_slice(&tag);
        b64::encode_url(&buf)
    }

    /// Opens a value sealed by [`Keys::seal`] for the cookie `name`, trying each key in turn.
    /// Never panics, whatever `sealed` holds.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, OpenError> {
        // Checked before decoding so a hostile header cannot make us allocate much.
        if sealed.len() > MAX_SEALED_LEN {
            return Err(OpenError::Malformed);
        }
        let raw = b64::decode_url(sealed).ok_or(OpenError::Malformed)?;
        if raw.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (header, rest) = raw.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let (version, nonce) = header.split_at(1);
        if version != [VERSION] {
            return Err(OpenError::Malformed);
        }
        let nonce = <&[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let tag = <&[u8; TAG_LEN]>::try_from(tag).map_err(|_| OpenError::Malformed)?;
        // A key that does not authenticate it leaves the ciphertext as it was for the next one to try.
        let mut data = ciphertext.to_vec();
        for cipher in &self.ciphers {
            if cipher.decrypt(nonce, name.as_bytes(), &mut data, tag) {
                return Ok(data);
            }
        }
        Err(OpenError::Invalid)
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} configured, [redacted])", self.ciphers.len())
    }
}

/// Splits a sealed value into `(cookie name, cookie value)` pairs of at most [`MAX_CHUNK_VALUE`] bytes.
///
/// The first cookie is `name` with value `"{n}.{part0}"`, n being the number of cookies; the others
/// are `name.1`, `name.2`, ... Base64url has no `.`, so the count prefix parses unambiguously.
pub fn split(name: &str, sealed: &str) -> Result<Vec<(String, String)>, ChunkError> {
    let parts = split_parts(sealed);
    let n = parts.len();
    if n > MAX_CHUNKS {
        return Err(ChunkError::TooLarge);
    }
    let mut out = Vec::with_capacity(n);
    for (i, part) in parts.into_iter().enumerate() {
        out.push(match i {
            0 => (name.to_owned(), format!("{n}.{part}")),
            _ => (format!("{name}.{i}"), part.to_owned()),
        });
    }
    Ok(out)
}

/// Reassembles the sealed value stored under `name` from a `Cookie` request header.
///
/// `Ok(None)` when there is no `name` cookie. Chunks are taken by name (the first of duplicates, like
/// [`cookies::get`]); cookies left over from a longer earlier session are ignored. Chunks that are
/// reordered or mixed from two sessions are not detected here: the result then fails authentication
/// in [`Keys::open`].
pub fn join(header: &str, name: &str) -> Result<Option<String>, ChunkError> {
    Ok(join_borrowed(header, name)?.map(Cow::into_owned))
}

/// [`join`] without copying when the session fits one cookie, the common case on every request.
pub fn join_borrowed<'a>(header: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, ChunkError> {
    let Some(first) = cookies::get(header, name) else {
        return Ok(None);
    };
    // One pass over the header, borrowing, rather than building `name.i` and searching n times.
    let mut parts: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    if first.split_once('.').is_some_and(|(count, _)| count != "1") {
        for (cookie, value) in cookies::iter(header) {
            if let Some(slot) = chunk_index(name, cookie).and_then(|i| parts.get_mut(i)) {
                slot.get_or_insert(value);
            }
        }
    }
    join_parts(first, &parts)
}

/// The session [`join`] finds once the first `skip` cookies named `name` are passed over: a browser
/// sends every cookie of a name it holds for the request, of several domains or paths, and [`join`]
/// takes the first (the one of the longest path, else the oldest). A session this site set may come
/// after one of another gateway's (`Domain=example.com` from production, seen by staging at
/// `app.staging.example.com`), or one that another site tossed in. Its chunk `.K` is the one that comes
/// after as many `.K` as the sessions passed over claim: a session's cookies were stored together.
///
/// With `last`, the session's chunk `.K` is the last `.K` instead, and `None` where no chunk name is
/// there twice (the first's would be [`join`]'s): found in review, a chunk cookie another host of the
/// domain tossed in, listed first (by a longer path or an earlier creation), hid the session's own, and
/// the session was taken for a forgery and cleared, at every login again.
pub fn join_shadowed(
    header: &str,
    name: &str,
    skip: usize,
    last: bool,
) -> Result<Option<String>, ChunkError> {
    let mut firsts = cookies::iter(header)
        .filter(|(c, _)| *c == name)
        .map(|(_, v)| v);
    // How many of the sessions passed over claim each chunk: `n.…` claims chunks 1 to n - 1.
    let mut claimed = [0usize; MAX_CHUNKS];
    for _ in 0..skip {
        let Some(passed) = firsts.next() else {
            return Ok(None);
        };
        for c in claimed.iter_mut().take(chunk_count(passed)).skip(1) {
            *c += 1;
        }
    }
    let Some(first) = firsts.next() else {
        return Ok(None);
    };
    let mut parts: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let mut twice = false;
    if chunk_count(first) > 1 {
        let mut seen = [0usize; MAX_CHUNKS];
        for (cookie, value) in cookies::iter(header) {
            if let Some(i) = chunk_index(name, cookie)
                && let (Some(slot), Some(count), Some(&before)) =
                    (parts.get_mut(i), seen.get_mut(i), claimed.get(i))
            {
                if last || *count == before {
                    *slot = Some(value);
                }
                twice |= *count > 0;
                *count += 1;
            }
        }
    }
    if last && !twice {
        return Ok(None);
    }
    Ok(join_parts(first, &parts)?.map(Cow::into_owned))
}

/// The number of cookies a session's first cookie says it has (`n.…`); 1 when it says none that can be.
fn chunk_count(first: &str) -> usize {
    first
        .split_once('.')
        .and_then(|(n, _)| parse_index(n))
        .unwrap_or(1)
}

/// What one pass over a request's `Cookie` header finds.
#[derive(Debug, PartialEq, Eq)]
pub struct CookieScan<'a> {
    /// The sealed session joined from its chunks, as [`join_borrowed`] returns it.
    pub session: Result<Option<Cow<'a, str>>, ChunkError>,
    /// The header without our cookies, as [`cookies::strip`] returns it.
    pub stripped: Option<String>,
    /// True when a second cookie of the session's name, or of one of its chunks' names, came: a session
    /// may come after the one found ([`join_shadowed`] finds none otherwise).
    pub more: bool,
    /// The session's names that came: bit 0 for `name`, bit K for `name.K` ([`names_of`]).
    pub names: u32,
}

/// The length of the cached sealed value that starts with the first [`EDGE`] bytes of the text given, if
/// there is one ([`SealedMap::entry_by_start`]).
type KnownLen<'k> = &'k dyn Fn(&[u8]) -> Option<usize>;

/// [`join_borrowed`] and [`cookies::strip`] in one pass over `header`: the logged-in path needs both,
/// and a session of several kilobytes makes every pass over the header count. `is_ours` must hold for
/// `name` and its chunk names, and only for names that start with `name`.
pub fn scan<'a>(header: &'a str, name: &str, is_ours: impl Fn(&str) -> bool) -> CookieScan<'a> {
    scan_guided(header, name, &is_ours, None).0
}

/// [`scan`], and the value `cache` holds for the session found, helped by the cache: a session it holds
/// is recognised by the start of its first part, and the cached value's length says where each of its
/// cookies ends, so they are not searched for their ends nor parsed. Whatever the header, the result is
/// [`scan`]'s, and the value is `cache`'s for its session.
pub fn scan_cached<'a, 'm, V>(
    header: &'a str,
    name: &str,
    is_ours: impl Fn(&str) -> bool,
    cache: &'m SealedMap<V>,
) -> (CookieScan<'a>, Option<&'m V>) {
    let lookup = |scan: &CookieScan| match &scan.session {
        Ok(Some(sealed)) => cache.get(sealed),
        _ => None,
    };
    // The cached entry the start of the first session cookie named, kept so that the session found is
    // compared with it without hashing its start again.
    let named = Cell::new(None);
    let known = |start: &[u8]| {
        let entry = cache.entry_by_start(start)?;
        named.set(Some(entry));
        Some(entry.0.len())
    };
    let (scan, guided) = scan_guided(header, name, &is_ours, Some(&known));
    if !guided {
        let hit = lookup(&scan);
        return (scan, hit);
    }
    if let (Ok(Some(sealed)), Some((key, value))) = (&scan.session, named.get())
        && same(sealed.as_bytes(), key.as_bytes())
    {
        // A cached value has no `;`: the search would have ended each cookie at the same place.
        return (scan, Some(value));
    }
    // Not the cached session its start named: its cookies' ends were guessed, so find them. (The value
    // found may still be cached, should another cached value start the same way.)
    let scan = scan_guided(header, name, &is_ours, None).0;
    let hit = lookup(&scan);
    (scan, hit)
}

/// The one pass behind [`scan`] and [`scan_cached`]; with `known`, also whether a length it gave was
/// taken for the session's cookies, so that the result holds only if its session is a cached value.
fn scan_guided<'a>(
    header: &'a str,
    name: &str,
    is_ours: &dyn Fn(&str) -> bool,
    known: Option<KnownLen<'_>>,
) -> (CookieScan<'a>, bool) {
    let mut judge = ScanJudge {
        name,
        is_ours,
        known,
        first: None,
        parts: [None; MAX_CHUNKS],
        sealed_len: None,
        hinted: None,
        more: false,
        names: 0,
    };
    let stripped = cookies::strip_segments(header, name, &mut judge);
    let scan = CookieScan {
        session: judge
            .first
            .map_or(Ok(None), |first| join_parts(first, &judge.parts)),
        stripped: stripped.into_header(header),
        more: judge.more,
        names: judge.names,
    };
    (scan, judge.sealed_len.is_some())
}

/// [`scan`]'s judge of the segments whose names start with the session's name.
struct ScanJudge<'a, 'n> {
    name: &'n str,
    is_ours: &'n dyn Fn(&str) -> bool,
    known: Option<KnownLen<'n>>,
    /// The first `name` cookie's value, and the first value of each chunk.
    first: Option<&'a str>,
    parts: [Option<&'a str>; MAX_CHUNKS],
    /// The length of the cached value the first `name` cookie seems to hold: once set, the scan's result
    /// holds only if its session is a cached value.
    sealed_len: Option<usize>,
    /// The segment just ended by a known length: that length, where its value starts, and its slot.
    hinted: Option<(usize, usize, Slot)>,
    /// [`CookieScan::more`].
    more: bool,
    /// [`CookieScan::names`].
    names: u32,
}

/// Where a value of the session goes.
#[derive(Clone, Copy)]
enum Slot {
    First,
    Part(usize),
}

impl<'a> cookies::Judge<'a> for ScanJudge<'a, '_> {
    fn known_len(&mut self, rest: &'a str) -> Option<usize> {
        self.hinted = None;
        self.known?;
        // `rest` starts with the name (the prefix `strip_segments` was given). Bytes, not `str` slices
        // and `parse_index`: this runs on every logged-in request.
        let at = self.name.len();
        let after = rest.as_bytes().get(at..)?;
        match after.first()? {
            // `name=` then `{n}.` then the first part.
            b'=' if self.first.is_none() => {
                let (n, value_at) = number_then(after, b'.')?;
                self.hint_first(rest, n, at + value_at)
            }
            // `name.K=` and part K of the value found above.
            b'.' => {
                let (k, value_at) = number_then(after, b'=')?;
                self.hint_part(k, at + value_at)
            }
            _ => None,
        }
    }

    fn ours(&mut self, segment: &'a str) -> bool {
        // A segment ended by a known length (it has exactly that length: a searched end is elsewhere) is
        // `name=` or `name.K=` and the value: taken as it is, without parsing. Should it hold whitespace
        // or quotes that parsing would drop, the value is not a cached one, and the caller scans again.
        if let Some((len, value_at, slot)) = self.hinted.take()
            && segment.len() == len
            && let Some(value) = segment.get(value_at..)
        {
            let bit = match slot {
                Slot::First => {
                    self.first = Some(value);
                    1
                }
                Slot::Part(k) => {
                    if let Some(p) = self.parts.get_mut(k) {
                        *p = Some(value);
                    }
                    1 << k
                }
            };
            self.names |= bit;
            return true;
        }
        let Some((cookie, value)) = cookies::parse_pair(segment) else {
            return false;
        };
        // The session's own names are ours by `is_ours`'s contract: each is told apart once.
        // (A known length ends only the first of each name: a second is parsed here.)
        let bit = if crate::headers::same_bytes(cookie.as_bytes(), self.name.as_bytes()) {
            self.first.get_or_insert(value);
            1
        } else if let Some(i) = chunk_index(self.name, cookie) {
            if let Some(slot) = self.parts.get_mut(i) {
                slot.get_or_insert(value);
            }
            1 << i
        } else {
            return (self.is_ours)(cookie);
        };
        self.more |= self.names & bit != 0;
        self.names |= bit;
        true
    }
}

impl<'a> ScanJudge<'a, '_> {
    /// The length of the first cookie, `n` parts of a value from `value_at` on, if that is a cached value.
    fn hint_first(&mut self, rest: &str, n: usize, value_at: usize) -> Option<usize> {
        let len = (self.known?)(rest.as_bytes().get(value_at..)?)?;
        if part_count(len) != n {
            return None;
        }
        self.sealed_len = Some(len);
        let seg = value_at + part_len(len, 0);
        // The first cookie's value is `{n}.` and the part.
        self.hinted = Some((seg, self.name.len() + 1, Slot::First));
        Some(seg)
    }

    /// The length of chunk `k`'s cookie, its value starting at `value_at`: part `k` of the cached value
    /// the first cookie started, unless an earlier cookie already gave that part.
    fn hint_part(&mut self, k: usize, value_at: usize) -> Option<usize> {
        let len = self.sealed_len?;
        if k == 0 || k >= part_count(len) || self.parts.get(k)?.is_some() {
            return None;
        }
        let seg = value_at + part_len(len, k);
        self.hinted = Some((seg, value_at, Slot::Part(k)));
        Some(seg)
    }
}

/// The one- or two-digit number after `b`'s first byte and followed by `end`, and where the byte past
/// `end` is.
fn number_then(b: &[u8], end: u8) -> Option<(usize, usize)> {
    match *b.get(1..4)? {
        [d, t, _] if t == end => Some((small_number(d, None)?, 3)),
        [d, e, t] if t == end => Some((small_number(d, Some(e))?, 4)),
        _ => None,
    }
}

/// The number written `d` or `de` in canonical form (no leading zero), at most [`MAX_CHUNKS`]: what
/// [`parse_index`] reads, from bytes.
fn small_number(d: u8, e: Option<u8>) -> Option<usize> {
    let digit = |b: u8| b.is_ascii_digit().then(|| usize::from(b - b'0'));
    let n = match e {
        None => digit(d)?,
        Some(e) if d != b'0' => digit(d)? * 10 + digit(e)?,
        Some(_) => return None,
    };
    (n <= MAX_CHUNKS).then_some(n)
}

/// How many parts [`split_parts`] cuts an ASCII value of `len` bytes into.
fn part_count(len: usize) -> usize {
    len.div_ceil(CHUNK_PART).max(1)
}

/// The length of part `k` of an ASCII value of `len` bytes, as [`split_parts`] cuts it.
fn part_len(len: usize, k: usize) -> usize {
    len.saturating_sub(k * CHUNK_PART).min(CHUNK_PART)
}

/// The sealed value from the first cookie (`"{n}.part0"`) and chunks `1..n`.
fn join_parts<'a>(
    first: &'a str,
    parts: &[Option<&'a str>; MAX_CHUNKS],
) -> Result<Option<Cow<'a, str>>, ChunkError> {
    // A byte search: `split_once('.')` sets up a `char` pattern searcher, a cost on every request.
    let dot = first
        .bytes()
        .position(|b| b == b'.')
        .ok_or(ChunkError::BadCount)?;
    let (Some(count), Some(part0)) = (first.get(..dot), first.get(dot + 1..)) else {
        return Err(ChunkError::BadCount);
    };
    let n = parse_index(count)
        .filter(|&n| n >= 1)
        .ok_or(ChunkError::BadCount)?;
    if n == 1 {
        return Ok(Some(Cow::Borrowed(part0)));
    }
    // Every part first: a header that names 16 parts and brings one must not cost an allocation of 16
    // times its size.
    let mut len = part0.len();
    for i in 1..n {
        let part = parts
            .get(i)
            .copied()
            .flatten()
            .ok_or(ChunkError::MissingChunk(i))?;
        len = len.saturating_add(part.len());
    }
    let mut out = String::with_capacity(len);
    out.push_str(part0);
    for part in parts.iter().take(n).skip(1).flatten() {
        out.push_str(part);
    }
    Ok(Some(Cow::Owned(out)))
}

/// Names of every cookie of session `name` present in `header` (`name` and `name.1` to
/// `name.16`), each once: what a response must clear on logout or when a session shrinks.
pub fn chunk_names(name: &str, header: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (cookie, _) in cookies::iter(header) {
        if is_session_cookie(name, cookie) && !names.iter().any(|n| n == cookie) {
            names.push(cookie.to_owned());
        }
    }
    names
}

/// The names [`chunk_names`] finds, from the bits of [`CookieScan::names`] (`present`), in order.
pub fn names_of(name: &str, present: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut k = 0;
    while k <= MAX_CHUNKS {
        if present & 1 << k != 0 {
            let mut n = String::from(name);
            if k > 0 {
                n.push('.');
                if k >= 10 {
                    n.push('1');
                }
                n.push(char::from(b'0' + (k % 10) as u8));
            }
            names.push(n);
        }
        k += 1;
    }
    names
}

/// True when `cookie_name` is `base` or one of its chunks `base.K`, K in 1..=[`MAX_CHUNKS`] written
/// without leading zeros, exactly as [`split`] names them.
pub fn is_session_cookie(base: &str, cookie_name: &str) -> bool {
    cookie_name == base || chunk_index(base, cookie_name).is_some()
}

/// A map keyed by sealed values (the per-worker session cache), built for Wasm, where hashing and
/// `memcmp` go a byte at a time: a key longer than [`EDGE`] bytes is hashed by its first `EDGE` bytes
/// only (a sealed value starts with its random nonce, so its start is as distinct as the whole), and
/// compared whole, a block at a time. A lookup then costs the same hash for an 8 KB session as for a
/// 1 KB one, and one fast pass over the key; and the start of a value is enough to find the cached value
/// it may be ([`SealedMap::entry_by_start`]).
///
/// Keys are secrets, so the comparison does not stop at the first differing byte; and to reach a
/// comparison at all, a key must share its start with a stored one.
///
/// The hash is a seeded multiply-rotate over those four words, not SipHash: a key is only stored after it
/// opened (its tag checked under the cookie key), so no client can choose stored keys to share a hash;
/// a client's own lookups compare only the keys of one hash each, whatever they hash to.
#[derive(Debug)]
pub struct SealedMap<V> {
    /// The hash's two keys, random per map.
    seed: (u64, u64),
    /// Sorted by the seeded hash of the key (keys of one hash side by side), found by a binary search: a
    /// table of its own here would be a second instantiation of `hashbrown`'s, over 2 KB of the module
    /// (the cache holds at most `flow`'s 1,024 sessions, so an insertion moves at most 24 KB).
    entries: Vec<(u64, String, V)>,
}

/// How many bytes at the start of a key [`SealedMap`] hashes.
pub const EDGE: usize = 32;

impl<V> Default for SealedMap<V> {
    fn default() -> Self {
        // Without randomness (the host always has it) the hash is still a hash: the seed only keeps
        // keys apart per map, and no client picks the keys stored.
        let mut seed = [0u8; 16];
        let _ = getrandom::fill(&mut seed);
        let (a, b) = seed.split_at(8);
        let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or_default());
        SealedMap {
            seed: (word(a), word(b)),
            entries: Vec::new(),
        }
    }
}

impl<V> SealedMap<V> {
    /// The entries of hash `h`, and where they start.
    fn run(&self, h: u64) -> (usize, impl Iterator<Item = &(u64, String, V)>) {
        let from = self.entries.partition_point(|e| e.0 < h);
        (
            from,
            self.entries[from..].iter().take_while(move |e| e.0 == h),
        )
    }

    /// Where exactly `key` is stored, or where it would go (after the keys of its hash), in one pass.
    fn find(&self, key: &str) -> (Result<usize, usize>, u64) {
        let h = self.hash(key);
        let (mut i, run) = self.run(h);
        for e in run {
            if same(e.1.as_bytes(), key.as_bytes()) {
                return (Ok(i), h);
            }
            i += 1;
        }
        (Err(i), h)
    }

    /// The value stored under exactly `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        let i = self.find(key).0.ok()?;
        self.entries.get(i).map(|e| &e.2)
    }

    /// A stored key longer than [`EDGE`] bytes whose first `EDGE` bytes are those of `start` (the first
    /// such key, should two share them), and its value. What the session scan asks to end the session's
    /// cookies without searching them; nothing is decided by it alone.
    pub fn entry_by_start(&self, start: &[u8]) -> Option<(&str, &V)> {
        let head = start.first_chunk::<EDGE>()?;
        for (_, k, v) in self.run(self.hash_head(head)).1 {
            if let Some(h) = k.as_bytes().first_chunk::<EDGE>()
                && k.len() > EDGE
                && crate::headers::same_bytes(h, head)
            {
                return Some((k, v));
            }
        }
        None
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn insert(&mut self, key: String, value: V) {
        match self.find(&key) {
            (Ok(i), _) => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.2 = value;
                }
            }
            (Err(i), h) => self.entries.insert(i, (h, key, value)),
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        if let (Ok(i), _) = self.find(key) {
            self.entries.remove(i);
        }
    }

    /// Keeps only the values for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.entries.retain(|e| keep(&e.2));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn hash(&self, key: &str) -> u64 {
        let bytes = key.as_bytes();
        match bytes.first_chunk::<EDGE>() {
            Some(head) if bytes.len() > EDGE => self.hash_head(head),
            _ => {
                let (words, rest) = bytes.as_chunks::<8>();
                let mut h = self.start(bytes.len());
                for w in words {
                    h = self.mix(h, u64::from_le_bytes(*w));
                }
                let mut last = [0u8; 8];
                last[..rest.len()].copy_from_slice(rest);
                self.finish(self.mix(h, u64::from_le_bytes(last)))
            }
        }
    }

    /// The hash of a key longer than [`EDGE`] bytes, from its first `EDGE` bytes.
    fn hash_head(&self, head: &[u8; EDGE]) -> u64 {
        let mut h = self.start(usize::MAX);
        h = self.mix(h, le64(head, 0));
        h = self.mix(h, le64(head, 8));
        h = self.mix(h, le64(head, 16));
        h = self.mix(h, le64(head, 24));
        self.finish(h)
    }

    fn start(&self, len: usize) -> u64 {
        self.seed.0 ^ (len as u64).wrapping_mul(HASH_K)
    }

    fn mix(&self, h: u64, w: u64) -> u64 {
        (h ^ w ^ self.seed.1).wrapping_mul(HASH_K).rotate_left(29)
    }

    fn finish(&self, mut h: u64) -> u64 {
        h ^= h >> 32;
        h.wrapping_mul(HASH_K) ^ (h >> 29)
    }
}

/// The multiplier of [`SealedMap`]'s hash.
const HASH_K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Whole-key equality, 32 bytes per step and without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a32, a_rest) = a.as_chunks::<32>();
    let (b32, b_rest) = b.as_chunks::<32>();
    let mut diff = u8::from(blocks_differ(a32, b32));
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Whether `a` and `b` differ in any block they both have. In Wasm with SIMD: two 16-byte compares per
/// block.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
fn blocks_differ(a: &[[u8; 32]], b: &[[u8; 32]]) -> bool {
    use crate::headers::load_block;
    use core::arch::wasm32::*;
    let mut diff = u64x2_splat(0);
    for (x, y) in a.iter().zip(b) {
        let ((x0, x1), (y0, y1)) = (load_block(x), load_block(y));
        diff = v128_or(diff, v128_or(v128_xor(x0, y0), v128_xor(x1, y1)));
    }
    v128_any_true(diff)
}

/// The same for a native build (the tests and fuzzing), which never serves a request: byte by byte,
/// still without an early exit.
#[cfg(not(target_arch = "wasm32"))]
fn blocks_differ(a: &[[u8; 32]], b: &[[u8; 32]]) -> bool {
    let (a, b) = (a.as_flattened(), b.as_flattened());
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) != 0
}

/// The format of [`Session`] and [`LoginState`] plaintexts, the first byte of each (see [`crate::wire`]).
/// Format 1 was JSON, whose first byte is `{`: such a cookie is now `Malformed` and its user logs in
/// again. A new format gets a new number, and a golden file in `testdata/golden`.
pub const PAYLOAD_VERSION: u8 = 2;

/// A logged-in session, sealed into the session cookie: every byte travels on every request.
///
/// Encoded (see [`crate::wire`]) as [`PAYLOAD_VERSION`], then `id_token`, `access_token` (optional),
/// `refresh_token` (optional), `token_expires_at`, `expires_at`, `sub`, and a last string when there is a
/// `login_id` or a `login_sid`: `\0`, the id as base64url of its 8 bytes (little-endian), then the `sid`;
/// or, in a session of the builds before login ids, the `sid` alone. A build of before login ids reads the
/// string as the session's `sid`, one no IdP names, so it opens these sessions (through a rolling upgrade,
/// or after a rollback); only a back-channel logout by the `sid` alone of a session whose ID token names
/// none misses it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The ID token, kept for `id_token_hint` at logout and for forwarding.
    pub id_token: Secret,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// Unix seconds when the forwarded token expires (refresh is due then).
    pub token_expires_at: u64,
    /// Unix seconds when the session ends regardless of refreshes.
    pub expires_at: u64,
    /// The user's `sub` claim, for logs and headers.
    pub sub: String,
    /// The last `sid` (session at the IdP) an ID token of this session named, the login's for IdPs that
    /// leave it out of refreshed ID tokens (Ory Hydra, Spring Authorization Server); kept only while the
    /// ID token held has none, for a back-channel logout may name the session by it alone.
    pub login_sid: Option<String>,
    /// Names the login, random, kept by every renewal: a `/logout` ends it (see [`Session::login_id`]).
    /// `None` in sessions of the builds before.
    pub login_id: Option<u64>,
    /// The IdP's last renewal did not extend the token (it gave the same ID token again, or one capped
    /// at the end of its own session): renewing before the token expires would only ask it again, so the
    /// session renews once the token has expired. Kept only with a login id (see [`Session::encode`]).
    pub renew_at_expiry: bool,
}

impl Session {
    /// The login's id. For a session of the builds before login ids that can renew, one made of its user
    /// and the end of its session, which every renewal keeps too (two such logins of one user in the same
    /// second share it); `None` for one that cannot (its ID token is its login).
    pub fn login_id(&self) -> Option<u64> {
        self.login_id.or_else(|| {
            self.refresh_token.as_ref()?;
            let end = self.expires_at.to_le_bytes();
            Some(crate::idhash::fnv(&[b"login\0", self.sub.as_bytes(), &end]))
        })
    }

    /// A login id that carries when the login was made (gateway clock): its high 32 bits, then 16 bits
    /// that vouch for them (so an id of the builds before, random, is almost never read as one), then
    /// 16 of `random`. Builds before read it as any id. A user's logins are told apart by it within a
    /// second by those 16 bits (its key in the list of ended logins is the user's, then the id).
    pub fn login_id_made_at(made_at: u64, random: u64) -> u64 {
        let m = made_at & 0xffff_ffff;
        (m << 32) | (made_tag(m) << 16) | (random & 0xffff)
    }

    /// When the login was made, if its id says ([`Session::login_id_made_at`]).
    pub fn made_at(&self) -> Option<u64> {
        let id = self.login_id?;
        let m = id >> 32;
        ((id >> 16) & 0xffff == made_tag(m)).then_some(m)
    }

    /// The plaintext to seal.
    pub fn encode(&self) -> Vec<u8> {
        let tokens = [
            Some(&self.id_token),
            self.access_token.as_ref(),
            self.refresh_token.as_ref(),
        ];
        let size: usize = tokens.iter().flatten().map(|t| t.expose().len()).sum();
        let sid = self.login_sid.as_deref().filter(|s| !s.is_empty());
        let last = match self.login_id {
            Some(id) => {
                // Pushed, not `concat`: that would bring in 1 KB of generic joining. `\x01` after the
                // id marks `renew_at_expiry` (builds before read it as the start of the `sid`, and the
                // login id as theirs: their `/logout` still ends the session).
                let mut last = String::from("\0");
                last.push_str(&crate::b64::encode_url(&id.to_le_bytes()));
                if self.renew_at_expiry {
                    last.push('\x01');
                }
                last.push_str(sid.unwrap_or(""));
                Some(last)
            }
            None => sid.map(str::to_owned),
        };
        let mut w = Writer::new(
            PAYLOAD_VERSION,
            size + self.sub.len() + last.as_ref().map_or(0, |s| s.len() + 2) + 24,
        );
        w.str(self.id_token.expose())
            .opt_str(self.access_token.as_ref().map(Secret::expose))
            .opt_str(self.refresh_token.as_ref().map(Secret::expose))
            .u64(self.token_expires_at)
            .u64(self.expires_at)
            .str(&self.sub);
        if let Some(last) = &last {
            w.str(last);
        }
        w.finish()
    }

    /// Parses an opened plaintext; anything other than what [`Session::encode`] writes is `Malformed`.
    pub fn decode(bytes: &[u8]) -> Result<Session, OpenError> {
        let read = || {
            let mut r = Reader::new(bytes, PAYLOAD_VERSION)?;
            let mut s = Session {
                id_token: Secret::new(r.string()?),
                access_token: r.opt_string()?.map(Secret::new),
                refresh_token: r.opt_string()?.map(Secret::new),
                token_expires_at: r.u64()?,
                expires_at: r.u64()?,
                sub: r.string()?,
                login_sid: None,
                login_id: None,
                renew_at_expiry: false,
            };
            // A zero-length last string is never written: a trailing empty string is malformed, as any
            // other trailing byte is.
            if !r.at_end() {
                let last = r.string().filter(|last| !last.is_empty())?;
                let sid = match last.strip_prefix('\0') {
                    Some(rest) => {
                        let (id, sid) = (rest.get(..11)?, rest.get(11..)?);
                        let id = crate::b64::decode_url(id)?;
                        s.login_id = Some(u64::from_le_bytes(id.as_slice().try_into().ok()?));
                        let marked = sid.strip_prefix('\x01');
                        s.renew_at_expiry = marked.is_some();
                        marked.unwrap_or(sid)
                    }
                    None => &last,
                };
                s.login_sid = Some(sid.to_owned()).filter(|sid| !sid.is_empty());
            }
            r.finish().map(|()| s)
        };
        read().ok_or(OpenError::Malformed)
    }
}

/// The 16 bits that vouch for a login id's time ([`Session::login_id_made_at`]).
fn made_tag(m: u64) -> u64 {
    crate::idhash::fnv(&[b"made\0", &m.to_le_bytes()]) & 0xffff
}

/// One login attempt in flight: what the callback must check and where to go afterwards. Each
/// attempt has its own cookie, so several tabs can log in at the same time.
///
/// Encoded (see [`crate::wire`]) as [`PAYLOAD_VERSION`], then `state`, `nonce`, `verifier`, `rd`,
/// `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginState {
    /// The `state` parameter sent to the IdP.
    pub state: Secret,
    /// The `nonce` expected in the ID token.
    pub nonce: Secret,
    /// The PKCE code verifier.
    pub verifier: Secret,
    /// Where to send the browser once logged in.
    pub rd: String,
    /// Unix seconds after which the attempt is void.
    pub expires_at: u64,
}

impl LoginState {
    /// The plaintext to seal.
    pub fn encode(&self) -> Vec<u8> {
        let size = self.state.expose().len()
            + self.nonce.expose().len()
            + self.verifier.expose().len()
            + self.rd.len();
        let mut w = Writer::new(PAYLOAD_VERSION, size + 16);
        w.str(self.state.expose())
            .str(self.nonce.expose())
            .str(self.verifier.expose())
            .str(&self.rd)
            .u64(self.expires_at);
        w.finish()
    }

    /// Parses an opened plaintext; anything other than what [`LoginState::encode`] writes is
    /// `Malformed`.
    pub fn decode(bytes: &[u8]) -> Result<LoginState, OpenError> {
        let read = || {
            let mut r = Reader::new(bytes, PAYLOAD_VERSION)?;
            let s = LoginState {
                state: Secret::new(r.string()?),
                nonce: Secret::new(r.string()?),
                verifier: Secret::new(r.string()?),
                rd: r.string()?,
                expires_at: r.u64()?,
            };
            r.finish().map(|()| s)
        };
        read().ok_or(OpenError::Malformed)
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::None => f.write_str("no cookie key configured"),
            KeyError::TooShort { index, len } => write!(
                f,
                "cookie key {index} has {len} bytes, at least {MIN_RAW_KEY_LEN} are required"
            ),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenError::Malformed => "malformed sealed cookie",
            OpenError::Invalid => "sealed cookie does not authenticate",
        })
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::TooLarge => write!(f, "session needs more than {MAX_CHUNKS} cookies"),
            ChunkError::BadCount => f.write_str("session cookie has no valid chunk count"),
            ChunkError::MissingChunk(i) => write!(f, "session cookie chunk {i} is missing"),
        }
    }
}

impl core::error::Error for KeyError {}
impl core::error::Error for OpenError {}
impl core::error::Error for ChunkError {}

/// HKDF-SHA256 of a configured key, so that a passphrase-like key still yields a uniform AEAD key and
/// the same raw key could serve another purpose under another `info` without the two colliding.
fn derive(raw: &[u8]) -> [u8; 32] {
    // No salt (RFC 5869 then uses zeros): there is nothing secret or per-deployment to put there.
    crate::sha256::hkdf32(b"", raw, HKDF_INFO)
}

/// `sealed` cut into parts of at most `CHUNK_PART` bytes, always at least one (possibly empty).
fn split_parts(sealed: &str) -> Vec<&str> {
    let mut parts = Vec::with_capacity(sealed.len() / CHUNK_PART + 1);
    let mut rest = sealed;
    loop {
        if rest.len() <= CHUNK_PART {
            parts.push(rest);
            return parts;
        }
        // Sealed values are ASCII; the boundary walk only keeps a foreign string from panicking.
        let mut at = CHUNK_PART;
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        let (part, tail) = crate::weburl::split_at(rest, at);
        parts.push(part);
        rest = tail;
    }
}

/// `K` when `cookie_name` is `base.K`, K in 1..=MAX_CHUNKS.
fn chunk_index(base: &str, cookie_name: &str) -> Option<usize> {
    let suffix = cookie_name.strip_prefix(base)?.strip_prefix('.')?;
    parse_index(suffix).filter(|&k| (1..=MAX_CHUNKS).contains(&k))
}

/// A small decimal in canonical form: digits only, no sign, no leading zero, at most two digits, at most
/// [`MAX_CHUNKS`].
fn parse_index(s: &str) -> Option<usize> {
    match *s.as_bytes() {
        [d] => small_number(d, None),
        [d, e] => small_number(d, Some(e)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const NAME: &str = "oidc_session";

    fn keys(raw: &[&[u8; 32]]) -> Keys {
        let raw: Vec<Vec<u8>> = raw.iter().map(|k| k.to_vec()).collect();
        Keys::new(&raw).unwrap()
    }

    fn header(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn session() -> Session {
        Session {
            id_token: Secret::new("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"),
            access_token: Some(Secret::new("access-123")),
            refresh_token: None,
            token_expires_at: 1_700_000_300,
            expires_at: 1_700_028_800,
            sub: "alice".into(),
            login_sid: None,
            login_id: None,
            renew_at_expiry: false,
        }
    }

    #[test]
    fn keys_need_one_key_of_32_bytes() {
        assert_eq!(Keys::new(&[]).unwrap_err(), KeyError::None);
        let err = Keys::new(&[vec![0; 32], vec![0; 31]]).unwrap_err();
        assert_eq!(err, KeyError::TooShort { index: 1, len: 31 });
        assert!(err.to_string().contains("key 1"));
        assert!(Keys::new(&[vec![0; 64]]).is_ok());
    }

    #[test]
    fn keys_debug_hides_the_keys() {
        let k = Keys::new(&[vec![0x41; 32]]).unwrap();
        assert_eq!(format!("{k:?}"), "Keys(1 configured, [redacted])");
    }

    #[test]
    fn seal_open_round_trip() {
        let k = keys(&[&[7; 32]]);
        let sealed = k.seal(NAME, b"hello", [1; 24]);
        assert!(!sealed.contains(['=', '.', '+', '/']));
        assert_eq!(k.open(NAME, &sealed).unwrap(), b"hello");
        let empty = k.seal(NAME, b"", [2; 24]);
        assert_eq!(k.open(NAME, &empty).unwrap(), b"");
    }

    #[test]
    fn another_cookie_name_does_not_open() {
        let k = keys(&[&[7; 32]]);
        let sealed = k.seal(NAME, b"hello", [1; 24]);
        assert_eq!(k.open("oidc_login", &sealed), Err(OpenError::Invalid));
    }

    #[test]
    fn every_tampered_byte_is_caught() {
        let k = keys(&[&[7; 32]]);
        let raw = URL_SAFE_NO_PAD
            .decode(k.seal(NAME, b"hello world", [1; 24]))
            .unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let expected = if i == 0 {
                OpenError::Malformed
            } else {
                OpenError::Invalid
            };
            assert_eq!(k.open(NAME, &URL_SAFE_NO_PAD.encode(&bad)), Err(expected));
        }
    }

    #[test]
    fn truncated_values_do_not_open() {
        let k = keys(&[&[7; 32]]);
        let sealed = k.seal(NAME, b"hello world", [1; 24]);
        for len in 0..sealed.len() {
            assert!(k.open(NAME, &sealed[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn malformed_inputs_are_malformed() {
        let k = keys(&[&[7; 32]]);
        assert_eq!(k.open(NAME, ""), Err(OpenError::Malformed));
        assert_eq!(k.open(NAME, "not base64!"), Err(OpenError::Malformed));
        let padded = format!("{}=", k.seal(NAME, b"hi", [1; 24]));
        assert_eq!(k.open(NAME, &padded), Err(OpenError::Malformed));
        let huge = "A".repeat(MAX_SEALED_LEN + 1);
        assert_eq!(k.open(NAME, &huge), Err(OpenError::Malformed));
    }

    /// A value sealed by the build before SHA-256 and HKDF moved onto `sha2` (they came from the
    /// `hmac-sha256` crate): the sessions of browsers logged in before an upgrade still open, and the
    /// same key and nonce seal the same bytes.
    #[test]
    fn a_value_sealed_by_the_previous_key_derivation_opens() {
        const SEALED: &str =
            "AQcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHB4k7Rsqs0Z9oChYkRWXL2xx3ZSAdKpZa1gMPRPBKdOM";
        let k = Keys::new(&[b"a passphrase-like cookie key of 40 bytes".to_vec()]).unwrap();
        assert_eq!(
            k.open("_oidc_session", SEALED).unwrap(),
            b"{\"sub\":\"alice\"}"
        );
        assert_eq!(
            k.seal("_oidc_session", b"{\"sub\":\"alice\"}", [7; 24]),
            SEALED
        );
    }

    #[test]
    fn old_keys_open_and_removed_keys_do_not() {
        let (old, new) = (&[1; 32], &[2; 32]);
        let sealed_old = keys(&[old]).seal(NAME, b"s", [3; 24]);
        let rotated = keys(&[new, old]);
        assert_eq!(rotated.open(NAME, &sealed_old).unwrap(), b"s");
        // The new key seals, so the old one can be dropped once its sessions expire.
        let sealed_new = rotated.seal(NAME, b"t", [4; 24]);
        assert_eq!(keys(&[new]).open(NAME, &sealed_new).unwrap(), b"t");
        assert_eq!(
            keys(&[new]).open(NAME, &sealed_old),
            Err(OpenError::Invalid)
        );
    }

    #[test]
    fn split_join_one_chunk() {
        let parts = split(NAME, "abc").unwrap();
        assert_eq!(parts, [(NAME.to_owned(), "1.abc".to_owned())]);
        assert_eq!(join(&header(&parts), NAME).unwrap().as_deref(), Some("abc"));
        let empty = split(NAME, "").unwrap();
        assert_eq!(join(&header(&empty), NAME).unwrap().as_deref(), Some(""));
    }

    #[test]
    fn split_join_two_chunks() {
        let sealed = "x".repeat(CHUNK_PART + 10);
        let parts = split(NAME, &sealed).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].0, "oidc_session.1");
        assert!(parts[0].1.starts_with("2."));
        assert_eq!(join(&header(&parts), NAME).unwrap(), Some(sealed));
    }

    #[test]
    fn split_join_a_sealed_8k_session() {
        let k = keys(&[&[9; 32]]);
        let payload: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
        let sealed = k.seal(NAME, &payload, [5; 24]);
        let parts = split(NAME, &sealed).unwrap();
        assert_eq!(parts.len(), 3);
        for (n, v) in &parts {
            assert!(v.len() <= MAX_CHUNK_VALUE, "{n} has {} bytes", v.len());
        }
        // Other cookies and a shuffled order do not matter.
        let mut shuffled = parts.clone();
        shuffled.reverse();
        let h = format!("a=1; {}; b=2", header(&shuffled));
        let joined = join(&h, NAME).unwrap().unwrap();
        assert_eq!(k.open(NAME, &joined).unwrap(), payload);
    }

    #[test]
    fn split_refuses_more_than_max_chunks() {
        let fits = "y".repeat(CHUNK_PART * MAX_CHUNKS);
        assert_eq!(split(NAME, &fits).unwrap().len(), MAX_CHUNKS);
        let parts = split(NAME, &fits).unwrap();
        assert_eq!(parts[0].1.len(), MAX_CHUNK_VALUE);
        assert_eq!(join(&header(&parts), NAME).unwrap(), Some(fits.clone()));
        let too_big = format!("{fits}y");
        assert_eq!(split(NAME, &too_big), Err(ChunkError::TooLarge));
    }

    #[test]
    fn join_without_the_cookie_is_none() {
        assert_eq!(join("a=1; x_oidc_session=1.abc", NAME), Ok(None));
        assert_eq!(join("", NAME), Ok(None));
    }

    #[test]
    fn join_reports_a_missing_chunk() {
        let sealed = "z".repeat(CHUNK_PART * 3);
        let mut parts = split(NAME, &sealed).unwrap();
        parts.remove(2);
        assert_eq!(
            join(&header(&parts), NAME),
            Err(ChunkError::MissingChunk(2))
        );
    }

    #[test]
    fn join_rejects_bad_counts() {
        for v in [
            "abc", ".abc", "0.abc", "17.abc", "+2.abc", "02.abc", "x.abc", "100.a",
        ] {
            let h = format!("{NAME}={v}");
            assert_eq!(join(&h, NAME), Err(ChunkError::BadCount), "{v}");
        }
    }

    #[test]
    fn join_ignores_stale_extra_chunks() {
        let h = format!("{NAME}=2.ab; {NAME}.1=cd; {NAME}.2=stale");
        assert_eq!(join(&h, NAME).unwrap().as_deref(), Some("abcd"));
    }

    #[test]
    fn join_borrows_a_single_chunk() {
        let h = format!("a=1; {NAME}=1.abc; b=2");
        assert!(matches!(
            join_borrowed(&h, NAME),
            Ok(Some(Cow::Borrowed("abc")))
        ));
        let h = format!("{NAME}=2.ab; {NAME}.1=cd");
        assert!(matches!(join_borrowed(&h, NAME), Ok(Some(Cow::Owned(s))) if s == "abcd"));
        assert_eq!(join_borrowed("a=1", NAME), Ok(None));
    }

    #[test]
    fn sealed_map_gives_keys_that_differ_in_a_few_start_bytes_buckets_of_their_own() {
        let mut map = SealedMap::default();
        for i in 0..1000u32 {
            map.insert(format!("{i:08}{}{:08}", "m".repeat(100), i * 7), i);
            map.insert(format!("s{i}"), i);
        }
        assert_eq!(map.len(), 2000);
        let mut hashes: Vec<u64> = map.entries.iter().map(|e| e.0).collect();
        hashes.dedup();
        assert_eq!(hashes.len(), 2000, "two keys share a hash");
    }

    #[test]
    fn sealed_map_compares_whole_keys() {
        let edge = |fill: &str| format!("{}{}{}", "n".repeat(40), fill.repeat(100), "t".repeat(40));
        let (a, b) = (edge("a"), edge("b"));
        let mut map = SealedMap::default();
        // Same start: same bucket, still two keys.
        map.insert(a.clone(), 1);
        map.insert(b.clone(), 2);
        map.insert("short".into(), 3);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&a), Some(&1));
        assert_eq!(map.get(&b), Some(&2));
        assert_eq!(map.get("short"), Some(&3));
        assert_eq!(map.get("shorT"), None);
        assert_eq!(map.get(&format!("{a}x")), None);
        let mut c = a.clone();
        c.replace_range(70..71, "z");
        assert_eq!(map.get(&c), None, "one byte in the middle differs");
        map.insert(a.clone(), 4);
        assert_eq!((map.get(&a), map.len()), (Some(&4), 3));
        map.remove(&a);
        assert_eq!((map.get(&a), map.get(&b), map.len()), (None, Some(&2), 2));
        map.retain(|v| *v != 2);
        assert_eq!((map.get(&b), map.len()), (None, 1));
        map.clear();
        assert!(map.is_empty());
    }

    /// Mutation testing of the thirtieth review's change: the entries stay sorted by hash through
    /// removals, `retain` and the insertions after them, so that the binary search finds every key still
    /// stored (a `swap_remove`, as the buckets of before used, moved the last entry into the gap: keys
    /// were then missed, a cached session lost, and a key inserted again stored twice).
    #[test]
    fn sealed_map_finds_every_key_left_after_removals_and_retain() {
        let key = |i: u32| match i % 3 {
            0 => format!("s{i}"),
            1 => format!("{i:08}{}", "k".repeat(60)),
            // Long keys of one start: one hash, side by side.
            _ => format!("{}{i:08}", "h".repeat(40)),
        };
        let mut map = SealedMap::default();
        for i in 0..300 {
            map.insert(key(i), i);
        }
        for i in (0..300).step_by(4) {
            map.remove(&key(i));
        }
        // A key not stored: nothing removed.
        map.remove("missing");
        map.remove(&format!("{}{}", "h".repeat(40), "x".repeat(8)));
        map.retain(|v| !v.is_multiple_of(5));
        for i in 300..400 {
            map.insert(key(i), i);
        }
        let kept = |i: u32| i >= 300 || (!i.is_multiple_of(4) && !i.is_multiple_of(5));
        // Again under the keys stored: replaced, not stored twice.
        for i in (0..400).filter(|i| kept(*i)) {
            map.insert(key(i), i + 1000);
        }
        for i in 0..400 {
            let v = i + 1000;
            assert_eq!(map.get(&key(i)), kept(i).then_some(&v), "{i}");
        }
        assert_eq!(map.len(), (0..400).filter(|i| kept(*i)).count());
        assert!(
            map.entries.windows(2).all(|w| w[0].0 <= w[1].0),
            "sorted by hash"
        );
    }

    /// Mutation testing of the thirtieth review's change: [`SealedMap::entry_by_start`] at its edges. A
    /// start of exactly [`EDGE`] bytes finds the longer key it begins, a shorter one nothing; a key of
    /// exactly `EDGE` bytes is never one (not longer than the start), nor a long key of another start,
    /// even should their hashes be the head's (collisions made by hand: the seed is random).
    #[test]
    fn sealed_map_entry_by_start_at_its_edges() {
        let long = format!("{}{}", "a".repeat(EDGE), "z".repeat(50));
        let exact = "a".repeat(EDGE);
        let mut map = SealedMap::default();
        map.insert(long.clone(), 1);
        map.insert(exact.clone(), 2);
        assert_eq!((map.get(&long), map.get(&exact)), (Some(&1), Some(&2)));
        assert_eq!(map.len(), 2);
        assert_eq!(map.entry_by_start(long.as_bytes()), Some((&*long, &1)));
        assert_eq!(
            map.entry_by_start(&long.as_bytes()[..EDGE]),
            Some((&*long, &1))
        );
        assert_eq!(map.entry_by_start(&long.as_bytes()[..EDGE - 1]), None);
        assert_eq!(map.entry_by_start(exact.as_bytes()), Some((&*long, &1)));
        let head = map.hash(&long);
        // The key of exactly `EDGE` bytes alone, under the head's hash.
        map.remove(&long);
        assert_eq!(map.entry_by_start(long.as_bytes()), None);
        map.entries[0].0 = head;
        assert_eq!(map.entry_by_start(long.as_bytes()), None);
        // A long key of another start, under the head's hash.
        map.clear();
        let other = format!("{}{}", "b".repeat(EDGE), "z".repeat(50));
        map.insert(other, 3);
        map.entries[0].0 = head;
        assert_eq!(map.entry_by_start(long.as_bytes()), None);
    }

    #[test]
    fn same_checks_every_byte() {
        let a: Vec<u8> = (0..130u8).collect();
        for i in 0..a.len() {
            let mut b = a.clone();
            b[i] ^= 1;
            assert!(!same(&a, &b), "byte {i}");
        }
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &a[..129]));
        assert!(same(b"", b""));
    }

    #[test]
    fn chunk_names_lists_each_session_cookie_once() {
        let h = format!(
            "{NAME}=2.a; x_{NAME}=1; {NAME}.1=b; {NAME}.1=c; {NAME}.16=d; {NAME}.17=e; {NAME}.01=f; {NAME}x=g"
        );
        assert_eq!(
            chunk_names(NAME, &h),
            [NAME.to_owned(), format!("{NAME}.1"), format!("{NAME}.16")]
        );
    }

    #[test]
    fn scan_agrees_with_join_and_strip() {
        let ours = |c: &str| is_session_cookie(NAME, c) || c.starts_with("oidc_session_login_");
        let headers = [
            "",
            ";",
            "a=1",
            "oidc_session=1.abc",
            "oidc_session=1.abc; a=1",
            "a=1; oidc_session=\"1.abc\" ;b=2",
            "oidc_session=2.ab; oidc_session.1=cd; x=y",
            "oidc_session.1=cd; oidc_session=2.ab",
            "oidc_session=3.ab; oidc_session.1=cd",
            "oidc_session=2.ab; oidc_session.1=cd; oidc_session.1=zz; oidc_session=1.no",
            "oidc_session=x.ab",
            "oidc_session=",
            "oidc_session_login_abc=1; k",
            "k; =v; oidc_session.16=q; oidc_session=17.a",
            "oidc_session=2.ab; oidc_session.01=cd",
            " oidc_session = 1.abc ; a = 1 ",
            "oidc_session=1.a; oidc_session=1.b",
            "oidc_session=2.ab; oidc_session.1=cd; oidc_session.16=x; oidc_session.16=y",
        ];
        let mut mores = 0;
        for h in headers {
            let scan = scan(h, NAME, ours);
            assert_eq!(scan.session, join_borrowed(h, NAME), "{h:?}");
            assert_eq!(scan.stripped, cookies::strip(h, NAME, ours), "{h:?}");
            assert!(!scan_guided(h, NAME, &ours, None).1);
            // The session's names, as `chunk_names` finds them.
            let mut named = names_of(NAME, scan.names);
            let mut listed = chunk_names(NAME, h);
            named.sort();
            listed.sort();
            assert_eq!(named, listed, "{h:?}");
            // Without more, no session comes after the first.
            if !scan.more {
                for skip in 1..=3 {
                    assert_eq!(join_shadowed(h, NAME, skip, false), Ok(None), "{h:?}");
                }
                assert_eq!(join_shadowed(h, NAME, 0, true), Ok(None), "{h:?}");
            }
            mores += usize::from(scan.more);
        }
        assert_eq!(mores, 3);
    }

    #[test]
    fn parse_index_reads_canonical_small_numbers() {
        // What it reads, put plainly: digits only, no sign, no leading zero, at most 16.
        let plainly = |s: &str| {
            let canonical = !s.is_empty()
                && s.len() <= 2
                && s.bytes().all(|b| b.is_ascii_digit())
                && !(s.len() > 1 && s.starts_with('0'));
            canonical
                .then(|| s.parse().ok())
                .flatten()
                .filter(|&n| n <= MAX_CHUNKS)
        };
        let mut read = 0;
        let mut check = |bytes: &[u8]| {
            if let Ok(s) = core::str::from_utf8(bytes) {
                assert_eq!(parse_index(s), plainly(s), "{s:?}");
                read += usize::from(parse_index(s).is_some());
            }
        };
        for d in 0..=255u8 {
            check(&[d]);
            for e in 0..=255u8 {
                check(&[d, e]);
            }
        }
        assert_eq!(read, 17, "0 to 16");
        assert_eq!(parse_index("123"), None);
        assert_eq!(parse_index(""), None);
    }

    /// A sealed-looking value (base64url, like every cached key) of `len` bytes, distinct by `seed`.
    fn value_of(len: usize, seed: u8) -> String {
        let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|i| abc[(i * 7 + i / 13 + usize::from(seed) * 31) % abc.len()] as char)
            .collect()
    }

    /// The scan guided by `map` (and whether a length was taken from it), and what it must agree with
    /// whenever its session is one `map` holds. Checks that `scan_cached` gives the plain scan and the
    /// value `map` holds for its session, whatever the header.
    fn guided<'a>(h: &'a str, map: &SealedMap<()>) -> ((CookieScan<'a>, bool), CookieScan<'a>) {
        let ours = |c: &str| is_session_cookie(NAME, c);
        let by_start = |start: &[u8]| map.entry_by_start(start).map(|(k, _)| k.len());
        let guided = scan_guided(h, NAME, &ours, Some(&by_start));
        let plain = scan(h, NAME, ours);
        let value = match &plain.session {
            Ok(Some(s)) => map.get(s),
            _ => None,
        };
        assert_eq!(
            scan_cached(h, NAME, ours, map),
            (scan(h, NAME, ours), value)
        );
        (guided, plain)
    }

    #[test]
    fn a_cached_session_is_scanned_without_searching_its_cookies() {
        for len in [
            EDGE + 1,
            1200,
            CHUNK_PART - 1,
            CHUNK_PART,
            CHUNK_PART + 1,
            2 * CHUNK_PART + 5,
            3 * CHUNK_PART,
        ] {
            let sealed = value_of(len, 1);
            let mut map = SealedMap::default();
            map.insert(sealed.clone(), ());
            map.insert(value_of(len, 2), ());
            let cookies: Vec<String> = split(NAME, &sealed)
                .unwrap()
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let mut reversed = cookies.clone();
            reversed.reverse();
            let headers = [
                cookies.join("; "),
                format!("a=1; {}; b=2", cookies.join(";")),
                format!("{};x=y", cookies.join(";  ")),
                // Chunks before the first cookie are searched for as usual.
                reversed.join("; "),
            ];
            for h in &headers {
                let ((guided, was_guided), plain) = guided(h, &map);
                assert!(was_guided, "{len} {h:.60}");
                assert_eq!(guided.session, Ok(Some(Cow::Borrowed(sealed.as_str()))));
                assert_eq!(guided, plain, "{len} {h:.60}");
            }
        }
    }

    #[test]
    fn a_guided_scan_is_right_whenever_its_session_is_cached() {
        // Headers that start like a cached session but are not it: cut short, quoted, padded, with the
        // cached value's length landing on another cookie's `;`, and chunks out of place or repeated.
        // Whatever the guided scan makes of them, it agrees with the plain one when its session is a
        // cached value, and otherwise either was not guided (and is the plain scan) or says it was (so
        // the caller scans again).
        let long = value_of(2 * CHUNK_PART + 100, 3);
        let short = value_of(300, 4);
        let mut map = SealedMap::default();
        map.insert(long.clone(), ());
        map.insert(short.clone(), ());
        let (l0, l1, l2) = (
            &long[..CHUNK_PART],
            &long[CHUNK_PART..2 * CHUNK_PART],
            &long[2 * CHUNK_PART..],
        );
        let headers = [
            format!("{NAME}=1.{}", &short[..299]),
            format!("{NAME}=1.{}; a=1", &short[..100]),
            format!("{NAME}=1.{}; a={}", &short[..100], &short[..195]),
            format!("{NAME}=1.{};{}", &short[..150], &short[151..]),
            format!("{NAME}=1.{short}x"),
            format!("{NAME}=1.{short} ; a=1"),
            format!("{NAME}=\"1.{}\"; a=1", &short[..298]),
            format!("{NAME}=1.{short}; {NAME}=1.{short}; a=1"),
            format!("{NAME}=2.{short}; {NAME}.1=x"),
            format!("{NAME}=3.{l0}; {NAME}.1={l1}; {NAME}.2={l2}"),
            format!("{NAME}=3.{l0}; {NAME}.1={}; {NAME}.2={l2}", &l1[..10]),
            format!(
                "{NAME}=3.{l0}; {NAME}.1={}; b={}; {NAME}.2={l2}",
                &l1[..10],
                &l1[..CHUNK_PART - 15]
            ),
            format!("{NAME}=3.{l0}; {NAME}.2={l2}; {NAME}.1={l1}; {NAME}.1={l2}"),
            format!("{NAME}=3.{l0}; {NAME}.0={l1}; {NAME}.1={l1}; {NAME}.2={l2}"),
            format!("{NAME}=3.{l0}; {NAME}.1={l1}; {NAME}.2={l2}; {NAME}.3={l2}"),
            format!("{NAME}=2.{l0}; {NAME}.1={l1}"),
            format!(
                "{NAME}=3.{}; {NAME}.1={l1}; {NAME}.2={l2}",
                &l0[..CHUNK_PART - 1]
            ),
            format!("{NAME}=3.{l0}; {NAME}.1={l1}{l2}"),
            format!(
                "{NAME}=3.{l0}; {NAME}.1=\"{}\"; {NAME}.2={l2}",
                &l1[..CHUNK_PART - 2]
            ),
            format!("{NAME}=3.{l0}; {NAME}.1= {}; {NAME}.2={l2}", &l1[1..]),
        ];
        let (mut cached, mut misled) = (0, 0);
        for h in &headers {
            let ((guided, was_guided), plain) = guided(h, &map);
            let hit = matches!(&guided.session, Ok(Some(s)) if map.get(s).is_some());
            if hit {
                cached += 1;
                assert_eq!(guided, plain, "{h:.80}");
            } else if was_guided {
                misled += 1;
            } else {
                assert_eq!(guided, plain, "{h:.80}");
            }
        }
        // The long session whole; with a chunk repeated, a `.0` and a `.3` beside it; the short one with
        // a space before its `;`, and repeated.
        assert_eq!(cached, 6);
        assert_eq!(misled, 11);
    }

    #[test]
    fn is_session_cookie_matches_exact_names() {
        assert!(is_session_cookie(NAME, "oidc_session"));
        assert!(is_session_cookie(NAME, "oidc_session.1"));
        assert!(is_session_cookie(NAME, "oidc_session.16"));
        for other in [
            "x_oidc_session",
            "oidc_session_x",
            "oidc_session.",
            "oidc_session.0",
            "oidc_session.17",
            "oidc_session.01",
            "oidc_session.1x",
            "oidc_session.-1",
            "oidc_sessio",
        ] {
            assert!(!is_session_cookie(NAME, other), "{other}");
        }
    }

    fn login_state() -> LoginState {
        LoginState {
            state: Secret::new("st"),
            nonce: Secret::new("no"),
            verifier: Secret::new("ve"),
            rd: "/app?x=1".into(),
            expires_at: 1_700_000_600,
        }
    }

    /// Valid encodings of both payloads, covering absent and present options, empty and non-ASCII
    /// text, and integers from 0 to `u64::MAX`.
    fn payloads() -> Vec<Vec<u8>> {
        let full = Session {
            id_token: Secret::new("h.p.s"),
            access_token: Some(Secret::new("")),
            refresh_token: Some(Secret::new("rt-é")),
            token_expires_at: 0,
            expires_at: u64::MAX,
            sub: String::new(),
            login_sid: None,
            login_id: None,
            renew_at_expiry: false,
        };
        let bare = Session {
            access_token: None,
            ..full.clone()
        };
        let with_id = |login_id, login_sid: Option<&str>| Session {
            login_id: Some(login_id),
            login_sid: login_sid.map(str::to_owned),
            ..session()
        };
        vec![
            session().encode(),
            full.encode(),
            bare.encode(),
            login_state().encode(),
            with_id(0, None).encode(),
            with_id(u64::MAX, Some("sid-é")).encode(),
            Session {
                renew_at_expiry: true,
                ..with_id(7, Some("sid"))
            }
            .encode(),
        ]
    }

    /// Decodes `bytes` as either payload; what decodes re-encodes to the same bytes.
    fn decode_any(bytes: &[u8]) -> bool {
        let session = Session::decode(bytes).map(|s| s.encode());
        let login = LoginState::decode(bytes).map(|s| s.encode());
        for again in [&session, &login].into_iter().flatten() {
            assert_eq!(again, bytes, "one encoding per value");
        }
        session.is_ok() || login.is_ok()
    }

    #[test]
    fn session_round_trips_and_stays_small() {
        let s = session();
        let bytes = s.encode();
        assert_eq!(Session::decode(&bytes).unwrap(), s);
        // Version, the ID token (length 46), the access token (present, length 10), no refresh
        // token, two 5-byte times, the sub (length 5).
        let mut expected = vec![PAYLOAD_VERSION, 46];
        expected.extend_from_slice(s.id_token.expose().as_bytes());
        expected.extend_from_slice(b"\x01\x0aaccess-123\x00");
        expected.extend_from_slice(&[0xac, 0xe4, 0xcf, 0xaa, 0x06, 0x80, 0xc3, 0xd1, 0xaa, 0x06]);
        expected.extend_from_slice(b"\x05alice");
        assert_eq!(bytes, expected);
        // 118 bytes in JSON (format 1, testdata/golden/session-v1.txt).
        assert_eq!(bytes.len(), 77);
        for bytes in payloads().iter().take(3) {
            let s = Session::decode(bytes).unwrap();
            assert_eq!(&s.encode(), bytes);
        }
        // A UTF-8 `sub` survives.
        let s = Session {
            sub: "zoë".into(),
            ..session()
        };
        assert_eq!(Session::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn login_state_round_trips() {
        let s = login_state();
        let bytes = s.encode();
        assert_eq!(
            bytes,
            b"\x02\x02st\x02no\x02ve\x08/app?x=1\xd8\xe6\xcf\xaa\x06"
        );
        assert_eq!(LoginState::decode(&bytes).unwrap(), s);
        assert_eq!(LoginState::decode(b"[]"), Err(OpenError::Malformed));
        // Each payload is refused as the other.
        assert_eq!(Session::decode(&bytes), Err(OpenError::Malformed));
        assert_eq!(
            LoginState::decode(&session().encode()),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn json_payloads_of_format_1_are_malformed() {
        let golden = include_str!("../../testdata/golden/session-v1.txt");
        let plaintext = golden_field(golden, "plaintext");
        assert!(plaintext.starts_with('{'));
        assert_eq!(
            Session::decode(plaintext.as_bytes()),
            Err(OpenError::Malformed)
        );
        for old in [&b"{}"[..], b"[]", b"\xff", b"", b"\x01"] {
            assert_eq!(Session::decode(old), Err(OpenError::Malformed), "{old:?}");
            assert_eq!(
                LoginState::decode(old),
                Err(OpenError::Malformed),
                "{old:?}"
            );
        }
    }

    /// The login's `sid` is written after the other fields only when there is one: a session without it
    /// is the bytes it was before the field existed (the golden cookies stay valid, and an older build
    /// reads such sessions).
    #[test]
    fn a_login_sid_is_written_only_when_there_is_one() {
        let mut s = session();
        let without = s.encode();
        s.login_sid = Some("sid-1".into());
        let with = s.encode();
        assert_eq!(Session::decode(&with), Ok(s.clone()));
        assert_eq!(&with[..without.len()], &without[..]);
        assert_eq!(&with[without.len()..], b"\x05sid-1");
        s.login_sid = Some(String::new());
        assert_eq!(s.encode(), without, "an empty one is none");
        assert_eq!(Session::decode(&without).map(|s| s.login_sid), Ok(None));
    }

    /// A login id is written as the last string, before the `sid`, with a `\0` first: the bytes a build
    /// of before login ids writes for a session whose `sid` is that string, which it then opens.
    /// A login id says when its login was made, vouched for by 16 bits, so that an id of the builds
    /// before (random) is not taken for one; the time survives the cookie.
    #[test]
    fn a_login_id_carries_when_the_login_was_made() {
        let made = 1_800_000_123;
        let mut s = session();
        s.login_id = Some(Session::login_id_made_at(made, 0xdead_beef_cafe_f00d));
        let back = Session::decode(&s.encode()).unwrap();
        assert_eq!(back.made_at(), Some(made));
        // Two logins of the same second are told apart by the random part.
        assert_ne!(
            Session::login_id_made_at(made, 1),
            Session::login_id_made_at(made, 2)
        );
        // Random ids (the builds before) almost never vouch: none of 10,000 here.
        let vouched = (0u64..10_000)
            .map(|i| crate::idhash::fnv(&[&i.to_le_bytes()]))
            .filter(|&id| {
                let mut s = session();
                s.login_id = Some(id);
                s.made_at().is_some()
            })
            .count();
        assert_eq!(vouched, 0);
        s.login_id = None;
        assert_eq!(s.made_at(), None);
        // Found by mutation testing: all 16 low bits are the random part's, and the 16 that vouch are
        // for this time only: the same id under another time says nothing.
        let id = Session::login_id_made_at(made, 0xdead_beef_cafe_f00d);
        assert_eq!(id & 0xffff, 0xf00d);
        for other in [made + 1, made - 1, made + 3600] {
            s.login_id = Some((id & 0xffff_ffff) | (other << 32));
            assert_eq!(s.made_at(), None, "{other}");
        }
        // Found by mutation testing (a tag of 12 bits in place of 16 passed all the above): the id is
        // read by other builds too (the replicas of an upgrade, a rollback), so it is pinned here as this
        // build writes it.
        assert_eq!(id, 0x6b49_d27b_be76_f00d);
    }

    #[test]
    fn a_login_id_is_a_last_string_that_the_builds_before_read_as_a_sid() {
        for sid in [None, Some("sid-1")] {
            let s = Session {
                login_id: Some(0x0102_0304_0506_0708),
                login_sid: sid.map(str::to_owned),
                ..session()
            };
            let bytes = s.encode();
            assert_eq!(Session::decode(&bytes), Ok(s.clone()));
            let last = ["\0", "CAcGBQQDAgE", sid.unwrap_or("")].concat();
            let before = Session {
                login_id: None,
                login_sid: Some(last),
                ..session()
            };
            assert_eq!(before.encode(), bytes, "{sid:?}");
            assert_eq!(&bytes[..session().encode().len()], &session().encode()[..]);
            // The mark that the IdP's last renewal did not extend the token: a byte after the id, which
            // builds before read as the start of the sid (the login id theirs as well).
            let marked = Session {
                renew_at_expiry: true,
                ..s.clone()
            };
            let bytes = marked.encode();
            assert_eq!(Session::decode(&bytes), Ok(marked));
            let last = ["\0", "CAcGBQQDAgE", "\x01", sid.unwrap_or("")].concat();
            let before = Session {
                login_id: None,
                login_sid: Some(last),
                ..session()
            };
            assert_eq!(before.encode(), bytes, "{sid:?}");
        }
        // Without a login id the mark is not kept (sessions of builds before login ids renew as before).
        let unmarked = Session {
            renew_at_expiry: true,
            ..session()
        };
        assert_eq!(unmarked.encode(), session().encode());
        // Malformed: an id cut short, or not base64url.
        for last in ["\0CAcGBQQDAg", "\0CAcGBQQDA!E", "\0"] {
            let odd = Session {
                login_sid: Some(last.into()),
                ..session()
            };
            assert_eq!(
                Session::decode(&odd.encode()),
                Err(OpenError::Malformed),
                "{last:?}"
            );
        }
        // Without one: a session that can renew is named by its user and its end, which its renewals
        // keep; one that cannot, by nothing but its token.
        let old = Session {
            refresh_token: Some(Secret::new("rt")),
            ..session()
        };
        let renewed = Session {
            id_token: Secret::new("another.token.sig"),
            token_expires_at: old.token_expires_at + 3600,
            ..old.clone()
        };
        assert!(old.login_id().is_some());
        assert_eq!(old.login_id(), renewed.login_id());
        let later = Session {
            expires_at: old.expires_at + 1,
            ..old.clone()
        };
        assert_ne!(old.login_id(), later.login_id());
        assert_eq!(session().login_id(), None);
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_malformed() {
        for bytes in payloads() {
            assert!(decode_any(&bytes));
            // A session's last string is optional: cut off whole, what is left is a session without it.
            let without_last = Session::decode(&bytes)
                .ok()
                .filter(|s| s.login_id.is_some() || s.login_sid.is_some())
                .map(|s| {
                    let bare = Session {
                        login_id: None,
                        login_sid: None,
                        ..s
                    };
                    bare.encode().len()
                });
            for len in (0..bytes.len()).filter(|&len| Some(len) != without_last) {
                assert!(!decode_any(&bytes[..len]), "{bytes:?} cut to {len}");
            }
            for extra in [0u8, 1, 0x80, 0xff] {
                let mut longer = bytes.clone();
                longer.push(extra);
                assert!(!decode_any(&longer), "{bytes:?} and {extra}");
            }
        }
    }

    #[test]
    fn other_versions_are_malformed() {
        for bytes in payloads() {
            for v in (0..=u8::MAX).filter(|&v| v != PAYLOAD_VERSION) {
                let mut other = bytes.clone();
                other[0] = v;
                assert!(!decode_any(&other), "version {v}");
            }
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_malformed() {
        let s = Session {
            sub: "ab".into(),
            ..session()
        };
        let mut bytes = s.encode();
        let end = bytes.len();
        bytes[end - 2..].copy_from_slice(&[0xc3, 0x28]);
        assert_eq!(Session::decode(&bytes), Err(OpenError::Malformed));
        let mut bytes = login_state().encode();
        bytes[2] = 0xff;
        assert_eq!(LoginState::decode(&bytes), Err(OpenError::Malformed));
        // An option tag other than 0 or 1.
        let mut bytes = session().encode();
        let tag = 2 + 46;
        assert_eq!(bytes[tag], 1);
        bytes[tag] = 2;
        assert_eq!(Session::decode(&bytes), Err(OpenError::Malformed));
    }

    #[test]
    fn random_and_mutated_payloads_never_panic() {
        let valid = payloads();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                // A valid payload with a few bytes changed, inserted or removed.
                let mut b = valid[round / 2 % valid.len()].clone();
                for _ in 0..1 + xorshift(&mut seed) % 3 {
                    let at = (xorshift(&mut seed) % (b.len() as u64 + 1)) as usize;
                    let byte = xorshift(&mut seed) as u8;
                    match xorshift(&mut seed) % 3 {
                        0 if at < b.len() => b[at] = byte,
                        1 if at < b.len() => {
                            b.remove(at);
                        }
                        _ => b.insert(at, byte),
                    }
                }
                b
            } else {
                let len = (xorshift(&mut seed) % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
                if let Some(first) = b.first_mut() {
                    *first = PAYLOAD_VERSION;
                }
                b
            };
            let _ = decode_any(&bytes);
        }
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let text = format!("{:?}", session());
        assert!(
            !text.contains("access-123") && !text.contains("eyJ"),
            "{text}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let k = keys(&[&[7; 32]]);
        let valid = k.seal(NAME, b"payload", [1; 24]);
        let alphabet: Vec<char> = "AZaz09-_.=;/+ \"é".chars().collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..3000 {
            let len = (xorshift(&mut seed) % 120) as usize;
            let mut s: String = (0..len)
                .map(|_| alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize])
                .collect();
            if round % 3 == 0 {
                s.insert_str(0, &valid);
            }
            let _ = k.open(NAME, &s);
            let _ = join(&s, NAME);
            let _ = join(&format!("{NAME}={s}"), NAME);
            let _ = chunk_names(NAME, &s);
            let _ = split(NAME, &s);
            let _ = Session::decode(s.as_bytes());
        }
    }

    #[test]
    fn split_never_cuts_inside_a_character() {
        let s = "é".repeat(CHUNK_PART);
        let parts = split(NAME, &s);
        // Not a sealed value, but it must not panic; 2-byte chars need two parts per CHUNK_PART bytes.
        assert_eq!(parts.map(|p| p.len()), Ok(3));
    }

    /// The sealed format written down in testdata: if this fails, old cookies stopped opening. Bump
    /// VERSION and add a new golden file instead of editing this one. (Its JSON payload, format 1, is
    /// no longer a session: see `json_payloads_of_format_1_are_malformed`.)
    #[test]
    fn golden_session_v1_opens() {
        let golden = include_str!("../../testdata/golden/session-v1.txt");
        let field = |f: &str| golden_field(golden, f);
        let key = from_hex(&field("key_hex"));
        let nonce: [u8; 24] = from_hex(&field("nonce_hex")).try_into().unwrap();
        let (name, sealed, plaintext) = (field("cookie_name"), field("sealed"), field("plaintext"));

        let k = Keys::new(&[key]).unwrap();
        assert_eq!(k.open(&name, &sealed).unwrap(), plaintext.as_bytes());
        assert_eq!(k.seal(&name, plaintext.as_bytes(), nonce), sealed);
    }

    /// The payload format written down in testdata: if this fails, sessions stopped opening. Bump
    /// PAYLOAD_VERSION and add a new golden file instead of editing this one.
    #[test]
    fn golden_session_v2_opens() {
        let golden = include_str!("../../testdata/golden/session-v2.txt");
        let field = |f: &str| golden_field(golden, f);
        let key = from_hex(&field("key_hex"));
        let nonce: [u8; 24] = from_hex(&field("nonce_hex")).try_into().unwrap();
        let (name, sealed) = (field("cookie_name"), field("sealed"));
        let plaintext = from_hex(&field("plaintext_hex"));

        let k = Keys::new(&[key]).unwrap();
        assert_eq!(k.open(&name, &sealed).unwrap(), plaintext);
        assert_eq!(k.seal(&name, &plaintext, nonce), sealed);
        let s = Session::decode(&plaintext).unwrap();
        assert_eq!(s, session());
        assert_eq!(s.encode(), plaintext);
    }

    /// The string value of `"name": "..."` in a golden file (escapes: `\"` and `\\` only).
    fn golden_field(text: &str, name: &str) -> String {
        let start = text.find(&format!("\"{name}\": \"")).unwrap() + name.len() + 5;
        let mut out = String::new();
        let mut chars = text[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return out,
                '\\' => out.push(chars.next().unwrap()),
                c => out.push(c),
            }
        }
        panic!("unterminated {name}");
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn a_sealed_value_of_max_sealed_len_opens_and_a_longer_one_does_not() {
        let k = keys(&[&[7; 32]]);
        // 1 + 24 + n + 16 bytes, base64url without padding: 4/3 of it.
        let fits = MAX_SEALED_LEN / 4 * 3 - HEADER_LEN - TAG_LEN;
        let at_limit = k.seal(NAME, &vec![b'x'; fits], [1; 24]);
        assert_eq!(at_limit.len(), MAX_SEALED_LEN);
        assert_eq!(k.open(NAME, &at_limit).unwrap().len(), fits);
        let over = k.seal(NAME, &vec![b'x'; fits + 1], [1; 24]);
        assert!(over.len() > MAX_SEALED_LEN);
        assert_eq!(k.open(NAME, &over), Err(OpenError::Malformed));
    }

    #[test]
    fn keys_open_each_other_only_when_each_opens_what_the_other_seals() {
        let (a, b) = (&[1; 32], &[2; 32]);
        assert!(keys(&[a]).open_each_other(&keys(&[a, b]), NAME));
        assert!(keys(&[a, b]).open_each_other(&keys(&[b, a]), NAME));
        // `[b, a]` seals with `b`, which `[a]` cannot open: one way only.
        assert!(!keys(&[a]).open_each_other(&keys(&[b, a]), NAME));
        assert!(!keys(&[b, a]).open_each_other(&keys(&[a]), NAME));
        assert!(!keys(&[a]).open_each_other(&keys(&[b]), NAME));
    }

    #[test]
    fn a_second_session_cookie_is_not_taken_for_the_first_even_when_cached() {
        let (first, second) = (value_of(300, 5), value_of(300, 6));
        for cached in [vec![second.clone()], vec![first.clone(), second.clone()]] {
            let mut map = SealedMap::default();
            for v in cached {
                map.insert(v, ());
            }
            let h = format!("{NAME}=1.{first}; {NAME}=1.{second}");
            let (_, plain) = guided(&h, &map);
            assert_eq!(plain.session, Ok(Some(Cow::Borrowed(first.as_str()))));
        }
    }

    #[test]
    fn join_shadowed_last_is_none_for_a_session_of_one_cookie() {
        let h = format!("{NAME}=1.abc; {NAME}.1=x; {NAME}.1=y");
        assert_eq!(join_shadowed(&h, NAME, 0, true), Ok(None));
        assert_eq!(join_shadowed(&h, NAME, 0, false), Ok(Some("abc".into())));
    }

    /// Found by mutation testing: `names_of` names each bit as `split` names the cookies, `name.10` to
    /// `name.16` included, in order, and nothing for bits not set.
    #[test]
    fn names_of_names_each_bit_as_the_chunks_are_named() {
        let want: Vec<String> = core::iter::once(NAME.to_string())
            .chain((1..=MAX_CHUNKS).map(|k| format!("{NAME}.{k}")))
            .collect();
        let all = (0..=MAX_CHUNKS).fold(0u32, |m, k| m | 1 << k);
        assert_eq!(names_of(NAME, all), want);
        assert!(names_of(NAME, 0).is_empty());
        for (k, name) in want.iter().enumerate() {
            assert_eq!(names_of(NAME, 1 << k), core::slice::from_ref(name), "{k}");
            assert_eq!(chunk_index(NAME, name), (k > 0).then_some(k), "{name}");
        }
    }
}
