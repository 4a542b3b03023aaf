//! Modular arithmetic for the signature checks: Montgomery multiplication over 32-bit limbs (wasm32
//! multiplies 32×32→64 natively). Verification only: every input is public (keys, signatures, hashes of
//! signed tokens), so nothing here needs to run in constant time, and it doesn't.
//!
//! Numbers are little-endian `Vec<u32>`s. Every number used with a [`Modulus`] has the modulus's limb
//! count: [`Modulus::elem`] is the way in, and it refuses a value that is not below the modulus.

use alloc::vec;
use alloc::vec::Vec;

use core::cmp::Ordering;

/// A little-endian number in 32-bit limbs.
pub type Limbs = Vec<u32>;

/// `bytes` (big-endian) in `limbs` limbs; `None` when it does not fit.
pub fn from_be(bytes: &[u8], limbs: usize) -> Option<Limbs> {
    from_le_iter(bytes.iter().rev(), limbs)
}

/// `bytes` (little-endian) in `limbs` limbs; `None` when it does not fit.
pub fn from_le(bytes: &[u8], limbs: usize) -> Option<Limbs> {
    from_le_iter(bytes.iter(), limbs)
}

fn from_le_iter<'a>(bytes: impl Iterator<Item = &'a u8>, limbs: usize) -> Option<Limbs> {
    let mut out = vec![0u32; limbs];
    for (i, &b) in bytes.enumerate() {
        if b != 0 {
            *out.get_mut(i / 4)? |= u32::from(b) << (8 * (i % 4));
        }
    }
    Some(out)
}

/// `a` as `len` big-endian bytes (the low `len` bytes of it).
pub fn to_be(a: &[u32], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in (0..len).rev() {
        out.push(a.get(i / 4).map_or(0, |l| (l >> (8 * (i % 4))) as u8));
    }
    out
}

/// Compares two numbers of the same length.
pub fn cmp(a: &[u32], b: &[u32]) -> Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

pub fn is_zero(a: &[u32]) -> bool {
    a.iter().all(|&l| l == 0)
}

/// `a += b`, returning the carry out.
pub fn add_in_place(a: &mut [u32], b: &[u32]) -> bool {
    let mut carry = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let s = u64::from(*x) + u64::from(y) + carry;
        *x = s as u32;
        carry = s >> 32;
    }
    carry != 0
}

/// `a -= b`, returning the borrow out.
pub fn sub_in_place(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = d >> 63;
    }
    borrow != 0
}

/// An odd modulus above 1, with what Montgomery multiplication needs (R = 2^(32·limbs)).
#[derive(Clone)]
pub struct Modulus {
    m: Limbs,
    /// -m⁻¹ mod 2³².
    inv: u32,
    /// R² mod m.
    rr: Limbs,
}

