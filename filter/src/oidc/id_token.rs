//! ID token validation (OIDC Core 3.1.3.7): signature with the provider's JWKS, then the claims.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use core::fmt;

use crate::b64;
use crate::json::{self, Number, Object, Value};

use super::jwks::{Alg, Jwks};

/// ID tokens travel in cookies and headers, so real ones are a few kilobytes at most.
const MAX_TOKEN: usize = 32 * 1024;
/// Base64url length of the largest JOSE header we decode before the signature is checked.
const MAX_HEADER: usize = 2 * 1024;

/// What the token must say, and the clock to judge it by.
#[derive(Clone, Copy)]
pub struct Expected<'a> {
    /// The configured issuer; `iss` must equal it exactly.
    pub issuer: &'a str,
    /// Our client id; `aud` must contain it.
    pub client_id: &'a str,
    /// `Some` at the callback (the nonce sent with the login); `None` on refresh, where IdPs may omit it.
    pub nonce: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// Clock skew tolerated on `exp`, `nbf`, `iat` and `auth_time`, in seconds.
    pub leeway: u64,
    /// At the callback, the `max_age` the login asked for: `auth_time` must be that recent. It reaches the
    /// IdP through the browser, which can leave it out (OIDC Core 3.1.2.1 and 3.1.3.7).
    pub max_age: Option<u64>,
}

/// The claims of a verified ID token.
#[derive(Clone, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    /// The IdP session id, for logout.
    pub sid: Option<String>,
    /// Every claim of the payload, the ones above included.
    pub all: Object,
}

/// Why an ID token was refused. Messages name the cause and carry no token material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    /// Not a compact JWS we can read (size, segments, base64url, JSON, claim types).
    Malformed,
    /// Five segments: a compact JWE (RFC 7516 7.1), an ID token the IdP encrypts for the client.
    Encrypted,
    /// `alg` is `none`, HMAC, or one we don't verify. Holds the name, sanitized.
    UnsupportedAlg(String),
    /// No key in the JWKS has the token's `kid` and `alg` (or, without `kid`, that `alg`). The JWKS may
    /// have rotated: refresh it (rate-limited) and try again.
    UnknownKid,
    BadSignature,
    WrongIssuer,
    /// `aud` does not contain our client id.
    WrongAudience,
    /// `azp` is not our client id, or is absent while `aud` names other parties too.
    AzpMismatch,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future.
    IssuedInFuture,
    MissingExp,
    MissingIat,
    MissingSub,
    MissingNonce,
    NonceMismatch,
    /// `max_age` was asked for and `auth_time` is absent.
    MissingAuthTime,
    /// `auth_time` is older than the `max_age` asked for.
    AuthTooOld,
}

impl IdTokenError {
    /// The keys this worker holds may be out of date: none matches the token's `kid`, or those that do
    /// (a key replaced under its `kid`, or an IdP that names none) do not verify it. For a token from the
    /// IdP itself, worth fetching its keys (found in review: an IdP that replaced its key without a new
    /// `kid` failed every login, and logged out every user who renewed, until the next periodic fetch).
    pub fn stale_keys(&self) -> bool {
        matches!(self, Self::UnknownKid | Self::BadSignature)
    }
}

impl fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed ID token"),
            // Found by a black-box test: "malformed" did not lead the operator to the setting.
            Self::Encrypted => f.write_str(
                "ID token is encrypted (JWE): turn off ID token encryption for this client at the IdP",
            ),
            Self::UnsupportedAlg(alg) => write!(f, "ID token alg \"{alg}\" is not accepted"),
            Self::UnknownKid => f.write_str("no JWKS key matches the ID token's kid and alg"),
            Self::BadSignature => f.write_str("ID token signature does not verify"),
            Self::WrongIssuer => f.write_str("ID token iss is not the configured issuer"),
            Self::WrongAudience => f.write_str("ID token aud does not include our client id"),
            Self::AzpMismatch => f.write_str(
                "ID token azp is not our client id (or is missing, with another audience)",
            ),
            Self::Expired => f.write_str("ID token has expired"),
            Self::NotYetValid => f.write_str("ID token is not valid yet (nbf)"),
            Self::IssuedInFuture => f.write_str("ID token is issued in the future (iat)"),
            Self::MissingExp => f.write_str("ID token has no exp"),
            Self::MissingIat => f.write_str("ID token has no iat"),
            Self::MissingSub => f.write_str("ID token has no sub"),
            Self::MissingNonce => f.write_str("ID token has no nonce"),
            Self::NonceMismatch => f.write_str("ID token nonce is not the one sent at login"),
            Self::MissingAuthTime => {
                f.write_str("ID token has no auth_time, which max_age requires")
            }
            Self::AuthTooOld => f.write_str("ID token auth_time is older than max_age allows"),
        }
    }
}

impl core::error::Error for IdTokenError {}

/// Verifies an ID token's signature against `jwks`, then its claims against `expected`.
pub fn verify(token: &str, jwks: &Jwks, expected: &Expected) -> Result<Claims, IdTokenError> {
    check_claims(verify_signature(token, jwks, Kind::IdToken)?, expected)
}

/// What a JWT is taken for, which its `typ` may rule out (RFC 8725 3.11: a JWT of another kind, typed
/// as such, cannot pass as this one).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// An ID token: not an access token (`at+jwt`, RFC 9068), a logout token (`logout+jwt`), a security
    /// event (`secevent+jwt`, RFC 8417) or a DPoP proof (`dpop+jwt`, RFC 9449).
    IdToken,
    /// A logout token: not an access token nor a DPoP proof.
    LogoutToken,
    /// A bearer token a client sent on a path a claim rule covers (an access or an ID token): not a
    /// logout token, a security event or a DPoP proof, whose claims (`sub`, `aud`) would pass.
    Bearer,
}

/// The most keys one signature is checked against.
const MAX_CANDIDATES: usize = 3;

