//! The exit information of an IOIO exit (`sw_exit_info_1`), as SVM defines it for the
//! IOIO intercept (AMD APM vol. 2 §15.10.2, Figure 15-2; Linux `SVM_IOIO_*`).
//!
//! Bit 0 direction (1 = IN), bit 2 string, bit 3 REP, bits 6:4 operand size (one-hot 8,
//! 16, 32), bits 9:7 address size (one-hot 16, 32, 64), bits 12:10 effective segment,
//! bits 31:16 port. Bits 1, 15:13 and 63:32 are reserved.

use super::GhcbError;

/// Which way the data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// OUT / OUTS: guest to device.
    Out,
    /// IN / INS: device to guest.
    In,
}

/// Operand size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 8 bits.
    Byte,
    /// 16 bits.
    Word,
    /// 32 bits.
    Dword,
}

impl Size {
    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Size::Byte => 1,
            Size::Word => 2,
            Size::Dword => 4,
        }
    }

    /// The size of `bytes` bytes (1, 2 or 4).
    pub const fn from_bytes(bytes: usize) -> Option<Size> {
        match bytes {
            1 => Some(Size::Byte),
            2 => Some(Size::Word),
            4 => Some(Size::Dword),
            _ => None,
        }
    }

    /// Mask of the low `bytes()` bytes.
    pub const fn mask(self) -> u64 {
        match self {
            Size::Byte => 0xff,
            Size::Word => 0xffff,
            Size::Dword => 0xffff_ffff,
        }
    }
}

/// One transfer (IN/OUT) or a string instruction (INS/OUTS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// IN or OUT: the value travels in RAX.
    Single,
    /// INS or OUTS: the data travels in the scratch area.
    String,
}

/// Whether a string instruction has a REP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// No REP prefix.
    Once,
    /// REP prefix: `sw_exit_info_2` holds the count.
    Rep,
}

/// Address size of a string instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSize {
    /// 16-bit addressing.
    A16,
    /// 32-bit addressing.
    A32,
    /// 64-bit addressing.
    A64,
}

/// Decoded IOIO exit information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoioInfo {
    /// I/O port.
    pub port: u16,
    /// Operand size.
    pub size: Size,
    /// Direction.
    pub dir: Direction,
    /// Single transfer or string instruction.
    pub string: Mode,
    /// REP prefix.
    pub rep: Repeat,
    /// Address size.
    pub address: AddressSize,
    /// Effective segment of a string instruction (0 = ES, 3 = DS).
    pub segment: u8,
}

const TYPE_IN: u64 = 1 << 0;
const STR: u64 = 1 << 2;
const REP: u64 = 1 << 3;
const SZ8: u64 = 1 << 4;
const SZ16: u64 = 1 << 5;
const SZ32: u64 = 1 << 6;
const A16: u64 = 1 << 7;
const A32: u64 = 1 << 8;
const A64: u64 = 1 << 9;
const SEG_SHIFT: u32 = 10;
const PORT_SHIFT: u32 = 16;
const RESERVED: u64 = (1 << 1) | (0b111 << 13) | (0xffff_ffff << 32);

impl IoioInfo {
    /// A single IN or OUT in 64-bit mode.
    pub const fn new(port: u16, size: Size, dir: Direction) -> Self {
        IoioInfo {
            port,
            size,
            dir,
            string: Mode::Single,
            rep: Repeat::Once,
            address: AddressSize::A64,
            segment: 0,
        }
    }

    /// The exit information word.
    pub const fn encode(self) -> u64 {
        let mut v = (self.port as u64) << PORT_SHIFT | ((self.segment as u64 & 7) << SEG_SHIFT);
        if let Direction::In = self.dir {
            v |= TYPE_IN;
        }
        if let Mode::String = self.string {
            v |= STR;
        }
        if let Repeat::Rep = self.rep {
            v |= REP;
        }
        v |= match self.size {
            Size::Byte => SZ8,
            Size::Word => SZ16,
            Size::Dword => SZ32,
        };
        v |= match self.address {
            AddressSize::A16 => A16,
            AddressSize::A32 => A32,
            AddressSize::A64 => A64,
        };
        v
    }

