//! The Hello: the source's description of the guest it is about to send.

use std::io::Write;

use crate::cpu::GuestCpu;

use super::{
    check_version, invalid, page_aligned, write_frame, FrameError, MessageType, Parser,
    MAX_HELLO_LEN, MAX_LANES, MAX_RAM_RANGES, MAX_VCPUS, PAGE_SIZE,
};

const KIND: MessageType = MessageType::Hello;

/// Tag bit of a Hello field that receivers may skip when they do not know it.
pub const HELLO_FIELD_OPTIONAL: u16 = 0x8000;

/// Tag of the optional guest CPU field: the CPU model and feature words the source's VMM
/// gave the guest ([`GuestCpu`], [`GuestCpu::WIRE_LEN`] bytes). Optional, so adding it
/// kept protocol version 2 (a receiver that does not know it skips it).
pub const HELLO_GUEST_CPU: u16 = HELLO_FIELD_OPTIONAL | 0x0001;

/// What kind of guest travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GuestMode {
    /// A plain guest: the VMM copies every page itself.
    Plain = 0,
    /// An SEV guest: private pages travel as sealed records from the migration helper.
    Sev = 1,
    /// An SEV-ES guest: as SEV, and its vCPUs' registers travel in guest memory (each
    /// vCPU saved them there itself); the Hello names the helper vCPUs its launch
    /// measured ([`HelloField::EsHelpers`]), which the target must have too.
    SevEs = 2,
}

impl GuestMode {
    /// Whether the guest migrates through its helper (SEV and SEV-ES).
    pub fn has_helper(self) -> bool {
        matches!(self, GuestMode::Sev | GuestMode::SevEs)
    }

    /// The mode's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            GuestMode::Plain => "a plain guest",
            GuestMode::Sev => "an SEV guest",
            GuestMode::SevEs => "an SEV-ES guest",
        }
    }
}

impl TryFrom<u8> for GuestMode {
    type Error = FrameError;

    fn try_from(v: u8) -> Result<Self, FrameError> {
        match v {
            0 => Ok(GuestMode::Plain),
            1 => Ok(GuestMode::Sev),
            2 => Ok(GuestMode::SevEs),
            other => Err(invalid(
                KIND,
                "guest mode",
                format!("unknown mode {other} (0 plain, 1 SEV, 2 SEV-ES)"),
            )),
        }
    }
}

/// A range of guest-physical addresses, in bytes (a wire struct: bare `u64`s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpaRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GpaRange {
    /// One past the last byte, or None if that overflows.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }
}

/// The mandatory Hello fields, by tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HelloField {
    /// `u8`: [`GuestMode`].
    GuestMode = 1,
    /// `u64`: bytes of guest RAM.
    MemSize = 2,
    /// `(base u64, size u64)*`.
    RamRanges = 3,
    /// `[u8; 32]`: SHA-256 of the firmware image.
    FirmwareDigest = 4,
    /// `base u64, size u64`.
    HelperRegion = 5,
    /// `u16`: source helper vCPUs.
    Lanes = 6,
    /// `[u8; 16]`.
    SessionId = 7,
    /// `[u8; 16]`; version 1 only (version 2's helpers exchange nonces in the key
    /// agreement).
    HelperNonce = 8,
    /// `u32`: 4096.
    PageSize = 9,
    /// `u32`: guest vCPUs.
    Vcpus = 10,
    /// `u16`: SEV-ES only: the helper vCPUs whose VMSAs the guest's launch measured.
    EsHelpers = 0x40,
}

impl HelloField {
    /// Every field, in tag order.
    pub const ALL: [HelloField; 11] = [
        HelloField::GuestMode,
        HelloField::MemSize,
        HelloField::RamRanges,
        HelloField::FirmwareDigest,
        HelloField::HelperRegion,
        HelloField::Lanes,
        HelloField::SessionId,
        HelloField::HelperNonce,
        HelloField::PageSize,
        HelloField::Vcpus,
        HelloField::EsHelpers,
    ];

    /// The field's tag.
    pub const fn tag(self) -> u16 {
        self as u16
    }

