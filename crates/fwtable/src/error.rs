//! The one error type of this crate.

use core::fmt;

/// What a decoder was reading when it failed; names the entry or structure in
/// error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// SEV-ES reset block entry.
    SevEsResetBlock,
    /// SEV secret block or SEV hash table entry (base + size).
    SevArea,
    /// An entry holding a `u32` offset from the end of the image.
    MetadataOffset,
    /// SEV metadata ("ASEV") header and sections.
    SevMetadata,
    /// TDX metadata ("TDVF") descriptor and sections.
    TdxMetadata,
    /// This project's guest-services descriptor.
    ServicesDescriptor,
    /// This project's mirror helper descriptor.
    MirrorHelper,
}

impl Item {
    /// Short lower-case name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Item::SevEsResetBlock => "SEV-ES reset block",
            Item::SevArea => "SEV area block",
            Item::MetadataOffset => "metadata offset entry",
            Item::SevMetadata => "SEV metadata (ASEV)",
            Item::TdxMetadata => "TDX metadata (TDVF)",
            Item::ServicesDescriptor => "guest-services descriptor",
            Item::MirrorHelper => "mirror helper descriptor",
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Four signature bytes, shown as text where printable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// Everything that can be wrong with a footer table, an entry, a metadata
/// block or a table being built. Offsets are byte offsets into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The image has no bytes at all.
    #[error("firmware image is empty")]
    ImageEmpty,
    /// The image is too short to hold the footer (length + GUID + 32 bytes).
    #[error(
        "firmware image is {len} bytes: too small for an OVMF footer table (needs at least {min})"
    )]
    ImageTooSmall {
        /// Image length.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The footer GUID is not 48 bytes before the end of the image.
    #[error("no OVMF footer GUID table: not an OVMF-style image (footer GUID expected at offset {offset:#x})")]
    NoFooter {
        /// Where the footer GUID was expected.
        offset: usize,
    },
    /// The footer's total length is smaller than the footer itself.
    #[error("footer table length {len} at offset {offset:#x} is smaller than the 18-byte footer")]
    TableLengthTooSmall {
        /// Offset of the length field.
        offset: usize,
        /// The length read.
        len: u16,
    },
    /// The footer's total length reaches before the start of the image.
    #[error(
        "footer table length {len} at offset {offset:#x} reaches before the start of the image"
    )]
    TableOutsideImage {
        /// Offset of the length field.
        offset: usize,
        /// The length read.
        len: u16,
    },
    /// An entry's length is smaller than its own length field and GUID.
    #[error("table entry at offset {offset:#x} has length {len}, less than the 18-byte minimum")]
    EntryTooShort {
        /// Offset of the entry's length field.
        offset: usize,
        /// The length read.
        len: u16,
    },
    /// An entry's length reaches before the start of the table.
    #[error("table entry at offset {offset:#x} has length {len}, reaching past the table start at {table_start:#x}")]
    EntryOverlapsTableStart {
        /// Offset of the entry's length field.
        offset: usize,
        /// The length read.
        len: u16,
        /// Start of the table.
        table_start: usize,
    },
    /// Bytes are left at the start of the table that cannot hold an entry.
    #[error("{len} stray bytes at the table start {offset:#x}: too short for an entry")]
    TableLeftover {
        /// Start of the table.
        offset: usize,
        /// Number of bytes left over.
        len: usize,
    },
    /// A read ran past the end of the image (internal consistency guard).
    #[error("{len} bytes at offset {offset:#x} run past the end of the image")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// How many bytes were wanted.
        len: usize,
    },
    /// An entry's data has the wrong length for its type.
    #[error("{item} has {found} data bytes, expected {expected}")]
    DataLength {
        /// What was being decoded.
        item: Item,
        /// Length required.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A structure carries a version this crate does not know.
    #[error("{item} has unsupported version {version}")]
    UnsupportedVersion {
        /// What was being decoded.
        item: Item,
        /// Version found.
        version: u32,
    },
    /// A structure's own size field disagrees with what its version defines.
    #[error("{item} declares size {declared}, expected {expected}")]
    SizeMismatch {
        /// What was being decoded.
        item: Item,
        /// Size declared in the structure.
        declared: u64,
        /// Size its version defines.
        expected: u64,
    },
    /// Flags this crate does not know are set.
    #[error("{item} has unknown flags {flags:#x}")]
    UnknownFlags {
        /// What was being decoded.
        item: Item,
        /// The flags.
        flags: u32,
    },
    /// An address that must be page aligned is not.
    #[error("{item} address {addr:#x} is not 4 KiB aligned")]
    Misaligned {
        /// What was being decoded.
        item: Item,
        /// The address.
        addr: u64,
    },
    /// A metadata offset (counted from the end of the image) points outside it.
    #[error("{item} offset {offset_from_end:#x} from the end lies outside the {image_len:#x}-byte image")]
    MetadataOffsetOutside {
        /// What was being decoded.
        item: Item,
        /// The offset from the end of the image.
        offset_from_end: u32,
        /// Image length.
        image_len: usize,
    },
    /// A metadata block has the wrong signature.
    #[error("{item} at offset {offset:#x} has signature {found}")]
    BadSignature {
        /// What was being decoded.
        item: Item,
        /// Offset of the signature.
        offset: usize,
        /// Signature found.
        found: Signature,
    },
    /// A metadata block's sections run past the end of the image.
    #[error("{item} at offset {offset:#x} declares {count} sections, which run past the end of the image")]
    SectionsPastEnd {
        /// What was being decoded.
        item: Item,
        /// Offset of the header.
        offset: usize,
        /// Number of sections declared.
        count: u32,
    },
    /// Text is not a canonical GUID.
    #[error("malformed GUID text: expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
    GuidText,
    /// An entry's data is too long for the `u16` length field.
    #[error("table entry data of {len} bytes is too long for a u16 entry length")]
    EntryTooLong {
        /// Data length.
        len: usize,
    },
    /// The whole table is too long for the footer's `u16` length field.
    #[error("table of {len} bytes is too long for the u16 footer length")]
    TableTooLong {
        /// Table length.
        len: usize,
    },
    /// The output buffer or image is too small for what is being written.
    #[error("output needs {needed} bytes but only {available} are available")]
    NoRoom {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn messages_name_offsets_in_hex() {
        let e = TableError::EntryOverlapsTableStart {
            offset: 0x1fffb8,
            len: 300,
            table_start: 0x1fff58,
        };
        assert_eq!(
            e.to_string(),
            "table entry at offset 0x1fffb8 has length 300, reaching past the table start at 0x1fff58"
        );
        assert_eq!(
            TableError::NoFooter { offset: 0x1fffd0 }.to_string(),
            "no OVMF footer GUID table: not an OVMF-style image (footer GUID expected at offset 0x1fffd0)"
        );
    }

    #[test]
    fn signature_display_escapes_binary() {
        assert_eq!(Signature(*b"ASEV").to_string(), "\"ASEV\"");
        assert_eq!(
            Signature([b'A', 0, 0xff, b' ']).to_string(),
            "\"A\\x00\\xff \""
        );
    }

    #[test]
    fn error_is_core_error() {
        fn takes(_: &dyn core::error::Error) {}
        takes(&TableError::ImageEmpty);
    }
}
