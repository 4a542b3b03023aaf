//! The provider's signing keys (JWK Set, RFC 7517), reduced to the keys we can verify ID tokens with.
//!
//! One odd key never spoils the set: encryption keys, symmetric keys, key types, curves and algorithms we
//! don't know, and keys that fail to decode are skipped. Only a set with no usable key at all is an error.

use std::fmt;

use jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, ES256PublicKey, ES384PublicKey,
    Ed25519PublicKey, EdDSAPublicKeyLike, PS256PublicKey, PS384PublicKey, PS512PublicKey,
    RS256PublicKey, RS384PublicKey, RS512PublicKey, RSAPublicKeyLike,
};
use jwt_simple::claims::JWTClaims;
use jwt_simple::common::VerificationOptions;
use serde_json::{Map, Value};

use super::b64url_lenient;

/// JWK Sets are a few kilobytes; this leaves room for many keys with certificate chains.
const MAX_BODY: usize = 128 * 1024;
/// More JWKs than this is not a signing key set we should be iterating over per request.
const MAX_KEYS: usize = 64;

/// A JWS signature algorithm we verify ID tokens with. `none` and HMAC are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// The algorithm named by a JWS `alg` value; `None` for anything we don't verify.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a JWK Set was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Larger than we accept.
    TooLarge,
    /// More keys than we accept.
    TooManyKeys,
    /// Not JSON, or no `keys` array.
    Malformed(String),
    /// Every key was skipped (encryption-only, unknown type or algorithm, or undecodable).
    NoUsableKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(f, "JWKS larger than {MAX_BODY} bytes"),
            Self::TooManyKeys => write!(f, "JWKS has more than {MAX_KEYS} keys"),
            Self::Malformed(reason) => write!(f, "malformed JWKS: {reason}"),
            Self::NoUsableKeys => f.write_str("JWKS has no usable signing key"),
        }
    }
}

impl std::error::Error for JwksError {}

/// The usable signing keys of a JWK Set.
#[derive(Debug, Clone)]
pub struct Jwks {
    keys: Vec<Jwk>,
    skipped: usize,
}

/// One usable verification key: a public key bound to exactly one algorithm. A JWK without `alg` appears
/// once per algorithm its key type allows.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

/// jwt-simple binds the algorithm to the key type, which is what stops algorithm confusion: an RS256 key
/// can only ever verify RS256.
#[derive(Clone)]
enum PublicKey {
    Rs256(RS256PublicKey),
    Rs384(RS384PublicKey),
    Rs512(RS512PublicKey),
    Ps256(PS256PublicKey),
    Ps384(PS384PublicKey),
    Ps512(PS512PublicKey),
    Es256(ES256PublicKey),
    Es384(ES384PublicKey),
    EdDsa(Ed25519PublicKey),
}

impl Jwks {
    /// Parses a JWK Set, keeping the keys that can verify signatures with an algorithm we support.
    pub fn parse(body: &[u8]) -> Result<Jwks, JwksError> {
        if body.len() > MAX_BODY {
            return Err(JwksError::TooLarge);
        }
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::Malformed("no \"keys\" array".to_owned()))?;
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }

        let mut keys = Vec::new();
        let mut skipped = 0;
        for entry in entries {
            match entry.as_object().and_then(usable_keys) {
                Some(usable) => keys.extend(usable),
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(Jwks { keys, skipped })
    }

    /// Number of usable (key, algorithm) pairs.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a parsed set; here because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many JWKs of the document were skipped, for a log line.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The keys for `alg`: with `kid`, only keys with that exact `kid`; without, every key of that `alg`.
    pub fn find<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg() == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }
}

