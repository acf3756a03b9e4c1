//! Every emulated PSP command: success, each failure with its status or errno, and that
//! a failure leaves the platform, the guest and guest memory as they were.

use super::*;
use crate::{
    backend::{LaunchMemory, Refusal},
    measure::{expected_digest, verify_measurement},
    memory::VecMemory,
    owner,
    secret::{seal, seal_with_iv},
};

const VM: VmRef = VmRef(10);
const MEM_BASE: u64 = 0x10_0000;

/// VMs below this are open KVM VMs of the default type in every test platform; VMs from
/// it on are not.
const OPEN_VMS: u64 = 500;

/// A platform on which VMs `0..OPEN_VMS` are open default-type VMs (the tests of one
/// command need not introduce every VM they use; the EBADF tests use VMs above).
fn psp() -> EmulatedPsp {
    let p = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    for vm in 0..OPEN_VMS {
        p.add_vm(VmRef(vm), KvmVmType::Default).unwrap();
    }
    p
}

fn code<T: std::fmt::Debug>(r: Result<T, SevError>) -> Refusal {
    let e = r.unwrap_err();
    EmulatedPsp::refusal_of(&e).unwrap_or_else(|| panic!("no code in {e:?}"))
}

fn st(s: SevStatus) -> Refusal {
    Refusal::Status(s)
}

/// What a failed command must not change.
#[derive(Debug, PartialEq)]
struct Observed {
    platform: PlatformStatus,
    guest: Result<GuestStatus, Refusal>,
    cipher: bool,
}

fn observe(p: &EmulatedPsp, vm: VmRef) -> Observed {
    Observed {
        platform: p.platform_status().unwrap(),
        guest: p
            .guest_status(vm)
            .map_err(|e| EmulatedPsp::refusal_of(&e).unwrap()),
        cipher: p.page_cipher(vm).is_some(),
    }
}

/// Asserts `f` fails with `want` and changes nothing observable.
fn refused<T: std::fmt::Debug>(
    p: &EmulatedPsp,
    vm: VmRef,
    want: Refusal,
    f: impl FnOnce() -> Result<T, SevError>,
) {
    let before = observe(p, vm);
    assert_eq!(code(f()), want);
    assert_eq!(observe(p, vm), before, "a refused command changed state");
}

/// A launched guest with a session whose keys the test knows.
fn launched(p: &EmulatedPsp, policy: Policy) -> TransportKeys {
    p.add_vm(VM, KvmVmType::Default).unwrap();
    p.init_vm(VM, policy.has(Policy::ES)).unwrap();
    let pdh = p.export_certs().unwrap().pdh;
    let s = owner::session(&pdh, policy).unwrap();
    p.launch_start(VM, policy, Some(&s.launch_session()))
        .unwrap();
    s.keys
}

fn image() -> VecMemory {
    let data: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i * 13 + 1) as u8).collect();
    VecMemory::with_data(MEM_BASE, data)
}

#[test]
fn platform_state_follows_guests() {
    let p = psp();
    let s = p.platform_status().unwrap();
    assert_eq!(
        (s.state, s.guest_count, s.api_major, s.api_minor, s.build),
        (PlatformState::Uninit, 0, 0, 24, 1)
    );
    p.init_vm(VM, false).unwrap();
    assert_eq!(p.platform_status().unwrap().state, PlatformState::Init);
    p.launch_start(VM, Policy(0), None).unwrap();
    let s = p.platform_status().unwrap();
    assert_eq!((s.state, s.guest_count), (PlatformState::Working, 1));
    p.vm_destroyed(VM);
    let s = p.platform_status().unwrap();
    assert_eq!((s.state, s.guest_count), (PlatformState::Init, 0));
    assert_eq!(p.kind(), BackendKind::Emulated);
}

#[test]
fn init_refusals() {
    let p = psp();
    p.init_vm(VM, false).unwrap();
    refused(&p, VM, Refusal::Errno(libc::EINVAL), || {
        p.init_vm(VM, false)
    });
    let with_vcpu = VmRef(11);
    p.vcpu_created(with_vcpu).unwrap();
    assert_eq!(
        code(p.init_vm(with_vcpu, false)),
        Refusal::Errno(libc::EINVAL)
    );
    assert_eq!(p.asid(with_vcpu), None);
    // SEV ASIDs 8..=15: seven more fit, the ninth SEV VM gets EBUSY.
    for i in 0..7 {
        p.init_vm(VmRef(100 + i), false).unwrap();
    }
    assert_eq!(
        code(p.init_vm(VmRef(200), false)),
        Refusal::Errno(libc::EBUSY)
    );
    // ES ASIDs 1..=7 are a separate range.
    for i in 0..7 {
        p.init_vm(VmRef(300 + i), true).unwrap();
        assert!(p.asid(VmRef(300 + i)).unwrap() < MIN_SEV_ASID);
    }
    assert_eq!(
        code(p.init_vm(VmRef(400), true)),
        Refusal::Errno(libc::EBUSY)
    );
}

