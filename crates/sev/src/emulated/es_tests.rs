//! SEV-ES on the emulated PSP: KVM_SEV_ES_INIT / INIT2, LAUNCH_UPDATE_VMSA (measured after
//! the data, per vCPU in index order, with the kernel's own VMSA fields), protected vCPU
//! state, and every refusal leaving the guest and the platform as they were.

use super::*;
use crate::{
    backend::Refusal,
    measure::{expected_es_digest, verify_measurement},
    memory::VecMemory,
    owner,
    vmsa::{ResetVmsas, VcpuType, VmmType},
};
use fwtable::SevEsResetBlock;

const MEM_BASE: u64 = 0x10_0000;

fn reset(vmm: VmmType) -> ResetVmsas {
    ResetVmsas {
        vcpu_type: VcpuType::from_name("EPYC-v4").unwrap(),
        vmm,
        ap_entry: SevEsResetBlock::from_raw(0xffff_f030),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, SevError>) -> Refusal {
    let e = r.unwrap_err();
    EmulatedPsp::refusal_of(&e).unwrap_or_else(|| panic!("no code in {e:?}"))
}

fn image() -> VecMemory {
    let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i * 31 + 5) as u8).collect();
    VecMemory::with_data(MEM_BASE, data)
}

/// An SEV-ES guest on a VM of `vm_type` with `vcpus` vCPUs, started with a session whose
/// TIK the test knows, the firmware image measured.
struct EsGuest {
    p: EmulatedPsp,
    vm: VmRef,
    tik: [u8; 16],
    mem: VecMemory,
}

fn es_guest(vm_type: KvmVmType, vcpus: u32) -> EsGuest {
    let p = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    let vm = VmRef(40);
    p.add_vm(vm, vm_type).unwrap();
    p.init_vm(vm, true).unwrap();
    for _ in 0..vcpus {
        p.vcpu_created(vm).unwrap();
    }
    let policy = Policy(Policy::ES);
    let s = owner::session(&p.export_certs().unwrap().pdh, policy).unwrap();
    p.launch_start(vm, policy, Some(&s.launch_session()))
        .unwrap();
    let mem = image();
    p.launch_update_data(vm, &mem, MEM_BASE, 2 * PAGE_SIZE as u64)
        .unwrap();
    EsGuest {
        p,
        vm,
        tik: *s.keys.tik(),
        mem,
    }
}

impl EsGuest {
    fn image(&self) -> Vec<u8> {
        self.mem.snapshot(MEM_BASE, 2 * PAGE_SIZE).unwrap()
    }

    /// What nothing may change when a command is refused.
    fn observe(&self) -> (PlatformStatus, GuestStatus, Option<(usize, usize)>) {
        (
            self.p.platform_status().unwrap(),
            self.p.guest_status(self.vm).unwrap(),
            self.p.protected_vcpus(self.vm),
        )
    }

    /// Measures and checks the digest is SHA-256(image ‖ `vmsas`).
    fn measured_as(&self, vmsas: &[Vmsa]) {
        let m = self.p.launch_measure(self.vm).unwrap();
        let want = expected_es_digest(&self.image(), vmsas);
        verify_measurement(&self.tik, FIRMWARE, Policy(Policy::ES), &want, &m)
            .expect("the platform measured the image, then the VMSAs in vCPU order");
    }
}

#[test]
fn init2_vmsas_are_measured_after_the_data_as_sev_snp_measure_computes() {
    let g = es_guest(KvmVmType::SevEs, 3);
    let vmsas = reset(VmmType::Qemu).all(3).unwrap();
    g.p.launch_update_vmsa(g.vm, &vmsas).unwrap();
    assert_eq!(g.p.protected_vcpus(g.vm), Some((3, 3)));
    g.measured_as(&vmsas);
}

#[test]
fn legacy_es_init_measures_no_fpu_state_as_sevctl_computes() {
    let g = es_guest(KvmVmType::Default, 2);
    // The VMM passes the vCPUs' real state, FPU included; the kernel does not copy it.
    g.p.launch_update_vmsa(g.vm, &reset(VmmType::Qemu).all(2).unwrap())
        .unwrap();
    g.measured_as(&reset(VmmType::QemuEsInit).all(2).unwrap());
}

#[test]
fn the_kernel_sets_the_sev_features_itself() {
    let g = es_guest(KvmVmType::SevEs, 1);
    let mut v = reset(VmmType::Qemu).vcpu(0);
    v.sev_features = 1 << 5;
    g.p.launch_update_vmsa(g.vm, &[v]).unwrap();
    g.measured_as(&[reset(VmmType::Qemu).vcpu(0)]);
}