impl Jwk {
    /// The key's `kid`, if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.key {
            PublicKey::Rs256(_) => Alg::RS256,
            PublicKey::Rs384(_) => Alg::RS384,
            PublicKey::Rs512(_) => Alg::RS512,
            PublicKey::Ps256(_) => Alg::PS256,
            PublicKey::Ps384(_) => Alg::PS384,
            PublicKey::Ps512(_) => Alg::PS512,
            PublicKey::Es256(_) => Alg::ES256,
            PublicKey::Es384(_) => Alg::ES384,
            PublicKey::EdDsa(_) => Alg::EdDSA,
        }
    }

    /// Verifies a compact JWS with this key; jwt-simple also checks the header `alg` equals ours.
    pub(crate) fn verify_token(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<Value>, jwt_simple::Error> {
        let options = Some(options);
        match &self.key {
            PublicKey::Rs256(k) => k.verify_token(token, options),
            PublicKey::Rs384(k) => k.verify_token(token, options),
            PublicKey::Rs512(k) => k.verify_token(token, options),
            PublicKey::Ps256(k) => k.verify_token(token, options),
            PublicKey::Ps384(k) => k.verify_token(token, options),
            PublicKey::Ps512(k) => k.verify_token(token, options),
            PublicKey::Es256(k) => k.verify_token(token, options),
            PublicKey::Es384(k) => k.verify_token(token, options),
            PublicKey::EdDsa(k) => k.verify_token(token, options),
        }
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish()
    }
}

const RSA_ALGS: [Alg; 6] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
];

/// The usable keys one JWK yields, or `None` when it must be skipped.
fn usable_keys(jwk: &Map<String, Value>) -> Option<Vec<Jwk>> {
    let text = |name: &str| -> Result<Option<&str>, ()> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(()),
        }
    };
    let kid = text("kid").ok()?.map(str::to_owned);
    if text("use").ok()?.is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()?
            .iter()
            .any(|op| op.as_str() == Some("verify"));
        if !verify {
            return None;
        }
    }
    // An unknown `alg` (e.g. RSA-OAEP, HS256, something newer) makes the key unusable, not the set.
    let declared = match text("alg").ok()? {
        None => None,
        Some(name) => Some(Alg::from_name(name)?),
    };
    let bytes = |name: &str| text(name).ok().flatten().and_then(b64url_lenient);

    let keys = match (text("kty").ok()??, text("crv").ok()?) {
        ("RSA", _) => {
            let (n, e) = (bytes("n")?, bytes("e")?);
            let algs = match declared {
                Some(alg) if RSA_ALGS.contains(&alg) => vec![alg],
                Some(_) => return None,
                None => RSA_ALGS.to_vec(),
            };
            algs.into_iter()
                .map(|alg| rsa_key(alg, &n, &e))
                .collect::<Option<Vec<_>>>()?
        }
        ("EC", Some(crv)) => {
            let (alg, len) = match crv {
                "P-256" => (Alg::ES256, 32),
                "P-384" => (Alg::ES384, 48),
                _ => return None,
            };
            if declared.is_some_and(|d| d != alg) {
                return None;
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return None;
            }
            // SEC1 uncompressed point: 0x04 || x || y.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = match alg {
                Alg::ES256 => PublicKey::Es256(ES256PublicKey::from_bytes(&point).ok()?),
                _ => PublicKey::Es384(ES384PublicKey::from_bytes(&point).ok()?),
            };
            vec![key]
        }
        ("OKP", Some("Ed25519")) => {
            if declared.is_some_and(|d| d != Alg::EdDSA) {
                return None;
            }
            let x = bytes("x")?;
            vec![PublicKey::EdDsa(Ed25519PublicKey::from_bytes(&x).ok()?)]
        }
        _ => return None,
    };
    Some(
        keys.into_iter()
            .map(|key| Jwk {
                kid: kid.clone(),
                key,
            })
            .collect(),
    )
}

