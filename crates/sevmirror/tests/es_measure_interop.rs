//! SEV-ES launch digests: `sevmirror measure --mode sev-es` against sev-snp-measure
//! (`--mode seves`) and sevctl (`vmsa build` + `measurement build --num-cpus
//! --vmsa-cpu0 --vmsa-cpu1`), for Debian's OVMF.fd and our firmware, at 1, 2 and 4 vCPUs
//! and several vCPU types; and `owner verify` of an SEV-ES launch on the emulated PSP.
//!
//! sev-snp-measure is looked up as `support::sev_snp_measure` says; sevctl as in
//! `sevctl_interop.rs`. Without a tool its tests print SKIPPED and pass; without
//! /usr/share/ovmf/OVMF.fd the OVMF half prints SKIPPED.

mod support;

use sev_platform::{
    backend::{KvmVmType, VmRef},
    memory::VecMemory,
    owner,
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa},
    EmulatedPsp, Policy, SevBackend,
};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const VCPU_COUNTS: [u32; 3] = [1, 2, 4];
const VCPU_TYPES: [&str; 4] = ["EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn run_in(bin: &Path, cwd: &Path, args: &[&str]) -> String {
    let o = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    check(&format!("{} {args:?}", bin.display()), o)
}

fn sevmirror_out(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(args)
        .output()
        .expect("run sevmirror")
}

fn sevmirror(args: &[&str]) -> String {
    check(&format!("sevmirror {args:?}"), sevmirror_out(args))
}

/// sevctl, or a loud SKIPPED line.
fn sevctl() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut extra: Vec<PathBuf> = home.into_iter().map(|h| h.join("bin/sevctl")).collect();
    extra.push(PathBuf::from("/tmp/sevctl-install/bin/sevctl"));
    let found = support::find_tool("SEVCTL", "sevctl", &extra);
    if found.is_none() {
        eprintln!(
            "SKIPPED: sevctl not found ($SEVCTL, PATH, ~/.cargo/bin); \
             `cargo install sevctl --version 0.6.2 --locked` to run the sevctl SEV-ES tests"
        );
    }
    found
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sevmirror-es-")
        .tempdir()
        .unwrap()
}

/// The firmware images to check: ours (written by `sevmirror firmware`) and OVMF.fd if
/// installed, as (label, path).
fn firmwares(dir: &Path) -> Vec<(&'static str, String)> {
    let ours = dir.join("fw.bin").to_str().unwrap().to_string();
    sevmirror(&["firmware", "--out", &ours]);
    let mut out = vec![("ours", ours)];
    if Path::new(OVMF).exists() {
        out.push(("OVMF.fd", OVMF.to_string()));
    } else {
        eprintln!("SKIPPED (part): {OVMF} not installed (apt-get install ovmf); OVMF not checked");
    }
    out
}

fn read_vmsa(path: &Path) -> Vmsa {
    let bytes = std::fs::read(path).unwrap();
    Vmsa::from_bytes(
        &bytes
            .as_slice()
            .try_into()
            .unwrap_or_else(|_| panic!("{} is not one page", path.display())),
    )
}

fn measure_es(fw: &str, vcpus: u32, vcpu_type: &str, extra: &[&str]) -> String {
    let n = vcpus.to_string();
    let mut args = vec![
        "measure",
        "--mode",
        "sev-es",
        "--vcpus",
        &n,
        "--vcpu-type",
        vcpu_type,
        "--firmware",
        fw,
    ];
    args.extend_from_slice(extra);
    sevmirror(&args).trim().to_string()
}

