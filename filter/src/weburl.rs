//! Absolute `http`/`https` URLs: the issuer, the IdP's endpoints and the redirect targets built from them.
//!
//! A deliberately small parser instead of the `url` crate (whose IDNA and Unicode normalisation tables
//! would be most of its size in the module). What it accepts serialises like the WHATWG URL standard:
//! scheme and host lower-cased, a default port dropped, an empty path made `/`, `.` and `..` segments
//! resolved, and characters that may not appear raw percent-encoded. What it does not support it refuses
//! instead of guessing: other schemes, user names and passwords, non-ASCII hosts (write the `xn--` form),
//! spaces, control characters, backslashes before the query, and numeric hosts that are not plain
//! dotted-quad IPv4.

use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;

use core::fmt;

use crate::form;

/// An absolute `http` or `https` URL with a host, in normalised form.
#[derive(Clone, PartialEq, Eq)]
pub struct WebUrl {
    /// `scheme://host[:port]path[?query][#fragment]`.
    serialization: String,
    https: bool,
    /// Where the host ends (`:port` or the path starts).
    host_end: usize,
    /// Only when it is not the scheme's default.
    port: Option<u16>,
    path_start: usize,
    /// Index of the `?`.
    query_start: Option<usize>,
    /// Index of the `#`.
    fragment_start: Option<usize>,
}

/// Why a string is not an absolute http(s) URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    /// No `scheme://` in front: a relative reference or not a URL at all.
    NotAbsolute,
    /// A scheme other than `http` or `https`.
    Scheme,
    /// A space or an ASCII control character anywhere.
    Character,
    /// A backslash in the authority or path (browsers read it as `/`; we don't guess).
    Backslash,
    /// `user:password@` before the host.
    Userinfo,
    EmptyHost,
    /// A host with characters outside ASCII (IDNA is not supported).
    NonAsciiHost,
    /// A host with characters no DNS name or IP address has, or a numeric host that is not an IP address.
    BadHost,
    /// A port that is empty, not a number, 0 or above 65535.
    BadPort,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "not an absolute URL",
            Self::Scheme => "must be an http or https URL",
            Self::Character => "must not contain spaces or control characters",
            Self::Backslash => "must not contain a backslash before the query",
            Self::Userinfo => "must not contain a user name or password",
            Self::EmptyHost => "must have a host",
            Self::NonAsciiHost => {
                "the host must be ASCII (write an internationalised name in its xn-- form)"
            }
            Self::BadHost => "the host is not a valid domain name or IP address",
            Self::BadPort => "the port must be a number from 1 to 65535",
        })
    }
}

impl core::error::Error for UrlError {}

