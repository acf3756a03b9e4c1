//! The kernel's mirror and intra-host move rules, reproduced by the emulated PSP: one
//! test per case of the kernel selftest
//! `tools/testing/selftests/kvm/x86/sev_migrate_tests.c`, plus the ASID-lifetime rule of
//! `sev_vm_copy_enc_context_from` / `sev_vm_destroy` and the SEV-ES rules of
//! `sev_mem_enc_ioctl`, `sev_launch_update_vmsa`, `is_cmd_allowed_from_mirror`,
//! `sev_vm_move_enc_context_from` / `sev_check_source_vcpus` / `sev_migrate_from`
//! (`arch/x86/kvm/svm/sev.c`), one test per rule.

use sev_platform::{
    backend::{GuestState, KvmVmType, VmRef, PAGE_SIZE},
    emulated::{EmulatedPsp, Migration, SevCommandId, MIN_SEV_ASID},
    measure::{expected_es_digest, verify_measurement},
    memory::VecMemory,
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa},
    PlatformIdentity, Policy, SevBackend, SevError,
};
use std::sync::atomic::{AtomicU64, Ordering};

const NR_MIGRATE_TEST_VCPUS: u32 = 4;
const NR_MIGRATE_TEST_VMS: usize = 3;
const NR_LOCK_TESTING_THREADS: usize = 3;
const NR_LOCK_TESTING_ITERATIONS: usize = 2000;

fn psp() -> EmulatedPsp {
    EmulatedPsp::new(PlatformIdentity::generate().unwrap())
}

