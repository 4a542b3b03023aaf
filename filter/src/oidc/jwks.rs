//! The provider's signing keys (JWK Set, RFC 7517), reduced to the keys we can verify ID tokens with.
//!
//! One odd key never spoils the set: encryption keys, symmetric keys, key types, curves and algorithms we
//! don't know, and keys that fail to decode are skipped. Only a set with no usable key at all is an error.

use alloc::borrow::ToOwned;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use core::fmt;

use super::sig::Hash;
use super::sig::ecdsa::{Crv, EcKey};
use super::sig::ed25519::Ed25519Key;
use super::sig::rsa::RsaKey;
use crate::b64;
use crate::json::{self, Object, Value};

/// JWK Sets are a few kilobytes; this leaves room for many keys with certificate chains.
const MAX_BODY: usize = 128 * 1024;
/// More JWKs than this is not a signing key set we should be iterating over per request.
const MAX_KEYS: usize = 64;
/// RSA modulus sizes we accept, in bits: shorter is too weak, longer costs a modular exponentiation of
/// that size per verification, for keys no IdP uses.
const RSA_BITS: core::ops::RangeInclusive<usize> = 2048..=4096;
/// The one RSA public exponent we accept (65537, big-endian): the one every IdP uses.
const RSA_EXPONENT: [u8; 3] = [1, 0, 1];

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

    /// The SHA-2 function the algorithm signs with (Ed25519 hashes inside, with SHA-512).
    fn hash(self) -> Hash {
        match self {
            Alg::RS256 | Alg::PS256 | Alg::ES256 => Hash::Sha256,
            Alg::RS384 | Alg::PS384 | Alg::ES384 => Hash::Sha384,
            Alg::RS512 | Alg::PS512 | Alg::EdDSA => Hash::Sha512,
        }
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
    /// Not a JSON object, or its `keys` is not an array.
    Malformed(String),
    /// Every key was skipped (encryption-only, unknown type or algorithm, or undecodable), or there was
    /// none: how many were skipped.
    NoUsableKeys(usize),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(f, "JWKS larger than {MAX_BODY} bytes"),
            Self::TooManyKeys => write!(f, "JWKS has more than {MAX_KEYS} keys"),
            Self::Malformed(reason) => write!(f, "malformed JWKS: {reason}"),
            // An IdP that signs with HMAC (authentik without a signing key) publishes no key at all.
            Self::NoUsableKeys(skipped) => write!(
                f,
                "JWKS has no usable signing key ({skipped} skipped): the filter takes RSA keys of 2048 to \
                 4096 bits with exponent 65537 (RS256, RS384, RS512, PS256, PS384, PS512), P-256 (ES256), \
                 P-384 (ES384) and Ed25519 (EdDSA) keys whose alg, if any, is one of those; not HMAC (HS256)"
            ),
        }
    }
}

impl core::error::Error for JwksError {}

/// The usable signing keys of a JWK Set.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// Shared: a configuration that takes over another's provider takes its keys without copying each
    /// (a `Vec<Jwk>`'s deep clone took 450 bytes of the module).
    keys: Rc<Vec<Jwk>>,
    skipped: usize,
}

/// One usable verification key: a public key bound to exactly one algorithm. A JWK without `alg` appears
/// once per algorithm its key type allows.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    /// The only algorithm this key verifies, which is what stops algorithm confusion: a token is checked
    /// with a key only when its header names this algorithm, and an RS256 key never verifies PS256 or
    /// HMAC. `usable_keys` pairs it with a key of the matching type.
    alg: Alg,
    key: PublicKey,
}

#[derive(Clone)]
enum PublicKey {
    /// For RS* and PS*: the algorithm picks the padding and the hash.
    Rsa(RsaKey),
    /// ES256 or ES384, by the key's curve.
    Ec(EcKey),
    Ed25519(Ed25519Key),
}