#[test]
fn launch_start_refusals_leave_everything_unchanged() {
    let p = psp();
    assert_eq!(
        code(p.launch_start(VM, Policy(0), None)),
        Refusal::Errno(libc::ENOTTY)
    );
    p.init_vm(VM, false).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_PARAM), || {
        p.launch_start(VM, Policy(1 << 7), None)
    });
    let needs_newer = Policy(0x19 << 16);
    refused(&p, VM, st(SevStatus::POLICY_FAILURE), || {
        p.launch_start(VM, needs_newer, None)
    });
    refused(&p, VM, st(SevStatus::POLICY_FAILURE), || {
        p.launch_start(VM, Policy(Policy::ES), None)
    });
    let pdh = p.export_certs().unwrap().pdh;
    let s = owner::session(&pdh, Policy(0)).unwrap();
    let mut ls = s.launch_session();
    ls.session.truncate(100);
    refused(&p, VM, st(SevStatus::INVALID_LENGTH), || {
        p.launch_start(VM, Policy(0), Some(&ls))
    });
    let mut ls = s.launch_session();
    ls.godh_cert = vec![0x5a; 0x824];
    refused(&p, VM, st(SevStatus::INVALID_CERTIFICATE), || {
        p.launch_start(VM, Policy(0), Some(&ls))
    });
    let mut ls = s.launch_session();
    ls.session[0x10] ^= 1; // wrap_tk
    refused(&p, VM, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_start(VM, Policy(0), Some(&ls))
    });
    // The policy the session was made for is MACed.
    refused(&p, VM, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_start(VM, Policy(Policy::NODBG), Some(&s.launch_session()))
    });
    let handle = p
        .launch_start(VM, Policy(0), Some(&s.launch_session()))
        .unwrap();
    assert_ne!(handle, 0);
    let g = p.guest_status(VM).unwrap();
    assert_eq!(
        (g.handle, g.state, g.asid),
        (handle, GuestState::LaunchUpdate, MIN_SEV_ASID)
    );
    refused(&p, VM, st(SevStatus::ASID_OWNED), || {
        p.launch_start(VM, Policy(0), None)
    });
    // ES VM with an ES policy is fine, without ES it is not.
    let es = VmRef(12);
    p.init_vm(es, true).unwrap();
    refused(&p, es, st(SevStatus::POLICY_FAILURE), || {
        p.launch_start(es, Policy(0), None)
    });
    p.launch_start(es, Policy(Policy::ES), None).unwrap();
}

#[test]
fn launch_start_needs_an_initialised_platform() {
    let p = psp();
    p.init_vm(VM, false).unwrap();
    let old = p.export_certs().unwrap();
    // INIT (no guest yet): the kernel shuts the platform down and resets it.
    p.factory_reset().unwrap();
    assert_eq!(p.platform_status().unwrap().state, PlatformState::Uninit);
    let new = p.export_certs().unwrap();
    assert_ne!(old.pdh, new.pdh);
    assert_eq!(
        old.chain[3 * 0x824..],
        new.chain[3 * 0x824..],
        "the CEK survives"
    );
    refused(&p, VM, st(SevStatus::INVALID_PLATFORM_STATE), || {
        p.launch_start(VM, Policy(0), None)
    });
    // A new SEV VM initialises the platform again.
    p.init_vm(VmRef(11), false).unwrap();
    p.launch_start(VM, Policy(0), None).unwrap();
}

#[test]
fn factory_reset_is_busy_while_guests_exist() {
    let p = psp();
    launched(&p, Policy(0));
    let certs = p.export_certs().unwrap();
    refused(&p, VM, Refusal::Errno(libc::EBUSY), || p.factory_reset());
    assert_eq!(p.export_certs().unwrap(), certs);
}

#[test]
fn rotated_pdh_refuses_old_sessions_but_running_guests_keep_their_keys() {
    let p = psp();
    let keys = launched(&p, Policy(0));
    let old_pdh = p.export_certs().unwrap().pdh;
    let stale = owner::session(&old_pdh, Policy(0)).unwrap();
    p.rotate_pdh().unwrap();
    assert_ne!(p.export_certs().unwrap().pdh, old_pdh);
    let other = VmRef(11);
    p.init_vm(other, false).unwrap();
    refused(&p, other, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_start(other, Policy(0), Some(&stale.launch_session()))
    });
    let m = p.launch_measure(VM).unwrap();
    verify_measurement(keys.tik(), FIRMWARE, Policy(0), &expected_digest(b""), &m).unwrap();
}