impl WebUrl {
    /// Parses an absolute `http`/`https` URL. Never panics; anything unsupported is an error.
    pub fn parse(input: &str) -> Result<WebUrl, UrlError> {
        if input.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::Character);
        }
        let (scheme, rest) = input.split_once(':').ok_or(UrlError::NotAbsolute)?;
        let valid_scheme = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(UrlError::NotAbsolute);
        }
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(UrlError::Scheme);
        };
        let rest = rest.strip_prefix("//").ok_or(UrlError::NotAbsolute)?;

        // The fragment starts at the first `#`, the query at the first `?` before it.
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('\\') {
            return Err(UrlError::Backslash);
        }
        let (authority, path) = split_at(rest, rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(UrlError::Userinfo);
        }
        let (host, port) = split_port(authority)?;
        let host = parse_host(host)?;
        let default = if https { 443 } else { 80 };
        let port = port.filter(|p| *p != default);
        Ok(Self::assemble(https, &host, port, path, query, fragment))
    }

    /// Puts the parts together, normalising the path and percent-encoding what may not appear raw.
    /// `host` must already be valid.
    fn assemble(
        https: bool,
        host: &str,
        port: Option<u16>,
        path: &str,
        query: Option<&str>,
        fragment: Option<&str>,
    ) -> WebUrl {
        let mut s = String::with_capacity(
            16 + host.len() + path.len() + query.map_or(0, str::len) + fragment.map_or(0, str::len),
        );
        s.push_str(if https { "https://" } else { "http://" });
        s.push_str(host);
        let host_end = s.len();
        if let Some(p) = port {
            s.push(':');
            s.push_str(&format!("{}", u32::from(p)));
        }
        let path_start = s.len();
        push_path(&mut s, path);
        let query_start = query.map(|q| {
            let at = s.len();
            s.push('?');
            push_encoded(&mut s, q, |b| {
                matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'')
            });
            at
        });
        let fragment_start = fragment.map(|f| {
            let at = s.len();
            s.push('#');
            push_encoded(&mut s, f, |b| matches!(b, b'"' | b'<' | b'>' | b'`'));
            at
        });
        WebUrl {
            serialization: s,
            https,
            host_end,
            port,
            path_start,
            query_start,
            fragment_start,
        }
    }

    /// The whole URL, normalised.
    pub fn as_str(&self) -> &str {
        &self.serialization
    }

    /// A part of the serialization. Its bounds are ASCII delimiters found by `parse`, so this is never
    /// empty for want of a char boundary; `get` only keeps str's slicing panic and its 4 KB of message
    /// formatting out of the module.
    fn cut(&self, from: usize, to: usize) -> &str {
        self.serialization.get(from..to).unwrap_or_default()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        if self.https { "https" } else { "http" }
    }

    /// Lower-case; an IPv6 address in brackets.
    pub fn host(&self) -> &str {
        self.cut(self.host_start(), self.host_end)
    }

    /// The port when the URL names one other than the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port a connection goes to: the explicit one, else 443 for https and 80 for http.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }

    /// `host` or `host:port`, as in an HTTP `:authority`.
    pub fn authority(&self) -> &str {
        self.cut(self.host_start(), self.path_start)
    }

    /// Starts with `/`; never empty.
    pub fn path(&self) -> &str {
        let end = self
            .query_start
            .or(self.fragment_start)
            .unwrap_or(self.serialization.len());
        self.cut(self.path_start, end)
    }

    /// Without the `?`; `Some("")` for a bare `?`.
    pub fn query(&self) -> Option<&str> {
        let end = self.fragment_start.unwrap_or(self.serialization.len());
        self.query_start.map(|q| self.cut(q + 1, end))
    }

    /// Without the `#`.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment_start
            .map(|f| self.cut(f + 1, self.serialization.len()))
    }

    /// The request target of an HTTP request for this URL: path and `?query`.
    pub fn path_and_query(&self) -> &str {
        let end = self.fragment_start.unwrap_or(self.serialization.len());
        self.cut(self.path_start, end)
    }

    /// The same URL with another path (normalised and encoded like a parsed one); query and fragment stay.
    pub fn with_path(&self, path: &str) -> WebUrl {
        Self::assemble(
            self.https,
            self.host(),
            self.port,
            path,
            self.query(),
            self.fragment(),
        )
    }

    /// Appends `key=value`, form-encoded, to the query (after a `&` when it already has parameters).
    pub fn append_query_pair(&mut self, key: &str, value: &str) {
        let fragment = self.fragment_start.map(|f| self.serialization.split_off(f));
        match self.query_start {
            Some(q) if self.serialization.len() > q + 1 => self.serialization.push('&'),
            Some(_) => {}
            None => {
                self.query_start = Some(self.serialization.len());
                self.serialization.push('?');
            }
        }
        form::encode_into(&mut self.serialization, key);
        self.serialization.push('=');
        form::encode_into(&mut self.serialization, value);
        if let Some(f) = fragment {
            self.fragment_start = Some(self.serialization.len());
            self.serialization.push_str(&f);
        }
    }

    fn host_start(&self) -> usize {
        if self.https { 8 } else { 7 }
    }
}

impl fmt::Display for WebUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialization)
    }
}

impl fmt::Debug for WebUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebUrl").field(&self.serialization).finish()
    }
}

impl core::str::FromStr for WebUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `s` split at byte `at`, which the caller found at an ASCII delimiter (or the end); past the end or
/// off a char boundary, all of `s` and nothing. `str::split_at` would panic there instead, and its panic
/// message brings 4 KB of formatting code into the module.
pub fn split_at(s: &str, at: usize) -> (&str, &str) {
    s.split_at_checked(at).unwrap_or((s, ""))
}

