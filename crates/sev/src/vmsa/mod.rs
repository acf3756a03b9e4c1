//! The SEV-ES VM save area (VMSA): the encrypted page that holds an SEV-ES vCPU's register
//! state, and the reset-state VMSAs QEMU + KVM measure at launch.
//!
//! Layout: AMD64 Architecture Programmer's Manual vol. 2, appendix B, Table B-4 ("VMSA
//! layout, state save area for SEV-ES"), as the kernel spells it (`struct
//! sev_es_save_area`, `arch/x86/include/asm/svm.h`) up to the end of the floating-point
//! area at 0x670; the rest of the page follows the APM names coconut-svsm uses
//! (`cpuarch/src/vmsa.rs`: LBR stack, IBS registers) and is zero at launch. Reserved
//! ranges are named by their byte offset. Every field's offset and the 4096-byte size are
//! checked at compile time, and the byte codec is explicit little-endian, so the struct's
//! in-memory representation never crosses an API.
//!
//! [`reset`] builds the VMSAs a launch measures; [`VmsaSlot`] is where the emulated
//! platform keeps an SEV-ES vCPU's state once it is protected.

pub mod entry;
pub mod kvm;
pub mod reset;

use crate::{
    backend::{PageCipher, PAGE_SIZE},
    memcrypt::XtsPageCipher,
};
use std::{
    fmt,
    mem::{offset_of, size_of},
    sync::{Arc, Mutex, PoisonError},
};

pub use reset::{
    ap_reset_block, ResetVmsas, VcpuType, VmmType, VmsaError, BSP_RESET_EIP, VCPU_TYPES,
};

/// A segment register as the VMCB and the VMSA hold it (APM vol. 2 Table B-2;
/// kernel `struct vmcb_seg`): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Attributes in the VMCB's packed form: type (3:0), S (4), DPL (6:5), P (7), AVL
    /// (8), L (9), D/B (10), G (11).
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base address.
    pub base: u64,
}

const _: () = {
    assert!(size_of::<VmcbSegment>() == 16);
    assert!(offset_of!(VmcbSegment, selector) == 0);
    assert!(offset_of!(VmcbSegment, attrib) == 2);
    assert!(offset_of!(VmcbSegment, limit) == 4);
    assert!(offset_of!(VmcbSegment, base) == 8);
};

impl VmcbSegment {
    /// A segment with these values.
    pub const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> VmcbSegment {
        VmcbSegment {
            selector,
            attrib,
            limit,
            base,
        }
    }
}

/// A value the VMSA codec can write and read at a fixed offset, little-endian.
trait Field: Sized {
    /// Writes `self` into `out`, which is exactly `size_of::<Self>()` bytes.
    fn put(&self, out: &mut [u8]);
    /// Reads a value from `b`, which is exactly `size_of::<Self>()` bytes.
    fn get(b: &[u8]) -> Self;
    /// Whether the value is all zero bits.
    fn is_zero(&self) -> bool;
    /// The value for diagnostics.
    fn show(&self) -> String;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("the layout sizes every field"))
            }
            fn is_zero(&self) -> bool {
                *self == 0
            }
            fn show(&self) -> String {
                format!("{:#x}", self)
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64);

impl<const N: usize> Field for [u8; N] {
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    fn get(b: &[u8]) -> Self {
        b.try_into().expect("the layout sizes every field")
    }
    fn is_zero(&self) -> bool {
        self.iter().all(|&x| x == 0)
    }
    fn show(&self) -> String {
        let nonzero = self.iter().filter(|&&x| x != 0).count();
        format!("[{N} bytes, {nonzero} non-zero]")
    }
}

