//! The 16550 UART at 0x3f8, on vm-superio. Output only: the firmware polls and never
//! waits for interrupts, so the interrupt line is a no-op.

use crate::console::{ConsoleOut, ConsoleWriter};
use vm_superio::{Serial, Trigger};

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const COM1_LEN: u16 = 8;

/// An interrupt line that goes nowhere.
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// COM1, writing to the shared console.
pub struct SerialPort {
    uart: Serial<NoIrq, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialPort {
    /// A UART whose transmitted bytes go to `console`.
    pub fn new(console: ConsoleOut) -> Self {
        SerialPort {
            uart: Serial::new(NoIrq, ConsoleWriter(console)),
        }
    }

    /// A guest read of register `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A guest write of register `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) {
        // The only error is a failed interrupt trigger, which NoIrq never returns; the
        // console itself swallows (and reports once) output errors.
        let _ = self.uart.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_console_and_lsr_says_ready() {
        let (console, buf) = ConsoleOut::capture();
        let mut port = SerialPort::new(console);
        for &b in b"hi\n" {
            port.write(0, b);
        }
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        // LSR: transmitter holding register empty and transmitter empty.
        assert_eq!(port.read(5) & 0x60, 0x60);
    }

    #[test]
    fn divisor_latch_writes_do_not_print() {
        let (console, buf) = ConsoleOut::capture();
        let mut port = SerialPort::new(console);
        port.write(3, 0x80); // LCR.DLAB
        port.write(0, 0x01); // divisor low, not THR
        port.write(3, 0x03);
        assert!(buf.lock().unwrap().is_empty());
    }
}