impl Jwks {
    /// Parses a JWK Set, keeping the keys that can verify signatures with an algorithm we support.
    pub fn parse(body: &[u8]) -> Result<Jwks, JwksError> {
        if body.len() > MAX_BODY {
            return Err(JwksError::TooLarge);
        }
        let doc = json::parse_object(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
        // No `keys` is read as no key (authentik publishes `{}` when it has no signing key), so that the
        // error names the cause.
        let entries: &[Value] = match doc.get("keys") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(JwksError::Malformed("\"keys\" is not an array".to_owned())),
        };
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
            return Err(JwksError::NoUsableKeys(skipped));
        }
        Ok(Jwks {
            keys: Rc::new(keys),
            skipped,
        })
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
        self.alg
    }

    /// Whether `signature` (the decoded third segment of a compact JWS) is this key's signature, with its
    /// algorithm, over `signing_input` (the first two segments, dot included: RFC 7515 5.2).
    pub(crate) fn verifies(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        let hash = self.alg.hash();
        match (&self.key, self.alg) {
            (PublicKey::Rsa(key), Alg::RS256 | Alg::RS384 | Alg::RS512) => {
                key.verify_pkcs1(hash, signing_input, signature)
            }
            (PublicKey::Rsa(key), Alg::PS256 | Alg::PS384 | Alg::PS512) => {
                key.verify_pss(hash, signing_input, signature)
            }
            // JWS ECDSA signatures are the raw r || s (RFC 7518 3.4): exactly 64 or 96 bytes (so DER is
            // refused), r and s in 1..n.
            // The key's curve is the one its algorithm names (P-256 with SHA-256, P-384 with SHA-384).
            (PublicKey::Ec(key), Alg::ES256 | Alg::ES384) if key.crv().bytes() == hash.bytes() => {
                key.verify_prehash(&hash.digest(&[signing_input]), signature)
            }
            (PublicKey::Ed25519(key), Alg::EdDSA) => key.verify(signing_input, signature),
            _ => false,
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

pub(crate) const RSA_ALGS: [Alg; 6] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
];

/// The usable keys one JWK yields, or `None` when it must be skipped.
fn usable_keys(jwk: &Object) -> Option<Vec<Jwk>> {
    // `null` is absent (some serialisers write every member they have); another type spoils the key.
    // Members a key needs (`kty`, `n`, `e`, `x`, `y`, an EC or OKP key's `crv`) stay needed.
    let text = |name: &str| -> Result<Option<&str>, ()> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(()),
        }
    };
    let kid = text("kid").ok()?.map(str::to_owned);
    if text("use").ok()?.is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops").filter(|ops| !ops.is_null()) {
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
    let bytes = |name: &str| {
        text(name)
            .ok()
            .flatten()
            .and_then(|s| b64::decode_padded(s, true))
    };

    let keys = match (text("kty").ok()??, text("crv").ok()?) {
        ("RSA", _) => {
            let (n, e) = (bytes("n")?, bytes("e")?);
            let algs = match declared {
                Some(alg) if RSA_ALGS.contains(&alg) => vec![alg],
                Some(_) => return None,
                None => RSA_ALGS.to_vec(),
            };
            let key = rsa_key(&n, &e)?;
            let mut keys = Vec::new();
            for alg in algs {
                keys.push((alg, PublicKey::Rsa(key.clone())));
            }
            keys
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
            // Shorter coordinates are taken as their leading zero bytes left out: Keycloak before 21
            // wrote them so (found in review: about one key in 128 was skipped, and a realm with that
            // key alone never got ready).
            let full = |v: Vec<u8>| {
                (!v.is_empty() && v.len() <= len).then(|| {
                    let mut p = vec![0; len - v.len()];
                    p.extend_from_slice(&v);
                    p
                })
            };
            let (x, y) = (full(bytes("x")?)?, full(bytes("y")?)?);
            // The coordinates must be field elements and the point on the curve (so not the identity).
            let crv = if alg == Alg::ES256 {
                Crv::P256
            } else {
                Crv::P384
            };
            let key = PublicKey::Ec(EcKey::new(crv, &x, &y)?);
            vec![(alg, key)]
        }
        ("OKP", Some("Ed25519")) => {
            if declared.is_some_and(|d| d != Alg::EdDSA) {
                return None;
            }
            // Refuses encodings that are not points, and the small-order points a signature could be
            // forged for.
            let key = Ed25519Key::new(&bytes("x")?)?;
            vec![(Alg::EdDSA, PublicKey::Ed25519(key))]
        }
        _ => return None,
    };
    let mut jwks = Vec::new();
    for (alg, key) in keys {
        jwks.push(Jwk {
            kid: kid.clone(),
            alg,
            key,
        });
    }
    Some(jwks)
}

