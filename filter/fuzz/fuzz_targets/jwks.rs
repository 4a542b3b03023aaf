//! The IdP's documents: a JWK Set (one odd key never spoils the rest) and a discovery document.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use oidc_filter::oidc::discovery;
use oidc_filter::oidc::jwks::{Alg, Jwks};

fuzz_target!(|data: &[u8]| {
    if let Ok(jwks) = Jwks::parse(data) {
        assert!(!jwks.is_empty());
        for alg in [Alg::RS256, Alg::PS256, Alg::ES256, Alg::ES384, Alg::EdDSA] {
            for key in jwks.find(None, alg) {
                assert_eq!(key.alg(), alg);
            }
        }
    }
    if let Ok(meta) = discovery::parse(data, common::ISSUER) {
        assert_eq!(meta.issuer, common::ISSUER);
        for u in [
            &meta.authorization_endpoint,
            &meta.token_endpoint,
            &meta.jwks_uri,
        ] {
            assert!(matches!(u.scheme(), "http" | "https"));
        }
    }
});
