//! The helper's self-check: a digest of its static structures, recorded at boot and
//! compared before every request.
//!
//! SEV does not isolate a guest from its own migration helper: that needs SEV-SNP's VMPLs.
//! The firmware reserves the helper's region in every memory map it hands on, but an OS
//! that ignores its map (a bug, or a loader that places something there) can still write
//! into it. So before serving a request the helper recomputes a digest of each structure
//! it runs on that nothing should ever change, and compares it with the digest
//! `helper_init` recorded at boot; on any difference it refuses the request
//! (helper-abi `Status::CORRUPTED`, the response's index naming the [`Structure`]) and
//! serves nothing, so a scribbled helper refuses a migration instead of producing a
//! corrupted one.
//!
//! The structures ([`Structure`]): the anchor page, the GDT, the IDT, the TSSs, the
//! context's static part (layout, region, version table bounds), the page tables, and the
//! code: the firmware ROM range the helper executes and reads (its code, constants, the
//! entry page). What changes legitimately is masked before hashing ([`Mask`]): the
//! Accessed and Dirty bits of page-table entries (the CPU sets them), the busy bit of the
//! TSS descriptors (LTR sets it), the anchor's slot counter.
//!
//! What it does not cover: the helper's mutable state (session keys and phase, the version
//! table, stacks, mailboxes) cannot have a fixed digest; a scribble there shows up as
//! records that do not authenticate or a manifest that does not verify at the target.
//! Nor does it stop an OS that means harm: the key below and every secret of the guest
//! (the migration secret included) are in guest memory, which such an OS reads at will;
//! and a write between the check and the use it guards is not caught. The check finds an
//! OS that does not honour the reservation; it is not a boundary (docs/architecture.md,
//! "The helper checks itself").
//!
//! # The digest
//! Per structure, a chain of GMACs (AES-256-GCM with no plaintext, record-gcm's fastest
//! kernel) under a random key drawn at boot: for each [`CHUNK`] of the structure's bytes
//! (masked), `tag = GMAC(key, nonce = structure ‖ chunk number, aad = previous tag ‖
//! chunk)`; the last tag is the digest. A keyed universal hash: a change made without
//! the key goes unnoticed with probability about (chunk blocks)/2^128. It is chosen over
//! SHA-256 for speed: the check covers ~300 KiB per request, which SHA-256 (software, at
//! CPL3) takes ~1 ms to hash, about four times what sealing a whole 1 MiB EXPORT batch
//! takes, while GHASH on the carry-less multiply units keeps the check a fraction of it
//! (docs/architecture.md §9 has the figures).

use record_gcm::Aes256Gcm;

/// Bytes hashed per GMAC of the chain.
pub const CHUNK: usize = 4096;
/// Number of structures.
pub const STRUCTURES: usize = 7;

/// A structure the self-check covers (its index is what the refusal's index reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// The anchor page the entry point reads (CR3, GDTR, IDTR, stacks, context).
    Anchor = 0,
    /// The helper's GDT.
    Gdt = 1,
    /// The helper's IDT.
    Idt = 2,
    /// The helper vCPUs' TSSs (their kernel and IST stacks).
    Tss = 3,
    /// The static part of the helper's context: the guest layout it checks GPAs against,
    /// its region, the version table's place.
    Context = 4,
    /// The helper's page tables.
    PageTables = 5,
    /// The firmware ROM the helper executes and reads.
    Code = 6,
}

impl Structure {
    /// Every structure, in index order.
    pub const ALL: [Structure; STRUCTURES] = [
        Structure::Anchor,
        Structure::Gdt,
        Structure::Idt,
        Structure::Tss,
        Structure::Context,
        Structure::PageTables,
        Structure::Code,
    ];

    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Structure::Anchor => "anchor",
            Structure::Gdt => "GDT",
            Structure::Idt => "IDT",
            Structure::Tss => "TSS",
            Structure::Context => "context",
            Structure::PageTables => "page tables",
            Structure::Code => "code",
        }
    }

    /// The structure a refusal's index names, if any.
    pub fn from_index(index: u32) -> Option<Structure> {
        Structure::ALL.get(usize::try_from(index).ok()?).copied()
    }
}

impl core::fmt::Display for Structure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What of a range may change legitimately, cleared before hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Nothing: hashed as it is.
    None,
    /// Page-table entries (8 bytes each from the range's start): the Accessed (bit 5) and
    /// Dirty (bit 6) bits.
    PageTable,
    /// A GDT whose 16-byte TSS descriptors start `from` bytes into the range: the busy
    /// bit (bit 41 of each descriptor's low quadword).
    GdtTssBusy {
        /// Offset of the first TSS descriptor.
        from: u64,
    },
    /// Bytes `[at, at + len)` of the range (a counter).
    Skip {
        /// Offset of the first byte skipped.
        at: u64,
        /// Bytes skipped.
        len: u64,
    },
}