/// A fresh VM identity, not yet introduced to the platform.
fn fresh_vm() -> VmRef {
    static NEXT: AtomicU64 = AtomicU64::new(1000);
    VmRef(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A new VM of `vm_type` (`vm_create_barebones`, or `vm_create_with_type`).
fn new_vm_of(p: &EmulatedPsp, vm_type: KvmVmType) -> VmRef {
    let vm = fresh_vm();
    p.add_vm(vm, vm_type).unwrap();
    vm
}

/// A new default-type VM (`vm_create_barebones`).
fn new_vm(p: &EmulatedPsp) -> VmRef {
    new_vm_of(p, KvmVmType::Default)
}

/// The reset VMSAs of `n` vCPUs (what QEMU would set; any firmware AP entry will do).
fn vmsas(n: u32) -> Vec<Vmsa> {
    ResetVmsas {
        vcpu_type: VcpuType::from_name("EPYC-Milan").unwrap(),
        vmm: VmmType::Qemu,
        ap_entry: fwtable::SevEsResetBlock::from_raw(0x0080_b004),
    }
    .all(n)
    .unwrap()
}

fn add_vcpus(p: &EmulatedPsp, vm: VmRef, n: u32) {
    for _ in 0..n {
        p.vcpu_created(vm).unwrap();
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, SevError>) -> i32 {
    let e = r.unwrap_err();
    e.errno()
        .unwrap_or_else(|| panic!("expected an errno, got {e:?}"))
}

/// `sev_vm_create(es)`: SEV(-ES) init, vCPUs, LAUNCH_START (`sev_vm_launch`), and for
/// ES LAUNCH_UPDATE_VMSA. The guest stays in LUPDATE, as in the selftest.
fn sev_vm_create(p: &EmulatedPsp, es: bool) -> VmRef {
    let vm = new_vm(p);
    p.init_vm(vm, es).unwrap();
    add_vcpus(p, vm, NR_MIGRATE_TEST_VCPUS);
    let policy = if es { Policy(Policy::ES) } else { Policy(0) };
    p.launch_start(vm, policy, None).unwrap();
    if es {
        p.launch_update_vmsa(vm, &vmsas(NR_MIGRATE_TEST_VCPUS))
            .unwrap();
    }
    vm
}

/// `aux_vm_create(with_vcpus)`.
fn aux_vm_create(p: &EmulatedPsp, with_vcpus: bool) -> VmRef {
    let vm = new_vm(p);
    if with_vcpus {
        add_vcpus(p, vm, NR_MIGRATE_TEST_VCPUS);
    }
    vm
}

/// Mirrors `test_sev_migrate_from(es)`: a chain of moves src → dst0 → dst1 → dst2; moving
/// back into the (dead) source fails with EIO.
fn sev_migrate_from(es: bool) {
    let p = psp();
    let src = sev_vm_create(&p, es);
    let handle = p.guest_status(src).unwrap().handle;
    let dst: Vec<_> = (0..NR_MIGRATE_TEST_VMS)
        .map(|_| aux_vm_create(&p, true))
        .collect();
    p.move_enc_context_from(dst[0], src).unwrap();
    for i in 1..NR_MIGRATE_TEST_VMS {
        p.move_enc_context_from(dst[i], dst[i - 1]).unwrap();
    }
    let last = dst[NR_MIGRATE_TEST_VMS - 1];
    assert_eq!(
        errno(p.move_enc_context_from(src, last)),
        libc::EIO,
        "VM that was migrated from should be dead"
    );
    // The guest moved intact; every earlier holder is dead.
    let g = p.guest_status(last).unwrap();
    assert_eq!((g.handle, g.state), (handle, GuestState::LaunchUpdate));
    // And the launch goes on at the new holder.
    p.launch_measure(last).unwrap();
    p.launch_finish(last).unwrap();
    for dead in [src, dst[0], dst[1]] {
        assert_eq!(errno(p.guest_status(dead)), libc::EIO);
        assert!(p.page_cipher(dead).is_none());
    }
}

/// Mirrors `test_sev_migrate_from(false)`.
#[test]
fn test_sev_migrate_from_sev() {
    sev_migrate_from(false);
}

/// Mirrors `test_sev_migrate_from(true)`.
#[test]
fn test_sev_migrate_from_sev_es() {
    sev_migrate_from(true);
}

/// Mirrors `test_sev_migrate_locking`: three threads hammer moves between three SEV VMs;
/// nothing deadlocks, every attempt is refused (each destination is already an SEV VM,
/// or is the source), and each VM keeps its own guest.
#[test]
fn test_sev_migrate_locking() {
    let p = psp();
    let vms: Vec<_> = (0..NR_LOCK_TESTING_THREADS)
        .map(|_| sev_vm_create(&p, false))
        .collect();
    let handles: Vec<_> = vms
        .iter()
        .map(|&vm| p.guest_status(vm).unwrap().handle)
        .collect();
    std::thread::scope(|s| {
        for &dst in &vms {
            let (p, vms) = (&p, &vms);
            s.spawn(move || {
                for i in 0..NR_LOCK_TESTING_ITERATIONS {
                    let src = vms[i % NR_LOCK_TESTING_THREADS];
                    assert_eq!(errno(p.move_enc_context_from(dst, src)), libc::EINVAL);
                }
            });
        }
    });
    for (vm, handle) in vms.iter().zip(handles) {
        assert_eq!(p.guest_status(*vm).unwrap().handle, handle);
    }
}

/// Mirrors `test_sev_migrate_parameters`.
#[test]
fn test_sev_migrate_parameters() {
    let p = psp();
    let vm_no_vcpu = new_vm(&p);
    let vm_no_sev = aux_vm_create(&p, true);
    assert_eq!(
        errno(p.move_enc_context_from(vm_no_vcpu, vm_no_sev)),
        libc::EINVAL,
        "Migrations require SEV enabled"
    );

    let sev_vm = sev_vm_create(&p, false);
    let sev_es_vm = sev_vm_create(&p, true);
    let sev_es_vm_no_vmsa = new_vm(&p);
    p.init_vm(sev_es_vm_no_vmsa, true).unwrap();
    p.vcpu_created(sev_es_vm_no_vmsa).unwrap();

    assert_eq!(
        errno(p.move_enc_context_from(sev_vm, sev_es_vm)),
        libc::EINVAL,
        "Should not be able migrate to SEV enabled VM"
    );
    assert_eq!(
        errno(p.move_enc_context_from(sev_es_vm, sev_vm)),
        libc::EINVAL,
        "Should not be able migrate to SEV-ES enabled VM"
    );
    assert_eq!(
        errno(p.move_enc_context_from(vm_no_vcpu, sev_es_vm)),
        libc::EINVAL,
        "SEV-ES migrations require same number of vCPUS"
    );
    assert_eq!(
        errno(p.move_enc_context_from(vm_no_vcpu, sev_es_vm_no_vmsa)),
        libc::EINVAL,
        "SEV-ES migrations require UPDATE_VMSA"
    );
    // Nothing moved.
    assert!(p.guest_status(sev_es_vm).is_ok() && p.guest_status(sev_vm).is_ok());
    assert_eq!(errno(p.guest_status(vm_no_vcpu)), libc::ENOTTY);
}

/// `verify_mirror_allowed_cmds`: every id in 0..KVM_SEV_NR_MAX except the four allowed
/// ones is EINVAL on a mirror, before its arguments are looked at; GUEST_STATUS works.
fn verify_mirror_allowed_cmds(p: &EmulatedPsp, vm: VmRef) {
    for id in 0..=102u32 {
        let id = SevCommandId(id);
        match id {
            SevCommandId::LAUNCH_UPDATE_VMSA
            | SevCommandId::GUEST_STATUS
            | SevCommandId::DBG_DECRYPT
            | SevCommandId::DBG_ENCRYPT => p.check_encrypt_op(vm, id).unwrap(),
            _ => assert_eq!(
                errno(p.check_encrypt_op(vm, id)),
                libc::EINVAL,
                "Should not be able call command: {id}"
            ),
        }
    }
    // The trait methods apply the same gate.
    let mem = VecMemory::new(0, PAGE_SIZE);
    assert_eq!(errno(p.init_vm(vm, false)), libc::EINVAL);
    assert_eq!(errno(p.launch_start(vm, Policy(0), None)), libc::EINVAL);
    assert_eq!(errno(p.launch_update_data(vm, &mem, 0, 16)), libc::EINVAL);
    assert_eq!(errno(p.launch_measure(vm)), libc::EINVAL);
    assert_eq!(errno(p.launch_finish(vm)), libc::EINVAL);
    let header = sev_platform::backend::SecretHeader {
        flags: 0,
        iv: [0; 16],
        mac: [0; 32],
    };
    assert_eq!(
        errno(p.launch_secret(vm, &mem, &header, &[0; 16], 0)),
        libc::EINVAL
    );
    assert_eq!(errno(p.register_region(vm)), libc::EINVAL);
    p.guest_status(vm).unwrap();
}

/// Mirrors `test_sev_mirror(es)`.
fn sev_mirror(es: bool) {
    let p = psp();
    let src = sev_vm_create(&p, es);
    let dst = aux_vm_create(&p, false);
    p.copy_enc_context_from(dst, src).unwrap();
    add_vcpus(&p, dst, NR_MIGRATE_TEST_VCPUS);
    if es {
        p.launch_update_vmsa(dst, &vmsas(NR_MIGRATE_TEST_VCPUS))
            .unwrap();
        assert_eq!(p.protected_vcpus(dst), Some((4, 4)));
    }
    verify_mirror_allowed_cmds(&p, dst);
    // Same context: same handle, ASID, key.
    assert_eq!(p.guest_status(dst).unwrap(), p.guest_status(src).unwrap());
    let (a, b) = (p.page_cipher(src).unwrap(), p.page_cipher(dst).unwrap());
    let (mut x, mut y) = ([3u8; PAGE_SIZE], [3u8; PAGE_SIZE]);
    a.encrypt_page(0x5000, &mut x);
    b.encrypt_page(0x5000, &mut y);
    assert_eq!(x, y, "the mirror uses the owner's key");
}

/// Mirrors `test_sev_mirror(false)`.
#[test]
fn test_sev_mirror_sev() {
    sev_mirror(false);
}

/// Mirrors `test_sev_mirror(true)`.
#[test]
fn test_sev_mirror_sev_es() {
    sev_mirror(true);
}

/// An ES mirror's vCPU VMSAs join the owner's launch digest, in the order they are
/// issued; once the owner has been measured a mirror vCPU can no longer get one (the
/// firmware's LAUNCH_UPDATE_VMSA needs LUPDATE).
#[test]
fn es_mirror_vmsas_join_the_owners_measurement() {
    let p = psp();
    let owner = new_vm(&p);
    p.init_vm(owner, true).unwrap();
    p.vcpu_created(owner).unwrap();
    let policy = Policy(Policy::ES);
    let s = sev_platform::owner::session(&p.export_certs().unwrap().pdh, policy).unwrap();
    p.launch_start(owner, policy, Some(&s.launch_session()))
        .unwrap();
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, owner).unwrap();
    p.vcpu_created(mirror).unwrap();
    let late_mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(late_mirror, owner).unwrap();
    p.vcpu_created(late_mirror).unwrap();
    let mut helper = vmsas(1)[0];
    helper.rip = 0x1234;
    p.launch_update_vmsa(mirror, &[helper]).unwrap();
    p.launch_update_vmsa(owner, &vmsas(1)).unwrap();
    let m = p.launch_measure(owner).unwrap();
    // The digest: no data, the mirror's helper VMSA, then the owner's vCPU 0, both
    // without FPU state (legacy KVM_SEV_ES_INIT).
    let (mut helper_synced, mut owner_synced) = (helper, vmsas(1)[0]);
    helper_synced.clear_fpu();
    owner_synced.clear_fpu();
    let want = expected_es_digest(&[], &[helper_synced, owner_synced]);
    verify_measurement(s.keys.tik(), p.firmware_version(), policy, &want, &m).unwrap();
    assert_eq!(
        p.guest_status(mirror).unwrap().state,
        GuestState::LaunchSecret
    );
    let late = p.launch_update_vmsa(late_mirror, &vmsas(1)).unwrap_err();
    assert_eq!(
        late.status(),
        Some(sev_platform::SevStatus::INVALID_GUEST_STATE)
    );
    assert_eq!(p.protected_vcpus(late_mirror), Some((0, 1)));
}

/// Mirrors `test_sev_mirror_parameters`.
#[test]
fn test_sev_mirror_parameters() {
    let p = psp();
    let sev_vm = sev_vm_create(&p, false);
    let vm_with_vcpu = aux_vm_create(&p, true);
    let vm_no_vcpu = aux_vm_create(&p, false);
    assert_eq!(
        errno(p.copy_enc_context_from(sev_vm, sev_vm)),
        libc::EINVAL,
        "Should not be able copy context to self"
    );
    assert_eq!(
        errno(p.copy_enc_context_from(vm_no_vcpu, vm_with_vcpu)),
        libc::EINVAL,
        "Copy context requires SEV enabled"
    );
    assert_eq!(
        errno(p.copy_enc_context_from(vm_with_vcpu, sev_vm)),
        libc::EINVAL,
        "SEV copy context requires no vCPUS on the destination"
    );
    let sev_es_vm = sev_vm_create(&p, true);
    assert_eq!(
        errno(p.copy_enc_context_from(sev_vm, sev_es_vm)),
        libc::EINVAL,
        "Should not be able copy context to SEV enabled VM"
    );
    assert_eq!(
        errno(p.copy_enc_context_from(sev_es_vm, sev_vm)),
        libc::EINVAL,
        "Should not be able copy context to SEV-ES enabled VM"
    );
    // Beyond the selftest, the other rules of sev_vm_copy_enc_context_from.
    assert_eq!(
        errno(p.copy_enc_context_from(vm_no_vcpu, VmRef(u64::MAX))),
        libc::EBADF
    );
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, sev_vm).unwrap();
    assert_eq!(
        errno(p.copy_enc_context_from(vm_no_vcpu, mirror)),
        libc::EINVAL,
        "mirrors of mirrors"
    );
    p.set_migration(sev_vm, Migration::InProgress);
    assert_eq!(
        errno(p.copy_enc_context_from(vm_no_vcpu, sev_vm)),
        libc::EBUSY
    );
    assert_eq!(
        errno(p.move_enc_context_from(vm_no_vcpu, sev_vm)),
        libc::EBUSY
    );
    p.set_migration(sev_vm, Migration::Idle);
    p.set_migration(vm_no_vcpu, Migration::InProgress);
    assert_eq!(
        errno(p.copy_enc_context_from(vm_no_vcpu, sev_vm)),
        libc::EBUSY
    );
    p.set_migration(vm_no_vcpu, Migration::Idle);
    p.copy_enc_context_from(vm_no_vcpu, sev_vm).unwrap();
}

/// Mirrors `test_sev_move_copy`: owners and mirrors move independently and the context
/// follows; then the same with mirrors destroyed before the VMs they mirror.
#[test]
fn test_sev_move_copy() {
    let p = psp();
    let sev_vm = sev_vm_create(&p, false);
    let asid = p.asid(sev_vm).unwrap();
    let (dst, dst2, dst3) = (
        aux_vm_create(&p, true),
        aux_vm_create(&p, true),
        aux_vm_create(&p, true),
    );
    let mirror = aux_vm_create(&p, false);
    let (dst_mirror, dst2_mirror, dst3_mirror) = (
        aux_vm_create(&p, false),
        aux_vm_create(&p, false),
        aux_vm_create(&p, false),
    );
    p.copy_enc_context_from(mirror, sev_vm).unwrap();
    p.move_enc_context_from(dst_mirror, mirror).unwrap();
    p.move_enc_context_from(dst, sev_vm).unwrap();
    p.move_enc_context_from(dst2, dst).unwrap();
    p.move_enc_context_from(dst2_mirror, dst_mirror).unwrap();
    p.move_enc_context_from(dst3_mirror, dst2_mirror).unwrap();
    p.move_enc_context_from(dst3, dst2).unwrap();
    // The last mirror is a mirror of the last owner: same context, mirror rules.
    assert_eq!(
        p.guest_status(dst3_mirror).unwrap(),
        p.guest_status(dst3).unwrap()
    );
    assert_eq!(p.asid(dst3_mirror), Some(asid));
    assert_eq!(errno(p.launch_measure(dst3_mirror)), libc::EINVAL);
    for vm in [
        dst,
        sev_vm,
        dst2,
        dst3,
        mirror,
        dst_mirror,
        dst2_mirror,
        dst3_mirror,
    ] {
        p.vm_destroyed(vm);
    }
    assert!(!p.asid_in_use(asid));
    assert_eq!(p.platform_status().unwrap().guest_count, 0);

    // Destroy mirrors before the VMs they mirror.
    let sev_vm = sev_vm_create(&p, false);
    let dst = aux_vm_create(&p, true);
    let mirror = aux_vm_create(&p, false);
    let dst_mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, sev_vm).unwrap();
    p.move_enc_context_from(dst_mirror, mirror).unwrap();
    p.move_enc_context_from(dst, sev_vm).unwrap();
    let asid = p.asid(dst).unwrap();
    p.vm_destroyed(mirror);
    p.vm_destroyed(dst_mirror);
    assert!(p.asid_in_use(asid));
    p.vm_destroyed(dst);
    p.vm_destroyed(sev_vm);
    assert!(!p.asid_in_use(asid));
}

