//! The JWT checks: any compact token against the test keys, as an ID token at the callback (with a
//! nonce), at a refresh (without) and as a back-channel logout token. Nothing forged passes: a token
//! whose signature verifies signs what one of the testdata tokens the keys really signed signs (its
//! header and payload as they appear in it).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use oidc_filter::json;
use oidc_filter::oidc::id_token::{self, Expected};
use oidc_filter::oidc::logout_token;

/// The testdata tokens signed with the test keys (`testdata/tokens/README.md`): the valid ones and those
/// refused for their claims only. Not the unsigned, HMAC-forged, tampered or truncated ones, nor those
/// whose `kid` names no usable key.
const SIGNED: [&str; 21] = [
    include_str!("../../../testdata/tokens/valid-rs256.jwt"),
    include_str!("../../../testdata/tokens/valid-ps256.jwt"),
    include_str!("../../../testdata/tokens/valid-es256.jwt"),
    include_str!("../../../testdata/tokens/valid-es384.jwt"),
    include_str!("../../../testdata/tokens/valid-eddsa.jwt"),
    include_str!("../../../testdata/tokens/valid-noalg-key-rs512.jwt"),
    include_str!("../../../testdata/tokens/valid-no-kid.jwt"),
    include_str!("../../../testdata/tokens/valid-multi-aud-azp.jwt"),
    include_str!("../../../testdata/tokens/valid-in-2001.jwt"),
    include_str!("../../../testdata/tokens/wrong-iss.jwt"),
    include_str!("../../../testdata/tokens/wrong-aud.jwt"),
    include_str!("../../../testdata/tokens/multi-aud-no-azp.jwt"),
    include_str!("../../../testdata/tokens/azp-mismatch.jwt"),
    include_str!("../../../testdata/tokens/expired.jwt"),
    include_str!("../../../testdata/tokens/nbf-future.jwt"),
    include_str!("../../../testdata/tokens/iat-future.jwt"),
    include_str!("../../../testdata/tokens/missing-exp.jwt"),
    include_str!("../../../testdata/tokens/missing-iat.jwt"),
    include_str!("../../../testdata/tokens/missing-sub.jwt"),
    include_str!("../../../testdata/tokens/missing-nonce.jwt"),
    include_str!("../../../testdata/tokens/wrong-nonce.jwt"),
];

/// The part of a compact JWS its signature covers: everything before the last `.`.
fn signing_input(token: &str) -> Option<&str> {
    token.rsplit_once('.').map(|(input, _)| input)
}

/// A token that verified signs what a testdata token signs.
fn assert_signed_by_the_keys(token: &str, how: &str) {
    let input = signing_input(token);
    assert!(
        input.is_some() && SIGNED.iter().any(|t| signing_input(t.trim_end()) == input),
        "{how} accepted a token the test keys never signed: {token:?}"
    );
}

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
            assert_signed_by_the_keys(&token, "id_token::verify");
            assert_eq!(
                claims.all.get("iss").and_then(json::Value::as_str),
                Some(common::ISSUER)
            );
            assert!(claims.exp + 60 > common::NOW);
        }
    }
    if id_token::verify_signature(&token, jwks, id_token::Kind::Bearer).is_ok() {
        assert_signed_by_the_keys(&token, "id_token::verify_signature");
    }
    if logout_token::verify(
        &token,
        jwks,
        common::ISSUER,
        common::CLIENT_ID,
        common::NOW,
        60,
    )
    .is_ok()
    {
        assert_signed_by_the_keys(&token, "logout_token::verify");
    }
});
