//! Direct boot on KVM: the firmware as a loader. A kernel, initrd and command line go to
//! the guest through fw_cfg as QEMU passes them; the firmware loads them and hands off.
//!
//! - A Linux bzImage (Debian's, from `$SEVMIRROR_TEST_BZIMAGE` or `.ci/run`'s
//!   `target/ci/debian-kernel`; a synthetic one where neither exists, said loudly) is
//!   loaded and the firmware stops at the hand-off (`opt/sevmirror/stop-at-handoff`:
//!   Linux cannot run on these machines); the test then reads the zero page from guest
//!   memory, through the host view or, under SEV, DBG_DECRYPT, and checks it field by
//!   field, with the kernel, command line and initrd bytes where it points.
//! - Under SEV the launch measures the hashes table after the firmware: the owner's check
//!   accepts SHA-256(firmware ‖ table), and a kernel byte changed between what was
//!   measured and what fw_cfg delivers makes the firmware refuse to boot it.
//! - An ELF kernel runs: a few instructions at CPL0 check the hand-off state (interrupts
//!   off, CS 0x10, SS 0x18, RSI = a zero page marked "HdrS" version 1 with an E820 map)
//!   and print the command line the zero page points at.
//! - Bad kernels end with one console line and an exit status, never a hang.
//!
//! Each test prints SKIPPED without /dev/kvm.

use guest_abi::{
    fwcfg, layout,
    memmap::{firmware_reservations, RegionKind},
    services::exit_code,
};
use os_loader::{
    boot_params::{BootE820Entry, BootParams},
    e820::E820Type,
    hashes::PADDED_SIZE,
    Span,
};
use sev_platform::{
    emulated::EmulatedPsp,
    owner::{self, Measured},
    Policy, SevBackend,
};
use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{
    sev::{HypercallTransport, SevConfig},
    vm::VmOutcome,
    ConsoleOut, DirectBoot, Firmware, KvmSystem, Vm, VmConfig,
};

const MIB: u64 = 1 << 20;
const RAM: u64 = 256 * MIB;
/// Only a guard against hangs.
const PATIENCE: Duration = Duration::from_secs(60);

fn kvm() -> Option<KvmSystem> {
    if !KvmSystem::available() {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
        return None;
    }
    Some(KvmSystem::open().expect("open /dev/kvm"))
}

/// Debian's `linux-image-*-amd64` vmlinuz, if `.ci/run` (or the environment) provided it.
fn debian_kernel() -> Option<(PathBuf, Vec<u8>)> {
    let path = match std::env::var_os("SEVMIRROR_TEST_BZIMAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/debian-kernel/boot");
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect();
            found.sort();
            found.pop()?
        }
    };
    let bytes = std::fs::read(&path).ok()?;
    Some((path, bytes))
}

/// A bzImage header good enough for the loader (protocol `version`, 2 setup sectors after
/// the boot sector, a 64 KiB "kernel" of a pattern), with the given limits.
fn synthetic_bzimage(version: u16, initrd_addr_max: u32, cmdline_size: u32) -> Vec<u8> {
    let mut f: Vec<u8> = (0..3 * 512 + 0x1_0000).map(|i| (i % 251) as u8).collect();
    f[0x1f1..0x26c].fill(0);
    let put16 =
        |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    f[0x1f1] = 2; // setup_sects
    put32(&mut f, 0x1f4, 0x1_0000 / 16); // syssize
    put16(&mut f, 0x1fe, 0xaa55);
    put16(&mut f, 0x200, 0x6aeb); // jmp over the header, which ends at 0x26c
    f[0x202..0x206].copy_from_slice(b"HdrS");
    put16(&mut f, 0x206, version);
    f[0x211] = 1; // LOADED_HIGH
    put32(&mut f, 0x214, 0x10_0000);
    put32(&mut f, 0x22c, initrd_addr_max);
    put32(&mut f, 0x230, 0x20_0000); // kernel_alignment
    f[0x234] = 1; // relocatable
    f[0x235] = 21;
    put16(&mut f, 0x236, 0x7f); // xloadflags
    put32(&mut f, 0x238, cmdline_size);
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    put32(&mut f, 0x260, 0x40_0000); // init_size
    f
}