/// `sev_vm_copy_enc_context_from` takes a reference on the owner: its ASID and key stay
/// while a mirror lives, even after the owner VM is destroyed, and no other guest can get
/// that ASID meanwhile.
#[test]
fn owner_asid_outlives_the_owner_while_a_mirror_lives() {
    let p = psp();
    let owner = sev_vm_create(&p, false);
    let asid = p.asid(owner).unwrap();
    assert_eq!(asid, MIN_SEV_ASID);
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, owner).unwrap();
    p.vm_destroyed(owner);
    assert!(p.asid_in_use(asid));
    assert_eq!(p.guest_status(mirror).unwrap().asid, asid);
    assert!(
        p.page_cipher(mirror).is_some(),
        "the mirror still has the key"
    );
    // The 7 other SEV ASIDs can be taken; the 8th VM finds none (the owner's is held).
    let others: Vec<_> = (0..7).map(|_| sev_vm_create(&p, false)).collect();
    assert!(others.iter().all(|vm| p.asid(*vm) != Some(asid)));
    let extra = new_vm(&p);
    assert_eq!(errno(p.init_vm(extra, false)), libc::EBUSY);
    // The last reference goes: the ASID is reclaimed and can be handed out again.
    p.vm_destroyed(mirror);
    assert!(!p.asid_in_use(asid));
    p.init_vm(extra, false).unwrap();
    assert_eq!(p.asid(extra), Some(asid));
}