    /// Decodes an exit information word: reserved bits clear, exactly one operand size
    /// and exactly one address size.
    pub fn decode(v: u64) -> Result<Self, GhcbError> {
        let bad = GhcbError::Ioio(v);
        if v & RESERVED != 0 {
            return Err(bad);
        }
        let size = match v & (SZ8 | SZ16 | SZ32) {
            SZ8 => Size::Byte,
            SZ16 => Size::Word,
            SZ32 => Size::Dword,
            _ => return Err(bad),
        };
        let address = match v & (A16 | A32 | A64) {
            A16 => AddressSize::A16,
            A32 => AddressSize::A32,
            A64 => AddressSize::A64,
            _ => return Err(bad),
        };
        Ok(IoioInfo {
            port: (v >> PORT_SHIFT) as u16,
            size,
            dir: if v & TYPE_IN != 0 {
                Direction::In
            } else {
                Direction::Out
            },
            string: if v & STR != 0 {
                Mode::String
            } else {
                Mode::Single
            },
            rep: if v & REP != 0 {
                Repeat::Rep
            } else {
                Repeat::Once
            },
            address,
            segment: ((v >> SEG_SHIFT) & 7) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_svm_bit_layout() {
        // `out dx, al` to COM1 in 64-bit mode: port 0x3f8, SZ8, A64.
        assert_eq!(
            IoioInfo::new(0x3f8, Size::Byte, Direction::Out).encode(),
            0x03f8_0000 | 1 << 4 | 1 << 9
        );
        // `in eax, dx` from fw_cfg's DMA port: TYPE_IN, SZ32.
        assert_eq!(
            IoioInfo::new(0x514, Size::Dword, Direction::In).encode(),
            0x0514_0000 | 1 | 1 << 6 | 1 << 9
        );
        let mut rep_outsw = IoioInfo::new(0x1f0, Size::Word, Direction::Out);
        rep_outsw.string = Mode::String;
        rep_outsw.rep = Repeat::Rep;
        rep_outsw.segment = 3;
        assert_eq!(
            rep_outsw.encode(),
            0x01f0_0000 | 3 << 10 | 1 << 9 | 1 << 5 | 1 << 3 | 1 << 2
        );
    }

    #[test]
    fn every_combination_round_trips() {
        for port in [0u16, 0x80, 0x3f8, 0xffff] {
            for size in [Size::Byte, Size::Word, Size::Dword] {
                for dir in [Direction::In, Direction::Out] {
                    for string in [Mode::Single, Mode::String] {
                        for rep in [Repeat::Once, Repeat::Rep] {
                            for address in [AddressSize::A16, AddressSize::A32, AddressSize::A64] {
                                let info = IoioInfo {
                                    port,
                                    size,
                                    dir,
                                    string,
                                    rep,
                                    address,
                                    segment: 3,
                                };
                                assert_eq!(IoioInfo::decode(info.encode()), Ok(info));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reserved_bits_and_ambiguous_sizes_are_refused() {
        let good = IoioInfo::new(0x3f8, Size::Byte, Direction::Out).encode();
        for bad in [
            good | 1 << 1,
            good | 1 << 13,
            good | 1 << 15,
            good | 1 << 32,
            good | 1 << 63,
            good | 1 << 5,
            good & !(1 << 4),
            good | 1 << 8,
            good & !(1 << 9),
        ] {
            assert_eq!(IoioInfo::decode(bad), Err(GhcbError::Ioio(bad)), "{bad:#x}");
        }
    }

    #[test]
    fn sizes_convert_from_bytes() {
        assert_eq!(Size::from_bytes(2), Some(Size::Word));
        assert_eq!(Size::from_bytes(8), None);
        assert_eq!(Size::Dword.mask(), 0xffff_ffff);
    }
}