impl Mask {
    /// Clears what may change in `chunk`, which starts `offset` bytes into its range
    /// (`offset` a multiple of 16, as every chunk of a range is).
    fn apply(self, offset: u64, chunk: &mut [u8]) {
        match self {
            Mask::None => {}
            Mask::PageTable => {
                for entry in chunk.chunks_exact_mut(8) {
                    entry[0] &= !0x60;
                }
            }
            Mask::GdtTssBusy { from } => {
                // The first descriptor at or after this chunk's start, then every 16 bytes.
                let end = offset.saturating_add(chunk.len() as u64);
                let mut d = match offset.checked_sub(from) {
                    Some(past) => from + past.div_ceil(16) * 16,
                    None => from,
                };
                while d.saturating_add(6) <= end {
                    if let Some(b) = chunk.get_mut((d - offset + 5) as usize) {
                        *b &= !0x02;
                    }
                    d = d.saturating_add(16);
                }
            }
            Mask::Skip { at, len } => {
                let end = at.saturating_add(len);
                for (i, b) in chunk.iter_mut().enumerate() {
                    let o = offset + i as u64;
                    if at <= o && o < end {
                        *b = 0;
                    }
                }
            }
        }
    }
}

/// A range of guest memory that belongs to a structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The structure it belongs to (a structure may have several ranges, hashed in order).
    pub structure: Structure,
    /// First byte (16-byte aligned for masked ranges).
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// What to clear before hashing.
    pub mask: Mask,
}

/// How the check reads the structures: copies out of memory the guest may change at any
/// time (the firmware reads through the helper's identity map).
pub trait StaticMemory {
    /// Copies `out.len()` bytes at `gpa` into `out`.
    fn read(&self, gpa: u64, out: &mut [u8]);
}

/// One digest per structure, in [`Structure::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Digests(pub [[u8; 16]; STRUCTURES]);

/// Computes and checks digests under one key.
#[derive(Clone)]
pub struct Checker {
    cipher: Aes256Gcm,
}

impl core::fmt::Debug for Checker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Checker")
            .field("kernel", &self.cipher.kernel())
            .finish()
    }
}

impl Checker {
    /// A checker for `key` (drawn at random at boot), run by the fastest AES-GCM kernel.
    pub fn new(key: &[u8; 32]) -> Checker {
        Checker {
            cipher: Aes256Gcm::new(key),
        }
    }