// ---------------------------------------------------------------------------------------
// SEV-ES and the handle/fd rules (issue 12): one test per rule of sev.c.
// ---------------------------------------------------------------------------------------

/// `sev_vm_copy_enc_context_from` copies `es_active`: an ES owner's mirror measures VMSAs,
/// a plain SEV owner's mirror has none to measure (`sev_launch_update_vmsa`: ENOTTY
/// unless `sev_es_guest`), and the mirror cannot re-initialise itself as anything else.
#[test]
fn a_mirror_takes_its_owners_es_flag() {
    let p = psp();
    for es in [true, false] {
        let owner = sev_vm_create(&p, es);
        let mirror = aux_vm_create(&p, false);
        p.copy_enc_context_from(mirror, owner).unwrap();
        add_vcpus(&p, mirror, 1);
        let r = p.launch_update_vmsa(mirror, &vmsas(1));
        if es {
            r.unwrap();
            assert_eq!(p.protected_vcpus(mirror), Some((1, 1)));
        } else {
            assert_eq!(errno(r), libc::ENOTTY);
            assert_eq!(p.protected_vcpus(mirror), Some((0, 1)));
        }
        assert_eq!(errno(p.init_vm(mirror, !es)), libc::EINVAL);
        assert_eq!(
            p.asid(mirror).map(|a| a < MIN_SEV_ASID),
            Some(es),
            "the mirror draws on the owner's ES ASID"
        );
    }
}

