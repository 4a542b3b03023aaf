//! ID token validation (OIDC Core 3.1.3.7): signature with the provider's JWKS, then the claims.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::JWTError;
use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use serde_json::{Map, Value};

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
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
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
    pub all: Map<String, Value>,
}

/// Why an ID token was refused. Messages name the cause and carry no token material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    /// Not a compact JWS we can read (size, segments, base64url, JSON, claim types).
    Malformed,
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
}

impl fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed ID token"),
            Self::UnsupportedAlg(alg) => write!(f, "ID token alg {alg:?} is not accepted"),
            Self::UnknownKid => f.write_str("no JWKS key matches the ID token's kid and alg"),
            Self::BadSignature => f.write_str("ID token signature does not verify"),
            Self::WrongIssuer => f.write_str("ID token iss is not the configured issuer"),
            Self::WrongAudience => f.write_str("ID token aud does not include our client id"),
            Self::AzpMismatch => f.write_str("ID token azp is not our client id"),
            Self::Expired => f.write_str("ID token has expired"),
            Self::NotYetValid => f.write_str("ID token is not valid yet (nbf)"),
            Self::IssuedInFuture => f.write_str("ID token is issued in the future (iat)"),
            Self::MissingExp => f.write_str("ID token has no exp"),
            Self::MissingIat => f.write_str("ID token has no iat"),
            Self::MissingSub => f.write_str("ID token has no sub"),
            Self::MissingNonce => f.write_str("ID token has no nonce"),
            Self::NonceMismatch => f.write_str("ID token nonce is not the one sent at login"),
        }
    }
}

impl std::error::Error for IdTokenError {}

/// Verifies an ID token's signature against `jwks`, then its claims against `expected`.
pub fn verify(token: &str, jwks: &Jwks, expected: &Expected) -> Result<Claims, IdTokenError> {
    check_claims(verify_signature(token, jwks)?, expected)
}

/// Verifies a JWT's signature against `jwks` (algorithm from our allow-list, key by `kid`) and returns its
/// claims, unchecked: the caller judges them (ID tokens here, logout tokens in `logout_token`).
pub fn verify_signature(token: &str, jwks: &Jwks) -> Result<Map<String, Value>, IdTokenError> {
    if token.len() > MAX_TOKEN {
        return Err(IdTokenError::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(IdTokenError::Malformed);
    };
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
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(IdTokenError::Malformed),
    };

    let mut candidates = jwks.find(kid, alg).peekable();
    if candidates.peek().is_none() {
        return Err(IdTokenError::UnknownKid);
    }
    let mut verified = false;
    for key in candidates {
        match key.verify_token(token, signature_only()) {
            Ok(_) => {
                verified = true;
                break;
            }
            // Without a kid several keys may be candidates; only a wrong signature means "try the next".
            Err(e) if is_bad_signature(&e) => {}
            Err(_) => return Err(IdTokenError::Malformed),
        }
    }
    if !verified {
        return Err(IdTokenError::BadSignature);
    }

    decode_json(payload)
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

/// jwt-simple checks the signature, `crit` and `typ`, and also judges `exp`/`nbf`/`iat` by the system
/// clock with a 15-minute default tolerance. We judge time ourselves, with the caller's `now` and leeway
/// and one error per cause, so its time checks are switched off: with `accept_future` it skips `nbf` and
/// `iat`, and with its clock at 0 and no tolerance its expiry test (`0 <= exp`) always passes. (Letting it
/// check time too would turn "expired" into an undistinguishable library error, and read a clock the
/// wasm host may not give.)
fn signature_only() -> VerificationOptions {
    VerificationOptions {
        accept_future: true,
        artificial_time: Some(UnixTimeStamp::from_secs(0)),
        time_tolerance: Some(Duration::from_secs(0)),
        max_token_length: Some(MAX_TOKEN),
        ..VerificationOptions::default()
    }
}

fn is_bad_signature(e: &jwt_simple::Error) -> bool {
    matches!(
        e.downcast_ref::<JWTError>(),
        Some(JWTError::InvalidSignature)
    )
}

fn check_claims(all: Map<String, Value>, expected: &Expected) -> Result<Claims, IdTokenError> {
    if all.get("iss").and_then(Value::as_str) != Some(expected.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }

    let audiences: BTreeSet<&str> = match all.get("aud") {
        None => BTreeSet::new(),
        Some(Value::String(aud)) => BTreeSet::from([aud.as_str()]),
        Some(Value::Array(auds)) => auds
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(IdTokenError::Malformed)?,
        Some(_) => return Err(IdTokenError::Malformed),
    };
    if !audiences.contains(expected.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    match all.get("azp") {
        Some(azp) if azp.as_str() != Some(expected.client_id) => {
            return Err(IdTokenError::AzpMismatch);
        }
        // A token for several audiences must say which of them it was issued to.
        None if audiences.len() > 1 => return Err(IdTokenError::AzpMismatch),
        _ => {}
    }

    let now = expected.now;
    let leeway = expected.leeway;
    let exp = numeric_date(&all, "exp")?.ok_or(IdTokenError::MissingExp)?;
    // RFC 7519 4.1.4: the current time must be before `exp`.
    if now >= exp.saturating_add(leeway) {
        return Err(IdTokenError::Expired);
    }
    if numeric_date(&all, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(IdTokenError::NotYetValid);
    }
    let iat = numeric_date(&all, "iat")?.ok_or(IdTokenError::MissingIat)?;
    if iat > now.saturating_add(leeway) {
        return Err(IdTokenError::IssuedInFuture);
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
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, IdTokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(secs) = value.as_u64() {
        return Ok(Some(secs));
    }
    match value.as_f64() {
        // Truncation is the intent: a fraction of a second changes no decision.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs as u64)),
        _ => Err(IdTokenError::Malformed),
    }
}

fn decode_json(segment: &str) -> Result<Map<String, Value>, IdTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| IdTokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Malformed)
}

/// The `alg` is attacker-chosen text that ends up in a log line: keep it short and plain.
fn sanitize_alg(alg: &str) -> String {
    alg.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '.'))
        .take(16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(claims.all["email"], "user-1@example.com", "{name}");
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
        // jwt-simple would judge by the machine's clock: this token expired in 2001, and the usual
        // test tokens are issued in 2030. Only `now` decides.
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
        claims.insert("exp".into(), serde_json::json!(1_900_003_600.5));
        claims.insert("iat".into(), serde_json::json!(1_900_000_000.25));
        let c = check_claims(claims.clone(), &expected()).unwrap();
        assert_eq!((c.iat, c.exp), (NOW, NOW + 3600));
        claims.insert("exp".into(), serde_json::json!("tomorrow"));
        assert_eq!(
            check_claims(claims, &expected()),
            Err(IdTokenError::Malformed)
        );
    }
}
