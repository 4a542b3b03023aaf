//! Cookie headers by exact name: reading a request's `Cookie`, stripping ours, writing `Set-Cookie`.

use alloc::borrow::ToOwned;
use alloc::string::String;

use core::fmt::Write as _;

/// The value of the first cookie named exactly `name` (case-sensitive) in a `Cookie` request header.
///
/// Surrounding double quotes are removed from the value (RFC 6265 allows a quoted cookie-value).
/// Pairs without `=` are skipped. Runs on every request, so it borrows from `header` and never allocates.
pub fn get<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    iter(header).find_map(|(n, v)| (n == name).then_some(v))
}

/// Every `(name, value)` pair of a `Cookie` request header, in order, with values unquoted as in [`get`].
///
/// Segments without `=` or with an empty name are skipped: they cannot be addressed by name.
pub fn iter(header: &str) -> impl Iterator<Item = (&str, &str)> {
    segments(header).filter_map(parse_pair)
}

/// `header.split(';')`, 32 bytes per step: a session cookie is a kilobyte or more, and in Wasm the core's
/// `memchr` reads four bytes per step.
pub fn segments(header: &str) -> Segments<'_> {
    Segments {
        header,
        start: Some(0),
    }
}

/// The iterator [`segments`] returns.
pub struct Segments<'a> {
    header: &'a str,
    /// Where the next segment starts; `None` after the last one.
    start: Option<usize>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.start?;
        let end = next_semicolon(self.header.as_bytes(), start);
        self.start = (end < self.header.len()).then_some(end + 1);
        // `;` is ASCII, so both ends are character boundaries.
        self.header.get(start..end)
    }
}