/// `is_cmd_allowed_from_mirror`: LAUNCH_UPDATE_VMSA is one of the four commands a mirror
/// may issue, and on a mirror it protects the mirror's own vCPUs, not the owner's.
#[test]
fn launch_update_vmsa_is_one_of_the_four_mirror_commands() {
    let p = psp();
    let owner = new_vm(&p);
    p.init_vm(owner, true).unwrap();
    add_vcpus(&p, owner, 2);
    p.launch_start(owner, Policy(Policy::ES), None).unwrap();
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, owner).unwrap();
    add_vcpus(&p, mirror, 1);
    let allowed: Vec<u32> = (0..=102)
        .map(SevCommandId)
        .filter(|&id| p.check_encrypt_op(mirror, id).is_ok())
        .map(|id| id.0)
        .collect();
    assert_eq!(allowed, [4, 16, 17, 18]);
    p.launch_update_vmsa(mirror, &vmsas(1)).unwrap();
    assert_eq!(p.protected_vcpus(mirror), Some((1, 1)));
    assert_eq!(p.protected_vcpus(owner), Some((0, 2)));
    p.launch_update_vmsa(owner, &vmsas(2)).unwrap();
    assert_eq!(errno(p.launch_measure(mirror)), libc::EINVAL);
    p.launch_measure(owner).unwrap();
}