impl Field for VmcbSegment {
    fn put(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.selector.to_le_bytes());
        out[2..4].copy_from_slice(&self.attrib.to_le_bytes());
        out[4..8].copy_from_slice(&self.limit.to_le_bytes());
        out[8..16].copy_from_slice(&self.base.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        VmcbSegment {
            selector: u16::get(&b[0..2]),
            attrib: u16::get(&b[2..4]),
            limit: u32::get(&b[4..8]),
            base: u64::get(&b[8..16]),
        }
    }
    fn is_zero(&self) -> bool {
        *self == VmcbSegment::default()
    }
    fn show(&self) -> String {
        format!(
            "{{ selector: {:#x}, attrib: {:#x}, limit: {:#x}, base: {:#x} }}",
            self.selector, self.attrib, self.limit, self.base
        )
    }
}

/// Declares the VMSA: one line per field with its byte offset. Generates the `repr(C)`
/// struct, a compile-time offset assert per field, the little-endian codec and the
/// field-by-field comparison.
macro_rules! vmsa_layout {
    ($( $(#[$doc:meta])* $off:literal $vis:vis $name:ident : $ty:ty, )*) => {
        /// An SEV-ES VMSA (module documentation). Reserved ranges are private and zero
        /// unless decoded from a page that had bits set there.
        #[repr(C)]
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct Vmsa {
            $( $(#[$doc])* $vis $name: $ty, )*
        }

        const _: () = {
            $( assert!(offset_of!(Vmsa, $name) == $off); )*
        };

        impl Vmsa {
            /// The page, little-endian, as the platform measures and encrypts it.
            pub fn to_bytes(&self) -> [u8; PAGE_SIZE] {
                let mut out = [0u8; PAGE_SIZE];
                $( Field::put(&self.$name, &mut out[$off..$off + size_of::<$ty>()]); )*
                out
            }

            /// Decodes a page (every bit pattern is a VMSA).
            pub fn from_bytes(b: &[u8; PAGE_SIZE]) -> Vmsa {
                Vmsa {
                    $( $name: <$ty as Field>::get(&b[$off..$off + size_of::<$ty>()]), )*
                }
            }

            /// Every field whose value differs between `self` and `other`, with both
            /// values, in layout order.
            pub fn diff(&self, other: &Vmsa) -> Vec<FieldDiff> {
                let mut out = Vec::new();
                $(
                    if self.$name != other.$name {
                        out.push(FieldDiff {
                            field: stringify!($name),
                            offset: $off,
                            left: Field::show(&self.$name),
                            right: Field::show(&other.$name),
                        });
                    }
                )*
                out
            }

            fn fmt_nonzero(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut s = f.debug_struct("Vmsa");
                $(
                    if !Field::is_zero(&self.$name) {
                        s.field(stringify!($name), &format_args!("{}", Field::show(&self.$name)));
                    }
                )*
                s.finish_non_exhaustive()
            }
        }
    };
}

vmsa_layout! {
    /// ES segment.
    0x000 pub es: VmcbSegment,
    /// CS segment.
    0x010 pub cs: VmcbSegment,
    /// SS segment.
    0x020 pub ss: VmcbSegment,
    /// DS segment.
    0x030 pub ds: VmcbSegment,
    /// FS segment.
    0x040 pub fs: VmcbSegment,
    /// GS segment.
    0x050 pub gs: VmcbSegment,
    /// GDTR (base and limit only).
    0x060 pub gdtr: VmcbSegment,
    /// LDTR.
    0x070 pub ldtr: VmcbSegment,
    /// IDTR (base and limit only).
    0x080 pub idtr: VmcbSegment,
    /// TR.
    0x090 pub tr: VmcbSegment,
    /// Shadow-stack pointer for VMPL 0 (SNP).
    0x0a0 pub vmpl0_ssp: u64,
    /// Shadow-stack pointer for VMPL 1.
    0x0a8 pub vmpl1_ssp: u64,
    /// Shadow-stack pointer for VMPL 2.
    0x0b0 pub vmpl2_ssp: u64,
    /// Shadow-stack pointer for VMPL 3.
    0x0b8 pub vmpl3_ssp: u64,
    /// U_CET MSR.
    0x0c0 pub u_cet: u64,
    0x0c8 _rsvd_0x0c8: [u8; 2],
    /// VMPL of this VMSA (SNP).
    0x0ca pub vmpl: u8,
    /// Current privilege level.
    0x0cb pub cpl: u8,
    0x0cc _rsvd_0x0cc: [u8; 4],
    /// EFER (KVM sets SVME, bit 12, in every guest's).
    0x0d0 pub efer: u64,
    0x0d8 _rsvd_0x0d8: [u8; 104],
    /// IA32_XSS.
    0x140 pub xss: u64,
    /// CR4.
    0x148 pub cr4: u64,
    /// CR3.
    0x150 pub cr3: u64,
    /// CR0.
    0x158 pub cr0: u64,
    /// DR7.
    0x160 pub dr7: u64,
    /// DR6.
    0x168 pub dr6: u64,
    /// RFLAGS.
    0x170 pub rflags: u64,
    /// RIP.
    0x178 pub rip: u64,
    /// DR0.
    0x180 pub dr0: u64,
    /// DR1.
    0x188 pub dr1: u64,
    /// DR2.
    0x190 pub dr2: u64,
    /// DR3.
    0x198 pub dr3: u64,
    /// DR0 address mask.
    0x1a0 pub dr0_addr_mask: u64,
    /// DR1 address mask.
    0x1a8 pub dr1_addr_mask: u64,
    /// DR2 address mask.
    0x1b0 pub dr2_addr_mask: u64,
    /// DR3 address mask.
    0x1b8 pub dr3_addr_mask: u64,
    0x1c0 _rsvd_0x1c0: [u8; 24],
    /// RSP.
    0x1d8 pub rsp: u64,
    /// S_CET MSR.
    0x1e0 pub s_cet: u64,
    /// SSP.
    0x1e8 pub ssp: u64,
    /// Interrupt SSP table address.
    0x1f0 pub isst_addr: u64,
    /// RAX.
    0x1f8 pub rax: u64,
    /// STAR MSR.
    0x200 pub star: u64,
    /// LSTAR MSR.
    0x208 pub lstar: u64,
    /// CSTAR MSR.
    0x210 pub cstar: u64,
    /// SFMASK MSR.
    0x218 pub sfmask: u64,
    /// KernelGSBase MSR.
    0x220 pub kernel_gs_base: u64,
    /// SYSENTER_CS MSR.
    0x228 pub sysenter_cs: u64,
    /// SYSENTER_ESP MSR.
    0x230 pub sysenter_esp: u64,
    /// SYSENTER_EIP MSR.
    0x238 pub sysenter_eip: u64,
    /// CR2.
    0x240 pub cr2: u64,
    0x248 _rsvd_0x248: [u8; 32],
    /// Guest PAT MSR.
    0x268 pub g_pat: u64,
    /// DebugCtl MSR.
    0x270 pub dbgctl: u64,
    /// LastBranchFromIP MSR.
    0x278 pub br_from: u64,
    /// LastBranchToIP MSR.
    0x280 pub br_to: u64,
    /// LastIntFromIP MSR.
    0x288 pub last_excp_from: u64,
    /// LastIntToIP MSR.
    0x290 pub last_excp_to: u64,
    0x298 _rsvd_0x298: [u8; 80],
    /// PKRU.
    0x2e8 pub pkru: u32,
    /// TSC_AUX MSR.
    0x2ec pub tsc_aux: u32,
    /// Guest TSC scale (SNP Secure TSC).
    0x2f0 pub tsc_scale: u64,
    /// Guest TSC offset (SNP Secure TSC).
    0x2f8 pub tsc_offset: u64,
    0x300 _rsvd_0x300: [u8; 8],
    /// RCX.
    0x308 pub rcx: u64,
    /// RDX (at reset: the CPUID family/model/stepping signature).
    0x310 pub rdx: u64,
    /// RBX.
    0x318 pub rbx: u64,
    /// Reserved: RSP lives at 0x1d8.
    0x320 _rsvd_0x320: [u8; 8],
    /// RBP.
    0x328 pub rbp: u64,
    /// RSI.
    0x330 pub rsi: u64,
    /// RDI.
    0x338 pub rdi: u64,
    /// R8.
    0x340 pub r8: u64,
    /// R9.
    0x348 pub r9: u64,
    /// R10.
    0x350 pub r10: u64,
    /// R11.
    0x358 pub r11: u64,
    /// R12.
    0x360 pub r12: u64,
    /// R13.
    0x368 pub r13: u64,
    /// R14.
    0x370 pub r14: u64,
    /// R15.
    0x378 pub r15: u64,
    0x380 _rsvd_0x380: [u8; 16],
    /// Guest exit information 1.
    0x390 pub guest_exit_info_1: u64,
    /// Guest exit information 2.
    0x398 pub guest_exit_info_2: u64,
    /// Guest exit interrupt information.
    0x3a0 pub guest_exit_int_info: u64,
    /// Guest next RIP.
    0x3a8 pub guest_nrip: u64,
    /// SEV features (SEV_FEATURES; bit 0 SNP active, bit 5 DebugSwap, ...).
    0x3b0 pub sev_features: u64,
    /// Virtual interrupt control.
    0x3b8 pub vintr_ctrl: u64,
    /// Guest exit code.
    0x3c0 pub guest_exit_code: u64,
    /// Virtual top of memory.
    0x3c8 pub virtual_tom: u64,
    /// TLB id.
    0x3d0 pub tlb_id: u64,
    /// Physical CPU id.
    0x3d8 pub pcpu_id: u64,
    /// Event injection.
    0x3e0 pub event_inj: u64,
    /// XCR0.
    0x3e8 pub xcr0: u64,
    0x3f0 _rsvd_0x3f0: [u8; 16],
    /// x87 data pointer.
    0x400 pub x87_dp: u64,
    /// MXCSR.
    0x408 pub mxcsr: u32,
    /// x87 tag word (abridged).
    0x40c pub x87_ftw: u16,
    /// x87 status word.
    0x40e pub x87_fsw: u16,
    /// x87 control word.
    0x410 pub x87_fcw: u16,
    /// x87 last opcode.
    0x412 pub x87_fop: u16,
    /// x87 data segment selector.
    0x414 pub x87_ds: u16,
    /// x87 code segment selector.
    0x416 pub x87_cs: u16,
    /// x87 instruction pointer.
    0x418 pub x87_rip: u64,
    /// ST0-ST7: bytes 0-7 of each register, then bytes 8-9 of each (kernel
    /// `sev_es_sync_vmsa`).
    0x420 pub fpreg_x87: [u8; 80],
    /// XMM0-XMM15.
    0x470 pub fpreg_xmm: [u8; 256],
    /// YMM0-YMM15, upper halves.
    0x570 pub fpreg_ymm: [u8; 256],
    /// LBR stack (not in the kernel's struct; APM Table B-4).
    0x670 pub lbr_stack: [u8; 256],
    /// LBR_SELECT MSR.
    0x770 pub lbr_select: u64,
    /// IBS fetch control.
    0x778 pub ibs_fetch_ctl: u64,
    /// IBS fetch linear address.
    0x780 pub ibs_fetch_linaddr: u64,
    /// IBS op control.
    0x788 pub ibs_op_ctl: u64,
    /// IBS op RIP.
    0x790 pub ibs_op_rip: u64,
    /// IBS op data.
    0x798 pub ibs_op_data: u64,
    /// IBS op data 2.
    0x7a0 pub ibs_op_data2: u64,
    /// IBS op data 3.
    0x7a8 pub ibs_op_data3: u64,
    /// IBS DC linear address.
    0x7b0 pub ibs_dc_linaddr: u64,
    /// Branch target buffer IBS target RIP.
    0x7b8 pub bp_ibstgt_rip: u64,
    /// IC IBS extended control.
    0x7c0 pub ic_ibs_extd_ctl: u64,
    0x7c8 _rsvd_0x7c8: [u8; 2104],
}

const _: () = assert!(size_of::<Vmsa>() == PAGE_SIZE);

/// One field that differs between two VMSAs ([`Vmsa::diff`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field's name (reserved ranges are `_rsvd_0x...`).
    pub field: &'static str,
    /// Its byte offset.
    pub offset: usize,
    /// Its value in the left VMSA.
    pub left: String,
    /// Its value in the right VMSA.
    pub right: String,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (0x{:03x}): {} vs {}",
            self.field, self.offset, self.left, self.right
        )
    }
}

impl Vmsa {
    /// The all-zero page.
    pub fn zeroed() -> Vmsa {
        Vmsa::from_bytes(&[0; PAGE_SIZE])
    }

    /// Clears the floating-point area (0x400..0x670: x87, SSE and AVX state), as KVM
    /// leaves it for a VM initialised with the legacy `KVM_SEV_ES_INIT`
    /// (`sev_es_sync_vmsa` copies the FPU only for `KVM_SEV_INIT2` VMs).
    pub fn clear_fpu(&mut self) {
        self.x87_dp = 0;
        self.mxcsr = 0;
        self.x87_ftw = 0;
        self.x87_fsw = 0;
        self.x87_fcw = 0;
        self.x87_fop = 0;
        self.x87_ds = 0;
        self.x87_cs = 0;
        self.x87_rip = 0;
        self.fpreg_x87 = [0; 80];
        self.fpreg_xmm = [0; 256];
        self.fpreg_ymm = [0; 256];
    }
}

impl fmt::Debug for Vmsa {
    /// Only the non-zero fields: a VMSA is mostly zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_nonzero(f)
    }
}

