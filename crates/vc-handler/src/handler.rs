//! The #VC handler core: from an exception frame and the instruction bytes at RIP to a
//! served exit, as edk2's `CcExitVcHandler` / `InternalVmgExitHandleVc` do.
//!
//! The error code of a #VC is the exit code of the intercepted event. The handler serves:
//! CPUID (0x72), RDMSR/WRMSR (0x7c), IN/OUT (0x7b), VMMCALL (0x81), and MMIO, which
//! arrives as a nested page fault (0x400) on a GPA without memory. It decodes the
//! instruction, checks that it is one that raises that exit, asks the hypervisor through
//! the GHCB, writes the result into the frame with the architectural register rules, and
//! advances RIP past the instruction. On any error the frame is left untouched, so the
//! caller can report the #VC as a fatal fault at the faulting instruction.
//!
//! Refused, with a clear error: other exit codes (RDTSC, RDPMC, DR7, WBINVD, MONITOR,
//! MWAIT, INVD: the firmware executes none of them); INS/OUTS (the firmware never uses
//! string I/O, and serving it means copying guest memory of the host's choosing through
//! the shared buffer); MMIO whose address the environment does not allow.

use crate::{
    client::{GhcbClient, Vmgexit},
    decode::{self, DecodeError, Extend, Op, Port, Source},
    frame::VcFrame,
};
use guest_abi::ghcb::{ioio::Direction, ExitCode, GhcbError};

/// What the handler needs from its environment besides the GHCB.
pub trait VcEnv {
    /// The GPA behind linear address `linear` if an MMIO access of `len` bytes there may
    /// go to the host, `None` to refuse it. Must refuse anything that is private guest
    /// memory: a hypervisor could otherwise fake an NPF #VC to make the guest copy a
    /// register into the shared buffer (edk2 checks the same, `ValidateMmioMemory`).
    fn mmio_gpa(&self, linear: u64, len: usize) -> Option<u64>;
    /// XCR0, sent with CPUID leaf 0xD.
    fn xcr0(&self) -> u64;
}

/// Why a #VC was not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcError {
    /// The error code names an exit this handler does not serve.
    UnsupportedExit(u64),
    /// The instruction bytes do not decode.
    Decode(DecodeError),
    /// The instruction is not one that raises this exit (a #VC the CPU would not raise).
    Mismatch {
        /// The #VC error code.
        exit: u64,
    },
    /// INS/OUTS are refused.
    StringIo,
    /// The environment refused the MMIO address.
    MmioRefused {
        /// Linear address of the access.
        linear: u64,
    },
    /// The hypervisor refused or failed the request (for
    /// [`GhcbError::Exception`]: the guest should raise that exception).
    Ghcb(GhcbError),
}

impl From<GhcbError> for VcError {
    fn from(e: GhcbError) -> Self {
        VcError::Ghcb(e)
    }
}

impl core::fmt::Display for VcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            VcError::UnsupportedExit(c) => write!(f, "#VC for exit {c:#x} is not served"),
            VcError::Decode(e) => write!(f, "#VC instruction: {e}"),
            VcError::Mismatch { exit } => {
                write!(
                    f,
                    "#VC for exit {exit:#x} at an instruction that cannot raise it"
                )
            }
            VcError::StringIo => f.write_str("#VC for INS/OUTS: string I/O is not served"),
            VcError::MmioRefused { linear } => {
                write!(f, "#VC for MMIO at {linear:#x}, which is not shared MMIO")
            }
            VcError::Ghcb(e) => write!(f, "#VC: {e}"),
        }
    }
}

fn sign_extend(value: u64, bytes: u8) -> u64 {
    let shift = 64 - 8 * u32::from(bytes);
    (((value << shift) as i64) >> shift) as u64
}

