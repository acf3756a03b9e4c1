//! A serialisable description of an image's table, for `sevmirror inspect`.
//!
//! JSON shape (`serde_json`): numbers are plain JSON numbers (offsets,
//! addresses, sizes), GUIDs canonical lower-case text, field names snake_case.
//! `decoded` is tagged by `kind`:
//!
//! ```json
//! { "image_size": 2097152, "table_offset": 2097016, "table_size": 136,
//!   "entries": [
//!     { "guid": "00f771de-1a7e-4fcb-890e-68c77e2fb44e", "name": "SEV-ES reset block",
//!       "offset": 2097080, "size": 4,
//!       "decoded": { "kind": "sev_es_reset_block", "ip": 45060, "cs_base": 8388608 } } ] }
//! ```
//!
//! Entries are listed in walk order (nearest the footer first). A broken
//! table is an error; a single entry whose data does not decode is listed
//! with `kind: "invalid"`, the error text and its raw bytes.

use core::fmt;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::Serialize;

use crate::decode::{EntryValue, SevSection, TdxSection};
use crate::error::Item;
use crate::table::{Entry, Table};
use crate::TableError;

/// What `sevmirror inspect` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Length of the image in bytes.
    pub image_size: usize,
    /// Offset of the first byte of the table.
    pub table_offset: usize,
    /// Total table length (entries + 18-byte footer), as in the footer.
    pub table_size: usize,
    /// The entries in walk order.
    pub entries: Vec<ReportEntry>,
}

/// One entry of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportEntry {
    /// GUID, canonical lower-case text.
    pub guid: String,
    /// Name of a known GUID.
    pub name: Option<&'static str>,
    /// Offset of the entry's data in the image.
    pub offset: usize,
    /// Length of the entry's data (without length field and GUID).
    pub size: usize,
    /// Decoded value.
    pub decoded: Decoded,
}

/// A section of the SEV metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SevSectionReport {
    /// Section type number.
    #[serde(rename = "type")]
    pub section_type: u32,
    /// Name of the section type, if known.
    pub type_name: Option<&'static str>,
    /// Guest-physical base.
    pub base: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A section of the TDX metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdxSectionReport {
    /// Section type number.
    #[serde(rename = "type")]
    pub section_type: u32,
    /// Name of the section type, if known.
    pub type_name: Option<&'static str>,
    /// Guest-physical base.
    pub base: u64,
    /// Size in guest memory.
    pub size: u64,
    /// Offset of the section's bytes in the image.
    pub data_offset: u32,
    /// Number of bytes taken from the image.
    pub data_size: u32,
    /// Attribute bits.
    pub attributes: u32,
}

/// Decoded value of an entry, tagged by `kind` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decoded {
    /// SEV-ES AP reset block.
    SevEsResetBlock {
        /// AP initial IP.
        ip: u16,
        /// AP CS segment base.
        cs_base: u32,
    },
    /// SEV LAUNCH_SECRET area.
    SevSecretBlock {
        /// Guest-physical base.
        base: u32,
        /// Size in bytes.
        size: u32,
    },
    /// SEV kernel/initrd/cmdline hash table area.
    SevHashTable {
        /// Guest-physical base.
        base: u32,
        /// Size in bytes.
        size: u32,
    },
    /// SEV metadata ("ASEV").
    SevMetadata {
        /// Distance of the header from the end of the image.
        offset_from_end: u32,
        /// Offset of the header in the image.
        offset: usize,
        /// Format version.
        version: u32,
        /// Sections in file order.
        sections: Vec<SevSectionReport>,
    },
    /// TDX metadata ("TDVF").
    TdxMetadata {
        /// Distance of the descriptor from the end of the image.
        offset_from_end: u32,
        /// Offset of the descriptor in the image.
        offset: usize,
        /// Format version.
        version: u32,
        /// Sections in file order.
        sections: Vec<TdxSectionReport>,
    },
    /// IGVM parameter metadata (offset only).
    IgvmMetadata {
        /// Distance of the block from the end of the image.
        offset_from_end: u32,
        /// Offset of the block in the image.
        offset: usize,
    },
    /// This project's guest-services descriptor.
    ServicesDescriptor {
        /// Descriptor version.
        version: u16,
        /// Flags.
        flags: u32,
        /// GPA of the guest-services MMIO page.
        services_gpa: u64,
    },
    /// This project's mirror helper descriptor (layout not fixed yet).
    MirrorHelper {
        /// Layout version (first `u16`).
        version: u16,
        /// All data bytes, lower-case hex.
        data_hex: String,
    },
    /// An entry this crate does not decode.
    Raw {
        /// Data bytes, lower-case hex.
        data_hex: String,
    },
    /// A known entry whose data failed to decode.
    Invalid {
        /// Why it failed.
        error: String,
        /// Data bytes, lower-case hex.
        data_hex: String,
    },
}

