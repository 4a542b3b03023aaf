//! The cookie opener: `Cookie` headers through `session::join`, `Keys::open` and `Session::decode`,
//! alone and through the whole request path; and arbitrary plaintexts sealed with the right key, so
//! the fuzzer reaches everything behind the AEAD too (what a forger cannot, a bug in decoding can).
//! Plaintexts, and the shared-data tables, decode to something that encodes back to the same bytes,
//! or to nothing.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use oidc_filter::cookies;
use oidc_filter::renewal::Table;
use oidc_filter::revocation::Revocations;
use oidc_filter::session::{self, LoginState, Session};

fuzz_target!(|data: &[u8]| {
    let cfg = common::config();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let name = cfg.cookie_name.as_str();
    match mode % 4 {
        0 => {
            let _ = cookies::iter(&text).count();
            let _ = cookies::strip(&text, &cfg.cookie_name, |n| cfg.is_own_cookie(n));
            let _ = session::chunk_names(name, &text);
            // The sessions behind the first of the name: passing none over is reading the first.
            assert_eq!(
                session::join_shadowed(&text, name, 0, false),
                session::join(&text, name)
            );
            for skip in 1..4 {
                let _ = session::join_shadowed(&text, name, skip, false);
            }
            let _ = session::join_shadowed(&text, name, 0, true);
            // Whatever `rd` says, the browser stays on the site: a path, not `//host` or `/\host`,
            // nothing a URL parser would drop or decode into either.
            let rd = oidc_filter::paths::safe_redirect(&text);
            let path = rd.split(['?', '#']).next().unwrap_or_default();
            assert!(
                path.starts_with('/')
                    && !path.starts_with("//")
                    && !path.contains('\\')
                    && rd.bytes().all(|b| (0x21..0x7f).contains(&b))
                    && !path.to_ascii_lowercase().starts_with("/%2f")
                    && !path.to_ascii_lowercase().starts_with("/%5c")
                    && !path.to_ascii_lowercase().contains("%5c"),
                "{text:?} -> {rd:?}"
            );
            // Scanned with the cache's help, the header reads as it does without, and the value found is
            // the cache's for that session. The cache holds the session the header holds, values that
            // start like it, and a value cut from the header itself: base64url only, as every value that
            // opens is.
            let is_own = |n: &str| cfg.is_own_cookie(n);
            let plain = session::scan(&text, name, is_own);
            let mut keys: Vec<String> = Vec::new();
            if let Ok(Some(s)) = &plain.session {
                keys.extend([s.to_string(), format!("{s}x"), s.chars().take(40).collect()]);
            }
            if let Some(at) = text.find('=') {
                keys.push(text[at + 1..].chars().skip(2).take(200).collect());
            }
            let mut map = session::SealedMap::default();
            for (i, k) in keys.into_iter().enumerate() {
                if k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    map.insert(k, i);
                }
            }
            let value = match &plain.session {
                Ok(Some(s)) => map.get(s),
                _ => None,
            };
            assert_eq!(
                session::scan_cached(&text, name, is_own, &map),
                (plain, value)
            );
            let mut state = common::ready_state();
            for path in [
                "/app",
                "/healthz",
                "/logout",
                "/oauth2/callback?code=a&state=b",
            ] {
                common::check_step(&common::on_request(
                    &mut state,
                    &common::H::request(path, &text, mode & 4 == 0),
                ));
            }
        }
        1 => {
            let _ = cfg.keys.open(name, &text);
        }
        2 => {
            if let Ok(s) = Session::decode(rest) {
                assert_eq!(s.encode(), rest);
            }
            if let Ok(s) = LoginState::decode(rest) {
                assert_eq!(s.encode(), rest);
            }
            let table = Table::decode(rest);
            assert_eq!(Table::decode(&table.encode()), table);
            let revoked = Revocations::decode(rest);
            assert_eq!(Revocations::decode(&revoked.encode()), revoked);
        }
        _ => {
            // Sealed by us: opens to the same bytes, under this name only, and survives chunking.
            let sealed = cfg.keys.seal(name, rest, [7; 24]);
            assert_eq!(cfg.keys.open(name, &sealed).as_deref(), Ok(rest));
            assert!(cfg.keys.open("another_name", &sealed).is_err());
            let Ok(chunks) = session::split(name, &sealed) else {
                return;
            };
            let header: Vec<String> = chunks.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let header = header.join("; ");
            assert_eq!(session::join(&header, name), Ok(Some(sealed)));
            // Whatever the plaintext, the request path decides without panicking.
            let mut state = common::ready_state();
            for path in ["/app", "/admin/x", "/logout"] {
                common::check_step(&common::on_request(
                    &mut state,
                    &common::H::request(path, &header, mode & 4 == 0),
                ));
            }
        }
    }
});