    /// The digests of `ranges` as they are in `memory` now. A structure without a range
    /// keeps the all-zero digest.
    pub fn digests(&self, ranges: &[Range], memory: &impl StaticMemory) -> Digests {
        let mut out = Digests::default();
        let mut chunks = [0u64; STRUCTURES];
        let mut buf = [0u8; 16 + CHUNK];
        for r in ranges {
            let s = r.structure as usize;
            let mut offset = 0u64;
            while offset < r.len {
                let n = (r.len - offset).min(CHUNK as u64) as usize;
                let (prev, data) = buf.split_at_mut(16);
                prev.copy_from_slice(&out.0[s]);
                let chunk = &mut data[..n];
                memory.read(r.gpa.wrapping_add(offset), chunk);
                r.mask.apply(offset, chunk);
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&(s as u32).to_le_bytes());
                nonce[4..].copy_from_slice(&chunks[s].to_le_bytes());
                out.0[s] = self
                    .cipher
                    .seal_in_place(&nonce, &buf[..16 + n], &mut [])
                    .expect("a 4 KiB chunk is far within AES-GCM's AAD limit");
                chunks[s] += 1;
                offset += n as u64;
            }
        }
        out
    }

    /// Checks the structures against the digests recorded at boot: the first structure
    /// that differs, if any.
    pub fn verify(
        &self,
        expected: &Digests,
        ranges: &[Range],
        memory: &impl StaticMemory,
    ) -> Result<(), Structure> {
        let now = self.digests(ranges, memory);
        match Structure::ALL
            .into_iter()
            .find(|s| now.0[*s as usize] != expected.0[*s as usize])
        {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// Memory from 0.
    struct Ram(RefCell<Vec<u8>>);

    impl StaticMemory for Ram {
        fn read(&self, gpa: u64, out: &mut [u8]) {
            let m = self.0.borrow();
            out.copy_from_slice(&m[gpa as usize..gpa as usize + out.len()]);
        }
    }

    impl Ram {
        fn poke(&self, gpa: u64, f: impl FnOnce(&mut u8)) {
            f(&mut self.0.borrow_mut()[gpa as usize]);
        }
    }

    const PT: u64 = 0x4000;
    const GDT: u64 = 0x1000;
    const ANCHOR: u64 = 0;
    const CODE: u64 = 0x10000;

    fn ranges() -> [Range; 5] {
        [
            Range {
                structure: Structure::Anchor,
                gpa: ANCHOR,
                len: 0x1000,
                mask: Mask::Skip { at: 80, len: 4 },
            },
            Range {
                structure: Structure::Gdt,
                gpa: GDT,
                len: 0x1000,
                mask: Mask::GdtTssBusy { from: 0x30 },
            },
            Range {
                structure: Structure::PageTables,
                gpa: PT,
                len: 3 * 0x1000,
                mask: Mask::PageTable,
            },
            // The code in two pieces, one not a multiple of the chunk.
            Range {
                structure: Structure::Code,
                gpa: CODE,
                len: 10_000,
                mask: Mask::None,
            },
            Range {
                structure: Structure::Code,
                gpa: CODE + 0x8000,
                len: 0x1000,
                mask: Mask::None,
            },
        ]
    }

    fn ram() -> Ram {
        Ram(RefCell::new(
            (0..0x20000u32).map(|i| (i * 7 + 3) as u8 & !0x60).collect(),
        ))
    }

    #[test]
    fn what_changes_legitimately_does_not_change_the_digest() {
        let c = Checker::new(&[9; 32]);
        let mem = ram();
        let boot = c.digests(&ranges(), &mem);
        // The CPU sets A and D in page-table entries, LTR the TSS descriptors' busy bit,
        // the entry point bumps the slot counter.
        mem.poke(PT + 8 * 17, |b| *b |= 0x20);
        mem.poke(PT + 0x2000 + 8 * 3, |b| *b |= 0x60);
        mem.poke(GDT + 0x30 + 5, |b| *b |= 0x02);
        mem.poke(GDT + 0x30 + 16 * 5 + 5, |b| *b |= 0x02);
        mem.poke(ANCHOR + 81, |b| *b ^= 0xff);
        assert_eq!(c.verify(&boot, &ranges(), &mem), Ok(()));
        // Structures without ranges keep a zero digest; the others do not.
        assert_eq!(boot.0[Structure::Idt as usize], [0; 16]);
        assert_ne!(boot.0[Structure::Code as usize], [0; 16]);
    }

    #[test]
    fn any_other_change_is_found_and_named() {
        let c = Checker::new(&[9; 32]);
        let boot = c.digests(&ranges(), &ram());
        let cases: [(u64, u8, Structure); 9] = [
            (ANCHOR + 8, 0x01, Structure::Anchor),
            (ANCHOR + 84, 0x01, Structure::Anchor),
            (ANCHOR + 0xfff, 0x80, Structure::Anchor),
            // The busy bit's neighbour, and bit 41 of a descriptor before the TSSs (a
            // code segment's readable bit).
            (GDT + 0x30 + 5, 0x04, Structure::Gdt),
            (GDT + 0x08 + 5, 0x02, Structure::Gdt),
            (PT + 8 * 17, 0x01, Structure::PageTables),
            (PT + 0x2fff, 0x80, Structure::PageTables),
            (CODE + 9_999, 0x01, Structure::Code),
            (CODE + 0x8fff, 0x01, Structure::Code),
        ];
        for (at, bit, want) in cases {
            let mem = ram();
            mem.poke(at, |b| *b ^= bit);
            assert_eq!(
                c.verify(&boot, &ranges(), &mem),
                Err(want),
                "a flip at {at:#x}"
            );
        }
        // Outside every range nothing matters.
        let mem = ram();
        mem.poke(CODE + 10_000, |b| *b ^= 1);
        assert_eq!(c.verify(&boot, &ranges(), &mem), Ok(()));
    }

    #[test]
    fn the_digest_depends_on_the_key_and_on_where_bytes_are() {
        let mem = ram();
        let a = Checker::new(&[1; 32]).digests(&ranges(), &mem);
        let b = Checker::new(&[2; 32]).digests(&ranges(), &mem);
        assert_ne!(a, b);
        // Moving a range (same length, other bytes) or shortening it changes the digest.
        let mut moved = ranges();
        moved[3].gpa += 16;
        let c = Checker::new(&[1; 32]);
        assert_ne!(c.digests(&moved, &mem), a);
        let mut short = ranges();
        short[2].len -= 8;
        assert_ne!(
            c.digests(&short, &mem).0[Structure::PageTables as usize],
            a.0[Structure::PageTables as usize]
        );
        // Every kernel gives the same digest (the firmware's boot CPU and its helper
        // vCPUs may pick different ones).
        let all: Vec<Digests> = record_gcm::Kernel::ALL
            .iter()
            .filter(|k| k.is_supported())
            .map(|&k| {
                Checker {
                    cipher: Aes256Gcm::with_kernel(&[1; 32], k).unwrap(),
                }
                .digests(&ranges(), &mem)
            })
            .collect();
        assert!(all.iter().all(|d| *d == a), "{all:?}");
    }

    #[test]
    fn structures_round_trip_through_their_index() {
        for s in Structure::ALL {
            assert_eq!(Structure::from_index(s as u32), Some(s));
        }
        assert_eq!(Structure::from_index(7), None);
        assert_eq!(std::format!("{}", Structure::PageTables), "page tables");
    }
}
