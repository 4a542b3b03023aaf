//! The hasher for tables whose keys no client picks: the host's context ids, and `SealedMap`'s buckets,
//! keyed by a hash that is already seeded per VM. SipHash, the default, guards against chosen keys, and
//! costs a few hundred instructions per lookup in Wasm for nothing here. The table is `hashbrown`'s, the one
//! std's `HashMap` wraps: the Wasm build is `no_std`.

use core::hash::{BuildHasherDefault, Hasher};
use hashbrown::HashMap;

/// The 64-bit FNV-1a of `parts` one after the other ([`IdHasher`]'s for bytes): the names the shared list of
/// ended sessions gives tokens, users and logins, none of which a client picks.
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
