//! Each algorithm against its RustCrypto reference: what the reference signs verifies, and nothing the
//! reference refuses (tampered, out-of-range, wrong-scheme signatures) does.

use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::ecdsa::{Crv, EcKey};
use super::ed25519::Ed25519Key;
use super::rsa::RsaKey;
use super::{Hash, bignum};

/// Every modulus size: these tests are about the arithmetic, not the policy.
const ANY_SIZE: core::ops::RangeInclusive<usize> = 0..=usize::MAX;

const RSA_PEMS: [&str; 3] = [
    include_str!("../../../../testdata/jwks/private/rs256-1.pem"),
    include_str!("../../../../testdata/jwks/private/ps256-1.pem"),
    include_str!("../../../../testdata/jwks/private/rsa-noalg.pem"),
];

/// A small deterministic generator: the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `v` with one bit flipped.
    fn flip(&mut self, v: &[u8]) -> Vec<u8> {
        let mut v = v.to_vec();
        let i = (self.next() as usize) % (v.len() * 8);
        v[i / 8] ^= 1 << (i % 8);
        v
    }
}

fn rsa_digest(hash: Hash, m: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(m).to_vec(),
        Hash::Sha384 => Sha384::digest(m).to_vec(),
        Hash::Sha512 => Sha512::digest(m).to_vec(),
    }
}

fn pkcs1(hash: Hash) -> rsa::Pkcs1v15Sign {
    match hash {
        Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
        Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
        Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
    }
}

fn pss(hash: Hash) -> rsa::Pss {
    match hash {
        Hash::Sha256 => rsa::Pss::new::<Sha256>(),
        Hash::Sha384 => rsa::Pss::new::<Sha384>(),
        Hash::Sha512 => rsa::Pss::new::<Sha512>(),
    }
}

#[test]
fn hashes_match_sha2() {
    for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
        assert_eq!(hash.digest(&[b"ab", b"", b"c"]), rsa_digest(hash, b"abc"));
        assert_eq!(hash.digest(&[]).len(), hash.bytes());
    }
}

#[test]
fn rsa_agrees_with_the_rsa_crate() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for pem in RSA_PEMS {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let public = private.to_public_key();
        let ours = RsaKey::new(&public.n().to_bytes_be(), ANY_SIZE).unwrap();
        assert_eq!(ours.bits(), public.n().bits());
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            for round in 0..4 {
                let msg = rng.bytes(round * 37);
                let digest = rsa_digest(hash, &msg);
                let v15 = private.sign(pkcs1(hash), &digest).unwrap();
                let ps = private
                    .sign_with_rng(&mut rsa::rand_core::OsRng, pss(hash), &digest)
                    .unwrap();
                assert!(ours.verify_pkcs1(hash, &msg, &v15), "{hash:?} PKCS#1");
                assert!(ours.verify_pss(hash, &msg, &ps), "{hash:?} PSS");
                // The other scheme, another hash, another message, a flipped bit: all refused, as by
                // the reference.
                assert!(!ours.verify_pss(hash, &msg, &v15));
                assert!(!ours.verify_pkcs1(hash, &msg, &ps));
                let other = if hash == Hash::Sha256 {
                    Hash::Sha384
                } else {
                    Hash::Sha256
                };
                assert!(!ours.verify_pkcs1(other, &msg, &v15));
                assert!(!ours.verify_pss(other, &msg, &ps));
                let msg2 = rng.flip(&[msg.as_slice(), b"x"].concat());
                assert!(!ours.verify_pkcs1(hash, &msg2, &v15));
                assert!(!ours.verify_pss(hash, &msg2, &ps));
                for _ in 0..4 {
                    let (bad15, bad_ps) = (rng.flip(&v15), rng.flip(&ps));
                    assert_eq!(
                        ours.verify_pkcs1(hash, &msg, &bad15),
                        public.verify(pkcs1(hash), &digest, &bad15).is_ok()
                    );
                    assert_eq!(
                        ours.verify_pss(hash, &msg, &bad_ps),
                        public.verify(pss(hash), &digest, &bad_ps).is_ok()
                    );
                }
                // Not exactly the modulus's length.
                let mut long = vec![0u8];
                long.extend_from_slice(&v15);
                assert!(!ours.verify_pkcs1(hash, &msg, &long));
                assert!(!ours.verify_pkcs1(hash, &msg, &v15[1..]));
            }
        }
    }
}