fn hex(data: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sev_section(s: SevSection) -> SevSectionReport {
    SevSectionReport {
        section_type: s.kind.0,
        type_name: s.kind.name(),
        base: s.base,
        size: s.size,
    }
}

fn tdx_section(s: TdxSection) -> TdxSectionReport {
    TdxSectionReport {
        section_type: s.kind.0,
        type_name: s.kind.name(),
        base: s.memory_address,
        size: s.memory_size,
        data_offset: s.data_offset,
        data_size: s.raw_data_size,
        attributes: s.attributes,
    }
}

impl Decoded {
    /// Decodes one entry of `image`.
    pub fn of(image: &[u8], entry: &Entry<'_>) -> Decoded {
        let value = match EntryValue::decode(image, entry) {
            Ok(value) => value,
            Err(e) => {
                return Decoded::Invalid {
                    error: e.to_string(),
                    data_hex: hex(entry.data),
                }
            }
        };
        match value {
            EntryValue::SevEsResetBlock(r) => Decoded::SevEsResetBlock {
                ip: r.ip,
                cs_base: r.cs_base,
            },
            EntryValue::SevSecretBlock(a) => Decoded::SevSecretBlock {
                base: a.base,
                size: a.size,
            },
            EntryValue::SevHashTable(a) => Decoded::SevHashTable {
                base: a.base,
                size: a.size,
            },
            EntryValue::SevMetadata(off, m) => Decoded::SevMetadata {
                offset_from_end: off.0,
                offset: m.offset,
                version: m.version,
                sections: m.sections().map(sev_section).collect(),
            },
            EntryValue::TdxMetadata(off, m) => Decoded::TdxMetadata {
                offset_from_end: off.0,
                offset: m.offset,
                version: m.version,
                sections: m.sections().map(tdx_section).collect(),
            },
            EntryValue::IgvmMetadata(off) => match off.resolve(Item::MetadataOffset, image) {
                Ok(offset) => Decoded::IgvmMetadata {
                    offset_from_end: off.0,
                    offset,
                },
                Err(e) => Decoded::Invalid {
                    error: e.to_string(),
                    data_hex: hex(entry.data),
                },
            },
            EntryValue::Services(d) => Decoded::ServicesDescriptor {
                version: crate::ServicesDescriptor::VERSION,
                flags: d.flags,
                services_gpa: d.services_gpa,
            },
            EntryValue::MirrorHelper(m) => Decoded::MirrorHelper {
                version: m.version,
                data_hex: hex(m.data),
            },
            EntryValue::Raw(data) => Decoded::Raw {
                data_hex: hex(data),
            },
        }
    }
}

/// Parses the table of `image` and decodes every entry.
///
/// Fails if the footer or the chain of entries is broken; an entry whose
/// data does not decode becomes [`Decoded::Invalid`].
pub fn report(image: &[u8]) -> Result<Report, TableError> {
    let table = Table::parse(image)?;
    let mut entries = Vec::new();
    for entry in table.entries() {
        let entry = entry?;
        entries.push(ReportEntry {
            guid: entry.guid.to_string(),
            name: entry.name(),
            offset: entry.offset,
            size: entry.data.len(),
            decoded: Decoded::of(image, &entry),
        });
    }
    Ok(Report {
        image_size: image.len(),
        table_offset: table.start(),
        table_size: table.len(),
        entries,
    })
}

/// Width of the field-name column in the text form.
const W: usize = 16;

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decoded::SevEsResetBlock { ip, cs_base } => {
                writeln!(f, "  {:W$}{ip:#x}", "ip")?;
                writeln!(f, "  {:W$}{cs_base:#x}", "cs_base")?;
                writeln!(
                    f,
                    "  {:W$}{:#x}",
                    "reset address",
                    u64::from(*cs_base) + u64::from(*ip)
                )
            }
            Decoded::SevSecretBlock { base, size } | Decoded::SevHashTable { base, size } => {
                writeln!(f, "  {:W$}{base:#x}", "base")?;
                writeln!(f, "  {:W$}{size:#x}", "size")
            }
            Decoded::SevMetadata {
                offset_from_end,
                offset,
                version,
                sections,
            } => {
                writeln!(
                    f,
                    "  {:W$}\"ASEV\" v{version} at {offset:#x} ({offset_from_end:#x} from the end), {} sections",
                    "metadata",
                    sections.len()
                )?;
                for s in sections {
                    let name = s
                        .type_name
                        .map_or_else(|| std::format!("type {:#x}", s.section_type), String::from);
                    writeln!(
                        f,
                        "    {name:<14} base {:#010x}  size {:#x}",
                        s.base, s.size
                    )?;
                }
                Ok(())
            }
            Decoded::TdxMetadata {
                offset_from_end,
                offset,
                version,
                sections,
            } => {
                writeln!(
                    f,
                    "  {:W$}\"TDVF\" v{version} at {offset:#x} ({offset_from_end:#x} from the end), {} sections",
                    "metadata",
                    sections.len()
                )?;
                for s in sections {
                    let name = s
                        .type_name
                        .map_or_else(|| std::format!("type {:#x}", s.section_type), String::from);
                    writeln!(
                        f,
                        "    {name:<14} base {:#010x}  size {:#x}  image data {:#x}+{:#x}  attributes {:#x}",
                        s.base, s.size, s.data_offset, s.data_size, s.attributes
                    )?;
                }
                Ok(())
            }
            Decoded::IgvmMetadata {
                offset_from_end,
                offset,
            } => writeln!(
                f,
                "  {:W$}at {offset:#x} ({offset_from_end:#x} from the end), not decoded",
                "metadata"
            ),
            Decoded::ServicesDescriptor {
                version,
                flags,
                services_gpa,
            } => {
                writeln!(f, "  {:W$}{version}", "version")?;
                writeln!(f, "  {:W$}{flags:#x}", "flags")?;
                writeln!(f, "  {:W$}{services_gpa:#x}", "services_gpa")
            }
            Decoded::MirrorHelper { version, data_hex } => {
                writeln!(f, "  {:W$}{version}", "version")?;
                writeln!(f, "  {:W$}{data_hex}", "raw")
            }
            Decoded::Raw { data_hex } => writeln!(f, "  {:W$}{data_hex}", "raw"),
            Decoded::Invalid { error, data_hex } => {
                writeln!(f, "  {:W$}{error}", "INVALID")?;
                writeln!(f, "  {:W$}{data_hex}", "raw")
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "OVMF footer GUID table: {} entries, {} bytes at {:#x}..{:#x} (image {:#x} bytes)",
            self.entries.len(),
            self.table_size,
            self.table_offset,
            self.table_offset + self.table_size,
            self.image_size
        )?;
        for e in &self.entries {
            writeln!(f)?;
            writeln!(f, "{}  {}", e.guid, e.name.unwrap_or("(unknown GUID)"))?;
            writeln!(f, "  {:W$}{} bytes at {:#x}", "data", e.size, e.offset)?;
            write!(f, "{}", e.decoded)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use super::*;
    use crate::guid;
    use crate::{place_in_image, MetadataOffset, ServicesDescriptor, SevArea, SevEsResetBlock};

    fn sample_image() -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        let reset = SevEsResetBlock {
            ip: 0x1000,
            cs_base: 0xffff_0000,
        }
        .encode()
        .unwrap();
        let secret = SevArea {
            base: 0x80_d000,
            size: 0x1000,
        }
        .encode();
        let services = ServicesDescriptor {
            flags: 0,
            services_gpa: 0xfeff_f000,
        }
        .encode();
        let bad_meta = MetadataOffset(0x900).encode();
        let helper = [1u8, 0, 0xde, 0xad];
        place_in_image(
            &mut image,
            &[
                (guid::SEV_SNP_BOOT_BLOCK, &[7, 7][..]),
                (guid::MIRROR_HELPER_DESCRIPTOR, &helper[..]),
                (guid::SEV_METADATA, &bad_meta[..]),
                (guid::SERVICES_DESCRIPTOR, &services[..]),
                (guid::SEV_SECRET_BLOCK, &secret[..]),
                (guid::SEV_ES_RESET_BLOCK, &reset[..]),
                (
                    guid::Guid::parse("01234567-89ab-cdef-0123-456789abcdef"),
                    &[0xff][..],
                ),
            ],
        )
        .unwrap();
        image
    }

    #[test]
    fn report_lists_every_entry_decoded() {
        let image = sample_image();
        let r = report(&image).unwrap();
        assert_eq!(r.image_size, 0x1000);
        assert_eq!(r.table_offset + r.table_size, 0x1000 - 32);
        let kinds: Vec<_> = r.entries.iter().map(|e| &e.decoded).collect();
        assert_eq!(
            kinds[0],
            &Decoded::Raw {
                data_hex: "ff".into()
            }
        );
        assert_eq!(r.entries[0].name, None);
        assert_eq!(
            kinds[1],
            &Decoded::SevEsResetBlock {
                ip: 0x1000,
                cs_base: 0xffff_0000
            }
        );
        assert_eq!(
            kinds[2],
            &Decoded::SevSecretBlock {
                base: 0x80_d000,
                size: 0x1000
            }
        );
        assert_eq!(
            kinds[3],
            &Decoded::ServicesDescriptor {
                version: 1,
                flags: 0,
                services_gpa: 0xfeff_f000
            }
        );
        assert!(
            matches!(kinds[4], Decoded::Invalid { error, data_hex } if error.contains("signature") && data_hex == "00090000")
        );
        assert_eq!(
            kinds[5],
            &Decoded::MirrorHelper {
                version: 1,
                data_hex: "0100dead".into()
            }
        );
        assert_eq!(r.entries[6].name, Some("SEV-SNP boot block (pre-upstream)"));
        assert_eq!(r.entries[6].size, 2);
    }

    #[test]
    fn json_shape() {
        let r = report(&sample_image()).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let e = &v["entries"][1];
        assert_eq!(e["guid"], "00f771de-1a7e-4fcb-890e-68c77e2fb44e");
        assert_eq!(e["name"], "SEV-ES reset block");
        assert_eq!(e["decoded"]["kind"], "sev_es_reset_block");
        assert_eq!(e["decoded"]["ip"], 0x1000);
        assert_eq!(e["decoded"]["cs_base"], 0xffff_0000u32);
        assert_eq!(v["entries"][0]["name"], serde_json::Value::Null);
        assert_eq!(v["entries"][3]["decoded"]["kind"], "services_descriptor");
        assert_eq!(v["entries"][4]["decoded"]["kind"], "invalid");
        assert_eq!(v["entries"][5]["decoded"]["kind"], "mirror_helper");
    }

    #[test]
    fn text_form() {
        let text = report(&sample_image()).unwrap().to_string();
        assert!(text.starts_with("OVMF footer GUID table: 7 entries, "));
        assert!(text.contains("00f771de-1a7e-4fcb-890e-68c77e2fb44e  SEV-ES reset block\n"));
        assert!(text.contains("  cs_base         0xffff0000\n"));
        assert!(text.contains("  services_gpa    0xfefff000\n"));
        assert!(text.contains("(unknown GUID)"));
        assert!(
            text.contains("  INVALID         SEV metadata (ASEV) at offset 0x700 has signature")
        );
    }

    #[test]
    fn broken_table_is_an_error() {
        let mut image = sample_image();
        let len_field = 0x1000 - 50 - 18;
        image[len_field] = 3;
        assert!(matches!(
            report(&image),
            Err(TableError::EntryTooShort { len: 3, .. })
        ));
        assert_eq!(report(&[]), Err(TableError::ImageEmpty));
    }
}