/// The bzImage to test with: Debian's, else the synthetic one (said loudly).
fn bzimage() -> Vec<u8> {
    match debian_kernel() {
        Some((path, bytes)) => {
            eprintln!("bzImage: {} ({} bytes)", path.display(), bytes.len());
            bytes
        }
        None => {
            eprintln!(
                "NOTE: no Debian kernel image (set SEVMIRROR_TEST_BZIMAGE or run .ci/run); \
                 testing with a synthetic bzImage instead"
            );
            synthetic_bzimage(0x020f, 0x7fff_ffff, 0x7ff)
        }
    }
}

/// An ELF64 executable with one PT_LOAD segment holding `code` at physical `at`, entered
/// at its first byte.
fn elf_kernel(code: &[u8], at: u64) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    f[0x18..0x20].copy_from_slice(&at.to_le_bytes()); // e_entry
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R | X
    f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes());
    f[ph + 16..ph + 24].copy_from_slice(&at.to_le_bytes());
    f[ph + 24..ph + 32].copy_from_slice(&at.to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&0x2000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// The ELF test kernel's code (x86-64, assembled with GNU as and checked with objdump):
/// it checks what the ELF hand-off protocol promises, prints the command line through
/// the services page's console register and exits 42, or exits 99 at the first
/// check that fails.
///
/// ```text
///  0: bb 00 00 00 fe           mov  ebx, 0xfe000000        ; services page
///  5: 9c 58                    pushf; pop rax
///  7: a9 00 02 00 00 75 55     test eax, 0x200; jnz fail   ; interrupts off
///  e: 8b 86 02 02 00 00        mov  eax, [rsi + 0x202]
/// 14: 3d 48 64 72 53 75 48     cmp  eax, "HdrS"; jne fail
/// 1b: 0f b7 86 06 02 00 00     movzx eax, word [rsi + 0x206]
/// 22: 83 f8 01 75 3c           cmp  eax, 1; jne fail        ; ELF hand-off version 1
/// 27: 66 8c c8 66 83 f8 10 75 33   mov ax, cs; cmp ax, 0x10; jne fail
/// 30: 66 8c d0 66 83 f8 18 75 2a   mov ax, ss; cmp ax, 0x18; jne fail
/// 39: 80 be e8 01 00 00 00 74 21   cmp byte [rsi + 0x1e8], 0; je fail   ; e820_entries
/// 42: 8b be 28 02 00 00        mov  edi, [rsi + 0x228]     ; cmd_line_ptr
/// 48: 8a 07 84 c0 74 07        1: mov al, [rdi]; test al, al; jz 2f
/// 4e: 88 03 48 ff c7 eb f3        mov [rbx], al; inc rdi; jmp 1b   ; console
/// 55: c6 03 0a                 2: mov byte [rbx], 10
/// 58: 48 c7 43 08 2a 00 00 00     mov qword [rbx + 8], 42     ; exit 42
/// 60: f4 eb fd                 3: hlt; jmp 3b
/// 63: 48 c7 43 08 63 00 00 00  fail: mov qword [rbx + 8], 99
/// 6b: eb f3                       jmp 3b
/// ```
const ELF_TEST_CODE: [u8; 109] = [
    0xbb, 0x00, 0x00, 0x00, 0xfe, 0x9c, 0x58, 0xa9, 0x00, 0x02, 0x00, 0x00, 0x75, 0x55, 0x8b, 0x86,
    0x02, 0x02, 0x00, 0x00, 0x3d, 0x48, 0x64, 0x72, 0x53, 0x75, 0x48, 0x0f, 0xb7, 0x86, 0x06, 0x02,
    0x00, 0x00, 0x83, 0xf8, 0x01, 0x75, 0x3c, 0x66, 0x8c, 0xc8, 0x66, 0x83, 0xf8, 0x10, 0x75, 0x33,
    0x66, 0x8c, 0xd0, 0x66, 0x83, 0xf8, 0x18, 0x75, 0x2a, 0x80, 0xbe, 0xe8, 0x01, 0x00, 0x00, 0x00,
    0x74, 0x21, 0x8b, 0xbe, 0x28, 0x02, 0x00, 0x00, 0x8a, 0x07, 0x84, 0xc0, 0x74, 0x07, 0x88, 0x03,
    0x48, 0xff, 0xc7, 0xeb, 0xf3, 0xc6, 0x03, 0x0a, 0x48, 0xc7, 0x43, 0x08, 0x2a, 0x00, 0x00, 0x00,
    0xf4, 0xeb, 0xfd, 0x48, 0xc7, 0x43, 0x08, 0x63, 0x00, 0x00, 0x00, 0xeb, 0xf3,
];

fn platform() -> (tempfile::TempDir, Arc<EmulatedPsp>) {
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    (dir, psp)
}

type Console = Arc<Mutex<Vec<u8>>>;

fn text(out: &Console) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

/// The first whole console line containing `what`, waiting for it.
fn wait_for(out: &Console, what: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let t = text(out);
        if let Some(line) = t
            .split_inclusive('\n')
            .find(|l| l.ends_with('\n') && l.contains(what))
        {
            return line.trim_end().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the console:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A VM of `RAM` with `boot` in its fw_cfg (and `extra` files), not started.
fn guest(
    kvm: &KvmSystem,
    boot: &DirectBoot,
    extra: &[&str],
    sev: Option<SevConfig>,
) -> (Vm, Console) {
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: RAM,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: extra.iter().map(|n| (n.to_string(), vec![])).collect(),
            sev,
        },
    )
    .expect("create VM");
    vm.direct_boot(boot).unwrap();
    (vm, out)
}

/// Runs a started VM to its exit, after the console said `last`; the exit status.
fn finish(vm: &mut Vm, out: &Console, last: &str) -> u64 {
    wait_for(out, last);
    match vm.wait() {
        VmOutcome::GuestExit(code) => code,
        other => panic!("{other:?}\n{}", text(out)),
    }
}

/// `key 0x...` from a console line.
fn hex_after(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    let hex = rest.trim_start().trim_start_matches("0x");
    let end = hex
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex.len());
    u64::from_str_radix(&hex[..end], 16).unwrap()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn covered(e820: &[BootE820Entry], span: Span, kind: E820Type) -> bool {
    e820.iter().any(|e| {
        e.kind == kind.0 && { e.addr } <= span.base && span.end() <= { e.addr } + { e.size }
    })
}

/// Checks the hand-off the firmware reported (`loaded` is its "loaded ... kernel" line)
/// against the file, initrd and command line, reading guest memory with `read`.
fn check_bzimage_handoff(
    loaded: &str,
    file: &[u8],
    initrd: &[u8],
    cmdline: &str,
    read: &dyn Fn(u64, usize) -> Vec<u8>,
) {
    let zero_page = hex_after(loaded, "boot_params");
    let entry = hex_after(loaded, "entry");
    let raw = read(zero_page, 4096);
    let p = BootParams::decode(&raw.clone().try_into().unwrap());
    let hdr = p.hdr;
    let setup_len = (usize::from(match file[0x1f1] {
        0 => 4,
        n => n,
    }) + 1)
        * 512;

    // The setup header is the file's, the loader's fields filled in.
    let base = u64::from(hdr.code32_start);
    let rd = Span {
        base: u64::from(hdr.ramdisk_image),
        size: u64::from(hdr.ramdisk_size),
    };
    let mut expect = file[0x1f1..0x26c].to_vec();
    let at = |o: usize| o - 0x1f1;
    expect[at(0x210)] = 0xff; // type_of_loader
    expect[at(0x214)..at(0x218)].copy_from_slice(&(base as u32).to_le_bytes());
    expect[at(0x218)..at(0x21c)].copy_from_slice(&(rd.base as u32).to_le_bytes());
    expect[at(0x21c)..at(0x220)].copy_from_slice(&(initrd.len() as u32).to_le_bytes());
    expect[at(0x228)..at(0x22c)].copy_from_slice(&{ hdr.cmd_line_ptr }.to_le_bytes());
    expect[at(0x23c)..at(0x248)].fill(0); // hardware_subarch(_data)
    expect[at(0x250)..at(0x258)].fill(0); // setup_data
    assert_eq!(&raw[0x1f1..0x26c], &expect[..], "setup header 0x1f1..0x26c");
    assert_eq!(&raw[0x202..0x206], b"HdrS");
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert!(raw[..0x1e8].iter().all(|&b| b == 0), "0..0x1e8 is zero");
    assert!(
        raw[0x26c..0x2d0].iter().all(|&b| b == 0),
        "0x26c..0x2d0 is zero"
    );
    assert_eq!(
        (
            p.ext_cmd_line_ptr,
            p.ext_ramdisk_image,
            p.ext_ramdisk_size,
            p.sentinel
        ),
        (0, 0, 0, 0)
    );

    // The kernel: aligned, at or above pref_address, past the helper's region, its
    // protected-mode bytes there, entered at +0x200.
    let align = u64::from(le32(file, 0x230));
    let pref = u64::from_le_bytes(file[0x258..0x260].try_into().unwrap());
    let helper_end = layout::HELPER_REGION_BASE + helper_abi::region::region_size(RAM / 4096);
    assert_eq!(base % align, 0, "kernel at {base:#x}");
    assert!(base >= pref && base >= helper_end, "kernel at {base:#x}");
    assert_eq!(entry, base + 0x200, "64-bit entry");
    assert_eq!(
        read(base, file.len() - setup_len),
        &file[setup_len..],
        "protected-mode kernel at {base:#x}"
    );

    // The command line, and its limit.
    let mut with_nul = cmdline.as_bytes().to_vec();
    with_nul.push(0);
    assert_eq!(read(u64::from(hdr.cmd_line_ptr), with_nul.len()), with_nul);
    assert!(cmdline.len() <= le32(file, 0x238) as usize);

    // The initrd: page aligned, below initrd_addr_max and the end of RAM, its bytes.
    assert_eq!(rd.size, initrd.len() as u64);
    assert_eq!(rd.base % 4096, 0);
    assert!(rd.end() <= u64::from(le32(file, 0x22c)) + 1 && rd.end() <= RAM);
    assert_eq!(read(rd.base, initrd.len()), initrd, "initrd bytes");

    // E820: sorted, covering all RAM, every firmware region and the services page
    // reserved, everything placed in RAM.
    let e820: Vec<BootE820Entry> = p.e820().collect();
    assert!(e820
        .windows(2)
        .all(|w| { w[0].addr } + { w[0].size } <= { w[1].addr }));
    let in_ram: u64 = e820.iter().filter(|e| e.addr < RAM).map(|e| e.size).sum();
    assert_eq!(in_ram, RAM, "{e820:x?}");
    let helper = helper_abi::region::region_size(RAM / 4096);
    for (b, s, kind) in firmware_reservations(helper) {
        assert!(
            covered(&e820, Span { base: b, size: s }, E820Type::RESERVED),
            "{} {b:#x}+{s:#x} not reserved: {e820:x?}",
            kind.name()
        );
        if kind == RegionKind::Helper {
            eprintln!("helper region {b:#x}+{s:#x}: reserved in the E820 map");
        }
    }
    let services = Span {
        base: layout::SERVICES_GPA,
        size: layout::PAGE_SIZE,
    };
    assert!(covered(&e820, services, E820Type::RESERVED));
    let init = Span {
        base,
        size: u64::from(le32(file, 0x260)),
    };
    let cmd = Span {
        base: u64::from(hdr.cmd_line_ptr),
        size: with_nul.len() as u64,
    };
    let zp = Span {
        base: zero_page,
        size: 4096,
    };
    for span in [init, cmd, zp, rd] {
        assert!(covered(&e820, span, E820Type::RAM), "{span:x?} not RAM");
    }
    // Nothing placed overlaps anything else.
    let placed = [init, cmd, zp, rd];
    for (i, a) in placed.iter().enumerate() {
        for b in &placed[i + 1..] {
            assert!(!a.overlaps(b), "{a:x?} overlaps {b:x?}");
        }
    }
}

fn initrd_bytes() -> Vec<u8> {
    (0..3 * MIB as usize + 777)
        .map(|i| (i * 13 % 253) as u8)
        .collect()
}

const CMDLINE: &str = "console=ttyS0 earlyprintk=serial root=/dev/vda ro";

#[test]
fn kvm_direct_boot_hands_off_a_bzimage_with_boot_params_field_by_field() {
    let Some(kvm) = kvm() else { return };
    let file = bzimage();
    let initrd = initrd_bytes();
    let boot = DirectBoot::new(file.clone(), Some(initrd.clone()), CMDLINE.into()).unwrap();
    let (mut vm, out) = guest(&kvm, &boot, &[fwcfg::FILE_STOP_AT_HANDOFF], None);
    vm.start().unwrap();
    let code = finish(&mut vm, &out, "stop-at-handoff");
    let console = text(&out);
    assert_eq!(code, exit_code::HANDOFF_STOPPED, "{console}");
    assert!(console.contains("no SEV: the kernel is booted without a measurement"));
    let loaded = wait_for(&out, "firmware: loaded bzImage kernel");
    eprintln!("{loaded}");
    let view = vm.host_view();
    check_bzimage_handoff(&loaded, &file, &initrd, CMDLINE, &|gpa, len| {
        let mut b = vec![0u8; len];
        view.read(gpa, &mut b).unwrap();
        b
    });
}

/// An SEV guest (policy 0: debugging allowed) launched with the owner's session; returns
/// the VM, its console, and the owner's TIK and the reported measurement.
fn sev_guest(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    policy: Policy,
    delivered: &DirectBoot,
    measured_table: Option<[u8; PADDED_SIZE]>,
    extra: &[&str],
) -> (Vm, Console, [u8; 16], String) {
    let session = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (mut vm, out) = guest(
        kvm,
        delivered,
        extra,
        Some(SevConfig {
            backend,
            policy,
            session: Some(session.launch_session()),
            transport: HypercallTransport::ServicesPage,
        }),
    );
    let mut started = vm.sev_launch_start().unwrap();
    if let Some(table) = measured_table {
        started = vm.sev_launch_update_hashes(started, &table).unwrap();
    }
    let measured = vm.sev_launch_measure(started).unwrap();
    let reported = owner::encode_base64(&measured.measurement().0);
    vm.sev_launch_finish(measured).unwrap();
    (vm, out, *session.keys.tik(), reported)
}

#[test]
fn kvm_sev_direct_boot_measures_the_hashes_table_and_hands_off_a_bzimage() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let file = bzimage();
    let initrd = initrd_bytes();
    let boot = DirectBoot::new(file.clone(), Some(initrd.clone()), CMDLINE.into()).unwrap();
    let table = boot.hashes_table();
    let policy = Policy(0);
    let (mut vm, out, tik, reported) = sev_guest(
        &kvm,
        &psp,
        policy,
        &boot,
        Some(table),
        &[fwcfg::FILE_STOP_AT_HANDOFF],
    );
    // The launch digest is SHA-256(firmware ‖ table): the owner accepts exactly that.
    let mut h = Sha256::new();
    h.update(firmware_image::IMAGE);
    h.update(table);
    let digest: [u8; 32] = h.finalize().into();
    owner::verify(
        Measured::Digest(digest),
        psp.firmware_version(),
        policy,
        &tik,
        &reported,
    )
    .expect("the owner accepts firmware ‖ hashes table");
    assert!(
        owner::verify(
            Measured::Firmware(firmware_image::IMAGE),
            psp.firmware_version(),
            policy,
            &tik,
            &reported,
        )
        .is_err(),
        "the table is part of the digest"
    );

    vm.start().unwrap();
    let code = finish(&mut vm, &out, "stop-at-handoff");
    let console = text(&out);
    assert_eq!(code, exit_code::HANDOFF_STOPPED, "{console}");
    assert!(
        console.contains("SEV: kernel, initrd and command line match the measured hashes table"),
        "{console}"
    );
    let loaded = wait_for(&out, "firmware: loaded bzImage kernel");
    // Private memory, read as the guest sees it (the policy allows debugging).
    let vm = &vm;
    check_bzimage_handoff(&loaded, &file, &initrd, CMDLINE, &|gpa, len| {
        let mut b = vec![0u8; len];
        for (i, chunk) in b.chunks_mut(4096).enumerate() {
            vm.sev_dbg_decrypt(gpa + 4096 * i as u64, chunk).unwrap();
        }
        b
    });
    // What the host sees of the zero page is ciphertext.
    let zero_page = hex_after(&loaded, "boot_params");
    let mut seen = [0u8; 4096];
    vm.host_view().read(zero_page, &mut seen).unwrap();
    assert_ne!(&seen[0x202..0x206], b"HdrS");
}

