//! The VMSAs an SEV-ES launch measures: each vCPU's reset state as QEMU sets it and KVM
//! copies it into the VMSA at `KVM_SEV_LAUNCH_UPDATE_VMSA` (`sev_es_sync_vmsa`,
//! `arch/x86/kvm/svm/sev.c`), in vCPU index order.
//!
//! # Sources and the choice of defaults
//! The reference is what the community tools compute for a QEMU + OVMF guest:
//! `sev-snp-measure --mode seves` (virtee, `sevsnpmeasure/vmsa.py`: `build_save_area`)
//! and `sevctl vmsa build` 0.6.2 (the `sev` 6 crate's `Vmsa::init_amd64`, `init_kvm`,
//! `init_qemu`, `cpu_sku`, `reset_addr`). They agree on every field but the x87/SSE
//! control words:
//!
//! | field                    | value                      | why |
//! |--------------------------|----------------------------|-----|
//! | es, ds, fs, gs           | sel 0, attrib 0x93, limit 0xffff | QEMU `x86_cpu_reset`: P, S, W, A |
//! | cs                       | sel 0xf000, attrib 0x9b, limit 0xffff, base `eip & 0xffff0000` | reset CS; APs get the base from the reset block (QEMU `sev_es_set_reset_vector`) |
//! | ss                       | attrib 0x93, limit 0xffff  | |
//! | gdtr, idtr               | limit 0xffff               | |
//! | ldtr                     | attrib 0x82, limit 0xffff  | P, type 2 (LDT) |
//! | tr                       | attrib 0x8b, limit 0xffff  | P, type 11 (busy TSS) |
//! | efer                     | 0x1000                     | KVM sets SVME (`svm_set_efer`) |
//! | cr4                      | 0x40                       | KVM sets MCE when the host has it (`svm_set_cr4`) |
//! | cr0                      | 0x10                       | ET; KVM drops CD and NW from QEMU's 0x60000010 |
//! | dr7, dr6                 | 0x400, 0xffff0ff0          | architectural reset values |
//! | rflags                   | 0x2                        | |
//! | rip                      | `eip & 0xffff`             | 0xfff0 for the boot vCPU |
//! | rdx                      | CPUID(1).EAX of the vCPU type | QEMU loads the signature into EDX at reset |
//! | g_pat                    | 0x0007040600070406         | KVM's PAT reset value |
//! | xcr0                     | 0x1                        | x87 only |
//! | sev_features             | 0                          | KVM_SEV_ES_INIT, or KVM_SEV_INIT2 with no VMSA features (QEMU's default) |
//! | mxcsr, x87_fcw           | 0x1f80, 0x37f ([`VmmType::Qemu`]) or 0, 0 ([`VmmType::QemuEsInit`]) | see below |
//!
//! Linux ≥ 6.10 copies the vCPU's FPU state (FCW 0x37f, MXCSR 0x1f80 after QEMU's reset)
//! into the VMSA for VMs created with a `KVM_X86_SEV_ES_VM` type and `KVM_SEV_INIT2` (what
//! QEMU ≥ 9.1 uses when the kernel has it), and leaves the FPU area zero for the legacy
//! `KVM_SEV_ES_INIT` "to avoid breaking older measurements". sev-snp-measure's
//! `--vmm-type QEMU` computes the former, sevctl 0.6.2 the latter. **The default here is
//! [`VmmType::Qemu`], sev-snp-measure's**; [`VmmType::QemuEsInit`] reproduces sevctl's
//! VMSAs. Linux 6.5 to 6.9 also set DebugSwap (bit 5) in `sev_features` for legacy
//! SEV-ES VMs on CPUs that have it; neither tool models that, nor do we.
//!
//! [`VmmType::Ec2`] is sev-snp-measure's `--vmm-type ec2` (CS 0x9a on the boot vCPU, SS
//! 0x92, TR 0x83, RDX 0x600 whatever the vCPU type, no FPU state).

use super::{VmcbSegment, Vmsa};
use fwtable::{guid, SevEsResetBlock, Table, TableError};
use std::fmt;

/// The boot vCPU's reset EIP (CS base 0xffff0000, IP 0xfff0).
pub const BSP_RESET_EIP: u32 = 0xffff_fff0;

/// Guest PAT at reset (KVM `kvm_arch_vcpu_create`; APM vol. 2 §7.8.2).
const RESET_G_PAT: u64 = 0x0007_0406_0007_0406;

/// Most vCPUs a launch is computed for (KVM's `KVM_MAX_VCPUS` on x86).
pub const MAX_VCPUS: u32 = 4096;