/// Serves the #VC described by `frame`, with `insn` the bytes at `frame.rip` (up to 15).
pub fn handle<T: Vmgexit>(
    frame: &mut VcFrame,
    insn: &[u8],
    ghcb: &mut GhcbClient<T>,
    env: &impl VcEnv,
) -> Result<(), VcError> {
    let exit = ExitCode(frame.error_code);
    if ![
        ExitCode::CPUID,
        ExitCode::MSR,
        ExitCode::IOIO,
        ExitCode::VMMCALL,
        ExitCode::NPF,
    ]
    .contains(&exit)
    {
        return Err(VcError::UnsupportedExit(exit.0));
    }
    let insn = decode::decode(insn).map_err(VcError::Decode)?;
    let next_rip = frame.rip.wrapping_add(insn.len as u64);
    let mismatch = VcError::Mismatch { exit: exit.0 };
    match insn.op {
        Op::Cpuid if exit == ExitCode::CPUID => {
            let r = ghcb.cpuid(frame.rax as u32, frame.rcx as u32, env.xcr0())?;
            for (reg, v) in [0u8, 3, 1, 2].into_iter().zip(r) {
                frame.write(decode::Reg::Gpr(reg), 4, v.into());
            }
        }
        Op::Rdmsr if exit == ExitCode::MSR => {
            let v = ghcb.rdmsr(frame.rcx as u32)?;
            frame.write(decode::Reg::Gpr(0), 4, v);
            frame.write(decode::Reg::Gpr(2), 4, v >> 32);
        }
        Op::Wrmsr if exit == ExitCode::MSR => {
            let v = (frame.rdx << 32) | (frame.rax & 0xffff_ffff);
            ghcb.wrmsr(frame.rcx as u32, v)?;
        }
        Op::Vmmcall if exit == ExitCode::VMMCALL => {
            let args = [frame.rbx, frame.rcx, frame.rdx, frame.rsi];
            frame.rax = ghcb.vmmcall(frame.rax, args, frame.cpl())?;
        }
        Op::Io { dir, port, size } if exit == ExitCode::IOIO => {
            let port = match port {
                Port::Imm(p) => u16::from(p),
                Port::Dx => frame.rdx as u16,
            };
            let bytes = size.bytes() as u8;
            match dir {
                Direction::In => {
                    let v = ghcb.io_in(port, size)?;
                    frame.write(decode::Reg::Gpr(0), bytes, v.into());
                }
                Direction::Out => ghcb.io_out(port, size, frame.rax as u32)?,
            }
        }
        Op::StringIo { .. } if exit == ExitCode::IOIO => return Err(VcError::StringIo),
        Op::MmioRead {
            mem,
            bytes,
            dest,
            dest_bytes,
            extend,
        } if exit == ExitCode::NPF => {
            let linear = mem.linear(|r| frame.gpr(r), next_rip);
            let n = usize::from(bytes);
            let gpa = env
                .mmio_gpa(linear, n)
                .ok_or(VcError::MmioRefused { linear })?;
            let mut buf = [0u8; 8];
            ghcb.mmio_read(gpa, &mut buf[..n])?;
            let raw = u64::from_le_bytes(buf);
            let value = match extend {
                Extend::None | Extend::Zero => raw,
                Extend::Sign => sign_extend(raw, bytes),
            };
            frame.write(dest, dest_bytes, value);
        }
        Op::MmioWrite { mem, bytes, src } if exit == ExitCode::NPF => {
            let linear = mem.linear(|r| frame.gpr(r), next_rip);
            let n = usize::from(bytes);
            let gpa = env
                .mmio_gpa(linear, n)
                .ok_or(VcError::MmioRefused { linear })?;
            let value = match src {
                Source::Reg(r) => frame.read(r, bytes),
                Source::Imm(v) => v,
            };
            ghcb.mmio_write(gpa, &value.to_le_bytes()[..n])?;
        }
        _ => return Err(mismatch),
    }
    frame.rip = next_rip;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{client, GHCB_GPA};
    use guest_abi::ghcb::{
        ioio::{IoioInfo, Size},
        result, EventInjection, Field, Ghcb,
    };

    /// Identity-mapped; MMIO only on the services page.
    struct Env;
    const MMIO: u64 = 0xfe00_0000;
    impl VcEnv for Env {
        fn mmio_gpa(&self, linear: u64, len: usize) -> Option<u64> {
            (linear >= MMIO && linear + len as u64 <= MMIO + 0x1000).then_some(linear)
        }
        fn xcr0(&self) -> u64 {
            1
        }
    }

    const RIP: u64 = 0x40_1000;

    fn frame(exit: ExitCode) -> VcFrame {
        VcFrame {
            vector: 29,
            error_code: exit.0,
            rip: RIP,
            cs: 0x23,
            // Garbage in every register's upper half shows what the handler keeps.
            rax: 0xaaaa_aaaa_0000_0000,
            rbx: 0xbbbb_bbbb_0000_0000,
            rcx: 0xcccc_cccc_0000_0000,
            rdx: 0xdddd_dddd_0000_0000,
            ..VcFrame::default()
        }
    }

    fn no_exit(_: &Ghcb, _: &mut Ghcb) {
        panic!("the handler must not exit to the hypervisor here")
    }

    #[test]
    fn cpuid_fills_eax_to_edx_and_steps_over() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.get(Field::Rax), 0x8000_001f, "leaf from EAX only");
            assert_eq!(req.get(Field::Rcx), 0);
            reply.set(Field::Rax, 0b10);
            reply.set(Field::Rbx, 0x33);
            reply.set(Field::Rcx, 15);
            reply.set(Field::Rdx, 1);
        });
        let mut f = frame(ExitCode::CPUID);
        f.rax |= 0x8000_001f;
        handle(&mut f, &[0x0f, 0xa2, 0xcc], &mut c, &Env).unwrap();
        assert_eq!((f.rax, f.rbx, f.rcx, f.rdx), (0b10, 0x33, 15, 1));
        assert_eq!(f.rip, RIP + 2);
    }

    #[test]
    fn rdmsr_splits_into_edx_eax_and_wrmsr_joins_them() {
        let mut c = client(
            |req: &Ghcb, reply: &mut Ghcb| match req.get(Field::SwExitInfo1) {
                0 => {
                    assert_eq!(req.get(Field::Rcx), 0xc001_0131);
                    reply.set(Field::Rax, 3);
                    reply.set(Field::Rdx, 0x8000_0000);
                }
                _ => assert_eq!(
                    (
                        req.get(Field::Rcx),
                        req.get(Field::Rax),
                        req.get(Field::Rdx)
                    ),
                    (0x6e0, 0x1234_5678, 0x9)
                ),
            },
        );
        let mut f = frame(ExitCode::MSR);
        f.rcx |= 0xc001_0131;
        handle(&mut f, &[0x0f, 0x32], &mut c, &Env).unwrap();
        assert_eq!((f.rax, f.rdx, f.rip), (3, 0x8000_0000, RIP + 2));

        let mut f = frame(ExitCode::MSR);
        f.rcx = 0x6e0;
        f.rax |= 0x1234_5678;
        f.rdx = 9;
        handle(&mut f, &[0x0f, 0x30], &mut c, &Env).unwrap();
        assert_eq!(f.rax, 0xaaaa_aaaa_1234_5678, "WRMSR changes no register");
        assert_eq!(f.rip, RIP + 2);
    }

    #[test]
    fn in_and_out_in_every_form() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            let io = IoioInfo::decode(req.get(Field::SwExitInfo1)).unwrap();
            match io.dir {
                Direction::In => {
                    assert_eq!(io.port, if io.size == Size::Dword { 0x71 } else { 0x510 });
                    reply.set(Field::Rax, 0x1122_3344_5566_7788);
                }
                Direction::Out => {
                    let want = match io.size {
                        Size::Byte => 0x41,
                        Size::Word => 0x4241,
                        Size::Dword => 0x4443_4241,
                    };
                    assert_eq!((io.port, req.get(Field::Rax)), (0x3f8, want));
                }
            }
        });
        // in al, dx (DX's upper bits are not part of the port)
        let mut f = frame(ExitCode::IOIO);
        f.rdx |= 0x510;
        handle(&mut f, &[0xec], &mut c, &Env).unwrap();
        assert_eq!((f.rax, f.rip), (0xaaaa_aaaa_0000_0088, RIP + 1));
        // in ax, dx keeps bits 63:16
        let mut f = frame(ExitCode::IOIO);
        f.rdx |= 0x510;
        handle(&mut f, &[0x66, 0xed], &mut c, &Env).unwrap();
        assert_eq!(f.rax, 0xaaaa_aaaa_0000_7788);
        // in eax, 0x71 clears bits 63:32
        let mut f = frame(ExitCode::IOIO);
        handle(&mut f, &[0xe5, 0x71], &mut c, &Env).unwrap();
        assert_eq!((f.rax, f.rip), (0x5566_7788, RIP + 2));
        // out dx, al / out dx, ax / out dx, eax
        for (bytes, len) in [(&[0xee][..], 1), (&[0x66, 0xef][..], 2), (&[0xef][..], 1)] {
            let mut f = frame(ExitCode::IOIO);
            f.rax |= 0x4443_4241;
            f.rdx = 0x3f8;
            handle(&mut f, bytes, &mut c, &Env).unwrap();
            assert_eq!(f.rip, RIP + len);
            assert_eq!(f.rax, 0xaaaa_aaaa_4443_4241);
        }
        assert_eq!(c.transport().count, 6);
    }

    #[test]
    fn string_io_is_refused_without_an_exit() {
        let mut c = client(no_exit);
        let mut f = frame(ExitCode::IOIO);
        let before = f;
        assert_eq!(
            handle(&mut f, &[0xf3, 0x6c], &mut c, &Env),
            Err(VcError::StringIo)
        );
        assert_eq!(f, before);
    }

    #[test]
    fn mmio_writes_send_the_source_at_the_decoded_address() {
        let mut c = client(|req: &Ghcb, _: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::MMIO_WRITE));
            let len = req.get(Field::SwExitInfo2);
            let data = &req.shared_buffer()[req.scratch(GHCB_GPA, len).unwrap()];
            match req.get(Field::SwExitInfo1) {
                0xfe00_0000 => assert_eq!(data, &0x4443_4241u32.to_le_bytes()),
                0xfe00_0008 => assert_eq!(data, &[0x42]),
                0xfe00_0010 => assert_eq!(data, &(-2i64).to_le_bytes()),
                0xfe00_0106 => assert_eq!(data, &7u32.to_le_bytes()),
                0xfe00_0080 => assert_eq!(data, &0xaaaa_aaaa_4443_4241u64.to_le_bytes()),
                other => panic!("unexpected GPA {other:#x}"),
            }
        });
        // mov dword ptr [rbx], eax
        let mut f = frame(ExitCode::NPF);
        f.rbx = MMIO;
        f.rax |= 0x4443_4241;
        handle(&mut f, &[0x89, 0x03], &mut c, &Env).unwrap();
        assert_eq!(f.rip, RIP + 2);
        // mov byte ptr [rsp+rcx*2+4], ah
        let mut f = frame(ExitCode::NPF);
        f.rax |= 0x4241;
        f.rsp = MMIO;
        f.rcx = 2;
        handle(&mut f, &[0x88, 0x64, 0x4c, 0x04], &mut c, &Env).unwrap();
        // mov qword ptr [rax], -2 (rax points at MMIO + 0x10)
        let mut f = frame(ExitCode::NPF);
        f.rax = MMIO + 0x10;
        handle(
            &mut f,
            &[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff],
            &mut c,
            &Env,
        )
        .unwrap();
        assert_eq!(f.rip, RIP + 7);
        // mov dword ptr [rip+0x20], 7: RIP-relative from the end of the instruction.
        let mut f = frame(ExitCode::NPF);
        f.rip = MMIO + 0x106 - 0x20 - 10;
        handle(
            &mut f,
            &[0xc7, 0x05, 0x20, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00],
            &mut c,
            &Env,
        )
        .unwrap();
        // movabs qword ptr [0xfe000080], rax
        let mut f = frame(ExitCode::NPF);
        f.rax |= 0x4443_4241;
        let mut insn = [0x48, 0xa3, 0, 0, 0, 0, 0, 0, 0, 0];
        insn[2..].copy_from_slice(&(MMIO + 0x80).to_le_bytes());
        handle(&mut f, &insn, &mut c, &Env).unwrap();
        assert_eq!(f.rip, RIP + 10);
        assert_eq!(c.transport().count, 5);
    }

    #[test]
    fn mmio_reads_write_the_destination_with_width_and_extension() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::MMIO_READ));
            let len = req.get(Field::SwExitInfo2);
            let range = req.scratch(GHCB_GPA, len).unwrap();
            let value = 0xf1f2_f3f4_f5f6_f7f8u64.to_le_bytes();
            reply.shared_buffer_mut()[range].copy_from_slice(&value[..len as usize]);
        });
        let run = |c: &mut GhcbClient<_>, insn: &[u8], setup: fn(&mut VcFrame)| {
            let mut f = frame(ExitCode::NPF);
            setup(&mut f);
            handle(&mut f, insn, c, &Env).unwrap();
            assert_eq!(f.rip, RIP + insn.len() as u64);
            f
        };
        // mov r11, qword ptr [r8+0x40]
        let f = run(&mut c, &[0x4d, 0x8b, 0x58, 0x40], |f| f.r8 = MMIO);
        assert_eq!(f.r11, 0xf1f2_f3f4_f5f6_f7f8);
        // mov ecx, dword ptr [rax]: clears bits 63:32
        let f = run(&mut c, &[0x8b, 0x08], |f| f.rax = MMIO);
        assert_eq!(f.rcx, 0xf5f6_f7f8);
        // mov cx, word ptr [rax]: keeps bits 63:16
        let f = run(&mut c, &[0x66, 0x8b, 0x08], |f| f.rax = MMIO);
        assert_eq!(f.rcx, 0xcccc_cccc_0000_f7f8);
        // mov bh, byte ptr [rdx+1]
        let f = run(&mut c, &[0x8a, 0x7a, 0x01], |f| f.rdx = MMIO);
        assert_eq!(f.rbx, 0xbbbb_bbbb_0000_f800);
        // movzx r9, word ptr [rdx]
        let f = run(&mut c, &[0x4c, 0x0f, 0xb7, 0x0a], |f| {
            f.rdx = MMIO;
            f.r9 = u64::MAX;
        });
        assert_eq!(f.r9, 0xf7f8);
        // movsx rax, word ptr [rdx]
        let f = run(&mut c, &[0x48, 0x0f, 0xbf, 0x02], |f| f.rdx = MMIO);
        assert_eq!(f.rax, 0xffff_ffff_ffff_f7f8);
        // movsx eax, byte ptr [rdx]: sign-extends to 32 bits, clears the rest
        let f = run(&mut c, &[0x0f, 0xbe, 0x02], |f| f.rdx = MMIO);
        assert_eq!(f.rax, 0xffff_fff8);
        // movabs al, byte ptr [0xfe000008]
        let f = run(
            &mut c,
            &[0xa0, 0x08, 0x00, 0x00, 0xfe, 0x00, 0x00, 0x00, 0x00],
            |_| {},
        );
        assert_eq!(f.rax, 0xaaaa_aaaa_0000_00f8);
    }

    #[test]
    fn mmio_outside_the_allowed_range_is_refused_before_any_exit() {
        let mut c = client(no_exit);
        let mut f = frame(ExitCode::NPF);
        f.rax = 0x10_0000; // private RAM
        let before = f;
        assert_eq!(
            handle(&mut f, &[0x89, 0x08], &mut c, &Env),
            Err(VcError::MmioRefused { linear: 0x10_0000 })
        );
        // A store that straddles the end of the MMIO page.
        f.rax = MMIO + 0xffc;
        assert_eq!(
            handle(&mut f, &[0x48, 0x89, 0x08], &mut c, &Env),
            Err(VcError::MmioRefused {
                linear: MMIO + 0xffc
            })
        );
        f.rax = before.rax;
        assert_eq!(f, before);
    }

    #[test]
    fn vmmcall_passes_kvm_arguments_and_returns_rax() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(
                [
                    req.get(Field::Rax),
                    req.get(Field::Rbx),
                    req.get(Field::Rcx),
                    req.get(Field::Rdx),
                    req.get(Field::Rsi),
                    req.get(Field::Cpl)
                ],
                [12, 0x81_0000, 32, 0, 0x5151, 3]
            );
            reply.set(Field::Rax, (-22i64) as u64);
        });
        let mut f = frame(ExitCode::VMMCALL);
        (f.rax, f.rbx, f.rcx, f.rdx, f.rsi) = (12, 0x81_0000, 32, 0, 0x5151);
        handle(&mut f, &[0x0f, 0x01, 0xd9], &mut c, &Env).unwrap();
        assert_eq!((f.rax, f.rip), ((-22i64) as u64, RIP + 3));
    }

    #[test]
    fn instructions_that_cannot_raise_the_exit_are_refused() {
        let mut c = client(no_exit);
        for (exit, insn) in [
            (ExitCode::CPUID, &[0xec][..]),
            (ExitCode::IOIO, &[0x0f, 0xa2][..]),
            (ExitCode::MSR, &[0x89, 0x08][..]),
            (ExitCode::NPF, &[0x0f, 0x32][..]),
            (ExitCode::VMMCALL, &[0x0f, 0xa2][..]),
        ] {
            let mut f = frame(exit);
            assert_eq!(
                handle(&mut f, insn, &mut c, &Env),
                Err(VcError::Mismatch { exit: exit.0 }),
                "{exit:?}"
            );
            assert_eq!(f.rip, RIP);
        }
        let mut f = frame(ExitCode::NPF);
        assert_eq!(
            handle(&mut f, &[0x89, 0xc8], &mut c, &Env),
            Err(VcError::Decode(DecodeError::RegisterOperand))
        );
    }

    #[test]
    fn unserved_exit_codes_are_refused_without_decoding() {
        let mut c = client(no_exit);
        for code in [0x6e, 0x6f, 0x37, 0x89, 0x8000_0001, 0] {
            let mut f = frame(ExitCode(code));
            assert_eq!(
                handle(&mut f, &[0x0f, 0x31], &mut c, &Env),
                Err(VcError::UnsupportedExit(code))
            );
        }
    }

    #[test]
    fn hypervisor_errors_leave_the_frame_untouched() {
        let mut c = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::SwExitInfo1, result::ISSUE_EXCEPTION);
            reply.set(Field::SwExitInfo2, EventInjection::GP.0);
        });
        let mut f = frame(ExitCode::MSR);
        let before = f;
        assert_eq!(
            handle(&mut f, &[0x0f, 0x32], &mut c, &Env),
            Err(VcError::Ghcb(GhcbError::Exception(EventInjection::GP)))
        );
        assert_eq!(f, before);
        let mut m = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::SwExitInfo1, result::MALFORMED_INPUT);
            reply.set(Field::SwExitInfo2, 3);
        });
        let mut f = frame(ExitCode::NPF);
        f.rax = MMIO;
        assert_eq!(
            handle(&mut f, &[0x8b, 0x08], &mut m, &Env),
            Err(VcError::Ghcb(GhcbError::Malformed(3)))
        );
        assert_eq!(f.rip, RIP);
    }
}
