//! ECDSA verification (SEC 1 4.1.4, FIPS 186-5 6.4.2) on the NIST curves P-256 and P-384, with the JWS
//! signature format of RFC 7518 3.4 (raw `r || s`).
//!
//! Points in Jacobian coordinates (X/Z², Y/Z³), field elements in the Montgomery domain; both curves have
//! a = −3 and cofactor 1, so a point on the curve is in the group.

use alloc::rc::Rc;
use core::cell::Cell;

use super::bignum::{self, Limbs, Modulus, unhex};

/// The curves we verify on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crv {
    P256,
    P384,
}

impl Crv {
    /// Bytes of a coordinate, of a scalar, and of each half of a signature.
    pub fn bytes(self) -> usize {
        match self {
            Crv::P256 => 32,
            Crv::P384 => 48,
        }
    }
}

/// A public key: a point on its curve (checked when made).
#[derive(Clone)]
pub struct EcKey {
    crv: Crv,
    x: Limbs,
    y: Limbs,
}

struct Curve {
    p: Modulus,
    n: Modulus,
    /// b and the generator, in the Montgomery domain of p.
    b: Limbs,
    g: Point,
}

#[derive(Clone)]
struct Point {
    x: Limbs,
    y: Limbs,
    /// Zero for the point at infinity.
    z: Limbs,
}

/// Each curve's p, n, b and base point (x, y), big-endian.
const P256: [[u8; 32]; 5] = [
    unhex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
    unhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
    unhex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
    unhex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"),
    unhex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"),
];
const P384: [[u8; 48]; 5] = [
    unhex(
        "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
    ),
    unhex(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    ),
    unhex(
        "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
    ),
    unhex(
        "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7",
    ),
    unhex(
        "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
    ),
];

vm_local! {
    /// Each curve's constants, derived once per VM (a key check and every verification use them).
    static CURVES: [Cell<Option<Rc<Curve>>>; 2] = [Cell::new(None), Cell::new(None)];
}

impl Curve {
    fn get(crv: Crv) -> Option<Rc<Curve>> {
        let i = usize::from(crv == Crv::P384);
        CURVES.with(|c| super::cached(c.get(i)?, || Curve::new(crv)))
    }

    fn new(crv: Crv) -> Option<Curve> {
        let [p, n, b, gx, gy]: [&[u8]; 5] = match crv {
            Crv::P256 => [&P256[0], &P256[1], &P256[2], &P256[3], &P256[4]],
            Crv::P384 => [&P384[0], &P384[1], &P384[2], &P384[3], &P384[4]],
        };
        let limbs = crv.bytes() / 4;
        let num = |h: &[u8]| bignum::from_be(h, limbs);
        let p = Modulus::new(num(p)?)?;
        let n = Modulus::new(num(n)?)?;
        let g = Point {
            x: p.to_mont(&num(gx)?),
            y: p.to_mont(&num(gy)?),
            z: p.one(),
        };
        Some(Curve {
            b: p.to_mont(&num(b)?),
            p,
            n,
            g,
        })
    }

    fn infinity(&self) -> Point {
        Point {
            x: self.p.one(),
            y: self.p.one(),
            z: self.p.small(0),
        }
    }

    /// Whether (x, y), in the Montgomery domain, satisfies y² = x³ − 3x + b.
    fn on_curve(&self, x: &[u32], y: &[u32]) -> bool {
        let f = &self.p;
        let x3 = f.mul(&f.mul(x, x), x);
        let three_x = f.add(&f.add(x, x), x);
        let rhs = f.add(&f.sub(&x3, &three_x), &self.b);
        f.mul(y, y) == rhs
    }

    /// 2P (dbl-2001-b, a = −3). Infinity and points with y = 0 give z = 0.
    fn double(&self, pt: &Point) -> Point {
        let f = &self.p;
        let delta = f.mul(&pt.z, &pt.z);
        let gamma = f.mul(&pt.y, &pt.y);
        let beta = f.mul(&pt.x, &gamma);
        let t = f.mul(&f.sub(&pt.x, &delta), &f.add(&pt.x, &delta));
        let alpha = f.add(&f.add(&t, &t), &t);
        let beta4 = f.add(&f.add(&beta, &beta), &f.add(&beta, &beta));
        let x = f.sub(&f.mul(&alpha, &alpha), &f.add(&beta4, &beta4));
        let yz = f.add(&pt.y, &pt.z);
        let z = f.sub(&f.sub(&f.mul(&yz, &yz), &gamma), &delta);
        let gamma2 = f.mul(&gamma, &gamma);
        let gamma8 = {
            let g2 = f.add(&gamma2, &gamma2);
            let g4 = f.add(&g2, &g2);
            f.add(&g4, &g4)
        };
        let y = f.sub(&f.mul(&alpha, &f.sub(&beta4, &x)), &gamma8);
        Point { x, y, z }
    }