/// The index of the first `;` in `b` at or after `from`, else `b.len()`: 32 bytes per step, then eight,
/// then one.
fn next_semicolon(b: &[u8], from: usize) -> usize {
    use crate::headers::le64;
    let Some(rest) = b.get(from..) else {
        return b.len();
    };
    let (blocks, rest32) = rest.as_chunks::<32>();
    let mut at = match first_semicolon_in_blocks(blocks) {
        Ok(i) => return from + i,
        Err(searched) => from + searched,
    };
    let (words, tail) = rest32.as_chunks::<8>();
    for w in words {
        let zero = semicolons(le64(w, 0));
        if zero != 0 {
            return at + (zero.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    for &c in tail {
        if c == b';' {
            return at;
        }
        at += 1;
    }
    at
}

/// The offset of the first `;` in `blocks`, or `Err` of their length. In Wasm with SIMD: two 16-byte
/// compares per block.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
fn first_semicolon_in_blocks(blocks: &[[u8; 32]]) -> Result<usize, usize> {
    use core::arch::wasm32::*;
    let semicolon = u8x16_splat(b';');
    let mut at = 0;
    for c in blocks {
        let (x, y) = crate::headers::load_block(c);
        let (mx, my) = (u8x16_eq(x, semicolon), u8x16_eq(y, semicolon));
        if v128_any_true(v128_or(mx, my)) {
            let m = u32::from(u8x16_bitmask(mx)) | u32::from(u8x16_bitmask(my)) << 16;
            return Ok(at + m.trailing_zeros() as usize);
        }
        at += 32;
    }
    Err(at)
}

/// The same for a native build (the tests and fuzzing), which never serves a request: the plain search.
#[cfg(not(target_arch = "wasm32"))]
fn first_semicolon_in_blocks(blocks: &[[u8; 32]]) -> Result<usize, usize> {
    let bytes = blocks.as_flattened();
    bytes.iter().position(|&c| c == b';').ok_or(bytes.len())
}

/// The high bit of each byte of `word` that is `;` (and maybe of bytes above the first such byte: the
/// lowest flagged byte is exact).
#[inline(always)]
fn semicolons(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * b';' as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// `header` without the cookies for which `is_ours(name)` holds, or `None` when no cookie is left (so the
/// caller removes the header rather than sending an empty one). Every name `is_ours` holds for starts with
/// `prefix`; no other cookie is parsed. Segments without `=` are not ours.
///
/// What is kept is the header as sent, byte for byte, less each segment of ours with the `;` and
/// whitespace after it (and a separator that would be left at either end). When nothing is ours the header
/// is returned unchanged.
pub fn strip(header: &str, prefix: &str, is_ours: impl Fn(&str) -> bool) -> Option<String> {
    strip_named(header, prefix, &is_ours).into_header(header)
}

/// [`strip`] as an edit of the request header: `None` when no cookie is ours, so the header is left
/// alone without being copied or rewritten; otherwise `Some` of what [`strip`] returns.
pub fn strip_edit(
    header: &str,
    prefix: &str,
    is_ours: impl Fn(&str) -> bool,
) -> Option<Option<String>> {
    match strip_named(header, prefix, &is_ours) {
        Stripped::Unchanged => None,
        Stripped::Empty => Some(None),
        Stripped::Rewritten(s) => Some(Some(s)),
    }
}

/// [`strip_segments`] judging each segment by its name alone.
fn strip_named(header: &str, prefix: &str, is_ours: &dyn Fn(&str) -> bool) -> Stripped {
    struct ByName<'f>(&'f dyn Fn(&str) -> bool);
    impl Judge<'_> for ByName<'_> {
        fn ours(&mut self, segment: &str) -> bool {
            split_eq(segment).is_some_and(|(name, _)| (self.0)(trim_ows(name)))
        }
    }
    strip_segments(header, prefix, &mut ByName(is_ours))
}

/// What [`strip_segments`] asks about the segments whose names start with its prefix.
pub(crate) trait Judge<'a> {
    /// The length of the segment at the start of `rest` (the header from the segment's first byte on),
    /// when it is known without a search for its `;`. It is taken only when the header has a `;` or its
    /// end right there; a caller that gives one must check the outcome (the session scan does, by the
    /// cache hit it expects).
    fn known_len(&mut self, rest: &'a str) -> Option<usize> {
        let _ = rest;
        None
    }

    /// Whether to leave out `segment` (from its name to before its `;`, trailing whitespace included).
    fn ours(&mut self, segment: &'a str) -> bool;
}

/// What [`strip_segments`] left of a `Cookie` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stripped {
    /// Nothing was ours.
    Unchanged,
    /// No cookie is left.
    Empty,
    /// The header without ours.
    Rewritten(String),
}

impl Stripped {
    /// As [`strip`] returns it.
    pub(crate) fn into_header(self, header: &str) -> Option<String> {
        match self {
            Stripped::Unchanged => Some(header.to_owned()),
            Stripped::Empty => None,
            Stripped::Rewritten(s) => Some(s),
        }
    }
}

/// The one pass behind [`strip`]: `judge` gets each segment whose name starts with `prefix`, from its name
/// to before its `;` (trailing whitespace included), and says whether to leave it out.
///
/// Runs on every logged-in request, for every cookie a browser sends with it: a segment that is not ours
/// costs a search for its `;`, a skip of the whitespace before it and a compare with `prefix`. A segment
/// whose length the judge knows (a session cookie this worker has seen) costs no search at all. The kept
/// text is copied in the pieces between segments of ours, not segment by segment.
pub(crate) fn strip_segments<'a>(
    header: &'a str,
    prefix: &str,
    judge: &mut dyn Judge<'a>,
) -> Stripped {
    let b = header.as_bytes();
    let mut out = String::new();
    // Where the text not yet copied or left out begins.
    let mut kept_from = 0;
    let mut removed = false;
    let mut kept_any = false;
    let mut start = 0;
    loop {
        let from = skip_ows(b, start, b.len());
        // `from` follows whitespace or a `;`, or is the start: a character boundary.
        let rest = header.get(from..).unwrap_or_default();
        let named = crate::headers::starts_with(rest.as_bytes(), prefix.as_bytes());
        let known = match named {
            true => judge.known_len(rest).map(|len| from.saturating_add(len)),
            false => None,
        };
        let end = match known {
            Some(end) if end == b.len() || b.get(end) == Some(&b';') => end,
            _ => next_semicolon(b, from),
        };
        if from < end {
            // `end` is at a `;` or the end: a character boundary.
            let segment = header.get(from..end).unwrap_or_default();
            if named && judge.ours(segment) {
                push_kept(&mut out, header.get(kept_from..from), header.len());
                removed = true;
                kept_from = skip_ows(b, (end + 1).min(b.len()), b.len());
            } else {
                kept_any = true;
            }
        }
        if end >= b.len() {
            break;
        }
        start = end + 1;
    }
    if !kept_any {
        return Stripped::Empty;
    }
    if !removed {
        return Stripped::Unchanged;
    }
    push_kept(&mut out, header.get(kept_from..), header.len());
    // A segment of ours at either end leaves a separator there.
    let bytes = out.as_bytes();
    let mut hi = bytes.len();
    while hi > 0 && matches!(bytes[hi - 1], b' ' | b'\t' | b';') {
        hi -= 1;
    }
    let mut lo = 0;
    while lo < hi && matches!(bytes[lo], b' ' | b'\t' | b';') {
        lo += 1;
    }
    // Both cuts are next to ASCII bytes: character boundaries.
    out.truncate(hi);
    if lo > 0 {
        out.drain(..lo);
    }
    Stripped::Rewritten(out)
}

/// Appends a kept piece of the header to `out`, which is only allocated (once, for the whole header) when
/// there is something to keep: a request whose only cookie is the session allocates nothing.
fn push_kept(out: &mut String, piece: Option<&str>, header_len: usize) {
    let Some(piece) = piece.filter(|p| !p.is_empty()) else {
        return;
    };
    if out.capacity() == 0 {
        out.reserve(header_len);
    }
    out.push_str(piece);
}

/// The first index in `from..to` of `b` that is not space or tab, else `to`.
fn skip_ows(b: &[u8], mut from: usize, to: usize) -> usize {
    while from < to && matches!(b.get(from), Some(b' ' | b'\t')) {
        from += 1;
    }
    from
}

/// The `SameSite` attribute of the cookies we set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites: what a login redirect back from the IdP needs.
    #[default]
    Lax,
    /// Never sent from other sites; breaks the IdP redirect back for login-state cookies.
    Strict,
    /// Always sent; browsers only accept it together with `Secure`.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Attributes shared by every cookie the filter sets. `HttpOnly` is always on: no script needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    /// Adds `Secure`. Only off for plain-HTTP local development.
    pub secure: bool,
    /// Adds `Domain=`; `None` makes a host-only cookie, which is the safer default.
    pub domain: Option<String>,
    /// The `Path=` attribute.
    pub path: String,
    /// The `SameSite=` attribute.
    pub same_site: SameSite,
}

