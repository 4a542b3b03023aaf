//! The JWT checks: any compact token against the test keys, as an ID token at the callback (with a
//! nonce), at a refresh (without) and as a back-channel logout token. Nothing forged passes: a token
//! that verifies is one of the testdata tokens the keys really signed.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use oidc_filter::json;
use oidc_filter::oidc::id_token::{self, Expected};
use oidc_filter::oidc::logout_token;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let jwks = common::jwks();
    for nonce in [Some(common::NONCE), None] {
        let expected = Expected {
            issuer: common::ISSUER,
            client_id: common::CLIENT_ID,
            nonce,
            now: common::NOW,
            leeway: 60,
            max_age: None,
        };
        if let Ok(claims) = id_token::verify(&token, jwks, &expected) {
            assert_eq!(
                claims.all.get("iss").and_then(json::Value::as_str),
                Some(common::ISSUER)
            );
            assert!(claims.exp + 60 > common::NOW);
        }
    }
    let _ = id_token::verify_signature(&token, jwks);
    let _ = logout_token::verify(
        &token,
        jwks,
        common::ISSUER,
        common::CLIENT_ID,
        common::NOW,
        60,
    );
});