#[cfg(test)]
std::thread_local! {
    /// How many moduli were set up on this thread: a test's way to see that a key was refused before any
    /// arithmetic on it.
    pub static SET_UPS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

impl Modulus {
    /// `None` unless `m` is odd, above 1 and has no zero top limb.
    pub fn new(m: Limbs) -> Option<Modulus> {
        #[cfg(test)]
        SET_UPS.with(|n| n.set(n.get() + 1));
        let (&low, &top) = (m.first()?, m.last()?);
        if low & 1 == 0 || top == 0 || (m.len() == 1 && low == 1) {
            return None;
        }
        // Newton's iteration doubles the correct low bits each step: 1, 2, 4, 8, 16, 32.
        let mut x: u32 = 1;
        for _ in 0..5 {
            x = x.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(x)));
        }
        // R² mod m, by doubling 1 (below m) 64·limbs times.
        let mut rr = vec![0u32; m.len()];
        if let Some(l) = rr.first_mut() {
            *l = 1;
        }
        for _ in 0..64 * m.len() {
            let carry = rr.iter_mut().fold(0u32, |c, l| {
                let out = *l >> 31;
                *l = (*l << 1) | c;
                out
            });
            if carry != 0 || cmp(&rr, &m) != Ordering::Less {
                sub_in_place(&mut rr, &m);
            }
        }
        Some(Modulus {
            m,
            inv: x.wrapping_neg(),
            rr,
        })
    }

    pub fn limbs(&self) -> usize {
        self.m.len()
    }

    pub fn value(&self) -> &[u32] {
        &self.m
    }

    /// `a` if it is a number below the modulus, of the modulus's length.
    pub fn elem(&self, a: Limbs) -> Option<Limbs> {
        (a.len() == self.m.len() && cmp(&a, &self.m) == Ordering::Less).then_some(a)
    }

    /// a·b·R⁻¹ mod m (FIOS: one pass per limb of b adds a·bᵢ and q·m and shifts). Needs a < R and
    /// b < m (so a·b < R·m); the result is below m. Both have the modulus's length (a shorter one gives 0,
    /// which no check accepts).
    pub fn mul(&self, a: &[u32], b: &[u32]) -> Limbs {
        let n = self.m.len();
        let (Some(a), Some(b), Some(m)) = (a.get(..n), b.get(..n), self.m.get(..n)) else {
            return vec![0; n];
        };
        let (Some((&a0, a_rest)), Some((&m0, m_rest))) = (a.split_first(), m.split_first()) else {
            return Vec::new();
        };
        // Two buffers of n limbs plus a top limb each: each pass reads one and writes the other shifted
        // down by a limb, so every loop is a zip (no index checks) and nothing moves in place.
        let mut t = vec![0u32; n];
        let mut u = vec![0u32; n];
        let mut top = 0u64;
        for &bi in b {
            let bi = u64::from(bi);
            let (Some((&t0, t_rest)), Some((last, u_low))) = (t.split_first(), u.split_last_mut())
            else {
                break;
            };
            let s = u64::from(t0) + u64::from(a0) * bi;
            // q makes the low limb of t + a·bᵢ + q·m zero, so the sum shifts down by one limb.
            let q = u64::from((s as u32).wrapping_mul(self.inv));
            let mut c1 = s >> 32;
            let mut c2 = (u64::from(s as u32) + q * u64::from(m0)) >> 32;
            for (((out, &tj), &aj), &mj) in u_low.iter_mut().zip(t_rest).zip(a_rest).zip(m_rest) {
                let s = u64::from(tj) + u64::from(aj) * bi + c1;
                c1 = s >> 32;
                let s2 = u64::from(s as u32) + q * u64::from(mj) + c2;
                c2 = s2 >> 32;
                *out = s2 as u32;
            }
            let s = top + c1 + c2;
            *last = s as u32;
            top = s >> 32;
            core::mem::swap(&mut t, &mut u);
        }
        // t + top·R < 2m here.
        if top != 0 || cmp(&t, &self.m) != Ordering::Less {
            sub_in_place(&mut t, &self.m);
        }
        t
    }

    /// Into the Montgomery domain: a·R mod m (also reduces any a < R).
    pub fn to_mont(&self, a: &[u32]) -> Limbs {
        self.mul(a, &self.rr)
    }

    /// Out of the Montgomery domain.
    pub fn from_mont(&self, a: &[u32]) -> Limbs {
        self.mul(a, &self.small(1))
    }

    /// A small number (below the modulus) as limbs, not in the Montgomery domain.
    pub fn small(&self, v: u32) -> Limbs {
        let mut out = vec![0u32; self.m.len()];
        if let Some(l) = out.first_mut() {
            *l = v;
        }
        out
    }

    /// 1 in the Montgomery domain.
    pub fn one(&self) -> Limbs {
        self.to_mont(&self.small(1))
    }

    pub fn add(&self, a: &[u32], b: &[u32]) -> Limbs {
        let mut r = a.to_vec();
        if add_in_place(&mut r, b) || cmp(&r, &self.m) != Ordering::Less {
            sub_in_place(&mut r, &self.m);
        }
        r
    }

    pub fn sub(&self, a: &[u32], b: &[u32]) -> Limbs {
        let mut r = a.to_vec();
        if sub_in_place(&mut r, b) {
            add_in_place(&mut r, &self.m);
        }
        r
    }

    /// base^exp, `base` and the result in the Montgomery domain, `exp` plain.
    pub fn pow(&self, base: &[u32], exp: &[u32]) -> Limbs {
        let mut acc = self.one();
        for &limb in exp.iter().rev() {
            for bit in (0..32).rev() {
                acc = self.mul(&acc, &acc);
                if (limb >> bit) & 1 == 1 {
                    acc = self.mul(&acc, base);
                }
            }
        }
        acc
    }

    /// m − k for a small k (Fermat inverses: a^(m−2)).
    pub fn minus(&self, k: u32) -> Limbs {
        let mut r = self.m.clone();
        sub_in_place(&mut r, &self.small(k));
        r
    }

    /// a⁻¹ for a prime modulus, in and out of the Montgomery domain (0 maps to 0).
    pub fn invert(&self, a: &[u32]) -> Limbs {
        self.pow(a, &self.minus(2))
    }
}

