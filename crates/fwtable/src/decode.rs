//! Typed decoders for the entries this crate knows.
//!
//! Each decoder checks the exact length (and version where there is one) and
//! rejects anything else; none of them panics on any input.

use core::fmt;

use crate::error::{Item, Signature};
use crate::guid::{self, Guid};
use crate::table::{bytes_at, u16_at, Entry};
use crate::TableError;

/// The whole of `data` as an `N`-byte array, or `DataLength`.
fn exact<const N: usize>(item: Item, data: &[u8]) -> Result<[u8; N], TableError> {
    <[u8; N]>::try_from(data).map_err(|_| TableError::DataLength {
        item,
        expected: N,
        found: data.len(),
    })
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = b.get(at..at + 4) {
        w.copy_from_slice(src);
    }
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    u64::from_le_bytes(w)
}

/// SEV-ES AP reset block (GUID [`guid::SEV_ES_RESET_BLOCK`]).
///
/// Data is one `u32`: bits 15:0 are the IP, bits 31:16 the high half of the
/// CS segment base (edk2 `ResetVectorVtf0.nasm.inc` `sevEsResetBlock`; QEMU
/// `target/i386/sev.c` `sev_es_find_reset_vector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevEsResetBlock {
    /// Initial IP of an AP.
    pub ip: u16,
    /// CS segment base of an AP; the low 16 bits are always zero.
    pub cs_base: u32,
}

impl SevEsResetBlock {
    /// Data length of the entry.
    pub const SIZE: usize = 4;

    /// Decodes the entry data.
    pub fn decode(data: &[u8]) -> Result<SevEsResetBlock, TableError> {
        let raw = u32::from_le_bytes(exact(Item::SevEsResetBlock, data)?);
        Ok(SevEsResetBlock::from_raw(raw))
    }

    /// Splits the raw `u32` value.
    pub const fn from_raw(raw: u32) -> SevEsResetBlock {
        SevEsResetBlock {
            ip: (raw & 0xffff) as u16,
            cs_base: raw & 0xffff_0000,
        }
    }

    /// The raw `u32` value; fails if `cs_base` has bits set in 15:0, which
    /// the format cannot carry.
    pub fn to_raw(&self) -> Result<u32, TableError> {
        if self.cs_base & 0xffff != 0 {
            return Err(TableError::Misaligned {
                item: Item::SevEsResetBlock,
                addr: u64::from(self.cs_base),
            });
        }
        Ok(self.cs_base | u32::from(self.ip))
    }

    /// Entry data for this value.
    pub fn encode(&self) -> Result<[u8; 4], TableError> {
        self.to_raw().map(u32::to_le_bytes)
    }

    /// Linear address the AP starts at (`cs_base + ip`).
    pub fn reset_address(&self) -> u32 {
        self.cs_base | u32::from(self.ip)
    }
}

/// A guest-physical area given as `u32` base and `u32` size: the SEV secret
/// block ([`guid::SEV_SECRET_BLOCK`]) and the SEV hash table block
/// ([`guid::SEV_HASH_TABLE`]) (edk2 `ResetVectorVtf0.nasm.inc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevArea {
    /// Guest-physical base.
    pub base: u32,
    /// Size in bytes (0 when the firmware has no such area).
    pub size: u32,
}

impl SevArea {
    /// Data length of the entry.
    pub const SIZE: usize = 8;

    /// Decodes the entry data.
    pub fn decode(data: &[u8]) -> Result<SevArea, TableError> {
        let b: [u8; 8] = exact(Item::SevArea, data)?;
        Ok(SevArea {
            base: le32(&b, 0),
            size: le32(&b, 4),
        })
    }

    /// Entry data for this value.
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.base.to_le_bytes());
        out[4..].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    /// One past the last byte, computed without overflow.
    pub fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.size)
    }
}

/// A `u32` distance from the end of the image to a metadata block: the data
/// of the SEV, TDX and IGVM metadata entries. The block starts at
/// `image.len() - offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataOffset(pub u32);

impl MetadataOffset {
    /// Data length of the entry.
    pub const SIZE: usize = 4;

    /// Decodes the entry data.
    pub fn decode(data: &[u8]) -> Result<MetadataOffset, TableError> {
        exact(Item::MetadataOffset, data).map(|b| MetadataOffset(u32::from_le_bytes(b)))
    }

