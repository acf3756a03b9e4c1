//! The 16550 UART at 0x3f8, on vm-superio. Output only: the firmware polls and never
//! waits for interrupts, so the interrupt line is a no-op.

use crate::console::{ConsoleOut, ConsoleWriter};
use vm_superio::{serial::SerialState, Serial, Trigger};

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
    console: ConsoleOut,
}

impl SerialPort {
    /// A UART whose transmitted bytes go to `console`.
    pub fn new(console: ConsoleOut) -> Self {
        SerialPort {
            uart: Serial::new(NoIrq, ConsoleWriter(console.clone())),
            console,
        }
    }

    /// The registers and unread input (for migration).
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Loads registers and input saved by [`SerialPort::state`]; false (and no change)
    /// when the input does not fit the FIFO.
    pub fn set_state(&mut self, state: &SerialState) -> bool {
        match Serial::from_state(
            state,
            NoIrq,
            vm_superio::serial::NoEvents,
            ConsoleWriter(self.console.clone()),
        ) {
            Ok(uart) => {
                self.uart = uart;
                true
            }
            Err(_) => false,
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
    fn a_saved_state_loads_into_a_fresh_port() {
        let (console, _) = ConsoleOut::capture();
        let mut a = SerialPort::new(console.clone());
        a.write(3, 0x1b); // LCR
        a.write(7, 0x42); // scratch
        let mut b = SerialPort::new(console);
        assert!(b.set_state(&a.state()));
        assert_eq!((b.read(3), b.read(7)), (0x1b, 0x42));
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
