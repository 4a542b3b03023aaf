//! JWS signature verification: RSA (PKCS#1 v1.5 and PSS), ECDSA on P-256 and P-384, Ed25519.
//!
//! Our own code rather than a crate per algorithm family: one small Montgomery multiplication
//! ([`bignum`]) serves all three, which keeps the shipped module about 75 KB smaller than the RustCrypto
//! crates (`rsa`, `p256`, `p384`, `ed25519-compact`) did. Only verification, only public inputs: no secret
//! ever passes through here, so timing is not a concern. Each check follows its RFC step by step; the
//! tests compare every algorithm with those crates (now dev-dependencies) on valid, tampered and
//! out-of-range signatures; the `signatures` fuzz target compares verdicts with them on fuzzed signatures,
//! and the `jwks` and `id_token` targets feed it arbitrary keys and tokens.

use alloc::vec;
use alloc::vec::Vec;

pub mod bignum;
pub mod ecdsa;
pub mod ed25519;
pub mod rsa;

use alloc::rc::Rc;
use core::cell::Cell;

use sha2::digest::core_api::RtVariableCoreWrapper;
use sha2::digest::{Update, VariableOutput};
use sha2::{Digest, Sha256, Sha512VarCore};

/// The value `cell` holds, made by `make` the first time (and again while it makes none): a curve's
/// constants, derived once per VM. A `Cell` taken and put back, not a `OnceCell`: its `get_or_init` cost
/// the module 1 KB.
fn cached<T>(cell: &Cell<Option<Rc<T>>>, make: impl FnOnce() -> Option<T>) -> Option<Rc<T>> {
    let value = cell.take().or_else(|| make().map(Rc::new));
    cell.set(value.clone());
    value
}

/// The SHA-2 function a JWS algorithm names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        if self == Hash::Sha256 {
            return run::<Sha256>(parts);
        }
        // SHA-384 and SHA-512 are one function that differs in its start and output length: one
        // instance of it, told the length at run time (not one per `sha2` type).
        let mut out = vec![0; self.bytes()];
        if let Ok(mut d) = RtVariableCoreWrapper::<Sha512VarCore>::new(out.len()) {
            for p in parts {
                d.update(p);
            }
            let _ = d.finalize_variable(&mut out);
        }
        out
    }

    pub fn bytes(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DER `DigestInfo` prefix of EMSA-PKCS1-v1_5 (RFC 8017 9.2, note 1).
    fn digest_info(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

#[cfg(test)]
mod tests;