    /// Entry data for this value.
    pub fn encode(&self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// Offset of the block within `image`; the block must start inside it.
    pub fn resolve(&self, item: Item, image: &[u8]) -> Result<usize, TableError> {
        usize::try_from(self.0)
            .ok()
            .filter(|&off| off != 0)
            .and_then(|off| image.len().checked_sub(off))
            .ok_or(TableError::MetadataOffsetOutside {
                item,
                offset_from_end: self.0,
                image_len: image.len(),
            })
    }
}

/// Header of the ASEV and TDVF blocks: signature, length, version, count.
const METADATA_HEADER: usize = 16;

/// Reads and checks a metadata header at `offset`; returns the version (1)
/// and the section bytes (`count * section_size` of them).
fn metadata_block(
    item: Item,
    image: &[u8],
    offset: usize,
    signature: [u8; 4],
    section_size: usize,
) -> Result<(u32, &[u8]), TableError> {
    let header = bytes_at(image, offset, METADATA_HEADER)?;
    let mut found = [0u8; 4];
    found.copy_from_slice(header.get(..4).unwrap_or(&[0; 4]));
    if found != signature {
        return Err(TableError::BadSignature {
            item,
            offset,
            found: Signature(found),
        });
    }
    let len = le32(header, 4);
    let version = le32(header, 8);
    let count = le32(header, 12);
    if version != 1 {
        return Err(TableError::UnsupportedVersion { item, version });
    }
    let sections_len = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(section_size));
    let sections = sections_len
        .and_then(|n| bytes_at(image, offset + METADATA_HEADER, n).ok())
        .ok_or(TableError::SectionsPastEnd {
            item,
            offset,
            count,
        })?;
    let expected = (METADATA_HEADER + sections.len()) as u64;
    if u64::from(len) != expected {
        return Err(TableError::SizeMismatch {
            item,
            declared: u64::from(len),
            expected,
        });
    }
    Ok((version, sections))
}

/// Type of an SEV metadata section. Values come from the firmware, so this is
/// an integer with named constants, not an enum (edk2
/// `OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc`, `OVMF_SECTION_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectionType(pub u32);

impl SectionType {
    /// Memory the VMM must pre-validate (SNP) before boot.
    pub const SNP_SEC_MEM: SectionType = SectionType(1);
    /// SEV-SNP secrets page.
    pub const SNP_SECRETS: SectionType = SectionType(2);
    /// CPUID page filled by the VMM.
    pub const CPUID: SectionType = SectionType(3);
    /// SVSM calling area page.
    pub const SVSM_CAA: SectionType = SectionType(4);
    /// Kernel hashes for measured direct boot.
    pub const KERNEL_HASHES: SectionType = SectionType(0x10);

    /// Name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("SNP_SEC_MEM"),
            2 => Some("SNP_SECRETS"),
            3 => Some("CPUID"),
            4 => Some("SVSM_CAA"),
            0x10 => Some("KERNEL_HASHES"),
            _ => None,
        }
    }
}

impl fmt::Display for SectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "type {:#x}", self.0),
        }
    }
}

/// One section of the SEV metadata: `u32` base, `u32` size, `u32` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Guest-physical base.
    pub base: u32,
    /// Size in bytes.
    pub size: u32,
    /// What the VMM must do with it.
    pub kind: SectionType,
}

impl SevSection {
    /// Encoded size.
    pub const SIZE: usize = 12;

    fn from_chunk(c: &[u8]) -> SevSection {
        SevSection {
            base: le32(c, 0),
            size: le32(c, 4),
            kind: SectionType(le32(c, 8)),
        }
    }
}

/// The "ASEV" metadata block located through [`guid::SEV_METADATA`]
/// (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc`): header
/// `"ASEV"`, `u32` length, `u32` version (1), `u32` count, then `count`
/// [`SevSection`]s. Length must equal `16 + 12 * count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMetadata<'a> {
    /// Offset of the header within the image.
    pub offset: usize,
    /// Format version (always 1).
    pub version: u32,
    sections: &'a [u8],
}

impl<'a> SevMetadata<'a> {
    /// Signature at the start of the header.
    pub const SIGNATURE: [u8; 4] = *b"ASEV";
    /// The only version defined.
    pub const VERSION: u32 = 1;

