//! ELF64 executables for x86-64 (System V gABI, "ELF-64 Object File Format" 1.5): the
//! format of our own guest OS.
//!
//! Only what a loader needs is read: the file header and the `PT_LOAD` program headers.
//! Segments are loaded at their physical address (`p_paddr`); the entry point is the
//! physical address of `e_entry` (translated through the executable segment that holds
//! it), so an OS linked at a higher-half virtual address still gets a usable entry as long
//! as its first instructions run identity-mapped. Relocatable (`ET_DYN`) files are refused:
//! this loader does not apply relocations.

/// Most program headers read.
pub const MAX_PROGRAM_HEADERS: usize = 64;
/// Most `PT_LOAD` segments.
pub const MAX_SEGMENTS: usize = 16;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// `p_flags`: executable.
pub const PF_X: u32 = 1;
/// `p_flags`: writable.
pub const PF_W: u32 = 2;
/// `p_flags`: readable.
pub const PF_R: u32 = 4;

/// What is wrong with an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    #[error("not an ELF file")]
    NotElf,
    /// Shorter than the file header.
    #[error("ELF file of {len} bytes is shorter than its 64-byte header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// Not ELFCLASS64 / little-endian / version 1.
    #[error("not a little-endian ELF64 file (class {class}, data {data}, version {version})")]
    Unsupported {
        /// `EI_CLASS`.
        class: u8,
        /// `EI_DATA`.
        data: u8,
        /// `EI_VERSION`.
        version: u8,
    },
    /// Not for x86-64.
    #[error("ELF machine {machine} is not x86-64 (62)")]
    WrongMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// Not an executable (`ET_EXEC`).
    #[error("ELF type {kind} is not an executable (ET_EXEC); relocatable kernels are not loaded")]
    NotExecutable {
        /// `e_type`.
        kind: u16,
    },
    /// Program headers of the wrong size, too many, or outside the file.
    #[error("ELF program header table ({count} x {entsize} at {offset:#x}) is malformed or outside the file")]
    ProgramHeaders {
        /// `e_phoff`.
        offset: u64,
        /// `e_phentsize`.
        entsize: u16,
        /// `e_phnum`.
        count: u16,
    },
    /// More `PT_LOAD` segments than [`MAX_SEGMENTS`].
    #[error("more than {MAX_SEGMENTS} loadable segments")]
    TooManySegments,
    /// No `PT_LOAD` segment with memory.
    #[error("the ELF file has no loadable segment")]
    NoSegments,
    /// A segment's file bytes lie outside the file, or exceed its memory size.
    #[error("segment {index}: file bytes {offset:#x}+{filesz:#x} are outside the file or larger than its memory size")]
    SegmentFileRange {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
    },
    /// A segment's address range overflows.
    #[error("segment {index}: address {addr:#x}+{size:#x} overflows")]
    SegmentOverflow {
        /// Program header index.
        index: usize,
        /// `p_paddr` (or `p_vaddr`).
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// Two segments share physical memory.
    #[error("segments {first} and {second} overlap")]
    SegmentsOverlap {
        /// Program header index of the first.
        first: usize,
        /// Program header index of the second.
        second: usize,
    },
    /// `e_entry` is not inside an executable segment.
    #[error("entry point {entry:#x} is not inside an executable segment")]
    EntryOutsideSegments {
        /// `e_entry`.
        entry: u64,
    },
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Program header index (for messages).
    pub index: usize,
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// Bytes in memory (`p_memsz`); the part past `file_size` is zeroed.
    pub mem_size: u64,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Bytes taken from the file (`p_filesz`).
    pub file_size: u64,
    /// `PF_X | PF_W | PF_R`.
    pub flags: u32,
}

impl Segment {
    /// The guest-physical memory it occupies.
    pub fn span(&self) -> crate::Span {
        crate::Span {
            base: self.paddr,
            size: self.mem_size,
        }
    }
}

