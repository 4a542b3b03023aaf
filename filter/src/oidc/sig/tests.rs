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

/// A 1041-bit key: its emBits (1040) is a multiple of 8, so the RSAVP1 output has one byte more than the
/// encoded message, and with SHA-512 emLen is exactly hLen + sLen + 2 (no PS at all).
const RSA_1041_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIICgAIBADANBgkqhkiG9w0BAQEFAASCAmowggJmAgEAAoGDAXW2y/ljoghlINGj
Ki9IhKZlOmEBEbb9CY8ubwW7P4eZgspeUeZhpCbvRuBBqXWMwZUGSwtcMxjj1Mfj
aGiKu9TmPyBwJs+vkeCE3HYUbd5k09RS04bSx2N29WJ1dbKazALzU1CxxYCdVv/a
2xTfHDr9UjD4u/xtMHUAjiKln2QzjIMCAwEAAQKBgwCWvcQq9TBPmJMTXHBQoDy5
bY2NwUOm/wwTEBTCSBRJGvexrzfz6KCw/8UkAfhbrQoMlXxBuc/2kzep5SWhPYyk
Q6mA2jWjB8/tgduSCLWy+nUbLzqKLHBUXqVeKr+gBPjC9iKbKuODXF2FBc40kdA0
nyb598Ixm7Kzdc1RO23mf7CBAkIBzgfVwQnIE80fg80mjQ6mp++Sw6Zq1kCFYrrL
KXvl3xN901NJZ6LJIeuw+6kZgmq8D3lSvrexiBJLMdFQwWJK/EMCQgDPEODB+S1p
jU+9gu+G7SlnLHBJbOxHyEL9aiQMcilZq2FrVKgrN1I36ZbHPG+Hy/sS7M6hztli
kjbDGs/zhEBKwQJBfLaMsjCLuxyRNyh3EXg07/uw5/LRv8dmucGl+SqiX9aJDjPb
CohcNjXCbgu1AQkCfkLHXQeEejBF78qKO8jmaLUCQWxxx3RvXtQ/+Pokn/PHM37g
bDJYRGrXvBXiR9zo0TUwJ4ZBwQ1ZHMtBoADaawLw1p6zvQhLP9h7AQkveqdrpQxB
AkIBt3O5oT+AEW0E+VTU5paBWywwGCgwwDfPImQtDz8zhD+LxkgSEdsuSl3If3Rc
ZLmohjEAhbc7szGyxUdt7ue2svs=
-----END PRIVATE KEY-----
";

/// How [`pss_sign`] breaks EMSA-PSS-ENCODE (RFC 8017 9.1.1) before signing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PssFault {
    Honest,
    /// The last byte not 0xbc (9.1.2 step 4).
    Trailer,
    /// A byte of PS not zero (step 10).
    Padding,
    /// 0x02 where DB has its 0x01 (step 10).
    Separator,
    /// The leftmost 8·emLen − emBits bits of maskedDB set (step 6).
    TopBits,
    /// The RSAVP1 output not fitting in emLen bytes (8.1.2 step 2c: I2OSP fails).
    LeadingByte,
}

