//! Path handling where a mistake is a bypass or an open redirect: bypass matching and `rd` targets.

use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use alloc::borrow::Cow;

/// The path part of a request target (`:path`), without query or fragment.
pub fn path_only(target: &str) -> &str {
    target.get(..path_end(target)).unwrap_or(target)
}

/// Where the path of a request target ends. A byte search: in Wasm, `str::find` with a `char` set decodes
/// every character, which on the per-request path cost more than everything else done with the path.
/// A plain loop: at `opt-level=z`, `position` stays a call of core's `try_fold`.
fn path_end(target: &str) -> usize {
    let b = target.as_bytes();
    let mut i = 0;
    while i < b.len() && !matches!(b[i], b'?' | b'#') {
        i += 1;
    }
    i
}

/// The query part of a request target, without `?` and fragment.
pub fn query_only(target: &str) -> &str {
    let rest = target.get(path_end(target)..).unwrap_or_default();
    match rest.strip_prefix('?') {
        Some(q) => q.split_once('#').map_or(q, |(q, _)| q),
        None => "",
    }
}

/// The path an application would act on: percent-decoded, `\` read as `/`, path parameters (`;x`) cut, empty
/// and dot segments resolved. `None` for what no honest client sends (bad escapes, NUL, invalid UTF-8): such
/// a request is never a bypass.
pub fn normalize(target: &str) -> Option<String> {
    Some(resolve(&percent_decode(path_only(target))?, true, false))
}

/// The paths applications may act on, dot segments resolved in each: decoded or with escapes kept (an app
/// that routes on raw segments, where `/admin/..%2Fhealthz` is a request to the `/admin/` handler), each
/// with `..;` read as `..` and `\` as `/` (Tomcat and Jetty take `/admin/..;/x` for `/x`) or both as
/// ordinary characters (Envoy's router, Node and Go take `/admin/..;/x` and `/admin/x\..\..\x` for
/// paths under `/admin`), and each with empty segments dropped (`/a//../b` is `/b` where `//` is merged
/// first) or kept, as RFC 3986 resolves them (`/a//../b` is `/a/b` to Jetty, WHATWG URL parsers and an
/// Envoy that normalizes without merging slashes); see [`resolve`]. A decision that lets a request
/// through must hold for every one. `None` when the path does not decode: it reads differently to every
/// app; and so for one that is not plain and longer than [`MAX_READ_PATH`] bytes, or of more than
/// [`MAX_READ_SEGMENTS`] segments once decoded, or of more than a quarter of either when it starts with
/// two slashes (`/` or `\`, as it came or decoded), which no app's own links make: its readings would cost
/// each request about eight passes per segment, several times a request (found in review: a path of
/// 48 KB of `/` cost a worker 20 ms, of `//a` with a bearer token 66 ms, against 0.6 ms for 48 KB of
/// a plain path). Such a path is no bypass path and meets every claim rule.
pub fn readings(target: &str) -> Option<Readings<'_>> {
    let path = path_only(target);
    if is_plain(path) {
        let mut one = [const { Cow::Borrowed("") }; 8];
        one[0] = Cow::Borrowed(path);
        return Some(Readings(one, 1, None));
    }
    if path.len() > MAX_READ_PATH {
        return None;
    }
    let decoded = percent_decode(path)?;
    // A path in which a URL parser finds a host ([`past_authority`]) is read again past it for the claim
    // rules, in up to four more ways: it gets a quarter of each bound (found in review: within the whole
    // bounds, a logged-in request on such a path cost a worker 1 ms natively, five times an anonymous
    // request's).
    let share = if past_authority(path, true).is_some() || past_authority(&decoded, true).is_some()
    {
        4
    } else {
        1
    };
    if path.len() > MAX_READ_PATH / share
        || decoded.bytes().filter(|&b| b == b'/' || b == b'\\').count() > MAX_READ_SEGMENTS / share
    {
        return None;
    }
    let read = |p: &str, cut, keep_empty| Cow::Owned(resolve(p, cut, keep_empty));
    let all = [
        read(&decoded, true, false),
        read(&decoded, false, false),
        read(path, true, false),
        read(path, false, false),
        read(&decoded, true, true),
        read(&decoded, false, true),
        read(path, true, true),
        read(path, false, true),
    ];
    Some(Readings(all, 8, Some(decoded)))
}