/// A checked ELF64 executable.
#[derive(Clone, Copy, Debug)]
pub struct ElfImage<'a> {
    file: &'a [u8],
    entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    let s = b.get(at..at.checked_add(N)?)?;
    let mut out = [0u8; N];
    out.copy_from_slice(s);
    Some(out)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    bytes(b, at).map(u64::from_le_bytes)
}

const EMPTY: Segment = Segment {
    index: 0,
    paddr: 0,
    vaddr: 0,
    mem_size: 0,
    file_offset: 0,
    file_size: 0,
    flags: 0,
};

/// `true` when `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

impl<'a> ElfImage<'a> {
    /// Checks an ELF file: header, program headers, segment bounds, overlaps, entry.
    pub fn parse(file: &'a [u8]) -> Result<ElfImage<'a>, ElfError> {
        if !is_elf(file) {
            return Err(ElfError::NotElf);
        }
        let short = ElfError::TooShort { len: file.len() };
        let ident: [u8; 16] = bytes(file, 0).ok_or(short)?;
        let [_, _, _, _, class, data, version, ..] = ident;
        if file.len() < EHDR_SIZE
            || class != ELFCLASS64
            || data != ELFDATA2LSB
            || version != EV_CURRENT
        {
            return Err(if file.len() < EHDR_SIZE {
                short
            } else {
                ElfError::Unsupported {
                    class,
                    data,
                    version,
                }
            });
        }
        let kind = u16_at(file, 0x10).ok_or(short)?;
        let machine = u16_at(file, 0x12).ok_or(short)?;
        if machine != EM_X86_64 {
            return Err(ElfError::WrongMachine { machine });
        }
        if kind != ET_EXEC {
            return Err(ElfError::NotExecutable { kind });
        }
        let entry = u64_at(file, 0x18).ok_or(short)?;
        let phoff = u64_at(file, 0x20).ok_or(short)?;
        let phentsize = u16_at(file, 0x36).ok_or(short)?;
        let phnum = u16_at(file, 0x38).ok_or(short)?;
        let bad_ph = ElfError::ProgramHeaders {
            offset: phoff,
            entsize: phentsize,
            count: phnum,
        };
        // phnum 0xffff (PN_XNUM) moves the count into a section header: refused as too many.
        if usize::from(phentsize) != PHDR_SIZE || usize::from(phnum) > MAX_PROGRAM_HEADERS {
            return Err(bad_ph);
        }
        let table_len = usize::from(phnum) * PHDR_SIZE;
        let table = usize::try_from(phoff)
            .ok()
            .and_then(|off| file.get(off..off.checked_add(table_len)?))
            .ok_or(bad_ph)?;

        let mut segments = [EMPTY; MAX_SEGMENTS];
        let mut count = 0;
        for (index, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let field = |at| u64_at(ph, at).ok_or(bad_ph);
            if u32_at(ph, 0).ok_or(bad_ph)? != PT_LOAD {
                continue;
            }
            let seg = Segment {
                index,
                flags: u32_at(ph, 4).ok_or(bad_ph)?,
                file_offset: field(0x08)?,
                vaddr: field(0x10)?,
                paddr: field(0x18)?,
                file_size: field(0x20)?,
                mem_size: field(0x28)?,
            };
            if seg.mem_size == 0 {
                continue;
            }
            let file_end = seg.file_offset.checked_add(seg.file_size);
            if seg.file_size > seg.mem_size || file_end.is_none_or(|e| e > file.len() as u64) {
                return Err(ElfError::SegmentFileRange {
                    index,
                    offset: seg.file_offset,
                    filesz: seg.file_size,
                });
            }
            for addr in [seg.paddr, seg.vaddr] {
                if addr.checked_add(seg.mem_size).is_none() {
                    return Err(ElfError::SegmentOverflow {
                        index,
                        addr,
                        size: seg.mem_size,
                    });
                }
            }
            for earlier in segments.iter().take(count) {
                if earlier.span().overlaps(&seg.span()) {
                    return Err(ElfError::SegmentsOverlap {
                        first: earlier.index,
                        second: index,
                    });
                }
            }
            let slot = segments.get_mut(count).ok_or(ElfError::TooManySegments)?;
            *slot = seg;
            count += 1;
        }
        if count == 0 {
            return Err(ElfError::NoSegments);
        }
        let image = ElfImage {
            file,
            entry,
            segments,
            count,
        };
        image.physical_entry()?;
        Ok(image)
    }

    /// The `PT_LOAD` segments with memory, in program-header order.
    pub fn segments(&self) -> &[Segment] {
        self.segments.get(..self.count).unwrap_or(&[])
    }

    /// `e_entry` as the file states it (a virtual address).
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The physical address of the entry point.
    pub fn physical_entry(&self) -> Result<u64, ElfError> {
        self.segments()
            .iter()
            .filter(|s| s.flags & PF_X != 0)
            .find(|s| s.vaddr <= self.entry && self.entry - s.vaddr < s.mem_size)
            .map(|s| s.paddr + (self.entry - s.vaddr))
            .ok_or(ElfError::EntryOutsideSegments { entry: self.entry })
    }

    /// The file bytes of `seg` (checked in [`ElfImage::parse`]).
    pub fn file_bytes(&self, seg: &Segment) -> &'a [u8] {
        usize::try_from(seg.file_offset)
            .ok()
            .zip(usize::try_from(seg.file_size).ok())
            .and_then(|(off, len)| self.file.get(off..off.checked_add(len)?))
            .unwrap_or(&[])
    }
}