#[test]
fn sev_snp_measure_seves_digests_equal_ours() {
    let Some(snpm) = support::sev_snp_measure() else {
        return;
    };
    let dir = tempdir();
    let mut checked = 0;
    for (label, fw) in firmwares(dir.path()) {
        for vcpu_type in VCPU_TYPES {
            for n in VCPU_COUNTS {
                let ns = n.to_string();
                let theirs = run_in(
                    &snpm,
                    dir.path(),
                    &[
                        "--mode",
                        "seves",
                        "--vcpus",
                        &ns,
                        "--vcpu-type",
                        vcpu_type,
                        "--ovmf",
                        &fw,
                    ],
                );
                let ours = measure_es(&fw, n, vcpu_type, &[]);
                assert_eq!(ours, theirs.trim(), "{label} {vcpu_type} {n} vCPUs");
                println!("{label:8} {vcpu_type:11} {n} vCPUs  {ours}");
                checked += 1;
            }
        }
        // EC2's reset state too.
        let theirs = run_in(
            &snpm,
            dir.path(),
            &[
                "--mode",
                "seves",
                "--vcpus",
                "2",
                "--vcpu-type",
                "EPYC-v4",
                "--vmm-type",
                "ec2",
                "--ovmf",
                &fw,
            ],
        );
        let ours = measure_es(&fw, 2, "EPYC-v4", &["--vmm-type", "ec2"]);
        assert_eq!(ours, theirs.trim(), "{label} ec2");
        // And SEV without ES is still the image's digest.
        let theirs = run_in(&snpm, dir.path(), &["--mode", "sev", "--ovmf", &fw]);
        assert_eq!(sevmirror(&["measure", "--firmware", &fw]), theirs);
    }
    assert!(checked >= VCPU_TYPES.len() * VCPU_COUNTS.len());
}

#[test]
fn sev_snp_measure_dumped_vmsas_equal_ours() {
    let Some(snpm) = support::sev_snp_measure() else {
        return;
    };
    let dir = tempdir();
    for (label, fw) in firmwares(dir.path()) {
        for vcpu_type in ["EPYC-v4", "EPYC-Genoa"] {
            let theirs = dir.path().join(format!("snpm-{label}-{vcpu_type}"));
            std::fs::create_dir_all(&theirs).unwrap();
            run_in(
                &snpm,
                &theirs,
                &[
                    "--mode",
                    "seves",
                    "--vcpus",
                    "3",
                    "--vcpu-type",
                    vcpu_type,
                    "--ovmf",
                    &fw,
                    "--dump-vmsa",
                ],
            );
            let ours = dir.path().join(format!("ours-{label}-{vcpu_type}"));
            measure_es(&fw, 3, vcpu_type, &["--dump-vmsa", ours.to_str().unwrap()]);
            for i in 0..3 {
                let name = format!("vmsa{i}.bin");
                let (a, b) = (read_vmsa(&ours.join(&name)), read_vmsa(&theirs.join(&name)));
                let diff: Vec<String> = a.diff(&b).iter().map(|d| d.to_string()).collect();
                assert!(diff.is_empty(), "{label} {vcpu_type} {name}: {diff:#?}");
            }
        }
    }
}

/// sevctl 0.6.2 reads the firmware's SEV-ES reset block as a 24-bit address
/// (`Ovmf::reset_addr` formats bytes 2..=0), where QEMU's `SevInfoBlock.reset_addr` is 32
/// bits. For an AP entry below 16 MiB (OVMF's 0x80b004) that changes nothing; for ours
/// (0xfffff030, in the ROM below 4 GiB) sevctl puts CS base 0xff0000 into the AP VMSA
/// where QEMU puts 0xffff0000. Anything else must be equal.
fn assert_sevctl_vmsa_matches(label: &str, ours: &Vmsa, theirs: &Vmsa) {
    let diff = ours.diff(theirs);
    let truncated = ours.cs.base & 0xff_ffff;
    let only_truncation = diff.len() == 1
        && diff[0].field == "cs"
        && theirs.cs.base == truncated
        && theirs.cs.base != ours.cs.base;
    if only_truncation {
        eprintln!(
            "{label}: sevctl's AP VMSA has CS base {:#x}, QEMU's {:#x} (sevctl truncates the reset address to 24 bits)",
            theirs.cs.base, ours.cs.base
        );
        return;
    }
    let diff: Vec<String> = diff.iter().map(|d| d.to_string()).collect();
    assert!(diff.is_empty(), "{label}: ours vs sevctl {diff:#?}");
}

