//! The footer GUID table of OVMF-style firmware images: parser, typed
//! decoders, builder and (with `std`) a report for `sevmirror inspect`.
//!
//! OVMF ends its flash image with a table of GUID-tagged entries that tell the
//! hypervisor where the firmware wants things: the SEV-ES AP reset vector, the
//! LAUNCH_SECRET area, the kernel-hash table, the SEV and TDX metadata blocks.
//! QEMU reads it (`hw/i386/pc_sysfw_ovmf.c`); our VMM reads it to find those
//! and this project's own entries (the guest-services page, the mirror helper
//! descriptor); our firmware build writes it. The layout is described in
//! [`table`]; the GUIDs in [`guid`].
//!
//! # Trust
//! A firmware file is untrusted input. Every parser and decoder here checks
//! lengths, offsets, signatures and versions, reads with `get()`, and returns a
//! [`TableError`] instead of panicking; walking the table always terminates
//! (each entry is at least 18 bytes). The fuzz target `fuzz/fuzz_targets/fwtable.rs`
//! and the seed replay test hold it to that.
//!
//! # Dependencies and features
//! The core is `#![no_std]` and does not allocate: the firmware uses the
//! builder at build time and the VMM uses the parser. It depends on nothing of
//! this workspace. The default feature `std` adds [`report()`] (a serde
//! `Serialize` report with a text form) and the [`fuzzing`] helper; build with
//! `default-features = false` for the core only.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod builder;
pub mod decode;
pub mod error;
pub mod guid;
pub mod table;

#[cfg(feature = "std")]
pub mod fuzzing;
#[cfg(feature = "std")]
pub mod report;

pub use builder::{place_in_image, TableBuilder};
pub use decode::{
    encode_sev_metadata, EntryValue, MetadataOffset, MirrorHelperRaw, SectionType,
    ServicesDescriptor, SevArea, SevEsResetBlock, SevMetadata, SevSection, TdxMetadata, TdxSection,
    TdxSectionType,
};
pub use error::{Item, Signature, TableError};
pub use guid::{known_name, Guid};
#[cfg(feature = "std")]
pub use report::{report, Decoded, Report, ReportEntry};
pub use table::{Entries, Entry, Table};
