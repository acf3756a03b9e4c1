//! `measure` and `owner verify` with `--kernel/--initrd/--append` (measured direct boot):
//! the digest equals `sev-snp-measure --mode sev` for our firmware, a firmware without an
//! SEV hashes table (Debian's OVMF.fd) is refused as that tool refuses it, and the owner's
//! check accepts exactly the launch the emulated PSP measured (firmware, then the table).
//!
//! sev-snp-measure is looked up as `support::sev_snp_measure` says; without it the
//! comparisons print SKIPPED and pass.

mod support;

use os_loader::hashes::{SevHashes, PADDED_SIZE};
use sev_platform::{
    backend::{KvmVmType, VmRef},
    memory::VecMemory,
    owner, EmulatedPsp, Policy, SevBackend,
};
use sha2::{Digest, Sha256};
use std::{
    path::Path,
    process::{Command, Output},
};

fn sevmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(args)
        .env_remove("SEVMIRROR_LOG")
        .output()
        .expect("run sevmirror")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = sevmirror(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "sevmirror {args:?}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Requires exit 1 with one `sevmirror: error:` line containing `needle`.
fn fails(args: &[&str], needle: &str) -> String {
    let o = sevmirror(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "sevmirror {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("sevmirror: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    err
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::Builder::new()
                .prefix("sevmirror-measure-")
                .tempdir()
                .unwrap(),
        }
    }

    fn write(&self, name: &str, data: &[u8]) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// A kernel-sized blob: measure hashes bytes, it does not boot them. The Debian image is
/// used when the loader test's copy is there.
fn kernel_bytes() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/debian-kernel/boot");
    if let Some(p) = std::fs::read_dir(dir).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().contains("vmlinuz-"))
    }) {
        return std::fs::read(p).unwrap();
    }
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn inputs(f: &Files) -> (String, String, String) {
    let fw = f.p("fw.bin");
    ok(&["firmware", "--out", &fw]);
    let kernel = f.write("vmlinuz", &kernel_bytes());
    let initrd = f.write(
        "initrd.img",
        &(0..1_500_000u32)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<_>>(),
    );
    (fw, kernel, initrd)
}

#[test]
fn measure_with_a_kernel_equals_sev_snp_measure() {
    let f = Files::new();
    let (fw, kernel, initrd) = inputs(&f);
    let cases: [&[&str]; 4] = [
        &[],
        &["--append", "console=ttyS0 quiet"],
        &["--initrd", &initrd],
        &[
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 root=/dev/vda1",
        ],
    ];
    let plain = ok(&["measure", "--firmware", &fw]).trim().to_string();
    let mut seen = vec![plain];
    let tool = support::sev_snp_measure();
    for extra in cases {
        let mut args = vec!["measure", "--firmware", &fw, "--kernel", &kernel];
        args.extend_from_slice(extra);
        let ours = ok(&args).trim().to_string();
        assert_eq!(ours.len(), 64);
        assert!(!seen.contains(&ours), "{extra:?} gave a digest seen before");
        seen.push(ours.clone());
        if let Some(tool) = &tool {
            let mut cmd = Command::new(tool);
            cmd.args(["--mode", "sev", "--ovmf", &fw, "--kernel", &kernel]);
            cmd.args(extra);
            let o = cmd.output().unwrap();
            assert!(o.status.success(), "sev-snp-measure: {}", text(&o.stderr));
            assert_eq!(ours, text(&o.stdout).trim(), "{extra:?}");
            eprintln!("{extra:?}: {ours} = sev-snp-measure");
        }
    }
}