    /// Finds and checks the block `offset` bytes before the end of `image`.
    pub fn decode(image: &'a [u8], offset: MetadataOffset) -> Result<SevMetadata<'a>, TableError> {
        let at = offset.resolve(Item::SevMetadata, image)?;
        let (version, sections) = metadata_block(
            Item::SevMetadata,
            image,
            at,
            Self::SIGNATURE,
            SevSection::SIZE,
        )?;
        Ok(SevMetadata {
            offset: at,
            version,
            sections,
        })
    }

    /// Number of sections.
    pub fn section_count(&self) -> usize {
        self.sections.len() / SevSection::SIZE
    }

    /// The sections in file order.
    pub fn sections(&self) -> impl ExactSizeIterator<Item = SevSection> + 'a {
        self.sections
            .chunks_exact(SevSection::SIZE)
            .map(SevSection::from_chunk)
    }
}

/// Writes an "ASEV" block with `sections` into `out`; returns its length.
pub fn encode_sev_metadata(sections: &[SevSection], out: &mut [u8]) -> Result<usize, TableError> {
    let total = sections
        .len()
        .checked_mul(SevSection::SIZE)
        .and_then(|n| n.checked_add(METADATA_HEADER))
        .ok_or(TableError::NoRoom {
            needed: usize::MAX,
            available: out.len(),
        })?;
    let (Ok(total32), Ok(count32)) = (u32::try_from(total), u32::try_from(sections.len())) else {
        return Err(TableError::NoRoom {
            needed: total,
            available: out.len(),
        });
    };
    let available = out.len();
    let dst = out.get_mut(..total).ok_or(TableError::NoRoom {
        needed: total,
        available,
    })?;
    let (header, body) = dst.split_at_mut(METADATA_HEADER);
    header[..4].copy_from_slice(&SevMetadata::SIGNATURE);
    header[4..8].copy_from_slice(&total32.to_le_bytes());
    header[8..12].copy_from_slice(&SevMetadata::VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&count32.to_le_bytes());
    for (chunk, s) in body.chunks_exact_mut(SevSection::SIZE).zip(sections) {
        chunk[..4].copy_from_slice(&s.base.to_le_bytes());
        chunk[4..8].copy_from_slice(&s.size.to_le_bytes());
        chunk[8..].copy_from_slice(&s.kind.0.to_le_bytes());
    }
    Ok(total)
}

/// Type of a TDX metadata section (edk2
/// `OvmfPkg/ResetVector/X64/IntelTdxMetadata.nasm.inc`; QEMU
/// `include/hw/i386/tdvf.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TdxSectionType(pub u32);

impl TdxSectionType {
    /// Boot firmware volume (code, measured).
    pub const BFV: TdxSectionType = TdxSectionType(0);
    /// Configuration firmware volume (variables).
    pub const CFV: TdxSectionType = TdxSectionType(1);
    /// TD HOB the VMM fills in.
    pub const TD_HOB: TdxSectionType = TdxSectionType(2);
    /// Temporary memory the VMM adds as private pages.
    pub const TEMP_MEM: TdxSectionType = TdxSectionType(3);

    /// Name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("BFV"),
            1 => Some("CFV"),
            2 => Some("TD_HOB"),
            3 => Some("TEMP_MEM"),
            _ => None,
        }
    }
}

impl fmt::Display for TdxSectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "type {:#x}", self.0),
        }
    }
}

/// One section of the TDX metadata (32 bytes; field names from QEMU
/// `hw/i386/tdvf.c` `TdvfSectionEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxSection {
    /// Offset of the section's bytes in the image.
    pub data_offset: u32,
    /// Number of bytes in the image.
    pub raw_data_size: u32,
    /// Guest-physical address.
    pub memory_address: u64,
    /// Size in guest memory.
    pub memory_size: u64,
    /// Section type.
    pub kind: TdxSectionType,
    /// Attributes (bit 0: extend MRTD, bit 1: PAGE.AUG).
    pub attributes: u32,
}

impl TdxSection {
    /// Encoded size.
    pub const SIZE: usize = 32;

    fn from_chunk(c: &[u8]) -> TdxSection {
        TdxSection {
            data_offset: le32(c, 0),
            raw_data_size: le32(c, 4),
            memory_address: le64(c, 8),
            memory_size: le64(c, 16),
            kind: TdxSectionType(le32(c, 24)),
            attributes: le32(c, 28),
        }
    }
}

