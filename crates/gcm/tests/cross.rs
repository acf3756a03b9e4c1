//! Every kernel against the portable implementation on random keys, nonces, AADs and
//! lengths (0..=5000 bytes: empty, partial blocks, and non-multiples of every kernel's
//! 128- or 256-byte step), sealing with one and opening with the other in both
//! directions, and tampering anywhere refused with the buffer zeroed.

mod common;

use common::Rng;
use record_gcm::{Aes256Gcm, Error, Kernel};

/// Lengths around every boundary a kernel has (block, step, 4 KiB record), then random.
fn lengths(rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=48).collect();
    for base in [112, 128, 240, 256, 384, 512, 4096] {
        for d in [-17i64, -16, -15, -1, 0, 1, 15, 16, 17] {
            v.push((base as i64 + d) as usize);
        }
    }
    v.extend((0..200).map(|_| rng.below(5001)));
    v
}

#[test]
fn every_kernel_agrees_with_portable_both_ways() {
    let mut rng = Rng(0x5eed_0001);
    let kernels = common::kernels();
    let mut cases = 0;
    for len in lengths(&mut rng) {
        let key: [u8; 32] = rng.array();
        let nonce: [u8; 12] = rng.array();
        let aad_len = if rng.below(4) == 0 {
            rng.below(600)
        } else {
            68
        };
        let aad = rng.bytes(aad_len);
        let pt = rng.bytes(len);
        let reference = Aes256Gcm::with_kernel(&key, Kernel::Portable).unwrap();
        let mut ref_ct = pt.clone();
        let ref_tag = reference.seal_in_place(&nonce, &aad, &mut ref_ct).unwrap();
        for &kernel in &kernels {
            let gcm = Aes256Gcm::with_kernel(&key, kernel).unwrap();
            // Seal with the kernel, open with portable.
            let mut ct = pt.clone();
            let tag = gcm.seal_in_place(&nonce, &aad, &mut ct).unwrap();
            assert_eq!(tag, ref_tag, "{kernel}: tag, len {len}, aad {}", aad.len());
            assert_eq!(ct, ref_ct, "{kernel}: ciphertext, len {len}");
            reference
                .open_in_place(&nonce, &aad, &mut ct, &tag)
                .unwrap();
            assert_eq!(ct, pt);
            // Seal with portable, open with the kernel.
            let mut buf = ref_ct.clone();
            gcm.open_in_place(&nonce, &aad, &mut buf, &ref_tag)
                .unwrap_or_else(|e| panic!("{kernel}: len {len}: {e}"));
            assert_eq!(buf, pt, "{kernel}: plaintext, len {len}");
            cases += 1;
        }
    }
    eprintln!("{cases} kernel/length cases agreed with portable");
}

/// Text, AAD, nonce and tag of a record someone changed.
type Forgery = (Vec<u8>, Vec<u8>, [u8; 12], [u8; 16]);

#[test]
fn tampering_is_refused_and_leaves_zeros() {
    let mut rng = Rng(0x5eed_0002);
    for kernel in common::kernels() {
        for len in [0usize, 1, 16, 100, 257, 4096, 4133] {
            let key: [u8; 32] = rng.array();
            let nonce: [u8; 12] = rng.array();
            let aad = rng.bytes(68);
            let gcm = Aes256Gcm::with_kernel(&key, kernel).unwrap();
            let mut ct = rng.bytes(len);
            let tag = gcm.seal_in_place(&nonce, &aad, &mut ct).unwrap();
            // One flipped bit in the text, the AAD, the nonce or the tag.
            let mut tries: Vec<Forgery> = Vec::new();
            if len > 0 {
                let mut c = ct.clone();
                c[rng.below(len)] ^= 1 << rng.below(8);
                tries.push((c, aad.clone(), nonce, tag));
            }
            let mut a = aad.clone();
            let at = rng.below(a.len());
            a[at] ^= 0x80;
            tries.push((ct.clone(), a, nonce, tag));
            let mut n = nonce;
            n[11] ^= 1;
            tries.push((ct.clone(), aad.clone(), n, tag));
            let mut t = tag;
            t[rng.below(16)] ^= 4;
            tries.push((ct.clone(), aad.clone(), nonce, t));
            for (mut c, a, n, t) in tries {
                assert_eq!(
                    gcm.open_in_place(&n, &a, &mut c, &t),
                    Err(Error::AuthFailed),
                    "{kernel}: len {len}"
                );
                assert!(c.iter().all(|b| *b == 0), "{kernel}: len {len}: not zeroed");
            }
            let mut c = ct.clone();
            gcm.open_in_place(&nonce, &aad, &mut c, &tag).unwrap();
        }
    }
}

#[test]
fn unaligned_buffers_work() {
    // The kernels load and store unaligned; run them at every offset within a cache line.
    let mut rng = Rng(0x5eed_0003);
    let key: [u8; 32] = rng.array();
    let nonce: [u8; 12] = rng.array();
    let reference = Aes256Gcm::with_kernel(&key, Kernel::Portable).unwrap();
    let pt = rng.bytes(4096 + 61);
    let mut ref_ct = pt.clone();
    let ref_tag = reference
        .seal_in_place(&nonce, b"aad", &mut ref_ct)
        .unwrap();
    for kernel in common::kernels() {
        let gcm = Aes256Gcm::with_kernel(&key, kernel).unwrap();
        for off in 0..64 {
            let mut storage = vec![0u8; pt.len() + 64];
            let buf = &mut storage[off..off + pt.len()];
            buf.copy_from_slice(&pt);
            let tag = gcm.seal_in_place(&nonce, b"aad", buf).unwrap();
            assert_eq!(
                (&*buf, tag),
                (&ref_ct[..], ref_tag),
                "{kernel}: offset {off}"
            );
            gcm.open_in_place(&nonce, b"aad", buf, &tag).unwrap();
            assert_eq!(&*buf, &pt[..]);
        }
    }
}