#[test]
fn kvm_sev_a_kernel_that_differs_from_the_measured_one_is_refused() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let file = synthetic_bzimage(0x020f, 0x7fff_ffff, 0x7ff);
    let measured = DirectBoot::new(file.clone(), None, "quiet".into()).unwrap();
    let policy = Policy(0);
    let cases: [(&str, DirectBoot, &str); 3] = [
        (
            "kernel",
            {
                let mut changed = file.clone();
                let last = changed.len() - 1;
                changed[last] ^= 1;
                DirectBoot::new(changed, None, "quiet".into()).unwrap()
            },
            "the kernel does not match the measured SEV hashes table",
        ),
        (
            "initrd",
            DirectBoot::new(file.clone(), Some(vec![1; 4096]), "quiet".into()).unwrap(),
            "the initrd does not match",
        ),
        (
            "command line",
            DirectBoot::new(file.clone(), None, "quiet init=/bin/sh".into()).unwrap(),
            "the command line does not match",
        ),
    ];
    for (what, delivered, want) in cases {
        let (mut vm, out, _, _) = sev_guest(
            &kvm,
            &psp,
            policy,
            &delivered,
            Some(measured.hashes_table()),
            &[],
        );
        vm.start().unwrap();
        let code = finish(&mut vm, &out, "firmware: error:");
        let console = text(&out);
        assert_eq!(code, exit_code::KERNEL_NOT_MEASURED, "{what}: {console}");
        let line = wait_for(&out, "firmware: error:");
        assert!(line.contains(want), "{what}: {line}");
        assert!(line.contains("refusing to boot it"), "{line}");
        assert_eq!(console.matches("firmware: error:").count(), 1, "{console}");
        assert!(!console.contains("firmware: loaded"), "{what}: {console}");
    }
    // A launch that measured a table, with no kernel in fw_cfg: the host withholding the
    // kernel gets no built-in workload instead.
    let session = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
        &kvm,
        VmConfig {
            mem_size: RAM,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: vec![(fwcfg::FILE_WORKLOAD.into(), b"selftest".to_vec())],
            sev: Some(SevConfig {
                backend,
                policy,
                session: Some(session.launch_session()),
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )
    .unwrap();
    let started = vm.sev_launch_start().unwrap();
    let started = vm
        .sev_launch_update_hashes(started, &measured.hashes_table())
        .unwrap();
    let m = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(m).unwrap();
    vm.start().unwrap();
    let code = finish(&mut vm, &out, "firmware: error:");
    assert_eq!(code, exit_code::KERNEL_NOT_MEASURED, "{}", text(&out));
    let line = wait_for(&out, "firmware: error:");
    assert!(line.contains("fw_cfg carries no kernel"), "{line}");
    assert!(!text(&out).contains("selftest:"), "{}", text(&out));

    // A launch that measured no table, with a kernel in fw_cfg: refused, as OVMF does.
    let (mut vm, out, _, _) = sev_guest(&kvm, &psp, policy, &measured, None, &[]);
    vm.start().unwrap();
    let code = finish(&mut vm, &out, "firmware: error:");
    assert_eq!(code, exit_code::KERNEL_NOT_MEASURED);
    let line = wait_for(&out, "firmware: error:");
    assert!(line.contains("no SEV hashes table was measured"), "{line}");
}

#[test]
fn kvm_sev_es_direct_boot_checks_the_kernel_and_stops_at_the_hand_off() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let boot = DirectBoot::new(
        synthetic_bzimage(0x020f, 0x7fff_ffff, 0x7ff),
        Some(vec![5; 8192]),
        CMDLINE.into(),
    )
    .unwrap();
    let session = owner::session(&psp.export_certs().unwrap().pdh, Policy(0x4)).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (mut vm, out) = guest(
        &kvm,
        &boot,
        &[fwcfg::FILE_STOP_AT_HANDOFF],
        Some(SevConfig {
            backend,
            policy: Policy(0x4),
            session: Some(session.launch_session()),
            transport: HypercallTransport::ServicesPage,
        }),
    );
    let started = vm.sev_launch_start().unwrap();
    let started = vm
        .sev_launch_update_hashes(started, &boot.hashes_table())
        .unwrap();
    let vcpu_type = sev_platform::vmsa::VcpuType::from_name("EPYC-v4").unwrap();
    // The table before the VMSAs, never after.
    let started = vm.sev_launch_update_vmsa(started, vcpu_type).unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    let code = finish(&mut vm, &out, "stop-at-handoff");
    let console = text(&out);
    assert_eq!(code, exit_code::HANDOFF_STOPPED, "{console}");
    assert!(console.contains("SEV active with SEV-ES"), "{console}");
    assert!(
        console.contains("match the measured hashes table"),
        "{console}"
    );
}