/// Verifies a JWT's signature against `jwks` (algorithm from our allow-list, key by `kid`) and returns its
/// claims, unchecked: the caller judges them (ID tokens here, logout tokens in `logout_token`). Only the
/// registered claims' types are checked here, for both.
pub fn verify_signature(token: &str, jwks: &Jwks, kind: Kind) -> Result<Object, IdTokenError> {
    if token.len() > MAX_TOKEN {
        return Err(IdTokenError::Malformed);
    }
    // Compact serialization (RFC 7515 7.1): header.payload.signature, exactly three segments. The signing
    // input is the first two as they appear in the token.
    let (signing_input, signature) =
        crate::weburl::rsplit_once(token, b'.').ok_or(IdTokenError::Malformed)?;
    let (header, payload) = signing_input
        .split_once('.')
        .ok_or(IdTokenError::Malformed)?;
    if payload.contains('.') {
        return Err(if token.bytes().filter(|b| *b == b'.').count() == 4 {
            IdTokenError::Encrypted
        } else {
            IdTokenError::Malformed
        });
    }
    if header.len() > MAX_HEADER {
        return Err(IdTokenError::Malformed);
    }

    // The header is read before the signature is checked, and only to pick the key: the algorithm comes
    // from our allow-list (never `none` or HMAC), and each key verifies only the algorithm it is bound to.
    let header = decode_json(header)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(IdTokenError::Malformed)?;
    let alg = Alg::from_name(alg_name)
        .ok_or_else(|| IdTokenError::UnsupportedAlg(sanitize_alg(alg_name)))?;
    // A `null` kid is no kid (as some serialisers write it); another type is refused.
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(IdTokenError::Malformed),
    };

    // A few keys at most: OpenID Connect Core 10.1 has an IdP with several keys name the one it used,
    // and found in review, a set of 64 keys of one algorithm made an anonymous logout token without a
    // `kid` (or one repeating a `kid` all 64 share) cost 64 signature checks. Three covers the keys an
    // IdP without `kid`s publishes while it rotates: the last one, this one and the next.
    let mut candidates = jwks.find(kid, alg).take(MAX_CANDIDATES).peekable();
    if candidates.peek().is_none() {
        return Err(IdTokenError::UnknownKid);
    }
    check_header(&header, kind)?;
    let signature = b64::decode_url(signature).ok_or(IdTokenError::Malformed)?;
    // Without a kid several keys may be candidates: any one of them may have signed.
    if !candidates.any(|key| key.verifies(signing_input.as_bytes(), &signature)) {
        return Err(IdTokenError::BadSignature);
    }

    let claims = decode_json(payload)?;
    check_claim_types(&claims)?;
    Ok(claims)
}

/// The header members besides `alg` and `kid` that change how a JWS is read (RFC 7515 4.1). We implement
/// no extension, so any `crit` is refused (4.1.11; an empty one is invalid anyway). A `typ`, when present,
/// must say JWT: `JWT` (or RFC 7515's `JOSE`), or a `...+jwt` media type such as the logout token's `logout+jwt`, with or
/// without the `application/` that RFC 7515 4.1.9 lets a sender add, and not one of another `kind`
/// (found in review: an access token typed `at+jwt` passed the ID token's check).
fn check_header(header: &Object, kind: Kind) -> Result<(), IdTokenError> {
    if header.contains_key("crit") {
        return Err(IdTokenError::Malformed);
    }
    match header.get("typ") {
        None | Some(Value::Null) => {}
        Some(Value::String(typ)) => {
            let typ = typ.to_ascii_uppercase();
            let typ = typ.strip_prefix("APPLICATION/").unwrap_or(&typ);
            // `JOSE` is RFC 7515's own for a compact JWS (found by a black-box test: refused).
            if typ != "JWT" && typ != "JOSE" && !typ.ends_with("+JWT") {
                return Err(IdTokenError::Malformed);
            }
            let other: &[&str] = match kind {
                Kind::IdToken => &["AT+JWT", "LOGOUT+JWT", "SECEVENT+JWT"],
                Kind::LogoutToken => &["AT+JWT"],
                Kind::Bearer => &["LOGOUT+JWT", "SECEVENT+JWT"],
            };
            // None of the three: a DPoP proof (RFC 9449), a signed introspection answer (RFC 9701), a
            // request object (RFC 9101), an SD-JWT's key binding, a federation's entity statement.
            let never = [
                "DPOP+JWT",
                "TOKEN-INTROSPECTION+JWT",
                "OAUTH-AUTHZ-REQ+JWT",
                "KB+JWT",
                "ENTITY-STATEMENT+JWT",
            ];
            if other.contains(&typ) || never.contains(&typ) {
                return Err(IdTokenError::Malformed);
            }
        }
        Some(_) => return Err(IdTokenError::Malformed),
    }
    match header.get("cty") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err(IdTokenError::Malformed),
    }
}

/// The registered claims (RFC 7519 4.1) must have their registered types, whether or not the caller reads
/// them: times are NumericDates, `iss`, `sub`, `jti` and `nonce` strings, `aud` a string or strings.
fn check_claim_types(claims: &Object) -> Result<(), IdTokenError> {
    for name in ["exp", "nbf", "iat"] {
        numeric_date(claims, name)?;
    }
    for name in ["iss", "sub", "jti", "nonce"] {
        if claims
            .get(name)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return Err(IdTokenError::Malformed);
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(auds)) if auds.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(IdTokenError::Malformed),
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims are personal data; times are what a log line needs.
        f.debug_struct("Claims")
            .field("exp", &self.exp)
            .field("iat", &self.iat)
            .field("claims", &self.all.len())
            .finish_non_exhaustive()
    }
}

/// Whether a token's `exp` (which it must have) and `nbf` (if any) admit `now`, give or take `leeway`;
/// its `exp`.
pub fn check_times(all: &Object, now: u64, leeway: u64) -> Result<u64, IdTokenError> {
    let exp = numeric_date(all, "exp")?.ok_or(IdTokenError::MissingExp)?;
    // RFC 7519 4.1.4: the current time must be before `exp`.
    if now >= exp.saturating_add(leeway) {
        return Err(IdTokenError::Expired);
    }
    if numeric_date(all, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(IdTokenError::NotYetValid);
    }
    Ok(exp)
}

fn check_claims(all: Object, expected: &Expected) -> Result<Claims, IdTokenError> {
    if all.get("iss").and_then(Value::as_str) != Some(expected.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }

    // `verify_signature` took only a string or a list of strings (`check_claim_types`).
    let audiences: Vec<&str> = match all.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => {
            let mut out = Vec::new();
            for a in auds {
                if let Some(a) = a.as_str() {
                    out.push(a);
                }
            }
            out
        }
        _ => Vec::new(),
    };
    if !audiences.contains(&expected.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    match all.get("azp") {
        Some(azp) if azp.as_str() != Some(expected.client_id) => {
            return Err(IdTokenError::AzpMismatch);
        }
        // A token for several audiences must say which of them it was issued to (`aud` holds ours, so
        // any other value is another audience; ours twice is not).
        None if audiences.iter().any(|&a| a != expected.client_id) => {
            return Err(IdTokenError::AzpMismatch);
        }
        _ => {}
    }

    let now = expected.now;
    let leeway = expected.leeway;
    let exp = check_times(&all, now, leeway)?;
    let iat = numeric_date(&all, "iat")?.ok_or(IdTokenError::MissingIat)?;
    if iat > now.saturating_add(leeway) {
        return Err(IdTokenError::IssuedInFuture);
    }
    if let Some(max_age) = expected.max_age {
        let t = numeric_date(&all, "auth_time")?.ok_or(IdTokenError::MissingAuthTime)?;
        if now > t.saturating_add(max_age).saturating_add(leeway) {
            return Err(IdTokenError::AuthTooOld);
        }
    }

    let sub = match all.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(Value::String(_)) | None => return Err(IdTokenError::MissingSub),
        Some(_) => return Err(IdTokenError::Malformed),
    };

    if let Some(nonce) = expected.nonce {
        match all.get("nonce") {
            None => return Err(IdTokenError::MissingNonce),
            Some(got) if got.as_str() != Some(nonce) => return Err(IdTokenError::NonceMismatch),
            Some(_) => {}
        }
    }

    // `sid` only helps logout; an odd one is ignored rather than failing the login.
    let sid = all.get("sid").and_then(Value::as_str).map(str::to_owned);
    Ok(Claims {
        sub,
        exp,
        iat,
        sid,
        all,
    })
}