    /// The field's name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            HelloField::GuestMode => "guest mode",
            HelloField::MemSize => "mem size",
            HelloField::RamRanges => "RAM ranges",
            HelloField::FirmwareDigest => "firmware digest",
            HelloField::HelperRegion => "helper region",
            HelloField::Lanes => "lanes",
            HelloField::SessionId => "session id",
            HelloField::HelperNonce => "helper nonce",
            HelloField::PageSize => "page size",
            HelloField::Vcpus => "vcpus",
            HelloField::EsHelpers => "es helpers",
        }
    }

    /// The value's exact length, or None for the RAM ranges (a multiple of 16).
    const fn value_len(self) -> Option<usize> {
        match self {
            HelloField::GuestMode => Some(1),
            HelloField::MemSize => Some(8),
            HelloField::RamRanges => None,
            HelloField::FirmwareDigest => Some(32),
            HelloField::HelperRegion => Some(16),
            HelloField::Lanes | HelloField::EsHelpers => Some(2),
            HelloField::SessionId | HelloField::HelperNonce => Some(16),
            HelloField::PageSize | HelloField::Vcpus => Some(4),
        }
    }

    fn index(self) -> usize {
        HelloField::ALL
            .iter()
            .position(|&f| f == self)
            .expect("every field is in HelloField::ALL")
    }

    fn from_tag(tag: u16) -> Option<HelloField> {
        HelloField::ALL.into_iter().find(|f| f.tag() == tag)
    }
}

impl std::fmt::Display for HelloField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (tag {:#06x})", self.name(), self.tag())
    }
}

/// Source → target, first frame: what the source is about to send. The target compares
/// it with its own configuration and answers [`super::HelloAck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The session's protocol version: the version in this frame's header.
    pub version: u16,
    /// Plain or SEV.
    pub mode: GuestMode,
    /// Bytes of guest RAM: the sum of `ram`.
    pub mem_size: u64,
    /// Guest RAM, ascending, page aligned, not overlapping.
    pub ram: Vec<GpaRange>,
    /// SHA-256 of the firmware image both sides boot.
    pub firmware_digest: [u8; 32],
    /// The helper region, never migrated (zero for plain guests).
    pub helper_region: GpaRange,
    /// Source helper vCPUs, each a lane of sealed records (0 for plain guests).
    pub lanes: u16,
    /// Fresh per migration; bound into the helpers' transcript.
    pub session_id: [u8; 16],
    /// Version 1 only: the source helper's nonce (zero for plain guests). Always zero in
    /// version 2, whose Hello has no such field.
    pub helper_nonce: [u8; 16],
    /// Must be [`PAGE_SIZE`].
    pub page_size: u32,
    /// Guest vCPUs: the VcpuState frames to expect.
    pub vcpus: u32,
    /// SEV-ES: the helper vCPUs whose VMSAs the guest's launch measured (the target must
    /// have been launched with as many); 0 for other guests.
    pub es_helpers: u16,
    /// The CPU the source's VMM gave the guest (optional field [`HELLO_GUEST_CPU`]; None
    /// from a source that does not send it, whose guest the target then cannot check).
    pub cpu: Option<GuestCpu>,
}

