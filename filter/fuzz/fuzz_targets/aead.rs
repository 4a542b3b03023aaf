//! aead's XChaCha20-Poly1305 against the `chacha20poly1305` crate it replaced: for a fuzzed key, nonce,
//! associated data and message, both seal to the same bytes; with fuzzed edits of the sealed bytes (or
//! wholly fuzzer-chosen ones), both give the same verdict, and ours leaves a refused message as it was.
//! A forgery that ours accepts and the reference refuses fails here.
//!
//! Input: 32 bytes of key, 24 of nonce, one byte that splits the rest into associated data and message,
//! one that picks the edit (0: none; high bit: the tag is the input's last 16 bytes; else 1 to 4
//! (position, value) overwrites of the ciphertext and tag, from the input's end).

#![no_main]

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, Tag, XNonce};
use libfuzzer_sys::fuzz_target;
use oidc_filter::aead::XChaCha20Poly1305;

fuzz_target!(|data: &[u8]| {
    let Some((key, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    let Some((nonce, rest)) = rest.split_first_chunk::<24>() else {
        return;
    };
    let Some((&[split, edit], rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let (aad, message) = rest.split_at(usize::from(split).min(rest.len()));
    let ours = XChaCha20Poly1305::new(key);
    let theirs = chacha20poly1305::XChaCha20Poly1305::new(&(*key).into());
    let xnonce = XNonce::from(*nonce);

    let mut sealed = message.to_vec();
    let tag = ours.encrypt(nonce, aad, &mut sealed);
    let mut reference = message.to_vec();
    let their_tag = theirs
        .encrypt_inout_detached(&xnonce, aad, InOutBuf::from(&mut reference[..]))
        .unwrap();
    assert_eq!(sealed, reference, "ciphertext");
    assert_eq!(tag[..], their_tag[..], "tag");

    // The edit: none, a tag of the input's choosing, or overwritten bytes of ciphertext and tag.
    let original = [&sealed[..], &tag[..]].concat();
    let mut body = original.clone();
    if edit & 0x80 != 0 {
        if let Some(forged) = data.last_chunk::<16>() {
            let at = body.len() - 16;
            body[at..].copy_from_slice(forged);
        }
    } else {
        let n = if edit == 0 {
            0
        } else {
            1 + usize::from(edit & 3)
        };
        for pair in data.rchunks_exact(2).take(n) {
            let at = usize::from(pair[0]) % body.len();
            body[at] = pair[1];
        }
    }
    let (ciphertext, tag) = body.split_at(body.len() - 16);
    let tag: [u8; 16] = tag.try_into().unwrap();

    let mut opened = ciphertext.to_vec();
    let ours_ok = ours.decrypt(nonce, aad, &mut opened, &tag);
    let mut reference = ciphertext.to_vec();
    let theirs_ok = theirs
        .decrypt_inout_detached(
            &xnonce,
            aad,
            InOutBuf::from(&mut reference[..]),
            &Tag::from(tag),
        )
        .is_ok();
    assert_eq!(ours_ok, theirs_ok, "verdict");
    if ours_ok {
        assert_eq!(opened, reference, "plaintext");
    } else {
        assert_eq!(opened, ciphertext, "a refused message is left as it was");
    }
    if body == original {
        assert!(ours_ok && opened == message, "what was sealed opens");
    }
});