/// A NumericDate claim (RFC 7519 2: seconds, possibly fractional). `Ok(None)` when absent.
pub(crate) fn numeric_date(claims: &Object, name: &str) -> Result<Option<u64>, IdTokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    // Truncation is the intent: a fraction of a second changes no decision. Beyond u64, u64::MAX.
    value
        .as_number()
        .and_then(Number::floor_u64)
        .map(Some)
        .ok_or(IdTokenError::Malformed)
}

/// A base64url (unpadded, RFC 7515 2) JSON object: the JOSE header or the claims set. Its member names
/// must be unique: RFC 7515 4 and RFC 7519 4 allow either refusing duplicate header parameters and claims
/// or taking the last one; refusing leaves no doubt about which one the IdP meant.
fn decode_json(segment: &str) -> Result<Object, IdTokenError> {
    let bytes = b64::decode_url(segment).ok_or(IdTokenError::Malformed)?;
    let object = json::parse_object(&bytes).map_err(|_| IdTokenError::Malformed)?;
    if object.duplicate().is_some() {
        return Err(IdTokenError::Malformed);
    }
    Ok(object)
}

/// The `alg` is attacker-chosen text that ends up in a log line: keep it short and plain.
fn sanitize_alg(alg: &str) -> String {
    crate::form::keep_ascii(alg, 16, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.')
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use serde_json::Value;

    use super::*;
    use crate::json::testing::from_serde;

    const KEYS: &[u8] = include_bytes!("../../../testdata/jwks/keys.json");
    const NOW: u64 = 1_900_000_000;
    const ISSUER: &str = "https://idp.example.com";
    const CLIENT_ID: &str = "oidc-filter-test";
    const NONCE: &str = "n-0S6_WzA2Mj";

    macro_rules! token {
        ($name:literal) => {
            include_str!(concat!("../../../testdata/tokens/", $name, ".jwt")).trim()
        };
    }

    fn jwks() -> Jwks {
        Jwks::parse(KEYS).unwrap()
    }

    fn expected() -> Expected<'static> {
        Expected {
            issuer: ISSUER,
            client_id: CLIENT_ID,
            nonce: Some(NONCE),
            now: NOW,
            leeway: 60,
            max_age: None,
        }
    }

    fn check(token: &str) -> Result<Claims, IdTokenError> {
        verify(token, &jwks(), &expected())
    }

    #[test]
    fn valid_tokens_of_every_algorithm() {
        for (name, token) in [
            ("rs256", token!("valid-rs256")),
            ("ps256", token!("valid-ps256")),
            ("es256", token!("valid-es256")),
            ("es384", token!("valid-es384")),
            ("eddsa", token!("valid-eddsa")),
            ("noalg-key-rs512", token!("valid-noalg-key-rs512")),
            ("no-kid", token!("valid-no-kid")),
            ("multi-aud-azp", token!("valid-multi-aud-azp")),
        ] {
            let claims = check(token).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(claims.sub, "user-1", "{name}");
            assert_eq!(claims.iat, NOW, "{name}");
            assert_eq!(claims.exp, NOW + 3600, "{name}");
            assert_eq!(claims.sid.as_deref(), Some("sid-1"), "{name}");
            assert_eq!(
                claims.all.get("email").and_then(json::Value::as_str),
                Some("user-1@example.com"),
                "{name}"
            );
        }
    }

    #[test]
    fn each_bad_token_fails_for_its_reason() {
        use IdTokenError::*;
        for (name, token, want) in [
            (
                "alg-none",
                token!("alg-none"),
                UnsupportedAlg("none".into()),
            ),
            (
                "hs256",
                token!("hs256-rsa-pubkey"),
                UnsupportedAlg("HS256".into()),
            ),
            ("wrong-iss", token!("wrong-iss"), WrongIssuer),
            ("wrong-aud", token!("wrong-aud"), WrongAudience),
            ("multi-aud-no-azp", token!("multi-aud-no-azp"), AzpMismatch),
            ("azp-mismatch", token!("azp-mismatch"), AzpMismatch),
            ("expired", token!("expired"), Expired),
            ("nbf-future", token!("nbf-future"), NotYetValid),
            ("iat-future", token!("iat-future"), IssuedInFuture),
            ("missing-exp", token!("missing-exp"), MissingExp),
            ("missing-iat", token!("missing-iat"), MissingIat),
            ("missing-sub", token!("missing-sub"), MissingSub),
            ("missing-nonce", token!("missing-nonce"), MissingNonce),
            ("wrong-nonce", token!("wrong-nonce"), NonceMismatch),
            ("unknown-kid", token!("unknown-kid"), UnknownKid),
            ("enc-key-kid", token!("enc-key-kid"), UnknownKid),
            ("alg-kid-mismatch", token!("alg-kid-mismatch"), UnknownKid),
            ("bad-signature", token!("bad-signature"), BadSignature),
            ("truncated", token!("truncated"), Malformed),
        ] {
            assert_eq!(check(token), Err(want), "{name}");
        }
    }

    #[test]
    fn refresh_does_not_require_a_nonce() {
        let refresh = Expected {
            nonce: None,
            ..expected()
        };
        for token in [token!("missing-nonce"), token!("valid-rs256")] {
            assert!(verify(token, &jwks(), &refresh).is_ok());
        }
    }

    #[test]
    fn leeway_applies_to_every_time_claim() {
        let at = |now: u64| Expected { now, ..expected() };
        let jwks = jwks();
        let exp = NOW + 3600;
        assert!(verify(token!("valid-rs256"), &jwks, &at(exp + 59)).is_ok());
        assert_eq!(
            verify(token!("valid-rs256"), &jwks, &at(exp + 60)),
            Err(IdTokenError::Expired)
        );
        // iat = NOW + 3600 in iat-future, nbf = NOW + 3600 in nbf-future.
        assert!(verify(token!("iat-future"), &jwks, &at(NOW + 3540)).is_ok());
        assert_eq!(
            verify(token!("iat-future"), &jwks, &at(NOW + 3539)),
            Err(IdTokenError::IssuedInFuture)
        );
        assert!(verify(token!("nbf-future"), &jwks, &at(NOW + 3540)).is_ok());
        assert_eq!(
            verify(token!("nbf-future"), &jwks, &at(NOW + 3539)),
            Err(IdTokenError::NotYetValid)
        );
    }

    #[test]
    fn time_is_ours_not_the_system_clock() {
        // A library judging by the machine's clock would get these wrong: this token expired in 2001,
        // and the usual test tokens are issued in 2030. Only `now` decides.
        let in_2001 = Expected {
            now: 1_000_000_000,
            ..expected()
        };
        assert!(verify(token!("valid-in-2001"), &jwks(), &in_2001).is_ok());
        assert_eq!(check(token!("valid-in-2001")), Err(IdTokenError::Expired));
        assert!(check(token!("valid-rs256")).is_ok());
        assert_eq!(
            verify(token!("valid-rs256"), &jwks(), &in_2001),
            Err(IdTokenError::IssuedInFuture)
        );
    }

    #[test]
    fn a_kid_from_another_key_set_is_unknown() {
        let doc: Value = serde_json::from_slice(KEYS).unwrap();
        let ec: Vec<_> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kty"] == "EC")
            .cloned()
            .collect();
        let ec = Jwks::parse(serde_json::json!({ "keys": ec }).to_string().as_bytes()).unwrap();
        assert_eq!(
            verify(token!("valid-rs256"), &ec, &expected()),
            Err(IdTokenError::UnknownKid)
        );
    }

    #[test]
    fn signature_is_checked_before_claims() {
        // Swap in the payload of the wrong-iss token: the signature no longer covers it.
        let good: Vec<_> = token!("valid-rs256").split('.').collect();
        let evil: Vec<_> = token!("wrong-iss").split('.').collect();
        let spliced = format!("{}.{}.{}", good[0], evil[1], good[2]);
        assert_eq!(check(&spliced), Err(IdTokenError::BadSignature));
    }

    #[test]
    fn malformed_inputs() {
        let good = token!("valid-rs256");
        let (_, rest) = good.split_once('.').unwrap();
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{good}.extra"),
            format!("!!.{rest}"),
            format!("{}.{rest}", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{rest}", URL_SAFE_NO_PAD.encode(r#"{"kid":"rs256-1"}"#)),
            format!(
                "{}.{rest}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":7}"#)
            ),
            format!("{}.{rest}", "A".repeat(MAX_HEADER + 1)),
            "A".repeat(MAX_TOKEN + 1),
        ] {
            assert_eq!(check(&bad), Err(IdTokenError::Malformed), "{bad:.40}");
        }
    }

    #[test]
    fn unsupported_alg_names_are_sanitized() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256\n<script>alert(1)</script>"}"#);
        assert_eq!(
            check(&format!("{header}.e30.")),
            Err(IdTokenError::UnsupportedAlg("HS256scriptalert".into()))
        );
    }

    #[test]
    fn debug_and_display_hold_no_claims() {
        let claims = check(token!("valid-rs256")).unwrap();
        let debug = format!("{claims:?}");
        assert_eq!(
            debug,
            "Claims { exp: 1900003600, iat: 1900000000, claims: 8, .. }"
        );
        for e in [IdTokenError::NonceMismatch, IdTokenError::WrongIssuer] {
            assert!(!e.to_string().contains(NONCE));
            assert!(!e.to_string().contains("evil"));
        }
    }

    #[test]
    fn fractional_times_are_accepted() {
        let mut claims = check(token!("valid-rs256")).unwrap().all;
        claims.insert(
            "exp".into(),
            from_serde(&serde_json::json!(1_900_003_600.5)),
        );
        claims.insert(
            "iat".into(),
            from_serde(&serde_json::json!(1_900_000_000.25)),
        );
        let c = check_claims(claims.clone(), &expected()).unwrap();
        assert_eq!((c.iat, c.exp), (NOW, NOW + 3600));
        claims.insert("exp".into(), from_serde(&serde_json::json!("tomorrow")));
        assert_eq!(
            check_claims(claims, &expected()),
            Err(IdTokenError::Malformed)
        );
    }

    /// Found by mutation testing: an `auth_time` exactly `max_age` plus the leeway ago was not proven
    /// taken (only much older ones refused, end to end).
    #[test]
    fn auth_time_at_the_max_age_bound_is_taken_and_a_second_more_is_not() {
        let with_auth_time = |t: u64| {
            let claims = crate::json::testing::object(&serde_json::json!({"iss": ISSUER,
                "aud": CLIENT_ID, "sub": "user-1", "iat": NOW, "exp": NOW + 3600, "nonce": NONCE,
                "auth_time": t}));
            let expected = Expected {
                max_age: Some(300),
                ..expected()
            };
            check_claims(claims, &expected).map(|c| c.sub)
        };
        assert_eq!(with_auth_time(NOW - 300 - 60), Ok("user-1".into()));
        assert_eq!(
            with_auth_time(NOW - 300 - 61),
            Err(IdTokenError::AuthTooOld)
        );
    }

    /// Found by mutation testing: the issuer, audience and `azp` are ours exactly, and no test below the
    /// end-to-end ones refused a value that begins with ours (another client of the IdP, `...-admin`
    /// beside ours, or a host under the issuer's name).
    #[test]
    fn iss_aud_and_azp_are_ours_exactly_not_values_that_begin_with_ours() {
        let with = |patch: serde_json::Value| {
            let mut claims = serde_json::json!({"iss": ISSUER, "aud": CLIENT_ID, "sub": "user-1",
                "iat": NOW, "exp": NOW + 3600, "nonce": NONCE});
            for (k, v) in patch.as_object().unwrap() {
                claims[k] = v.clone();
            }
            check_claims(crate::json::testing::object(&claims), &expected()).map(|c| c.sub)
        };
        assert_eq!(with(serde_json::json!({})), Ok("user-1".into()));
        let admin = format!("{CLIENT_ID}-admin");
        for (patch, want) in [
            (
                serde_json::json!({"iss": format!("{ISSUER}.evil.example")}),
                IdTokenError::WrongIssuer,
            ),
            (
                serde_json::json!({"aud": admin}),
                IdTokenError::WrongAudience,
            ),
            (
                serde_json::json!({"aud": [admin]}),
                IdTokenError::WrongAudience,
            ),
            (serde_json::json!({"azp": admin}), IdTokenError::AzpMismatch),
        ] {
            assert_eq!(with(patch.clone()), Err(want), "{patch}");
        }
    }
}