/// A failed VMSA computation.
#[derive(Debug, thiserror::Error)]
pub enum VmsaError {
    /// The firmware's footer GUID table is missing or malformed.
    #[error("firmware GUID table")]
    Table(#[source] TableError),
    /// The firmware declares no SEV-ES reset block, so QEMU cannot start its APs.
    #[error("the firmware has no SEV-ES reset block (GUID 00f771de-1a7e-4fcb-890e-68c77e2fb44e): it cannot be launched under SEV-ES")]
    NoResetBlock,
    /// The reset block holds address 0 (QEMU: "SEV-ES reset address is zero").
    #[error("the firmware's SEV-ES reset block holds address 0")]
    ZeroResetAddress,
    /// A vCPU type this crate does not know.
    #[error("unknown vCPU type {0:?}; known: {known}", known = known_types())]
    UnknownVcpuType(String),
    /// A VMM type this crate does not know.
    #[error("unknown VMM type {0:?}; known: qemu, qemu-es-init, ec2")]
    UnknownVmmType(String),
    /// Zero vCPUs, or more than KVM supports.
    #[error("{0} vCPUs: an SEV-ES launch has 1 to {MAX_VCPUS}")]
    VcpuCount(u32),
}

fn known_types() -> String {
    VCPU_TYPES
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A QEMU CPU model and the family/model/stepping its CPUID leaf 1 reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuType {
    /// QEMU's name (`-cpu NAME`).
    pub name: &'static str,
    /// Family (the sum of base and extended family).
    pub family: u32,
    /// Model (extended model ‖ base model).
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

const fn vcpu(name: &'static str, family: u32, model: u32, stepping: u32) -> VcpuType {
    VcpuType {
        name,
        family,
        model,
        stepping,
    }
}

/// The AMD models of QEMU's `builtin_x86_defs`, as sev-snp-measure lists them
/// (`sevsnpmeasure/vcpu_types.py`).
pub const VCPU_TYPES: &[VcpuType] = &[
    vcpu("EPYC", 23, 1, 2),
    vcpu("EPYC-v1", 23, 1, 2),
    vcpu("EPYC-v2", 23, 1, 2),
    vcpu("EPYC-IBPB", 23, 1, 2),
    vcpu("EPYC-v3", 23, 1, 2),
    vcpu("EPYC-v4", 23, 1, 2),
    vcpu("EPYC-Rome", 23, 49, 0),
    vcpu("EPYC-Rome-v1", 23, 49, 0),
    vcpu("EPYC-Rome-v2", 23, 49, 0),
    vcpu("EPYC-Rome-v3", 23, 49, 0),
    vcpu("EPYC-Milan", 25, 1, 1),
    vcpu("EPYC-Milan-v1", 25, 1, 1),
    vcpu("EPYC-Milan-v2", 25, 1, 1),
    vcpu("EPYC-Genoa", 25, 17, 0),
    vcpu("EPYC-Genoa-v1", 25, 17, 0),
    vcpu("EPYC-Turin", 26, 0, 0),
];

impl VcpuType {
    /// The type called `name` (QEMU's spelling; case does not matter).
    pub fn from_name(name: &str) -> Result<VcpuType, VmsaError> {
        VCPU_TYPES
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name.trim()))
            .copied()
            .ok_or_else(|| VmsaError::UnknownVcpuType(name.to_string()))
    }

    /// CPUID Fn0000_0001 EAX: stepping (3:0), base model (7:4), base family (11:8),
    /// extended model (19:16), extended family (27:20) (AMD CPUID specification #25481).
    pub fn signature(&self) -> u32 {
        let (family_low, family_high) = if self.family > 0xf {
            (0xf, (self.family - 0xf) & 0xff)
        } else {
            (self.family, 0)
        };
        (family_high << 20)
            | (((self.model >> 4) & 0xf) << 16)
            | (family_low << 8)
            | ((self.model & 0xf) << 4)
            | (self.stepping & 0xf)
    }
}

impl fmt::Display for VcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (family {}, model {}, stepping {}, signature {:#x})",
            self.name,
            self.family,
            self.model,
            self.stepping,
            self.signature()
        )
    }
}

/// Whose reset state the VMSAs reproduce (module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VmmType {
    /// QEMU on a kernel that copies the FPU state into the VMSA (`KVM_SEV_INIT2`):
    /// sev-snp-measure `--vmm-type QEMU`. The default.
    #[default]
    Qemu,
    /// QEMU with the legacy `KVM_SEV_ES_INIT` (QEMU < 9.1, Linux < 6.10, or
    /// `sev-guest,legacy-vm-type=on`): the FPU area stays zero. What `sevctl vmsa build
    /// --userspace qemu` 0.6.2 builds.
    QemuEsInit,
    /// Amazon EC2: sev-snp-measure `--vmm-type ec2`.
    Ec2,
}