/// The "TDVF" metadata block located through [`guid::TDX_METADATA`]. The
/// offset points at the descriptor itself (edk2 writes
/// `fourGigabytes - TdxMetadataGuid - 16`, skipping the GUID that precedes
/// it). Header as for ASEV; sections are 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxMetadata<'a> {
    /// Offset of the descriptor within the image.
    pub offset: usize,
    /// Format version (always 1).
    pub version: u32,
    sections: &'a [u8],
}

impl<'a> TdxMetadata<'a> {
    /// Signature at the start of the descriptor.
    pub const SIGNATURE: [u8; 4] = *b"TDVF";

    /// Finds and checks the block `offset` bytes before the end of `image`.
    pub fn decode(image: &'a [u8], offset: MetadataOffset) -> Result<TdxMetadata<'a>, TableError> {
        let at = offset.resolve(Item::TdxMetadata, image)?;
        let (version, sections) = metadata_block(
            Item::TdxMetadata,
            image,
            at,
            Self::SIGNATURE,
            TdxSection::SIZE,
        )?;
        Ok(TdxMetadata {
            offset: at,
            version,
            sections,
        })
    }

    /// Number of sections.
    pub fn section_count(&self) -> usize {
        self.sections.len() / TdxSection::SIZE
    }

    /// The sections in file order.
    pub fn sections(&self) -> impl ExactSizeIterator<Item = TdxSection> + 'a {
        self.sections
            .chunks_exact(TdxSection::SIZE)
            .map(TdxSection::from_chunk)
    }
}

/// This project's guest-services descriptor ([`guid::SERVICES_DESCRIPTOR`]):
/// the GPA of the MMIO page through which the guest reaches the VMM.
///
/// Data, version 1 (16 bytes, little-endian):
///
/// | offset | size | field                                   |
/// |--------|------|-----------------------------------------|
/// | 0      | 2    | version = 1                             |
/// | 2      | 2    | data_size = 16                          |
/// | 4      | 4    | flags = 0 (no flag defined yet)         |
/// | 8      | 8    | services_gpa (4 KiB aligned)            |
///
/// A later version may append fields and raise `data_size`; a decoder that
/// does not know the version rejects the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicesDescriptor {
    /// Flags; none is defined in version 1.
    pub flags: u32,
    /// GPA of the guest-services MMIO page.
    pub services_gpa: u64,
}

impl ServicesDescriptor {
    /// Version this crate writes and reads.
    pub const VERSION: u16 = 1;
    /// Data size of version 1.
    pub const SIZE: usize = 16;
    /// Flags defined in version 1 (none).
    pub const KNOWN_FLAGS: u32 = 0;

    /// Decodes and checks the entry data.
    pub fn decode(data: &[u8]) -> Result<ServicesDescriptor, TableError> {
        let item = Item::ServicesDescriptor;
        let version = u16_at(data, 0).map_err(|_| TableError::DataLength {
            item,
            expected: Self::SIZE,
            found: data.len(),
        })?;
        if version != Self::VERSION {
            return Err(TableError::UnsupportedVersion {
                item,
                version: u32::from(version),
            });
        }
        let b: [u8; 16] = exact(item, data)?;
        let declared = u16::from_le_bytes([b[2], b[3]]);
        if usize::from(declared) != Self::SIZE {
            return Err(TableError::SizeMismatch {
                item,
                declared: u64::from(declared),
                expected: Self::SIZE as u64,
            });
        }
        let flags = le32(&b, 4);
        if flags & !Self::KNOWN_FLAGS != 0 {
            return Err(TableError::UnknownFlags { item, flags });
        }
        let services_gpa = le64(&b, 8);
        if services_gpa & 0xfff != 0 {
            return Err(TableError::Misaligned {
                item,
                addr: services_gpa,
            });
        }
        Ok(ServicesDescriptor {
            flags,
            services_gpa,
        })
    }

    /// Entry data (version 1) for this value.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..2].copy_from_slice(&Self::VERSION.to_le_bytes());
        out[2..4].copy_from_slice(&(Self::SIZE as u16).to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..].copy_from_slice(&self.services_gpa.to_le_bytes());
        out
    }
}

/// This project's mirror helper descriptor ([`guid::MIRROR_HELPER_DESCRIPTOR`])
/// before its layout is fixed: the version (first `u16`) and the raw data.
///
/// When the layout is defined, add a typed decoder next to this one and a
/// variant to [`EntryValue`]; `EntryValue::decode` picks it by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorHelperRaw<'a> {
    /// Layout version (first `u16` of the data).
    pub version: u16,
    /// The whole entry data, version included.
    pub data: &'a [u8],
}

