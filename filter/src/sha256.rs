//! SHA-256, HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) over `sha2`'s compact SHA-256: the one the
//! JWS signatures use ([`crate::oidc::sig`]), so the module carries one SHA-256, not two.

use sha2::{Digest, Sha256};

/// SHA-256 of `data`.
pub fn hash(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&hash(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |with: u8| {
        let mut d = Sha256::new();
        d.update(block.map(|b| b ^ with));
        d
    };
    let mut inner = pad(0x36);
    for p in parts {
        inner.update(p);
    }
    let mut outer = pad(0x5c);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// HKDF-SHA256 of `ikm` with `salt` (empty: RFC 5869 uses zeros) and `info`, 32 bytes long.
pub fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac(salt, &[ikm]);
    hmac(&prk, &[info, &[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_default())
            .collect()
    }

    #[test]
    fn hash_matches_fips_180_examples() {
        assert_eq!(
            hash(b"abc").to_vec(),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            hash(b"").to_vec(),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    // RFC 4231 test cases 1, 2 (a key shorter than the block), 6 (longer) and 7 (longer, long data), the
    // data also fed in two parts.
    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(Vec<u8>, &[u8], &str); 4] = [
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, mac) in cases {
            assert_eq!(hmac(&key, &[data]).to_vec(), hex(mac));
            let (a, b) = data.split_at(data.len() / 3);
            assert_eq!(hmac(&key, &[a, b]).to_vec(), hex(mac));
        }
        // A key of exactly one block is used as it is.
        assert_ne!(hmac(&[7; 64], &[b"x"]), hmac(&hash(&[7; 64]), &[b"x"]));
    }

    // RFC 5869 test cases 1 and 3 (no salt, no info), their first 32 bytes of OKM.
    #[test]
    fn hkdf_matches_rfc_5869() {
        let ikm = [0x0b; 22];
        assert_eq!(
            hkdf32(
                &hex("000102030405060708090a0b0c"),
                &ikm,
                &hex("f0f1f2f3f4f5f6f7f8f9")
            )
            .to_vec(),
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")
        );
        assert_eq!(
            hkdf32(b"", &ikm, b"").to_vec(),
            hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d")
        );
    }
}