#[test]
fn kvm_direct_boot_runs_an_elf_kernel_at_cpl0_with_the_zero_page_in_rsi() {
    let Some(kvm) = kvm() else { return };
    let elf = elf_kernel(&ELF_TEST_CODE, 0x400_0000);
    let cmdline = "hello from the ELF kernel";
    let boot = DirectBoot::new(elf.clone(), Some(vec![7; 10_000]), cmdline.into()).unwrap();
    assert_eq!(
        boot.setup_len(),
        0,
        "an ELF file goes whole in the kernel item"
    );
    let (_dir, psp) = platform();
    for sev in [false, true] {
        let (mut vm, out) = if sev {
            let (vm, out, _, _) =
                sev_guest(&kvm, &psp, Policy(0), &boot, Some(boot.hashes_table()), &[]);
            (vm, out)
        } else {
            guest(&kvm, &boot, &[], None)
        };
        vm.start().unwrap();
        let code = finish(&mut vm, &out, cmdline);
        let console = text(&out);
        assert_eq!(
            code, 42,
            "the kernel's checks failed (99) or it never ran: {console}"
        );
        let loaded = wait_for(&out, "firmware: loaded ELF kernel");
        assert_eq!(hex_after(&loaded, "entry"), 0x400_0000);
        assert!(
            console.contains("handing off to 0x4000000 at CPL0"),
            "{console}"
        );
        // The kernel printed the command line its zero page points at.
        let printed = wait_for(&out, cmdline);
        assert_eq!(printed, cmdline, "sev {sev}");
    }
}