/// `s` split around its last `b` (an ASCII byte), as `str::rsplit_once` with a `char`: a byte search
/// rather than `str`'s reverse pattern searcher, whose `memrchr` and searcher took 800 bytes of the module.
pub fn rsplit_once(s: &str, b: u8) -> Option<(&str, &str)> {
    let at = s.bytes().rposition(|c| c == b)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// `host[:port]` (the host possibly a bracketed IPv6 address) -> host text and port.
fn split_port(authority: &str) -> Result<(&str, Option<u16>), UrlError> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(UrlError::BadHost)? + 1;
        let (host, rest) = split_at(authority, end);
        if rest.is_empty() {
            (host, None)
        } else {
            (host, Some(rest.strip_prefix(':').ok_or(UrlError::BadHost)?))
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::BadPort);
            }
            // Digits only, so the only failure left is a number above 65535.
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(UrlError::BadPort),
                Ok(n) => Some(n),
            }
        }
    };
    Ok((host, port))
}

/// A host as it is serialised: a lower-case DNS name, a dotted-quad IPv4 or a bracketed, RFC 5952 IPv6.
#[inline(never)]
fn parse_host(host: &str) -> Result<String, UrlError> {
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(UrlError::BadHost)?;
        let pieces = parse_ipv6(inner).ok_or(UrlError::BadHost)?;
        return Ok(ipv6_host(pieces));
    }
    if !host.is_ascii() {
        return Err(UrlError::NonAsciiHost);
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(UrlError::BadHost);
    }
    let host = host.to_ascii_lowercase();
    if ends_in_a_number(&host) {
        // WHATWG reads such a host as IPv4, including forms like `127.1` or `0x7f.1`; only the plain
        // dotted quad is accepted here, so no host means something other than it says.
        let quad = host.strip_suffix('.').unwrap_or(&host);
        parse_ipv4(quad).ok_or(UrlError::BadHost)?;
        // Digits without leading zeros: the quad is written as it was given.
        return Ok(quad.to_string());
    }
    Ok(host)
}

/// `[address]` as the URL standard writes it: lower-case hex pieces, the first longest run of two or more
/// zero pieces as `::`, never an embedded IPv4 part (`std` writes `::ffff:1.2.3.4`).
fn ipv6_host(pieces: [u16; 8]) -> String {
    // (start, len) of the first longest run of zero pieces.
    let mut best = (0, 0);
    let mut i = 0;
    while i < pieces.len() {
        let run = pieces[i..].iter().take_while(|p| **p == 0).count();
        if run > best.1 {
            best = (i, run);
        }
        i += run.max(1);
    }
    let mut out = String::from("[");
    let mut i = 0;
    while i < pieces.len() {
        if best.1 >= 2 && i == best.0 {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += best.1;
            continue;
        }
        out.push_str(&format!("{:x}", u32::from(pieces[i])));
        i += 1;
        if i < pieces.len() {
            out.push(':');
        }
    }
    out.push(']');
    out
}

/// A dotted quad (`1.2.3.4`: four decimal octets up to 255, no leading zeros), as std's `Ipv4Addr`
/// reads it; std's parser of IP addresses cost the module 3.5 KB.
pub(crate) fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for slot in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = u8::try_from(p.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0'))).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An IPv6 address as std's `Ipv6Addr` reads it: eight groups of one to four hex digits, one `::` for a
/// run of zero groups, and optionally a dotted quad for the last two.
fn parse_ipv6(s: &str) -> Option<[u16; 8]> {
    fn groups(s: &str, out: &mut Vec<u16>, quad_ok: bool) -> Option<()> {
        if s.is_empty() {
            return Some(());
        }
        let mut parts = s.split(':').peekable();
        while let Some(p) = parts.next() {
            if quad_ok && parts.peek().is_none() && p.contains('.') {
                let [a, b, c, d] = parse_ipv4(p)?;
                out.push(u16::from_be_bytes([a, b]));
                out.push(u16::from_be_bytes([c, d]));
            } else {
                if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u16::from_str_radix(p, 16).ok()?);
            }
        }
        Some(())
    }
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    // A byte search: a `&str` pattern would bring core's two-way searcher into the module for this alone.
    let compressed = match s.as_bytes().windows(2).position(|w| w == b"::") {
        Some(i) => {
            groups(s.get(..i)?, &mut head, false)?;
            groups(s.get(i + 2..)?, &mut tail, true)?;
            true
        }
        None => {
            groups(s, &mut head, true)?;
            false
        }
    };
    let n = head.len() + tail.len();
    if (compressed && n > 7) || (!compressed && n != 8) {
        return None;
    }
    let mut out = [0u16; 8];
    out.get_mut(..head.len())?.copy_from_slice(&head);
    out.get_mut(8 - tail.len()..)?.copy_from_slice(&tail);
    Some(out)
}

