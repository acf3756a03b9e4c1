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
//! back on the way out. Everything else is copied as it is. Not covered here: the FPU and
//! SSE state (`KVM_GET/SET_XSAVE`), XCR0, the debug registers and the MSRs of the VMSA
//! (STAR, LSTAR, PAT, ...), which the runner moves with their own ioctls.

use super::{VmcbSegment, Vmsa};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

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
}
