//! The frames that carry the machine besides its memory: DeviceState, VcpuState and the
//! helper's Manifest.

use std::io::Write;

use helper_abi::record::{self, Kind, RecordHeader};

use super::{
    check_version, invalid, write_frame, FrameError, MessageType, Parser, MANIFEST_LEN,
    MAX_DEVICE_STATE_LEN, MAX_VCPUS, MAX_VCPU_STATE_LEN, PROTOCOL_VERSION,
};

/// Source → target, once, after the last round: the VMM's device state, opaque here.
/// For an SEV guest (version 2) the blob is the source helper's record of it (kind
/// DEVICE_STATE), which the target's helper verifies before the VMM uses the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceState<'a> {
    /// The VMM's blob (0..=1 MiB), or the record around it.
    pub blob: &'a [u8],
}

impl<'a> DeviceState<'a> {
    /// Writes the frame, the blob straight from the caller's buffer.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        if self.blob.len() > MAX_DEVICE_STATE_LEN {
            return Err(FrameError::TooLong {
                kind: MessageType::DeviceState,
                len: self.blob.len(),
                max: MAX_DEVICE_STATE_LEN,
            });
        }
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::DeviceState,
            &[],
            self.blob,
        )
    }

    /// Decodes a payload, borrowing the blob from it.
    pub fn decode(version: u16, payload: &'a [u8]) -> Result<DeviceState<'a>, FrameError> {
        check_version(version)?;
        MessageType::DeviceState.check_len(payload.len())?;
        Ok(DeviceState { blob: payload })
    }
}

/// Source → target, after the DeviceState, once per vCPU: one vCPU's state, opaque here.
/// For an SEV guest (version 2) the blob is the source helper's record of it (kind
/// VCPU_STATE, its index the vCPU's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState<'a> {
    /// The vCPU index, below the Hello's `vcpus` (the engine checks that) and 1024.
    pub index: u32,
    /// The VMM's blob (0..=64 KiB), or the record around it.
    pub blob: &'a [u8],
}

impl<'a> VcpuState<'a> {
    fn validate(&self) -> Result<(), FrameError> {
        let kind = MessageType::VcpuState;
        if self.index >= MAX_VCPUS {
            return Err(invalid(
                kind,
                "index",
                format!("{}; vCPU indices are below {MAX_VCPUS}", self.index),
            ));
        }
        if self.blob.len() > MAX_VCPU_STATE_LEN {
            return Err(FrameError::TooLong {
                kind,
                len: 4 + self.blob.len(),
                max: 4 + MAX_VCPU_STATE_LEN,
            });
        }
        Ok(())
    }

    /// Writes the frame, the blob straight from the caller's buffer.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::VcpuState,
            &self.index.to_le_bytes(),
            self.blob,
        )
    }

    /// Decodes a payload, borrowing the blob from it.
    pub fn decode(version: u16, payload: &'a [u8]) -> Result<VcpuState<'a>, FrameError> {
        let kind = MessageType::VcpuState;
        check_version(version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let frame = VcpuState {
            index: p.u32("index")?,
            blob: p.rest(),
        };
        frame.validate()?;
        Ok(frame)
    }
}

/// Source → target, SEV guests only, after the vCPU states: the source helper's sealed
/// manifest record, verbatim. The target's helper opens and checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The record: a header of kind MANIFEST, the encrypted payload, the tag.
    pub record: [u8; MANIFEST_LEN],
}

impl Manifest {
    /// Checks the record's framing (its header decodes, of kind MANIFEST and this size).
    pub fn validate(&self) -> Result<(), FrameError> {
        let kind = MessageType::Manifest;
        let mut raw = [0u8; record::HEADER_SIZE];
        raw.copy_from_slice(&self.record[..record::HEADER_SIZE]);
        let header = RecordHeader::decode(&raw).map_err(|_| {
            invalid(
                kind,
                "record",
                "header is malformed (unknown kind, length not fitting the kind, or reserved bits set)"
                    .to_string(),
            )
        })?;
        if header.kind != Kind::MANIFEST || header.record_size() != MANIFEST_LEN {
            return Err(invalid(
                kind,
                "record",
                format!(
                    "header is of kind {} with a {}-byte payload, expected a manifest record (kind {})",
                    header.kind.0,
                    header.len,
                    Kind::MANIFEST.0
                ),
            ));
        }
        Ok(())
    }

    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::Manifest,
            &self.record,
            &[],
        )
    }

    /// Decodes a payload. A version-1 manifest is refused here: version 1 had no
    /// authenticated key agreement, and this helper ABI cannot verify it.
    pub fn decode(version: u16, payload: &[u8]) -> Result<Manifest, FrameError> {
        let kind = MessageType::Manifest;
        check_version(version)?;
        kind.check_len(payload.len())?;
        if version < 2 {
            return Err(invalid(
                kind,
                "record",
                format!("a protocol version {version} manifest: SEV guests migrate only with version 2 (authenticated key agreement); upgrade the source"),
            ));
        }
        if payload.len() != MANIFEST_LEN {
            return Err(FrameError::WrongLength {
                kind,
                len: payload.len(),
                expected: MANIFEST_LEN,
            });
        }
        let mut p = Parser::new(kind, payload);
        let frame = Manifest {
            record: p.array("record")?,
        };
        p.finish()?;
        frame.validate()?;
        Ok(frame)
    }
}