/// Where the emulated platform keeps an SEV-ES vCPU's state once LAUNCH_UPDATE_VMSA has
/// encrypted it: one page of ciphertext under the guest's VEK (the same AES-XTS transform
/// as private guest memory, [`crate::memcrypt`]), bound to a host address of its own.
///
/// On hardware the VMSA is a kernel page the CPU reads at VMRUN and writes at #VMEXIT;
/// the host sees only ciphertext and KVM refuses register reads and writes. Here the
/// emulation's vCPU runner is that CPU: it calls [`VmsaSlot::vmrun_load`] before it runs
/// the vCPU and [`VmsaSlot::vmexit_save`] after, and nothing else above the platform may
/// call them; everyone else gets [`VmsaSlot::host_view`], the ciphertext. Shared by an
/// `Arc`: an intra-host move hands the slot to the destination VM's vCPU.
pub struct VmsaSlot {
    cipher: Arc<XtsPageCipher>,
    /// The host-physical address the ciphertext is bound to (the XTS tweak).
    spa: u64,
    page: Mutex<Box<[u8; PAGE_SIZE]>>,
}

impl VmsaSlot {
    /// Encrypts `vmsa` into a new slot bound to host address `spa`.
    pub(crate) fn new(cipher: Arc<XtsPageCipher>, spa: u64, vmsa: &Vmsa) -> VmsaSlot {
        let mut page = Box::new(vmsa.to_bytes());
        cipher.encrypt_page(spa, &mut page);
        VmsaSlot {
            cipher,
            spa,
            page: Mutex::new(page),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<[u8; PAGE_SIZE]>> {
        // Every write replaces the whole page in one step.
        self.page.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the host sees of the VMSA page: ciphertext.
    pub fn host_view(&self) -> [u8; PAGE_SIZE] {
        **self.lock()
    }

    /// VMRUN: the state the vCPU resumes with. Only the emulated platform's vCPU runner
    /// calls this (see the type's documentation).
    pub fn vmrun_load(&self) -> Vmsa {
        let mut page = **self.lock();
        self.cipher.decrypt_page(self.spa, &mut page);
        Vmsa::from_bytes(&page)
    }

    /// #VMEXIT: the state the vCPU stopped with. Only the emulated platform's vCPU runner
    /// calls this.
    pub fn vmexit_save(&self, state: &Vmsa) {
        let mut page = state.to_bytes();
        self.cipher.encrypt_page(self.spa, &mut page);
        **self.lock() = page;
    }
}

impl fmt::Debug for VmsaSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmsaSlot")
            .field("spa", &format_args!("{:#x}", self.spa))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_is_little_endian_at_the_table_offsets() {
        let mut v = Vmsa::zeroed();
        v.cs = VmcbSegment::new(0xf000, 0x9b, 0xffff, 0xffff_0000);
        v.rip = 0xfff0;
        v.rdx = 0x0080_0f12;
        v.mxcsr = 0x1f80;
        v.x87_fcw = 0x37f;
        v.sev_features = 1 << 5;
        v.ic_ibs_extd_ctl = 0x1122_3344_5566_7788;
        let b = v.to_bytes();
        assert_eq!(
            &b[0x10..0x20],
            &[0x00, 0xf0, 0x9b, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(&b[0x178..0x180], &0xfff0u64.to_le_bytes());
        assert_eq!(&b[0x310..0x318], &0x0080_0f12u64.to_le_bytes());
        assert_eq!(&b[0x3b0..0x3b8], &0x20u64.to_le_bytes());
        assert_eq!(&b[0x408..0x40c], &[0x80, 0x1f, 0, 0]);
        assert_eq!(&b[0x410..0x412], &[0x7f, 0x03]);
        assert_eq!(&b[0x7c0..0x7c8], &0x1122_3344_5566_7788u64.to_le_bytes());
        let set = b.iter().filter(|&&x| x != 0).count();
        // cs 6, rip 2, rdx 3, sev_features 1, mxcsr 2, fcw 2, ic_ibs_extd_ctl 8.
        assert_eq!(set, 6 + 2 + 3 + 1 + 2 + 2 + 8);
        assert_eq!(Vmsa::from_bytes(&b), v);
    }

    #[test]
    fn every_byte_round_trips_including_reserved_ranges() {
        let page: [u8; PAGE_SIZE] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        assert_eq!(Vmsa::from_bytes(&page).to_bytes(), page);
    }

    #[test]
    fn diff_names_the_fields_that_differ() {
        let a = Vmsa::zeroed();
        let mut b = a;
        b.mxcsr = 0x1f80;
        b.tr.attrib = 0x83;
        let d = a.diff(&b);
        let names: Vec<_> = d.iter().map(|x| x.field).collect();
        assert_eq!(names, ["tr", "mxcsr"]);
        assert_eq!(d[1].to_string(), "mxcsr (0x408): 0x0 vs 0x1f80");
        let mut fpu = b;
        fpu.fpreg_xmm[3] = 1;
        fpu.clear_fpu();
        assert_eq!(fpu.diff(&a).len(), 1, "only tr is left");
        assert!(format!("{b:?}").contains("mxcsr: 0x1f80"));
    }

    #[test]
    fn a_slot_holds_ciphertext_and_gives_the_state_back() {
        let cipher = Arc::new(XtsPageCipher::generate().unwrap());
        let mut v = Vmsa::zeroed();
        v.rip = 0xfff0;
        v.rdx = 0x800f12;
        let slot = VmsaSlot::new(cipher.clone(), 0x1000_0000_0000, &v);
        let seen = slot.host_view();
        assert_ne!(seen, v.to_bytes());
        assert!(
            seen.windows(8).all(|w| w != 0xfff0u64.to_le_bytes()),
            "no plaintext register in the host view"
        );
        assert_eq!(slot.vmrun_load(), v);
        v.rax = 42;
        slot.vmexit_save(&v);
        assert_eq!(slot.vmrun_load(), v);
        assert_ne!(slot.host_view(), seen);
        // The same state in another slot (another host page) looks different.
        let other = VmsaSlot::new(cipher, 0x1000_0000_1000, &v);
        assert_ne!(other.host_view(), slot.host_view());
        assert!(!format!("{slot:?}").contains("rip"));
    }
}
