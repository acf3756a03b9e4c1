//! The VMSA of a vCPU that starts in 32-bit flat protected mode rather than at a reset
//! vector: a mirror VM's helper vCPU, whose VMSA an SEV-ES launch measures after the
//! guest's (docs/architecture.md §3.2, Helper vCPUs).
//!
//! Only the reset state's mode-defining fields change (CS, the data segments, CR0.PE, RIP,
//! RSP); everything a VMM does not choose (EFER.SVME, CR4.MCE, the debug registers, PAT,
//! XCR0, the x87/SSE control words of the VMM type) is what the reset VMSAs hold, since
//! KVM builds both from a freshly created vCPU (`sev_es_sync_vmsa`). RDX carries nothing
//! in (a reset vCPU's holds the CPU signature QEMU loads; a helper's entry reads no
//! register).

use super::{reset::reset_vmsa, VmcbSegment, VmmType, Vmsa};

/// VMCB attributes (type, S, DPL, P, AVL, L, D/B, G) of a 32-bit flat code segment:
/// execute/read, accessed, present, DPL 0, D/B = 1, G = 1 (descriptor 0x00cf9b00_0000ffff).
pub const FLAT32_CODE_ATTRIB: u16 = 0xc9b;
/// VMCB attributes of a flat data segment: read/write, accessed, present, DPL 0, B = 1,
/// G = 1 (descriptor 0x00cf9300_0000ffff).
pub const FLAT32_DATA_ATTRIB: u16 = 0xc93;
/// CR0 of the entry: PE | ET, paging off.
pub const FLAT32_CR0: u64 = 0x11;

/// Where and how a vCPU starts in 32-bit flat protected mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flat32Entry {
    /// Linear address of the first instruction (below 4 GiB).
    pub rip: u32,
    /// CS selector.
    pub code_selector: u16,
    /// DS, ES, FS, GS and SS selector.
    pub data_selector: u16,
    /// Initial RSP.
    pub rsp: u64,
}

/// The VMSA of a vCPU that starts at `entry` under `vmm` (whose reset state decides the
/// x87/SSE control words, as for the reset VMSAs).
pub fn flat32_vmsa(entry: &Flat32Entry, vmm: VmmType) -> Vmsa {
    // The reset VMSA of the same VMM type, with no signature in RDX.
    let mut v = reset_vmsa(entry.rip, 0, vmm);
    let data = VmcbSegment::new(entry.data_selector, FLAT32_DATA_ATTRIB, u32::MAX, 0);
    v.cs = VmcbSegment::new(entry.code_selector, FLAT32_CODE_ATTRIB, u32::MAX, 0);
    v.ds = data;
    v.es = data;
    v.fs = data;
    v.gs = data;
    v.ss = data;
    v.cr0 = FLAT32_CR0;
    v.rip = u64::from(entry.rip);
    v.rsp = entry.rsp;
    v.rdx = 0;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Flat32Entry {
        Flat32Entry {
            rip: 0xfff0_2340,
            code_selector: 0x28,
            data_selector: 0x10,
            rsp: 0x105_2000,
        }
    }

    #[test]
    fn a_helper_vmsa_differs_from_a_reset_vmsa_only_in_its_mode_and_entry() {
        let v = flat32_vmsa(&entry(), VmmType::Qemu);
        let reset = reset_vmsa(0xffff_fff0, 0x800f12, VmmType::Qemu);
        let names: Vec<_> = reset.diff(&v).into_iter().map(|d| d.field).collect();
        assert_eq!(
            names,
            ["es", "cs", "ss", "ds", "fs", "gs", "cr0", "rip", "rsp", "rdx"]
        );
        assert_eq!((v.cs.base, v.cs.limit, v.cs.attrib), (0, u32::MAX, 0xc9b));
        assert_eq!((v.rip, v.rsp, v.cr0), (0xfff0_2340, 0x105_2000, 0x11));
        assert_eq!(v.efer, 0x1000, "SVME, as KVM sets it for every vCPU");
        // The legacy VMM type keeps its zero FPU area here too.
        let legacy = flat32_vmsa(&entry(), VmmType::QemuEsInit);
        let names: Vec<_> = v.diff(&legacy).into_iter().map(|d| d.field).collect();
        assert_eq!(names, ["mxcsr", "x87_fcw"]);
    }

    #[test]
    fn every_entry_field_is_in_the_vmsa() {
        let base = flat32_vmsa(&entry(), VmmType::Qemu);
        let changed = [
            Flat32Entry {
                rip: 0xfff0_2344,
                ..entry()
            },
            Flat32Entry {
                code_selector: 0x08,
                ..entry()
            },
            Flat32Entry {
                data_selector: 0x18,
                ..entry()
            },
            Flat32Entry {
                rsp: 0x105_4000,
                ..entry()
            },
        ];
        for e in changed {
            assert_ne!(
                flat32_vmsa(&e, VmmType::Qemu).to_bytes(),
                base.to_bytes(),
                "{e:?}"
            );
        }
    }
}