/// `sevctl vmsa build` makes the VMSAs of the legacy `KVM_SEV_ES_INIT` (no FPU state):
/// ours with `--vmm-type qemu-es-init` are the same pages (see the truncation above), and
/// `sevctl measurement build --num-cpus N --vmsa-cpu0 --vmsa-cpu1` over sevctl's files (for
/// OVMF) or over ours (both images) gives the measurement our digests predict, for the
/// legacy and the default reset state, at 1, 2 and 4 vCPUs.
#[test]
fn sevctl_vmsa_and_measurement_build_agree_with_ours() {
    let Some(sevctl) = sevctl() else { return };
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("tik.bin"), b"0123456789abcdef").unwrap();
    std::fs::write(d.join("nonce.bin"), b"fedcba9876543210").unwrap();
    let (tik, nonce) = (*b"0123456789abcdef", *b"fedcba9876543210");
    let fwv =
        EmulatedPsp::new(sev_platform::PlatformIdentity::generate().unwrap()).firmware_version();
    let (major, minor, build) = (
        fwv.api_major.to_string(),
        fwv.api_minor.to_string(),
        fwv.build.to_string(),
    );
    for (label, fw) in firmwares(d) {
        for (vcpu_type, family, model, stepping) in
            [("EPYC-v4", "23", "1", "2"), ("EPYC-Milan", "25", "1", "1")]
        {
            let sc = d.join(format!("sevctl-{label}-{vcpu_type}"));
            std::fs::create_dir_all(&sc).unwrap();
            for cpu in ["0", "1"] {
                run_in(
                    &sevctl,
                    &sc,
                    &[
                        "vmsa",
                        "build",
                        &format!("vmsa{cpu}.bin"),
                        "--cpu",
                        cpu,
                        "--family",
                        family,
                        "--model",
                        model,
                        "--stepping",
                        stepping,
                        "--firmware",
                        &fw,
                        "--userspace",
                        "qemu",
                    ],
                );
            }
            for (vmm, dump) in [("qemu-es-init", "legacy"), ("qemu", "init2")] {
                let ours = d.join(format!("ours-{label}-{vcpu_type}-{dump}"));
                measure_es(
                    &fw,
                    2,
                    vcpu_type,
                    &["--vmm-type", vmm, "--dump-vmsa", ours.to_str().unwrap()],
                );
                if vmm == "qemu-es-init" {
                    for i in 0..2 {
                        let name = format!("vmsa{i}.bin");
                        assert_sevctl_vmsa_matches(
                            &format!("{label} {vcpu_type} {name}"),
                            &read_vmsa(&ours.join(&name)),
                            &read_vmsa(&sc.join(&name)),
                        );
                    }
                }
                let image = std::fs::read(&fw).unwrap();
                let reset = ResetVmsas::for_firmware(
                    &image,
                    VcpuType::from_name(vcpu_type).unwrap(),
                    VmmType::from_name(vmm).unwrap(),
                )
                .unwrap();
                // sevctl's own files where they are right, ours everywhere.
                let mut file_sets = vec![ours.clone()];
                if vmm == "qemu-es-init" && reset.ap_entry.reset_address() < 1 << 24 {
                    file_sets.push(sc.clone());
                }
                for files in file_sets {
                    for n in VCPU_COUNTS {
                        let ns = n.to_string();
                        let b64 = run_in(
                            &sevctl,
                            d,
                            &[
                                "measurement",
                                "build",
                                "--api-major",
                                &major,
                                "--api-minor",
                                &minor,
                                "--build-id",
                                &build,
                                "--policy",
                                "0x5",
                                "--tik",
                                "tik.bin",
                                "--nonce",
                                "nonce.bin",
                                "--firmware",
                                &fw,
                                "--num-cpus",
                                &ns,
                                "--vmsa-cpu0",
                                files.join("vmsa0.bin").to_str().unwrap(),
                                "--vmsa-cpu1",
                                files.join("vmsa1.bin").to_str().unwrap(),
                            ],
                        );
                        let digest = sev_platform::measure::expected_es_digest(
                            &image,
                            &reset.all(n).unwrap(),
                        );
                        let want = sev_platform::measure::launch_measurement(
                            &tik,
                            fwv,
                            Policy(0x5),
                            &digest,
                            &nonce,
                        );
                        assert_eq!(
                            b64.trim(),
                            owner::encode_base64(&want.0),
                            "{label} {vcpu_type} {vmm} {n} vCPUs, files {}",
                            files.display()
                        );
                    }
                }
            }
        }
    }
}