impl VmmType {
    /// Every type.
    pub const ALL: [VmmType; 3] = [VmmType::Qemu, VmmType::QemuEsInit, VmmType::Ec2];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            VmmType::Qemu => "qemu",
            VmmType::QemuEsInit => "qemu-es-init",
            VmmType::Ec2 => "ec2",
        }
    }

    /// Parses a command-line name (case does not matter).
    pub fn from_name(s: &str) -> Result<VmmType, VmsaError> {
        VmmType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| VmsaError::UnknownVmmType(s.to_string()))
    }
}

/// The SEV-ES reset block of a firmware image: where QEMU starts the APs (their CS base and
/// IP). Errors if the image has no footer table or no (or a zero) reset block.
pub fn ap_reset_block(firmware: &[u8]) -> Result<SevEsResetBlock, VmsaError> {
    let table = Table::parse(firmware).map_err(VmsaError::Table)?;
    let entry = table
        .find(guid::SEV_ES_RESET_BLOCK)
        .map_err(VmsaError::Table)?
        .ok_or(VmsaError::NoResetBlock)?;
    let block = SevEsResetBlock::decode(entry.data).map_err(VmsaError::Table)?;
    if block.reset_address() == 0 {
        return Err(VmsaError::ZeroResetAddress);
    }
    Ok(block)
}

/// The reset-state VMSAs of one launch: vCPU 0 at the reset vector, every other vCPU at
/// the firmware's AP entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetVmsas {
    /// The vCPU model (its signature goes into RDX).
    pub vcpu_type: VcpuType,
    /// Whose reset state.
    pub vmm: VmmType,
    /// The firmware's SEV-ES reset block.
    pub ap_entry: SevEsResetBlock,
}

impl ResetVmsas {
    /// The VMSAs for `firmware` launched with `vcpu_type` under `vmm`.
    pub fn for_firmware(
        firmware: &[u8],
        vcpu_type: VcpuType,
        vmm: VmmType,
    ) -> Result<ResetVmsas, VmsaError> {
        Ok(ResetVmsas {
            vcpu_type,
            vmm,
            ap_entry: ap_reset_block(firmware)?,
        })
    }

    /// The VMSA of vCPU `index` (0 is the boot vCPU).
    pub fn vcpu(&self, index: u32) -> Vmsa {
        let eip = if index == 0 {
            BSP_RESET_EIP
        } else {
            self.ap_entry.reset_address()
        };
        reset_vmsa(eip, self.vcpu_type.signature(), self.vmm)
    }

    /// The VMSAs of vCPUs `0..vcpus`, in the order KVM measures them.
    pub fn all(&self, vcpus: u32) -> Result<Vec<Vmsa>, VmsaError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(VmsaError::VcpuCount(vcpus));
        }
        Ok((0..vcpus).map(|i| self.vcpu(i)).collect())
    }
}

