//! A VMSA's register state in KVM's ioctl structs and back, for the emulated platform's
//! vCPU runner: it loads an SEV-ES vCPU's state from its [`super::VmsaSlot`] into the plain
//! KVM vCPU before `KVM_RUN` and saves it back after the exit, so the state lives in the
//! VMSA between runs.
//!
//! Segment attributes convert as SVM's VMCB holds them (`svm_set_segment`,
//! `svm_get_segment`, `arch/x86/kvm/svm/svm.c`): type in bits 3:0, S 4, DPL 6:5, P 7, AVL
//! 8, L 9, D/B 10, G 11; a segment KVM calls unusable has P clear. EFER in a VMSA carries
//! SVME (bit 12), which KVM sets in every SVM guest's VMCB (`svm_set_efer`) and which a
//! vCPU without SVM in its CPUID cannot load: it is dropped on the way into KVM and put
//! back on the way out. Everything else is copied as it is.
//!
//! The rest of the VMSA the runner moves with their own ioctls: the x87 and SSE state as
//! `KVM_GET/SET_FPU` holds it ([`Vmsa::kvm_fpu`]; the x87 registers in the VMSA's split
//! layout, as `sev_es_sync_vmsa` writes them), the debug registers ([`Vmsa::kvm_debugregs`])
//! and the MSRs the VMSA holds ([`VMSA_MSRS`], [`Vmsa::msr`]). Not moved: the upper halves
//! of the YMM registers and any AVX-512 state, which stay in KVM's own copy (the VMM never
//! touches them, so they survive a pause unchanged).

use super::{VmcbSegment, Vmsa};
use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

/// The MSRs a VMSA holds that KVM reads and writes with `KVM_GET/SET_MSRS` (AMD APM vol. 2
/// Table B-4): PAT, the SYSCALL and SYSENTER MSRs, KernelGSBase and TSC_AUX. (FS and GS
/// bases travel with the segments; EFER with the control registers.)
pub const VMSA_MSRS: [u32; 10] = [
    0x277,       // PAT
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KernelGSBase
    0xc000_0103, // TSC_AUX
];

/// EFER.SVME.
const EFER_SVME: u64 = 1 << 12;