/// SEV-ES with measured direct boot: the firmware, the hashes table, then every VMSA —
/// as `sev-snp-measure --mode seves --kernel` computes it, and as the parts `--json` and
/// `--dump-vmsa` show, hashed independently here.
#[test]
fn sev_es_measure_with_a_kernel_is_data_then_vmsas_as_sev_snp_measure_says() {
    let f = Files::new();
    let (fw, kernel, initrd) = inputs(&f);
    let tool = support::sev_snp_measure();
    let sev = ok(&["measure", "--firmware", &fw, "--kernel", &kernel]);
    let cases: [(&str, &[&str]); 2] = [
        ("1", &[]),
        (
            "2",
            &["--initrd", &initrd, "--append", "console=ttyS0 quiet"],
        ),
    ];
    for (vcpus, extra) in cases {
        let dump = f.p(&format!("vmsa-{vcpus}"));
        let mut args = vec![
            "measure",
            "--mode",
            "sev-es",
            "--vcpus",
            vcpus,
            "--vcpu-type",
            "EPYC-v4",
            "--firmware",
            &fw,
            "--kernel",
            &kernel,
        ];
        args.extend_from_slice(extra);
        let ours = ok(&args).trim().to_string();
        assert_ne!(ours, sev.trim(), "the VMSAs are measured too");
        args.extend_from_slice(&["--json", "--dump-vmsa", &dump]);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(v["launch-digest"], ours.as_str());
        let table: Vec<u8> = (0..PADDED_SIZE)
            .map(|i| {
                let hex = &v["kernel-hashes-table"].as_str().unwrap()[2 * i..2 * i + 2];
                u8::from_str_radix(hex, 16).unwrap()
            })
            .collect();
        let mut h = Sha256::new()
            .chain_update(std::fs::read(&fw).unwrap())
            .chain_update(&table);
        let n: usize = vcpus.parse().unwrap();
        for i in 0..n {
            let page = std::fs::read(Path::new(&dump).join(format!("vmsa{i}.bin"))).unwrap();
            assert_eq!(page.len(), 4096);
            h.update(&page);
        }
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(ours, want, "{vcpus} vCPUs {extra:?}");
        if let Some(tool) = &tool {
            let o = Command::new(tool)
                .args([
                    "--mode",
                    "seves",
                    "--vcpus",
                    vcpus,
                    "--vcpu-type",
                    "EPYC-v4",
                ])
                .args(["--ovmf", &fw, "--kernel", &kernel])
                .args(extra)
                .output()
                .unwrap();
            assert!(o.status.success(), "sev-snp-measure: {}", text(&o.stderr));
            assert_eq!(ours, text(&o.stdout).trim(), "{vcpus} vCPUs {extra:?}");
            eprintln!("seves {vcpus} vCPUs {extra:?}: {ours} = sev-snp-measure");
        }
    }
}

#[test]
fn the_digest_is_firmware_then_table_and_a_kernel_byte_changes_it() {
    let f = Files::new();
    let (fw, kernel, _) = inputs(&f);
    let args = ["measure", "--firmware", &fw, "--kernel", &kernel, "--json"];
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    // Independently of the command: SHA-256 over the two LAUNCH_UPDATE_DATA buffers.
    let image = std::fs::read(&fw).unwrap();
    let k = std::fs::read(&kernel).unwrap();
    let table = SevHashes::of(&k, &[], b"").table();
    let want: String = Sha256::new()
        .chain_update(&image)
        .chain_update(table)
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["launch-digest"], want.as_str());
    assert_eq!(
        v["kernel-hashes-table"].as_str().unwrap().len(),
        2 * PADDED_SIZE
    );

    let mut changed = k.clone();
    changed[k.len() / 2] ^= 0x01;
    let kernel2 = f.write("vmlinuz2", &changed);
    let a = ok(&["measure", "--firmware", &fw, "--kernel", &kernel]);
    let b = ok(&["measure", "--firmware", &fw, "--kernel", &kernel2]);
    assert_ne!(a, b);
}