/// One vCPU's reset VMSA for code at linear address `eip` (module documentation).
pub fn reset_vmsa(eip: u32, signature: u32, vmm: VmmType) -> Vmsa {
    let (cs_attrib, ss_attrib, tr_attrib, rdx, mxcsr, fcw) = match vmm {
        VmmType::Qemu => (0x9b, 0x93, 0x8b, u64::from(signature), 0x1f80, 0x37f),
        VmmType::QemuEsInit => (0x9b, 0x93, 0x8b, u64::from(signature), 0, 0),
        VmmType::Ec2 => {
            let cs = if eip == BSP_RESET_EIP { 0x9a } else { 0x9b };
            (cs, 0x92, 0x83, 0x600, 0, 0)
        }
    };
    let data = VmcbSegment::new(0, 0x93, 0xffff, 0);
    let mut v = Vmsa::zeroed();
    v.es = data;
    v.cs = VmcbSegment::new(0xf000, cs_attrib, 0xffff, u64::from(eip & 0xffff_0000));
    v.ss = VmcbSegment::new(0, ss_attrib, 0xffff, 0);
    v.ds = data;
    v.fs = data;
    v.gs = data;
    v.gdtr = VmcbSegment::new(0, 0, 0xffff, 0);
    v.idtr = VmcbSegment::new(0, 0, 0xffff, 0);
    v.ldtr = VmcbSegment::new(0, 0x82, 0xffff, 0);
    v.tr = VmcbSegment::new(0, tr_attrib, 0xffff, 0);
    v.efer = 0x1000;
    v.cr4 = 0x40;
    v.cr0 = 0x10;
    v.dr7 = 0x400;
    v.dr6 = 0xffff_0ff0;
    v.rflags = 0x2;
    v.rip = u64::from(eip & 0xffff);
    v.g_pat = RESET_G_PAT;
    v.rdx = rdx;
    v.sev_features = 0;
    v.xcr0 = 0x1;
    v.mxcsr = mxcsr;
    v.x87_fcw = fcw;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_cpuid_encoding() {
        let sig = |n: &str| VcpuType::from_name(n).unwrap().signature();
        // Family 23 = 0xf + 0x8: base family f, extended 8.
        assert_eq!(sig("EPYC"), 0x0080_0f12);
        assert_eq!(sig("epyc-v4"), 0x0080_0f12);
        assert_eq!(sig("EPYC-Rome"), 0x0083_0f10);
        assert_eq!(sig("EPYC-Milan"), 0x00a0_0f11);
        assert_eq!(sig("EPYC-Genoa"), 0x00a1_0f10);
        assert_eq!(sig("EPYC-Turin"), 0x00b0_0f00);
        assert_eq!(vcpu("old", 6, 0x3a, 9).signature(), 0x0003_06a9);
        assert!(matches!(
            VcpuType::from_name("Skylake"),
            Err(VmsaError::UnknownVcpuType(_))
        ));
        let msg = VcpuType::from_name("x").unwrap_err().to_string();
        assert!(msg.contains("EPYC-Genoa"), "{msg}");
    }

    #[test]
    fn vmm_names_round_trip() {
        for t in VmmType::ALL {
            assert_eq!(VmmType::from_name(t.name()).unwrap(), t);
        }
        assert_eq!(VmmType::from_name("QEMU").unwrap(), VmmType::Qemu);
        assert!(VmmType::from_name("gce").is_err());
    }

    fn ovmf_like() -> ResetVmsas {
        ResetVmsas {
            vcpu_type: VcpuType::from_name("EPYC-v4").unwrap(),
            vmm: VmmType::Qemu,
            ap_entry: SevEsResetBlock::from_raw(0x0080_b004),
        }
    }

    #[test]
    fn boot_vcpu_starts_at_the_reset_vector_and_aps_at_the_reset_block() {
        let r = ovmf_like();
        let bsp = r.vcpu(0);
        assert_eq!(
            (bsp.cs.selector, bsp.cs.base, bsp.rip),
            (0xf000, 0xffff_0000, 0xfff0)
        );
        let ap = r.vcpu(3);
        assert_eq!(
            (ap.cs.selector, ap.cs.base, ap.rip),
            (0xf000, 0x80_0000, 0xb004)
        );
        assert_eq!(bsp.rdx, 0x0080_0f12);
        // The APs differ from the boot vCPU only in where they start.
        let names: Vec<_> = bsp.diff(&ap).into_iter().map(|d| d.field).collect();
        assert_eq!(names, ["cs", "rip"]);
        assert_eq!(r.vcpu(1), r.vcpu(2));
        assert_eq!(r.all(3).unwrap().len(), 3);
        assert!(matches!(r.all(0), Err(VmsaError::VcpuCount(0))));
        assert!(r.all(MAX_VCPUS + 1).is_err());
    }

    #[test]
    fn the_legacy_and_ec2_profiles_differ_where_the_tools_say() {
        let q = reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::Qemu);
        let legacy = reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::QemuEsInit);
        let names: Vec<_> = q.diff(&legacy).into_iter().map(|d| d.field).collect();
        assert_eq!(names, ["mxcsr", "x87_fcw"]);
        let ec2 = reset_vmsa(BSP_RESET_EIP, 0x800f12, VmmType::Ec2);
        let names: Vec<_> = legacy.diff(&ec2).into_iter().map(|d| d.field).collect();
        assert_eq!(names, ["cs", "ss", "tr", "rdx"]);
        assert_eq!((ec2.cs.attrib, ec2.rdx), (0x9a, 0x600));
        assert_eq!(reset_vmsa(0x80b004, 0, VmmType::Ec2).cs.attrib, 0x9b);
    }

    #[test]
    fn reset_block_is_read_from_the_firmware_table() {
        let mut image = vec![0u8; 0x1000];
        let reset = SevEsResetBlock::from_raw(0x0080_b004).encode().unwrap();
        fwtable::place_in_image(&mut image, &[(guid::SEV_ES_RESET_BLOCK, &reset)]).unwrap();
        assert_eq!(ap_reset_block(&image).unwrap().reset_address(), 0x80b004);

        let zero = [0u8; 4];
        let mut image = vec![0u8; 0x1000];
        fwtable::place_in_image(&mut image, &[(guid::SEV_ES_RESET_BLOCK, &zero)]).unwrap();
        assert!(matches!(
            ap_reset_block(&image),
            Err(VmsaError::ZeroResetAddress)
        ));

        let mut image = vec![0u8; 0x1000];
        fwtable::place_in_image(&mut image, &[(guid::SEV_SECRET_BLOCK, &[0u8; 8])]).unwrap();
        assert!(matches!(
            ap_reset_block(&image),
            Err(VmsaError::NoResetBlock)
        ));

        assert!(matches!(
            ap_reset_block(&[0u8; 0x1000]),
            Err(VmsaError::Table(_))
        ));
    }
}
