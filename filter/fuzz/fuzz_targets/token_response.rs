//! The token endpoint's answer: any status and body give tokens or a named error, and an error's
//! text never carries more than a short, plain OAuth error code and a short, plain description that
//! quotes nothing of a secret sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter::oidc::token::{self, TokenError};

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status) % 600;
    // A secret the request sent, taken from the answer itself (where a description may quote it).
    let secret = core::str::from_utf8(body.get(..body.len().min(12)).unwrap_or_default()).unwrap_or("");
    match token::parse_response(status, body).map_err(|e| e.withholding(&[secret])) {
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
            plain(&description, secret);
        }
        Err(TokenError::InvalidGrant { description }) => plain(&description, secret),
        Err(_) => {}
    }
});

/// At most 200 printable ASCII characters, no `"` or `\`, and no 8 bytes in a row of `secret` (the whole,
/// if shorter), as the log line shows them. The filter's own words in place of a withheld description
/// are not the IdP's (a fuzzed secret may hold some of them: found by a CI run, `{"es what ro`).
fn plain(description: &str, secret: &str) {
    if description == "[withheld: it quotes what was sent]" {
        return;
    }
    assert!(description.len() <= 200, "{description}");
    assert!(
        description
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
        "{description}"
    );
    let n = secret.len().min(8);
    if n > 0 {
        for w in secret.as_bytes().windows(n) {
            // As the log line shows it.
            let shown: Vec<u8> = w
                .iter()
                .map(|&b| match b {
                    b' '..=b'~' if b != b'"' && b != b'\\' => b,
                    _ => b'?',
                })
                .collect();
            assert!(
                !description.as_bytes().windows(n).any(|d| d == shown.as_slice()),
                "{description} quotes {secret:?}"
            );
        }
    }
}
