//! RSA signature checks (RFC 8017): RSASSA-PKCS1-v1_5 and RSASSA-PSS with MGF1, public exponent 65537.

use alloc::vec::Vec;

use core::cmp::Ordering;
use core::ops::RangeInclusive;

use super::Hash;
use super::bignum::{self, Modulus};

/// An RSA public key with exponent 65537.
#[derive(Clone)]
pub struct RsaKey {
    n: Modulus,
    /// Modulus length in bits and bytes.
    bits: usize,
    len: usize,
}

impl RsaKey {
    /// The key with modulus `n` (big-endian, leading zeros allowed); `None` for an even modulus or one
    /// whose size is not within `sizes` (in bits). The size is checked first: the set-up costs the square
    /// of the length, and a modulus of megabits would hold the worker for seconds.
    pub fn new(n: &[u8], sizes: RangeInclusive<usize>) -> Option<RsaKey> {
        let n: &[u8] = match n.iter().position(|&b| b != 0) {
            Some(i) => n.get(i..)?,
            None => return None,
        };
        let first = *n.first()?;
        let bits = 8 * n.len() - first.leading_zeros() as usize;
        if !sizes.contains(&bits) {
            return None;
        }
        let modulus = Modulus::new(bignum::from_be(n, n.len().div_ceil(4))?)?;
        Some(RsaKey {
            n: modulus,
            bits,
            len: n.len(),
        })
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// RSAVP1: s^65537 mod n as `len` bytes, for a signature exactly as long as the modulus and below it.
    fn open(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.len {
            return None;
        }
        let s = self.n.elem(bignum::from_be(signature, self.n.limbs())?)?;
        let s = self.n.to_mont(&s);
        let mut m = s.clone();
        for _ in 0..16 {
            m = self.n.mul(&m, &m);
        }
        let m = self.n.from_mont(&self.n.mul(&m, &s));
        Some(bignum::to_be(&m, self.len))
    }

    /// RSASSA-PKCS1-v1_5 (RFC 8017 8.2.2): the encoded message must be exactly
    /// `00 01 FF…FF 00 DigestInfo(hash)`.
    pub fn verify_pkcs1(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.open(signature) else {
            return false;
        };
        let digest = hash.digest(&[message]);
        let t_len = hash.digest_info().len() + digest.len();
        // At least 8 bytes of padding (RFC 8017 9.2 step 3).
        let Some(ps) = self.len.checked_sub(t_len + 3).filter(|&ps| ps >= 8) else {
            return false;
        };
        let mut want = Vec::with_capacity(self.len);
        want.extend_from_slice(&[0, 1]);
        want.resize(2 + ps, 0xff);
        want.push(0);
        want.extend_from_slice(hash.digest_info());
        want.extend_from_slice(&digest);
        em == want
    }

    /// RSASSA-PSS (RFC 8017 8.1.2, EMSA-PSS-VERIFY 9.1.2) with MGF1 of the same hash and a salt as long as
    /// the hash (RFC 7518 3.5).
    pub fn verify_pss(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(m) = self.open(signature) else {
            return false;
        };
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        // When emBits is a multiple of 8 the encoded message is one byte shorter than the modulus, and
        // the leading byte of the RSAVP1 output must be zero.
        let Some(skip) = self.len.checked_sub(em_len) else {
            return false;
        };
        if m.iter().take(skip).any(|&b| b != 0) {
            return false;
        }
        let Some(em) = m.get(skip..) else {
            return false;
        };
        let h_len = hash.bytes();
        let s_len = h_len;
        if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
            return false;
        }
        let db_len = em_len - h_len - 1;
        let (Some(masked), Some(h)) = (em.get(..db_len), em.get(db_len..em_len - 1)) else {
            return false;
        };
        let top_mask = 0xffu8 >> (8 * em_len - em_bits);
        if masked.first().is_some_and(|&b| b & !top_mask != 0) {
            return false;
        }
        let mut db = mgf1(hash, h, db_len);
        for (d, &m) in db.iter_mut().zip(masked) {
            *d ^= m;
        }
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        let ps_len = em_len - h_len - s_len - 2;
        let (Some(ps), Some(&one), Some(salt)) =
            (db.get(..ps_len), db.get(ps_len), db.get(ps_len + 1..))
        else {
            return false;
        };
        if ps.iter().any(|&b| b != 0) || one != 1 {
            return false;
        }
        let m_hash = hash.digest(&[message]);
        let h2 = hash.digest(&[&[0u8; 8], &m_hash, salt]);
        h2.as_slice().cmp(h) == Ordering::Equal
    }
}

/// MGF1 (RFC 8017 B.2.1).
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.bytes());
    let mut counter: u32 = 0;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}