impl Hello {
    /// Checks every rule of the spec that concerns this frame alone.
    pub fn validate(&self) -> Result<(), FrameError> {
        check_version(self.version)?;
        if self.page_size as usize != PAGE_SIZE {
            return Err(invalid(
                KIND,
                "page size",
                format!("{} bytes; only {PAGE_SIZE} is supported", self.page_size),
            ));
        }
        if self.ram.is_empty() || self.ram.len() > MAX_RAM_RANGES {
            return Err(invalid(
                KIND,
                "RAM ranges",
                format!("{} ranges; 1 to {MAX_RAM_RANGES} allowed", self.ram.len()),
            ));
        }
        let mut total: u64 = 0;
        let mut prev_end: Option<u64> = None;
        for (i, r) in self.ram.iter().enumerate() {
            let end = check_range(r, "RAM ranges", i)?;
            if let Some(prev) = prev_end {
                if r.base < prev {
                    return Err(invalid(
                        KIND,
                        "RAM ranges",
                        format!(
                            "range {i} starts at {:#x}, before range {} ends at {prev:#x}: ranges must ascend without overlap",
                            r.base,
                            i - 1
                        ),
                    ));
                }
            }
            prev_end = Some(end);
            // Cannot overflow: the ranges are disjoint within the 64-bit address space.
            total = total
                .checked_add(r.size)
                .ok_or_else(|| invalid(KIND, "RAM ranges", "total size overflows".to_string()))?;
        }
        if total != self.mem_size {
            return Err(invalid(
                KIND,
                "mem size",
                format!(
                    "{:#x} bytes, but the RAM ranges add up to {total:#x}",
                    self.mem_size
                ),
            ));
        }
        match self.mode {
            GuestMode::Plain => {
                if self.helper_region != GpaRange::default() {
                    return Err(invalid(
                        KIND,
                        "helper region",
                        format!(
                            "{:#x}+{:#x} for a plain guest, which has none (must be zero)",
                            self.helper_region.base, self.helper_region.size
                        ),
                    ));
                }
                if self.lanes != 0 {
                    return Err(invalid(
                        KIND,
                        "lanes",
                        format!(
                            "{} for a plain guest, which has no helper (must be 0)",
                            self.lanes
                        ),
                    ));
                }
                if self.helper_nonce != [0; 16] {
                    return Err(invalid(
                        KIND,
                        "helper nonce",
                        "set for a plain guest, which has no helper (must be zero)".to_string(),
                    ));
                }
            }
            GuestMode::Sev | GuestMode::SevEs => {
                let h = &self.helper_region;
                let end = check_range(h, "helper region", 0)?;
                if !covered(&self.ram, h.base, end) {
                    return Err(invalid(
                        KIND,
                        "helper region",
                        format!("{:#x}..{end:#x} is not inside guest RAM", h.base),
                    ));
                }
                if self.lanes == 0 || self.lanes > MAX_LANES {
                    return Err(invalid(
                        KIND,
                        "lanes",
                        format!("{}; an SEV guest needs 1 to {MAX_LANES}", self.lanes),
                    ));
                }
                if self.version < 2 && self.helper_nonce == [0; 16] {
                    return Err(invalid(
                        KIND,
                        "helper nonce",
                        "all zero for an SEV guest".to_string(),
                    ));
                }
            }
        }
        match (self.mode, self.es_helpers) {
            (GuestMode::SevEs, 0) => {
                return Err(invalid(
                    KIND,
                    "es helpers",
                    "0 for an SEV-ES guest, whose launch measures its helper vCPUs".to_string(),
                ))
            }
            (GuestMode::SevEs, n) if n > MAX_LANES => {
                return Err(invalid(
                    KIND,
                    "es helpers",
                    format!("{n}; 1 to {MAX_LANES} allowed"),
                ))
            }
            (GuestMode::SevEs, _) if self.version < 2 => {
                return Err(invalid(
                    KIND,
                    "guest mode",
                    "SEV-ES in a version-1 Hello".to_string(),
                ))
            }
            (GuestMode::Plain | GuestMode::Sev, n) if n != 0 => {
                return Err(invalid(
                    KIND,
                    "es helpers",
                    format!("{n} for a guest that is not SEV-ES (must be absent)"),
                ))
            }
            _ => {}
        }
        if self.version >= 2 && self.helper_nonce != [0; 16] {
            return Err(invalid(
                KIND,
                "helper nonce",
                format!(
                    "set in a version {} Hello, which has no such field (the helpers exchange nonces in the key agreement)",
                    self.version
                ),
            ));
        }
        if self.session_id == [0; 16] {
            return Err(invalid(KIND, "session id", "all zero".to_string()));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid(
                KIND,
                "vcpus",
                format!("{}; 1 to {MAX_VCPUS} allowed", self.vcpus),
            ));
        }
        Ok(())
    }

    /// The payload bytes (fields in tag order).
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(128 + 16 * self.ram.len());
        let mut field = |f: HelloField, value: &[u8]| {
            p.extend_from_slice(&f.tag().to_le_bytes());
            // Lengths are bounded by validate(): at most 16 * MAX_RAM_RANGES.
            p.extend_from_slice(&(value.len() as u16).to_le_bytes());
            p.extend_from_slice(value);
        };
        field(HelloField::GuestMode, &[self.mode as u8]);
        field(HelloField::MemSize, &self.mem_size.to_le_bytes());
        let ram: Vec<u8> = self
            .ram
            .iter()
            .flat_map(|r| r.base.to_le_bytes().into_iter().chain(r.size.to_le_bytes()))
            .collect();
        field(HelloField::RamRanges, &ram);
        field(HelloField::FirmwareDigest, &self.firmware_digest);
        let mut region = [0u8; 16];
        region[..8].copy_from_slice(&self.helper_region.base.to_le_bytes());
        region[8..].copy_from_slice(&self.helper_region.size.to_le_bytes());
        field(HelloField::HelperRegion, &region);
        field(HelloField::Lanes, &self.lanes.to_le_bytes());
        field(HelloField::SessionId, &self.session_id);
        if self.version < 2 {
            field(HelloField::HelperNonce, &self.helper_nonce);
        }
        field(HelloField::PageSize, &self.page_size.to_le_bytes());
        field(HelloField::Vcpus, &self.vcpus.to_le_bytes());
        if self.mode == GuestMode::SevEs {
            field(HelloField::EsHelpers, &self.es_helpers.to_le_bytes());
        }
        if let Some(cpu) = &self.cpu {
            p.extend_from_slice(&HELLO_GUEST_CPU.to_le_bytes());
            p.extend_from_slice(&(GuestCpu::WIRE_LEN as u16).to_le_bytes());
            p.extend_from_slice(&cpu.encode());
        }
        p
    }

    /// Whether `base..end` lies in guest RAM, outside the helper region (the pages a
    /// migration may carry).
    pub fn migratable(&self, base: u64, end: u64) -> bool {
        let h = &self.helper_region;
        let in_helper = h.size != 0 && h.end().is_some_and(|h_end| base < h_end && h.base < end);
        base < end && covered(&self.ram, base, end) && !in_helper
    }

    /// Writes the frame, with `self.version` in its header.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        let payload = self.payload();
        debug_assert!(payload.len() <= MAX_HELLO_LEN);
        write_frame(w, self.version, KIND, &payload, &[])
    }

    /// Decodes and validates a Hello payload of a frame of version `version`.
    pub fn decode(version: u16, payload: &[u8]) -> Result<Hello, FrameError> {
        check_version(version)?;
        KIND.check_len(payload.len())?;
        let mut values: [Option<&[u8]>; HelloField::ALL.len()] = [None; HelloField::ALL.len()];
        let mut optional_tags: Vec<(u16, usize)> = Vec::new();
        let mut cpu = None;
        let mut p = Parser::new(KIND, payload);
        while p.remaining() > 0 {
            let offset = p.offset();
            let tag = p.u16("a field tag")?;
            let len = p.u16("a field length")?;
            let value = p.take(len as usize, "a field value")?;
            match HelloField::from_tag(tag) {
                Some(f) => {
                    let slot = values
                        .get_mut(f.index())
                        .expect("HelloField::index is below HelloField::ALL.len()");
                    if slot.is_some() {
                        return Err(FrameError::DuplicateField {
                            name: f.name(),
                            tag,
                            offset,
                        });
                    }
                    if let Some(expected) = f.value_len() {
                        if value.len() != expected {
                            return Err(invalid(
                                KIND,
                                f.name(),
                                format!(
                                    "value of {} bytes at offset {offset}, expected {expected}",
                                    value.len()
                                ),
                            ));
                        }
                    }
                    *slot = Some(value);
                }
                None if tag == HELLO_GUEST_CPU => {
                    optional_tags.push((tag, offset));
                    let value: &[u8; GuestCpu::WIRE_LEN] = value.try_into().map_err(|_| {
                        invalid(
                            KIND,
                            "guest CPU",
                            format!(
                                "value of {} bytes at offset {offset}, expected {}",
                                value.len(),
                                GuestCpu::WIRE_LEN
                            ),
                        )
                    })?;
                    cpu = Some(GuestCpu::decode(value));
                }
                None if tag & HELLO_FIELD_OPTIONAL != 0 => optional_tags.push((tag, offset)),
                None => return Err(FrameError::UnknownField { tag, offset }),
            }
        }
        optional_tags.sort_unstable();
        if let Some(pair) = optional_tags.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(FrameError::DuplicateField {
                name: "optional field",
                tag: pair[1].0,
                offset: pair[1].1,
            });
        }
        let present = |f: HelloField| values.get(f.index()).copied().flatten();
        let get = |f: HelloField| -> Result<&[u8], FrameError> {
            values
                .get(f.index())
                .copied()
                .flatten()
                .ok_or(FrameError::MissingField(f))
        };
        // Values of fixed-size fields were length-checked above.
        let mode =
            GuestMode::try_from(Parser::new(KIND, get(HelloField::GuestMode)?).u8("guest mode")?)?;
        let mem_size = Parser::new(KIND, get(HelloField::MemSize)?).u64("mem size")?;
        let raw_ram = get(HelloField::RamRanges)?;
        if raw_ram.len() % 16 != 0 || raw_ram.is_empty() || raw_ram.len() > 16 * MAX_RAM_RANGES {
            return Err(invalid(
                KIND,
                "RAM ranges",
                format!(
                    "value of {} bytes; expected 16 bytes per range, 1 to {MAX_RAM_RANGES} ranges",
                    raw_ram.len()
                ),
            ));
        }
        let mut ram = Vec::with_capacity(raw_ram.len() / 16);
        let mut rp = Parser::new(KIND, raw_ram);
        while rp.remaining() > 0 {
            ram.push(GpaRange {
                base: rp.u64("a RAM range base")?,
                size: rp.u64("a RAM range size")?,
            });
        }
        let firmware_digest =
            Parser::new(KIND, get(HelloField::FirmwareDigest)?).array("firmware digest")?;
        let mut hp = Parser::new(KIND, get(HelloField::HelperRegion)?);
        let helper_region = GpaRange {
            base: hp.u64("helper region base")?,
            size: hp.u64("helper region size")?,
        };
        let lanes = Parser::new(KIND, get(HelloField::Lanes)?).u16("lanes")?;
        let session_id = Parser::new(KIND, get(HelloField::SessionId)?).array("session id")?;
        let helper_nonce = if version < 2 {
            Parser::new(KIND, get(HelloField::HelperNonce)?).array("helper nonce")?
        } else {
            if values[HelloField::HelperNonce.index()].is_some() {
                return Err(invalid(
                    KIND,
                    "helper nonce",
                    format!("a version-1 field in a version {version} Hello"),
                ));
            }
            [0; 16]
        };
        let page_size = Parser::new(KIND, get(HelloField::PageSize)?).u32("page size")?;
        let vcpus = Parser::new(KIND, get(HelloField::Vcpus)?).u32("vcpus")?;
        // Mandatory for SEV-ES, absent otherwise (validate() says so if present).
        let es_helpers = match (mode, present(HelloField::EsHelpers)) {
            (GuestMode::SevEs, _) => {
                Parser::new(KIND, get(HelloField::EsHelpers)?).u16("es helpers")?
            }
            (_, Some(v)) => Parser::new(KIND, v).u16("es helpers")?.max(1),
            (_, None) => 0,
        };
        let hello = Hello {
            version,
            mode,
            mem_size,
            ram,
            firmware_digest,
            helper_region,
            lanes,
            session_id,
            helper_nonce,
            page_size,
            vcpus,
            es_helpers,
            cpu,
        };
        hello.validate()?;
        Ok(hello)
    }
}

