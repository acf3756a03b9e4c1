//! The exception frame of a #VC, as the firmware's vector-29 stub leaves it on the stack.
//!
//! The CPU pushes SS, RSP, RFLAGS, CS, RIP and the error code (for #VC: the exit code);
//! the stub pushes the vector, as every stub of boot.s does, then the fifteen
//! general-purpose registers from RAX down to R15, and passes the stack pointer. The
//! handler reads and writes the interrupted registers here; the stub pops them back and
//! returns with IRETQ to the (advanced) RIP.

use crate::decode::Reg;

/// The saved state of the interrupted code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VcFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    /// 29 for #VC.
    pub vector: u64,
    /// The exit code of the intercepted event (CPUID 0x72, IOIO 0x7b, MSR 0x7c, VMMCALL
    /// 0x81, NPF 0x400 for MMIO, ...).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Size of the frame.
pub const FRAME_SIZE: usize = 0xb0;
/// Offset of RAX (the first register the stub pushes).
pub const RAX_OFFSET: usize = 0x70;
/// Offset of the vector.
pub const VECTOR_OFFSET: usize = 0x78;
/// Offset of the error code (the CPU's part of the frame starts here).
pub const ERROR_CODE_OFFSET: usize = 0x80;

const _: () = assert!(core::mem::size_of::<VcFrame>() == FRAME_SIZE);
const _: () = assert!(core::mem::offset_of!(VcFrame, r15) == 0);
const _: () = assert!(core::mem::offset_of!(VcFrame, r8) == 0x38);
const _: () = assert!(core::mem::offset_of!(VcFrame, rax) == RAX_OFFSET);
const _: () = assert!(core::mem::offset_of!(VcFrame, vector) == VECTOR_OFFSET);
const _: () = assert!(core::mem::offset_of!(VcFrame, error_code) == ERROR_CODE_OFFSET);
const _: () = assert!(core::mem::offset_of!(VcFrame, rip) == 0x88);
const _: () = assert!(core::mem::offset_of!(VcFrame, ss) == 0xa8);

fn mask(bytes: u8) -> u64 {
    match bytes {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

impl VcFrame {
    /// General-purpose register `n` by x86 number (0 = RAX ... 4 = RSP ... 15 = R15); RSP
    /// is the interrupted stack pointer.
    pub fn gpr(&self, n: u8) -> u64 {
        match n & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => self.rsp,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }

    fn gpr_mut(&mut self, n: u8) -> &mut u64 {
        match n & 15 {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            4 => &mut self.rsp,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            _ => &mut self.r15,
        }
    }

    /// The low `bytes` bytes of a register operand.
    pub fn read(&self, reg: Reg, bytes: u8) -> u64 {
        match reg {
            Reg::Gpr(n) => self.gpr(n) & mask(bytes),
            Reg::HighByte(n) => (self.gpr(n) >> 8) & 0xff,
        }
    }

    /// Writes `value` to a register operand of `bytes` bytes with the architectural
    /// rules: 8- and 16-bit writes keep the other bits, a 32-bit write clears bits 63:32,
    /// a 64-bit write replaces the register.
    pub fn write(&mut self, reg: Reg, bytes: u8, value: u64) {
        match reg {
            Reg::HighByte(n) => {
                let r = self.gpr_mut(n);
                *r = (*r & !0xff00) | ((value & 0xff) << 8);
            }
            Reg::Gpr(n) => {
                let r = self.gpr_mut(n);
                *r = match bytes {
                    1 | 2 => (*r & !mask(bytes)) | (value & mask(bytes)),
                    4 => value & 0xffff_ffff,
                    _ => value,
                };
            }
        }
    }

    /// The privilege level the #VC came from.
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered() -> VcFrame {
        let mut f = VcFrame::default();
        for n in 0..16 {
            *f.gpr_mut(n) = 0x1111_1111_1111_1111 * u64::from(n);
        }
        f
    }

    #[test]
    fn registers_are_found_by_x86_number() {
        let f = numbered();
        assert_eq!(f.rax, 0);
        assert_eq!(f.rcx, 0x1111_1111_1111_1111);
        assert_eq!(f.rsp, 0x4444_4444_4444_4444);
        assert_eq!(f.r8, 0x8888_8888_8888_8888);
        assert_eq!(f.r15, 0xffff_ffff_ffff_ffff);
        for n in 0..16 {
            assert_eq!(f.gpr(n), 0x1111_1111_1111_1111 * u64::from(n));
        }
    }

    #[test]
    fn writes_follow_the_partial_register_rules() {
        let mut f = VcFrame {
            rax: 0x1122_3344_5566_7788,
            rbx: 0x1122_3344_5566_7788,
            ..VcFrame::default()
        };
        f.write(Reg::Gpr(0), 1, 0xaa);
        assert_eq!(f.rax, 0x1122_3344_5566_77aa);
        f.write(Reg::Gpr(0), 2, 0xbbcc);
        assert_eq!(f.rax, 0x1122_3344_5566_bbcc);
        f.write(Reg::HighByte(0), 1, 0x1ee);
        assert_eq!(f.rax, 0x1122_3344_5566_eecc);
        f.write(Reg::Gpr(0), 4, 0xffff_ffff_dead_beef);
        assert_eq!(f.rax, 0xdead_beef, "a 32-bit write clears the upper half");
        f.write(Reg::Gpr(3), 8, 7);
        assert_eq!(f.rbx, 7);
        assert_eq!(f.read(Reg::HighByte(0), 1), 0xbe);
        assert_eq!(f.read(Reg::Gpr(0), 2), 0xbeef);
    }
}