    /// P + Q (add-1998-cmo-2), with the special cases: either at infinity, P = Q, P = −Q.
    fn add(&self, a: &Point, b: &Point) -> Point {
        if bignum::is_zero(&a.z) {
            return b.clone();
        }
        if bignum::is_zero(&b.z) {
            return a.clone();
        }
        let f = &self.p;
        let z1z1 = f.mul(&a.z, &a.z);
        let z2z2 = f.mul(&b.z, &b.z);
        let u1 = f.mul(&a.x, &z2z2);
        let u2 = f.mul(&b.x, &z1z1);
        let s1 = f.mul(&f.mul(&a.y, &b.z), &z2z2);
        let s2 = f.mul(&f.mul(&b.y, &a.z), &z1z1);
        let h = f.sub(&u2, &u1);
        let r = f.sub(&s2, &s1);
        if bignum::is_zero(&h) {
            return if bignum::is_zero(&r) {
                self.double(a)
            } else {
                self.infinity()
            };
        }
        let hh = f.mul(&h, &h);
        let hhh = f.mul(&hh, &h);
        let v = f.mul(&u1, &hh);
        let x = f.sub(&f.sub(&f.mul(&r, &r), &hhh), &f.add(&v, &v));
        let y = f.sub(&f.mul(&r, &f.sub(&v, &x)), &f.mul(&s1, &hhh));
        let z = f.mul(&f.mul(&a.z, &b.z), &h);
        Point { x, y, z }
    }

    /// u1·G + u2·Q, scalars plain.
    fn mul2(&self, u1: &[u32], u2: &[u32], q: &Point) -> Point {
        let gq = self.add(&self.g, q);
        bignum::shamir(
            u1,
            u2,
            [&self.g, q, &gq],
            self.infinity(),
            |a, b| self.add(a, b),
            |a| self.double(a),
        )
    }
}

impl EcKey {
    /// The key with affine coordinates `x`, `y` (big-endian, exactly the curve's length), if that point is
    /// on the curve.
    pub fn new(crv: Crv, x: &[u8], y: &[u8]) -> Option<EcKey> {
        if x.len() != crv.bytes() || y.len() != crv.bytes() {
            return None;
        }
        let c = Curve::get(crv)?;
        let limbs = c.p.limbs();
        let x = c.p.elem(bignum::from_be(x, limbs)?)?;
        let y = c.p.elem(bignum::from_be(y, limbs)?)?;
        let (xm, ym) = (c.p.to_mont(&x), c.p.to_mont(&y));
        c.on_curve(&xm, &ym).then_some(EcKey { crv, x, y })
    }

    pub fn crv(&self) -> Crv {
        self.crv
    }

    /// Whether `signature` (`r || s`) signs `hash` (the message's hash, as long as the curve's order:
    /// SHA-256 for P-256, SHA-384 for P-384, so no truncation).
    pub fn verify_prehash(&self, hash: &[u8], signature: &[u8]) -> bool {
        self.check(hash, signature).unwrap_or(false)
    }

    fn check(&self, hash: &[u8], signature: &[u8]) -> Option<bool> {
        let len = self.crv.bytes();
        if signature.len() != 2 * len || hash.len() != len {
            return Some(false);
        }
        let c = Curve::get(self.crv)?;
        let (n, p) = (&c.n, &c.p);
        let limbs = n.limbs();
        // r and s in 1..n.
        let r = n.elem(bignum::from_be(signature.get(..len)?, limbs)?)?;
        let s = n.elem(bignum::from_be(signature.get(len..)?, limbs)?)?;
        if bignum::is_zero(&r) || bignum::is_zero(&s) {
            return Some(false);
        }
        // e < 2^bits < 2n: one subtraction reduces it.
        let mut e = bignum::from_be(hash, limbs)?;
        if n.elem(e.clone()).is_none() {
            bignum::sub_in_place(&mut e, n.value());
        }
        let w = n.invert(&n.to_mont(&s));
        let u1 = n.from_mont(&n.mul(&n.to_mont(&e), &w));
        let u2 = n.from_mont(&n.mul(&n.to_mont(&r), &w));
        let q = Point {
            x: p.to_mont(&self.x),
            y: p.to_mont(&self.y),
            z: p.one(),
        };
        let pt = c.mul2(&u1, &u2, &q);
        if bignum::is_zero(&pt.z) {
            return Some(false);
        }
        // x(R) mod n == r, without inverting Z: x = X/Z² is below p < 2n, so it is r or r + n, and
        // x == v exactly when v·Z² == X.
        let z2 = p.mul(&pt.z, &pt.z);
        let matches = |v: &[u32]| p.mul(&p.to_mont(v), &z2) == pt.x;
        if matches(&r) {
            return Some(true);
        }
        let mut r_plus_n = r;
        let carry = bignum::add_in_place(&mut r_plus_n, n.value());
        Some(!carry && p.elem(r_plus_n).is_some_and(|v| matches(&v)))
    }
}