#[test]
fn rsa_refuses_even_or_empty_moduli() {
    assert!(RsaKey::new(&[], ANY_SIZE).is_none());
    assert!(RsaKey::new(&[0, 0], ANY_SIZE).is_none());
    assert!(RsaKey::new(&[0x80; 256], ANY_SIZE).is_none());
    assert_eq!(
        RsaKey::new(&[0, 0, 0x01, 0x01], ANY_SIZE).unwrap().bits(),
        9
    );
}

/// (x, y) of a reference verifying key, from its uncompressed SEC1 encoding.
fn xy(sec1: &[u8], len: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(sec1.len(), 1 + 2 * len);
    (sec1[1..1 + len].to_vec(), sec1[1 + len..].to_vec())
}

/// n − s, the other valid signature for the same (r, s) (ECDSA is malleable; both verify).
fn negate_s(sig: &[u8], order_hex: &str) -> Vec<u8> {
    let len = sig.len() / 2;
    let mut n = bignum::from_be(&bignum::hex(order_hex), len / 4).unwrap();
    let s = bignum::from_be(&sig[len..], len / 4).unwrap();
    bignum::sub_in_place(&mut n, &s);
    [&sig[..len], &bignum::to_be(&n, len)[..]].concat()
}

/// One ECDSA curve against its RustCrypto crate: valid, high-s, tampered and out-of-range signatures.
macro_rules! ecdsa_agrees {
    ($name:ident, $krate:ident, $crv:expr, $len:literal, $order:literal, $seed:literal, $keys:literal) => {
        #[test]
        fn $name() {
            let mut rng = Rng($seed);
            for _ in 0..$keys {
                let Ok(sk) = $krate::ecdsa::SigningKey::from_slice(&rng.bytes($len)) else {
                    continue;
                };
                let vk = *sk.verifying_key();
                let (x, y) = xy(vk.to_sec1_point(false).as_bytes(), $len);
                let key = EcKey::new($crv, &x, &y).unwrap();
                let hash = rng.bytes($len);
                let sig: $krate::ecdsa::Signature = sk.sign_prehash(&hash).unwrap();
                let sig = sig.to_bytes().to_vec();
                assert!(key.verify_prehash(&hash, &sig));
                let reference = |h: &[u8], s: &[u8]| {
                    $krate::ecdsa::Signature::from_slice(s)
                        .is_ok_and(|s| vk.verify_prehash(h, &s).is_ok())
                };
                let high = negate_s(&sig, $order);
                assert_eq!(key.verify_prehash(&hash, &high), reference(&hash, &high));
                for _ in 0..4 {
                    let bad = rng.flip(&sig);
                    assert_eq!(key.verify_prehash(&hash, &bad), reference(&hash, &bad));
                    assert!(!key.verify_prehash(&rng.flip(&hash), &sig));
                }
                // r or s zero, or not below n; a short signature; a short hash.
                let n = bignum::hex($order);
                let (r, s) = sig.split_at($len);
                for bad in [
                    [&[0u8; $len][..], s].concat(),
                    [r, &[0u8; $len][..]].concat(),
                    [&n[..], s].concat(),
                    [r, &n[..]].concat(),
                    [&[0xff; $len][..], s].concat(),
                    sig[..2 * $len - 1].to_vec(),
                ] {
                    assert!(!key.verify_prehash(&hash, &bad));
                    assert!(!reference(&hash, &bad));
                }
                assert!(!key.verify_prehash(&hash[..$len - 1], &sig));
                // Another key's signature.
                assert!(!EcKey::new($crv, &y, &x).is_some_and(|k| k.verify_prehash(&hash, &sig)));
            }
        }
    };
}

ecdsa_agrees!(
    p256_agrees_with_the_p256_crate,
    p256,
    Crv::P256,
    32,
    "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
    0x1234_5678_9abc_def1,
    12
);