/// An SEV-ES launch on the emulated PSP (the firmware image, then the reset VMSAs of
/// every vCPU) is what `owner verify --policy 0x5 --vcpus N --vcpu-type T` expects, for
/// our firmware and OVMF; any other vCPU count or type is a mismatch; a mode that does not
/// fit the policy is a usage error.
#[test]
fn owner_verify_checks_an_es_launch_of_the_emulated_psp() {
    let dir = tempdir();
    for (label, fw) in firmwares(dir.path()) {
        let image = std::fs::read(&fw).unwrap();
        for (vm_type, vmm) in [
            (KvmVmType::SevEs, VmmType::Qemu),
            (KvmVmType::Default, VmmType::QemuEsInit),
        ] {
            let psp = EmulatedPsp::new(sev_platform::PlatformIdentity::generate().unwrap());
            let policy = Policy(Policy::ES | Policy::NODBG);
            let s = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
            let tik = dir.path().join("tik.bin");
            std::fs::write(&tik, s.keys.tik()).unwrap();
            let vm = VmRef(3);
            psp.add_vm(vm, vm_type).unwrap();
            psp.init_vm(vm, true).unwrap();
            for _ in 0..2 {
                psp.vcpu_created(vm).unwrap();
            }
            psp.launch_start(vm, policy, Some(&s.launch_session()))
                .unwrap();
            let base = (1u64 << 32) - image.len() as u64;
            let mem = VecMemory::with_data(base, image.clone());
            psp.launch_update_data(vm, &mem, base, image.len() as u64)
                .unwrap();
            // The VMM sets each vCPU's reset state; the platform measures what the kernel
            // would (no FPU state on the legacy VM).
            let reset = ResetVmsas::for_firmware(
                &image,
                VcpuType::from_name("EPYC-Milan").unwrap(),
                VmmType::Qemu,
            )
            .unwrap();
            psp.launch_update_vmsa(vm, &reset.all(2).unwrap()).unwrap();
            let m = owner::encode_base64(&psp.launch_measure(vm).unwrap().0);
            let verify = |extra: &[&str]| {
                let mut args = vec![
                    "owner",
                    "verify",
                    "--tik",
                    tik.to_str().unwrap(),
                    "--policy",
                    "0x5",
                    "--measurement",
                    &m,
                    "--firmware",
                    &fw,
                    "--vmm-type",
                    vmm.name(),
                ];
                args.extend_from_slice(extra);
                sevmirror_out(&args)
            };
            let ok = verify(&["--vcpus", "2", "--vcpu-type", "EPYC-Milan"]);
            assert!(
                ok.status.success() && text(&ok.stdout).starts_with("measurement OK"),
                "{label} {vmm:?}: {}{}",
                text(&ok.stdout),
                text(&ok.stderr)
            );
            for wrong in [
                ["--vcpus", "1", "--vcpu-type", "EPYC-Milan"],
                ["--vcpus", "2", "--vcpu-type", "EPYC-v4"],
            ] {
                let o = verify(&wrong);
                assert_eq!(o.status.code(), Some(1), "{label} {wrong:?}");
                assert!(text(&o.stderr).contains("MISMATCH"), "{}", text(&o.stderr));
            }
            let o = verify(&["--mode", "sev"]);
            assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
            assert!(text(&o.stderr).contains("ES bit"), "{}", text(&o.stderr));
            let o = verify(&["--vcpus", "2"]);
            assert_eq!(o.status.code(), Some(2));
            assert!(
                text(&o.stderr).contains("--vcpu-type"),
                "{}",
                text(&o.stderr)
            );
        }
    }
}

/// `image` with the helper descriptor's entry point moved by 4 bytes (still inside the
/// measured image): what a host that wants the helper to start elsewhere would launch.
fn moved_helper_entry(image: &[u8]) -> Vec<u8> {
    let table = fwtable::Table::parse(image).unwrap();
    let entry = table
        .find(fwtable::guid::MIRROR_HELPER_DESCRIPTOR)
        .unwrap()
        .unwrap();
    let at = entry.data.as_ptr() as usize - image.as_ptr() as usize + 8;
    let mut out = image.to_vec();
    let old = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
    out[at..at + 4].copy_from_slice(&(old + 4).to_le_bytes());
    out
}

