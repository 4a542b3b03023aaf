//! oidc::sig against the RustCrypto crates it replaced: for signatures the reference made over the input
//! and then had bytes overwritten (or wholly fuzzer-chosen ones), both must give the same verdict. A
//! forged signature that ours accepts and the reference refuses fails here.
//!
//! Input: byte 0 picks the algorithm (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA), byte 1 the edit
//! (high bit: the signature is the input's tail, else up to 4 (position, value) overwrites taken from the
//! tail), the rest is the tail. The signed message is fixed: signing each time is too slow to fuzz.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oidc_filter::oidc::sig::Hash;
use oidc_filter::oidc::sig::ecdsa::{Crv, EcKey};
use oidc_filter::oidc::sig::ed25519::Ed25519Key;
use oidc_filter::oidc::sig::rsa::RsaKey;
use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

const RSA_PEM: &str = include_str!("../../../testdata/jwks/private/rsa-noalg.pem");

struct Keys {
    rsa: rsa::RsaPrivateKey,
    rsa_ours: RsaKey,
    p256: p256::ecdsa::SigningKey,
    p256_ours: EcKey,
    p384: p384::ecdsa::SigningKey,
    p384_ours: EcKey,
    ed: ed25519_compact::KeyPair,
    ed_ours: Ed25519Key,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).unwrap();
        let rsa_ours = RsaKey::new(&rsa.n().to_bytes_be(), 0..=usize::MAX).unwrap();
        let p256 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sec1 = p256.verifying_key().to_sec1_point(false);
        let b = sec1.as_bytes();
        let p256_ours = EcKey::new(Crv::P256, &b[1..33], &b[33..]).unwrap();
        let p384 = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let sec1 = p384.verifying_key().to_sec1_point(false);
        let b = sec1.as_bytes();
        let p384_ours = EcKey::new(Crv::P384, &b[1..49], &b[49..]).unwrap();
        let ed = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3u8; 32]));
        let ed_ours = Ed25519Key::new(&ed.pk[..]).unwrap();
        Keys {
            rsa,
            rsa_ours,
            p256,
            p256_ours,
            p384,
            p384_ours,
            ed,
            ed_ours,
        }
    })
}

/// `sig` with the input's edits applied.
fn edit(mut sig: Vec<u8>, mode: u8, tail: &[u8]) -> Vec<u8> {
    if mode & 0x80 != 0 {
        let n = sig.len().min(tail.len());
        sig[..n].copy_from_slice(&tail[tail.len() - n..]);
        // Mode's low bits shorten or lengthen it: lengths other than the right one must be refused.
        match mode & 3 {
            1 => {
                sig.pop();
            }
            2 => sig.push(0),
            _ => {}
        }
        return sig;
    }
    for pair in tail.rchunks(2).take(usize::from(mode & 3) + 1) {
        if let [pos, val] = pair {
            let i = usize::from(*pos) % sig.len();
            sig[i] = *val;
        }
    }
    sig
}

fn digest(hash: Hash, m: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(m).to_vec(),
        Hash::Sha384 => Sha384::digest(m).to_vec(),
        Hash::Sha512 => Sha512::digest(m).to_vec(),
    }
}

/// The signed message: fixed, so each run only verifies (signing under the sanitizers is slow).
const MSG: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

/// A valid signature over [`MSG`] for each of the 9 algorithm choices.
fn signed() -> &'static [Vec<u8>; 9] {
    static SIGNED: OnceLock<[Vec<u8>; 9]> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let k = keys();
        std::array::from_fn(|i| match i {
            0..=5 => {
                let hash = HASHES[i % 3];
                let d = digest(hash, MSG);
                if i >= 3 {
                    k.rsa
                        .sign_with_rng(&mut rsa::rand_core::OsRng, pss(hash), &d)
                        .unwrap()
                } else {
                    k.rsa.sign(pkcs1(hash), &d).unwrap()
                }
            }
            6 => {
                let s: p256::ecdsa::Signature = k.p256.sign_prehash(&Sha256::digest(MSG)).unwrap();
                s.to_bytes().to_vec()
            }
            7 => {
                let s: p384::ecdsa::Signature = k.p384.sign_prehash(&Sha384::digest(MSG)).unwrap();
                s.to_bytes().to_vec()
            }
            _ => k.ed.sk.sign(MSG, None).to_vec(),
        })
    })
}

const HASHES: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

fn pss(hash: Hash) -> rsa::Pss {
    match hash {
        Hash::Sha256 => rsa::Pss::new::<Sha256>(),
        Hash::Sha384 => rsa::Pss::new::<Sha384>(),
        Hash::Sha512 => rsa::Pss::new::<Sha512>(),
    }
}

fn pkcs1(hash: Hash) -> rsa::Pkcs1v15Sign {
    match hash {
        Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
        Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
        Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [alg, mode, tail @ ..] = data else {
        return;
    };
    let k = keys();
    let i = usize::from(*alg) % 9;
    let sig = edit(signed()[i].clone(), *mode, tail);
    let (name, ours, theirs) = match i {
        0..=5 => {
            let hash = HASHES[i % 3];
            let d = digest(hash, MSG);
            let public = k.rsa.to_public_key();
            if i >= 3 {
                (
                    "PS",
                    k.rsa_ours.verify_pss(hash, MSG, &sig),
                    public.verify(pss(hash), &d, &sig).is_ok(),
                )
            } else {
                (
                    "RS",
                    k.rsa_ours.verify_pkcs1(hash, MSG, &sig),
                    public.verify(pkcs1(hash), &d, &sig).is_ok(),
                )
            }
        }
        6 => {
            let d = Sha256::digest(MSG);
            let theirs = p256::ecdsa::Signature::from_slice(&sig)
                .is_ok_and(|s| k.p256.verifying_key().verify_prehash(&d, &s).is_ok());
            ("ES256", k.p256_ours.verify_prehash(&d, &sig), theirs)
        }
        7 => {
            let d = Sha384::digest(MSG);
            let theirs = p384::ecdsa::Signature::from_slice(&sig)
                .is_ok_and(|s| k.p384.verifying_key().verify_prehash(&d, &s).is_ok());
            ("ES384", k.p384_ours.verify_prehash(&d, &sig), theirs)
        }
        _ => {
            let theirs = ed25519_compact::Signature::from_slice(&sig)
                .is_ok_and(|s| k.ed.pk.verify(MSG, &s).is_ok());
            ("EdDSA", k.ed_ours.verify(MSG, &sig), theirs)
        }
    };
    assert_eq!(ours, theirs, "{name} #{i}: ours and the reference disagree");
});
