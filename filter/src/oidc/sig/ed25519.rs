//! Ed25519 verification (RFC 8032 5.1.7), with the checks `ed25519-compact` made before it: S below L,
//! public key and R decode to points not of small order, and [S]B − [k]A − R of small order
//! (the cofactored equation).
//!
//! Points in extended twisted Edwards coordinates (X:Y:Z:T, x = X/Z, y = Y/Z, xy = T/Z), field elements in
//! the Montgomery domain of p = 2²⁵⁵ − 19. The addition formula is complete on this curve, so it also
//! doubles and needs no special cases.

use alloc::rc::Rc;
use core::cell::Cell;

use super::Hash;
use super::bignum::{self, Limbs, Modulus, unhex};

struct Field {
    p: Modulus,
    /// Order of the base point.
    l: Modulus,
    /// d and 2d, √−1, in the Montgomery domain.
    d: Limbs,
    d2: Limbs,
    sqrt_m1: Limbs,
    b: Point,
}

#[derive(Clone)]
struct Point {
    x: Limbs,
    y: Limbs,
    z: Limbs,
    t: Limbs,
}

vm_local! {
    /// The curve's constants, derived once per VM.
    static FIELD: Cell<Option<Rc<Field>>> = Cell::new(None);
}

impl Field {
    fn get() -> Option<Rc<Field>> {
        FIELD.with(|f| super::cached(f, Field::new))
    }

    fn new() -> Option<Field> {
        let num = |h: [u8; 32]| bignum::from_be(&h, 8);
        let p = Modulus::new(num(const {
            unhex("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed")
        })?)?;
        let l = Modulus::new(num(const {
            unhex("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed")
        })?)?;
        let d = p.to_mont(&num(const {
            unhex("52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3")
        })?);
        let sqrt_m1 = p.to_mont(&num(const {
            unhex("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0")
        })?);
        let bx = p.to_mont(&num(const {
            unhex("216936d3cd6e53fec0a4e231fdd6dc5c692cc7609525a7b2c9562d608f25d51a")
        })?);
        let by = p.to_mont(&num(const {
            unhex("6666666666666666666666666666666666666666666666666666666666666658")
        })?);
        let b = Point {
            t: p.mul(&bx, &by),
            x: bx,
            y: by,
            z: p.one(),
        };
        Some(Field {
            d2: p.add(&d, &d),
            d,
            sqrt_m1,
            b,
            l,
            p,
        })
    }

    fn identity(&self) -> Point {
        Point {
            x: self.p.small(0),
            y: self.p.one(),
            z: self.p.one(),
            t: self.p.small(0),
        }
    }

    /// The point a 32-byte encoding names (RFC 8032 5.1.3), refusing y ≥ p and x = 0 with the sign bit set.
    fn decode(&self, bytes: &[u8]) -> Option<Point> {
        let f = &self.p;
        let mut y = bytes.to_vec();
        let last = y.last_mut()?;
        let sign = u32::from(*last >> 7);
        *last &= 0x7f;
        let y = f.to_mont(&f.elem(bignum::from_le(&y, 8)?)?);
        let one = f.one();
        let yy = f.mul(&y, &y);
        let u = f.sub(&yy, &one);
        let v = f.add(&f.mul(&self.d, &yy), &one);
        // x = u·v³·(u·v⁷)^((p−5)/8)
        let v3 = f.mul(&f.mul(&v, &v), &v);
        let v7 = f.mul(&f.mul(&v3, &v3), &v);
        let e = bignum::from_be(
            &const { unhex::<32>("0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffd") },
            8,
        )?;
        let mut x = f.mul(&f.mul(&u, &v3), &f.pow(&f.mul(&u, &v7), &e));
        let vxx = f.mul(&v, &f.mul(&x, &x));
        if vxx != u {
            if vxx != f.sub(&f.small(0), &u) {
                return None;
            }
            x = f.mul(&x, &self.sqrt_m1);
        }
        let plain = f.from_mont(&x);
        if bignum::is_zero(&plain) && sign == 1 {
            return None;
        }
        if plain.first().is_some_and(|l| l & 1 != sign) {
            x = f.sub(&f.small(0), &x);
        }
        Some(Point {
            t: f.mul(&x, &y),
            x,
            y,
            z: one,
        })
    }

