//! PKCE (RFC 7636) and the random URL-safe strings used for `state`, `nonce` and the code verifier.

use alloc::string::String;

use crate::b64;

/// The `S256` code challenge: base64url (no padding) of SHA-256 of the verifier (RFC 7636 4.2).
pub fn s256_challenge(verifier: &str) -> String {
    b64::encode_url(&crate::sha256::hash(verifier.as_bytes()))
}

/// 32 random bytes as 43 base64url characters: a valid PKCE verifier (RFC 7636 4.1 asks for 43..=128
/// characters of 256 bits of entropy), and a good `state` or `nonce`. The caller supplies the randomness
/// so this stays pure and testable.
pub fn random_token(bytes: &[u8; 32]) -> String {
    b64::encode_url(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = random_token(&octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            s256_challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_tokens_are_43_url_safe_chars() {
        let t = random_token(&[0xff; 32]);
        assert_eq!(t.len(), 43);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
