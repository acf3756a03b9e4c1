//! The guest owner's round trip against the emulated PSP, in process: identity → export
//! PDH → owner session → LAUNCH_START → LAUNCH_UPDATE_DATA over an image → LAUNCH_MEASURE
//! → owner verify → owner secret → LAUNCH_SECRET → the secret table is in guest memory →
//! LAUNCH_FINISH. Also with the virtee `sev` crate's owner side (what sevctl runs), and
//! against golden files under `tests/data/`.

use fwtable::Guid;
use sev_platform::{
    backend::{GuestState, LaunchMeasurement, SecretHeader, VmRef, PAGE_SIZE},
    crypto::TransportKeys,
    emulated::FIRMWARE,
    measure::expected_digest,
    memory::VecMemory,
    owner::{self, Measured},
    secret, secret_table, EmulatedPsp, PlatformIdentity, Policy, SevBackend,
};
use std::path::{Path, PathBuf};

const VM: VmRef = VmRef(3);
const FW_BASE: u64 = 0xffc0_0000;
const SECRET_GPA: u64 = 0x80_0000;
const SECRET_AREA: u64 = 0x1000;
const KEY_GUID: Guid = Guid::parse("736870e5-84f0-4973-92ec-06879ce3da0b");
const NOTE_GUID: Guid = Guid::parse("e6f5a162-d67f-4750-a67c-5d065f2a9910");

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sevmirror-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn firmware_image() -> Vec<u8> {
    (0..16 * PAGE_SIZE).map(|i| (i * 31 + 7) as u8).collect()
}

/// Guest memory: the firmware image at its flash address and RAM with the secret area.
struct Guest {
    flash: VecMemory,
    ram: VecMemory,
}

