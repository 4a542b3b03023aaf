//! The filter's session cookies as a test sees them: read from a browser's jar, opened and sealed with the
//! cookie key every stack uses unless told otherwise ([`crate::DEFAULT_COOKIE_KEYS`]).

use std::io::Read;

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use oidc_filter::session::{self, Keys, Session};

use crate::Browser;

/// The filter's default session cookie name.
pub const COOKIE: &str = "_oidc_session";

/// The stacks' default cookie key.
pub fn keys() -> Result<Keys> {
    let raw =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(crate::DEFAULT_COOKIE_KEYS)?;
    Keys::new(&[raw]).map_err(|e| anyhow!("{e}"))
}

/// The session's cookies (all chunks) in `b`'s jar for `host`, as a `Cookie` header value.
pub fn session_cookies(b: &Browser, host: &str) -> String {
    b.cookies(host)
        .into_iter()
        .filter(|(n, _)| session::is_session_cookie(COOKIE, n))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Opens the session in a `Cookie` header value with the default key.
pub fn open_session(cookie_header: &str) -> Result<Session> {
    let sealed = session::join(cookie_header, COOKIE)?.context("no session cookie")?;
    let plain = keys()?.open(COOKIE, &sealed).map_err(|e| anyhow!("{e}"))?;
    Session::decode(&plain).map_err(|e| anyhow!("{e}"))
}

/// A `Cookie` header value carrying `s` sealed with the default key, chunked as the filter does.
pub fn seal(s: &Session) -> Result<String> {
    seal_with(&keys()?, COOKIE, s)
}

/// As [`seal`], with another key or associated name (the chunks keep the default cookie name).
pub fn seal_with(k: &Keys, name: &str, s: &Session) -> Result<String> {
    let mut nonce = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let sealed = k.seal(name, &s.encode(), nonce);
    Ok(session::split(COOKIE, &sealed)
        .map_err(|e| anyhow!("{e}"))?
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; "))
}
