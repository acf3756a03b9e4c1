//! A 64-bit x86 instruction decoder for the instructions that raise #VC.
//!
//! Covered (64-bit mode only, the mode the firmware runs its Rust and services in):
//! - CPUID (`0f a2`), RDMSR (`0f 32`), WRMSR (`0f 30`), VMMCALL (`0f 01 d9`);
//! - IN/OUT with an immediate port (`e4`-`e7`) or DX (`ec`-`ef`), byte, word (`66`) and
//!   dword; INS/OUTS (`6c`-`6f`) with or without REP;
//! - the MMIO moves: `88`/`89`/`8a`/`8b` MOV with a memory ModRM operand (SIB, disp8,
//!   disp32, RIP-relative, 32-bit addressing with `67`), `c6`/`c7` MOV r/m, imm, `a0`-`a3`
//!   MOV with a 64-bit (or, with `67`, 32-bit) absolute address, `0f b6`/`0f b7` MOVZX and
//!   `0f be`/`0f bf` MOVSX.
//!
//! Prefixes: `66`, `67`, REP (`f2`/`f3`), the null segment overrides (`26`, `2e`, `36`,
//! `3e`) and REX (honoured only directly before the opcode, as the CPU does). FS/GS
//! overrides are refused (their bases live in MSRs the handler does not read), as is LOCK.
//! Nothing else is decoded: an unlisted opcode is an error, never a guess.

use guest_abi::ghcb::ioio::{Direction, Repeat, Size};

/// Longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Why bytes did not decode to an instruction the #VC handler serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Prefixes make the instruction longer than 15 bytes.
    TooLong,
    /// An opcode the handler does not serve (two-byte opcodes as `0x0fXX`, `0f 01 xx` as
    /// `0x0f01`).
    Unsupported(u16),
    /// A move whose ModRM operand is a register: it cannot have touched MMIO.
    RegisterOperand,
    /// An FS (`64`) or GS (`65`) segment override.
    SegmentOverride(u8),
    /// A LOCK prefix.
    Lock,
    /// A ModRM reg field that names no operation of the opcode (`c6`/`c7` need 0).
    BadModRm(u8),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DecodeError::Truncated => f.write_str("instruction bytes end early"),
            DecodeError::TooLong => f.write_str("instruction longer than 15 bytes"),
            DecodeError::Unsupported(op) => write!(f, "opcode {op:#x} is not served"),
            DecodeError::RegisterOperand => f.write_str("register operand where MMIO needs memory"),
            DecodeError::SegmentOverride(p) => write!(f, "segment override prefix {p:#x}"),
            DecodeError::Lock => f.write_str("LOCK prefix"),
            DecodeError::BadModRm(m) => write!(f, "ModRM {m:#x} names no operation"),
        }
    }
}

/// A register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// A general-purpose register by x86 number (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX,
    /// 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15), used from bit 0.
    Gpr(u8),
    /// AH, CH, DH or BH (0..3): bits 15:8 of RAX, RCX, RDX or RBX. Only byte operands
    /// without a REX prefix name these.
    HighByte(u8),
}

/// What a memory operand's address is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Nothing (absolute displacement).
    None,
    /// A general-purpose register.
    Reg(u8),
    /// The address of the next instruction (RIP-relative).
    Rip,
}

/// Address size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSize {
    /// 64-bit (the default in 64-bit mode).
    A64,
    /// 32-bit (`67` prefix): the address wraps at 4 GiB.
    A32,
}

/// A memory operand: `base + index * scale + disp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base.
    pub base: Base,
    /// Index register and scale (1, 2, 4 or 8).
    pub index: Option<(u8, u8)>,
    /// Displacement (sign-extended; an absolute address for `a0`-`a3`).
    pub disp: i64,
    /// Address size.
    pub addr: AddrSize,
}

impl MemOperand {
    /// The linear address, given the registers (`gpr(n)` = register n) and the address of
    /// the next instruction.
    pub fn linear(&self, gpr: impl Fn(u8) -> u64, next_rip: u64) -> u64 {
        let mut a = self.disp as u64;
        match self.base {
            Base::None => {}
            Base::Reg(r) => a = a.wrapping_add(gpr(r)),
            Base::Rip => a = a.wrapping_add(next_rip),
        }
        if let Some((r, scale)) = self.index {
            a = a.wrapping_add(gpr(r).wrapping_mul(u64::from(scale)));
        }
        match self.addr {
            AddrSize::A64 => a,
            AddrSize::A32 => a & 0xffff_ffff,
        }
    }
}