/// Builds a minimal ELF64 executable for tests: `(paddr, vaddr, filesz, memsz, flags)` per
/// segment, file bytes filled with a pattern.
#[cfg(test)]
pub(crate) fn test_elf(entry: u64, segs: &[(u64, u64, u64, u64, u32)]) -> std::vec::Vec<u8> {
    let phoff = EHDR_SIZE;
    let mut data_at = phoff + segs.len() * PHDR_SIZE;
    let total: u64 = segs.iter().map(|s| s.2).sum();
    let mut f = std::vec![0u8; data_at + total as usize];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = ELFCLASS64;
    f[5] = ELFDATA2LSB;
    f[6] = EV_CURRENT;
    f[0x10..0x12].copy_from_slice(&ET_EXEC.to_le_bytes());
    f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
    f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
    f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
    f[0x34..0x36].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    f[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    f[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    for (i, &(paddr, vaddr, filesz, memsz, flags)) in segs.iter().enumerate() {
        let ph = phoff + i * PHDR_SIZE;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        for (j, b) in f[data_at..data_at + filesz as usize].iter_mut().enumerate() {
            *b = (i * 31 + j % 199 + 1) as u8;
        }
        data_at += filesz as usize;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: u32 = PF_R | PF_X;
    const DATA: u32 = PF_R | PF_W;

    #[test]
    fn a_valid_executable_lists_its_segments_and_entry() {
        let f = test_elf(
            0x20_0010,
            &[
                (0x20_0000, 0x20_0000, 0x3000, 0x3000, TEXT),
                (0x30_0000, 0x30_0000, 0x100, 0x5000, DATA),
            ],
        );
        let e = ElfImage::parse(&f).unwrap();
        assert_eq!(e.segments().len(), 2);
        assert_eq!(e.physical_entry(), Ok(0x20_0010));
        let s1 = e.segments()[1];
        assert_eq!(
            (s1.paddr, s1.file_size, s1.mem_size),
            (0x30_0000, 0x100, 0x5000)
        );
        assert_eq!(e.file_bytes(&s1).len(), 0x100);
    }

    #[test]
    fn higher_half_entry_translates_to_physical() {
        let f = test_elf(
            0xffff_ffff_8000_0040,
            &[(0x40_0000, 0xffff_ffff_8000_0000, 0x1000, 0x1000, TEXT)],
        );
        assert_eq!(ElfImage::parse(&f).unwrap().physical_entry(), Ok(0x40_0040));
    }

    #[test]
    fn not_elf_and_wrong_kinds_are_refused() {
        assert_eq!(
            ElfImage::parse(b"MZ\x90\x00").unwrap_err(),
            ElfError::NotElf
        );
        assert_eq!(
            ElfImage::parse(b"\x7fELF\x02\x01\x01").unwrap_err(),
            ElfError::TooShort { len: 7 }
        );
        let good = test_elf(0x1000, &[(0x1000, 0x1000, 0x10, 0x10, TEXT)]);
        let mut f = good.clone();
        f[4] = 1; // ELFCLASS32
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::Unsupported { class: 1, .. }
        ));
        let mut f = good.clone();
        f[0x12] = 3; // EM_386
        assert_eq!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::WrongMachine { machine: 3 }
        );
        let mut f = good.clone();
        f[0x10] = 3; // ET_DYN
        assert_eq!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::NotExecutable { kind: 3 }
        );
    }

    #[test]
    fn malformed_program_headers_are_refused() {
        let good = test_elf(0x1000, &[(0x1000, 0x1000, 0x10, 0x10, TEXT)]);
        // Table outside the file.
        let mut f = good.clone();
        f[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::ProgramHeaders { .. }
        ));
        // Truncated table.
        assert!(matches!(
            ElfImage::parse(&good[..EHDR_SIZE + 20]).unwrap_err(),
            ElfError::ProgramHeaders { .. }
        ));
        // Wrong entry size, and PN_XNUM.
        let mut f = good.clone();
        f[0x36] = 32;
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::ProgramHeaders { entsize: 32, .. }
        ));
        let mut f = good.clone();
        f[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::ProgramHeaders { count: 0xffff, .. }
        ));
    }

    #[test]
    fn bad_segments_are_refused() {
        // File bytes past the end of the file.
        let mut f = test_elf(0x1000, &[(0x1000, 0x1000, 0x10, 0x10, TEXT)]);
        let ph = EHDR_SIZE;
        f[ph + 32..ph + 40].copy_from_slice(&0x1000u64.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::SegmentFileRange { index: 0, .. }
        ));
        // filesz > memsz.
        let f = test_elf(0x1000, &[(0x1000, 0x1000, 0x20, 0x10, TEXT)]);
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::SegmentFileRange { .. }
        ));
        // Address overflow.
        let f = test_elf(0x1000, &[(u64::MAX - 0x10, 0x1000, 0x10, 0x20, TEXT)]);
        assert!(matches!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::SegmentOverflow { index: 0, .. }
        ));
        // Overlapping segments.
        let f = test_elf(
            0x1000,
            &[
                (0x1000, 0x1000, 0x10, 0x2000, TEXT),
                (0x2800, 0x2800, 0x10, 0x10, DATA),
            ],
        );
        assert_eq!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::SegmentsOverlap {
                first: 0,
                second: 1
            }
        );
        // Too many.
        let many: std::vec::Vec<_> = (0..MAX_SEGMENTS as u64 + 1)
            .map(|i| {
                (
                    0x10_0000 + i * 0x1000,
                    0x10_0000 + i * 0x1000,
                    0,
                    0x10,
                    TEXT,
                )
            })
            .collect();
        assert_eq!(
            ElfImage::parse(&test_elf(0x10_0000, &many)).unwrap_err(),
            ElfError::TooManySegments
        );
        // Nothing to load.
        assert_eq!(
            ElfImage::parse(&test_elf(0x1000, &[(0x1000, 0x1000, 0, 0, TEXT)])).unwrap_err(),
            ElfError::NoSegments
        );
    }

    #[test]
    fn entry_must_be_in_an_executable_segment() {
        let f = test_elf(0x30_0000, &[(0x30_0000, 0x30_0000, 0x10, 0x1000, DATA)]);
        assert_eq!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::EntryOutsideSegments { entry: 0x30_0000 }
        );
        let f = test_elf(0x30_1000, &[(0x30_0000, 0x30_0000, 0x10, 0x1000, TEXT)]);
        assert_eq!(
            ElfImage::parse(&f).unwrap_err(),
            ElfError::EntryOutsideSegments { entry: 0x30_1000 }
        );
    }
}