/// A request's target, its path's [`readings`] worked out when first asked for and kept: a request asks
/// several questions of its path (a bypass path? one only as written, for a client's own token? under a
/// claim rule, for a token without claims and then for its own?), and each worked them out again (found
/// in review: a path of 8 KiB within the bounds cost a client's made-up bearer token twice an anonymous
/// request's work).
pub struct Target<'a> {
    /// The target as it came: path and query.
    pub text: &'a str,
    readings: Option<Option<Readings<'a>>>,
}

impl<'a> Target<'a> {
    pub fn new(text: &'a str) -> Target<'a> {
        Target {
            text,
            readings: None,
        }
    }

    /// The [`readings`] of the target's path.
    pub fn readings(&mut self) -> Option<&Readings<'a>> {
        let text = self.text;
        self.readings.get_or_insert_with(|| readings(text)).as_ref()
    }
}

/// The longest path that is not plain ([`is_plain`]) whose [`readings`] are worked out.
pub const MAX_READ_PATH: usize = 8192;

/// The most segments (a `/` or `\` each, once decoded) of a path that is not plain whose [`readings`]
/// are worked out.
pub const MAX_READ_SEGMENTS: usize = 256;

/// The [`readings`] of a path: the first `.1` of `.0` (a plain path has one), and the path decoded (not
/// for a plain path, which decodes to itself).
pub struct Readings<'a>([Cow<'a, str>; 8], usize, Option<String>);

impl Readings<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0[..self.1].iter().map(|p| &**p)
    }

    /// True for a plain path: its one reading is the path as it came.
    pub fn plain(&self) -> bool {
        self.1 == 1
    }

    /// True when a segment of the path, decoded, is `.` or `..` (also with `;` parameters after it), the
    /// segments split at `/` and `\`, escaped or not. Servers resolve such a path in more ways than the
    /// readings foresee (found by a black-box test: WHATWG URL parsers and Envoy's normalizer decode `%2e`
    /// but not `%2F`, so `/healthz/a%2fb/%2e%2e/%2e%2e/admin` is `/admin` to them and under `/healthz` in
    /// every reading; and they take `\` for `/` but keep `;`, where Jetty does the opposite), so such a
    /// path is no bypass path and meets every claim rule. A browser resolves them before it sends a path
    /// (it sends one only inside a segment's encoded text: `..%2Fx`), and an Envoy that normalizes paths
    /// (Istio's default) resolves those it can read.
    pub fn dotted(&self) -> bool {
        self.decoded().is_some_and(|d| {
            segments(d, true).any(|seg| matches!(before_semicolon(seg), "." | ".."))
        })
    }

    /// The path percent-decoded (`None` for a plain path, which decodes to itself).
    pub fn decoded(&self) -> Option<&str> {
        self.2.as_deref()
    }

    /// The path percent-decoded and nothing more, also with `\` read as `/`, and each with runs of `/`
    /// merged (`None` for a plain path): how a server that decodes `%2F` but leaves `..` to the app
    /// (gunicorn's and uWSGI's `PATH_INFO`, Gin by default) hands `/admin%2Fx%2F..%2F..%2Fy` to a
    /// catch-all `/admin/<path>` handler, which the readings, each resolved, read as `/y`.
    pub fn unresolved(&self) -> Option<[Cow<'_, str>; 4]> {
        let decoded = self.2.as_deref()?;
        let slashed = decoded.replace('\\', "/");
        // Byte by byte: taking out a `/` leaves text that is UTF-8 still.
        let merged = |p: &str| {
            let mut out = Vec::with_capacity(p.len());
            for &c in p.as_bytes() {
                if !(c == b'/' && out.last() == Some(&b'/')) {
                    out.push(c);
                }
            }
            Cow::Owned(String::from_utf8(out).unwrap_or_default())
        };
        Some([
            merged(decoded),
            merged(&slashed),
            Cow::Borrowed(decoded),
            Cow::Owned(slashed),
        ])
    }
}