#[test]
fn launch_update_data_measures_plaintext_and_refuses_bad_requests() {
    let p = psp();
    let mem = image();
    assert_eq!(
        code(p.launch_update_data(VM, &mem, MEM_BASE, 16)),
        Refusal::Errno(libc::ENOTTY)
    );
    p.init_vm(VM, false).unwrap();
    refused(&p, VM, Refusal::Errno(libc::EBADF), || {
        p.launch_update_data(VM, &mem, MEM_BASE, 16)
    });
    p.launch_start(VM, Policy(0), None).unwrap();
    p.vm_destroyed(VM);
    assert_eq!(
        code(p.launch_update_data(VM, &mem, MEM_BASE, 16)),
        Refusal::Errno(libc::EBADF),
        "a destroyed VM's fd is closed"
    );
    let keys = launched(&p, Policy(0));
    let len = (4 * PAGE_SIZE) as u64;
    refused(&p, VM, Refusal::Errno(libc::EINVAL), || {
        p.launch_update_data(VM, &mem, MEM_BASE, 0)
    });
    refused(&p, VM, st(SevStatus::INVALID_ADDRESS), || {
        p.launch_update_data(VM, &mem, MEM_BASE + 8, 16)
    });
    refused(&p, VM, st(SevStatus::INVALID_LENGTH), || {
        p.launch_update_data(VM, &mem, MEM_BASE, 24)
    });
    // Two pieces, not page aligned within the image, then a read past the end.
    p.launch_update_data(VM, &mem, MEM_BASE, 0x1810).unwrap();
    p.launch_update_data(VM, &mem, MEM_BASE + 0x1810, len - 0x1810)
        .unwrap();
    let past_end = p
        .launch_update_data(VM, &mem, MEM_BASE + len - 16, 32)
        .unwrap_err();
    assert!(matches!(past_end, SevError::Memory(_)), "{past_end:?}");
    // The memory is untouched (the host view is the VMM's business), and the failed
    // update did not reach the digest.
    assert_eq!(
        mem.snapshot(MEM_BASE, len as usize).unwrap(),
        image().snapshot(MEM_BASE, len as usize).unwrap()
    );
    let m = p.launch_measure(VM).unwrap();
    let whole = expected_digest(&image().snapshot(MEM_BASE, len as usize).unwrap());
    verify_measurement(keys.tik(), FIRMWARE, Policy(0), &whole, &m).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_update_data(VM, &mem, MEM_BASE, 16)
    });
}

#[test]
fn launch_measure_once_from_lupdate() {
    let p = psp();
    p.init_vm(VM, false).unwrap();
    refused(&p, VM, Refusal::Errno(libc::EBADF), || p.launch_measure(VM));
    p.launch_start(VM, Policy(0), None).unwrap();
    let a = p.launch_measure(VM).unwrap();
    assert_eq!(p.guest_status(VM).unwrap().state, GuestState::LaunchSecret);
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_measure(VM)
    });
    // Without a session the TIK is the platform's own: nobody can verify it.
    assert_ne!(a.mnonce(), [0; 16]);
}

