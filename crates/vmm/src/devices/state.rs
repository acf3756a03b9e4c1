//! The devices' migratable state, as one versioned blob.
//!
//! Only COM1 holds state a guest can observe across a migration (its registers and
//! unread input). fw_cfg is read once at boot and differs by design between source and
//! target (the target has the incoming flag); the debug-exit port has none.

use vm_superio::serial::SerialState;

/// First bytes of a device-state blob.
const MAGIC: [u8; 4] = *b"SMDV";
/// The layout version this build writes and reads.
const VERSION: u16 = 1;
/// Most unread input bytes a UART holds (vm-superio's FIFO is 64 bytes).
const MAX_IN_BUFFER: usize = 64;

/// Why a device-state blob cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceStateError {
    /// Not a device-state blob.
    #[error("the device state does not start with {MAGIC:?}")]
    Magic,
    /// Written by a build with another layout.
    #[error("device state version {0}; this build reads version {VERSION}")]
    Version(u16),
    /// Too short, too long or with an impossible field.
    #[error("the device state is malformed: {0}")]
    Malformed(&'static str),
}

/// What the devices hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// COM1's registers and unread input.
    pub serial: SerialState,
}

impl DeviceState {
    /// The blob the migration stream carries.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.serial;
        let mut out = Vec::with_capacity(16 + s.in_buffer.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ]);
        let input = &s.in_buffer[..s.in_buffer.len().min(MAX_IN_BUFFER)];
        out.push(input.len() as u8);
        out.extend_from_slice(input);
        out
    }

    /// Reads a blob written by [`DeviceState::encode`].
    pub fn decode(blob: &[u8]) -> Result<DeviceState, DeviceStateError> {
        let magic = blob
            .get(..4)
            .ok_or(DeviceStateError::Malformed("too short"))?;
        if magic != MAGIC {
            return Err(DeviceStateError::Magic);
        }
        let version = blob
            .get(4..6)
            .map(|v| u16::from_le_bytes([v[0], v[1]]))
            .ok_or(DeviceStateError::Malformed("too short"))?;
        if version != VERSION {
            return Err(DeviceStateError::Version(version));
        }
        let regs = blob.get(6..16).ok_or(DeviceStateError::Malformed(
            "too short for the UART registers",
        ))?;
        let len = usize::from(regs[9]);
        if len > MAX_IN_BUFFER {
            return Err(DeviceStateError::Malformed(
                "more UART input than its FIFO holds",
            ));
        }
        let input = blob
            .get(16..16 + len)
            .ok_or(DeviceStateError::Malformed("the UART input is cut short"))?;
        if blob.len() != 16 + len {
            return Err(DeviceStateError::Malformed("trailing bytes"));
        }
        Ok(DeviceState {
            serial: SerialState {
                baud_divisor_low: regs[0],
                baud_divisor_high: regs[1],
                interrupt_enable: regs[2],
                interrupt_identification: regs[3],
                line_control: regs[4],
                line_status: regs[5],
                modem_control: regs[6],
                modem_status: regs[7],
                scratch: regs[8],
                in_buffer: input.to_vec(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceState {
        DeviceState {
            serial: SerialState {
                line_control: 0x03,
                scratch: 0x5a,
                in_buffer: b"typed".to_vec(),
                ..SerialState::default()
            },
        }
    }

    #[test]
    fn the_uart_registers_and_input_survive_the_round_trip() {
        let s = sample();
        assert_eq!(DeviceState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn every_truncation_and_foreign_blob_is_refused() {
        let blob = sample().encode();
        for cut in 0..blob.len() {
            assert!(DeviceState::decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(DeviceState::decode(&long).is_err());
        let mut other = blob.clone();
        other[4] = 9;
        assert_eq!(
            DeviceState::decode(&other),
            Err(DeviceStateError::Version(9))
        );
        assert_eq!(
            DeviceState::decode(b"QEVMxxxxxxxxxxxxxx"),
            Err(DeviceStateError::Magic)
        );
        let mut huge = blob;
        huge[15] = 200;
        assert!(DeviceState::decode(&huge).is_err());
    }
}
