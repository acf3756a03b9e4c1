//! The bzImage path on a real kernel: Debian's `linux-image-*-amd64` vmlinuz, loaded into
//! a guest laid out as our firmware lays it out, and the zero page checked field by field.
//!
//! The image comes from `$SEVMIRROR_TEST_BZIMAGE`, else from
//! `target/ci/debian-kernel/boot/vmlinuz-*` (where `.ci/run` unpacks the package with
//! `apt-get download` + `dpkg-deb`, never installing it). Without either the test prints
//! SKIPPED and passes.

use std::path::{Path, PathBuf};

use guest_abi::{
    layout,
    memmap::{firmware_reservations, MemoryMap},
};
use os_loader::{
    boot_params::BootParams,
    bzimage::{BzImage, KernelPlacement},
    e820::E820Type,
    hashes::{Blob, HashTable, SevHashes},
    load::{detect, load_linux, KernelFormat, Layout, LoadError},
    GuestWriter, Span, WriteError,
};

const MIB: u64 = 1 << 20;
const RAM: u64 = 512 * MIB;

fn find_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEVMIRROR_TEST_BZIMAGE") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/debian-kernel/boot");
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
    found.pop()
}

/// Records writes; reads are served from them (the guest is sparse: 512 MiB untouched).
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl Recorder {
    /// The bytes at `gpa`, each from the last write that covered it.
    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        (gpa..gpa + len as u64)
            .map(|a| {
                self.writes
                    .iter()
                    .rev()
                    .find(|(at, b)| *at <= a && a < at + b.len() as u64)
                    .map(|(at, b)| b[(a - at) as usize])
                    .unwrap_or_else(|| panic!("nothing written at {a:#x}"))
            })
            .collect()
    }
}

impl GuestWriter for Recorder {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        if gpa + data.len() as u64 > RAM {
            return Err(WriteError {
                gpa,
                len: data.len() as u64,
            });
        }
        self.writes.push((gpa, data.to_vec()));
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), WriteError> {
        self.write(gpa, &vec![0; len as usize])
    }
}

/// The kernel's version string (`kernel_version` points into the setup, 0x200 after).
fn version_string(file: &[u8]) -> String {
    let ptr = u16::from_le_bytes([file[0x20e], file[0x20f]]) as usize + 0x200;
    let end = file[ptr..].iter().position(|&b| b == 0).unwrap_or(0);
    String::from_utf8_lossy(&file[ptr..ptr + end]).into_owned()
}

fn covered(e820: &[os_loader::boot_params::BootE820Entry], span: Span, kind: E820Type) -> bool {
    e820.iter().any(|e| {
        e.kind == kind.0 && { e.addr } <= span.base && span.end() <= { e.addr } + { e.size }
    })
}