/// `sev_check_source_vcpus`: an SEV-ES move needs as many vCPUs in the destination as in
/// the source (a plain SEV move does not); a refused move changes nothing.
#[test]
fn an_es_move_needs_the_same_vcpu_count() {
    let p = psp();
    let src = sev_vm_create(&p, true);
    let fewer = new_vm(&p);
    add_vcpus(&p, fewer, NR_MIGRATE_TEST_VCPUS - 1);
    let more = new_vm(&p);
    add_vcpus(&p, more, NR_MIGRATE_TEST_VCPUS + 1);
    assert_eq!(errno(p.move_enc_context_from(fewer, src)), libc::EINVAL);
    assert_eq!(errno(p.move_enc_context_from(more, src)), libc::EINVAL);
    assert_eq!(p.protected_vcpus(src), Some((4, 4)));
    p.guest_status(src).unwrap();
    let same = aux_vm_create(&p, true);
    p.move_enc_context_from(same, src).unwrap();
    // Plain SEV: any count.
    let sev = sev_vm_create(&p, false);
    let one = new_vm(&p);
    add_vcpus(&p, one, 1);
    p.move_enc_context_from(one, sev).unwrap();
}

/// `sev_check_source_vcpus` looks at every source vCPU's `guest_state_protected`: a vCPU
/// created after LAUNCH_UPDATE_VMSA does not count, even with equal vCPU counts.
#[test]
fn an_es_move_needs_every_source_vcpu_protected_not_just_the_vm() {
    let p = psp();
    let src = sev_vm_create(&p, true);
    p.vcpu_created(src).unwrap();
    assert_eq!(p.protected_vcpus(src), Some((4, 5)));
    let dst = new_vm(&p);
    add_vcpus(&p, dst, NR_MIGRATE_TEST_VCPUS + 1);
    assert_eq!(errno(p.move_enc_context_from(dst, src)), libc::EINVAL);
    // Nothing moved: the source still owns the guest and its VMSAs.
    p.guest_status(src).unwrap();
    assert!(p.protected_vcpu_state(src, 0).is_some());
    assert_eq!(errno(p.guest_status(dst)), libc::ENOTTY);
}