/// The WHATWG "ends in a number" check: the last label (ignoring one trailing dot) is decimal or `0x` hex.
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = rsplit_once(host, b'.').map_or(host, |(_, l)| l);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Appends `path` as an absolute path with `.` and `..` segments resolved (also when written `%2e`) and
/// bytes that may not appear raw in a path percent-encoded.
fn push_path(out: &mut String, path: &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        if is_double_dot(seg) {
            segments.pop();
            if last {
                segments.push("");
            }
        } else if is_single_dot(seg) {
            if last {
                segments.push("");
            }
        } else {
            segments.push(seg);
        }
    }
    for seg in segments {
        out.push('/');
        push_encoded(out, seg, |b| {
            matches!(
                b,
                b'"' | b'#' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}' | b'\\'
            )
        });
    }
}

fn is_single_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_double_dot(seg: &str) -> bool {
    ["..", ".%2e", "%2e.", "%2e%2e"]
        .iter()
        .any(|d| seg.eq_ignore_ascii_case(d))
}

/// Appends `s`, percent-encoding spaces, controls, non-ASCII bytes and those `extra` picks.
fn push_encoded(out: &mut String, s: &str, extra: impl Fn(u8) -> bool) {
    if !s.bytes().any(|b| b <= b' ' || b >= 0x7f || extra(b)) {
        out.push_str(s);
        return;
    }
    for &b in s.as_bytes() {
        if b <= b' ' || b >= 0x7f || extra(b) {
            form::push_escape(out, b);
        } else {
            out.push(char::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_addresses_read_as_std_reads_them() {
        use core::net::{Ipv4Addr, Ipv6Addr};
        let quads = [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "",
            ".",
            "1.2.3.4.",
            "a.b.c.d",
            "1.2.3.-4",
            "1.2.3.+4",
            "1000.1.1.1",
            "127.0.0.1",
            "0.00.0.0",
            "1.2.3.04",
        ];
        for q in quads {
            let std = q.parse::<Ipv4Addr>().ok().map(|a| a.octets());
            assert_eq!(super::parse_ipv4(q), std, "{q:?}");
        }
        let mut sixes: Vec<String> = [
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1::8",
            "1:2:3:4:5:6::7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            ":::",
            "1:::2",
            "::1::",
            ":1::",
            "1::2:",
            "12345::",
            "g::",
            "::ffff:1.2.3.4",
            "1.2.3.4",
            "::1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::1.2.3.4:5",
            "1.2.3.4::",
            "::01.2.3.4",
            "fe80::1%eth0",
            "00AB:0:0:0:0:0:0:0",
            "0000:0000:0000:0000:0000:0000:0000:0000",
            "::ffff:1.2.3",
            ":",
            "",
            "1:",
            ":1",
            "::+1",
            "::0x1",
            "1:2:3:4:5::1.2.3.4",
            "1:2:3:4:5:6::1.2.3.4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every placement of `::` in a full address, and each address cut short at every byte.
        let full = "a:b:c:d:e:f:1:2";
        for i in 0..=full.len() {
            sixes.push(full[..i].to_string());
            sixes.push(format!("{}::{}", &full[..i], &full[i..]));
        }
        for s in &sixes {
            let std = s.parse::<Ipv6Addr>().ok().map(|a| a.segments());
            assert_eq!(super::parse_ipv6(s), std, "{s:?}");
        }
    }

    use super::*;

    fn url(s: &str) -> WebUrl {
        WebUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn norm(s: &str) -> String {
        url(s).as_str().to_string()
    }

    #[test]
    fn parses_the_parts() {
        let u = url("https://idp.example.com/realms/x/protocol?a=1&b=2");
        assert_eq!(u.scheme(), "https");
        assert_eq!(u.host(), "idp.example.com");
        assert_eq!(u.port(), None);
        assert_eq!(u.port_or_default(), 443);
        assert_eq!(u.authority(), "idp.example.com");
        assert_eq!(u.path(), "/realms/x/protocol");
        assert_eq!(u.query(), Some("a=1&b=2"));
        assert_eq!(u.fragment(), None);
        assert_eq!(u.path_and_query(), "/realms/x/protocol?a=1&b=2");
        assert_eq!(u.to_string(), u.as_str());
        assert_eq!(format!("{u:?}"), format!("WebUrl({:?})", u.as_str()));

        let u = url("http://idp:8080/t#frag");
        assert_eq!(u.scheme(), "http");
        assert_eq!(u.port(), Some(8080));
        assert_eq!(u.port_or_default(), 8080);
        assert_eq!(u.authority(), "idp:8080");
        assert_eq!(u.path(), "/t");
        assert_eq!(u.query(), None);
        assert_eq!(u.fragment(), Some("frag"));
        assert_eq!(u.path_and_query(), "/t");
        assert_eq!(url("http://idp").port_or_default(), 80);
    }

    #[test]
    fn normalises_like_the_url_standard() {
        for (input, want) in [
            ("https://idp.example.com", "https://idp.example.com/"),
            ("https://idp.example.com/", "https://idp.example.com/"),
            (
                "HTTPS://IDP.Example.COM/Realms/X",
                "https://idp.example.com/Realms/X",
            ),
            ("HtTp://h/", "http://h/"),
            ("https://h:443/a", "https://h/a"),
            ("http://h:80/a", "http://h/a"),
            ("https://h:80/a", "https://h:80/a"),
            ("http://h:443/a", "http://h:443/a"),
            ("https://h:0008443/a", "https://h:8443/a"),
            ("https://h?q", "https://h/?q"),
            ("https://h#f", "https://h/#f"),
            ("https://h/?", "https://h/?"),
            ("https://h/a?b?c#d#e", "https://h/a?b?c#d#e"),
            ("https://h/a/./b/../c", "https://h/a/c"),
            ("https://h/a/b/..", "https://h/a/"),
            ("https://h/a/.", "https://h/a/"),
            ("https://h/../../a", "https://h/a"),
            ("https://h/a/%2E%2e/b/%2e", "https://h/b/"),
            ("https://h//a//", "https://h//a//"),
            ("https://h/a..b/.c", "https://h/a..b/.c"),
            ("https://h/a?x=/../", "https://h/a?x=/../"),
            ("https://h/é\"<>`{}", "https://h/%C3%A9%22%3C%3E%60%7B%7D"),
            ("https://h/?q=é\"<>'`", "https://h/?q=%C3%A9%22%3C%3E%27`"),
            ("https://h/#é\"<>`'", "https://h/#%C3%A9%22%3C%3E%60'"),
            ("https://h/%zz%41?%zz", "https://h/%zz%41?%zz"),
            ("https://h/a?x=\\", "https://h/a?x=\\"),
            ("http://my_idp-1.local./", "http://my_idp-1.local./"),
        ] {
            assert_eq!(norm(input), want, "{input}");
            // Normalised is a fixed point.
            assert_eq!(norm(want), want, "{want}");
        }
    }

    #[test]
    fn ip_addresses() {
        let u = url("http://[::1]:8080/x");
        assert_eq!(u.host(), "[::1]");
        assert_eq!(u.authority(), "[::1]:8080");
        assert_eq!(u.port_or_default(), 8080);
        assert_eq!(u.as_str(), "http://[::1]:8080/x");
        assert_eq!(
            norm("https://[2001:DB8:0:0:0:0:0:1]"),
            "https://[2001:db8::1]/"
        );
        for (ip, want) in [
            ("::", "[::]"),
            ("::1", "[::1]"),
            ("1::", "[1::]"),
            ("1:0:0:2:0:0:0:3", "[1:0:0:2::3]"),
            ("1:0:0:2:0:0:3:4", "[1::2:0:0:3:4]"),
            ("1:2:3:4:5:6:7:0", "[1:2:3:4:5:6:7:0]"),
            ("1:0:3:4:5:6:7:8", "[1:0:3:4:5:6:7:8]"),
            ("::ffff:1.2.3.4", "[::ffff:102:304]"),
            ("00AB:0:0:0:0:0:0:0", "[ab::]"),
        ] {
            assert_eq!(url(&format!("http://[{ip}]")).host(), want, "{ip}");
        }
        assert_eq!(url("https://[fe80::1]").port(), None);
        assert_eq!(
            norm("http://127.0.0.1:9000/jwks"),
            "http://127.0.0.1:9000/jwks"
        );
        assert_eq!(norm("http://10.0.0.1./"), "http://10.0.0.1/");
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        for (input, want) in [
            ("", UrlError::NotAbsolute),
            ("/oauth2/token", UrlError::NotAbsolute),
            ("idp.example.com/token", UrlError::NotAbsolute),
            ("//idp.example.com/token", UrlError::NotAbsolute),
            ("https:idp.example.com", UrlError::NotAbsolute),
            ("https:/idp.example.com", UrlError::NotAbsolute),
            ("1https://h/", UrlError::NotAbsolute),
            (":", UrlError::NotAbsolute),
            ("ftp://idp.example.com/t", UrlError::Scheme),
            ("file:///etc/passwd", UrlError::Scheme),
            ("javascript:alert(1)", UrlError::Scheme),
            ("httpx://h/", UrlError::Scheme),
            ("not a url", UrlError::Character),
            (" https://h/", UrlError::Character),
            ("https://h/ ", UrlError::Character),
            ("https://h/a b", UrlError::Character),
            ("https://h/a\tb", UrlError::Character),
            ("https://h/\n", UrlError::Character),
            ("https://h/\0", UrlError::Character),
            ("https://h/\u{7f}", UrlError::Character),
            ("https://h\\evil/", UrlError::Backslash),
            ("https://h/a\\b", UrlError::Backslash),
            ("https://user@h/", UrlError::Userinfo),
            ("https://user:pw@h/", UrlError::Userinfo),
            ("https://good.example@evil.example/", UrlError::Userinfo),
            ("https://@h/", UrlError::Userinfo),
            ("https:///path", UrlError::EmptyHost),
            ("https://", UrlError::EmptyHost),
            ("https://?q", UrlError::EmptyHost),
            ("https://:443/", UrlError::EmptyHost),
            ("https://bücher.example/", UrlError::NonAsciiHost),
            ("https://ｅxample.com/", UrlError::NonAsciiHost),
            ("https://h%41/", UrlError::BadHost),
            ("https://h!/", UrlError::BadHost),
            ("https://h*/", UrlError::BadHost),
            ("https://[::1/", UrlError::BadHost),
            ("https://[::1]x/", UrlError::BadHost),
            ("https://[not-ip]/", UrlError::BadHost),
            ("https://[fe80::1%25eth0]/", UrlError::BadHost),
            ("https://::1/", UrlError::BadPort),
            ("https://127.1/", UrlError::BadHost),
            ("https://0x7f.0.0.1/", UrlError::BadHost),
            ("https://example.0x10/", UrlError::BadHost),
            ("https://010.0.0.1/", UrlError::BadHost),
            ("https://256.0.0.1/", UrlError::BadHost),
            ("https://1.2.3.4.5/", UrlError::BadHost),
            ("https://h:/", UrlError::BadPort),
            ("https://h:x/", UrlError::BadPort),
            ("https://h:+1/", UrlError::BadPort),
            ("https://h:-1/", UrlError::BadPort),
            ("https://h:0/", UrlError::BadPort),
            ("https://h:65536/", UrlError::BadPort),
            ("https://h:99999999999999999999/", UrlError::BadPort),
            ("https://h:80:80/", UrlError::BadPort),
            ("https://[::1]:/", UrlError::BadPort),
            ("https://[::1]:65536/", UrlError::BadPort),
        ] {
            assert_eq!(WebUrl::parse(input), Err(want), "{input:?}");
        }
        assert_eq!(url("https://h:65535/").port(), Some(65535));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let pieces = [
            "", "h", "https", "http", ":", "//", "/", "?", "#", "[", "]", "@", "%", "%2e", ".",
            "..", "::1", "8080", "é", "\\", "0x", "1.2",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let s = format!("{a}{b}{c}{d}");
                        if let Ok(u) = WebUrl::parse(&s) {
                            assert_eq!(WebUrl::parse(u.as_str()), Ok(u.clone()), "{s}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn appends_form_encoded_query_pairs() {
        let mut u = url("https://idp.example.com/authorize");
        u.append_query_pair("response_type", "code");
        u.append_query_pair("redirect_uri", "https://app/cb?x=1 2");
        assert_eq!(
            u.as_str(),
            "https://idp.example.com/authorize?response_type=code&redirect_uri=https%3A%2F%2Fapp%2Fcb%3Fx%3D1+2"
        );
        assert_eq!(
            u.query(),
            Some("response_type=code&redirect_uri=https%3A%2F%2Fapp%2Fcb%3Fx%3D1+2")
        );

        let mut u = url("https://idp.example.com/logout?tenant=a#top");
        u.append_query_pair("client_id", "my app");
        assert_eq!(
            u.as_str(),
            "https://idp.example.com/logout?tenant=a&client_id=my+app#top"
        );
        assert_eq!(u.fragment(), Some("top"));
        assert_eq!(u.path_and_query(), "/logout?tenant=a&client_id=my+app");

        let mut u = url("https://h/x?");
        u.append_query_pair("a", "");
        assert_eq!(u.as_str(), "https://h/x?a=");
        assert_eq!(WebUrl::parse(u.as_str()), Ok(u));
    }

    #[test]
    fn with_path_replaces_the_path_only() {
        let u = url("https://IdP:8443/realms/x/");
        let d = u.with_path("/realms/x/.well-known/openid-configuration");
        assert_eq!(
            d.as_str(),
            "https://idp:8443/realms/x/.well-known/openid-configuration"
        );
        assert_eq!(d.port(), Some(8443));
        assert_eq!(
            url("https://h/a?q#f").with_path("b c/../d?#").as_str(),
            "https://h/d%3F%23?q#f"
        );
    }

    /// Found by mutation testing: a hex last label with a letter digit (`0x7f000001`, 127.0.0.1 to a
    /// WHATWG parser) was not proven read as a number, and a host whose last labels are empty (`a..`) was
    /// not proven read as a name, as the URL standard's "ends in a number" check reads them.
    #[test]
    fn ends_in_a_number_as_the_url_standard_checks() {
        for host in [
            "0x7f000001",
            "example.0xff",
            "a.0xAbC",
            "0x",
            "1.2.3.4",
            "1.2.3.4.",
        ] {
            assert!(super::ends_in_a_number(host), "{host}");
        }
        for host in ["a..", ".", "a.b.", "0xg", "example.com", "x0x10"] {
            assert!(!super::ends_in_a_number(host), "{host}");
        }
        assert_eq!(WebUrl::parse("https://0x7f000001/"), Err(UrlError::BadHost));
        assert_eq!(
            WebUrl::parse("https://example.0xff/"),
            Err(UrlError::BadHost)
        );
    }

    /// Found by mutation testing: `.%2e` was not proven a `..` segment, nor an IPv6 group of five digits
    /// (`00001`, a `u16` all the same) refused as std refuses it.
    #[test]
    fn every_spelling_of_dot_dot_and_no_five_digit_group() {
        for dots in ["..", ".%2e", "%2e.", "%2E%2e", ".%2E"] {
            assert_eq!(
                norm(&format!("https://h/a/b/{dots}/c")),
                "https://h/a/c",
                "{dots}"
            );
        }
        for ip in ["00001::1", "1:2:3:4:5:6:7:00008", "::00001"] {
            assert_eq!(super::parse_ipv6(ip), None, "{ip}");
            assert!(ip.parse::<core::net::Ipv6Addr>().is_err(), "{ip}");
            assert_eq!(
                WebUrl::parse(&format!("https://[{ip}]/")),
                Err(UrlError::BadHost),
                "{ip}"
            );
        }
    }
}