/// The JWS layer on its own: every algorithm, and every way a token's encoding or signature can be wrong.
#[cfg(test)]
mod jws_tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use jwt_simple::prelude::{
        Claims as JwtClaims, Duration, ECDSAP256KeyPairLike, ECDSAP384KeyPairLike, ES256KeyPair,
        ES384KeyPair, Ed25519KeyPair, EdDSAKeyPairLike, JWTClaims, PS256KeyPair, PS384KeyPair,
        PS512KeyPair, RS256KeyPair, RS384KeyPair, RS512KeyPair, RSAKeyPairLike,
    };
    use p256::ecdsa::signature::Signer as _;
    use rsa::BigUint;
    use serde_json::{Value, json};

    use super::*;

    const KEYS: &[u8] = include_bytes!("../../../testdata/jwks/keys.json");
    const RS256_PEM: &str = include_str!("../../../testdata/jwks/private/rs256-1.pem");
    const PS256_PEM: &str = include_str!("../../../testdata/jwks/private/ps256-1.pem");
    const RSA_NOALG_PEM: &str = include_str!("../../../testdata/jwks/private/rsa-noalg.pem");
    const ES256_PEM: &str = include_str!("../../../testdata/jwks/private/es256-1.pem");
    const ES384_PEM: &str = include_str!("../../../testdata/jwks/private/es384-1.pem");
    const EDDSA_PEM: &str = include_str!("../../../testdata/jwks/private/eddsa-1.pem");
    const NOW: u64 = 1_900_000_000;

    const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    fn jwks() -> Jwks {
        Jwks::parse(KEYS).unwrap()
    }

    /// The test key set's JWK of `kid`.
    fn test_jwk(kid: &str) -> Value {
        let doc: Value = serde_json::from_slice(KEYS).unwrap();
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    }

    fn claims_json() -> Value {
        json!({"iss": "https://idp.example.com", "aud": "oidc-filter-test", "sub": "user-1",
               "iat": NOW, "exp": NOW + 3600})
    }

    /// The claims as they are, without jwt-simple's own clock-based times.
    fn claims() -> JWTClaims<Value> {
        let mut c = JwtClaims::with_custom_claims(claims_json(), Duration::from_secs(0));
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        c
    }

    /// A token signed with `alg` by the test key for it (`rsa-noalg`, a JWK without `alg`, for the RSA
    /// algorithms no other key declares).
    fn signed(alg: Alg) -> String {
        macro_rules! sign {
            ($pair:ty, $pem:expr, $kid:literal) => {
                <$pair>::from_pem($pem)
                    .unwrap()
                    .with_key_id($kid)
                    .sign(claims())
            };
        }
        match alg {
            Alg::RS256 => sign!(RS256KeyPair, RS256_PEM, "rs256-1"),
            Alg::RS384 => sign!(RS384KeyPair, RSA_NOALG_PEM, "rsa-noalg"),
            Alg::RS512 => sign!(RS512KeyPair, RSA_NOALG_PEM, "rsa-noalg"),
            Alg::PS256 => sign!(PS256KeyPair, PS256_PEM, "ps256-1"),
            Alg::PS384 => sign!(PS384KeyPair, RSA_NOALG_PEM, "rsa-noalg"),
            Alg::PS512 => sign!(PS512KeyPair, RSA_NOALG_PEM, "rsa-noalg"),
            Alg::ES256 => sign!(ES256KeyPair, ES256_PEM, "es256-1"),
            Alg::ES384 => sign!(ES384KeyPair, ES384_PEM, "es384-1"),
            Alg::EdDSA => sign!(Ed25519KeyPair, EDDSA_PEM, "eddsa-1"),
        }
        .unwrap()
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token of exactly these (already encoded) segments, ES256-signed by `es256-1`: for headers and
    /// payloads jwt-simple would not write.
    fn es256_raw(header: &str, payload: &str) -> String {
        let key = ES256KeyPair::from_pem(ES256_PEM).unwrap();
        let input = format!("{header}.{payload}");
        let signature: p256::ecdsa::Signature = key.key_pair().as_ref().sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }

    /// [`es256_raw`] of JSON texts, encoded as they are (duplicates and all).
    fn es256_json(header: &str, payload: &str) -> String {
        es256_raw(&b64(header), &b64(payload))
    }

    const ES256_HEADER: &str = r#"{"alg":"ES256","kid":"es256-1"}"#;

    fn payload() -> String {
        claims_json().to_string()
    }

    fn verify(token: &str) -> Result<Object, IdTokenError> {
        verify_signature(token, &jwks(), Kind::LogoutToken)
    }

    fn signature(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.rsplit_once('.').unwrap().1)
            .unwrap()
    }

    fn with_signature(token: &str, signature: &[u8]) -> String {
        format!("{}.{}", token.rsplit_once('.').unwrap().0, b64(signature))
    }

    fn with_header(token: &str, header: &Value) -> String {
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64(header.to_string()))
    }

    fn header(token: &str) -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_algorithm_verifies_a_token_it_signed() {
        for alg in ALL {
            let token = signed(alg);
            assert_eq!(header(&token)["alg"], alg.as_str());
            let claims = verify(&token).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(
                claims.get("sub").and_then(json::Value::as_str),
                Some("user-1"),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_flipped_signature_bit_fails_every_algorithm() {
        for alg in ALL {
            let token = signed(alg);
            let good = signature(&token);
            for bit in [0, 7, good.len() * 4 + 3, good.len() * 8 - 1] {
                let mut bad = good.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verify(&with_signature(&token, &bad)),
                    Err(IdTokenError::BadSignature),
                    "{alg}, bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_signature_only_counts_for_the_algorithm_its_key_is_bound_to() {
        let rsa_noalg = [Alg::RS384, Alg::RS512, Alg::PS384, Alg::PS512];
        for signed_with in ALL {
            let token = signed(signed_with);
            for claimed in ALL.into_iter().filter(|&a| a != signed_with) {
                let mut relabelled = header(&token);
                relabelled["alg"] = claimed.as_str().into();
                let got = verify(&with_header(&token, &relabelled));
                // `rsa-noalg` is a key for every RSA algorithm: the other padding or hash is tried, and
                // fails. Every other key verifies one algorithm only, so none is even tried.
                let want = if rsa_noalg.contains(&signed_with) && RSA_ALGS.contains(&claimed) {
                    IdTokenError::BadSignature
                } else {
                    IdTokenError::UnknownKid
                };
                assert_eq!(got, Err(want), "{signed_with} relabelled {claimed}");
            }
        }
        // Without a kid, every key of the claimed algorithm is tried: `rsa-noalg` signed with PKCS#1 v1.5
        // padding, which no PS384 key accepts, not even `rsa-noalg` itself as a PS384 key.
        let token = signed(Alg::RS384);
        let bare = json!({"alg": "PS384"});
        assert_eq!(
            verify(&with_header(&token, &bare)),
            Err(IdTokenError::BadSignature)
        );
    }

    use super::super::jwks::RSA_ALGS;

    #[test]
    fn none_and_hmac_are_never_verified() {
        let token = signed(Alg::RS256);
        let (input, _) = token.rsplit_once('.').unwrap();
        for alg in [
            "none", "None", "NONE", "HS256", "HS384", "HS512", "", "RS256 ",
        ] {
            let header = json!({"alg": alg, "kid": "rs256-1"});
            for signature in ["", token.rsplit_once('.').unwrap().1] {
                let forged = with_header(&format!("{input}.{signature}"), &header);
                assert_eq!(
                    verify(&forged),
                    Err(IdTokenError::UnsupportedAlg(alg.replace(' ', ""))),
                    "{alg:?}"
                );
            }
        }
        // `alg` must be a string.
        let forged = with_header(&token, &json!({"alg": null, "kid": "rs256-1"}));
        assert_eq!(verify(&forged), Err(IdTokenError::Malformed));
    }

    #[test]
    fn three_segments_exactly() {
        let token = signed(Alg::ES256);
        let parts: Vec<&str> = token.split('.').collect();
        let jwe = format!("{}.{}.{}.{}.{}", parts[0], "", "AAAA", parts[1], parts[2]);
        for bad in [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            parts[0].to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}."),
            format!("{token}.{}", parts[2]),
            format!(".{token}"),
            format!("{token}.{}.{}.{}", parts[2], parts[2], parts[2]),
        ] {
            assert_eq!(verify(&bad), Err(IdTokenError::Malformed), "{bad:.60}");
        }
        // Five segments: an encrypted ID token, said as such (found by a black-box test: "malformed"
        // did not lead to the IdP's setting).
        assert_eq!(verify(&jwe), Err(IdTokenError::Encrypted));
        assert!(
            IdTokenError::Encrypted
                .to_string()
                .contains("encrypted (JWE)")
        );
        // Three segments, the last empty: an (empty) signature that does not verify.
        assert_eq!(
            verify(&format!("{}.{}.", parts[0], parts[1])),
            Err(IdTokenError::BadSignature)
        );
    }

    #[test]
    fn base64url_must_be_strict_in_every_segment() {
        let header = b64(ES256_HEADER);
        let payload = b64(payload());
        assert!(verify(&es256_raw(&header, &payload)).is_ok());
        let good_signature = signature(&es256_raw(&header, &payload));

        // Padding, the standard alphabet, whitespace, and a character that is in no alphabet.
        let spoil = |segment: &str| -> Vec<String> {
            let mut with_std = segment.to_owned();
            with_std.replace_range(0..1, "+");
            vec![
                format!("{segment}="),
                format!("{segment}=="),
                with_std,
                format!(" {segment}"),
                format!("{segment}\n"),
                format!("{segment}!"),
                // 4n + 1 characters: a length no encoding has.
                format!("{segment}{}", "A".repeat((4 - segment.len() % 4) % 4 + 1)),
            ]
        };
        for bad in spoil(&header) {
            assert_eq!(
                verify(&es256_raw(&bad, &payload)),
                Err(IdTokenError::Malformed),
                "header {bad}"
            );
        }
        // The payload is decoded only once the signature verified: sign the spoiled text.
        for bad in spoil(&payload) {
            assert_eq!(
                verify(&es256_raw(&header, &bad)),
                Err(IdTokenError::Malformed),
                "payload {bad}"
            );
        }
        let input = format!("{header}.{payload}");
        for bad in spoil(&b64(&good_signature)) {
            assert_eq!(
                verify(&format!("{input}.{bad}")),
                Err(IdTokenError::Malformed),
                "signature {bad}"
            );
        }
        // Non-canonical: 64 bytes take 86 characters, the last carrying 4 bits of padding that must be 0.
        let encoded = b64(&good_signature);
        let last = encoded.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.find(last).unwrap();
        let sloppy = alphabet.chars().nth(index | 1).unwrap();
        assert_ne!(sloppy, last);
        let mut sloppy_signature = encoded.clone();
        sloppy_signature.pop();
        sloppy_signature.push(sloppy);
        assert_eq!(
            verify(&format!("{input}.{sloppy_signature}")),
            Err(IdTokenError::Malformed)
        );
    }

    #[test]
    fn ecdsa_signatures_are_raw_r_and_s() {
        for alg in [Alg::ES256, Alg::ES384] {
            let token = signed(alg);
            let raw = signature(&token);
            let (r, s) = raw.split_at(raw.len() / 2);
            assert_eq!(
                verify(&with_signature(&token, &der_signature(r, s))),
                Err(IdTokenError::BadSignature),
                "{alg} DER"
            );
            for bad in [
                [raw.as_slice(), &[0]].concat(),
                [&[0], raw.as_slice()].concat(),
                raw[..raw.len() - 1].to_vec(),
                [s, r].concat(),
                vec![0; raw.len()],
                vec![0xff; raw.len()],
                Vec::new(),
            ] {
                assert_eq!(
                    verify(&with_signature(&token, &bad)),
                    Err(IdTokenError::BadSignature),
                    "{alg}"
                );
            }
        }
    }

    /// An ECDSA signature as ASN.1 DER, as some libraries wrongly put it in a JWS.
    fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
        let int = |x: &[u8]| {
            let x: Vec<u8> = x.iter().copied().skip_while(|&b| b == 0).collect();
            let x = if x[0] & 0x80 != 0 {
                [&[0], x.as_slice()].concat()
            } else {
                x
            };
            [&[0x02, x.len() as u8], x.as_slice()].concat()
        };
        let body = [int(r), int(s)].concat();
        [&[0x30, body.len() as u8], body.as_slice()].concat()
    }

    #[test]
    fn rsa_and_eddsa_signatures_have_exactly_the_keys_size() {
        for alg in [Alg::RS256, Alg::PS256, Alg::EdDSA] {
            let token = signed(alg);
            let raw = signature(&token);
            for bad in [
                [&[0], raw.as_slice()].concat(),
                [raw.as_slice(), &[0]].concat(),
                raw[1..].to_vec(),
                Vec::new(),
            ] {
                assert_eq!(
                    verify(&with_signature(&token, &bad)),
                    Err(IdTokenError::BadSignature),
                    "{alg}"
                );
            }
        }
    }

    #[test]
    fn an_rsa_signature_must_be_below_the_modulus() {
        // s + n is s again modulo n; RFC 8017 refuses it as out of range. A PSS signature is salted, so
        // sign until s + n still fits the key's 256 bytes (about 40% of signatures with this key).
        let doc: Value = serde_json::from_slice(KEYS).unwrap();
        let jwk = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "ps256-1")
            .unwrap();
        let n =
            BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap());
        let (token, bigger) = (0..200)
            .find_map(|_| {
                let token = signed(Alg::PS256);
                let bigger = (BigUint::from_bytes_be(&signature(&token)) + &n).to_bytes_be();
                (bigger.len() == 256).then_some((token, bigger))
            })
            .unwrap();
        assert!(verify(&token).is_ok());
        assert_eq!(
            verify(&with_signature(&token, &bigger)),
            Err(IdTokenError::BadSignature)
        );
        assert_eq!(
            verify(&with_signature(&token, &n.to_bytes_be())),
            Err(IdTokenError::BadSignature)
        );
    }

    #[test]
    fn pss_salts_are_as_long_as_the_hash() {
        use rsa::pkcs8::DecodePrivateKey as _;
        use sha2::{Digest as _, Sha256};

        let key = rsa::RsaPrivateKey::from_pkcs8_pem(PS256_PEM).unwrap();
        let header = b64(r#"{"alg":"PS256","kid":"ps256-1"}"#);
        let input = format!("{header}.{}", b64(payload()));
        let digest = Sha256::digest(input.as_bytes());
        let with_salt = |len: usize| {
            let scheme = rsa::Pss::new_with_salt::<Sha256>(len);
            let signature = key
                .sign_with_rng(&mut rsa::rand_core::OsRng, scheme, &digest)
                .unwrap();
            verify(&format!("{input}.{}", b64(signature)))
        };
        assert!(with_salt(32).is_ok());
        for len in [0, 20, 31, 33, 48, 64, 256 - 32 - 2] {
            assert_eq!(
                with_salt(len),
                Err(IdTokenError::BadSignature),
                "salt {len}"
            );
        }
    }

    #[test]
    fn crit_is_refused_and_typ_must_say_jwt() {
        let payload = payload();
        let with = |extra: &str| {
            es256_json(
                &format!(r#"{{"alg":"ES256","kid":"es256-1"{extra}}}"#),
                &payload,
            )
        };
        for ok in [
            "",
            r#","typ":"JWT""#,
            r#","typ":"jwt""#,
            r#","typ":"logout+jwt""#,
            r#","typ":"application/jwt""#,
            r#","typ":"Application/Logout+JWT""#,
            r#","typ":null"#,
            r#","cty":"JWT""#,
            r#","x5t":"anything""#,
        ] {
            assert!(verify(&with(ok)).is_ok(), "{ok}");
        }
        for bad in [
            r#","crit":["exp"]"#,
            r#","crit":[]"#,
            r#","crit":null"#,
            r#","crit":["b64"],"b64":false"#,
            r#","typ":"JWS""#,
            r#","typ":"application/json""#,
            r#","typ":"text/jwt""#,
            r#","typ":"at+jwt+x""#,
            r#","typ":"JWT ""#,
            r#","typ":["JWT"]"#,
            r#","typ":1"#,
            r#","cty":7"#,
            r#","kid":"es256-1""#,
            r#","alg":"ES256""#,
        ] {
            assert_eq!(verify(&with(bad)), Err(IdTokenError::Malformed), "{bad}");
        }
    }

    /// Found in review: RFC 8725 3.11, RFC 9068 4, Back-Channel Logout 1.0 2.4: an access token
    /// (`at+jwt`) or a logout token (`logout+jwt`) is typed so that it cannot pass as an ID token. The full
    /// ID token check (`verify` with `Expected`, nonce included) took both; `JWT` still passes.
    #[test]
    fn an_id_token_typed_as_another_kind_is_refused() {
        let mut claims = claims_json();
        claims["nonce"] = serde_json::json!("n-1");
        let payload = claims.to_string();
        let check = |typ: &str| {
            let token = es256_json(
                &format!(r#"{{"alg":"ES256","kid":"es256-1","typ":"{typ}"}}"#),
                &payload,
            );
            let expected = Expected {
                issuer: "https://idp.example.com",
                client_id: "oidc-filter-test",
                nonce: Some("n-1"),
                now: NOW,
                leeway: 60,
                max_age: None,
            };
            super::verify(&token, &jwks(), &expected).map(|_| ())
        };
        for typ in ["JWT", "application/jwt", "jwt", "JOSE", "jose"] {
            assert_eq!(check(typ), Ok(()), "{typ}");
        }
        for typ in [
            "at+jwt",
            "application/at+jwt",
            "logout+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "token-introspection+jwt",
            "application/token-introspection+jwt",
            "oauth-authz-req+jwt",
            "kb+jwt",
            "entity-statement+jwt",
            // Found by mutation testing: `JOSE` itself, not a type ending in it.
            "xjose",
            "application/x-jose",
        ] {
            assert_eq!(check(typ), Err(IdTokenError::Malformed), "{typ}");
        }
        // A client's bearer token, on a path a claim rule covers, is an access or an ID token.
        let bearer = |typ: &str| {
            let header = format!(r#"{{"alg":"ES256","kid":"es256-1","typ":"{typ}"}}"#);
            verify_signature(&es256_json(&header, &payload), &jwks(), Kind::Bearer).map(|_| ())
        };
        for typ in ["JWT", "at+jwt", "application/at+jwt"] {
            assert_eq!(bearer(typ), Ok(()), "{typ}");
        }
        for typ in [
            "logout+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "token-introspection+jwt",
            "oauth-authz-req+jwt",
            "kb+jwt",
            "entity-statement+jwt",
        ] {
            assert_eq!(bearer(typ), Err(IdTokenError::Malformed), "{typ}");
        }
    }

    /// Found in review: without a `kid` every key of the algorithm was tried, 64 signature checks for a
    /// forged logout token anyone may post. The first three are.
    #[test]
    fn a_token_without_kid_is_checked_against_three_keys_at_most() {
        let mut ours = test_jwk("es256-1");
        ours.as_object_mut().unwrap().remove("kid");
        let other = || {
            let jwk: Value =
                serde_json::from_str(&ES256KeyPair::generate().public_key().to_jwk()).unwrap();
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "x": jwk["x"], "y": jwk["y"]})
        };
        let token = es256_json(r#"{"alg":"ES256"}"#, &payload());
        for before in 0..5 {
            let mut keys: Vec<Value> = (0..before).map(|_| other()).collect();
            keys.push(ours.clone());
            let set = Jwks::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
            let verdict = verify_signature(&token, &set, Kind::Bearer);
            // Three, as the README's Limits say: not `MAX_CANDIDATES`, which this test pins.
            if before < 3 {
                assert!(verdict.is_ok(), "{before} keys before: {verdict:?}");
            } else {
                assert_eq!(verdict, Err(IdTokenError::BadSignature), "{before}");
            }
        }
    }

    #[test]
    fn a_null_kid_is_no_kid() {
        // In the header, as without one: every key of the algorithm is tried.
        let payload = payload();
        for header in [r#"{"alg":"ES256"}"#, r#"{"alg":"ES256","kid":null}"#] {
            assert!(verify(&es256_json(header, &payload)).is_ok(), "{header}");
        }
        for header in [r#"{"alg":"ES256","kid":7}"#, r#"{"alg":"ES256","kid":[]}"#] {
            assert_eq!(
                verify(&es256_json(header, &payload)),
                Err(IdTokenError::Malformed),
                "{header}"
            );
        }
        // In the JWK Set, with the key's other optional members null, as .NET may write them.
        let key = |kid: &str, nulls: &[&str]| {
            let mut key = test_jwk(kid);
            for &name in nulls {
                key[name] = Value::Null;
            }
            Jwks::parse(json!({ "keys": [key] }).to_string().as_bytes()).unwrap()
        };
        let rsa = key("rs256-1", &["alg", "use", "crv", "key_ops", "x5c"]);
        assert!(verify_signature(&signed(Alg::RS256), &rsa, Kind::Bearer).is_ok());
        let ec = key("es256-1", &["alg", "use", "key_ops", "kid"]);
        let no_kid = es256_json(r#"{"alg":"ES256","kid":null}"#, &payload);
        assert!(verify_signature(&no_kid, &ec, Kind::Bearer).is_ok());
        assert_eq!(
            verify_signature(&es256_json(ES256_HEADER, &payload), &ec, Kind::Bearer),
            Err(IdTokenError::UnknownKid)
        );
    }

    /// Found in a review of the tests: a token without `iss` or without `aud` was refused only end to
    /// end (attacks.rs), not here.
    #[test]
    fn a_token_without_iss_or_aud_is_refused() {
        for (claim, want) in [
            ("iss", IdTokenError::WrongIssuer),
            ("aud", IdTokenError::WrongAudience),
        ] {
            let mut claims = claims_json();
            claims.as_object_mut().unwrap().remove(claim);
            assert_eq!(full(&claims).map(|c| c.sub), Err(want), "{claim}");
        }
        // The control: the same token with both verifies.
        assert_eq!(full(&claims_json()).map(|c| c.sub), Ok("user-1".into()));
    }

    /// Signature and claims checked, as at a login without a nonce.
    fn full(claims: &Value) -> Result<Claims, IdTokenError> {
        let expected = Expected {
            issuer: "https://idp.example.com",
            client_id: "oidc-filter-test",
            nonce: None,
            now: NOW,
            leeway: 60,
            max_age: None,
        };
        super::verify(
            &es256_json(ES256_HEADER, &claims.to_string()),
            &jwks(),
            &expected,
        )
    }

    #[test]
    fn registered_claims_have_their_types() {
        for ok in [
            json!({"aud": ["a", "b"]}),
            json!({"exp": 1_900_003_600.5}),
            json!({"nbf": NOW}),
            json!({"jti": "j"}),
            json!({"nonce": null}),
            json!({"custom": {"nested": [1, 2]}}),
        ] {
            let mut claims = claims_json();
            claims
                .as_object_mut()
                .unwrap()
                .extend(ok.as_object().unwrap().clone());
            assert!(
                verify(&es256_json(ES256_HEADER, &claims.to_string())).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            json!({"iss": 1}),
            json!({"sub": ["user-1"]}),
            json!({"aud": 5}),
            json!({"aud": ["a", 5]}),
            json!({"aud": null}),
            json!({"exp": "tomorrow"}),
            json!({"exp": -1}),
            json!({"iat": null}),
            json!({"nbf": true}),
            json!({"jti": {}}),
            json!({"nonce": 1}),
        ] {
            let mut claims = claims_json();
            claims
                .as_object_mut()
                .unwrap()
                .extend(bad.as_object().unwrap().clone());
            assert_eq!(
                verify(&es256_json(ES256_HEADER, &claims.to_string())),
                Err(IdTokenError::Malformed),
                "{bad}"
            );
        }
        for not_an_object in ["[]", "\"claims\"", "null", "1", ""] {
            assert_eq!(
                verify(&es256_json(ES256_HEADER, not_an_object)),
                Err(IdTokenError::Malformed),
                "{not_an_object}"
            );
        }
    }

    #[test]
    fn duplicate_members_are_refused() {
        let payload = payload();
        let twice = r#"{"iss":"https://idp.example.com","iss":"https://evil.example.com"}"#;
        assert_eq!(
            verify(&es256_json(ES256_HEADER, twice)),
            Err(IdTokenError::Malformed)
        );
        let twice = format!(r#"{},"x":1,"x":1}}"#, payload.trim_end_matches('}'));
        assert_eq!(
            verify(&es256_json(ES256_HEADER, &twice)),
            Err(IdTokenError::Malformed)
        );
        // Nested objects are the claim's own business.
        let nested = format!(r#"{},"x":{{"y":1,"y":2}}}}"#, payload.trim_end_matches('}'));
        assert!(verify(&es256_json(ES256_HEADER, &nested)).is_ok());
        let header = r#"{"alg":"ES256","kid":"es256-1","kid":"es256-1"}"#;
        assert_eq!(
            verify(&es256_json(header, &payload)),
            Err(IdTokenError::Malformed)
        );
    }

    #[test]
    fn a_jwk_set_without_the_small_rsa_key_leaves_its_kid_unknown() {
        // 1024 bits: below our floor, so the JWK is skipped and a token naming it finds no key.
        let doc: Value = serde_json::from_slice(KEYS).unwrap();
        let mut small = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "rs256-1")
            .unwrap()
            .clone();
        let n = URL_SAFE_NO_PAD
            .decode(small["n"].as_str().unwrap())
            .unwrap();
        let mut short = n[128..].to_vec();
        short[0] |= 0x80;
        small["n"] = b64(&short).into();
        small["kid"] = "small".into();
        let jwks = Jwks::parse(
            json!({"keys": [small, doc["keys"][0]]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(jwks.len(), 1);
        let token = with_header(
            &signed(Alg::RS256),
            &json!({"alg": "RS256", "kid": "small"}),
        );
        assert_eq!(
            verify_signature(&token, &jwks, Kind::Bearer),
            Err(IdTokenError::UnknownKid)
        );
    }

    /// Found by mutation testing: the size limits of a token (32 KiB) and of its header (2 KiB encoded)
    /// were not proven to refuse a token, however well signed.
    #[test]
    fn oversized_tokens_and_headers_are_refused_even_when_signed() {
        let padded = |n: usize| {
            let mut claims = claims_json();
            claims["pad"] = json!("a".repeat(n));
            es256_json(ES256_HEADER, &claims.to_string())
        };
        // The shortest padding that makes the token too long: the longest token taken, and the next.
        let (mut lo, mut hi) = (0, MAX_TOKEN);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if padded(mid).len() > MAX_TOKEN {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        assert!(padded(lo - 1).len() <= MAX_TOKEN);
        assert!(verify(&padded(lo - 1)).is_ok());
        assert_eq!(verify(&padded(lo)), Err(IdTokenError::Malformed));

        let header = |n: usize| {
            format!(
                r#"{{"alg":"ES256","kid":"es256-1","x":"{}"}}"#,
                "a".repeat(n)
            )
        };
        let n = (0..).find(|n| b64(header(*n)).len() > MAX_HEADER).unwrap();
        assert!(verify(&es256_json(&header(n - 1), &payload())).is_ok());
        assert_eq!(
            verify(&es256_json(&header(n), &payload())),
            Err(IdTokenError::Malformed)
        );
    }
}