#[test]
fn a_vmsa_request_after_launch_measure_changes_nothing() {
    let g = es_guest(KvmVmType::SevEs, 2);
    let vmsas = reset(VmmType::Qemu).all(2).unwrap();
    g.p.launch_update_vmsa(g.vm, &vmsas).unwrap();
    let m = g.p.launch_measure(g.vm).unwrap();
    // A vCPU added after the launch was measured cannot get a VMSA any more.
    g.p.vcpu_created(g.vm).unwrap();
    let before = g.observe();
    let more = reset(VmmType::Qemu).all(3).unwrap();
    assert_eq!(
        code(g.p.launch_update_vmsa(g.vm, &more)),
        Refusal::Errno(libc::EINVAL),
        "vCPU 0 is already protected (sev_es_sync_vmsa)"
    );
    assert_eq!(g.observe(), before);
    let want = expected_es_digest(&g.image(), &vmsas);
    verify_measurement(&g.tik, FIRMWARE, Policy(Policy::ES), &want, &m).unwrap();
    assert!(g.p.protected_vcpu_state(g.vm, 2).is_none());
}

#[test]
fn launch_update_vmsa_after_measure_with_fresh_vcpus_is_invalid_guest_state() {
    let p = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    let vm = VmRef(41);
    p.add_vm(vm, KvmVmType::SevEs).unwrap();
    p.init_vm(vm, true).unwrap();
    p.vcpu_created(vm).unwrap();
    p.launch_start(vm, Policy(Policy::ES), None).unwrap();
    p.launch_measure(vm).unwrap();
    let before = (p.guest_status(vm).unwrap(), p.protected_vcpus(vm));
    assert_eq!(
        code(p.launch_update_vmsa(vm, &[reset(VmmType::Qemu).vcpu(0)])),
        Refusal::Status(SevStatus::INVALID_GUEST_STATE)
    );
    assert_eq!((p.guest_status(vm).unwrap(), p.protected_vcpus(vm)), before);
}

#[test]
fn a_vcpu_count_mismatch_changes_nothing() {
    let g = es_guest(KvmVmType::SevEs, 2);
    let before = g.observe();
    for n in [1, 3] {
        let vmsas = reset(VmmType::Qemu).all(n).unwrap();
        assert_eq!(
            code(g.p.launch_update_vmsa(g.vm, &vmsas)),
            Refusal::Errno(libc::EINVAL)
        );
        assert_eq!(g.observe(), before);
    }
    assert_eq!(
        code(g.p.launch_update_vmsa(g.vm, &[])),
        Refusal::Errno(libc::EINVAL)
    );
    assert_eq!(g.observe(), before);
    // The launch goes on as if nothing had been asked.
    let vmsas = reset(VmmType::Qemu).all(2).unwrap();
    g.p.launch_update_vmsa(g.vm, &vmsas).unwrap();
    g.measured_as(&vmsas);
}

#[test]
fn a_failing_vcpu_keeps_the_ones_done_before_it_as_the_kernel_loop_does() {
    let g = es_guest(KvmVmType::SevEs, 2);
    let mut vmsas = reset(VmmType::Qemu).all(2).unwrap();
    vmsas[1].dr7 = 0x401;
    assert_eq!(
        code(g.p.launch_update_vmsa(g.vm, &vmsas)),
        Refusal::Errno(libc::EINVAL),
        "sev_es_sync_vmsa refuses a DR7 other than the reset value"
    );
    assert_eq!(g.p.protected_vcpus(g.vm), Some((1, 2)));
    assert!(g.p.protected_vcpu_state(g.vm, 0).is_some());
    assert!(g.p.protected_vcpu_state(g.vm, 1).is_none());
    // vCPU 0 was measured; a retry now fails on it.
    assert_eq!(
        code(g.p.launch_update_vmsa(g.vm, &reset(VmmType::Qemu).all(2).unwrap())),
        Refusal::Errno(libc::EINVAL)
    );
    g.measured_as(&vmsas[..1]);
}

