//! Device models and the port-I/O bus. Each device is a plain state machine; the vCPU
//! loop routes exits here.

pub mod fw_cfg;
pub mod ghcb;
pub mod serial;
pub mod services;
pub mod state;

use crate::{console::ConsoleOut, memory::HostView};
use std::sync::{Mutex, MutexGuard};

/// Port of the debug-exit device: a write stops the VM with the value as exit status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What a port write asks of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PioOutcome {
    /// Handled by a device (or ignored).
    Handled,
    /// The guest wrote the debug-exit port: stop with this status.
    DebugExit(u64),
}

/// The devices on the port bus.
pub struct PioBus {
    serial: Mutex<serial::SerialPort>,
    fw_cfg: Mutex<fw_cfg::FwCfg>,
    view: HostView,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A vCPU thread that panicked while holding a device lock has already taken the VMM
    // down (panic = abort); the state is still the last consistent one.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PioBus {
    /// A bus with COM1 writing to `console`, the given fw_cfg device, and DMA through
    /// `view`.
    pub fn new(console: ConsoleOut, fw_cfg: fw_cfg::FwCfg, view: HostView) -> Self {
        PioBus {
            serial: Mutex::new(serial::SerialPort::new(console)),
            fw_cfg: Mutex::new(fw_cfg),
            view,
        }
    }

    /// The devices' migratable state.
    pub fn state(&self) -> state::DeviceState {
        state::DeviceState {
            serial: lock(&self.serial).state(),
        }
    }

    /// Loads state saved by [`PioBus::state`] (the vCPUs must be paused).
    pub fn set_state(&self, s: &state::DeviceState) -> Result<(), state::DeviceStateError> {
        if lock(&self.serial).set_state(&s.serial) {
            Ok(())
        } else {
            Err(state::DeviceStateError::Malformed(
                "more UART input than its FIFO holds",
            ))
        }
    }

    /// A guest `in`: fills `data`. Unclaimed ports read as all ones, like an empty bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (serial::COM1_BASE..serial::COM1_BASE + serial::COM1_LEN).contains(&p) => {
                let mut uart = lock(&self.serial);
                for b in data.iter_mut() {
                    *b = uart.read((p - serial::COM1_BASE) as u8);
                }
            }
            p if (fw_cfg::PORT_BASE..fw_cfg::PORT_BASE + fw_cfg::PORT_LEN).contains(&p) => {
                lock(&self.fw_cfg).pio_read(p, data)
            }
            _ => data.fill(0xff),
        }
    }

    /// A guest `out` of `data`.
    pub fn write(&self, port: u16, data: &[u8]) -> PioOutcome {
        match port {
            DEBUG_EXIT_PORT => {
                let mut word = [0u8; 8];
                let n = data.len().min(8);
                word[..n].copy_from_slice(&data[..n]);
                return PioOutcome::DebugExit(u64::from_le_bytes(word));
            }
            p if (serial::COM1_BASE..serial::COM1_BASE + serial::COM1_LEN).contains(&p) => {
                let mut uart = lock(&self.serial);
                for &b in data {
                    uart.write((p - serial::COM1_BASE) as u8, b);
                }
            }
            p if (fw_cfg::PORT_BASE..fw_cfg::PORT_BASE + fw_cfg::PORT_LEN).contains(&p) => {
                lock(&self.fw_cfg).pio_write(p, data, &self.view)
            }
            _ => log::debug!("ignored {}-byte write to port {port:#x}", data.len()),
        }
        PioOutcome::Handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use std::sync::Arc;

    fn bus() -> (PioBus, Arc<Mutex<Vec<u8>>>) {
        let (console, buf) = ConsoleOut::capture();
        let ram = Arc::new(GuestRam::new(64 << 20).unwrap());
        (
            PioBus::new(console, fw_cfg::FwCfg::new(), HostView::new(ram)),
            buf,
        )
    }

    #[test]
    fn debug_exit_value_becomes_the_status() {
        let (bus, _) = bus();
        assert_eq!(bus.write(DEBUG_EXIT_PORT, &[5]), PioOutcome::DebugExit(5));
        assert_eq!(
            bus.write(DEBUG_EXIT_PORT, &0x1ffu32.to_le_bytes()),
            PioOutcome::DebugExit(0x1ff)
        );
    }

    #[test]
    fn com1_output_reaches_the_console_and_other_ports_float_high() {
        let (bus, buf) = bus();
        assert_eq!(bus.write(0x3f8, b"A"), PioOutcome::Handled);
        assert_eq!(&*buf.lock().unwrap(), b"A");
        let mut d = [0u8; 2];
        bus.read(0x60, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        assert_eq!(bus.write(0x80, &[0x12]), PioOutcome::Handled);
    }

    #[test]
    fn fw_cfg_signature_is_on_its_ports() {
        let (bus, _) = bus();
        bus.write(0x510, &0u16.to_le_bytes());
        let mut sig = [0u8; 4];
        for b in &mut sig {
            let mut one = [0u8];
            bus.read(0x511, &mut one);
            *b = one[0];
        }
        assert_eq!(&sig, b"QEMU");
    }
}