#[test]
fn a_firmware_without_a_hashes_table_is_refused_like_sev_snp_measure_does() {
    let f = Files::new();
    let kernel = f.write("vmlinuz", b"not even a kernel");
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if Path::new(ovmf).exists() {
        fails(
            &["measure", "--firmware", ovmf, "--kernel", &kernel],
            "SEV hashes table entry is empty (base 0x0, size 0x0)",
        );
        if let Some(tool) = support::sev_snp_measure() {
            let o = Command::new(tool)
                .args(["--mode", "sev", "--ovmf", ovmf, "--kernel", &kernel])
                .output()
                .unwrap();
            assert!(!o.status.success());
            assert!(text(&o.stderr).contains("doesn't support kernel"));
        }
    } else {
        eprintln!("SKIPPED: {ovmf} not installed (apt-get install ovmf)");
    }
    // No footer table at all, and a table without the entry.
    let blank = f.write("blank.fd", &[0u8; 0x10000]);
    fails(
        &["measure", "--firmware", &blank, "--kernel", &kernel],
        "no OVMF footer table",
    );
    let mut image = vec![0u8; 0x10000];
    fwtable::place_in_image(&mut image, &[]).unwrap();
    let no_entry = f.write("noentry.fd", &image);
    fails(
        &["measure", "--firmware", &no_entry, "--kernel", &kernel],
        "no SEV hashes table entry (7255371f-3a3b-4b04-927b-1da6efa8d454)",
    );
    // Too small an area for the 176-byte table.
    let small = fwtable::SevArea {
        base: 0x80_0000,
        size: 0x80,
    }
    .encode();
    let mut image = vec![0u8; 0x10000];
    fwtable::place_in_image(&mut image, &[(fwtable::guid::SEV_HASH_TABLE, &small)]).unwrap();
    let small = f.write("small.fd", &image);
    fails(
        &["measure", "--firmware", &small, "--kernel", &kernel],
        "smaller than the 176-byte table",
    );
    // --initrd and --append need --kernel (usage error).
    let o = sevmirror(&["measure", "--firmware", &small, "--append", "x"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn owner_verify_accepts_the_measured_kernel_launch_and_nothing_else() {
    let f = Files::new();
    let (fw, kernel, initrd) = inputs(&f);
    let append = "console=ttyS0";

    // The emulated PSP measures what QEMU feeds it: the flash, then the hashes table.
    let psp = EmulatedPsp::open(&f.dir.path().join("platform")).unwrap();
    let pdh = psp.export_certs().unwrap().pdh;
    let session = owner::session(&pdh, Policy(1)).unwrap();
    let files = session.write_files(f.dir.path(), "vm").unwrap();
    let image = std::fs::read(&fw).unwrap();
    let hashes = SevHashes::of(
        &std::fs::read(&kernel).unwrap(),
        &std::fs::read(&initrd).unwrap(),
        append.as_bytes(),
    );
    let base = 0x10_0000u64;
    let mut data = image.clone();
    data.extend_from_slice(&hashes.table());
    let mem = VecMemory::with_data(base, data);
    let vm = VmRef(3);
    psp.add_vm(vm, KvmVmType::Default).unwrap();
    psp.init_vm(vm, false).unwrap();
    psp.launch_start(vm, Policy(1), Some(&session.launch_session()))
        .unwrap();
    psp.launch_update_data(vm, &mem, base, image.len() as u64)
        .unwrap();
    psp.launch_update_data(vm, &mem, base + image.len() as u64, PADDED_SIZE as u64)
        .unwrap();
    let m = owner::encode_base64(&psp.launch_measure(vm).unwrap().0);

    let tik = files.tik.to_str().unwrap().to_string();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "owner",
            "verify",
            "--tik",
            &tik,
            "--policy",
            "1",
            "--measurement",
            &m,
            "--firmware",
            &fw,
        ];
        args.extend_from_slice(extra);
        sevmirror(&args)
    };
    let good = verify(&["--kernel", &kernel, "--initrd", &initrd, "--append", append]);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stderr));
    assert!(text(&good.stdout).starts_with("measurement OK"));
    assert!(text(&good.stdout).contains("with kernel"));
    for extra in [
        &[][..],
        &["--kernel", &kernel, "--initrd", &initrd],
        &["--kernel", &kernel, "--append", append],
        &["--kernel", &initrd, "--initrd", &initrd, "--append", append],
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS1",
        ],
    ] {
        let o = verify(extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(text(&o.stderr).contains("MISMATCH"), "{}", text(&o.stderr));
    }
    // --digest and --kernel do not mix.
    let zeros = "0".repeat(64);
    let o = sevmirror(&[
        "owner",
        "verify",
        "--tik",
        &tik,
        "--policy",
        "1",
        "--measurement",
        &m,
        "--digest",
        &zeros,
        "--kernel",
        &kernel,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("cannot be used with"));
}
