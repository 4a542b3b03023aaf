//! `application/x-www-form-urlencoded`: token request bodies, query strings and back-channel logout posts.
//!
//! Byte for byte what the WHATWG URL standard (and the `url` crate's `form_urlencoded`) produce and accept.

use alloc::string::String;
use alloc::vec::Vec;

/// Appends `s` form-encoded: ASCII letters, digits and `*-._` stay, space becomes `+`, every other byte
/// `%XX` (upper-case hex).
pub fn encode_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => push_escape(out, b),
        }
    }
}

/// `s` form-encoded.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_into(&mut out, s);
    out
}

/// Appends `key=value` to a form body, after a `&` unless the body is still empty.
pub fn append_pair(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    encode_into(out, key);
    out.push('=');
    encode_into(out, value);
}

/// The body of `pairs`, in order.
pub fn serialize(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        append_pair(&mut out, k, v);
    }
    out
}

/// The `(name, value)` pairs of a form body or query string, in order: split on `&` (empty parts are
/// skipped), then at the first `=` (none: the value is empty); `+` is a space, `%XX` a byte, and bytes that
/// are not UTF-8 become U+FFFD. Never fails.
pub fn parse(input: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    input
        .split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &part[part.len()..]),
            };
            (decode(name), decode(value))
        })
}

fn decode(input: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        i += 1;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => match (
                input.get(i).copied().and_then(hex),
                input.get(i + 1).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    bytes.push((hi << 4) | lo);
                    i += 2;
                }
                // Not an escape: the `%` stays as it is.
                _ => bytes.push(b'%'),
            },
            _ => bytes.push(b),
        }
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => lossy(e.as_bytes()),
    }
}

/// `bytes` as text, each sequence that is not UTF-8 replaced by U+FFFD: what `String::from_utf8_lossy`
/// gives (its sequences are the ones `Utf8Error::error_len` measures), without a second decoder in the module.
pub(crate) fn lossy(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match core::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                // SAFETY: `from_utf8` found the bytes before `valid_up_to` valid.
                out.push_str(unsafe { core::str::from_utf8_unchecked(good) });
                out.push(char::REPLACEMENT_CHARACTER);
                // `None`: the input ends inside a sequence, which is all one replacement.
                bytes = bad
                    .get(e.error_len().unwrap_or(bad.len())..)
                    .unwrap_or_default();
            }
        }
    }
}

/// `%XX` with upper-case hex digits.
pub(crate) fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The first `max` characters of `s` that `keep` takes, which must take ASCII bytes only (a character
/// beyond ASCII, whose bytes are none of them, is left out as a whole): what
/// `s.chars().filter(..).take(max).collect()` gives, in one copy of the loop for every caller.
pub(crate) fn keep_ascii(s: &str, max: usize, keep: fn(u8) -> bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if out.len() == max {
            break;
        }
        if keep(b) {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_is_from_utf8_lossy() {
        let pieces: [&[u8]; 12] = [
            b"a",
            b"\xc3\xa9",
            b"\xc3",
            b"\xe2\x82",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98",
            b"\xf0\x9f\x98\x80",
            b"\xff",
            b"\x80",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
        ];
        // Every sequence of up to three pieces.
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = inputs
                .iter()
                .flat_map(|i| pieces.iter().map(move |p| [i.as_slice(), p].concat()))
                .collect();
            inputs.extend(longer);
        }
        for input in inputs {
            assert_eq!(lossy(&input), String::from_utf8_lossy(&input), "{input:x?}");
        }
    }

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s.as_bytes()).collect()
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn encodes_like_form_urlencoded() {
        assert_eq!(encode("azAZ09*-._"), "azAZ09*-._");
        assert_eq!(encode("a b+c"), "a+b%2Bc");
        assert_eq!(
            encode("s3cret:with/odd&chars=~!'()"),
            "s3cret%3Awith%2Fodd%26chars%3D%7E%21%27%28%29"
        );
        assert_eq!(encode("é\n%"), "%C3%A9%0A%25");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn serializes_pairs_in_order() {
        assert_eq!(
            serialize(&[("grant_type", "authorization_code"), ("code", "a&b c")]),
            "grant_type=authorization_code&code=a%26b+c"
        );
        assert_eq!(serialize(&[]), "");
        let mut body = String::new();
        append_pair(&mut body, "", "");
        append_pair(&mut body, "k", "v");
        assert_eq!(body, "=&k=v");
    }

    #[test]
    fn parses_like_form_urlencoded() {
        assert_eq!(
            pairs("a=1&b=x+y&c=%41%2b%zz%4&d&&e=f=g&=h"),
            [
                p("a", "1"),
                p("b", "x y"),
                p("c", "A+%zz%4"),
                p("d", ""),
                p("e", "f=g"),
                p("", "h")
            ]
        );
        assert_eq!(pairs(""), []);
        assert_eq!(pairs("&&"), []);
        assert_eq!(pairs("k=%C3%A9%FF"), [p("k", "é\u{fffd}")]);
        assert_eq!(pairs("%"), [p("%", "")]);
        assert_eq!(pairs("a=%2"), [p("a", "%2")]);
    }

    #[test]
    fn round_trips() {
        let nasty = "a b&c=d+e%f/é\u{0}\u{7f}~";
        let body = serialize(&[(nasty, nasty), ("x", "")]);
        assert_eq!(pairs(&body), [p(nasty, nasty), p("x", "")]);
    }
}