/// Where an I/O instruction's port comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// An immediate byte.
    Imm(u8),
    /// DX.
    Dx,
}

/// How a narrower MMIO read fills a wider destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Same width (MOV).
    None,
    /// Zero-extended (MOVZX).
    Zero,
    /// Sign-extended (MOVSX).
    Sign,
}

/// The value an MMIO write stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A register, at the access width.
    Reg(Reg),
    /// An immediate, already sign-extended and truncated to the access width.
    Imm(u64),
}

/// What the instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// CPUID.
    Cpuid,
    /// RDMSR.
    Rdmsr,
    /// WRMSR.
    Wrmsr,
    /// VMMCALL.
    Vmmcall,
    /// IN or OUT of AL/AX/EAX.
    Io {
        /// Direction.
        dir: Direction,
        /// Port source.
        port: Port,
        /// Operand size.
        size: Size,
    },
    /// INS or OUTS.
    StringIo {
        /// Direction (INS = In).
        dir: Direction,
        /// Operand size.
        size: Size,
        /// REP prefix.
        rep: Repeat,
    },
    /// A load from memory into a register.
    MmioRead {
        /// The memory operand.
        mem: MemOperand,
        /// Bytes read (1, 2, 4 or 8).
        bytes: u8,
        /// Destination register.
        dest: Reg,
        /// Width written to the destination (1, 2, 4 or 8; 4 clears bits 63:32).
        dest_bytes: u8,
        /// How the value fills the destination.
        extend: Extend,
    },
    /// A store to memory.
    MmioWrite {
        /// The memory operand.
        mem: MemOperand,
        /// Bytes written (1, 2, 4 or 8).
        bytes: u8,
        /// The value.
        src: Source,
    },
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Length in bytes (RIP advances by this much).
    pub len: usize,
    /// The operation.
    pub op: Op,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Ok(v)
    }
}

#[derive(Clone, Copy, Default)]
struct Prefixes {
    opsize16: bool,
    addr32: bool,
    rep: bool,
    /// The REX byte, if one directly precedes the opcode.
    rex: Option<u8>,
}

impl Prefixes {
    fn w(self) -> bool {
        self.rex.is_some_and(|r| r & 8 != 0)
    }
    fn r(self) -> u8 {
        self.rex.map_or(0, |r| (r >> 2) & 1) << 3
    }
    fn x(self) -> u8 {
        self.rex.map_or(0, |r| (r >> 1) & 1) << 3
    }
    fn b(self) -> u8 {
        self.rex.map_or(0, |r| r & 1) << 3
    }
    /// Operand size of a non-byte operation: REX.W wins over `66`.
    fn opsize(self) -> u8 {
        if self.w() {
            8
        } else if self.opsize16 {
            2
        } else {
            4
        }
    }
    fn addr(self) -> AddrSize {
        if self.addr32 {
            AddrSize::A32
        } else {
            AddrSize::A64
        }
    }
    /// A byte register: without REX, numbers 4..7 are AH, CH, DH, BH.
    fn byte_reg(self, n: u8) -> Reg {
        if self.rex.is_none() && (4..8).contains(&n) {
            Reg::HighByte(n - 4)
        } else {
            Reg::Gpr(n)
        }
    }
}

