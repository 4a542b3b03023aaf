//! The hasher for tables whose keys no client picks: the host's context ids. SipHash, the default, guards
//! against chosen keys, and costs a few hundred instructions per lookup in Wasm for nothing here. The
//! table is `hashbrown`'s, the one std's `HashMap` wraps: the Wasm build is `no_std`.

use core::hash::{BuildHasherDefault, Hasher};
use hashbrown::HashMap;

/// FNV-1a's 64-bit rounds over `parts` one after the other, from a zero state rather than FNV's offset
/// basis ([`IdHasher`]'s for bytes; kept so, as the names are stored in shared data): the names the
/// shared list of ended sessions gives tokens, users and logins, none of which a client picks.
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hasher = IdHasher::default();
    for part in parts {
        hasher.write(part);
    }
    hasher.finish()
}

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// `u32` keys (context ids count up from 1) are spread over all bits by a multiplication: the table takes
/// its bucket from the low bits and its tag from the top ones. `u64` keys are taken as they are: they are
/// hashes already.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u32` and `u64` keys come here; anything else still hashes every byte (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are kept in shared data that every VM reads: pinned, so that a change to the function is
    /// a deliberate one. (FNV-1a's prime from a zero state, not from FNV's offset basis.)
    #[test]
    fn fnv_names_are_pinned() {
        assert_eq!(fnv(&[b"user\0", b"alice"]), 0xaceff8fdb9352783);
        assert_eq!(fnv(&[b"user\0alice"]), fnv(&[b"user\0", b"alice"]));
        let token = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
        assert_eq!(fnv(&[token]), 0xcc47d18e7f143577);
    }

    /// Every byte counts: ID tokens share their first bytes (the header), not their names.
    #[test]
    fn every_byte_counts() {
        let token = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln".to_vec();
        for i in 0..token.len() {
            let mut other = token.clone();
            other[i] ^= 1;
            assert_ne!(fnv(&[&token]), fnv(&[&other]), "{i}");
        }
    }
}
