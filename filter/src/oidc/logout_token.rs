//! OpenID Connect Back-Channel Logout 1.0: validating the IdP's logout token (section 2.6).

use alloc::string::String;
use alloc::string::ToString;

use core::fmt;

use crate::json::Value;

use super::id_token::{self, IdTokenError, numeric_date};
use super::jwks::Jwks;

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Which sessions a valid logout token ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub iat: u64,
}

/// Why a logout token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutTokenError {
    Token(IdTokenError),
    WrongIssuer,
    WrongAudience,
    MissingIat,
    IssuedInFuture,
    Expired,
    MissingEvent,
    MissingSidAndSub,
    HasNonce,
}

impl LogoutTokenError {
    /// See [`IdTokenError::stale_keys`].
    pub fn stale_keys(&self) -> bool {
        matches!(self, Self::Token(e) if e.stale_keys())
    }
}

impl fmt::Display for LogoutTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Its checks are the ID token's, whose words name the ID token (found by a black-box test:
            // "logout token: ID token signature does not verify").
            Self::Token(IdTokenError::Malformed) => f.write_str("logout token: malformed"),
            Self::Token(IdTokenError::UnknownKid) => {
                f.write_str("logout token: no JWKS key matches its kid and alg")
            }
            Self::Token(e) => {
                let e = e.to_string();
                write!(
                    f,
                    "logout token: {}",
                    e.strip_prefix("ID token ").unwrap_or(&e)
                )
            }
            Self::WrongIssuer => f.write_str("logout token from another issuer"),
            Self::WrongAudience => f.write_str("logout token for another client"),
            Self::MissingIat => f.write_str("logout token has no iat"),
            Self::IssuedInFuture => f.write_str("logout token issued in the future"),
            Self::Expired => f.write_str("logout token expired"),
            Self::MissingEvent => f.write_str("logout token lacks the back-channel logout event"),
            Self::MissingSidAndSub => f.write_str("logout token names neither sid nor sub"),
            Self::HasNonce => f.write_str("logout token carries a nonce"),
        }
    }
}

/// Verifies a logout token: signature (as for ID tokens), `iss`, `aud`, `iat` (and `exp` when present),
/// the back-channel logout event, `sid` or `sub`, and no `nonce` (so an ID token can't pass as one).
pub fn verify(
    token: &str,
    jwks: &Jwks,
    issuer: &str,
    client_id: &str,
    now: u64,
    leeway: u64,
) -> Result<Logout, LogoutTokenError> {
    let claims = id_token::verify_signature(token, jwks, id_token::Kind::LogoutToken)
        .map_err(LogoutTokenError::Token)?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(LogoutTokenError::WrongIssuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(LogoutTokenError::WrongAudience);
    }
    // Their types were checked with the signature (`check_claim_types`).
    let iat = numeric_date(&claims, "iat")
        .ok()
        .flatten()
        .ok_or(LogoutTokenError::MissingIat)?;
    if iat > now.saturating_add(leeway) {
        return Err(LogoutTokenError::IssuedInFuture);
    }
    if numeric_date(&claims, "exp")
        .ok()
        .flatten()
        .is_some_and(|exp| now >= exp.saturating_add(leeway))
    {
        return Err(LogoutTokenError::Expired);
    }
    if !claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.get(EVENT).is_some_and(Value::is_object))
    {
        return Err(LogoutTokenError::MissingEvent);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::HasNonce);
    }
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 512)
    };
    let (sid, sub) = (
        text("sid").map(str::to_string),
        text("sub").map(str::to_string),
    );
    if sid.is_none() && sub.is_none() {
        return Err(LogoutTokenError::MissingSidAndSub);
    }
    Ok(Logout { sid, sub, iat })
}

#[cfg(test)]
mod tests {
    use jwt_simple::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const PEM: &str = include_str!("../../../testdata/jwks/private/es256-1.pem");
    const JWKS: &str = include_str!("../../../testdata/jwks/keys.json");
    const NOW: u64 = 1_900_000_000;

