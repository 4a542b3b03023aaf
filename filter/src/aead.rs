//! XChaCha20-Poly1305: RFC 8439's ChaCha20-Poly1305 with the 24-byte nonce of draft-irtf-cfrg-xchacha,
//! what [`crate::session`] seals cookies with. Our own, as `sha256` and `oidc::sig` are: the
//! `chacha20poly1305` crate's layers of traits cost the module 6.6 KB more for the same bytes. The
//! tests compare it with that crate (now a dev-dependency) on every length around the block sizes and on
//! tampered input, and its Poly1305 with the `poly1305` crate on RFC 8439's edge cases.
//!
//! Only what the cookies need: one call seals or opens a whole message, the tag kept apart.

/// "expand 32-byte k", ChaCha's first four words.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// An XChaCha20-Poly1305 key.
#[derive(Clone)]
pub struct XChaCha20Poly1305 {
    key: [u32; 8],
}

impl XChaCha20Poly1305 {
    pub fn new(key: &[u8; 32]) -> XChaCha20Poly1305 {
        XChaCha20Poly1305 { key: words(key) }
    }

    /// Encrypts `data` in place under `nonce`; the tag authenticates it and `aad`.
    pub fn encrypt(&self, nonce: &[u8; 24], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        let (key, nonce) = self.subkey(nonce);
        xor_keystream(&key, &nonce, data);
        mac(&key, &nonce, aad, data)
    }

    /// Decrypts `data` in place if `tag` authenticates it and `aad` under `nonce`; otherwise leaves it as
    /// it was and returns false.
    pub fn decrypt(&self, nonce: &[u8; 24], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool {
        let (key, nonce) = self.subkey(nonce);
        let expected = mac(&key, &nonce, aad, data);
        // Every byte compared whatever the first ones gave: the time taken says nothing of the tag.
        let diff = expected.iter().zip(tag).fold(0, |d, (a, b)| d | (a ^ b));
        if core::hint::black_box(diff) != 0 {
            return false;
        }
        xor_keystream(&key, &nonce, data);
        true
    }

    /// XChaCha20's key and ChaCha20 nonce for `nonce`: HChaCha20 of the key and its first 16 bytes, and
    /// four zero bytes then its last 8.
    fn subkey(&self, nonce: &[u8; 24]) -> ([u32; 8], [u32; 3]) {
        let n: [u32; 6] = words(nonce);
        let mut s = state(&self.key, [n[0], n[1], n[2], n[3]]);
        rounds(&mut s);
        (
            [s[0], s[1], s[2], s[3], s[12], s[13], s[14], s[15]],
            [0, n[4], n[5]],
        )
    }
}

/// Little-endian words of `bytes` (which has at least `4 * N`).
fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut w = [0; N];
    for (w, b) in w.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    w
}

/// ChaCha's starting state: the constants, the key, then the counter and nonce (HChaCha20: its input).
fn state(key: &[u32; 8], input: [u32; 4]) -> [u32; 16] {
    let mut s = [0; 16];
    s[..4].copy_from_slice(&SIGMA);
    s[4..12].copy_from_slice(key);
    s[12..].copy_from_slice(&input);
    s
}

/// ChaCha20's 20 rounds: ten times the four column then the four diagonal quarter rounds.
fn rounds(s: &mut [u32; 16]) {
    for _ in 0..10 {
        quarter(s, 0, 4, 8, 12);
        quarter(s, 1, 5, 9, 13);
        quarter(s, 2, 6, 10, 14);
        quarter(s, 3, 7, 11, 15);
        quarter(s, 0, 5, 10, 15);
        quarter(s, 1, 6, 11, 12);
        quarter(s, 2, 7, 8, 13);
        quarter(s, 3, 4, 9, 14);
    }
}