/// What follows the host when `path` starts with two or more slashes (`/` or `\`): a URL parser takes the
/// first segment after them for a host (`//x/admin/settings` is `/admin/settings` to WHATWG's
/// `new URL(path, base)`, Python's `urlsplit` and Java's `URI`; found by a black-box test, such a path
/// passed a rule on `/admin` to an app that parses its request's target so). The host ends at a `/` or,
/// with `backslash`, a `\` (WHATWG's reading); without, at a `/` only (`urlsplit`'s: `//h\x/admin` is
/// `/admin` to it, `/x/admin` to WHATWG's; found by mutation testing, a rule on `/admin` did not cover it).
/// `None` for any other path.
pub fn past_authority(path: &str, backslash: bool) -> Option<&str> {
    let b = path.as_bytes();
    let slashes = b.iter().take_while(|&&c| c == b'/' || c == b'\\').count();
    if slashes < 2 {
        return None;
    }
    let host = b[slashes..]
        .iter()
        .take_while(|&&c| c != b'/' && !(backslash && c == b'\\'))
        .count();
    path.get(slashes + host..)
}

/// True when decoding and resolving leave `path` as it is: it starts with `/` and has no escape, backslash,
/// parameter, NUL, empty segment or segment starting with a dot. Most paths are plain, and then both
/// [`readings`] are the path itself, without the work (and allocations) of working them out.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        if matches!(c, b'%' | b'\\' | b';' | 0) || (prev == b'/' && matches!(c, b'/' | b'.')) {
            return false;
        }
        prev = c;
    }
    true
}

/// `decoded` with dot segments resolved, each segment judged without its path parameters (`;` starts them:
/// `/admin;x=1` is under `/admin`). With `cut`, as servers that strip them and take `\` for `/` read it
/// (`/healthz;x/../admin`, `/admin/..;/x` and `/a\..\x` are `/admin`, `/x` and `/x` there); without, as
/// Envoy's router, Node and Go read it: `\` is an ordinary character, and a segment that is empty or a dot
/// segment only once cut (`..;`) is an ordinary one. Empty segments are dropped, or with `keep_empty` kept
/// as RFC 3986 keeps them, where a `..` removes an empty segment like any other (`/a//../b` is `/a/b`). A
/// path whose last segment resolves away (`/admin/`, `/admin/.;`) keeps its trailing `/`.
fn resolve(decoded: &str, cut: bool, keep_empty: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    let mut segs = segments(decoded, cut);
    if keep_empty
        && decoded
            .as_bytes()
            .first()
            .is_some_and(|&c| c == b'/' || (cut && c == b'\\'))
    {
        // What precedes the leading `/`.
        segs.next();
    }
    for seg in segs {
        let bare = before_semicolon(seg);
        let seg = if cut || bare.len() == seg.len() || !matches!(bare, "" | "." | "..") {
            bare
        } else {
            seg
        };
        trailing = matches!(seg, "." | "..") || (seg.is_empty() && !keep_empty);
        match seg {
            "." => {}
            "" if !keep_empty => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len() + 1);
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || (trailing && !out.is_empty()) {
        p.push('/');
    }
    p
}

/// `path` split at each `/`, and with `backslash` at each `\` too, as `str::split` splits it: a byte
/// search, where a `char` predicate decodes each character (found in review: a path's readings, which
/// split it nine times, cost it about 10 ns a byte that way in Wasm).
fn segments(path: &str, backslash: bool) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    core::iter::from_fn(move || {
        let r = rest?;
        let b = r.as_bytes();
        let mut i = 0;
        while i < b.len() && !(b[i] == b'/' || (backslash && b[i] == b'\\')) {
            i += 1;
        }
        // `/` and `\` are ASCII: both cuts are character boundaries.
        rest = (i < b.len()).then(|| r.get(i + 1..)).flatten();
        r.get(..i)
    })
}

/// The part of `segment` before its first `;` (its path parameters).
fn before_semicolon(segment: &str) -> &str {
    let b = segment.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] != b';' {
        i += 1;
    }
    segment.get(..i).unwrap_or(segment)
}

/// True when `prefix` is a path as [`normalize`] leaves it: one that a normalized path can start with
/// (`admin`, `/a//b`, `/a/../b`, `/a;x`, `/a%2Fb`, `/a\b` or `/a?b` never would).
pub fn is_normal_prefix(prefix: &str) -> bool {
    normalize(prefix).is_some_and(|n| n == prefix)
}

/// True when `prefix` covers `path` on a segment boundary: `/healthz` covers `/healthz` and `/healthz/x`,
/// not `/healthzx`. A prefix ending in `/` covers everything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix_matches_as(prefix, path, false)
}