/// Decodes a ModRM memory operand; returns the reg field (with REX.R) and the operand.
fn modrm(c: &mut Cursor<'_>, p: Prefixes) -> Result<(u8, u8, MemOperand), DecodeError> {
    let m = c.byte()?;
    let md = m >> 6;
    let reg = (m >> 3) & 7;
    let rm = m & 7;
    if md == 3 {
        return Err(DecodeError::RegisterOperand);
    }
    let mut base = Base::Reg(rm | p.b());
    let mut index = None;
    let mut disp32 = md == 2;
    if rm == 4 {
        let sib = c.byte()?;
        let idx = ((sib >> 3) & 7) | p.x();
        // Index 100b without REX.X means "no index" (with REX.X it is R12).
        if idx != 4 {
            index = Some((idx, 1 << (sib >> 6)));
        }
        base = Base::Reg((sib & 7) | p.b());
        if sib & 7 == 5 && md == 0 {
            base = Base::None;
            disp32 = true;
        }
    } else if rm == 5 && md == 0 {
        base = Base::Rip;
        disp32 = true;
    }
    let disp = if disp32 {
        i64::from(c.le(4)? as u32 as i32)
    } else if md == 1 {
        i64::from(c.byte()? as i8)
    } else {
        0
    };
    Ok((
        reg | p.r(),
        m,
        MemOperand {
            base,
            index,
            disp,
            addr: p.addr(),
        },
    ))
}