/// jwt-simple refuses RSA moduli outside 2048..=4096 bits and exponents other than 65537; such keys are
/// skipped like any other undecodable key.
fn rsa_key(alg: Alg, n: &[u8], e: &[u8]) -> Option<PublicKey> {
    Some(match alg {
        Alg::RS256 => PublicKey::Rs256(RS256PublicKey::from_components(n, e).ok()?),
        Alg::RS384 => PublicKey::Rs384(RS384PublicKey::from_components(n, e).ok()?),
        Alg::RS512 => PublicKey::Rs512(RS512PublicKey::from_components(n, e).ok()?),
        Alg::PS256 => PublicKey::Ps256(PS256PublicKey::from_components(n, e).ok()?),
        Alg::PS384 => PublicKey::Ps384(PS384PublicKey::from_components(n, e).ok()?),
        Alg::PS512 => PublicKey::Ps512(PS512PublicKey::from_components(n, e).ok()?),
        Alg::ES256 | Alg::ES384 | Alg::EdDSA => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[u8] = include_bytes!("../../../testdata/jwks/keys.json");

    fn kids(jwks: &Jwks, alg: Alg) -> Vec<Option<&str>> {
        jwks.find(None, alg).map(Jwk::kid).collect()
    }

    #[test]
    fn keeps_usable_keys_and_skips_the_rest() {
        let jwks = Jwks::parse(KEYS).unwrap();
        // rs256-1, ps256-1, es256-1, es384-1, eddsa-1, plus rsa-noalg once per RSA algorithm.
        assert_eq!(jwks.len(), 5 + RSA_ALGS.len());
        // enc-1 (use enc), hmac-1 (kty oct), future-1 (kty AKP).
        assert_eq!(jwks.skipped(), 3);
        assert_eq!(
            kids(&jwks, Alg::RS256),
            [Some("rs256-1"), Some("rsa-noalg")]
        );
        assert_eq!(
            kids(&jwks, Alg::PS256),
            [Some("ps256-1"), Some("rsa-noalg")]
        );
        assert_eq!(kids(&jwks, Alg::RS512), [Some("rsa-noalg")]);
        assert_eq!(kids(&jwks, Alg::ES256), [Some("es256-1")]);
        assert_eq!(kids(&jwks, Alg::ES384), [Some("es384-1")]);
        assert_eq!(kids(&jwks, Alg::EdDSA), [Some("eddsa-1")]);
    }

    #[test]
    fn find_by_kid_also_requires_the_alg() {
        let jwks = Jwks::parse(KEYS).unwrap();
        let found: Vec<_> = jwks.find(Some("rs256-1"), Alg::RS256).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].alg(), Alg::RS256);
        assert_eq!(jwks.find(Some("rs256-1"), Alg::PS256).count(), 0);
        assert_eq!(jwks.find(Some("rs256-1"), Alg::ES256).count(), 0);
        assert_eq!(jwks.find(Some("enc-1"), Alg::RS256).count(), 0);
        assert_eq!(jwks.find(Some("nope"), Alg::RS256).count(), 0);
    }

    /// The key set as JSON, to build variants of it.
    fn entries() -> Vec<Value> {
        let doc: Value = serde_json::from_slice(KEYS).unwrap();
        doc["keys"].as_array().unwrap().clone()
    }

    fn entry(kid: &str) -> Value {
        entries().into_iter().find(|k| k["kid"] == kid).unwrap()
    }

    fn parse_keys(keys: Vec<Value>) -> Result<Jwks, JwksError> {
        Jwks::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn odd_keys_are_skipped_not_fatal() {
        let good = entry("es256-1");
        let mut odd = Vec::new();
        let mut variant = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut k = good.clone();
            f(k.as_object_mut().unwrap());
            odd.push(k);
        };
        variant(&|k| {
            k.insert("alg".into(), "ES512".into());
        });
        variant(&|k| {
            k.insert("alg".into(), "ES384".into());
        });
        variant(&|k| {
            k.insert("crv".into(), "P-521".into());
        });
        variant(&|k| {
            k.insert("crv".into(), "secp256k1".into());
        });
        variant(&|k| {
            k.insert("x".into(), "!!not base64!!".into());
        });
        variant(&|k| {
            k.insert("y".into(), "AAAA".into());
        });
        variant(&|k| {
            k.insert("kid".into(), 7.into());
        });
        variant(&|k| {
            k.insert("use".into(), "enc".into());
        });
        variant(&|k| {
            k.insert("key_ops".into(), serde_json::json!(["encrypt"]));
        });
        variant(&|k| {
            k.remove("kty");
        });
        let mut rsa = entry("rs256-1");
        rsa["alg"] = "RSA-OAEP-256".into();
        odd.push(rsa.clone());
        rsa["alg"] = "HS256".into();
        odd.push(rsa.clone());
        rsa["alg"] = "RS256".into();
        rsa["e"] = "Aw".into(); // e = 3: jwt-simple refuses it
        odd.push(rsa.clone());
        rsa["e"] = "AQAB".into();
        rsa["n"] = "AQAB".into(); // far too short
        odd.push(rsa);
        odd.push(Value::String("not an object".into()));
        let count = odd.len();

        assert_eq!(
            parse_keys(odd.clone()).unwrap_err(),
            JwksError::NoUsableKeys
        );
        odd.push(good);
        let jwks = parse_keys(odd).unwrap();
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks.skipped(), count);
    }

    #[test]
    fn keys_without_alg_follow_their_type() {
        let mut keys = Vec::new();
        for kid in ["es256-1", "es384-1", "eddsa-1"] {
            let mut k = entry(kid);
            k.as_object_mut().unwrap().remove("alg");
            k.as_object_mut().unwrap().remove("use");
            keys.push(k);
        }
        let jwks = parse_keys(keys).unwrap();
        assert_eq!(kids(&jwks, Alg::ES256), [Some("es256-1")]);
        assert_eq!(kids(&jwks, Alg::ES384), [Some("es384-1")]);
        assert_eq!(kids(&jwks, Alg::EdDSA), [Some("eddsa-1")]);
        assert_eq!(jwks.len(), 3);
    }

    #[test]
    fn padded_base64_is_accepted() {
        let mut k = entry("es256-1");
        let x = k["x"].as_str().unwrap().to_owned();
        k["x"] = format!("{x}=").into(); // 32 bytes -> 43 chars unpadded, 44 padded
        assert_eq!(parse_keys(vec![k]).unwrap().len(), 1);
    }

    #[test]
    fn whole_set_errors() {
        assert!(matches!(
            Jwks::parse(b"not json"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            Jwks::parse(br#"{"keys": {}}"#),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(Jwks::parse(b"[]"), Err(JwksError::Malformed(_))));
        assert_eq!(
            Jwks::parse(br#"{"keys": []}"#).unwrap_err(),
            JwksError::NoUsableKeys
        );
        assert_eq!(
            Jwks::parse(&vec![b' '; MAX_BODY + 1]).unwrap_err(),
            JwksError::TooLarge
        );
        let many = vec![entry("es256-1"); MAX_KEYS + 1];
        assert_eq!(parse_keys(many).unwrap_err(), JwksError::TooManyKeys);
    }

    #[test]
    fn debug_names_kid_and_alg_only() {
        let jwks = parse_keys(vec![entry("eddsa-1")]).unwrap();
        assert_eq!(
            format!("{jwks:?}"),
            r#"Jwks { keys: [Jwk { kid: Some("eddsa-1"), alg: EdDSA }], skipped: 0 }"#
        );
    }

    #[test]
    fn alg_names_round_trip() {
        for alg in RSA_ALGS
            .into_iter()
            .chain([Alg::ES256, Alg::ES384, Alg::EdDSA])
        {
            assert_eq!(Alg::from_name(alg.as_str()), Some(alg));
        }
        for name in [
            "none", "HS256", "HS512", "ES512", "ES256K", "Ed25519", "rs256", "",
        ] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }
}