    fn sign(claims: Value) -> String {
        sign_typed(claims, "JWT")
    }

    fn sign_typed(claims: Value, typ: &str) -> String {
        let key = ES256KeyPair::from_pem(PEM).unwrap().with_key_id("es256-1");
        let c = Claims::with_custom_claims(claims, Duration::from_secs(0));
        // jwt-simple adds iat/exp of its own clock; strip them so the test's claims rule.
        let mut c = c;
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        let options = HeaderOptions {
            signature_type: Some(typ.to_string()),
            ..Default::default()
        };
        key.sign_with_options(c, &options).unwrap()
    }

    /// Found in review: the `typ` of another kind of JWT (an access token's, RFC 9068) passed.
    #[test]
    fn a_token_typed_as_another_kind_is_refused() {
        let jwks = Jwks::parse(JWKS.as_bytes()).unwrap();
        let check_typed = |typ| {
            verify(
                &sign_typed(good(), typ),
                &jwks,
                "https://idp.example.com",
                "app",
                NOW,
                60,
            )
        };
        for typ in [
            "logout+jwt",
            "application/logout+jwt",
            "JWT",
            "secevent+jwt",
        ] {
            assert!(check_typed(typ).is_ok(), "{typ}");
        }
        for typ in [
            "at+jwt",
            "application/at+jwt",
            "dpop+jwt",
            "token-introspection+jwt",
            "oauth-authz-req+jwt",
            "kb+jwt",
            "entity-statement+jwt",
        ] {
            assert_eq!(
                check_typed(typ),
                Err(LogoutTokenError::Token(IdTokenError::Malformed)),
                "{typ}"
            );
        }
    }

    fn good() -> Value {
        json!({"iss": "https://idp.example.com", "aud": "app", "iat": NOW, "exp": NOW + 120, "jti": "j1",
               "sid": "s-1", "sub": "alice", "events": {EVENT: {}}})
    }

    fn check(v: Value) -> Result<Logout, LogoutTokenError> {
        let jwks = Jwks::parse(JWKS.as_bytes()).unwrap();
        verify(&sign(v), &jwks, "https://idp.example.com", "app", NOW, 60)
    }

    #[test]
    fn accepts_a_logout_token_and_names_its_session() {
        let l = check(good()).unwrap();
        assert_eq!(l.sid.as_deref(), Some("s-1"));
        assert_eq!(l.sub.as_deref(), Some("alice"));
    }

    /// Found by a black-box test: the ID token's checks named the ID token in a logout token's refusal.
    #[test]
    fn a_refusal_names_the_logout_token_not_an_id_token() {
        let said = |e: IdTokenError| LogoutTokenError::Token(e).to_string();
        assert_eq!(said(IdTokenError::Malformed), "logout token: malformed");
        assert_eq!(
            said(IdTokenError::BadSignature),
            "logout token: signature does not verify"
        );
        assert_eq!(
            said(IdTokenError::UnknownKid),
            "logout token: no JWKS key matches its kid and alg"
        );
        assert_eq!(said(IdTokenError::Malformed), "logout token: malformed");
    }