impl Default for CookieAttrs {
    fn default() -> Self {
        CookieAttrs {
            secure: true,
            domain: None,
            path: "/".to_owned(),
            same_site: SameSite::Lax,
        }
    }
}

/// A `Set-Cookie` header value: `name=value; Path=/; Max-Age=N; HttpOnly; Secure; SameSite=Lax`
/// (with `Domain=` when configured).
///
/// Names and values are ours (cookie names from config, base64url values), so they never need quoting.
/// Defensively, bytes that RFC 6265 forbids (CR, LF, `;`, spaces, quotes, ...) are dropped rather than
/// emitted: a mangled value merely fails to open later, while an emitted CR/LF or `;` would let the
/// value inject headers or attributes.
pub fn set_cookie(name: &str, value: &str, attrs: &CookieAttrs, max_age_secs: u64) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 96);
    push_filtered(&mut out, name, is_token_byte);
    out.push('=');
    push_filtered(&mut out, value, is_cookie_octet);
    push_attrs(&mut out, attrs);
    // Writing to a String cannot fail.
    let _ = write!(out, "; Max-Age={max_age_secs}");
    push_flags(&mut out, attrs);
    out
}

/// True when cookie `name` starts with `prefix` in any case, as browsers match the `__Host-` and
/// `__Secure-` prefixes.
pub fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|n| n.eq_ignore_ascii_case(prefix))
}