#[test]
fn kvm_direct_boot_bad_kernels_each_end_with_one_error_line() {
    let Some(kvm) = kvm() else { return };
    let long = "x".repeat(0x800);
    let cases: Vec<(&str, DirectBoot, &str)> = vec![
        (
            "not a kernel",
            DirectBoot::new(
                b"#!/bin/sh\necho not a kernel\n".repeat(100),
                None,
                String::new(),
            )
            .unwrap(),
            "neither an ELF executable nor a Linux bzImage",
        ),
        (
            "protocol too old",
            DirectBoot::new(
                synthetic_bzimage(0x0205, 0x7fff_ffff, 0x7ff),
                None,
                String::new(),
            )
            .unwrap(),
            "boot protocol 2.05 is too old",
        ),
        (
            "initrd above the kernel's limit",
            // initrd_addr_max 8 MiB: below it only the 4 MiB between the firmware's
            // working area and the SEV area is free, so 6 MiB cannot fit.
            DirectBoot::new(
                synthetic_bzimage(0x020f, 0x007f_ffff, 0x7ff),
                Some(vec![3; 6 * MIB as usize]),
                String::new(),
            )
            .unwrap(),
            "does not fit in usable RAM below 0x800000",
        ),
        (
            "command line over the kernel's maximum",
            DirectBoot::new(synthetic_bzimage(0x020f, 0x7fff_ffff, 0x7ff), None, long).unwrap(),
            "command line of 2048 bytes is longer than the kernel's maximum of 2047",
        ),
        (
            "ELF segment in the helper's region",
            DirectBoot::new(
                elf_kernel(&ELF_TEST_CODE, layout::HELPER_REGION_BASE + 0x1000),
                None,
                String::new(),
            )
            .unwrap(),
            "is not in usable RAM (reserved or absent)",
        ),
    ];
    for (what, boot, want) in cases {
        let (mut vm, out) = guest(&kvm, &boot, &[], None);
        vm.start().unwrap();
        let code = finish(&mut vm, &out, "firmware: error:");
        let console = text(&out);
        assert_eq!(code, exit_code::BAD_KERNEL, "{what}: {console}");
        let line = wait_for(&out, "firmware: error:");
        assert!(line.contains(want), "{what}: {line}");
        assert_eq!(console.matches("firmware: error:").count(), 1, "{console}");
        eprintln!("{what}: {line}");
    }
}