fn mask(bytes: u8) -> u64 {
    match bytes {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

/// Decodes the instruction at the start of `bytes` (the bytes at RIP).
pub fn decode(bytes: &[u8]) -> Result<Instruction, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let mut p = Prefixes::default();
    let opcode = loop {
        let b = c.byte()?;
        match b {
            0x66 => p.opsize16 = true,
            0x67 => p.addr32 = true,
            0xf2 | 0xf3 => p.rep = true,
            // ES, CS, SS, DS overrides: their bases are 0 in 64-bit mode.
            0x26 | 0x2e | 0x36 | 0x3e => {}
            0x64 | 0x65 => return Err(DecodeError::SegmentOverride(b)),
            0xf0 => return Err(DecodeError::Lock),
            0x40..=0x4f => {
                p.rex = Some(b);
                continue;
            }
            _ => break b,
        }
        // A legacy prefix after REX cancels the REX (it must directly precede the opcode).
        p.rex = None;
    };
    let word_or_dword = if p.opsize16 { Size::Word } else { Size::Dword };
    let op = match opcode {
        0x0f => match c.byte()? {
            0xa2 => Op::Cpuid,
            0x32 => Op::Rdmsr,
            0x30 => Op::Wrmsr,
            0x01 => match c.byte()? {
                0xd9 => Op::Vmmcall,
                _ => return Err(DecodeError::Unsupported(0x0f01)),
            },
            op2 @ (0xb6 | 0xb7 | 0xbe | 0xbf) => {
                let (reg, _, mem) = modrm(&mut c, p)?;
                Op::MmioRead {
                    mem,
                    bytes: if op2 & 1 == 0 { 1 } else { 2 },
                    dest: Reg::Gpr(reg),
                    dest_bytes: p.opsize(),
                    extend: if op2 < 0xbe {
                        Extend::Zero
                    } else {
                        Extend::Sign
                    },
                }
            }
            op2 => return Err(DecodeError::Unsupported(0x0f00 | u16::from(op2))),
        },
        0xe4..=0xe7 | 0xec..=0xef => Op::Io {
            dir: if opcode & 2 == 0 {
                Direction::In
            } else {
                Direction::Out
            },
            port: if opcode < 0xec {
                Port::Imm(c.byte()?)
            } else {
                Port::Dx
            },
            size: if opcode & 1 == 0 {
                Size::Byte
            } else {
                word_or_dword
            },
        },
        0x6c..=0x6f => Op::StringIo {
            dir: if opcode < 0x6e {
                Direction::In
            } else {
                Direction::Out
            },
            size: if opcode & 1 == 0 {
                Size::Byte
            } else {
                word_or_dword
            },
            rep: if p.rep { Repeat::Rep } else { Repeat::Once },
        },
        0x88 | 0x89 => {
            let (reg, _, mem) = modrm(&mut c, p)?;
            let (bytes, src) = if opcode == 0x88 {
                (1, p.byte_reg(reg))
            } else {
                (p.opsize(), Reg::Gpr(reg))
            };
            Op::MmioWrite {
                mem,
                bytes,
                src: Source::Reg(src),
            }
        }
        0x8a | 0x8b => {
            let (reg, _, mem) = modrm(&mut c, p)?;
            let (bytes, dest) = if opcode == 0x8a {
                (1, p.byte_reg(reg))
            } else {
                (p.opsize(), Reg::Gpr(reg))
            };
            Op::MmioRead {
                mem,
                bytes,
                dest,
                dest_bytes: bytes,
                extend: Extend::None,
            }
        }
        0xc6 | 0xc7 => {
            let (reg, m, mem) = modrm(&mut c, p)?;
            if reg & 7 != 0 {
                return Err(DecodeError::BadModRm(m));
            }
            let bytes = if opcode == 0xc6 { 1 } else { p.opsize() };
            // The immediate is at most 32 bits; a 64-bit store sign-extends it.
            let imm_len = usize::from(bytes.min(4));
            let raw = c.le(imm_len)?;
            let imm = match imm_len {
                1 => raw as u8 as i8 as i64,
                2 => raw as u16 as i16 as i64,
                _ => raw as u32 as i32 as i64,
            } as u64;
            Op::MmioWrite {
                mem,
                bytes,
                src: Source::Imm(imm & mask(bytes)),
            }
        }
        0xa0..=0xa3 => {
            let addr_len = if p.addr32 { 4 } else { 8 };
            let mem = MemOperand {
                base: Base::None,
                index: None,
                disp: c.le(addr_len)? as i64,
                addr: p.addr(),
            };
            let bytes = if opcode & 1 == 0 { 1 } else { p.opsize() };
            if opcode < 0xa2 {
                Op::MmioRead {
                    mem,
                    bytes,
                    dest: Reg::Gpr(0),
                    dest_bytes: bytes,
                    extend: Extend::None,
                }
            } else {
                Op::MmioWrite {
                    mem,
                    bytes,
                    src: Source::Reg(Reg::Gpr(0)),
                }
            }
        }
        op => return Err(DecodeError::Unsupported(u16::from(op))),
    };
    Ok(Instruction { len: c.pos, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Encodings below come from GNU as 2.40 (`as --64`, Intel syntax) and objdump; the
    // comment on each is the source line.

    fn d(bytes: &[u8]) -> Instruction {
        decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"))
    }

    fn mem(base: Base, index: Option<(u8, u8)>, disp: i64) -> MemOperand {
        MemOperand {
            base,
            index,
            disp,
            addr: AddrSize::A64,
        }
    }

    fn write(m: MemOperand, bytes: u8, src: Source) -> Op {
        Op::MmioWrite { mem: m, bytes, src }
    }

    fn read(m: MemOperand, bytes: u8, dest: Reg) -> Op {
        Op::MmioRead {
            mem: m,
            bytes,
            dest,
            dest_bytes: bytes,
            extend: Extend::None,
        }
    }

    #[test]
    fn system_instructions() {
        assert_eq!(
            d(&[0x0f, 0xa2]),
            Instruction {
                len: 2,
                op: Op::Cpuid
            }
        );
        assert_eq!(
            d(&[0x0f, 0x32]),
            Instruction {
                len: 2,
                op: Op::Rdmsr
            }
        );
        assert_eq!(
            d(&[0x0f, 0x30]),
            Instruction {
                len: 2,
                op: Op::Wrmsr
            }
        );
        assert_eq!(
            d(&[0x0f, 0x01, 0xd9]),
            Instruction {
                len: 3,
                op: Op::Vmmcall
            }
        );
        // Trailing bytes are the next instruction's.
        assert_eq!(d(&[0x0f, 0xa2, 0x90, 0x90]).len, 2);
        assert_eq!(
            decode(&[0x0f, 0x01, 0xd8]),
            Err(DecodeError::Unsupported(0x0f01))
        );
        assert_eq!(decode(&[0x0f, 0x31]), Err(DecodeError::Unsupported(0x0f31)));
    }

    #[test]
    fn port_io_all_forms() {
        use Direction::{In, Out};
        let io = |dir, port, size| Op::Io { dir, port, size };
        let cases: [(&[u8], Op); 12] = [
            (&[0xe4, 0x71], io(In, Port::Imm(0x71), Size::Byte)), // in al, 0x71
            (&[0x66, 0xe5, 0x71], io(In, Port::Imm(0x71), Size::Word)), // in ax, 0x71
            (&[0xe5, 0x71], io(In, Port::Imm(0x71), Size::Dword)), // in eax, 0x71
            (&[0xec], io(In, Port::Dx, Size::Byte)),              // in al, dx
            (&[0x66, 0xed], io(In, Port::Dx, Size::Word)),        // in ax, dx
            (&[0xed], io(In, Port::Dx, Size::Dword)),             // in eax, dx
            (&[0xe6, 0x80], io(Out, Port::Imm(0x80), Size::Byte)), // out 0x80, al
            (&[0x66, 0xe7, 0x80], io(Out, Port::Imm(0x80), Size::Word)), // out 0x80, ax
            (&[0xe7, 0x80], io(Out, Port::Imm(0x80), Size::Dword)), // out 0x80, eax
            (&[0xee], io(Out, Port::Dx, Size::Byte)),             // out dx, al
            (&[0x66, 0xef], io(Out, Port::Dx, Size::Word)),       // out dx, ax
            (&[0xef], io(Out, Port::Dx, Size::Dword)),            // out dx, eax
        ];
        for (bytes, op) in cases {
            assert_eq!(
                d(bytes),
                Instruction {
                    len: bytes.len(),
                    op
                },
                "{bytes:02x?}"
            );
        }
        // REX.W does not widen port I/O past 32 bits.
        assert_eq!(
            d(&[0x48, 0xed]).op,
            io(In, Port::Dx, Size::Dword),
            "rex.W in eax, dx"
        );
        assert_eq!(decode(&[0xe4]), Err(DecodeError::Truncated));
    }

    #[test]
    fn string_io() {
        use Direction::{In, Out};
        let s = |dir, size, rep| Op::StringIo { dir, size, rep };
        assert_eq!(d(&[0xf3, 0x6c]).op, s(In, Size::Byte, Repeat::Rep)); // rep insb
        assert_eq!(d(&[0x66, 0xf3, 0x6d]).op, s(In, Size::Word, Repeat::Rep)); // rep insw
        assert_eq!(d(&[0xf3, 0x6f]).op, s(Out, Size::Dword, Repeat::Rep)); // rep outsd
        assert_eq!(d(&[0x6e]).op, s(Out, Size::Byte, Repeat::Once)); // outsb
    }

    #[test]
    fn mmio_stores_from_registers() {
        let r = |n| Source::Reg(Reg::Gpr(n));
        let cases: [(&[u8], Op); 14] = [
            // mov byte ptr [rax], cl
            (&[0x88, 0x08], write(mem(Base::Reg(0), None, 0), 1, r(1))),
            // mov byte ptr [rax], ah
            (
                &[0x88, 0x20],
                write(mem(Base::Reg(0), None, 0), 1, Source::Reg(Reg::HighByte(0))),
            ),
            // mov byte ptr [rax], sil
            (
                &[0x40, 0x88, 0x30],
                write(mem(Base::Reg(0), None, 0), 1, r(6)),
            ),
            // mov byte ptr [r9], r10b
            (
                &[0x45, 0x88, 0x11],
                write(mem(Base::Reg(9), None, 0), 1, r(10)),
            ),
            // mov byte ptr [r8], spl
            (
                &[0x41, 0x88, 0x20],
                write(mem(Base::Reg(8), None, 0), 1, r(4)),
            ),
            // mov word ptr [rbx+8], dx
            (
                &[0x66, 0x89, 0x53, 0x08],
                write(mem(Base::Reg(3), None, 8), 2, r(2)),
            ),
            // mov dword ptr [rdi+0x12345678], esi
            (
                &[0x89, 0xb7, 0x78, 0x56, 0x34, 0x12],
                write(mem(Base::Reg(7), None, 0x1234_5678), 4, r(6)),
            ),
            // mov qword ptr [rsp], r15
            (
                &[0x4c, 0x89, 0x3c, 0x24],
                write(mem(Base::Reg(4), None, 0), 8, r(15)),
            ),
            // mov qword ptr [r12+r13*8-16], rax
            (
                &[0x4b, 0x89, 0x44, 0xec, 0xf0],
                write(mem(Base::Reg(12), Some((13, 8)), -16), 8, r(0)),
            ),
            // mov dword ptr [rbp+0], eax (rbp needs a disp8 of 0)
            (
                &[0x89, 0x45, 0x00],
                write(mem(Base::Reg(5), None, 0), 4, r(0)),
            ),
            // mov dword ptr [r13+0], eax
            (
                &[0x41, 0x89, 0x45, 0x00],
                write(mem(Base::Reg(13), None, 0), 4, r(0)),
            ),
            // mov dword ptr [rax*4+0x7e000010], edx (SIB without base)
            (
                &[0x89, 0x14, 0x85, 0x10, 0x00, 0x00, 0x7e],
                write(mem(Base::None, Some((0, 4)), 0x7e00_0010), 4, r(2)),
            ),
            // mov dword ptr [rsp+rcx*2+4], ebx
            (
                &[0x89, 0x5c, 0x4c, 0x04],
                write(mem(Base::Reg(4), Some((1, 2)), 4), 4, r(3)),
            ),
            // mov dword ptr [r12+r12*1], eax (REX.X turns index 100b into R12)
            (
                &[0x43, 0x89, 0x04, 0x24],
                write(mem(Base::Reg(12), Some((12, 1)), 0), 4, r(0)),
            ),
        ];
        for (bytes, op) in cases {
            assert_eq!(
                d(bytes),
                Instruction {
                    len: bytes.len(),
                    op
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn rip_relative_absolute_and_32_bit_addresses() {
        // mov dword ptr [rip+0x100], ecx
        let i = d(&[0x89, 0x0d, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(
            i.op,
            write(mem(Base::Rip, None, 0x100), 4, Source::Reg(Reg::Gpr(1)))
        );
        let Op::MmioWrite { mem: m, .. } = i.op else {
            unreachable!()
        };
        assert_eq!(m.linear(|_| 0, 0x1000 + i.len as u64), 0x1106);
        // mov eax, dword ptr ds:0x1000 (SIB, no base, no index)
        assert_eq!(
            d(&[0x8b, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00]).op,
            read(mem(Base::None, None, 0x1000), 4, Reg::Gpr(0))
        );
        // mov dword ptr [eax+ebx*1], ecx
        let i = d(&[0x67, 0x89, 0x0c, 0x18]);
        let Op::MmioWrite { mem: m, .. } = i.op else {
            unreachable!()
        };
        assert_eq!(m.addr, AddrSize::A32);
        let regs = |r: u8| [0xffff_ffff_0000_0010u64, 0, 0, 0xffff_fff0][usize::from(r)];
        assert_eq!(
            m.linear(regs, 0),
            0,
            "wraps at 4 GiB, upper register halves ignored"
        );
        // mov al, byte ptr [eax]
        assert_eq!(d(&[0x67, 0x8a, 0x00]).len, 3);
    }

    #[test]
    fn mmio_loads() {
        let cases: [(&[u8], Op); 6] = [
            // mov al, byte ptr [rsi]
            (
                &[0x8a, 0x06],
                read(mem(Base::Reg(6), None, 0), 1, Reg::Gpr(0)),
            ),
            // mov bh, byte ptr [rdx+1]
            (
                &[0x8a, 0x7a, 0x01],
                read(mem(Base::Reg(2), None, 1), 1, Reg::HighByte(3)),
            ),
            // mov dil, byte ptr [rax]
            (
                &[0x40, 0x8a, 0x38],
                read(mem(Base::Reg(0), None, 0), 1, Reg::Gpr(7)),
            ),
            // mov cx, word ptr [rax]
            (
                &[0x66, 0x8b, 0x08],
                read(mem(Base::Reg(0), None, 0), 2, Reg::Gpr(1)),
            ),
            // mov ecx, dword ptr [rax]
            (
                &[0x8b, 0x08],
                read(mem(Base::Reg(0), None, 0), 4, Reg::Gpr(1)),
            ),
            // mov r11, qword ptr [r8+0x40]
            (
                &[0x4d, 0x8b, 0x58, 0x40],
                read(mem(Base::Reg(8), None, 0x40), 8, Reg::Gpr(11)),
            ),
        ];
        for (bytes, op) in cases {
            assert_eq!(
                d(bytes),
                Instruction {
                    len: bytes.len(),
                    op
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn stores_of_immediates() {
        let at_rax = mem(Base::Reg(0), None, 0);
        // mov byte ptr [rax], 0x5a
        assert_eq!(
            d(&[0xc6, 0x00, 0x5a]).op,
            write(at_rax, 1, Source::Imm(0x5a))
        );
        // mov word ptr [rax], 0x1234
        assert_eq!(
            d(&[0x66, 0xc7, 0x00, 0x34, 0x12]).op,
            write(at_rax, 2, Source::Imm(0x1234))
        );
        // mov dword ptr [rax+4], 0x80000001
        assert_eq!(
            d(&[0xc7, 0x40, 0x04, 0x01, 0x00, 0x00, 0x80]).op,
            write(mem(Base::Reg(0), None, 4), 4, Source::Imm(0x8000_0001))
        );
        // mov qword ptr [rax], -2 (imm32 sign-extended)
        assert_eq!(
            d(&[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff]).op,
            write(at_rax, 8, Source::Imm(0xffff_ffff_ffff_fffe))
        );
        // mov dword ptr [rip+0x20], 7: RIP-relative counts the immediate in the length.
        let i = d(&[0xc7, 0x05, 0x20, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00]);
        assert_eq!(i.len, 10);
        assert_eq!(i.op, write(mem(Base::Rip, None, 0x20), 4, Source::Imm(7)));
        // c7 with reg field 1 is not a MOV.
        assert_eq!(
            decode(&[0xc7, 0x08, 0, 0, 0, 0]),
            Err(DecodeError::BadModRm(0x08))
        );
        assert_eq!(decode(&[0xc7, 0x00, 0x01]), Err(DecodeError::Truncated));
    }

    #[test]
    fn moves_with_absolute_addresses() {
        let abs = |a: i64| mem(Base::None, None, a);
        let a8 = [0x08, 0x00, 0x00, 0xfe, 0x00, 0x00, 0x00, 0x00];
        let a0 = [0x00, 0x00, 0x00, 0xfe, 0x00, 0x00, 0x00, 0x00];
        let cat = |pre: &[u8], addr: &[u8]| {
            let mut v = [0u8; 11];
            v[..pre.len()].copy_from_slice(pre);
            v[pre.len()..pre.len() + 8].copy_from_slice(addr);
            (v, pre.len() + 8)
        };
        let rax = Reg::Gpr(0);
        let cases = [
            (cat(&[0xa0], &a8), read(abs(0xfe00_0008), 1, rax)), // movabs al, [0xfe000008]
            (cat(&[0xa1], &a8), read(abs(0xfe00_0008), 4, rax)), // movabs eax, ...
            (cat(&[0x48, 0xa1], &a8), read(abs(0xfe00_0008), 8, rax)), // movabs rax, ...
            (cat(&[0x66, 0xa1], &a0), read(abs(0xfe00_0000), 2, rax)), // movabs ax, ...
            (
                cat(&[0xa2], &a0),
                write(abs(0xfe00_0000), 1, Source::Reg(rax)),
            ), // movabs [..], al
            (
                cat(&[0x48, 0xa3], &a0),
                write(abs(0xfe00_0000), 8, Source::Reg(rax)),
            ), // .., rax
        ];
        for ((bytes, len), op) in cases {
            assert_eq!(d(&bytes[..len]), Instruction { len, op }, "{bytes:02x?}");
        }
        // addr32 mov eax, ds:0x1000: a 4-byte address.
        let i = d(&[0x67, 0xa1, 0x00, 0x10, 0x00, 0x00]);
        assert_eq!(i.len, 6);
        assert_eq!(
            i.op,
            read(
                MemOperand {
                    addr: AddrSize::A32,
                    ..abs(0x1000)
                },
                4,
                rax
            )
        );
        assert_eq!(decode(&[0xa1, 0, 0, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn zero_and_sign_extending_loads() {
        let at_rdx = mem(Base::Reg(2), None, 0);
        let ext = |bytes, dest, dest_bytes, extend| Op::MmioRead {
            mem: at_rdx,
            bytes,
            dest: Reg::Gpr(dest),
            dest_bytes,
            extend,
        };
        // movzx eax, byte ptr [rdx]
        assert_eq!(d(&[0x0f, 0xb6, 0x02]).op, ext(1, 0, 4, Extend::Zero));
        // movzx r9, word ptr [rdx]
        assert_eq!(d(&[0x4c, 0x0f, 0xb7, 0x0a]).op, ext(2, 9, 8, Extend::Zero));
        // movzx cx, byte ptr [rdx]
        assert_eq!(d(&[0x66, 0x0f, 0xb6, 0x0a]).op, ext(1, 1, 2, Extend::Zero));
        // movsx eax, byte ptr [rdx]
        assert_eq!(d(&[0x0f, 0xbe, 0x02]).op, ext(1, 0, 4, Extend::Sign));
        // movsx rax, word ptr [rdx]
        assert_eq!(d(&[0x48, 0x0f, 0xbf, 0x02]).op, ext(2, 0, 8, Extend::Sign));
    }

    #[test]
    fn prefix_rules() {
        let at_rax = mem(Base::Reg(0), None, 0);
        let rcx = Source::Reg(Reg::Gpr(1));
        // data16 mov qword ptr [rax], rcx: REX.W wins over 66.
        assert_eq!(d(&[0x66, 0x48, 0x89, 0x08]).op, write(at_rax, 8, rcx));
        // rex.W then 66: the REX is not next to the opcode, so it is ignored.
        assert_eq!(d(&[0x48, 0x66, 0x89, 0x08]).op, write(at_rax, 2, rcx));
        // cs mov dword ptr [rax], ecx: null segment overrides are accepted.
        assert_eq!(
            d(&[0x2e, 0x89, 0x08]),
            Instruction {
                len: 3,
                op: write(at_rax, 4, rcx)
            }
        );
    }

    #[test]
    fn refusals() {
        // mov dword ptr fs:[rax], ecx
        assert_eq!(
            decode(&[0x64, 0x89, 0x08]),
            Err(DecodeError::SegmentOverride(0x64))
        );
        assert_eq!(
            decode(&[0x65, 0x8b, 0x08]),
            Err(DecodeError::SegmentOverride(0x65))
        );
        // lock add dword ptr [rax], ecx
        assert_eq!(decode(&[0xf0, 0x01, 0x08]), Err(DecodeError::Lock));
        // mov eax, ecx: no memory operand.
        assert_eq!(decode(&[0x89, 0xc8]), Err(DecodeError::RegisterOperand));
        assert_eq!(decode(&[0x8b, 0xc1]), Err(DecodeError::RegisterOperand));
        // add dword ptr [rax], ecx
        assert_eq!(decode(&[0x01, 0x08]), Err(DecodeError::Unsupported(0x01)));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x66; 20]), Err(DecodeError::TooLong));
        assert_eq!(decode(&[0x48; 3]), Err(DecodeError::Truncated));
        let mut long = [0x2e; 15];
        long[14] = 0xec;
        assert_eq!(
            decode(&long),
            Ok(Instruction {
                len: 15,
                op: Op::Io {
                    dir: Direction::In,
                    port: Port::Dx,
                    size: Size::Byte
                }
            })
        );
        let mut too_long = [0x2e; 16];
        too_long[15] = 0xec;
        assert_eq!(decode(&too_long), Err(DecodeError::TooLong));
        // Truncated inside the SIB and the displacement.
        assert_eq!(decode(&[0x89, 0x04]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x89, 0x80, 0x00]), Err(DecodeError::Truncated));
    }

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly() {
        // Every 1- and 2-byte sequence, and 3-byte ones after each prefix.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for bytes in [&[a][..], &[a, b][..], &[0x66, a, b][..], &[0x48, a, b][..]] {
                    if let Ok(i) = decode(bytes) {
                        assert!(i.len <= bytes.len(), "{bytes:02x?}");
                    }
                }
            }
        }
        // Random 15-byte buffers (deterministic xorshift).
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            let mut buf = [0u8; MAX_LEN];
            for chunk in buf.chunks_mut(8) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
            }
            if let Ok(i) = decode(&buf) {
                assert!((1..=MAX_LEN).contains(&i.len));
            }
        }
    }

    #[test]
    fn linear_addresses_combine_base_index_and_displacement() {
        let regs = |r: u8| u64::from(r) * 0x100;
        let m = mem(Base::Reg(12), Some((13, 8)), -16);
        assert_eq!(m.linear(regs, 0), 0xc00 + 0xd00 * 8 - 16);
        let wrap = mem(Base::Reg(1), None, -0x200);
        assert_eq!(wrap.linear(regs, 0), (-0x100i64) as u64);
    }
}
