//! Base64 (RFC 4648) in the few forms the filter reads and writes.
//!
//! The `base64` crate's general engine took 6.4 KB of the module for what these functions do in well
//! under one; the tests check them against that crate, byte for byte and error for error.

use alloc::string::String;
use alloc::vec::Vec;

const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64url without padding: sealed cookies, PKCE, state and nonce.
pub fn encode_url(bytes: &[u8]) -> String {
    encode(bytes, URL, false)
}

/// Standard base64 with padding (HTTP Basic credentials).
pub fn encode_standard(bytes: &[u8]) -> String {
    encode(bytes, STANDARD, true)
}

/// Strict base64url: no padding, unused bits zero, so each byte string has one encoding only (a sealed
/// cookie or a JWS segment spelled another way is refused, not read).
pub fn decode_url(s: &str) -> Option<Vec<u8>> {
    decode(s.as_bytes(), true, false)
}

/// Base64url or (`url` false) standard base64, where `=` padding may be present (at most up to a
/// multiple of four characters) or not: JWK members (unpadded by spec, but some IdPs pad) and
/// configured keys.
pub fn decode_padded(s: &str, url: bool) -> Option<Vec<u8>> {
    decode(s.as_bytes(), url, true)
}

fn encode(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(alphabet[(n >> (18 - 6 * i)) as usize & 63]);
        }
        if pad {
            out.resize(out.len() + 3 - group.len(), b'=');
        }
    }
    // Only alphabet bytes and `=`: ASCII.
    String::from_utf8(out).unwrap_or_default()
}

fn decode(s: &[u8], url: bool, padded: bool) -> Option<Vec<u8>> {
    let data = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let rest = data.len() % 4;
    // One character is not a byte; padding only completes a last group of two or three.
    if rest == 1
        || (data.len() < s.len() && (!padded || rest == 0 || s.len() - data.len() > 4 - rest))
    {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in data {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' if url => 62,
            b'_' if url => 63,
            b'+' if !url => 62,
            b'/' if !url => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // The bits of the last character that make no byte must be zero.
    (acc & ((1 << bits) - 1) == 0).then_some(out)
}

/// `bytes` in lower-case hex (the byte loop rather than `format!("{:02x}")` per byte, or `{:016x}`).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        for n in [b >> 4, b & 15] {
            out.push(char::from(b"0123456789abcdef"[usize::from(n)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD as B_STANDARD, URL_SAFE_NO_PAD};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

    use super::*;

    const INDIFFERENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const URL_INDIFFERENT: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, INDIFFERENT);
    const STANDARD_INDIFFERENT: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::STANDARD, INDIFFERENT);

    #[test]
    fn encodes_as_the_base64_crate_does() {
        let bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
        for start in 0..7 {
            for len in 0..80 {
                let b = &bytes[start * 31..start * 31 + len];
                assert_eq!(encode_url(b), URL_SAFE_NO_PAD.encode(b));
                assert_eq!(encode_standard(b), B_STANDARD.encode(b));
            }
        }
    }

    /// Every string of up to six characters over an alphabet holding each kind of character the
    /// decoders treat apart: both alphabets' letters, digits, their own two, `=`, others, and a
    /// character whose low bits are set (so unused trailing bits are exercised).
    #[test]
    fn decodes_and_refuses_as_the_base64_crate_does() {
        let chars = b"AQ/9-_+=g!";
        let mut checked = 0;
        let mut s = Vec::new();
        for len in 0..=6u32 {
            for mut n in 0..(chars.len() as u32).pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(chars[(n % chars.len() as u32) as usize]);
                    n /= chars.len() as u32;
                }
                let text = core::str::from_utf8(&s).unwrap();
                assert_eq!(
                    decode_url(text),
                    URL_SAFE_NO_PAD.decode(text).ok(),
                    "{text}"
                );
                assert_eq!(
                    decode_padded(text, true),
                    URL_INDIFFERENT.decode(text).ok(),
                    "{text}"
                );
                assert_eq!(
                    decode_padded(text, false),
                    STANDARD_INDIFFERENT.decode(text).ok(),
                    "{text}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 1_111_111);
    }

    #[test]
    fn round_trips_long_values() {
        let bytes: Vec<u8> = (0..9000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in [0, 1, 2, 3, 4096, 8191, 9000] {
            let b = &bytes[..len];
            assert_eq!(decode_url(&encode_url(b)).as_deref(), Some(b));
            assert_eq!(
                decode_padded(&encode_standard(b), false).as_deref(),
                Some(b)
            );
        }
    }
}