/// A `Set-Cookie` header value that makes the browser drop cookie `name` at once.
///
/// `Path` and `Domain` must match the ones it was set with, or the browser keeps the original.
/// `Expires` in 1970 is there for clients that ignore `Max-Age`.
pub fn clear_cookie(name: &str, attrs: &CookieAttrs) -> String {
    let mut out = String::with_capacity(name.len() + 128);
    push_filtered(&mut out, name, is_token_byte);
    out.push('=');
    push_attrs(&mut out, attrs);
    out.push_str("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    push_flags(&mut out, attrs);
    out
}

pub(crate) fn parse_pair(segment: &str) -> Option<(&str, &str)> {
    let (name, value) = split_eq(segment)?;
    let name = trim_ows(name);
    if name.is_empty() {
        return None;
    }
    let value = trim_ows(value);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((name, value))
}

// These two run for every cookie of every request. They work on bytes, in plain loops: in Wasm, the
// `char` pattern machinery of `split_once` and `trim_matches` costs more than the scan itself, and at
// `opt-level=z` `position` and `rposition` stay calls of core's `try_fold`.

/// `segment` split at its first `=`.
pub(crate) fn split_eq(segment: &str) -> Option<(&str, &str)> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            // `=` is ASCII: both sides are whole characters.
            return Some((segment.get(..i)?, segment.get(i + 1..)?));
        }
        i += 1;
    }
    None
}

