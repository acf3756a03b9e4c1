//! The kernel's mirror and intra-host move rules, reproduced by the emulated PSP: one
//! test per case of the kernel selftest
//! `tools/testing/selftests/kvm/x86/sev_migrate_tests.c`, plus the ASID-lifetime rule of
//! `sev_vm_copy_enc_context_from` / `sev_vm_destroy` (`arch/x86/kvm/svm/sev.c`).

use sev_platform::{
    backend::{GuestState, PAGE_SIZE},
    emulated::{EmulatedPsp, Migration, SevCommandId, MIN_SEV_ASID},
    memory::VecMemory,
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

/// A fresh VM (`vm_create_barebones`).
fn new_vm(p: &EmulatedPsp) -> sev_platform::backend::VmRef {
    static NEXT: AtomicU64 = AtomicU64::new(1000);
    let vm = sev_platform::backend::VmRef(NEXT.fetch_add(1, Ordering::Relaxed));
    p.note_vm_created(vm);
    vm
}

fn errno<T: std::fmt::Debug>(r: Result<T, SevError>) -> i32 {
    let e = r.unwrap_err();
    e.errno()
        .unwrap_or_else(|| panic!("expected an errno, got {e:?}"))
}

/// `sev_vm_create(es)`: SEV(-ES) init, vCPUs, LAUNCH_START (`sev_vm_launch`), and for
/// ES LAUNCH_UPDATE_VMSA. The guest stays in LUPDATE, as in the selftest.
fn sev_vm_create(p: &EmulatedPsp, es: bool) -> sev_platform::backend::VmRef {
    let vm = new_vm(p);
    p.init_vm(vm, es).unwrap();
    for _ in 0..NR_MIGRATE_TEST_VCPUS {
        p.note_vcpu_created(vm).unwrap();
    }
    let policy = if es { Policy(Policy::ES) } else { Policy(0) };
    p.launch_start(vm, policy, None).unwrap();
    if es {
        p.launch_update_vmsa(vm, &[[0u8; PAGE_SIZE]; NR_MIGRATE_TEST_VCPUS as usize])
            .unwrap();
    }
    vm
}

/// `aux_vm_create(with_vcpus)`.
fn aux_vm_create(p: &EmulatedPsp, with_vcpus: bool) -> sev_platform::backend::VmRef {
    let vm = new_vm(p);
    if with_vcpus {
        for _ in 0..NR_MIGRATE_TEST_VCPUS {
            p.note_vcpu_created(vm).unwrap();
        }
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
    p.note_vcpu_created(sev_es_vm_no_vmsa).unwrap();

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
fn verify_mirror_allowed_cmds(p: &EmulatedPsp, vm: sev_platform::backend::VmRef) {
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
    for _ in 0..NR_MIGRATE_TEST_VCPUS {
        p.note_vcpu_created(dst).unwrap();
    }
    if es {
        p.launch_update_vmsa(dst, &[[0u8; PAGE_SIZE]; NR_MIGRATE_TEST_VCPUS as usize])
            .unwrap();
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

/// An ES mirror's vCPU VMSAs join the owner's launch digest; once the owner has been
/// measured they can no longer be added (the firmware's LAUNCH_UPDATE_VMSA needs LUPDATE).
#[test]
fn es_mirror_vmsas_join_the_owners_measurement() {
    let p = psp();
    let owner = new_vm(&p);
    p.init_vm(owner, true).unwrap();
    p.note_vcpu_created(owner).unwrap();
    p.launch_start(owner, Policy(Policy::ES), None).unwrap();
    let mirror = aux_vm_create(&p, false);
    p.copy_enc_context_from(mirror, owner).unwrap();
    p.note_vcpu_created(mirror).unwrap();
    p.launch_update_vmsa(mirror, &[[9u8; PAGE_SIZE]]).unwrap();
    p.launch_update_vmsa(owner, &[[1u8; PAGE_SIZE]]).unwrap();
    p.launch_measure(owner).unwrap();
    assert_eq!(
        p.guest_status(mirror).unwrap().state,
        GuestState::LaunchSecret
    );
    let late = p
        .launch_update_vmsa(mirror, &[[9u8; PAGE_SIZE]])
        .unwrap_err();
    assert_eq!(
        late.status(),
        Some(sev_platform::SevStatus::INVALID_GUEST_STATE)
    );
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
        errno(p.copy_enc_context_from(vm_no_vcpu, sev_platform::backend::VmRef(u64::MAX))),
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