/// A quarter round. Inlined, with constant indices: a third faster than a loop over a table of them, for
/// about 100 bytes.
#[inline(always)]
fn quarter(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

/// ChaCha20's 64-byte block `counter`.
fn block(key: &[u32; 8], counter: u32, nonce: &[u32; 3]) -> [u8; 64] {
    let start = state(key, [counter, nonce[0], nonce[1], nonce[2]]);
    let mut s = start;
    rounds(&mut s);
    let mut out = [0; 64];
    for (o, (a, b)) in out.chunks_exact_mut(4).zip(s.iter().zip(&start)) {
        o.copy_from_slice(&a.wrapping_add(*b).to_le_bytes());
    }
    out
}

/// Encrypts or decrypts: XORs the keystream from block 1 on (block 0 keys the MAC) into `data`.
fn xor_keystream(key: &[u32; 8], nonce: &[u32; 3], data: &mut [u8]) {
    for (counter, chunk) in (1..).zip(data.chunks_mut(64)) {
        for (d, k) in chunk.iter_mut().zip(block(key, counter, nonce)) {
            *d ^= k;
        }
    }
}

/// The AEAD's tag: Poly1305 keyed by block 0, over `aad` and `ciphertext` each padded to 16 bytes, then
/// both their lengths as 64-bit little-endian numbers.
fn mac(key: &[u32; 8], nonce: &[u32; 3], aad: &[u8], ciphertext: &[u8]) -> [u8; 16] {
    let mut poly = Poly1305::new(&block(key, 0, nonce));
    poly.padded(aad);
    poly.padded(ciphertext);
    let mut lengths = [0; 16];
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    poly.block(&lengths);
    poly.finish()
}

/// 26 bits, a limb.
const LIMB: u32 = 0x3ff_ffff;

/// Poly1305 over whole 16-byte blocks (all the AEAD feeds it), in five 26-bit limbs as poly1305-donna's
/// 32-bit code: products fit in 64 bits, which Wasm multiplies natively.
struct Poly1305 {
    /// `r`, clamped.
    r: [u32; 5],
    /// The accumulator, each limb kept a little above 26 bits at most between blocks.
    h: [u32; 5],
    /// `s`, added at the end.
    s: [u32; 4],
}

impl Poly1305 {
    /// Keyed by the first 32 bytes of `key`: `r` then `s`.
    fn new(key: &[u8]) -> Poly1305 {
        let k: [u32; 8] = words(key);
        Poly1305 {
            r: [
                k[0] & 0x3ff_ffff,
                ((k[0] >> 26) | (k[1] << 6)) & 0x3ff_ff03,
                ((k[1] >> 20) | (k[2] << 12)) & 0x3ff_c0ff,
                ((k[2] >> 14) | (k[3] << 18)) & 0x3f0_3fff,
                (k[3] >> 8) & 0x00f_ffff,
            ],
            h: [0; 5],
            s: [k[4], k[5], k[6], k[7]],
        }
    }

    /// `data`, its last block padded with zeros to 16 bytes.
    fn padded(&mut self, data: &[u8]) {
        for chunk in data.chunks(16) {
            let mut b = [0; 16];
            b[..chunk.len()].copy_from_slice(chunk);
            self.block(&b);
        }
    }

    /// `h = (h + block + 2^128) * r`, partly reduced modulo `2^130 - 5`.
    fn block(&mut self, block: &[u8; 16]) {
        let m: [u32; 4] = words(block);
        let [r0, r1, r2, r3, r4] = self.r;
        let (s1, s2, s3, s4) = (r1 * 5, r2 * 5, r3 * 5, r4 * 5);
        let h0 = self.h[0] + (m[0] & LIMB);
        let h1 = self.h[1] + (((m[0] >> 26) | (m[1] << 6)) & LIMB);
        let h2 = self.h[2] + (((m[1] >> 20) | (m[2] << 12)) & LIMB);
        let h3 = self.h[3] + (((m[2] >> 14) | (m[3] << 18)) & LIMB);
        let h4 = self.h[4] + ((m[3] >> 8) | (1 << 24));
        let mul = |a: u32, b: u32| u64::from(a) * u64::from(b);
        // A limb past the fifth wraps around times 5: 2^130 = 5 modulo the prime.
        let d0 = mul(h0, r0) + mul(h1, s4) + mul(h2, s3) + mul(h3, s2) + mul(h4, s1);
        let d1 = mul(h0, r1) + mul(h1, r0) + mul(h2, s4) + mul(h3, s3) + mul(h4, s2);
        let d2 = mul(h0, r2) + mul(h1, r1) + mul(h2, r0) + mul(h3, s4) + mul(h4, s3);
        let d3 = mul(h0, r3) + mul(h1, r2) + mul(h2, r1) + mul(h3, r0) + mul(h4, s4);
        let d4 = mul(h0, r4) + mul(h1, r3) + mul(h2, r2) + mul(h3, r1) + mul(h4, r0);
        let mut carry = 0;
        for (h, d) in self.h.iter_mut().zip([d0, d1, d2, d3, d4]) {
            let d = d + carry;
            *h = d as u32 & LIMB;
            carry = d >> 26;
        }
        self.h[0] += carry as u32 * 5;
        self.h[1] += self.h[0] >> 26;
        self.h[0] &= LIMB;
    }

    /// The tag: `h` fully reduced, plus `s`, modulo `2^128`.
    fn finish(self) -> [u8; 16] {
        // Carried twice around: every limb under 2^26 and `h` under 2^130. (The first turn leaves at most 1
        // to carry out of the top the second time, and only when every limb above `h[0]` came to 0, so
        // the last 5 added to `h[0]`, then at most 4, carries nothing.)
        let mut h = self.h;
        let mut carry = 0;
        for i in [1, 2, 3, 4, 0, 1, 2, 3, 4, 0] {
            h[i] += carry;
            carry = h[i] >> 26;
            h[i] &= LIMB;
            if i == 4 {
                // 2^130 = 5 modulo the prime.
                carry *= 5;
            }
        }
        // `h - p`, i.e. `h + 5 - 2^130`, taken when it is not negative (a mask, not a branch).
        let mut g = [0; 5];
        let mut carry = 5;
        for (g, h) in g.iter_mut().zip(h) {
            let sum = h + carry;
            *g = sum & LIMB;
            carry = sum >> 26;
        }
        let take_g = 0u32.wrapping_sub(carry);
        for (h, g) in h.iter_mut().zip(g) {
            *h = (*h & !take_g) | (g & take_g);
        }
        let words = [
            h[0] | (h[1] << 26),
            (h[1] >> 6) | (h[2] << 20),
            (h[2] >> 12) | (h[3] << 14),
            (h[3] >> 18) | (h[4] << 8),
        ];
        let mut tag = [0; 16];
        let mut carry = 0;
        for ((t, w), s) in tag.chunks_exact_mut(4).zip(words).zip(self.s) {
            let sum = u64::from(w) + u64::from(s) + carry;
            t.copy_from_slice(&(sum as u32).to_le_bytes());
            carry = sum >> 32;
        }
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{AeadInOut, KeyInit, XNonce};

    /// Bytes from a linear congruential generator: `n` of them, varied by `seed`.
    fn bytes(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect()
    }

    #[test]
    fn matches_the_chacha20poly1305_crate() {
        let lengths = [
            0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 1000, 4099,
        ];
        for (i, &len) in lengths.iter().enumerate() {
            for (j, aad_len) in [0, 1, 15, 16, 17, 21, 40].into_iter().enumerate() {
                let seed = (i * 16 + j) as u32;
                let key: [u8; 32] = bytes(seed, 32).try_into().unwrap();
                let nonce: [u8; 24] = bytes(seed + 1000, 24).try_into().unwrap();
                let aad = bytes(seed + 2000, aad_len);
                let plaintext = bytes(seed + 3000, len);

                let reference = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).unwrap();
                let mut want = plaintext.clone();
                let want_tag = reference
                    .encrypt_inout_detached(
                        &XNonce::from(nonce),
                        &aad,
                        InOutBuf::from(want.as_mut_slice()),
                    )
                    .unwrap();

                let ours = XChaCha20Poly1305::new(&key);
                let mut data = plaintext.clone();
                let tag = ours.encrypt(&nonce, &aad, &mut data);
                assert_eq!((&data, &tag[..]), (&want, &want_tag[..]), "{len} {aad_len}");

                assert!(ours.decrypt(&nonce, &aad, &mut data, &tag));
                assert_eq!(data, plaintext);
                let mut data = want.clone();
                // A flipped bit anywhere (ciphertext, tag, associated data, nonce, key) is refused, and the
                // ciphertext left as it was.
                if len > 0 {
                    data[len / 2] ^= 4;
                    assert!(!ours.decrypt(&nonce, &aad, &mut data, &tag));
                    data[len / 2] ^= 4;
                    assert_eq!(data, want);
                }
                let mut bad_tag = tag;
                bad_tag[15] ^= 0x80;
                assert!(!ours.decrypt(&nonce, &aad, &mut data, &bad_tag));
                if aad_len > 0 {
                    let mut bad_aad = aad.clone();
                    bad_aad[0] ^= 1;
                    assert!(!ours.decrypt(&nonce, &bad_aad, &mut data, &tag));
                }
                let mut bad_nonce = nonce;
                bad_nonce[23] ^= 1;
                assert!(!ours.decrypt(&bad_nonce, &aad, &mut data, &tag));
                let mut bad_key = key;
                bad_key[0] ^= 1;
                assert!(!XChaCha20Poly1305::new(&bad_key).decrypt(&nonce, &aad, &mut data, &tag));
                assert_eq!(data, want);
            }
        }
    }

    /// Each bit of the tag counts: a tag with any one flipped, or the same one in two bytes, is refused.
    #[test]
    fn every_bit_of_the_tag_counts() {
        let key: [u8; 32] = bytes(1, 32).try_into().unwrap();
        let nonce: [u8; 24] = bytes(2, 24).try_into().unwrap();
        let ours = XChaCha20Poly1305::new(&key);
        let mut data = bytes(3, 40);
        let tag = ours.encrypt(&nonce, b"aad", &mut data);
        for bit in 0..128 {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!ours.decrypt(&nonce, b"aad", &mut data, &bad), "bit {bit}");
            // The same bit of two bytes: differences that cancel out if combined by XOR.
            bad[(bit / 8 + 1) % 16] ^= 1 << (bit % 8);
            assert!(
                !ours.decrypt(&nonce, b"aad", &mut data, &bad),
                "bit {bit} twice"
            );
        }
        assert!(ours.decrypt(&nonce, b"aad", &mut data, &tag));
        assert_eq!(data, bytes(3, 40));
    }

    fn poly(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
        let mut p = Poly1305::new(key);
        for block in data.chunks(16) {
            p.block(block.try_into().unwrap());
        }
        p.finish()
    }

    fn reference_poly(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
        poly1305::Poly1305::new(&(*key).into())
            .compute_unpadded(data)
            .into()
    }

    /// Hex with white space between groups, as the RFC writes it.
    fn hex(s: &str) -> Vec<u8> {
        crate::oidc::sig::bignum::hex(&s.split_whitespace().collect::<String>())
    }

    /// RFC 8439's Poly1305 test vectors 5 to 9 (those of whole blocks), made to reach the corners of the
    /// final reduction, as `r || s`, the message and the tag, and one more of ours; and every block of
    /// 0xff under keys of 0xff, r clamped to its largest.
    #[test]
    fn poly1305_edge_cases() {
        let cases = [
            (
                "02000000000000000000000000000000 00000000000000000000000000000000",
                "ffffffffffffffffffffffffffffffff",
                "03000000000000000000000000000000",
            ),
            (
                "02000000000000000000000000000000 ffffffffffffffffffffffffffffffff",
                "02000000000000000000000000000000",
                "03000000000000000000000000000000",
            ),
            (
                "01000000000000000000000000000000 00000000000000000000000000000000",
                "ffffffffffffffffffffffffffffffff f0ffffffffffffffffffffffffffffff
                 11000000000000000000000000000000",
                "05000000000000000000000000000000",
            ),
            (
                "01000000000000000000000000000000 00000000000000000000000000000000",
                "ffffffffffffffffffffffffffffffff fbfefefefefefefefefefefefefefefe
                 01010101010101010101010101010101",
                "00000000000000000000000000000000",
            ),
            (
                "02000000000000000000000000000000 00000000000000000000000000000000",
                "fdffffffffffffffffffffffffffffff",
                "faffffffffffffffffffffffffffffff",
            ),
            // Found by mutation testing: a block that leaves `h` needing the second carry around (its
            // top limbs all ones and a carry into the second), which none of the RFC's reaches: carried
            // once around, the tag lost that carry.
            (
                "ffffff03000000000000000000000000 00000000000000000000000000000000",
                "01000005000014000050000040010000",
                "04000004000000000000000000000000",
            ),
        ];
        for (key, data, tag) in cases {
            let key: [u8; 32] = hex(key).try_into().unwrap();
            let data = hex(data);
            assert_eq!(poly(&key, &data).to_vec(), hex(tag));
            assert_eq!(reference_poly(&key, &data).to_vec(), hex(tag));
        }
        for n in 0..40 {
            let key = [0xff; 32];
            let data = vec![0xff; 16 * n];
            assert_eq!(poly(&key, &data), reference_poly(&key, &data), "{n}");
            let key: [u8; 32] = bytes(n as u32, 32).try_into().unwrap();
            let data = bytes(n as u32 + 100, 16 * n);
            assert_eq!(poly(&key, &data), reference_poly(&key, &data), "{n}");
        }
    }
}