/// Checks one range: non-empty, page aligned, not wrapping. Returns its end.
fn check_range(r: &GpaRange, field: &'static str, index: usize) -> Result<u64, FrameError> {
    let end = r.end().ok_or_else(|| {
        invalid(
            KIND,
            field,
            format!(
                "range {index} at {:#x} of {:#x} bytes wraps past 2^64",
                r.base, r.size
            ),
        )
    })?;
    if r.size == 0 {
        return Err(invalid(
            KIND,
            field,
            format!("range {index} at {:#x} is empty", r.base),
        ));
    }
    if !page_aligned(r.base) || !page_aligned(r.size) {
        return Err(invalid(
            KIND,
            field,
            format!(
                "range {index} at {:#x} of {:#x} bytes is not {PAGE_SIZE}-byte aligned",
                r.base, r.size
            ),
        ));
    }
    Ok(end)
}

/// Is `[base, end)` covered by the (ascending, disjoint) `ram` ranges?
fn covered(ram: &[GpaRange], base: u64, end: u64) -> bool {
    let mut at = base;
    for r in ram {
        let Some(r_end) = r.end() else { return false };
        if r.base <= at && at < r_end {
            at = r_end;
        }
        if at >= end {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(ranges: &[(u64, u64)]) -> Vec<GpaRange> {
        ranges
            .iter()
            .map(|&(base, size)| GpaRange { base, size })
            .collect()
    }

    #[test]
    fn coverage_spans_adjacent_ranges_but_not_holes() {
        let r = ram(&[(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)]);
        assert!(covered(&r, 0, 0x2000));
        assert!(covered(&r, 0x1000, 0x2000));
        assert!(covered(&r, 0x4000, 0x5000));
        assert!(!covered(&r, 0x1000, 0x3000));
        assert!(!covered(&r, 0x3000, 0x4000));
        assert!(!covered(&r, 0x4000, 0x6000));
    }
}