/// MGF1 (RFC 8017 B.2.1), written again here.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut counter = 0u32;
    while out.len() < len {
        out.extend(hash.digest(&[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A PSS signature (salt as long as the hash) of `msg` with `fault` in its encoded message, signed with
/// the private exponent as a careless signer would: `None` when this key and hash have no room for the
/// fault, or the encoded message it makes is not below the modulus.
fn pss_sign(
    private: &rsa::RsaPrivateKey,
    hash: Hash,
    msg: &[u8],
    fault: PssFault,
) -> Option<Vec<u8>> {
    let n = private.n();
    let k = n.bits().div_ceil(8);
    let em_bits = n.bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let h_len = hash.bytes();
    let salt = vec![0x5a; h_len];
    let h = hash.digest(&[&[0u8; 8], &hash.digest(&[msg]), &salt]);
    let ps_len = em_len - 2 * h_len - 2;
    let mut db = vec![0u8; ps_len];
    db.push(1);
    db.extend_from_slice(&salt);
    match fault {
        PssFault::Padding if ps_len >= 2 => db[ps_len - 1] = 1,
        PssFault::Separator => db[ps_len] = 2,
        PssFault::Padding => return None,
        _ => {}
    }
    let mask = mgf1(hash, &h, db.len());
    for (d, m) in db.iter_mut().zip(mask) {
        *d ^= m;
    }
    let top_mask = 0xffu8 >> (8 * em_len - em_bits);
    db[0] &= top_mask;
    let mut em = vec![0u8; k - em_len];
    em.extend(db);
    em.extend(h);
    em.push(0xbc);
    match fault {
        PssFault::Trailer => *em.last_mut()? = 0xbd,
        PssFault::TopBits if top_mask != 0xff => em[k - em_len] |= !top_mask,
        PssFault::LeadingByte if k > em_len => em[0] = 1,
        PssFault::TopBits | PssFault::LeadingByte => return None,
        _ => {}
    }
    rsa_sign_raw(private, &em)
}

/// RSASP1 of `em` (as long as the modulus): `None` unless it is below the modulus.
fn rsa_sign_raw(private: &rsa::RsaPrivateKey, em: &[u8]) -> Option<Vec<u8>> {
    use rsa::traits::PrivateKeyParts as _;
    let n = private.n();
    let m = rsa::BigUint::from_bytes_be(em);
    if m >= *n {
        return None;
    }
    let s = m.modpow(private.d(), n).to_bytes_be();
    Some([vec![0; em.len() - s.len()], s].concat())
}

/// 744- and 752-bit keys: 93 and 94 bytes, room for 7 and 8 bytes of 0xff before a SHA-512 DigestInfo.
const RSA_744_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIB1wIBADANBgkqhkiG9w0BAQEFAASCAcEwggG9AgEAAl4A3MbUX38QclOD66Ao
GRVRa+9LrrZPUaMTlhw6d2udm7lfA1gHj68QBCiMddDIbHL9CYjIit6SEtkWmDks
1W7Rq1+OUbVuKRztsr3AFiioHLp0QBiPU1wUCNMHiKHhAgMBAAECXgC6LSm2hk52
OptKvjpSPLn2zUsDQFZPP7gqpA9h2WyFf6LyDPADaNuWxiL8z13UjWg3hmVusw1j
DQwzdTR1RvplN/qEKrmKCyhPoDt7kfFSjJuCJeBHifUqvaRv8akCLw9hu5yTfapV
FKATyZoJC130gujf4bFtS9J2sjJ9Xfo9pkY7slOmFsA0Egi85sTbAi8OWmdcDO6h
MfMVw4n53YbYyeftRlWIVfZr8cASQTEXmANO+myKgc3AWFdGI+sy8wIvCDw7Rklx
LpD+yfXOKjpNa7BNpoC3RVdPEQ+buIyGlEQNkezEPSTfaWh3f1Yj96ECLwvd1Ex3
aKceq9HXi3BoJT+All5GYxrHr2cJRPoSqerOxBV811YgASLAJs+XjLHfAi8NKUJP
dUNcTyYJjb/fTssFGdo/Qz7TEeUeesTSMu9Oy+5Jh5OZcsgdmE66Uhf2KQ==
-----END PRIVATE KEY-----
";
const RSA_752_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIB2wIBADANBgkqhkiG9w0BAQEFAASCAcUwggHBAgEAAl8A7YQe7GoIgx+juUYZ
8q3HZviryFl0QmnvHn/LDczVpkhZVlrwYLDh6L71nasSNr4X5xkq0hmOE362gdFs
52rjQX2z2CQGs0gsEahlN3PrtuMrFID2zzMNOwGc0eOp3QIDAQABAl8Ax+TN8cI7
b7+NFzy8UdWXYD4gtPk0M0DckhqTVgXyOYPiTB809utm9W7hX9S9+3rZpMWkoisi
aIAjeOp9I3N4gjALLZINOIhfNFxJgmEqaKy/aqQwcvLS4T8adSpWsQIwAPl+wGTt
iwgYgFNzfQ95gQnwkM9JHdB06S4PKf4TVGy1o1ZfTmr5ABydah/HGcAXAjAA87Vq
YpryDOqWqVcUJ+VceP2QSBl68F6cqwl6DMU0IycW/H8eLx/ez5/UN7eciisCLxsC
nOOQT+ftdx8Rtq1RMyYXVCYMvVyO+5uP6rTl9NLcCzXTlZLBKEDwzcdo76G7Ai9t
ehFQOkqBguArMfLb+SyRLVajDM8tK1M1ggxRsES7hdPNmUz13ls46ZNrdA/eAQIv
YNs5bvbOltLbrB21GfwHjJXr14K/ZaW6mEaCEOjxwHebhKwKTrshtIHyNFZP0qA=
-----END PRIVATE KEY-----
";

/// EMSA-PKCS1-v1_5 needs at least 8 bytes of padding (RFC 8017 9.2 step 3): with only 7, a signature
/// otherwise right is refused; with 8, it verifies.
#[test]
fn rsa_pkcs1_needs_eight_bytes_of_padding() {
    for (pem, fits) in [(RSA_744_PEM, false), (RSA_752_PEM, true)] {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let public = private.to_public_key();
        let ours = RsaKey::new(&public.n().to_bytes_be(), ANY_SIZE).unwrap();
        let msg = b"a short key";
        let digest = rsa_digest(Hash::Sha512, msg);
        let info = Hash::Sha512.digest_info();
        let mut em = vec![0, 1];
        em.resize(public.size() - info.len() - digest.len() - 1, 0xff);
        em.push(0);
        em.extend_from_slice(info);
        em.extend_from_slice(&digest);
        let sig = rsa_sign_raw(&private, &em).unwrap();
        assert_eq!(ours.verify_pkcs1(Hash::Sha512, msg, &sig), fits);
        assert_eq!(
            public.verify(pkcs1(Hash::Sha512), &digest, &sig).is_ok(),
            fits
        );
    }
}

/// Signatures whose encoded message breaks one rule of EMSA-PSS-VERIFY (RFC 8017 9.1.2) are refused,
/// though everything else in them (the hash over salt and message) is right.
#[test]
fn rsa_pss_refuses_each_broken_rule() {
    use PssFault::*;
    let mut seen = Vec::new();
    for pem in [RSA_PEMS[0], RSA_1041_PEM] {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let public = private.to_public_key();
        let ours = RsaKey::new(&public.n().to_bytes_be(), ANY_SIZE).unwrap();
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            for round in 0..4u8 {
                let msg = [round; 7];
                let digest = rsa_digest(hash, &msg);
                let good = pss_sign(&private, hash, &msg, Honest).unwrap();
                assert!(ours.verify_pss(hash, &msg, &good), "{hash:?}");
                assert!(public.verify(pss(hash), &digest, &good).is_ok());
                for fault in [Trailer, Padding, Separator, TopBits, LeadingByte] {
                    let Some(bad) = pss_sign(&private, hash, &msg, fault) else {
                        continue;
                    };
                    assert!(!ours.verify_pss(hash, &msg, &bad), "{fault:?} {hash:?}");
                    // The rsa crate drops the extra leading byte without looking at it.
                    if fault != LeadingByte {
                        assert!(public.verify(pss(hash), &digest, &bad).is_err());
                    }
                    seen.push(fault);
                }
            }
        }
    }
    for fault in [Trailer, Padding, Separator, TopBits, LeadingByte] {
        assert!(seen.contains(&fault), "{fault:?} never made");
    }
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
                // The same numbers with a zero byte more: not the fixed-length form (RFC 7518 3.4).
                assert!(!key.verify_prehash(&hash, &[r, &[0], s].concat()));
                assert!(!key.verify_prehash(&[&[0], &hash[..]].concat(), &sig));
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

/// A coordinate is a field element (below p) of exactly the curve's length (RFC 7518 6.2.1.2, SEC 1
/// 2.3.5): the same point spelled another way is refused.
#[test]
fn ec_coordinates_spelled_another_way_are_refused() {
    // (0, √b) is on both curves; x = p names it too, but is not a field element.
    for (crv, p, sqrt_b) in [
        (
            Crv::P256,
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
            "66485c780e2f83d72433bd5d84a06bb6541c2af31dae871728bf856a174f93f4",
        ),
        (
            Crv::P384,
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
            "c306610fb0ae5a159cf45c06069f22a6c5eb3641c602d42dea2c4b4f75550793406d80d2b91ad54f9048bd487af1ade1",
        ),
    ] {
        let (p, y) = (bignum::hex(p), bignum::hex(sqrt_b));
        assert!(EcKey::new(crv, &vec![0; crv.bytes()], &y).is_some());
        assert!(EcKey::new(crv, &p, &y).is_none(), "{crv:?}");
    }
    // (x, 1) is on P-256; y = p + 1 names it too.
    let x = bignum::hex("6916fac45e568b6b9e2e2ecd611b282e5fcc40a3067d601057f879ce5a8a73cc");
    let mut one = vec![0u8; 32];
    one[31] = 1;
    assert!(EcKey::new(Crv::P256, &x, &one).is_some());
    let p_plus_one =
        bignum::hex("ffffffff00000001000000000000000000000001000000000000000000000000");
    assert!(EcKey::new(Crv::P256, &x, &p_plus_one).is_none());
    // 379·G on P-256, whose x begins with a zero byte: its signatures verify, and x without that byte (or
    // y with one more) is refused.
    let x = bignum::hex("005543894af3d00ed7d740abdbd75c96b06877b787db5f70eea78b90a8d7c00a");
    let y = bignum::hex("bb4c85a3d8ea29efaafa24406912dd84d5b14dc32bf656ef6c6bd58a5d943f92");
    let key = EcKey::new(Crv::P256, &x, &y).unwrap();
    let mut d = [0u8; 32];
    d[30..].copy_from_slice(&379u16.to_be_bytes());
    let sk = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
    let hash = [7u8; 32];
    let sig: p256::ecdsa::Signature = sk.sign_prehash(&hash).unwrap();
    assert!(key.verify_prehash(&hash, &sig.to_bytes()));
    assert!(EcKey::new(Crv::P256, &x[1..], &y).is_none());
    assert!(EcKey::new(Crv::P256, &x, &[&[0], &y[..]].concat()).is_none());
}

/// Keys G and −G (private keys 1 and n − 1): u1·G + u2·Q then adds G to itself or to its negation, the
/// addition's special cases (P = Q, P = −Q), and the signatures still verify.
#[test]
fn ecdsa_keys_g_and_minus_g() {
    macro_rules! check {
        ($krate:ident, $crv:expr, $len:literal, $order:literal) => {
            let mut minus_one = bignum::hex($order);
            minus_one[$len - 1] -= 1;
            let mut one = [0u8; $len];
            one[$len - 1] = 1;
            for d in [&one[..], &minus_one] {
                let sk = $krate::ecdsa::SigningKey::from_slice(d).unwrap();
                let (x, y) = xy(sk.verifying_key().to_sec1_point(false).as_bytes(), $len);
                let key = EcKey::new($crv, &x, &y).unwrap();
                let mut rng = Rng(5);
                for _ in 0..8 {
                    let hash = rng.bytes($len);
                    let sig: $krate::ecdsa::Signature = sk.sign_prehash(&hash).unwrap();
                    assert!(key.verify_prehash(&hash, &sig.to_bytes()), "{:?}", $crv);
                }
            }
        };
    }
    check!(
        p256,
        Crv::P256,
        32,
        "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"
    );
    check!(
        p384,
        Crv::P384,
        48,
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
    );
}

/// x(R) mod n = r, and nothing else: x(R) may be r + n (a point with x ≥ n), but not r + n − p or
/// r + n − 2^bits (r + n reduced mod p, or wrapped around the limbs). With hash 0 and s = r, u1 = 0 and
/// u2 = 1, so R is the key itself: a key with the chosen x is all it takes.
#[test]
fn ecdsa_reduces_x_mod_n_only() {
    fn check(
        crv: Crv,
        order: &str,
        p: &str,
        points: [(&str, &str); 2],
        reference: impl Fn(&[u8], &[u8], &[u8]) -> bool,
    ) {
        let len = crv.bytes();
        let num = |h: &str| bignum::from_be(&bignum::hex(h), len / 4).unwrap();
        let (n, p) = (num(order), num(p));
        let hash = vec![0u8; len];
        let verdicts = |(x, y): (&str, &str), r: &[u32]| {
            let (x, y) = (bignum::hex(x), bignum::hex(y));
            let key = EcKey::new(crv, &x, &y).unwrap();
            let r = bignum::to_be(r, len);
            let sig = [&r[..], &r[..]].concat();
            let sec1 = [&[4u8][..], &x, &y].concat();
            (
                key.verify_prehash(&hash, &sig),
                reference(&sec1, &hash, &sig),
            )
        };
        // x ≥ n: r = x − n verifies.
        let mut r = num(points[0].0);
        bignum::sub_in_place(&mut r, &n);
        assert_eq!(verdicts(points[0], &r), (true, true), "{crv:?} x - n");
        // A small x: r = x verifies, r = x + p − n and r = x − n mod 2^bits do not.
        let x = num(points[1].0);
        assert_eq!(verdicts(points[1], &x), (true, true), "{crv:?} x");
        let mut r = x.clone();
        bignum::add_in_place(&mut r, &p);
        bignum::sub_in_place(&mut r, &n);
        assert_eq!(verdicts(points[1], &r), (false, false), "{crv:?} x + p - n");
        let mut r = x;
        bignum::sub_in_place(&mut r, &n);
        assert_eq!(
            verdicts(points[1], &r),
            (false, false),
            "{crv:?} x - n wrapped"
        );
    }
    check(
        Crv::P256,
        "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
        "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        [
            (
                "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632554",
                "484f0c0fda434ef0a808458914f328715d7a545e198ac7eee31dffe861b5d23f",
            ),
            (
                "0000000000000000000000000000000000000000000000000000000000000005",
                "459243b9aa581806fe913bce99817ade11ca503c64d9a3c533415c083248fbcc",
            ),
        ],
        |sec1, h, s| {
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).unwrap();
            p256::ecdsa::Signature::from_slice(s).is_ok_and(|s| vk.verify_prehash(h, &s).is_ok())
        },
    );
    check(
        Crv::P384,
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
        "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
        [
            (
                "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52975",
                "674db71d55d1948b3c7d4c562474ad137465f9605bc7c67cb9fab6bf9f3ca2ef87d56a8d920568aa26f7eaf13ee70a45",
            ),
            (
                "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000002",
                "8cdeadbbd04911a3c1931e26df3fa6439dca9c7eb286fbd46fc319f0e2bb780232baf57825fc0c1912ada2fefe84024c",
            ),
        ],
        |sec1, h, s| {
            let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1).unwrap();
            p384::ecdsa::Signature::from_slice(s).is_ok_and(|s| vk.verify_prehash(h, &s).is_ok())
        },
    );
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
        // S with a zero byte more: the same number, but not the 64-byte form (RFC 8032 5.1.7).
        assert!(!key.verify(&msg, &[&sig[..], &[0]].concat()));
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
    // y = p + k (k < 19, either sign): y not reduced, so not an encoding (RFC 8032 5.1.3 step 1).
    for k in 0..19u8 {
        for sign in [0, 0x80] {
            let mut b = p.clone();
            b[0] += k;
            b[31] |= sign;
            let b: [u8; 32] = b.try_into().unwrap();
            assert!(Ed25519Key::new(&b).is_none(), "p + {k}");
            assert!(ed25519_compact::PublicKey::new(b).validate().is_err());
        }
    }
    // Points of order 4 and 8 (either sign of x), the rest of the small-order points.
    for enc in SMALL_ORDER {
        let b: [u8; 32] = bignum::hex(enc).try_into().unwrap();
        assert!(Ed25519Key::new(&b).is_none(), "{enc}");
        assert!(ed25519_compact::PublicKey::new(b).validate().is_err());
    }
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

/// Encodings of points of small order (other than the identity and y = −1): one of order 4, three of
/// order 8.
const SMALL_ORDER: [&str; 4] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
];

/// A signature whose R is of small order, made with the secret scalar so that [S]B = [k]A: the cofactored
/// equation holds ([S]B − [k]A − R = −R is of small order), but R is refused, as ed25519-compact refuses it.
#[test]
fn ed25519_small_order_r_is_refused() {
    let seed = [42u8; 32];
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
    let key = Ed25519Key::new(&kp.pk[..]).unwrap();
    let h = Sha512::digest(seed);
    let mut a = h[..32].to_vec();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let l = bignum::Modulus::new(
        bignum::from_be(
            &bignum::hex("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed"),
            8,
        )
        .unwrap(),
    )
    .unwrap();
    // Scalars mod L in the Montgomery domain, from 32 or 64 little-endian bytes.
    let mont = |le: &[u8]| l.to_mont(&bignum::from_le(le, 8).unwrap());
    let wide = |le: &[u8]| l.add(&mont(&le[..32]), &l.to_mont(&mont(&le[32..])));
    let a = mont(&a);
    let s_bytes = |s: &[u32]| {
        let mut b = bignum::to_be(&l.from_mont(s), 32);
        b.reverse();
        b
    };
    // The arithmetic, checked on a signature as the reference makes it: S = r + k·a.
    let msg = b"small order R";
    let sig = kp.sk.sign(msg, None);
    let r = wide(&Sha512::digest([&h[32..], &msg[..]].concat()));
    let k = wide(&Sha512::digest([&sig[..32], &kp.pk[..], &msg[..]].concat()));
    assert_eq!(s_bytes(&l.add(&r, &l.mul(&k, &a))), sig[32..]);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for r in SMALL_ORDER
        .iter()
        .map(|enc| bignum::hex(enc))
        .chain([identity.to_vec()])
    {
        let k = wide(&Sha512::digest([&r[..], &kp.pk[..], &msg[..]].concat()));
        let forged = [r, s_bytes(&l.mul(&k, &a))].concat();
        assert!(!key.verify(msg, &forged));
        let forged = ed25519_compact::Signature::from_slice(&forged).unwrap();
        assert!(kp.pk.verify(msg, &forged).is_err());
    }
}

/// A key with a component of order 8 (A + T, not itself of small order), and a signature by the scalar of
/// A on it: [S]B − [k]A' − R = −[k]T, of small order. The cofactored equation holds, as ed25519-compact
/// checks it; the cofactorless one would not.
#[test]
fn ed25519_checks_the_cofactored_equation() {
    let pk = bignum::hex("3deb8ca9e3d031548d729bed3aa7f3840e256888362f1ea239c189f03b281f24");
    let sig = bignum::hex(
        "84c0e35194305fa99c844d4e3bde8933817326f479c3d72a50e10531f52fbb7e8503861199665a40748974cde6566783521b553803c2ab19277e0373125a640a",
    );
    let msg = b"mixed order key";
    let key = Ed25519Key::new(&pk).unwrap();
    assert!(key.verify(msg, &sig));
    let reference = ed25519_compact::PublicKey::from_slice(&pk).unwrap();
    let reference_sig = ed25519_compact::Signature::from_slice(&sig).unwrap();
    assert!(reference.verify(msg, &reference_sig).is_ok());
    assert!(!key.verify(b"another message", &sig));
}