#[test]
fn protected_state_is_per_vcpu_ciphertext_to_the_host_and_kept_between_runs() {
    let g = es_guest(KvmVmType::SevEs, 2);
    let vmsas = reset(VmmType::Qemu).all(2).unwrap();
    assert!(g.p.protected_vcpu_state(g.vm, 0).is_none(), "not before");
    g.p.launch_update_vmsa(g.vm, &vmsas).unwrap();
    let s0 = g.p.protected_vcpu_state(g.vm, 0).unwrap();
    let s1 = g.p.protected_vcpu_state(g.vm, 1).unwrap();
    assert!(g.p.protected_vcpu_state(g.vm, 2).is_none());
    // The host sees ciphertext: not the page, and the two vCPUs' pages differ even
    // where their state is close.
    assert_ne!(s0.host_view(), vmsas[0].to_bytes());
    assert_ne!(s0.host_view(), s1.host_view());
    assert!(s0
        .host_view()
        .windows(8)
        .all(|w| w != 0x0007_0406_0007_0406u64.to_le_bytes()));
    // The emulated CPU gets the state back, and keeps what it saves.
    assert_eq!(s0.vmrun_load(), vmsas[0]);
    let mut ran = s1.vmrun_load();
    assert_eq!(ran, vmsas[1]);
    ran.rip = 0x1234;
    ran.rax = 7;
    s1.vmexit_save(&ran);
    assert_eq!(
        g.p.protected_vcpu_state(g.vm, 1).unwrap().vmrun_load(),
        ran,
        "the platform hands out the same slot every time"
    );
    // Under the guest's key: the page cipher of the guest decrypts the host view.
    let mut page = s0.host_view();
    let cipher = g.p.page_cipher(g.vm).unwrap();
    cipher.decrypt_page(VMSA_SPA_BASE, &mut page);
    assert_eq!(page, vmsas[0].to_bytes());
    // A vCPU created after LAUNCH_UPDATE_VMSA is not protected.
    g.p.vcpu_created(g.vm).unwrap();
    assert!(g.p.protected_vcpu_state(g.vm, 2).is_none());
    assert_eq!(g.p.protected_vcpus(g.vm), Some((2, 3)));
}

#[test]
fn a_platform_without_es_refuses_es_guests_and_stays_as_it_was() {
    let p = EmulatedPsp::with_es_support(PlatformIdentity::generate().unwrap(), EsSupport::Absent);
    assert!(!p.platform_status().unwrap().es);
    assert!(
        EmulatedPsp::new(PlatformIdentity::generate().unwrap())
            .platform_status()
            .unwrap()
            .es
    );
    let before = p.platform_status().unwrap();
    assert_eq!(
        code(p.add_vm(VmRef(50), KvmVmType::SevEs)),
        Refusal::Errno(libc::EINVAL),
        "no KVM_X86_SEV_ES_VM type"
    );
    p.add_vm(VmRef(51), KvmVmType::Default).unwrap();
    assert_eq!(
        code(p.init_vm(VmRef(51), true)),
        Refusal::Errno(libc::ENOTTY),
        "KVM_SEV_ES_INIT without sev_es_enabled"
    );
    assert_eq!(p.platform_status().unwrap(), before);
    assert_eq!(p.asid(VmRef(51)), None);
    // An SEV VM on it cannot take an ES policy either.
    p.init_vm(VmRef(51), false).unwrap();
    let after_init = p.platform_status().unwrap();
    assert_eq!(
        code(p.launch_start(VmRef(51), Policy(Policy::ES), None)),
        Refusal::Status(SevStatus::POLICY_FAILURE)
    );
    assert_eq!(p.platform_status().unwrap(), after_init);
    p.launch_start(VmRef(51), Policy(0), None).unwrap();
}

#[test]
fn init2_must_match_the_vm_type() {
    let p = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    p.add_vm(VmRef(60), KvmVmType::SevEs).unwrap();
    p.add_vm(VmRef(61), KvmVmType::Sev).unwrap();
    assert_eq!(
        code(p.init_vm(VmRef(60), false)),
        Refusal::Errno(libc::EINVAL)
    );
    assert_eq!(
        code(p.init_vm(VmRef(61), true)),
        Refusal::Errno(libc::EINVAL)
    );
    assert_eq!(p.platform_status().unwrap().state, PlatformState::Uninit);
    p.init_vm(VmRef(60), true).unwrap();
    p.init_vm(VmRef(61), false).unwrap();
    assert!(p.asid(VmRef(60)).unwrap() < MIN_SEV_ASID);
    assert!(p.asid(VmRef(61)).unwrap() >= MIN_SEV_ASID);
    // INIT2 once only (`need_init`).
    assert_eq!(
        code(p.init_vm(VmRef(60), true)),
        Refusal::Errno(libc::EINVAL)
    );
}

#[test]
fn plain_sev_vms_have_no_vmsas() {
    let p = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    p.add_vm(VmRef(70), KvmVmType::Default).unwrap();
    p.init_vm(VmRef(70), false).unwrap();
    p.vcpu_created(VmRef(70)).unwrap();
    p.launch_start(VmRef(70), Policy(0), None).unwrap();
    assert_eq!(
        code(p.launch_update_vmsa(VmRef(70), &[reset(VmmType::Qemu).vcpu(0)])),
        Refusal::Errno(libc::ENOTTY)
    );
    assert!(p.protected_vcpu_state(VmRef(70), 0).is_none());
}