/// u·P + v·Q by Shamir's trick (one doubling per bit, one addition of P, Q or P + Q), for any group:
/// `zero` is its identity, `add` and `double` its operations. Scalars plain, little-endian limbs.
pub fn shamir<T>(
    u: &[u32],
    v: &[u32],
    [p, q, pq]: [&T; 3],
    zero: T,
    add: impl Fn(&T, &T) -> T,
    double: impl Fn(&T) -> T,
) -> T {
    let bit = |k: &[u32], i: usize| k.get(i / 32).is_some_and(|l| (l >> (i % 32)) & 1 == 1);
    let mut acc = zero;
    for i in (0..32 * u.len().max(v.len())).rev() {
        acc = double(&acc);
        match (bit(u, i), bit(v, i)) {
            (true, false) => acc = add(&acc, p),
            (false, true) => acc = add(&acc, q),
            (true, true) => acc = add(&acc, pq),
            (false, false) => {}
        }
    }
    acc
}

/// Big-endian hex, for curve constants: `N` bytes, decoded at compile time (in a `const`), so the module
/// carries the bytes rather than twice as many hex digits and a decoder. Valid hex digits only.
pub const fn unhex<const N: usize>(s: &str) -> [u8; N] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => (c | 0x20) - b'a' + 10,
        }
    }
    let s = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = digit(s[2 * i]) << 4 | digit(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// Big-endian hex (what [`unhex`] decodes at compile time, for the tests).
pub fn hex(s: &str) -> Vec<u8> {
    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    s.as_bytes()
        .chunks(2)
        .map(|p| p.iter().fold(0u8, |acc, &c| acc << 4 | digit(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(v: u128, limbs: usize) -> Limbs {
        from_be(&v.to_be_bytes(), limbs).unwrap()
    }

    fn val(a: &[u32]) -> u128 {
        a.iter()
            .rev()
            .fold(0u128, |acc, &l| acc << 32 | u128::from(l))
    }

    fn mod_mul(a: u128, b: u128, m: u128) -> u128 {
        // Double-and-add keeps every step below 2m < 2^128.
        let (mut acc, mut a) = (0u128, a % m);
        let mut b = b;
        while b > 0 {
            if b & 1 == 1 {
                acc = (acc + a) % m;
            }
            a = (a + a) % m;
            b >>= 1;
        }
        acc
    }

    #[test]
    fn montgomery_agrees_with_plain_arithmetic() {
        let moduli: [u128; 5] = [
            3,
            0xffff_fffb,
            0x1_0000_000f,
            (1 << 89) - 1,
            0x7fff_ffff_ffff_ffff_ffff_ffff_ffff_ff61,
        ];
        let mut x = 0x1234_5678_9abc_def0_u128;
        for m in moduli {
            let limbs = (128 - m.leading_zeros() as usize).div_ceil(32);
            let md = Modulus::new(num(m, limbs)).unwrap();
            for _ in 0..50 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (a, b) = (x % m, x.rotate_left(64) % m);
                let (am, bm) = (md.to_mont(&num(a, limbs)), md.to_mont(&num(b, limbs)));
                assert_eq!(val(&md.from_mont(&md.mul(&am, &bm))), mod_mul(a, b, m));
                assert_eq!(val(&md.from_mont(&md.add(&am, &bm))), (a + b) % m);
                assert_eq!(val(&md.from_mont(&md.sub(&am, &bm))), (a + m - b) % m);
                // Fermat for the primes, plain square-and-multiply for all.
                let e = (x >> 70) as u32;
                let mut want = 1u128;
                for _ in 0..(e % 300) {
                    want = mod_mul(want, a, m);
                }
                let got = md.from_mont(&md.pow(&am, &[e % 300]));
                assert_eq!(val(&got), want, "{a}^{} mod {m}", e % 300);
            }
        }
    }

    #[test]
    fn inverse_of_a_prime_modulus() {
        let m = (1u128 << 127) - 1; // a Mersenne prime
        let md = Modulus::new(num(m, 4)).unwrap();
        let a = md.to_mont(&num(123_456_789, 4));
        let inv = md.invert(&a);
        assert_eq!(md.from_mont(&md.mul(&a, &inv)), md.small(1));
    }

    #[test]
    fn refuses_even_or_trivial_moduli() {
        assert!(Modulus::new(vec![4]).is_none());
        assert!(Modulus::new(vec![1]).is_none());
        assert!(Modulus::new(vec![3, 0]).is_none());
        assert!(Modulus::new(vec![]).is_none());
    }

    #[test]
    fn byte_conversions_round_trip_and_refuse_overflow() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let n = from_be(&b, 3).unwrap();
        assert_eq!(to_be(&n, 9), b);
        assert_eq!(from_le(&[9, 8, 7, 6, 5, 4, 3, 2, 1], 3).unwrap(), n);
        assert!(from_be(&b, 2).is_none());
        assert_eq!(from_be(&[0, 0, 0, 0, 0, 1], 1).unwrap(), vec![1]);
        assert_eq!(hex("0aFf10"), vec![0x0a, 0xff, 0x10]);
    }
}