/// [`prefix_matches`], with `any_case` without regard to ASCII case (for apps that take `/ADMIN` for
/// `/admin`).
pub fn prefix_matches_as(prefix: &str, path: &str, any_case: bool) -> bool {
    let (p, b) = (prefix.as_bytes(), path.as_bytes());
    let Some(head) = b.get(..p.len()) else {
        return false;
    };
    let rest = &b[p.len()..];
    (if any_case {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    }) && (p.last() == Some(&b'/') || rest.first().is_none_or(|&c| c == b'/'))
}

/// `path` as an app that ignores case may read it: the four non-ASCII letters whose case mapping is an
/// ASCII letter (U+0130 `İ` and U+0131 `ı` to `i`, U+212A Kelvin `K` to `k`, U+017F `ſ` to `s`) replaced
/// by it. Java's `equalsIgnoreCase` (Spring's case-insensitive matching) folds all four, .NET's
/// `OrdinalIgnoreCase` (ASP.NET Core's routing) `ı` and `ſ`: `/admİn` is `/admin` to the one, `/admın`
/// to both (found in review: such paths passed a claim rule on `/admin`). Every other character beyond
/// ASCII becomes U+FFFD: such apps fold those too (`/ÜBER` is `/über`), and without Unicode's case
/// tables in the module each stands for any other (found by mutation testing: a rule on `/über` did not
/// cover `/ÜBER`). So a rule's prefix covers, in this reading, paths that differ from it in such
/// letters at all: more refusals, never fewer. Borrowed when there is none (an ASCII path).
pub fn fold_ascii_lookalikes(path: &str) -> Cow<'_, str> {
    if path.is_ascii() {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        out.push(match c {
            '\u{130}' | '\u{131}' => 'i',
            '\u{212a}' => 'k',
            '\u{17f}' => 's',
            c if c.is_ascii() => c,
            _ => '\u{fffd}',
        });
    }
    Cow::Owned(out)
}

/// True when the request target falls under one of the bypass prefixes in every one of the [`readings`]
/// of its path, and as it came: an Envoy that does not normalize paths routes `/admin/../healthz` by its
/// `/admin` prefix, to an app that may route on raw segments too.
pub fn is_bypass(prefixes: &[String], target: &mut Target<'_>) -> bool {
    if prefixes.is_empty() {
        return false;
    }
    let text = target.text;
    target
        .readings()
        .is_some_and(|r| bypass_in(prefixes, text, r))
}

/// [`is_bypass`] with the [`readings`] of `target` at hand.
pub fn bypass_in(prefixes: &[String], target: &str, r: &Readings<'_>) -> bool {
    let covered = |p: &str| under_any(prefixes, p);
    r.iter().all(covered) && (r.plain() || (covered(path_only(target)) && !r.dotted()))
}

/// True when one of `prefixes` covers `path` ([`prefix_matches`]).
fn under_any(prefixes: &[String], path: &str) -> bool {
    prefixes.iter().any(|b| prefix_matches(b, path))
}

/// True when the path as it came falls under a bypass prefix but not in every reading ([`is_bypass`]
/// is false): `/healthz/..%2Fadmin`. An `AuthorizationPolicy` exempts the bypass paths by their text
/// (`notPaths`), so it lets such a request through, to an app that may decode it to `/admin`.
pub fn bypass_in_text_only(prefixes: &[String], target: &mut Target<'_>) -> bool {
    under_any(prefixes, path_only(target.text)) && !is_bypass(prefixes, target)
}

/// The longest `rd` kept whole (it travels in the login cookie).
const MAX_RD: usize = 2048;

/// A target as `rd` can keep it: whole up to [`MAX_RD`] bytes, else its path without the query, else `/`.
pub fn fit_rd(target: &str) -> &str {
    match target {
        t if t.len() <= MAX_RD => t,
        t if path_only(t).len() <= MAX_RD => path_only(t),
        _ => "/",
    }
}