#[test]
fn launch_secret_writes_the_plaintext_only_when_everything_checks_out() {
    let p = psp();
    let keys = launched(&p, Policy(0));
    let mem = VecMemory::new(MEM_BASE, 2 * PAGE_SIZE);
    let target = MEM_BASE + 0x100;
    let secret = [0x42u8; 64];
    let early = seal(&keys, &[0; 32], &secret).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_secret(VM, &mem, &early.header, &early.ciphertext, target)
    });
    let m = p.launch_measure(VM).unwrap();
    let good = seal_with_iv(&keys, &m.measurement(), &secret, [1; 16]).unwrap();
    let zero = vec![0u8; 2 * PAGE_SIZE];
    let unchanged =
        |mem: &VecMemory| assert_eq!(mem.snapshot(MEM_BASE, 2 * PAGE_SIZE).unwrap(), zero);

    refused(&p, VM, Refusal::Errno(libc::EINVAL), || {
        p.launch_secret(VM, &mem, &good.header, &[], target)
    });
    let wrong_measurement = seal(&keys, &[0; 32], &secret).unwrap();
    refused(&p, VM, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_secret(
            VM,
            &mem,
            &wrong_measurement.header,
            &wrong_measurement.ciphertext,
            target,
        )
    });
    let mut bad_mac = good.header;
    bad_mac.mac[0] ^= 1;
    refused(&p, VM, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_secret(VM, &mem, &bad_mac, &good.ciphertext, target)
    });
    let other_keys = TransportKeys::new([3; 16], [4; 16]);
    let foreign = seal(&other_keys, &m.measurement(), &secret).unwrap();
    refused(&p, VM, st(SevStatus::BAD_MEASUREMENT), || {
        p.launch_secret(VM, &mem, &foreign.header, &foreign.ciphertext, target)
    });
    let odd = seal(&keys, &m.measurement(), &secret[..40]).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_LENGTH), || {
        p.launch_secret(VM, &mem, &odd.header, &odd.ciphertext, target)
    });
    refused(&p, VM, st(SevStatus::INVALID_ADDRESS), || {
        p.launch_secret(VM, &mem, &good.header, &good.ciphertext, target + 4)
    });
    // Flags are MACed, so a COMPRESSED packet has to come from the TIK holder.
    let compressed = {
        let mut h = good.header;
        h.flags = crate::secret::FLAG_COMPRESSED;
        let fixed_len = (secret.len() as u32).to_le_bytes();
        h.mac = crate::crypto::hmac_sha256(
            keys.tik(),
            &[
                &[1u8],
                &h.flags.to_le_bytes(),
                &h.iv,
                &fixed_len,
                &fixed_len,
                &good.ciphertext,
                &m.measurement(),
            ],
        );
        h
    };
    refused(&p, VM, st(SevStatus::UNSUPPORTED), || {
        p.launch_secret(VM, &mem, &compressed, &good.ciphertext, target)
    });
    unchanged(&mem);
    let outside = p.launch_secret(
        VM,
        &mem,
        &good.header,
        &good.ciphertext,
        MEM_BASE + 2 * PAGE_SIZE as u64,
    );
    assert!(matches!(outside, Err(SevError::Memory(_))));
    unchanged(&mem);

    p.launch_secret(VM, &mem, &good.header, &good.ciphertext, target)
        .unwrap();
    assert_eq!(mem.snapshot(target, secret.len()).unwrap(), secret.to_vec());
    assert_eq!(p.guest_status(VM).unwrap().state, GuestState::LaunchSecret);
    p.launch_finish(VM).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_secret(VM, &mem, &good.header, &good.ciphertext, target)
    });
}

#[test]
fn launch_finish_only_from_lsecret() {
    let p = psp();
    p.init_vm(VM, false).unwrap();
    refused(&p, VM, Refusal::Errno(libc::EBADF), || p.launch_finish(VM));
    p.launch_start(VM, Policy(0), None).unwrap();
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_finish(VM)
    });
    p.launch_measure(VM).unwrap();
    p.launch_finish(VM).unwrap();
    assert_eq!(p.guest_status(VM).unwrap().state, GuestState::Running);
    refused(&p, VM, st(SevStatus::INVALID_GUEST_STATE), || {
        p.launch_finish(VM)
    });
}

#[test]
fn guest_status_codes() {
    let p = psp();
    assert_eq!(code(p.guest_status(VM)), Refusal::Errno(libc::ENOTTY));
    p.init_vm(VM, false).unwrap();
    assert_eq!(code(p.guest_status(VM)), Refusal::Errno(libc::EBADF));
    p.launch_start(VM, Policy(Policy::NOSEND), None).unwrap();
    let g = p.guest_status(VM).unwrap();
    assert_eq!(
        (g.policy, g.state),
        (Policy(Policy::NOSEND), GuestState::LaunchUpdate)
    );
}