    #[test]
    fn refuses_each_defect() {
        let with = |k: &str, v: Value| {
            let mut g = good();
            g[k] = v;
            g
        };
        let without = |k: &str| {
            let mut g = good();
            g.as_object_mut().unwrap().remove(k);
            g
        };
        let mut no_ids = good();
        no_ids.as_object_mut().unwrap().remove("sid");
        no_ids.as_object_mut().unwrap().remove("sub");
        // Found by mutation testing: the issuer exactly, not a name that begins with it.
        for iss in [
            "https://evil",
            "https://idp.example.com.evil",
            "https://idp.example.com/x",
        ] {
            assert_eq!(
                check(with("iss", json!(iss))),
                Err(LogoutTokenError::WrongIssuer),
                "{iss}"
            );
        }
        assert_eq!(
            check(with("aud", json!("other"))),
            Err(LogoutTokenError::WrongAudience)
        );
        assert_eq!(check(without("iat")), Err(LogoutTokenError::MissingIat));
        assert_eq!(
            check(with("iat", json!(NOW + 3600))),
            Err(LogoutTokenError::IssuedInFuture)
        );
        assert_eq!(
            check(with("exp", json!(NOW - 3600))),
            Err(LogoutTokenError::Expired)
        );
        assert_eq!(
            check(without("events")),
            Err(LogoutTokenError::MissingEvent)
        );
        assert_eq!(
            check(with("events", json!({"other": {}}))),
            Err(LogoutTokenError::MissingEvent)
        );
        assert_eq!(
            check(with("nonce", json!("n"))),
            Err(LogoutTokenError::HasNonce)
        );
        assert_eq!(check(no_ids), Err(LogoutTokenError::MissingSidAndSub));
        assert!(check(without("sid")).is_ok());
        // Found by mutation testing: the event's value is a JSON object (Back-Channel Logout 2.4), and an
        // id over 512 characters names no one (a bound on the revocation list's memory).
        for value in [json!(true), json!("yes"), json!([])] {
            assert_eq!(
                check(with("events", json!({ EVENT: value }))),
                Err(LogoutTokenError::MissingEvent),
                "{value}"
            );
        }
        let mut long_sid = good();
        long_sid.as_object_mut().unwrap().remove("sub");
        long_sid["sid"] = json!("s".repeat(513));
        assert_eq!(
            check(long_sid.clone()),
            Err(LogoutTokenError::MissingSidAndSub)
        );
        long_sid["sid"] = json!("s".repeat(512));
        assert!(check(long_sid).is_ok());
        let jwks = Jwks::parse(JWKS.as_bytes()).unwrap();
        // Well formed, but the signature is another token's: refused for its signature, not its form.
        let (a, b) = (sign(good()), sign(with("sub", json!("someone-else"))));
        let (a, b): (Vec<_>, Vec<_>) = (a.split('.').collect(), b.split('.').collect());
        let t = format!("{}.{}.{}", a[0], a[1], b[2]);
        assert!(matches!(
            verify(&t, &jwks, "https://idp.example.com", "app", NOW, 60),
            Err(LogoutTokenError::Token(IdTokenError::BadSignature))
        ));
    }

    #[test]
    fn the_audience_must_name_the_client() {
        let with_aud = |aud: Option<Value>| {
            let mut g = good();
            match aud {
                Some(a) => g["aud"] = a,
                None => {
                    g.as_object_mut().unwrap().remove("aud");
                }
            }
            check(g)
        };
        assert!(with_aud(Some(json!(["other", "app"]))).is_ok());
        // Found by mutation testing: the audience is the client id exactly, not a client id it begins
        // with (another client of the same IdP, `app-admin` beside `app`).
        for aud in [
            None,
            Some(json!(["other"])),
            Some(json!([])),
            Some(json!("app-admin")),
            Some(json!(["app-admin"])),
            Some(json!("ap")),
        ] {
            assert_eq!(
                with_aud(aud.clone()),
                Err(LogoutTokenError::WrongAudience),
                "{aud:?}"
            );
        }
    }

    #[test]
    fn iat_and_exp_get_the_leeway_and_no_more() {
        let with = |k: &str, v: u64| {
            let mut g = good();
            g[k] = json!(v);
            check(g)
        };
        // `check` allows 60 s.
        assert!(with("iat", NOW + 60).is_ok());
        assert_eq!(with("iat", NOW + 61), Err(LogoutTokenError::IssuedInFuture));
        assert!(with("exp", NOW - 59).is_ok());
        assert_eq!(with("exp", NOW - 60), Err(LogoutTokenError::Expired));
    }

    #[test]
    fn an_empty_sid_or_sub_names_no_one() {
        let mut g = good();
        g["sid"] = json!("");
        let l = check(g.clone()).unwrap();
        assert_eq!((l.sid, l.sub.as_deref()), (None, Some("alice")));
        g["sub"] = json!("");
        assert_eq!(check(g), Err(LogoutTokenError::MissingSidAndSub));
    }
}