/// Optional whitespace as HTTP defines it (space and tab); other bytes are kept.
pub(crate) fn trim_ows(s: &str) -> &str {
    let bytes = s.as_bytes();
    let mut start = 0;
    while start < bytes.len() && matches!(bytes[start], b' ' | b'\t') {
        start += 1;
    }
    let mut end = bytes.len();
    while end > start && matches!(bytes[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    if start == 0 && end == bytes.len() {
        return s;
    }
    // Space and tab are ASCII: the cuts are between whole characters.
    s.get(start..end).unwrap_or_default()
}

fn push_attrs(out: &mut String, attrs: &CookieAttrs) {
    out.push_str("; Path=");
    push_filtered(out, &attrs.path, is_attr_byte);
    if let Some(domain) = &attrs.domain {
        out.push_str("; Domain=");
        push_filtered(out, domain, is_attr_byte);
    }
}

fn push_flags(out: &mut String, attrs: &CookieAttrs) {
    out.push_str("; HttpOnly");
    if attrs.secure {
        out.push_str("; Secure");
    }
    out.push_str("; SameSite=");
    out.push_str(attrs.same_site.as_str());
}

fn push_filtered(out: &mut String, s: &str, keep: fn(u8) -> bool) {
    // Every kept byte is ASCII, so pushing it as a char is exact.
    out.extend(s.bytes().filter(|&b| keep(b)).map(char::from));
}

/// RFC 6265 cookie-octet: visible ASCII except `"`, `,`, `;` and `\`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// RFC 7230 token character, the grammar of a cookie name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 path-value / domain: any visible ASCII except `;`.
fn is_attr_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b';'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_what_str_split_gives() {
        let mut cases: Vec<String> = ["", ";", ";;", "a", "a;b", "a=1; b=2;", ";a", "é;ü;🦀;x"]
            .map(String::from)
            .to_vec();
        // Every placement of one or two `;` in strings around the eight- and 32-byte steps.
        for len in 0..70 {
            for i in 0..len {
                for j in i..len {
                    let mut v = vec![b'x'; len];
                    v[i] = b';';
                    v[j] = b';';
                    cases.push(String::from_utf8(v).unwrap());
                }
            }
        }
        for c in &cases {
            let ours: Vec<&str> = segments(c).collect();
            let std: Vec<&str> = c.split(';').collect();
            assert_eq!(ours, std, "{c:?}");
        }
    }

    #[test]
    fn get_matches_the_exact_name_only() {
        let h = "x_oidc_session=a; oidc_session_x=b; OIDC_SESSION=c; oidc_session=d";
        assert_eq!(get(h, "oidc_session"), Some("d"));
        assert_eq!(
            get("x_oidc_session=a; oidc_session_x=b", "oidc_session"),
            None
        );
        assert_eq!(get(h, "oidc"), None);
    }

    #[test]
    fn get_returns_the_first_of_duplicates() {
        assert_eq!(get("a=1; a=2", "a"), Some("1"));
    }

    #[test]
    fn get_tolerates_missing_and_extra_whitespace() {
        let h = "a=1;b=2 ;\tc = 3 ;;  d=";
        assert_eq!(get(h, "a"), Some("1"));
        assert_eq!(get(h, "b"), Some("2"));
        assert_eq!(get(h, "c"), Some("3"));
        assert_eq!(get(h, "d"), Some(""));
    }

    #[test]
    fn get_unquotes_values() {
        assert_eq!(get(r#"a="x.y"; b=""; c="half"#, "a"), Some("x.y"));
        assert_eq!(get(r#"b="""#, "b"), Some(""));
        assert_eq!(get(r#"c="half"#, "c"), Some(r#""half"#));
        assert_eq!(get(r#"d="""#, "d"), Some(""));
        assert_eq!(get(r#"e=""#, "e"), Some(r#"""#));
    }

    #[test]
    fn get_skips_malformed_pairs() {
        let h = "garbage; =nameless; ok=1; also garbage";
        assert_eq!(get(h, "garbage"), None);
        assert_eq!(get(h, ""), None);
        assert_eq!(get(h, "ok"), Some("1"));
        assert_eq!(get("", "a"), None);
        assert_eq!(get(";;;", "a"), None);
    }

    #[test]
    fn get_splits_at_the_first_equals_sign() {
        assert_eq!(get("a=b=c", "a"), Some("b=c"));
    }

    #[test]
    fn iter_yields_every_wellformed_pair() {
        let pairs: Vec<_> = iter("a=1;b=\"2\"; junk; c=").collect();
        assert_eq!(pairs, [("a", "1"), ("b", "2"), ("c", "")]);
    }

    #[test]
    fn strip_removes_ours_and_keeps_others_byte_for_byte() {
        let h = "a=1;oidc=x; b=\"q v\";oidc.1=y;  junk ; c=3=4";
        let out = strip(h, "oidc", |n| n == "oidc" || n == "oidc.1");
        assert_eq!(out.as_deref(), Some("a=1;b=\"q v\";junk ; c=3=4"));
        // Ours first, last, or in a row: no separator is left over, none is doubled.
        let ours = |n: &str| n == "oidc" || n == "oidc.1";
        for (h, want) in [
            ("oidc=x; a=1", Some("a=1")),
            ("a=1; oidc=x", Some("a=1")),
            ("a=1; oidc=x; oidc.1=y; b=2", Some("a=1; b=2")),
            ("oidc=x;  a=1 ;oidc.1=y", Some("a=1")),
            (" oidc = x ; a=1", Some("a=1")),
            ("a=1; oidc=x;", Some("a=1")),
            (";; oidc=x; a=1", Some("a=1")),
            ("a=é; oidc=x; b=ü", Some("a=é; b=ü")),
            ("oidc=x; ;", None),
        ] {
            assert_eq!(strip(h, "oidc", ours).as_deref(), want, "{h:?}");
        }
    }

    #[test]
    fn strip_returns_none_when_nothing_is_left() {
        assert_eq!(strip("oidc=x; oidc=y", "oidc", |n| n == "oidc"), None);
        assert_eq!(strip("", "", |_| false), None);
        assert_eq!(strip(" ; ", "", |_| false), None);
    }

    #[test]
    fn strip_leaves_the_header_unchanged_when_nothing_is_ours() {
        let h = "a=1;b=2;  c=3";
        assert_eq!(strip(h, "oidc", |n| n == "oidc").as_deref(), Some(h));
        assert_eq!(strip(h, "", |n| n == "oidc").as_deref(), Some(h));
    }

    #[test]
    fn byte_helpers_match_the_str_ones() {
        for s in ["", " ", "\t a b \t", "é ", " ü\t", "a", "  x  y  "] {
            assert_eq!(trim_ows(s), s.trim_matches([' ', '\t']), "{s:?}");
        }
        for s in ["a=b=c", "=x", "x=", "é=ü", "none", ""] {
            assert_eq!(split_eq(s), s.split_once('='), "{s:?}");
        }
    }

    #[test]
    fn strip_edit_leaves_headers_without_ours_alone() {
        let ours = |n: &str| n == "oidc";
        assert_eq!(strip_edit("a=1;b=2;  c=3", "oidc", ours), None);
        assert_eq!(strip_edit("x_oidc=1; junk", "oidc", ours), None);
        assert_eq!(
            strip_edit("a=1; oidc=x", "oidc", ours),
            Some(Some("a=1".into()))
        );
        assert_eq!(strip_edit("oidc=x", "oidc", ours), Some(None));
        // Whatever `strip` does with a blank header, `strip_edit` does too.
        assert_eq!(strip_edit(" ; ", "oidc", ours), Some(None));
    }

    #[test]
    fn strip_does_not_match_by_substring() {
        let h = "x_oidc=1; oidc_x=2; oidc=3";
        assert_eq!(
            strip(h, "oidc", |n| n == "oidc").as_deref(),
            Some("x_oidc=1; oidc_x=2")
        );
    }

    /// A judge that knows one length for every segment named `s`, and leaves out every `s` segment.
    struct Knows(usize, Vec<String>);
    impl<'a> Judge<'a> for Knows {
        fn known_len(&mut self, _: &'a str) -> Option<usize> {
            Some(self.0)
        }
        fn ours(&mut self, segment: &'a str) -> bool {
            self.1.push(segment.to_string());
            true
        }
    }

    #[test]
    fn a_known_length_ends_a_segment_only_at_a_semicolon_or_the_end() {
        let h = "a=1; s=xy;z; b=2; s=q";
        let strip_with = |len| {
            let mut judge = Knows(len, Vec::new());
            let out = strip_segments(h, "s", &mut judge);
            (out, judge.1)
        };
        // Taken as given, past the first `;`: a caller that gives lengths checks what came of them.
        assert_eq!(
            strip_with(6),
            (
                Stripped::Rewritten("a=1; b=2".into()),
                vec!["s=xy;z".into(), "s=q".into()]
            )
        );
        // Not at a `;` or the end: searched for as usual.
        assert_eq!(
            strip_with(5),
            (
                Stripped::Rewritten("a=1; z; b=2".into()),
                vec!["s=xy".into(), "s=q".into()]
            )
        );
        assert_eq!(strip_with(4).1, ["s=xy", "s=q"]);
        assert_eq!(strip_with(100).1, ["s=xy", "s=q"]);
    }

    #[test]
    fn set_cookie_has_all_attributes() {
        let attrs = CookieAttrs::default();
        assert_eq!(
            set_cookie("s", "abc-_", &attrs, 3600),
            "s=abc-_; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax"
        );
        let attrs = CookieAttrs {
            secure: false,
            domain: Some("example.com".into()),
            path: "/app".into(),
            same_site: SameSite::Strict,
        };
        assert_eq!(
            set_cookie("s", "v", &attrs, 0),
            "s=v; Path=/app; Domain=example.com; Max-Age=0; HttpOnly; SameSite=Strict"
        );
        let attrs = CookieAttrs {
            same_site: SameSite::None,
            ..CookieAttrs::default()
        };
        assert!(set_cookie("s", "v", &attrs, 1).ends_with("; Secure; SameSite=None"));
    }

    #[test]
    fn set_cookie_never_emits_separators_from_inputs() {
        let attrs = CookieAttrs {
            domain: Some("evil.com;\r\nX: y".into()),
            path: "/\r\n; Domain=evil".into(),
            ..CookieAttrs::default()
        };
        let out = set_cookie("na me;\r\n", "v;a\r\nl\"ue, x", &attrs, 5);
        assert!(!out.contains(['\r', '\n', '"', ',']), "{out}");
        assert_eq!(
            out,
            "name=valuex; Path=/Domain=evil; Domain=evil.comX:y; Max-Age=5; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(out.matches(';').count(), 6);
    }

    #[test]
    fn clear_cookie_expires_it() {
        let attrs = CookieAttrs::default();
        assert_eq!(
            clear_cookie("s.1", &attrs),
            "s.1=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Lax"
        );
    }

    /// Found by mutation testing: only `;` separates cookies. A `,` is part of a value (RFC 6265 keeps it
    /// out of the values it defines, yet apps put it there), wherever it falls in the search's 32- and
    /// 8-byte steps.
    #[test]
    fn a_comma_does_not_end_a_cookie() {
        for len in 1..70 {
            for at in 0..len {
                let mut v = vec![b'x'; len];
                v[at] = b',';
                let value = String::from_utf8(v).unwrap();
                let h = format!("a={value}; b=2");
                assert_eq!(get(&h, "a"), Some(value.as_str()), "{h:?}");
                assert_eq!(get(&h, "b"), Some("2"), "{h:?}");
            }
        }
        assert_eq!(get("a=1,b=2", "b"), None);
    }

    /// Found by mutation testing: a tab is whitespace to the rewrite as it is to [`get`]. A cookie of ours
    /// after `;` and a tab was sent on to the app, and a tab at either end of what is kept stayed there.
    #[test]
    fn strip_takes_a_tab_for_whitespace() {
        let ours = |n: &str| n == "oidc";
        for (h, want) in [
            ("a=1;\toidc=x", Some("a=1")),
            ("oidc=x;\ta=1", Some("a=1")),
            (";\toidc=x; a=1", Some("a=1")),
            ("a=1;\toidc=x;\t", Some("a=1")),
            ("a=1;\t oidc=x;\tb=2", Some("a=1;\t b=2")),
            ("\toidc=x", None),
        ] {
            assert_eq!(get(h, "oidc"), Some("x"), "{h:?}");
            assert_eq!(strip(h, "oidc", ours).as_deref(), want, "{h:?}");
        }
    }

    /// Found by mutation testing: a segment without `=` is not ours even when it starts with our prefix.
    /// Browsers store `Set-Cookie: oidc-banner` as a cookie without a name and send it back as
    /// `oidc-banner`: the app's, to be passed on as sent.
    #[test]
    fn a_nameless_cookie_that_starts_with_our_prefix_is_kept() {
        let ours = |n: &str| n == "oidc";
        let h = "a=1; oidc; oidc-banner; oidc=x";
        assert_eq!(
            strip(h, "oidc", ours).as_deref(),
            Some("a=1; oidc; oidc-banner")
        );
        assert_eq!(strip_edit("oidc; a=1", "oidc", ours), None);
    }

    /// Found by mutation testing: DEL (0x7f) is a control character, not a cookie-octet: a value holding
    /// one is written without it (a header value with DEL is not a valid field value).
    #[test]
    fn set_cookie_drops_del() {
        let out = set_cookie("s\x7f", "a\x7fb", &CookieAttrs::default(), 1);
        assert!(out.starts_with("s=ab; Path=/;"), "{out:?}");
    }

    #[test]
    fn garbage_headers_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"ab=; \t\"\r\n.\xc3\xa9";
        for _ in 0..2000 {
            let len = (xorshift(&mut seed) % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize])
                .collect();
            let h = String::from_utf8_lossy(&bytes);
            let _ = get(&h, "a");
            let _ = iter(&h).count();
            let _ = strip(&h, "a", |n| n == "a");
            let _ = strip(&h, "", |n| n == "a");
        }
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
}