/// A VMCB segment as KVM's `kvm_segment`.
pub fn segment_to_kvm(s: &VmcbSegment) -> kvm_segment {
    let a = s.attrib;
    let bit = |shift: u16| ((a >> shift) & 1) as u8;
    let present = bit(7);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        s: bit(4),
        dpl: ((a >> 5) & 3) as u8,
        present,
        avl: bit(8),
        l: bit(9),
        db: bit(10),
        g: bit(11),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// KVM's `kvm_segment` as a VMCB segment.
pub fn segment_from_kvm(k: &kvm_segment) -> VmcbSegment {
    let flag = |v: u8, shift: u16| u16::from(v & 1) << shift;
    let present = k.present & 1 != 0 && k.unusable == 0;
    let attrib = u16::from(k.type_ & 0xf)
        | flag(k.s, 4)
        | (u16::from(k.dpl & 3) << 5)
        | flag(u8::from(present), 7)
        | flag(k.avl, 8)
        | flag(k.l, 9)
        | flag(k.db, 10)
        | flag(k.g, 11);
    VmcbSegment::new(k.selector, attrib, k.limit, k.base)
}

fn dtable_to_kvm(s: &VmcbSegment) -> kvm_dtable {
    kvm_dtable {
        base: s.base,
        // The VMCB limit field is 32 bits; a descriptor-table limit is 16.
        limit: s.limit as u16,
        padding: [0; 3],
    }
}

fn dtable_from_kvm(d: &kvm_dtable) -> VmcbSegment {
    VmcbSegment::new(0, 0, u32::from(d.limit), d.base)
}

impl Vmsa {
    /// The general registers, RIP and RFLAGS as `KVM_SET_REGS` takes them.
    pub fn kvm_regs(&self) -> kvm_regs {
        kvm_regs {
            rax: self.rax,
            rbx: self.rbx,
            rcx: self.rcx,
            rdx: self.rdx,
            rsi: self.rsi,
            rdi: self.rdi,
            rsp: self.rsp,
            rbp: self.rbp,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip: self.rip,
            rflags: self.rflags,
        }
    }

    /// Segments, descriptor tables, control registers and EFER over `base` (which keeps
    /// what a VMSA does not hold: CR8, the APIC base, the pending-interrupt bitmap), as
    /// `KVM_SET_SREGS` takes them.
    pub fn kvm_sregs(&self, base: &kvm_sregs) -> kvm_sregs {
        kvm_sregs {
            cs: segment_to_kvm(&self.cs),
            ds: segment_to_kvm(&self.ds),
            es: segment_to_kvm(&self.es),
            fs: segment_to_kvm(&self.fs),
            gs: segment_to_kvm(&self.gs),
            ss: segment_to_kvm(&self.ss),
            tr: segment_to_kvm(&self.tr),
            ldt: segment_to_kvm(&self.ldtr),
            gdt: dtable_to_kvm(&self.gdtr),
            idt: dtable_to_kvm(&self.idtr),
            cr0: self.cr0,
            cr2: self.cr2,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer & !EFER_SVME,
            ..*base
        }
    }

    /// Takes the state `KVM_GET_REGS` and `KVM_GET_SREGS` returned into the VMSA (EFER
    /// gets SVME back); every other field is left as it was.
    pub fn update_from_kvm(&mut self, regs: &kvm_regs, sregs: &kvm_sregs) {
        self.rax = regs.rax;
        self.rbx = regs.rbx;
        self.rcx = regs.rcx;
        self.rdx = regs.rdx;
        self.rsi = regs.rsi;
        self.rdi = regs.rdi;
        self.rsp = regs.rsp;
        self.rbp = regs.rbp;
        self.r8 = regs.r8;
        self.r9 = regs.r9;
        self.r10 = regs.r10;
        self.r11 = regs.r11;
        self.r12 = regs.r12;
        self.r13 = regs.r13;
        self.r14 = regs.r14;
        self.r15 = regs.r15;
        self.rip = regs.rip;
        self.rflags = regs.rflags;
        self.cs = segment_from_kvm(&sregs.cs);
        self.ds = segment_from_kvm(&sregs.ds);
        self.es = segment_from_kvm(&sregs.es);
        self.fs = segment_from_kvm(&sregs.fs);
        self.gs = segment_from_kvm(&sregs.gs);
        self.ss = segment_from_kvm(&sregs.ss);
        self.tr = segment_from_kvm(&sregs.tr);
        self.ldtr = segment_from_kvm(&sregs.ldt);
        self.gdtr = dtable_from_kvm(&sregs.gdt);
        self.idtr = dtable_from_kvm(&sregs.idt);
        self.cr0 = sregs.cr0;
        self.cr2 = sregs.cr2;
        self.cr3 = sregs.cr3;
        self.cr4 = sregs.cr4;
        self.efer = sregs.efer | EFER_SVME;
    }
}

impl Vmsa {
    /// The x87 and SSE state as `KVM_SET_FPU` takes it. The VMSA keeps bytes 0-7 of ST0-ST7
    /// first and bytes 8-9 of each after them (`sev_es_sync_vmsa`); KVM has 16 bytes per
    /// register.
    pub fn kvm_fpu(&self) -> kvm_fpu {
        let mut fpu = kvm_fpu {
            fcw: self.x87_fcw,
            fsw: self.x87_fsw,
            ftwx: self.x87_ftw as u8,
            last_opcode: self.x87_fop,
            last_ip: self.x87_rip,
            last_dp: self.x87_dp,
            mxcsr: self.mxcsr,
            ..kvm_fpu::default()
        };
        for (i, r) in fpu.fpr.iter_mut().enumerate() {
            r[..8].copy_from_slice(&self.fpreg_x87[i * 8..i * 8 + 8]);
            r[8..10].copy_from_slice(&self.fpreg_x87[64 + i * 2..64 + i * 2 + 2]);
        }
        for (i, x) in fpu.xmm.iter_mut().enumerate() {
            x.copy_from_slice(&self.fpreg_xmm[i * 16..i * 16 + 16]);
        }
        fpu
    }

    /// Takes the state `KVM_GET_FPU` returned into the VMSA (x87 and SSE; the YMM upper
    /// halves are left as they were).
    pub fn update_fpu_from_kvm(&mut self, fpu: &kvm_fpu) {
        self.x87_fcw = fpu.fcw;
        self.x87_fsw = fpu.fsw;
        self.x87_ftw = u16::from(fpu.ftwx);
        self.x87_fop = fpu.last_opcode;
        self.x87_rip = fpu.last_ip;
        self.x87_dp = fpu.last_dp;
        self.mxcsr = fpu.mxcsr;
        for (i, r) in fpu.fpr.iter().enumerate() {
            self.fpreg_x87[i * 8..i * 8 + 8].copy_from_slice(&r[..8]);
            self.fpreg_x87[64 + i * 2..64 + i * 2 + 2].copy_from_slice(&r[8..10]);
        }
        for (i, x) in fpu.xmm.iter().enumerate() {
            self.fpreg_xmm[i * 16..i * 16 + 16].copy_from_slice(x);
        }
    }

    /// DR0-DR3, DR6 and DR7 as `KVM_SET_DEBUGREGS` takes them.
    pub fn kvm_debugregs(&self) -> kvm_debugregs {
        kvm_debugregs {
            db: [self.dr0, self.dr1, self.dr2, self.dr3],
            dr6: self.dr6,
            dr7: self.dr7,
            ..kvm_debugregs::default()
        }
    }

    /// Takes the debug registers `KVM_GET_DEBUGREGS` returned into the VMSA.
    pub fn update_debugregs_from_kvm(&mut self, d: &kvm_debugregs) {
        [self.dr0, self.dr1, self.dr2, self.dr3] = d.db;
        self.dr6 = d.dr6;
        self.dr7 = d.dr7;
    }

    /// The VMSA's value of MSR `index` (one of [`VMSA_MSRS`]).
    pub fn msr(&self, index: u32) -> Option<u64> {
        Some(match index {
            0x277 => self.g_pat,
            0x174 => self.sysenter_cs,
            0x175 => self.sysenter_esp,
            0x176 => self.sysenter_eip,
            0xc000_0081 => self.star,
            0xc000_0082 => self.lstar,
            0xc000_0083 => self.cstar,
            0xc000_0084 => self.sfmask,
            0xc000_0102 => self.kernel_gs_base,
            0xc000_0103 => u64::from(self.tsc_aux),
            _ => return None,
        })
    }

    /// Sets the VMSA's value of MSR `index`; false for an MSR the VMSA does not hold.
    pub fn set_msr(&mut self, index: u32, value: u64) -> bool {
        match index {
            0x277 => self.g_pat = value,
            0x174 => self.sysenter_cs = value,
            0x175 => self.sysenter_esp = value,
            0x176 => self.sysenter_eip = value,
            0xc000_0081 => self.star = value,
            0xc000_0082 => self.lstar = value,
            0xc000_0083 => self.cstar = value,
            0xc000_0084 => self.sfmask = value,
            0xc000_0102 => self.kernel_gs_base = value,
            0xc000_0103 => self.tsc_aux = value as u32,
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::reset::{reset_vmsa, VmmType, BSP_RESET_EIP};
    use super::*;

    /// QEMU's reset CS (`x86_cpu_reset`: P, S, CS, R, A) is the VMSA's 0x9b.
    #[test]
    fn reset_segments_are_what_qemu_sets() {
        let v = reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::Qemu);
        let s = v.kvm_sregs(&kvm_sregs::default());
        assert_eq!(
            (
                s.cs.selector,
                s.cs.base,
                s.cs.limit,
                s.cs.type_,
                s.cs.s,
                s.cs.present
            ),
            (0xf000, 0xffff_0000, 0xffff, 0xb, 1, 1)
        );
        assert_eq!((s.tr.type_, s.tr.s, s.tr.present), (0xb, 0, 1));
        assert_eq!((s.ldt.type_, s.ldt.present), (0x2, 1));
        assert_eq!((s.gdt.limit, s.idt.limit), (0xffff, 0xffff));
        assert_eq!((s.efer, s.cr0, s.cr4), (0, 0x10, 0x40));
        let r = v.kvm_regs();
        assert_eq!((r.rip, r.rdx, r.rflags), (0xfff0, 0x800f12, 2));
    }

    #[test]
    fn state_round_trips_through_kvm() {
        for v in [
            reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::Qemu),
            reset_vmsa(0x80b004, 0xa00f11, VmmType::Ec2),
        ] {
            let mut back = Vmsa::zeroed();
            back.update_from_kvm(&v.kvm_regs(), &v.kvm_sregs(&kvm_sregs::default()));
            // What the conversion does not carry stays as it was in `back` (zero).
            let fields: Vec<_> = back.diff(&v).into_iter().map(|d| d.field).collect();
            assert!(
                fields
                    .iter()
                    .all(|f| ["dr7", "dr6", "g_pat", "xcr0", "mxcsr", "x87_fcw"].contains(f)),
                "{fields:?}"
            );
        }
        // A 64-bit user-mode state, unusable segments included.
        let mut v = Vmsa::zeroed();
        v.cs = VmcbSegment::new(0x23, 0x2fb, 0xffff_ffff, 0);
        v.ss = VmcbSegment::new(0x1b, 0xcf3, 0xffff_ffff, 0);
        v.ds = VmcbSegment::new(0, 0, 0, 0);
        v.efer = 0x1d00;
        v.cr0 = 0x8000_0033;
        v.cr3 = 0x1000;
        v.cr4 = 0x620;
        v.rip = 0x40_1000;
        v.r15 = 15;
        let k = v.kvm_sregs(&kvm_sregs::default());
        assert_eq!((k.cs.l, k.cs.dpl, k.cs.present), (1, 3, 1));
        assert_eq!((k.ds.present, k.ds.unusable), (0, 1));
        assert_eq!(k.efer, 0xd00, "SVME stays out of KVM");
        let mut back = Vmsa::zeroed();
        back.update_from_kvm(&v.kvm_regs(), &k);
        assert_eq!(back, v);
        // KVM's own base fields are kept.
        let base = kvm_sregs {
            apic_base: 0xfee0_0900,
            cr8: 3,
            ..Default::default()
        };
        let k = v.kvm_sregs(&base);
        assert_eq!((k.apic_base, k.cr8), (0xfee0_0900, 3));
    }

    #[test]
    fn fpu_state_uses_the_vmsa_split_x87_layout_and_round_trips() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x3800,
            ftwx: 0x81,
            last_opcode: 0x1d9,
            last_ip: 0x40_1234,
            last_dp: 0x80_0000,
            mxcsr: 0x1fa0,
            ..kvm_fpu::default()
        };
        for (i, r) in fpu.fpr.iter_mut().enumerate() {
            for (j, b) in r.iter_mut().enumerate().take(10) {
                *b = (i * 16 + j) as u8 + 1;
            }
        }
        for (i, x) in fpu.xmm.iter_mut().enumerate() {
            x.fill(0xa0 + i as u8);
        }
        let mut v = reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::Qemu);
        v.fpreg_ymm[7] = 0x77;
        v.update_fpu_from_kvm(&fpu);
        // ST1 bytes 0-7 at 8..16, bytes 8-9 at 66..68 (`sev_es_sync_vmsa`).
        assert_eq!(&v.fpreg_x87[8..16], &fpu.fpr[1][..8]);
        assert_eq!(&v.fpreg_x87[66..68], &fpu.fpr[1][8..10]);
        assert_eq!(&v.fpreg_xmm[16..32], &[0xa1; 16]);
        assert_eq!((v.mxcsr, v.x87_fcw, v.x87_ftw), (0x1fa0, 0x37f, 0x81));
        assert_eq!(
            v.fpreg_ymm[7], 0x77,
            "YMM upper halves are not KVM_GET_FPU's"
        );
        assert_eq!(v.kvm_fpu(), fpu);
    }

    #[test]
    fn debug_registers_and_msrs_round_trip() {
        let mut v = Vmsa::zeroed();
        let d = kvm_debugregs {
            db: [1, 2, 3, 4],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            ..Default::default()
        };
        v.update_debugregs_from_kvm(&d);
        assert_eq!(v.kvm_debugregs(), d);
        for (i, &m) in VMSA_MSRS.iter().enumerate() {
            assert!(v.set_msr(m, 0x1000 + i as u64));
            assert_eq!(v.msr(m), Some(0x1000 + i as u64));
        }
        assert_eq!(v.g_pat, 0x1000);
        assert_eq!(v.tsc_aux, 0x1009);
        assert!(!v.set_msr(0xc000_0080, 0), "EFER travels with the sregs");
        assert_eq!(v.msr(0x10), None);
    }
}