/// An RSA public key within our policy: a modulus of `RSA_BITS` and the exponent 65537. Other keys are
/// skipped like any other undecodable key.
fn rsa_key(n: &[u8], e: &[u8]) -> Option<RsaKey> {
    if !e.iter().skip_while(|&&b| b == 0).eq(&RSA_EXPONENT) {
        return None;
    }
    // Also refuses an even modulus.
    RsaKey::new(n, RSA_BITS)
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

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

    #[test]
    fn ec_coordinates_without_their_leading_zero_bytes_are_taken() {
        // A P-256 key whose `x` begins with a zero byte, written without it (31 bytes), and a token it
        // signed (made with Node's crypto).
        let short = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "short-x",
            "x": "-Jhcj9R5VQdyGcr77mtiYPwcJUaMgC4KhbgFcawS1w",
            "y": "Prg9uTaBdezxH-0XoNvHRQg1siG32mHlweXcpr3v2Rs"});
        let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6InNob3J0LXgifQ.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLm\
                     NvbSIsInN1YiI6ImFsaWNlIiwiZXhwIjo0MTAyNDQ0ODAwfQ.raArGc1NvE-i3LxKjbxiVSdfk0Ke-0Gv\
                     mR3jxGx0-UGad_qawCuUFSJbHscgT2VxdYQpjyz4ET7I75EWkfLHQw";
        let jwks = parse_keys(vec![short.clone()]).unwrap();
        let claims = crate::oidc::id_token::verify_signature(
            token,
            &jwks,
            crate::oidc::id_token::Kind::Bearer,
        )
        .unwrap();
        assert_eq!(
            claims.get("sub").and_then(crate::json::Value::as_str),
            Some("alice")
        );
        // Longer than the curve's size: not a coordinate.
        let mut long = short;
        long["x"] = "AAD4mFyP1HlVB3IZyvvua2Jg_BwlRoyALgqFuAVxrBLX".into();
        assert!(parse_keys(vec![long]).is_err());
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
        // `null` is absent: members the key needs are still missing.
        for needed in ["kty", "crv", "x", "y"] {
            variant(&|k| {
                k.insert(needed.into(), Value::Null);
            });
        }
        let mut rsa = entry("rs256-1");
        rsa["alg"] = "RSA-OAEP-256".into();
        odd.push(rsa.clone());
        rsa["alg"] = "HS256".into();
        odd.push(rsa.clone());
        rsa["alg"] = "RS256".into();
        rsa["e"] = "Aw".into(); // e = 3: not 65537
        odd.push(rsa.clone());
        rsa["e"] = "AQAB".into();
        rsa["n"] = "AQAB".into(); // far too short
        odd.push(rsa);
        odd.push(Value::String("not an object".into()));
        let count = odd.len();

        assert_eq!(
            parse_keys(odd.clone()).unwrap_err(),
            JwksError::NoUsableKeys(count)
        );
        odd.push(good);
        let jwks = parse_keys(odd).unwrap();
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks.skipped(), count);
    }

    #[test]
    fn rsa_keys_must_fit_the_policy() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        let good = entry("rs256-1");
        let n = URL_SAFE_NO_PAD.decode(good["n"].as_str().unwrap()).unwrap();
        assert_eq!((n.len(), n[0] >= 0x80, n[255] & 1), (256, true, 1));
        let with = |n: &[u8], e: &str| {
            let mut k = good.clone();
            k["n"] = URL_SAFE_NO_PAD.encode(n).into();
            k["e"] = e.into();
            parse_keys(vec![k]).map(|jwks| jwks.len())
        };
        let skipped = Err(JwksError::NoUsableKeys(1));

        // 2048 bits, leading zeros or not; 4096 bits (two copies of n: still odd).
        assert_eq!(with(&n, "AQAB"), Ok(1));
        assert_eq!(with(&[&[0, 0], n.as_slice()].concat(), "AQAB"), Ok(1));
        let n4096 = [n.as_slice(), &n].concat();
        assert_eq!(with(&n4096, "AQAB"), Ok(1));
        // 2047 bits; 1024 bits; 4097 bits.
        let mut n2047 = n.clone();
        n2047[0] &= 0x7f;
        assert_eq!(with(&n2047, "AQAB"), skipped);
        let mut n1024 = n[128..].to_vec();
        n1024[0] |= 0x80;
        assert_eq!(with(&n1024, "AQAB"), skipped);
        assert_eq!(with(&[&[1], n4096.as_slice()].concat(), "AQAB"), skipped);
        // A modulus of 256 Kbit is refused before any arithmetic on it (set up, it takes seconds): no
        // modulus is set up for it, where one is for a key of an accepted size.
        let set_ups = || crate::oidc::sig::bignum::SET_UPS.with(core::cell::Cell::get);
        let before = set_ups();
        assert_eq!(with(&n.repeat(128), "AQAB"), skipped);
        assert_eq!(set_ups(), before, "the 256 Kbit modulus was set up");
        assert_eq!(with(&n4096, "AQAB"), Ok(1));
        assert_eq!(set_ups(), before + 1);
        // An even modulus.
        let mut even = n.clone();
        even[255] &= 0xfe;
        assert_eq!(with(&even, "AQAB"), skipped);
        // e = 65537 only (leading zero bytes are fine); not 3, 17, 65539, 2^32 + 65537, 0 or empty.
        assert_eq!(with(&n, "AAEAAQ"), Ok(1));
        assert_eq!(with(&n, "AAAAAAEAAQ"), Ok(1));
        for e in ["Aw", "EQ", "AQAD", "AQABAAE", "AA", ""] {
            assert_eq!(with(&n, e), skipped, "e {e}");
        }
    }

    #[test]
    fn curve_points_must_be_on_their_curve() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        for kid in ["es256-1", "es384-1"] {
            let good = entry(kid);
            let y = URL_SAFE_NO_PAD.decode(good["y"].as_str().unwrap()).unwrap();
            let with_y = |y: &[u8]| {
                let mut k = good.clone();
                k["y"] = URL_SAFE_NO_PAD.encode(y).into();
                parse_keys(vec![k]).map(|jwks| jwks.len())
            };
            assert_eq!(with_y(&y), Ok(1), "{kid}");
            let mut off = y.clone();
            off[y.len() - 1] ^= 1;
            assert_eq!(with_y(&off), Err(JwksError::NoUsableKeys(1)), "{kid}");
            // Not a field element; the identity has no affine coordinates.
            assert_eq!(
                with_y(&vec![0xff; y.len()]),
                Err(JwksError::NoUsableKeys(1)),
                "{kid}"
            );
            let mut k = good.clone();
            k["x"] = URL_SAFE_NO_PAD.encode(vec![0; y.len()]).into();
            k["y"] = URL_SAFE_NO_PAD.encode(vec![0; y.len()]).into();
            assert_eq!(
                parse_keys(vec![k]).unwrap_err(),
                JwksError::NoUsableKeys(1),
                "{kid}"
            );
        }
        // Ed25519: not a point encoding; a small-order point (the identity).
        let good = entry("eddsa-1");
        for x in [[0xff; 32].as_slice(), &{
            let mut identity = [0; 32];
            identity[0] = 1;
            identity
        }] {
            let mut k = good.clone();
            k["x"] = URL_SAFE_NO_PAD.encode(x).into();
            assert_eq!(parse_keys(vec![k]).unwrap_err(), JwksError::NoUsableKeys(1));
        }
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
        // No `keys` (authentik's set without a signing key) is no key, as an empty `keys` is.
        for none in [&br#"{"keys": []}"#[..], b"{}", br#"{"keys": null}"#] {
            assert_eq!(Jwks::parse(none).unwrap_err(), JwksError::NoUsableKeys(0));
        }
        assert_eq!(
            Jwks::parse(&vec![b' '; MAX_BODY + 1]).unwrap_err(),
            JwksError::TooLarge
        );
        let many = vec![entry("es256-1"); MAX_KEYS + 1];
        assert_eq!(parse_keys(many).unwrap_err(), JwksError::TooManyKeys);
    }

    #[test]
    fn no_usable_key_says_what_the_idp_must_do() {
        assert_eq!(
            Jwks::parse(b"{}").unwrap_err().to_string(),
            "JWKS has no usable signing key (0 skipped): the filter takes RSA keys of 2048 to 4096 \
             bits with exponent 65537 (RS256, RS384, RS512, PS256, PS384, PS512), P-256 (ES256), P-384 \
             (ES384) and Ed25519 (EdDSA) keys whose alg, if any, is one of those; not HMAC (HS256)"
        );
        let hmac = parse_keys(vec![entry("hmac-1")]).unwrap_err().to_string();
        assert!(hmac.starts_with("JWKS has no usable signing key (1 skipped): "));
    }

    #[test]
    fn null_members_are_absent() {
        // As .NET writes a JsonWebKey when nulls are not left out: every member it has, most null.
        let nulls = [
            "alg", "use", "crv", "key_ops", "x5c", "x5t", "d", "k", "oth",
        ];
        let mut rsa = entry("rs256-1");
        for name in nulls {
            rsa[name] = Value::Null;
        }
        let jwks = parse_keys(vec![rsa.clone()]).unwrap();
        // Without `alg`, an RSA key serves every RSA algorithm.
        assert_eq!(jwks.len(), RSA_ALGS.len());
        assert_eq!(kids(&jwks, Alg::PS512), [Some("rs256-1")]);
        rsa["kid"] = Value::Null;
        let jwks = parse_keys(vec![rsa]).unwrap();
        assert_eq!(kids(&jwks, Alg::RS256), [None]);
        assert_eq!(jwks.find(Some("rs256-1"), Alg::RS256).count(), 0);

        let mut ec = entry("es384-1");
        for name in ["alg", "use", "key_ops", "kid"] {
            ec[name] = Value::Null;
        }
        assert_eq!(kids(&parse_keys(vec![ec]).unwrap(), Alg::ES384), [None]);

        // Other types than a string (or an array of strings for `key_ops`) still spoil the key.
        for (name, value) in [
            ("alg", serde_json::json!(false)),
            ("use", serde_json::json!(1)),
            ("crv", serde_json::json!([])),
            ("key_ops", serde_json::json!("verify")),
            ("kid", serde_json::json!({})),
        ] {
            let mut k = entry("rs256-1");
            k[name] = value;
            assert_eq!(
                parse_keys(vec![k]).unwrap_err(),
                JwksError::NoUsableKeys(1),
                "{name}"
            );
        }
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

    /// Found by mutation testing: a set of exactly `MAX_KEYS` keys was not proven taken.
    #[test]
    fn a_set_of_max_keys_is_taken() {
        let jwks = parse_keys(vec![entry("es256-1"); MAX_KEYS]).unwrap();
        assert_eq!(jwks.len(), MAX_KEYS);
    }

    /// Found by mutation testing: a key whose declared `alg` is one we verify but not with its key type
    /// (an RSA key that says ES256, an Ed25519 key that says RS256) was not proven skipped: it would make
    /// a set "usable" whose every signature fails.
    #[test]
    fn a_key_declaring_another_types_alg_is_skipped() {
        let mut odd = Vec::new();
        for (kid, alg) in [
            ("rs256-1", "ES256"),
            ("rs256-1", "EdDSA"),
            ("eddsa-1", "RS256"),
            ("eddsa-1", "ES256"),
        ] {
            let mut k = entry(kid);
            k["alg"] = alg.into();
            odd.push(k);
        }
        assert_eq!(
            parse_keys(odd.clone()).unwrap_err(),
            JwksError::NoUsableKeys(4)
        );
        odd.push(entry("eddsa-1"));
        let jwks = parse_keys(odd).unwrap();
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks.skipped(), 4);
    }
}