/// An SEV-ES launch with helper vCPUs, on the emulated PSP as the VMM drives it (the
/// owner's VMSAs, then a mirror VM copied from the owner whose LAUNCH_UPDATE_VMSA measures
/// the helpers' before the owner's LAUNCH_MEASURE) is what `owner verify --helpers N`
/// and `measure --helpers N` expect; another helper count, none, or a firmware whose
/// helper entry moved is a mismatch.
#[test]
fn owner_verify_with_helpers_checks_the_helper_vmsas_measured_after_the_guests() {
    let dir = tempdir();
    let fw = dir.path().join("fw.bin");
    sevmirror(&["firmware", "--out", fw.to_str().unwrap()]);
    let image = std::fs::read(&fw).unwrap();
    let moved = dir.path().join("moved.bin");
    std::fs::write(&moved, moved_helper_entry(&image)).unwrap();
    let psp = EmulatedPsp::new(sev_platform::PlatformIdentity::generate().unwrap());
    let policy = Policy(Policy::ES | Policy::NODBG);
    let s = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
    let tik = dir.path().join("tik.bin");
    std::fs::write(&tik, s.keys.tik()).unwrap();
    let (vm, mirror) = (VmRef(3), VmRef(4));
    psp.add_vm(vm, KvmVmType::SevEs).unwrap();
    psp.init_vm(vm, true).unwrap();
    psp.vcpu_created(vm).unwrap();
    psp.launch_start(vm, policy, Some(&s.launch_session()))
        .unwrap();
    let base = (1u64 << 32) - image.len() as u64;
    let mem = VecMemory::with_data(base, image.clone());
    psp.launch_update_data(vm, &mem, base, image.len() as u64)
        .unwrap();
    let reset = ResetVmsas::for_firmware(
        &image,
        VcpuType::from_name("EPYC-v4").unwrap(),
        VmmType::Qemu,
    )
    .unwrap();
    psp.launch_update_vmsa(vm, &reset.all(1).unwrap()).unwrap();
    psp.add_vm(mirror, KvmVmType::SevEs).unwrap();
    psp.copy_enc_context_from(mirror, vm).unwrap();
    let helpers = vmm::firmware::image_helper_vmsas(&image, 2, VmmType::Qemu).unwrap();
    for _ in &helpers {
        psp.vcpu_created(mirror).unwrap();
    }
    psp.launch_update_vmsa(mirror, &helpers).unwrap();
    let m = owner::encode_base64(&psp.launch_measure(vm).unwrap().0);
    let verify = |firmware: &Path, extra: &[&str]| {
        let mut args = vec![
            "owner",
            "verify",
            "--tik",
            tik.to_str().unwrap(),
            "--policy",
            "0x5",
            "--measurement",
            &m,
            "--firmware",
            firmware.to_str().unwrap(),
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
        ];
        args.extend_from_slice(extra);
        sevmirror_out(&args)
    };
    let ok = verify(&fw, &["--helpers", "2"]);
    assert!(
        ok.status.success() && text(&ok.stdout).contains("2 helper vCPU(s)"),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    for (firmware, extra) in [
        (&fw, &["--helpers", "1"][..]),
        (&fw, &[][..]),
        (&moved, &["--helpers", "2"][..]),
    ] {
        let o = verify(firmware, extra);
        assert_eq!(o.status.code(), Some(1), "{firmware:?} {extra:?}");
        assert!(text(&o.stderr).contains("MISMATCH"), "{}", text(&o.stderr));
    }
    // `measure` prints the same digest, and the dumped VMSAs are the guest's, then the
    // helpers' (numbered on).
    let dump = dir.path().join("vmsas");
    let out = sevmirror(&[
        "measure",
        "--firmware",
        fw.to_str().unwrap(),
        "--mode",
        "sev-es",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
        "--helpers",
        "2",
        "--dump-vmsa",
        dump.to_str().unwrap(),
    ]);
    let digest = out.trim();
    let ok = sevmirror_out(&[
        "owner",
        "verify",
        "--tik",
        tik.to_str().unwrap(),
        "--policy",
        "0x5",
        "--measurement",
        &m,
        "--digest",
        digest,
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(read_vmsa(&dump.join("vmsa1.bin")), helpers[0]);
    assert_eq!(read_vmsa(&dump.join("vmsa2.bin")), helpers[1]);
    assert!(!dump.join("vmsa3.bin").exists());
}