/// `sev_migrate_from` hands each source vCPU's VMSA to the destination vCPU of the same
/// index and clears the source's; the source is dead.
#[test]
fn an_es_move_hands_each_vmsa_to_the_vcpu_of_the_same_index() {
    let p = psp();
    let src = new_vm(&p);
    p.init_vm(src, true).unwrap();
    add_vcpus(&p, src, 3);
    p.launch_start(src, Policy(Policy::ES), None).unwrap();
    let mut states = vmsas(3);
    states[2].rbx = 0xbeef;
    p.launch_update_vmsa(src, &states).unwrap();
    let before: Vec<_> = (0..3)
        .map(|i| p.protected_vcpu_state(src, i).unwrap().host_view())
        .collect();
    let dst = new_vm(&p);
    add_vcpus(&p, dst, 3);
    p.move_enc_context_from(dst, src).unwrap();
    for i in 0..3 {
        let slot = p.protected_vcpu_state(dst, i).unwrap();
        assert_eq!(slot.host_view(), before[i as usize]);
        assert_eq!(slot.vmrun_load().rbx, if i == 2 { 0xbeef } else { 0 });
        assert!(p.protected_vcpu_state(src, i).is_none());
    }
    assert_eq!(errno(p.guest_status(src)), libc::EIO);
    p.launch_measure(dst).unwrap();
}

/// `sev_vm_copy_enc_context_from` copies the owner's handle and `/dev/sev` fd as they are
/// at the copy: a mirror copied before its owner's LAUNCH_START keeps handle 0 and fd 0,
/// so every firmware command it issues later fails (`__sev_issue_cmd`: fd 0 is not
/// `/dev/sev`, EBADF), while the owner goes on. The same holds for the owner itself before
/// its LAUNCH_START.
#[test]
fn a_mirror_copied_before_launch_start_keeps_handle_zero() {
    let p = psp();
    for es in [false, true] {
        let owner = new_vm(&p);
        p.init_vm(owner, es).unwrap();
        assert_eq!(errno(p.guest_status(owner)), libc::EBADF);
        let early = aux_vm_create(&p, false);
        p.copy_enc_context_from(early, owner).unwrap();
        let policy = if es { Policy(Policy::ES) } else { Policy(0) };
        let handle = p.launch_start(owner, policy, None).unwrap();
        let late = aux_vm_create(&p, false);
        p.copy_enc_context_from(late, owner).unwrap();
        assert_eq!(errno(p.guest_status(early)), libc::EBADF);
        let mem = VecMemory::new(0, PAGE_SIZE);
        assert_eq!(
            errno(p.dbg_decrypt(early, &mem, 0, &mut [0; 16])),
            libc::EBADF
        );
        assert_eq!(p.guest_status(late).unwrap().handle, handle);
        if es {
            add_vcpus(&p, early, 1);
            assert_eq!(errno(p.launch_update_vmsa(early, &vmsas(1))), libc::EBADF);
            assert_eq!(p.protected_vcpus(early), Some((0, 1)));
        }
        // The owner is unaffected.
        let g = p.guest_status(owner).unwrap();
        assert_eq!((g.handle, g.state), (handle, GuestState::LaunchUpdate));
    }
}

/// `sev_vm_move_enc_context_from`: both VMs must have the same KVM VM type (EINVAL).
#[test]
fn a_move_between_vms_of_different_types_is_einval() {
    let p = psp();
    let src = sev_vm_create(&p, true);
    for t in [KvmVmType::Sev, KvmVmType::SevEs] {
        let dst = new_vm_of(&p, t);
        add_vcpus(&p, dst, NR_MIGRATE_TEST_VCPUS);
        assert_eq!(errno(p.move_enc_context_from(dst, src)), libc::EINVAL);
    }
    p.guest_status(src).unwrap();
    // INIT2 VMs move to VMs of their own type.
    let typed = new_vm_of(&p, KvmVmType::SevEs);
    p.init_vm(typed, true).unwrap();
    add_vcpus(&p, typed, 2);
    p.launch_start(typed, Policy(Policy::ES), None).unwrap();
    p.launch_update_vmsa(typed, &vmsas(2)).unwrap();
    let default_dst = aux_vm_create(&p, false);
    add_vcpus(&p, default_dst, 2);
    assert_eq!(
        errno(p.move_enc_context_from(default_dst, typed)),
        libc::EINVAL
    );
    let typed_dst = new_vm_of(&p, KvmVmType::SevEs);
    add_vcpus(&p, typed_dst, 2);
    p.move_enc_context_from(typed_dst, typed).unwrap();
}