impl<'a> MirrorHelperRaw<'a> {
    /// Reads the version; the data must hold at least the `u16`.
    pub fn decode(data: &'a [u8]) -> Result<MirrorHelperRaw<'a>, TableError> {
        let version = u16_at(data, 0).map_err(|_| TableError::DataLength {
            item: Item::MirrorHelper,
            expected: 2,
            found: data.len(),
        })?;
        Ok(MirrorHelperRaw { version, data })
    }
}

/// The decoded value of one entry, picked by its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryValue<'a> {
    /// [`guid::SEV_ES_RESET_BLOCK`].
    SevEsResetBlock(SevEsResetBlock),
    /// [`guid::SEV_SECRET_BLOCK`].
    SevSecretBlock(SevArea),
    /// [`guid::SEV_HASH_TABLE`].
    SevHashTable(SevArea),
    /// [`guid::SEV_METADATA`] with the block it points at.
    SevMetadata(MetadataOffset, SevMetadata<'a>),
    /// [`guid::TDX_METADATA`] with the block it points at.
    TdxMetadata(MetadataOffset, TdxMetadata<'a>),
    /// [`guid::IGVM_METADATA`]: only the offset is decoded.
    IgvmMetadata(MetadataOffset),
    /// [`guid::SERVICES_DESCRIPTOR`].
    Services(ServicesDescriptor),
    /// [`guid::MIRROR_HELPER_DESCRIPTOR`] (no typed layout yet).
    MirrorHelper(MirrorHelperRaw<'a>),
    /// Any other GUID: the raw data.
    Raw(&'a [u8]),
}

impl<'a> EntryValue<'a> {
    /// Decodes `entry` according to its GUID; `image` is the image the
    /// table was parsed from (metadata entries point into it).
    pub fn decode(image: &'a [u8], entry: &Entry<'a>) -> Result<EntryValue<'a>, TableError> {
        Self::decode_data(image, entry.guid, entry.data)
    }

    /// As [`EntryValue::decode`], from a GUID and data.
    pub fn decode_data(
        image: &'a [u8],
        guid: Guid,
        data: &'a [u8],
    ) -> Result<EntryValue<'a>, TableError> {
        Ok(match guid {
            guid::SEV_ES_RESET_BLOCK => EntryValue::SevEsResetBlock(SevEsResetBlock::decode(data)?),
            guid::SEV_SECRET_BLOCK => EntryValue::SevSecretBlock(SevArea::decode(data)?),
            guid::SEV_HASH_TABLE => EntryValue::SevHashTable(SevArea::decode(data)?),
            guid::SEV_METADATA => {
                let off = MetadataOffset::decode(data)?;
                EntryValue::SevMetadata(off, SevMetadata::decode(image, off)?)
            }
            guid::TDX_METADATA => {
                let off = MetadataOffset::decode(data)?;
                EntryValue::TdxMetadata(off, TdxMetadata::decode(image, off)?)
            }
            guid::IGVM_METADATA => EntryValue::IgvmMetadata(MetadataOffset::decode(data)?),
            guid::SERVICES_DESCRIPTOR => EntryValue::Services(ServicesDescriptor::decode(data)?),
            guid::MIRROR_HELPER_DESCRIPTOR => {
                EntryValue::MirrorHelper(MirrorHelperRaw::decode(data)?)
            }
            _ => EntryValue::Raw(data),
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn sev_es_reset_block_good_and_bad() {
        let r = SevEsResetBlock::decode(&[0x04, 0xb0, 0x80, 0x00]).unwrap();
        assert_eq!(
            r,
            SevEsResetBlock {
                ip: 0xb004,
                cs_base: 0x0080_0000
            }
        );
        assert_eq!(r.reset_address(), 0x0080_b004);
        assert_eq!(r.encode(), Ok([0x04, 0xb0, 0x80, 0x00]));
        assert_eq!(
            SevEsResetBlock::from_raw(0xffff_ffff).to_raw(),
            Ok(0xffff_ffff)
        );
        for len in [0, 3, 5, 8] {
            assert_eq!(
                SevEsResetBlock::decode(&vec![0; len]),
                Err(TableError::DataLength {
                    item: Item::SevEsResetBlock,
                    expected: 4,
                    found: len
                })
            );
        }
        let bad = SevEsResetBlock {
            ip: 0,
            cs_base: 0x1234,
        };
        assert_eq!(
            bad.encode(),
            Err(TableError::Misaligned {
                item: Item::SevEsResetBlock,
                addr: 0x1234
            })
        );
    }

    #[test]
    fn sev_area_good_and_bad() {
        let a = SevArea::decode(&[0, 0xd0, 0x80, 0, 0, 0x10, 0, 0]).unwrap();
        assert_eq!(
            a,
            SevArea {
                base: 0x80_d000,
                size: 0x1000
            }
        );
        assert_eq!(SevArea::decode(&a.encode()), Ok(a));
        assert_eq!(
            SevArea {
                base: u32::MAX,
                size: u32::MAX
            }
            .end(),
            0x1_ffff_fffe
        );
        assert_eq!(
            SevArea::decode(&[0; 7]),
            Err(TableError::DataLength {
                item: Item::SevArea,
                expected: 8,
                found: 7
            })
        );
        assert!(SevArea::decode(&[0; 12]).is_err());
    }

    fn image_with_asev(len: usize, at_from_end: usize, sections: &[SevSection]) -> Vec<u8> {
        let mut img = vec![0u8; len];
        let at = len - at_from_end;
        encode_sev_metadata(sections, &mut img[at..]).unwrap();
        img
    }

    const OVMF_SECTIONS: [SevSection; 5] = [
        SevSection {
            base: 0x80_0000,
            size: 0x9000,
            kind: SectionType::SNP_SEC_MEM,
        },
        SevSection {
            base: 0x80_a000,
            size: 0x3000,
            kind: SectionType::SNP_SEC_MEM,
        },
        SevSection {
            base: 0x80_d000,
            size: 0x1000,
            kind: SectionType::SNP_SECRETS,
        },
        SevSection {
            base: 0x80_e000,
            size: 0x1000,
            kind: SectionType::CPUID,
        },
        SevSection {
            base: 0x80_f000,
            size: 0x1_1000,
            kind: SectionType::SNP_SEC_MEM,
        },
    ];

    #[test]
    fn sev_metadata_round_trip() {
        let img = image_with_asev(0x1000, 0x52c, &OVMF_SECTIONS);
        let m = SevMetadata::decode(&img, MetadataOffset(0x52c)).unwrap();
        assert_eq!(m.offset, 0x1000 - 0x52c);
        assert_eq!(m.version, 1);
        assert_eq!(m.section_count(), 5);
        assert!(m.sections().eq(OVMF_SECTIONS.iter().copied()));
        assert_eq!(
            u32::from_le_bytes(img[m.offset + 4..m.offset + 8].try_into().unwrap()),
            76
        );
        // Zero sections is a valid block.
        let img = image_with_asev(64, 16, &[]);
        let m = SevMetadata::decode(&img, MetadataOffset(16)).unwrap();
        assert_eq!(m.sections().len(), 0);
    }

    #[test]
    fn section_type_names() {
        assert_eq!(SectionType(1).name(), Some("SNP_SEC_MEM"));
        assert_eq!(SectionType(2).name(), Some("SNP_SECRETS"));
        assert_eq!(SectionType(3).name(), Some("CPUID"));
        assert_eq!(SectionType(4).name(), Some("SVSM_CAA"));
        assert_eq!(SectionType(0x10).name(), Some("KERNEL_HASHES"));
        assert_eq!(SectionType(0).name(), None);
        assert_eq!(SectionType(5).name(), None);
        assert_eq!(std::format!("{}", SectionType(0x99)), "type 0x99");
        assert_eq!(TdxSectionType(3).name(), Some("TEMP_MEM"));
        assert_eq!(TdxSectionType(4).name(), None);
    }

    #[test]
    fn metadata_offset_outside_image() {
        let img = vec![0u8; 256];
        for off in [0u32, 257, u32::MAX] {
            assert_eq!(
                SevMetadata::decode(&img, MetadataOffset(off)),
                Err(TableError::MetadataOffsetOutside {
                    item: Item::SevMetadata,
                    offset_from_end: off,
                    image_len: 256
                })
            );
        }
        // Offset 256 is the first byte; the header then fits.
        let img = image_with_asev(256, 256, &[]);
        assert!(SevMetadata::decode(&img, MetadataOffset(256)).is_ok());
        // Header cut by the end of the image.
        let img = vec![0u8; 256];
        assert_eq!(
            SevMetadata::decode(&img, MetadataOffset(8)),
            Err(TableError::Truncated {
                offset: 248,
                len: 16
            })
        );
    }

    #[test]
    fn sev_metadata_bad_signature_and_version() {
        let mut img = image_with_asev(256, 100, &OVMF_SECTIONS[..1]);
        img[156] = b'B';
        assert_eq!(
            SevMetadata::decode(&img, MetadataOffset(100)),
            Err(TableError::BadSignature {
                item: Item::SevMetadata,
                offset: 156,
                found: Signature(*b"BSEV")
            })
        );
        let mut img = image_with_asev(256, 100, &OVMF_SECTIONS[..1]);
        img[164] = 2;
        assert_eq!(
            SevMetadata::decode(&img, MetadataOffset(100)),
            Err(TableError::UnsupportedVersion {
                item: Item::SevMetadata,
                version: 2
            })
        );
        // TDVF parser refuses an ASEV block.
        let img = image_with_asev(256, 100, &OVMF_SECTIONS[..1]);
        assert!(matches!(
            TdxMetadata::decode(&img, MetadataOffset(100)),
            Err(TableError::BadSignature { .. })
        ));
    }

    #[test]
    fn sev_metadata_too_many_sections() {
        for count in [8u32, 1000, u32::MAX] {
            let mut img = image_with_asev(256, 100, &OVMF_SECTIONS);
            img[168..172].copy_from_slice(&count.to_le_bytes());
            assert_eq!(
                SevMetadata::decode(&img, MetadataOffset(100)),
                Err(TableError::SectionsPastEnd {
                    item: Item::SevMetadata,
                    offset: 156,
                    count
                })
            );
        }
    }

    #[test]
    fn sev_metadata_length_mismatch() {
        let mut img = image_with_asev(256, 100, &OVMF_SECTIONS);
        img[160..164].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(
            SevMetadata::decode(&img, MetadataOffset(100)),
            Err(TableError::SizeMismatch {
                item: Item::SevMetadata,
                declared: 77,
                expected: 76
            })
        );
    }

    #[test]
    fn encode_sev_metadata_no_room() {
        let mut out = [0u8; 27];
        assert_eq!(
            encode_sev_metadata(&OVMF_SECTIONS[..1], &mut out),
            Err(TableError::NoRoom {
                needed: 28,
                available: 27
            })
        );
    }

    fn tdvf(sections: &[[u8; 32]]) -> Vec<u8> {
        let mut v = b"TDVF".to_vec();
        v.extend_from_slice(&(16 + 32 * sections.len() as u32).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for s in sections {
            v.extend_from_slice(s);
        }
        v
    }

    fn tdx_section(s: TdxSection) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&s.data_offset.to_le_bytes());
        b[4..8].copy_from_slice(&s.raw_data_size.to_le_bytes());
        b[8..16].copy_from_slice(&s.memory_address.to_le_bytes());
        b[16..24].copy_from_slice(&s.memory_size.to_le_bytes());
        b[24..28].copy_from_slice(&s.kind.0.to_le_bytes());
        b[28..32].copy_from_slice(&s.attributes.to_le_bytes());
        b
    }

    #[test]
    fn tdx_metadata_good_and_bad() {
        let bfv = TdxSection {
            data_offset: 0,
            raw_data_size: 0x1e_0000,
            memory_address: 0xffe2_0000,
            memory_size: 0x1e_0000,
            kind: TdxSectionType::BFV,
            attributes: 1,
        };
        let hob = TdxSection {
            data_offset: 0,
            raw_data_size: 0,
            memory_address: 0x80_9000,
            memory_size: 0x2000,
            kind: TdxSectionType::TD_HOB,
            attributes: 0,
        };
        let block = tdvf(&[tdx_section(bfv), tdx_section(hob)]);
        let mut img = vec![0u8; 512];
        img[100..100 + block.len()].copy_from_slice(&block);
        let m = TdxMetadata::decode(&img, MetadataOffset(412)).unwrap();
        assert_eq!(m.offset, 100);
        assert_eq!(m.section_count(), 2);
        assert!(m.sections().eq([bfv, hob]));

        let mut bad = img.clone();
        bad[112..116].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            TdxMetadata::decode(&bad, MetadataOffset(412)),
            Err(TableError::SectionsPastEnd {
                item: Item::TdxMetadata,
                offset: 100,
                count: 100
            })
        );
        assert!(matches!(
            TdxMetadata::decode(&img, MetadataOffset(600)),
            Err(TableError::MetadataOffsetOutside { .. })
        ));
    }

    #[test]
    fn metadata_offset_entry_length() {
        assert_eq!(
            MetadataOffset::decode(&[0x2c, 5, 0, 0]),
            Ok(MetadataOffset(0x52c))
        );
        assert_eq!(MetadataOffset(0x52c).encode(), [0x2c, 5, 0, 0]);
        assert_eq!(
            MetadataOffset::decode(&[0x2c, 5, 0]),
            Err(TableError::DataLength {
                item: Item::MetadataOffset,
                expected: 4,
                found: 3
            })
        );
    }

    #[test]
    fn services_descriptor_good() {
        let d = ServicesDescriptor {
            flags: 0,
            services_gpa: 0xfeb0_0000,
        };
        let bytes = d.encode();
        assert_eq!(
            bytes,
            [1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xb0, 0xfe, 0, 0, 0, 0]
        );
        assert_eq!(ServicesDescriptor::decode(&bytes), Ok(d));
    }

    #[test]
    fn services_descriptor_bad() {
        let good = ServicesDescriptor {
            flags: 0,
            services_gpa: 0x1000,
        }
        .encode();
        let item = Item::ServicesDescriptor;
        assert_eq!(
            ServicesDescriptor::decode(&[]),
            Err(TableError::DataLength {
                item,
                expected: 16,
                found: 0
            })
        );
        assert_eq!(
            ServicesDescriptor::decode(&good[..15]),
            Err(TableError::DataLength {
                item,
                expected: 16,
                found: 15
            })
        );
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            ServicesDescriptor::decode(&long),
            Err(TableError::DataLength { found: 17, .. })
        ));
        let mut v2 = good;
        v2[0] = 2;
        assert_eq!(
            ServicesDescriptor::decode(&v2),
            Err(TableError::UnsupportedVersion { item, version: 2 })
        );
        let mut size = good;
        size[2] = 24;
        assert_eq!(
            ServicesDescriptor::decode(&size),
            Err(TableError::SizeMismatch {
                item,
                declared: 24,
                expected: 16
            })
        );
        let mut flags = good;
        flags[4] = 1;
        assert_eq!(
            ServicesDescriptor::decode(&flags),
            Err(TableError::UnknownFlags { item, flags: 1 })
        );
        let mut gpa = good;
        gpa[8] = 0x10;
        assert_eq!(
            ServicesDescriptor::decode(&gpa),
            Err(TableError::Misaligned { item, addr: 0x1010 })
        );
    }

    #[test]
    fn mirror_helper_raw() {
        let data = [3u8, 0, 9, 9];
        assert_eq!(
            MirrorHelperRaw::decode(&data),
            Ok(MirrorHelperRaw {
                version: 3,
                data: &data
            })
        );
        assert_eq!(
            MirrorHelperRaw::decode(&[1]),
            Err(TableError::DataLength {
                item: Item::MirrorHelper,
                expected: 2,
                found: 1
            })
        );
    }

    #[test]
    fn entry_value_dispatch() {
        let img = image_with_asev(0x1000, 0x52c, &OVMF_SECTIONS);
        let off = MetadataOffset(0x52c).encode();
        match EntryValue::decode_data(&img, guid::SEV_METADATA, &off) {
            Ok(EntryValue::SevMetadata(o, m)) => {
                assert_eq!(o, MetadataOffset(0x52c));
                assert_eq!(m.section_count(), 5);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            EntryValue::decode_data(&img, guid::TDX_METADATA, &off),
            Err(TableError::BadSignature { .. })
        ));
        assert_eq!(
            EntryValue::decode_data(&img, guid::IGVM_METADATA, &off),
            Ok(EntryValue::IgvmMetadata(MetadataOffset(0x52c)))
        );
        assert_eq!(
            EntryValue::decode_data(&img, guid::SEV_SNP_BOOT_BLOCK, &[1, 2]),
            Ok(EntryValue::Raw(&[1, 2]))
        );
        assert!(EntryValue::decode_data(&img, guid::SEV_SECRET_BLOCK, &[1, 2]).is_err());
    }
}