    /// P + Q (add-2008-hwcd-3, a = −1): complete, so also 2P.
    fn add(&self, a: &Point, b: &Point) -> Point {
        let f = &self.p;
        let aa = f.mul(&f.sub(&a.y, &a.x), &f.sub(&b.y, &b.x));
        let bb = f.mul(&f.add(&a.y, &a.x), &f.add(&b.y, &b.x));
        let cc = f.mul(&f.mul(&a.t, &self.d2), &b.t);
        let zz = f.mul(&a.z, &b.z);
        let dd = f.add(&zz, &zz);
        let (e, ff, g, h) = (
            f.sub(&bb, &aa),
            f.sub(&dd, &cc),
            f.add(&dd, &cc),
            f.add(&bb, &aa),
        );
        Point {
            x: f.mul(&e, &ff),
            y: f.mul(&g, &h),
            t: f.mul(&e, &h),
            z: f.mul(&ff, &g),
        }
    }

    fn neg(&self, a: &Point) -> Point {
        let zero = self.p.small(0);
        Point {
            x: self.p.sub(&zero, &a.x),
            t: self.p.sub(&zero, &a.t),
            ..a.clone()
        }
    }

    /// [8]P is the identity (x = 0, y = z).
    fn small_order(&self, a: &Point) -> bool {
        let mut q = a.clone();
        for _ in 0..3 {
            q = self.add(&q, &q);
        }
        bignum::is_zero(&q.x) && q.y == q.z
    }

    /// [s]B + [k]P, scalars plain.
    fn mul2(&self, s: &[u32], k: &[u32], pt: &Point) -> Point {
        let bp = self.add(&self.b, pt);
        bignum::shamir(
            s,
            k,
            [&self.b, pt, &bp],
            self.identity(),
            |a, b| self.add(a, b),
            |a| self.add(a, a),
        )
    }

    /// A 64-byte little-endian number mod L.
    fn reduce_wide(&self, h: &[u8]) -> Option<Limbs> {
        let l = &self.l;
        let lo = bignum::from_le(h.get(..32)?, 8)?;
        let hi = bignum::from_le(h.get(32..)?, 8)?;
        // lo + hi·2²⁵⁶, with R = 2²⁵⁶: to_mont takes any value below R.
        let sum = l.add(&l.to_mont(&lo), &l.to_mont(&l.to_mont(&hi)));
        Some(l.from_mont(&sum))
    }
}

/// An Ed25519 public key whose encoding is a point not of small order.
#[derive(Clone)]
pub struct Ed25519Key {
    bytes: [u8; 32],
    /// −A, decoded and checked once.
    minus_a: Point,
}

impl Ed25519Key {
    pub fn new(bytes: &[u8]) -> Option<Ed25519Key> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        let f = Field::get()?;
        let a = f.decode(&bytes)?;
        (!f.small_order(&a)).then(|| Ed25519Key {
            bytes,
            minus_a: f.neg(&a),
        })
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.check(message, signature).unwrap_or(false)
    }

    fn check(&self, message: &[u8], signature: &[u8]) -> Option<bool> {
        if signature.len() != 64 {
            return Some(false);
        }
        let f = Field::get()?;
        let (r_bytes, s_bytes) = (signature.get(..32)?, signature.get(32..)?);
        let s = f.l.elem(bignum::from_le(s_bytes, 8)?)?;
        let r = f.decode(r_bytes)?;
        if f.small_order(&r) {
            return Some(false);
        }
        let k = f.reduce_wide(&Hash::Sha512.digest(&[r_bytes, &self.bytes, message]))?;
        let check = f.add(&f.mul2(&s, &k, &self.minus_a), &f.neg(&r));
        Some(f.small_order(&check))
    }
}