/// `sev_launch_update_vmsa` loops over the vCPUs: with none it succeeds without a
/// firmware call, whatever the firmware would have said (no handle yet, or past LUPDATE),
/// and measures nothing.
#[test]
fn launch_update_vmsa_with_no_vcpus_succeeds_without_a_firmware_call() {
    let p = psp();
    let vm = new_vm(&p);
    p.init_vm(vm, true).unwrap();
    p.launch_update_vmsa(vm, &[]).unwrap(); // handle 0: a firmware call would be EBADF
    let policy = Policy(Policy::ES);
    let s = sev_platform::owner::session(&p.export_certs().unwrap().pdh, policy).unwrap();
    p.launch_start(vm, policy, Some(&s.launch_session()))
        .unwrap();
    p.launch_update_vmsa(vm, &[]).unwrap();
    let m = p.launch_measure(vm).unwrap();
    p.launch_update_vmsa(vm, &[]).unwrap(); // LSECRET: the firmware would refuse
    let nothing = expected_es_digest(&[], &[]);
    verify_measurement(s.keys.tik(), p.firmware_version(), policy, &nothing, &m).unwrap();
    // Still ENOTTY on a VM that is not SEV-ES, vCPUs or not.
    let sev = new_vm(&p);
    p.init_vm(sev, false).unwrap();
    assert_eq!(errno(p.launch_update_vmsa(sev, &[])), libc::ENOTTY);
}

/// An ioctl on a VM fd that is not open fails with EBADF before anything else: never
/// announced, or closed (`vm_destroyed`). Naming such a VM as the source of a copy or a
/// move is EBADF too (`CLASS(fd)` / `file_is_kvm`).
#[test]
fn commands_on_a_closed_or_unknown_vm_are_ebadf() {
    let p = psp();
    let mem = VecMemory::new(0, PAGE_SIZE);
    let unknown = fresh_vm();
    let live = sev_vm_create(&p, true);
    let closed = sev_vm_create(&p, false);
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, closed).unwrap();
    p.vm_destroyed(closed);
    for vm in [unknown, closed] {
        assert_eq!(errno(p.init_vm(vm, false)), libc::EBADF);
        assert_eq!(errno(p.launch_start(vm, Policy(0), None)), libc::EBADF);
        assert_eq!(errno(p.launch_update_data(vm, &mem, 0, 16)), libc::EBADF);
        assert_eq!(errno(p.launch_update_vmsa(vm, &[])), libc::EBADF);
        assert_eq!(errno(p.launch_measure(vm)), libc::EBADF);
        assert_eq!(errno(p.launch_finish(vm)), libc::EBADF);
        assert_eq!(errno(p.guest_status(vm)), libc::EBADF);
        assert_eq!(errno(p.dbg_encrypt(vm, &mem, 0, &[1; 16])), libc::EBADF);
        assert_eq!(errno(p.register_region(vm)), libc::EBADF);
        assert_eq!(errno(p.vcpu_created(vm)), libc::EBADF);
        for id in [SevCommandId::GUEST_STATUS, SevCommandId(99)] {
            assert_eq!(errno(p.check_encrypt_op(vm, id)), libc::EBADF);
        }
        let fresh = new_vm(&p);
        assert_eq!(errno(p.copy_enc_context_from(fresh, vm)), libc::EBADF);
        assert_eq!(errno(p.copy_enc_context_from(vm, live)), libc::EBADF);
        assert_eq!(errno(p.move_enc_context_from(fresh, vm)), libc::EBADF);
        assert_eq!(errno(p.move_enc_context_from(vm, live)), libc::EBADF);
        assert!(p.page_cipher(vm).is_none());
        assert!(p.protected_vcpu_state(vm, 0).is_none());
    }
    // The closed owner's mirror still holds the context; the live VM is untouched.
    p.guest_status(mirror).unwrap();
    assert_eq!(p.protected_vcpus(live), Some((4, 4)));
}