/// The post-login target from `rd`: a same-origin relative path, else `/`. Bytes a URL does not hold as they
/// are (spaces, non-ASCII, and controls after the path) are percent-encoded. One longer than 2048 bytes (it travels in the
/// login cookie) keeps its path without the query, if that fits. Only the path decides where the browser
/// goes, so only the path is held to the rules below: a query or fragment may carry `\`, `%5C` or a lone
/// `%` (Grafana's Explore links do).
pub fn safe_redirect(rd: &str) -> String {
    // A tab or newline in the path is an attack's (browsers drop them: `/\t/evil` is `//evil`).
    if path_only(rd).bytes().any(|b| b.is_ascii_control()) {
        return "/".to_string();
    }
    let encoded = encode_invisible(rd);
    let rd = fit_rd(&encoded);
    if safe(rd) { rd } else { "/" }.to_string()
}

/// `rd` with every byte outside visible ASCII percent-encoded, as a browser writes an address.
fn encode_invisible(rd: &str) -> alloc::borrow::Cow<'_, str> {
    if rd.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return alloc::borrow::Cow::Borrowed(rd);
    }
    let mut out = String::with_capacity(rd.len() + 16);
    for &b in rd.as_bytes() {
        if (0x21..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    alloc::borrow::Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn safe(rd: &str) -> bool {
    let path = path_only(rd);
    rd.len() <= MAX_RD
        && rd.bytes().all(|b| (0x21..0x7f).contains(&b))
        && path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        // `/%2F%2Fevil` and `/%5Cevil` become `//evil` in some decoders: refuse a path that decodes off-site.
        && decoded_stays(path)
}

/// Whether `path`, percent-decoded (a `%` that starts no escape taken as it is), neither starts with `//`
/// or `/\` nor holds a `\`, a NUL or a dot segment (found by a black-box test: `/..//evil.example`,
/// `/%2e%2e/%2fevil.example`, which a browser resolves to the path `//evil.example`, one an app's script
/// may take for an address; a browser's own address has none).
fn decoded_stays(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    let mut n = 0;
    let mut prev = 0u8;
    // The current segment's length, and how many of its bytes are dots.
    let (mut len, mut dots) = (0, 0);
    while let Some(&c) = b.get(i) {
        let escaped = (c == b'%')
            .then(|| {
                let hi = crate::form::hex(*b.get(i + 1)?)?;
                let lo = crate::form::hex(*b.get(i + 2)?)?;
                Some(hi << 4 | lo)
            })
            .flatten();
        let d = escaped.unwrap_or(c);
        i += if escaped.is_some() { 3 } else { 1 };
        if d == 0 || d == b'\\' || (n == 1 && prev == b'/' && d == b'/') {
            return false;
        }
        if d == b'/' {
            if len > 0 && len <= 2 && dots == len {
                return false;
            }
            (len, dots) = (0, 0);
        } else {
            len += 1;
            dots += usize::from(d == b'.');
        }
        prev = d;
        n += 1;
    }
    !(len > 0 && len <= 2 && dots == len)
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return (!s.contains('\0')).then(|| s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = crate::form::hex(*b.get(i + 1)?)?;
            let lo = crate::form::hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_read_the_same_both_ways() {
        let paths = [
            "/",
            "",
            "a",
            "/a",
            "/a/",
            "/a/b",
            "/a//b",
            "//a",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/.well-known/x",
            "/a.b/c.d",
            "/a%2Fb",
            "/a\\b",
            "/a;x/b",
            "/a\0b",
            "/a/b/",
            "/x?y=/../z",
        ];
        for p in paths {
            let t = format!("{p}?q=1");
            let path = path_only(p);
            let slow = percent_decode(path).map(|d| {
                [false, true].map(|keep| {
                    [(&*d, true), (&*d, false), (path, true), (path, false)]
                        .map(|(p, cut)| resolve(p, cut, keep))
                })
            });
            let slow = slow.map(|[drop, keep]| [drop, keep].concat());
            let fast = readings(&t).map(|r| r.iter().map(str::to_string).collect::<Vec<_>>());
            if is_plain(path) {
                assert_eq!(normalize(&t).as_deref(), Some(path), "{p:?}");
                // One reading stands for the eight, which are all the path itself.
                assert_eq!(fast, Some(vec![path.to_string()]), "{p:?}");
                assert!(slow.unwrap().iter().all(|r| r == path), "{p:?}");
            } else {
                assert_eq!(fast, slow, "{p:?}");
            }
        }
        assert!(is_plain("/a/b.c/"));
        assert!(!is_plain("/a/.b"));
    }

    /// The byte splits the readings use split as `str::split` does, for every string of a few of the bytes
    /// that matter (and a character beyond ASCII).
    #[test]
    fn segments_split_as_str_split_does() {
        let alphabet = ["/", "\\", ";", ".", "a", "é"];
        // Every string of up to four of them: 1 + 6 + 36 + 216 + 1296.
        let mut strings = vec![String::new()];
        let mut last = strings.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(last.iter().cloned());
        }
        for s in &strings {
            let slash: Vec<&str> = s.split('/').collect();
            let both: Vec<&str> = s.split(['/', '\\']).collect();
            assert_eq!(segments(s, false).collect::<Vec<_>>(), slash, "{s:?}");
            assert_eq!(segments(s, true).collect::<Vec<_>>(), both, "{s:?}");
            assert_eq!(before_semicolon(s), s.split(';').next().unwrap(), "{s:?}");
        }
        assert_eq!(strings.len(), 1555);
    }

    #[test]
    fn normalizes_like_an_app_would() {
        assert_eq!(normalize("/healthz/../admin").as_deref(), Some("/admin"));
        assert_eq!(
            normalize("/healthz%2F..%2Fadmin").as_deref(),
            Some("/admin")
        );
        assert_eq!(
            normalize("/healthz%2f%2e%2e%2fadmin").as_deref(),
            Some("/admin")
        );
        assert_eq!(normalize("/healthz\\..\\admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/healthz;x/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("//healthz").as_deref(), Some("/healthz"));
        assert_eq!(normalize("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalize("/../..").as_deref(), Some("/"));
        assert_eq!(normalize("/x?y=/../z").as_deref(), Some("/x"));
        assert_eq!(normalize("/%zz"), None);
        assert_eq!(normalize("/%00"), None);
        assert_eq!(normalize("/%ff"), None);
        // Found by mutation testing: a NUL as it is (no escape in the path) was not proven refused.
        assert_eq!(normalize("/healthz\0"), None);
        assert!(!is_normal_prefix("/healthz\0"));
    }

    #[test]
    fn bypass_only_on_segment_boundaries_of_the_normalized_path() {
        let b = vec![
            "/healthz".to_string(),
            "/.well-known/acme-challenge/".to_string(),
        ];
        for yes in [
            "/healthz",
            "/healthz/",
            "/healthz/live",
            "/healthz?x=1",
            "/.well-known/acme-challenge/tok",
        ] {
            assert!(is_bypass(&b, &mut Target::new(yes)), "{yes}");
        }
        for no in [
            "/healthz/../admin",
            "/healthz%2F..%2Fadmin",
            "/healthzx",
            "/HEALTHZ",
            "/admin?/healthz",
            "/admin#/healthz",
            "/admin/healthz",
            "/healthz/..;/admin",
            "/.well-known/acme-challenge",
            "/%zz/healthz",
            // Decoded these are `/healthz`; an app routing on raw segments serves `/admin/…` or `/x/…`.
            "/admin/..%2Fhealthz",
            "/admin%2F..%2Fhealthz",
            "/x/..%2F..%2Fhealthz",
            "/admin/..%5Chealthz",
            "/%68ealthz",
            // `/healthz` to Tomcat; a path under `/admin` to Envoy's router and most apps.
            "/admin/..;/healthz",
            "/admin/..;x/healthz",
            "/admin/x\\..\\..\\healthz",
            // `/healthz` once `//` is merged; `/admin//healthz` where `..` removes the empty segment.
            "/admin//..//healthz",
            "/admin//../healthz",
            // `/healthz` resolved; under `/admin` as it came, to an Envoy that does not normalize.
            "/admin/../healthz",
            "/healthz;v=1",
            // Found by a black-box test: `/admin/users` to a WHATWG URL parser or Envoy's normalizer,
            // which decode `%2e` but not `%2F`; under `/healthz` in every reading before. Any dot segment
            // is no bypass now, also one that stays within the prefix.
            "/healthz/a%2fb/%2e%2e/%2e%2e/admin/users",
            "/healthz/a%5cb/%2e%2e/%2e%2e/admin",
            "/healthz/x/%2e%2e/live",
            "/healthz/./live",
            "/healthz/live/..;x/y",
        ] {
            assert!(!is_bypass(&b, &mut Target::new(no)), "{no}");
        }
    }

    /// Mutation gap (P2): `dotted` splits the decoded path at `\` as well as `/`. WHATWG URL parsers and
    /// Envoy's normalizer take `\` for `/` and decode `%2e` but not `%2F`: `/healthz/a%2fb\%2e%2e\%2e%2e\admin`
    /// is `/admin` to them, yet under `/healthz` in every reading and as it came.
    #[test]
    fn a_dot_segment_between_backslashes_is_no_bypass() {
        let b = vec!["/healthz".to_string()];
        for no in [
            "/healthz/a%2fb\\%2e%2e\\%2e%2e\\admin",
            "/healthz/x\\%2e%2e\\y",
        ] {
            assert!(readings(no).is_some_and(|r| r.dotted()), "{no}");
            assert!(!is_bypass(&b, &mut Target::new(no)), "{no}");
        }
    }

    #[test]
    fn readings_differ_where_apps_differ() {
        let all = |t: &str| readings(t).map(|r| r.iter().map(str::to_string).collect::<Vec<_>>());
        // Without empty segments, keeping them reads as dropping them: the first four readings.
        let read = |t: &str| {
            all(t).map(|r| {
                assert!(r.len() == 1 || r[..4] == r[4..], "{t}: {r:?}");
                r[..r.len().min(4)].to_vec()
            })
        };
        assert_eq!(
            read("/admin/..%2Fhealthz").unwrap(),
            [
                "/healthz",
                "/healthz",
                "/admin/..%2Fhealthz",
                "/admin/..%2Fhealthz"
            ]
        );
        // Found in review: `..;` is `..` to Tomcat, an ordinary segment to Envoy's router.
        assert_eq!(
            read("/admin/..;/actuator").unwrap(),
            [
                "/actuator",
                "/admin/..;/actuator",
                "/actuator",
                "/admin/..;/actuator"
            ]
        );
        // `\` is `/` where `..;` is `..`, an ordinary character where it is not.
        assert_eq!(
            read("/admin/x\\..\\..\\healthz").unwrap(),
            [
                "/healthz",
                "/admin/x\\..\\..\\healthz",
                "/healthz",
                "/admin/x\\..\\..\\healthz"
            ]
        );
        // Found in review: a last segment that resolves away keeps the trailing `/`.
        assert_eq!(
            read("/x/..;/admin/;").unwrap(),
            ["/admin/", "/x/..;/admin/;", "/admin/", "/x/..;/admin/;"]
        );
        // Other parameters are cut either way: `/healthz;v=1` is `/healthz` to all.
        assert_eq!(read("/healthz;v=1").unwrap(), ["/healthz"; 4]);
        // Found in review: a `..` after an empty segment removes that segment where empty segments are
        // kept (RFC 3986: Jetty, WHATWG URL parsers, an Envoy normalizing without merging slashes), the one
        // before it where they are merged first.
        assert_eq!(
            all("/admin//../users").unwrap(),
            [["/users"; 4], ["/admin/users"; 4]].concat()
        );
        assert_eq!(
            all("/q/../admin//../x").unwrap(),
            [["/x"; 4], ["/admin/x"; 4]].concat()
        );
        assert_eq!(
            all("//a//b/").unwrap(),
            [["/a/b/"; 4], ["//a//b/"; 4]].concat()
        );
        let cut = ["/a/b/c", "/a/.;x/b/;y/c", "/a/b/c", "/a/.;x/b/;y/c"];
        let kept = ["/a/b//c", "/a/.;x/b/;y/c", "/a/b//c", "/a/.;x/b/;y/c"];
        assert_eq!(all("/a/.;x/b/;y/c").unwrap(), [cut, kept].concat());
        assert_eq!(read("/a/./b/../c?x").unwrap(), ["/a/c"; 4]);
        assert_eq!(read("/%zz/../a"), None);
    }

    #[test]
    fn redirect_targets_stay_on_site() {
        for good in ["/", "/a/b?c=d&e=%2F", "/grafana/d/xyz"] {
            assert_eq!(safe_redirect(good), good);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "%2F%2Fevil.example",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "/%5Cevil.example",
            "/a%5c/b",
            "/a%00b",
            "javascript:alert(1)",
            " /a",
            "",
            "evil.example",
            "?//evil.example",
            // Dot segments, which a browser resolves (found by a black-box test: `//evil.example` then).
            "/..//evil.example/x",
            "/./%2Fevil.example",
            "/%2e%2e/%2fevil.example",
            "/a/%2E./b",
            "/a/.",
            "/a/..",
        ] {
            assert_eq!(safe_redirect(bad), "/", "{bad:?}");
        }
        // Dots that make no dot segment stay, and so does an empty segment after the first (found by
        // mutation testing: the checks for a dot segment and for `//` held only at the path's ends).
        for good in [
            "/a/.well-known/x",
            "/a/...",
            "/a/.../b",
            "/a.b/..c/c..",
            "/v1.2/",
            "/a//b",
            "/a/%2F/b",
        ] {
            assert_eq!(safe_redirect(good), good, "{good:?}");
        }
        // A control character in the path is refused; after it, what a URL cannot hold as it is gets
        // percent-encoded: no header can be injected.
        for bad in ["/a\r\nSet-Cookie: x=1", "/\t/evil.example", "/a\0"] {
            assert_eq!(safe_redirect(bad), "/", "{bad:?}");
        }
        assert_eq!(
            safe_redirect("/a?x=\r\nSet-Cookie: x=1#\t"),
            "/a?x=%0D%0ASet-Cookie:%20x=1#%09"
        );
        assert_eq!(safe_redirect("/a b/é"), "/a%20b/%C3%A9");
        // Only the path decides where the browser goes: a query may hold what the path may not.
        for good in [
            "/explore?left=%7B%22expr%22%3A%22up%7Bjob%3D%5C%22x%5C%22%7D%22%7D",
            "/explore?q=up{job=\\\"x\\\"}",
            "/shop?d=50%",
            "/files/%E9t%E9.pdf",
            "/50%off",
            "/d?next=//evil.example",
        ] {
            assert_eq!(safe_redirect(good), good, "{good:?}");
        }
        // Too long for the login cookie: the path alone, or `/`.
        let query = format!("?left={}", "x".repeat(2100));
        assert_eq!(safe_redirect(&format!("/explore{query}")), "/explore");
        assert_eq!(safe_redirect(&format!("/{}", "a".repeat(2100))), "/");
        assert_eq!(safe_redirect(&format!("//evil.example{query}")), "/");
        // A fragment the browser wrote (the page at /login adds it): kept, encoded as the browser would;
        // never a way off the site.
        for (rd, kept) in [
            ("/d?x=1#/alerts?a=b", "/d?x=1#/alerts?a=b"),
            ("/d?x=1#/q?load=100%", "/d?x=1#/q?load=100%"),
            ("/d#a\\b", "/d#a\\b"),
            ("/d#a b", "/d#a%20b"),
            ("//evil.example#/x", "/"),
            ("/\\evil.example#/x", "/"),
            ("/%2F%2Fevil.example#x%", "/"),
            ("#//evil.example", "/"),
        ] {
            assert_eq!(safe_redirect(rd), kept, "{rd:?}");
        }
    }

    #[test]
    fn query_split() {
        assert_eq!(query_only("/cb?code=1&state=2#frag"), "code=1&state=2");
        assert_eq!(query_only("/cb"), "");
        assert_eq!(path_only("/cb?x"), "/cb");
    }

    /// Found by mutation testing: with no bypass path configured (`bypass_paths: []`), nothing is a
    /// bypass; and a true bypass path is not one "in text only" (where a client's bearer is refused).
    #[test]
    fn no_bypass_paths_bypass_nothing_and_a_true_bypass_is_not_text_only() {
        for t in ["/", "/healthz", "/admin", "/healthz/..%2Fadmin"] {
            assert!(!is_bypass(&[], &mut Target::new(t)), "{t}");
            assert!(!bypass_in_text_only(&[], &mut Target::new(t)), "{t}");
        }
        let b = vec!["/healthz".to_string()];
        for t in ["/healthz", "/healthz/live", "/healthz?x=1"] {
            assert!(is_bypass(&b, &mut Target::new(t)), "{t}");
            assert!(!bypass_in_text_only(&b, &mut Target::new(t)), "{t}");
        }
        for t in [
            "/healthz/..%2Fadmin",
            "/healthz/../admin",
            "/healthz/..;/admin",
        ] {
            assert!(!is_bypass(&b, &mut Target::new(t)), "{t}");
            assert!(bypass_in_text_only(&b, &mut Target::new(t)), "{t}");
        }
        assert!(!bypass_in_text_only(&b, &mut Target::new("/admin")));
    }
}
