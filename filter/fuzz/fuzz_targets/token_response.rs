//! The token endpoint's answer: any status and body give tokens or a named error, and an error's
//! text never carries more than a short, plain OAuth error code and a short, plain description with no
//! word that may be a secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter::oidc::token::{self, TokenError};

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status) % 600;
    match token::parse_response(status, body) {
        Ok(t) => {
            // Every token is a non-empty, header-safe string (it goes into request headers).
            for s in [&t.access_token, &t.id_token, &t.refresh_token]
                .into_iter()
                .flatten()
            {
                let s = s.expose();
                assert!(
                    !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{s:?}"
                );
            }
        }
        Err(TokenError::Rejected {
            error, description, ..
        }) => {
            assert!(error.len() <= 64);
            assert!(
                error
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "{error}"
            );
            plain(&description);
        }
        Err(TokenError::InvalidGrant { description }) => plain(&description),
        Err(_) => {}
    }
});

/// At most 200 printable ASCII characters, no `"` or `\`, and no word of 16 or more that mixes letters
/// and digits.
fn plain(description: &str) {
    assert!(description.len() <= 200, "{description}");
    assert!(
        description
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
        "{description}"
    );
    for word in description.split(' ') {
        assert!(
            word.len() < 16
                || !(word.bytes().any(|b| b.is_ascii_digit())
                    && word.bytes().any(|b| b.is_ascii_alphabetic())),
            "{description}"
        );
    }
}