ecdsa_agrees!(
    p384_agrees_with_the_p384_crate,
    p384,
    Crv::P384,
    48,
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    0x0fed_cba9_8765_4321,
    6
);

#[test]
fn points_off_the_curve_are_refused() {
    let mut rng = Rng(7);
    for crv in [Crv::P256, Crv::P384] {
        let len = crv.bytes();
        for _ in 0..8 {
            assert!(EcKey::new(crv, &rng.bytes(len), &rng.bytes(len)).is_none());
        }
        assert!(EcKey::new(crv, &vec![0; len], &vec![0; len]).is_none());
        assert!(EcKey::new(crv, &vec![0xff; len], &vec![0xff; len]).is_none());
    }
    // The generators are on their curves; a coordinate plus p is not a field element.
    let g256 = (
        bignum::hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"),
        bignum::hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"),
    );
    assert!(EcKey::new(Crv::P256, &g256.0, &g256.1).is_some());
    assert!(EcKey::new(Crv::P384, &g256.0, &g256.1).is_none());
    assert!(EcKey::new(Crv::P256, &g256.0[1..], &g256.1).is_none());
}

#[test]
fn ed25519_agrees_with_ed25519_compact() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..8 {
        let seed: [u8; 32] = rng.bytes(32).try_into().unwrap();
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        let key = Ed25519Key::new(&kp.pk[..]).unwrap();
        let len = (rng.next() % 200) as usize;
        let msg = rng.bytes(len);
        let sig = kp.sk.sign(&msg, None);
        assert!(key.verify(&msg, &sig[..]));
        let reference = |m: &[u8], s: &[u8]| {
            ed25519_compact::Signature::from_slice(s).is_ok_and(|s| kp.pk.verify(m, &s).is_ok())
        };
        for _ in 0..8 {
            let bad = rng.flip(&sig[..]);
            assert_eq!(key.verify(&msg, &bad), reference(&msg, &bad));
        }
        assert!(!key.verify(&[msg.as_slice(), b"!"].concat(), &sig[..]));
        // S + L: the same point equation, but S not reduced.
        let s = bignum::from_le(&sig[32..], 9).unwrap();
        let l = bignum::from_be(
            &bignum::hex("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed"),
            9,
        )
        .unwrap();
        let mut sum = s.clone();
        let mut carry = 0u64;
        for (a, b) in sum.iter_mut().zip(&l) {
            let t = u64::from(*a) + u64::from(*b) + carry;
            *a = t as u32;
            carry = t >> 32;
        }
        let mut le = bignum::to_be(&sum, 32);
        le.reverse();
        let unreduced = [&sig[..32], &le[..]].concat();
        assert!(!key.verify(&msg, &unreduced));
        assert!(!reference(&msg, &unreduced));
        assert!(!key.verify(&msg, &sig[..63]));
    }
}

#[test]
fn ed25519_rfc8032_test_vector_1() {
    let pk = bignum::hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    let sig = bignum::hex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    );
    let key = Ed25519Key::new(&pk).unwrap();
    assert!(key.verify(b"", &sig));
    assert!(!key.verify(b"\0", &sig));
}

#[test]
fn weak_or_invalid_ed25519_keys_are_refused() {
    // The identity (y = 1), a point of order 2 (y = −1), and y = p (not canonical).
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(Ed25519Key::new(&identity).is_none());
    assert!(
        ed25519_compact::PublicKey::new(identity)
            .validate()
            .is_err()
    );
    let mut minus_one =
        bignum::hex("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffec");
    minus_one.reverse();
    assert!(Ed25519Key::new(&minus_one).is_none());
    let mut p = bignum::hex("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed");
    p.reverse();
    assert!(Ed25519Key::new(&p).is_none());
    assert!(Ed25519Key::new(&[0u8; 31]).is_none());
    // Random encodings: about half are not points; ours and the reference agree on which.
    let mut rng = Rng(99);
    for _ in 0..32 {
        let b: [u8; 32] = rng.bytes(32).try_into().unwrap();
        assert_eq!(
            Ed25519Key::new(&b).is_some(),
            ed25519_compact::PublicKey::new(b).validate().is_ok(),
            "{b:?}"
        );
    }
}