#[test]
fn debian_bzimage_hand_off_field_by_field() {
    let Some(path) = find_kernel() else {
        eprintln!(
            "SKIPPED: no Debian kernel image (set SEVMIRROR_TEST_BZIMAGE or run .ci/run, which \
             unpacks linux-image-*-amd64 into target/ci/debian-kernel)"
        );
        return;
    };
    let file = std::fs::read(&path).unwrap();
    eprintln!(
        "kernel: {} ({} bytes): {}",
        path.display(),
        file.len(),
        version_string(&file)
    );
    assert_eq!(detect(&file).unwrap(), KernelFormat::BzImage);
    let bz = BzImage::parse(&file).unwrap();
    let h = bz.header().header();
    eprintln!(
        "protocol {}.{:02}, setup_sects {}, init_size {:#x}, pref_address {:#x}, kernel_alignment {:#x}, xloadflags {:#x}, cmdline_size {}",
        h.version >> 8,
        h.version & 0xff,
        h.setup_sects,
        { h.init_size },
        { h.pref_address },
        { h.kernel_alignment },
        { h.xloadflags },
        { h.cmdline_size }
    );
    // The split: setup sectors, then the protected-mode kernel, nothing lost.
    assert_eq!(bz.setup().len(), (usize::from(h.setup_sects) + 1) * 512);
    assert_eq!(bz.setup().len() + bz.kernel().len(), file.len());
    assert!(u64::from(h.syssize) * 16 <= bz.kernel().len() as u64);

    let helper = helper_abi::region::region_size(RAM / layout::PAGE_SIZE);
    let map = MemoryMap::build([(0, RAM)], &firmware_reservations(helper)).unwrap();
    let services = [Span {
        base: layout::SERVICES_GPA,
        size: layout::PAGE_SIZE,
    }];
    let guest = Layout {
        map: &map,
        mmio: &services,
    };
    let initrd: Vec<u8> = (0..5 * MIB as usize + 123)
        .map(|i| (i % 253) as u8)
        .collect();
    let cmdline = b"console=ttyS0 earlyprintk=serial nokaslr";
    let mut mem = Recorder::default();
    let handoff = load_linux(&bz, &initrd, cmdline, &guest, &mut mem).unwrap();
    let plan = handoff.plan;

    // Kernel placement: aligned, at or above pref_address, init_size bytes of RAM that
    // the E820 map calls usable and that touch no reservation.
    let KernelPlacement::Relocatable { min, align } = bz.header().placement() else {
        panic!("Debian's kernel is relocatable");
    };
    assert_eq!(min, { h.pref_address });
    assert_eq!(align, u64::from(h.kernel_alignment));
    assert_eq!(plan.kernel.base % align, 0);
    assert!(plan.kernel.base >= h.pref_address);
    assert!(plan.kernel.size >= u64::from(h.init_size));
    assert_eq!(plan.entry, plan.kernel.base + 0x200, "64-bit entry");
    assert_eq!(mem.read(plan.kernel.base, bz.kernel().len()), bz.kernel());
    eprintln!(
        "kernel at {:#x}..{:#x}, entry {:#x}, zero page {:#x}, cmdline {:#x}, initrd {:#x?}",
        plan.kernel.base,
        plan.kernel.end(),
        plan.entry,
        plan.boot_params.base,
        plan.cmdline.base,
        plan.initrd
    );

    // The zero page in guest memory.
    let mut raw = [0u8; 4096];
    raw.copy_from_slice(&mem.read(plan.boot_params.base, 4096));
    let p = BootParams::decode(&raw);
    assert_eq!(p, handoff.params);
    let hdr = p.hdr;
    // Setup header: copied from the file, the loader's fields filled in.
    assert_eq!(
        &raw[0x1f1..0x1f1 + 0x1f],
        &file[0x1f1..0x1f1 + 0x1f],
        "0x1f1..0x210 as in the file"
    );
    assert_eq!(hdr.setup_sects, h.setup_sects);
    assert_eq!({ hdr.syssize }, { h.syssize });
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!(&raw[0x202..0x206], b"HdrS");
    assert_eq!({ hdr.version }, { h.version });
    assert!({ hdr.version } >= 0x0206);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags, h.loadflags);
    assert_ne!(hdr.loadflags & 1, 0, "LOADED_HIGH");
    assert_eq!({ hdr.code32_start } as u64, plan.kernel.base);
    assert_eq!({ hdr.kernel_alignment }, { h.kernel_alignment });
    assert_eq!(hdr.relocatable_kernel, h.relocatable_kernel);
    assert_eq!({ hdr.xloadflags }, { h.xloadflags });
    assert_ne!({ hdr.xloadflags } & 1, 0, "XLF_KERNEL_64");
    assert_eq!({ hdr.cmdline_size }, { h.cmdline_size });
    assert_eq!({ hdr.pref_address }, { h.pref_address });
    assert_eq!({ hdr.init_size }, { h.init_size });
    assert_eq!({ hdr.initrd_addr_max }, { h.initrd_addr_max });
    assert_eq!({ hdr.setup_data }, 0);
    assert_eq!({ hdr.hardware_subarch }, 0);
    assert_eq!(
        &raw[0x236..0x26c],
        &{
            let mut expect = file[0x236..0x26c].to_vec();
            expect[0x250 - 0x236..0x258 - 0x236].fill(0); // setup_data
            expect[0x23c - 0x236..0x248 - 0x236].fill(0); // hardware_subarch(_data)
            expect
        }[..],
        "0x236..0x26c as in the file but setup_data and hardware_subarch"
    );
    assert_eq!(p.sentinel, 0);
    // Command line.
    assert_eq!({ hdr.cmd_line_ptr } as u64, plan.cmdline.base);
    assert_eq!({ p.ext_cmd_line_ptr }, 0);
    let mut with_nul = cmdline.to_vec();
    with_nul.push(0);
    assert_eq!(mem.read(plan.cmdline.base, with_nul.len()), &with_nul[..]);
    // Initrd: page aligned, below initrd_addr_max and RAM top, its bytes there.
    let rd = plan.initrd.unwrap();
    assert_eq!({ hdr.ramdisk_image } as u64, rd.base);
    assert_eq!({ hdr.ramdisk_size } as u64, initrd.len() as u64);
    assert_eq!((p.ext_ramdisk_image, p.ext_ramdisk_size), (0, 0));
    assert_eq!(rd.base % 0x1000, 0);
    assert!(rd.end() - 1 <= u64::from(h.initrd_addr_max) && rd.end() <= RAM);
    assert_eq!(mem.read(rd.base, initrd.len()), &initrd[..]);

    // E820: sorted, the reservations reserved, everything placed in RAM.
    let e820: Vec<_> = p.e820().collect();
    assert!(e820
        .windows(2)
        .all(|w| { w[0].addr } + { w[0].size } <= { w[1].addr }));
    for (base, size, kind) in firmware_reservations(helper) {
        let span = Span { base, size };
        assert!(
            covered(&e820, span, E820Type::RESERVED),
            "{kind:?} {span:x?} not reserved"
        );
    }
    assert!(covered(&e820, services[0], E820Type::RESERVED));
    for span in [plan.kernel, plan.boot_params, plan.cmdline, rd] {
        assert!(
            covered(&e820, span, E820Type::RAM),
            "{span:x?} not usable RAM"
        );
    }
    let ram: u64 = e820
        .iter()
        .filter(|e| e.kind == E820Type::RAM.0)
        .map(|e| e.size)
        .sum();
    eprintln!(
        "e820: {} entries, {} MiB usable; helper region {:#x}+{:#x} reserved",
        e820.len(),
        ram >> 20,
        layout::HELPER_REGION_BASE,
        helper
    );

    // The loader refuses a command line over this kernel's cmdline_size.
    let long = vec![b'x'; h.cmdline_size as usize + 1];
    assert_eq!(
        load_linux(&bz, &[], &long, &guest, &mut Recorder::default()).unwrap_err(),
        LoadError::CmdlineTooLong {
            len: long.len(),
            max: h.cmdline_size as usize
        }
    );

    // The SEV hashes table vouches for the whole file (setup ‖ kernel), as QEMU hashes it.
    let table = SevHashes::of(&file, &initrd, cmdline).table();
    let parsed = HashTable::parse(&table).unwrap();
    let mut blob = bz.setup().to_vec();
    blob.extend_from_slice(bz.kernel());
    parsed.verify(Blob::Kernel, &blob).unwrap();
    parsed.verify(Blob::Cmdline, &with_nul).unwrap();
    parsed.verify(Blob::Initrd, &initrd).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    assert!(parsed.verify(Blob::Kernel, &blob).is_err());
}