#[test]
fn debug_commands_follow_the_policy() {
    let p = psp();
    launched(&p, Policy(0));
    let mem = image();
    let mut out = [0u8; 5];
    p.dbg_decrypt(VM, &mem, MEM_BASE + 3, &mut out).unwrap();
    assert_eq!(out.to_vec(), image().snapshot(MEM_BASE + 3, 5).unwrap());
    p.dbg_encrypt(VM, &mem, MEM_BASE + 1, b"xyz").unwrap();
    assert_eq!(mem.snapshot(MEM_BASE + 1, 3).unwrap(), b"xyz");
    refused(&p, VM, Refusal::Errno(libc::EINVAL), || {
        p.dbg_decrypt(VM, &mem, MEM_BASE, &mut [])
    });
    refused(&p, VM, Refusal::Errno(libc::EINVAL), || {
        p.dbg_encrypt(VM, &mem, MEM_BASE, &[])
    });

    let q = psp();
    launched(&q, Policy(Policy::NODBG));
    let before = mem.snapshot(MEM_BASE, 16).unwrap();
    refused(&q, VM, st(SevStatus::POLICY_FAILURE), || {
        q.dbg_decrypt(VM, &mem, MEM_BASE, &mut out)
    });
    refused(&q, VM, st(SevStatus::POLICY_FAILURE), || {
        q.dbg_encrypt(VM, &mem, MEM_BASE, b"no")
    });
    assert_eq!(mem.snapshot(MEM_BASE, 16).unwrap(), before);
    let r = psp();
    r.init_vm(VM, false).unwrap();
    refused(&r, VM, Refusal::Errno(libc::EBADF), || {
        r.dbg_decrypt(VM, &mem, MEM_BASE, &mut out)
    });
}

#[test]
fn page_cipher_exists_from_launch_start_and_is_per_guest() {
    let p = psp();
    p.init_vm(VM, false).unwrap();
    assert!(p.page_cipher(VM).is_none());
    p.launch_start(VM, Policy(0), None).unwrap();
    let other = VmRef(11);
    p.init_vm(other, false).unwrap();
    p.launch_start(other, Policy(0), None).unwrap();
    let (a, b) = (p.page_cipher(VM).unwrap(), p.page_cipher(other).unwrap());
    let (mut x, mut y) = ([7u8; PAGE_SIZE], [7u8; PAGE_SIZE]);
    a.encrypt_page(0x1000, &mut x);
    b.encrypt_page(0x1000, &mut y);
    assert_ne!(x, y, "each guest has its own VEK");
    a.decrypt_page(0x1000, &mut x);
    assert_eq!(x, [7u8; PAGE_SIZE]);
}

#[test]
fn unknown_command_ids_are_einval_and_open_reports_damaged_state() {
    let p = psp();
    assert_eq!(
        code(p.check_encrypt_op(VM, SevCommandId(23))),
        Refusal::Errno(libc::EINVAL)
    );
    p.check_encrypt_op(VM, SevCommandId::SEND_START).unwrap();
    assert_eq!(code(p.register_region(VM)), Refusal::Errno(libc::ENOTTY));
    p.init_vm(VM, false).unwrap();
    p.register_region(VM).unwrap();

    let t = crate::identity::tests::TempDir::new("psp-open");
    let first = EmulatedPsp::open(&t.0).unwrap().export_certs().unwrap();
    assert_eq!(
        EmulatedPsp::open(&t.0).unwrap().export_certs().unwrap(),
        first
    );
    std::fs::write(t.0.join(crate::identity::OWNER_FILE), b"garbage").unwrap();
    match EmulatedPsp::open(&t.0) {
        Err(SevError::State { dir, why }) => {
            assert!(dir.ends_with(crate::identity::OWNER_FILE), "{dir}");
            assert!(why.contains("too short"), "{why}");
        }
        other => panic!("expected a state error, got {other:?}"),
    }
}

#[test]
fn memory_helper_is_a_launch_memory() {
    let m = VecMemory::new(0, 32);
    let mem: &dyn LaunchMemory = &m;
    mem.write_plain(16, &[9; 16]).unwrap();
    assert_eq!(m.snapshot(16, 16).unwrap(), vec![9; 16]);
}

#[test]
fn debug_output_shows_no_keys() {
    let p = psp();
    let keys = launched(&p, Policy(0));
    let text = format!("{p:?}");
    assert!(text.contains("<redacted>"), "{text}");
    let tek_hex: String = keys.tek().iter().map(|b| format!("{b}, ")).collect();
    assert!(
        !text.contains(tek_hex.trim_end_matches(", ")),
        "TEK bytes leaked"
    );
    assert!(
        !text.contains("EcKey") && !text.contains("Xts128"),
        "{text}"
    );
}

#[test]
fn a_vm_introduced_again_is_a_fresh_vm() {
    let p = psp();
    launched(&p, Policy(0));
    p.vcpu_created(VM).unwrap();
    let asid = p.asid(VM).unwrap();
    // The VMM named a new VM as it named the old one, without destroying the old first.
    p.add_vm(VM, KvmVmType::Default).unwrap();
    assert!(!p.asid_in_use(asid), "the old VM's context was released");
    assert_eq!(code(p.guest_status(VM)), Refusal::Errno(libc::ENOTTY));
    assert_eq!(p.protected_vcpus(VM), Some((0, 0)));
    p.init_vm(VM, false).unwrap();
}