impl sev_platform::backend::LaunchMemory for Guest {
    fn host_addr(&self, _: u64, _: u64) -> Option<u64> {
        None
    }
    fn read_plain(
        &self,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<(), sev_platform::backend::MemoryAccessError> {
        if gpa >= FW_BASE {
            self.flash.read_plain(gpa, buf)
        } else {
            self.ram.read_plain(gpa, buf)
        }
    }
    fn write_plain(
        &self,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), sev_platform::backend::MemoryAccessError> {
        if gpa >= FW_BASE {
            self.flash.write_plain(gpa, data)
        } else {
            self.ram.write_plain(gpa, data)
        }
    }
}

fn guest() -> Guest {
    Guest {
        flash: VecMemory::with_data(FW_BASE, firmware_image()),
        ram: VecMemory::new(SECRET_GPA, SECRET_AREA as usize),
    }
}

#[test]
fn owner_round_trip_through_files() {
    let dir = temp_dir("round-trip");
    let psp = EmulatedPsp::open(&dir.join("platform")).unwrap();
    let pdh = psp.export_certs().unwrap().pdh;
    let policy = Policy(Policy::NODBG | Policy::NOKS);

    // The owner writes sevctl-style files; the VMM reads the base64 ones.
    let session = owner::session(&pdh, policy).unwrap();
    let files = session.write_files(&dir, owner::DEFAULT_NAME).unwrap();
    let launch = owner::launch_session_from_base64(
        &std::fs::read_to_string(&files.godh).unwrap(),
        &std::fs::read_to_string(&files.session).unwrap(),
    )
    .unwrap();
    let keys = TransportKeys::from_slices(
        &std::fs::read(&files.tek).unwrap(),
        &std::fs::read(&files.tik).unwrap(),
    )
    .unwrap();

    let mem = guest();
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    psp.launch_start(VM, policy, Some(&launch)).unwrap();
    psp.launch_update_data(VM, &mem, FW_BASE, firmware_image().len() as u64)
        .unwrap();
    let measurement = psp.launch_measure(VM).unwrap();
    let measurement_b64 = owner::encode_base64(&measurement.0);

    // A wrong image or a wrong platform version does not verify.
    let mut other = firmware_image();
    other[100] ^= 1;
    let tik = *keys.tik();
    assert!(owner::verify(
        Measured::Firmware(&other),
        FIRMWARE,
        policy,
        &tik,
        &measurement_b64
    )
    .is_err());
    let newer = sev_platform::measure::FirmwareVersion {
        build: 2,
        ..FIRMWARE
    };
    assert!(owner::verify(
        Measured::Firmware(&firmware_image()),
        newer,
        policy,
        &tik,
        &measurement_b64
    )
    .is_err());
    let verified = owner::verify(
        Measured::Firmware(&firmware_image()),
        FIRMWARE,
        policy,
        &tik,
        &measurement_b64,
    )
    .unwrap();
    assert_eq!(verified, measurement);

    let entries = vec![
        (KEY_GUID, b"migration transport key material".to_vec()),
        (NOTE_GUID, b"hi".to_vec()),
    ];
    let packet = owner::secret(&keys, &verified, &entries).unwrap();
    secret::check_in_area(
        SECRET_GPA,
        packet.ciphertext.len() as u64,
        SECRET_GPA,
        SECRET_AREA,
    )
    .unwrap();
    // Through base64, as QEMU's sev-inject-launch-secret takes it.
    let header =
        SecretHeader::from_bytes(&owner::decode_base64("header", &packet.header_b64()).unwrap())
            .unwrap();
    let ciphertext = owner::decode_base64("secret", &packet.secret_b64()).unwrap();
    psp.launch_secret(VM, &mem, &header, &ciphertext, SECRET_GPA)
        .unwrap();
    psp.launch_finish(VM).unwrap();
    assert_eq!(psp.guest_status(VM).unwrap().state, GuestState::Running);

    let area = mem.ram.snapshot(SECRET_GPA, SECRET_AREA as usize).unwrap();
    let found = secret_table::parse(&area).unwrap();
    assert_eq!(
        found,
        vec![
            (KEY_GUID, &entries[0].1[..]),
            (NOTE_GUID, &entries[1].1[..])
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The owner side sevctl runs (virtee `Session`): its session opens on our PSP, its
/// `verify` accepts our measurement, and the packet its `secret` builds decrypts into
/// guest memory.
#[test]
fn virtee_owner_side_interoperates() {
    use sev::{
        certs::sev::sev::Certificate,
        firmware::host::{Build, Version},
        launch::sev::{HeaderFlags, Measurement, Policy as VPolicy, PolicyFlags},
        parser::{Decoder, Encoder},
        session::Session,
    };
    let psp = EmulatedPsp::new(PlatformIdentity::generate().unwrap());
    let pdh = Certificate::decode(&mut &psp.export_certs().unwrap().pdh[..], ()).unwrap();
    let policy = Policy(Policy::NOSEND | 0x18 << 24);
    // Field by field: virtee's `Policy::from(u32)` drops the minimum-API bits.
    let vpolicy = VPolicy {
        flags: PolicyFlags::from_bits_truncate(policy.0 as u16),
        minfw: Version {
            major: policy.api_major(),
            minor: policy.api_minor(),
        },
    };
    let session = Session::try_from(vpolicy).unwrap();
    let start = session.start_pdh(pdh).unwrap();
    let mut godh = Vec::new();
    start.cert.encode(&mut godh, ()).unwrap();
    let s = &start.session;
    let blob = [
        &s.nonce[..],
        &s.wrap_tk,
        &s.wrap_iv,
        &s.wrap_mac,
        &s.policy_mac,
    ]
    .concat();
    let launch = sev_platform::backend::LaunchSession {
        godh_cert: godh,
        session: blob,
    };

    let mem = guest();
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    psp.launch_start(VM, policy, Some(&launch)).unwrap();
    psp.launch_update_data(VM, &mem, FW_BASE, firmware_image().len() as u64)
        .unwrap();
    let m = psp.launch_measure(VM).unwrap();

    let build = Build {
        version: Version {
            major: FIRMWARE.api_major,
            minor: FIRMWARE.api_minor,
        },
        build: FIRMWARE.build,
    };
    let msr = Measurement {
        measure: m.measurement(),
        mnonce: m.mnonce(),
    };
    let verified = session
        .verify(&expected_digest(&firmware_image()), build, msr)
        .unwrap();
    let table = secret_table::build(&[(KEY_GUID, b"from virtee")]).unwrap();
    let packet = verified.secret(HeaderFlags::default(), &table).unwrap();
    let header = SecretHeader {
        flags: packet.header.flags.bits(),
        iv: packet.header.iv,
        mac: packet.header.mac,
    };
    psp.launch_secret(VM, &mem, &header, &packet.ciphertext, SECRET_GPA)
        .unwrap();
    assert_eq!(mem.ram.snapshot(SECRET_GPA, table.len()).unwrap(), table);
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Golden files: a platform state directory, a session sevctl-style files made for its
/// PDH by the virtee owner side, a LAUNCH_MEASURE blob of `firmware_image()` under that
/// session, and a secret packet for it. They pin the on-disk identity format, the key
/// schedule and the packet formats across changes.
#[test]
fn golden_platform_session_measurement_and_secret() {
    let d = data_dir();
    // Load a copy: loading takes a lock file in the directory, and the source tree stays
    // untouched.
    let copy = temp_dir("golden");
    for f in ["chip-identity.bin", "owner-identity.bin"] {
        std::fs::copy(d.join("golden-platform").join(f), copy.join(f)).unwrap();
    }
    let id = PlatformIdentity::load_or_create(&copy).unwrap();
    let read = |name: &str| std::fs::read(d.join("golden-session").join(name)).unwrap();
    let text = |name: &str| String::from_utf8(read(name)).unwrap();
    let launch =
        owner::launch_session_from_base64(&text("vm_godh.b64"), &text("vm_session.b64")).unwrap();
    let keys = TransportKeys::from_slices(&read("vm_tek.bin"), &read("vm_tik.bin")).unwrap();
    let policy = Policy(u32::from_str_radix(text("policy.txt").trim(), 16).unwrap());

    let psp = EmulatedPsp::new(id);
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    psp.launch_start(VM, policy, Some(&launch)).unwrap();
    let measurement = owner::verify(
        Measured::Firmware(&firmware_image()),
        FIRMWARE,
        policy,
        keys.tik(),
        text("launch_measure.b64").trim(),
    )
    .unwrap();
    let header = SecretHeader::from_bytes(&read("secret_header.bin")).unwrap();
    let plain = secret::open(
        &keys,
        &measurement.measurement(),
        &header,
        &read("secret_payload.bin"),
        SECRET_GPA,
    )
    .unwrap();
    assert_eq!(
        secret_table::parse(&plain).unwrap(),
        vec![(KEY_GUID, &b"golden secret"[..])]
    );
    // The session's keys unwrap on the PSP: a measurement made now verifies with them.
    let m = psp.launch_measure(VM).unwrap();
    owner::verify(
        Measured::Digest(expected_digest(b"")),
        FIRMWARE,
        policy,
        keys.tik(),
        &owner::encode_base64(&m.0),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&copy);
}

/// Regenerates the golden files (run by hand with `--ignored` after an intended format
/// change, then review the diff).
#[test]
#[ignore]
fn regenerate_golden_files() {
    let d = data_dir();
    let _ = std::fs::remove_dir_all(d.join("golden-platform"));
    let _ = std::fs::remove_dir_all(d.join("golden-session"));
    std::fs::create_dir_all(d.join("golden-session")).unwrap();
    let id = PlatformIdentity::load_or_create(&d.join("golden-platform")).unwrap();
    let policy = Policy(Policy::NODBG);
    let s = owner::session(id.pdh_cert().as_bytes(), policy).unwrap();
    s.write_files(&d.join("golden-session"), owner::DEFAULT_NAME)
        .unwrap();
    std::fs::write(
        d.join("golden-session/policy.txt"),
        format!("{:x}\n", policy.0),
    )
    .unwrap();
    let psp = EmulatedPsp::new(id);
    let mem = guest();
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    psp.launch_start(VM, policy, Some(&s.launch_session()))
        .unwrap();
    psp.launch_update_data(VM, &mem, FW_BASE, firmware_image().len() as u64)
        .unwrap();
    let m: LaunchMeasurement = psp.launch_measure(VM).unwrap();
    std::fs::write(
        d.join("golden-session/launch_measure.b64"),
        owner::encode_base64(&m.0) + "\n",
    )
    .unwrap();
    let packet = owner::secret(&s.keys, &m, &[(KEY_GUID, b"golden secret".to_vec())]).unwrap();
    std::fs::write(
        d.join("golden-session/secret_header.bin"),
        packet.header_bytes(),
    )
    .unwrap();
    std::fs::write(
        d.join("golden-session/secret_payload.bin"),
        &packet.ciphertext,
    )
    .unwrap();
}
