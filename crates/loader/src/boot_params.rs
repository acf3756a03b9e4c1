//! The zero page, `struct boot_params`, and its embedded `struct setup_header`
//! (Linux `arch/x86/include/uapi/asm/bootparam.h`, `Documentation/arch/x86/zero-page.rst`
//! and `boot.rst`).
//!
//! Both are `repr(C, packed)` mirrors of the kernel's structs with every offset the boot
//! protocol pins asserted at compile time; they are turned into bytes field by field at
//! those offsets ([`BootParams::encode`]), without `unsafe`.

use core::mem::{offset_of, size_of};

/// Size of the zero page.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Offset of the setup header in the zero page and in a bzImage file.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Entries the zero page's E820 table holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES: usize = 128;

/// `boot_flag` value (the old boot-sector signature).
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
pub const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// `type_of_loader` for a boot loader without an assigned id (boot.rst: 0xff).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// `loadflags` bit: the protected-mode code is loaded at 0x100000 (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit: kernel, boot_params, command line and initrd may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// A value stored little-endian at a fixed offset.
trait Le: Sized + Copy {
    const N: usize;
    fn put(self, out: &mut [u8]);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! le_int {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const N: usize = size_of::<$t>();
            fn put(self, out: &mut [u8]) {
                out[..Self::N].copy_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; size_of::<$t>()];
                b.copy_from_slice(&bytes[..Self::N]);
                <$t>::from_le_bytes(b)
            }
        }
    )*};
}
le_int!(u8, u16, u32, u64);

impl<const M: usize> Le for [u8; M] {
    const N: usize = M;
    fn put(self, out: &mut [u8]) {
        out[..M].copy_from_slice(&self);
    }
    fn get(bytes: &[u8]) -> Self {
        let mut b = [0u8; M];
        b.copy_from_slice(&bytes[..M]);
        b
    }
}

// The offsets below come from `offset_of!` on the packed structs, whose total sizes are
// asserted, so every slice in `put`/`get` is in bounds of the fixed-size buffers.
fn put<T: Le>(buf: &mut [u8], at: usize, v: T) {
    v.put(&mut buf[at..at + T::N]);
}

fn get<T: Le>(buf: &[u8], at: usize) -> T {
    T::get(&buf[at..at + T::N])
}

/// Encodes/decodes the listed fields of a packed struct at their `offset_of!` offsets.
macro_rules! codec {
    ($ty:ident { $($f:ident),* $(,)? }) => {
        fn put_fields(&self, buf: &mut [u8]) {
            $( put(buf, offset_of!($ty, $f), { self.$f }); )*
        }
        fn get_fields(&mut self, buf: &[u8]) {
            $( self.$f = get(buf, offset_of!($ty, $f)); )*
        }
    };
}

/// `struct setup_header`: at 0x1f1 in both a bzImage and the zero page. Offsets in the
/// field docs are from the start of the zero page, as boot.rst lists them.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// 0x1f1: size of the setup code in 512-byte sectors (0 means 4).
    pub setup_sects: u8,
    /// 0x1f2: root read-only flag (obsolete).
    pub root_flags: u16,
    /// 0x1f4: size of the protected-mode code in 16-byte paragraphs.
    pub syssize: u32,
    /// 0x1f8: obsolete.
    pub ram_size: u16,
    /// 0x1fa: video mode.
    pub vid_mode: u16,
    /// 0x1fc: default root device (obsolete).
    pub root_dev: u16,
    /// 0x1fe: 0xAA55.
    pub boot_flag: u16,
    /// 0x200: jump instruction; its second byte + 0x202 is the end of the header.
    pub jump: u16,
    /// 0x202: "HdrS".
    pub header: u32,
    /// 0x206: boot protocol version (major << 8 | minor).
    pub version: u16,
    /// 0x208: real-mode switch hook.
    pub realmode_swtch: u32,
    /// 0x20c: obsolete.
    pub start_sys_seg: u16,
    /// 0x20e: pointer to the kernel version string.
    pub kernel_version: u16,
    /// 0x210: boot loader id.
    pub type_of_loader: u8,
    /// 0x211: boot protocol option flags ([`LOADED_HIGH`]).
    pub loadflags: u8,
    /// 0x212: obsolete.
    pub setup_move_size: u16,
    /// 0x214: 32-bit entry point (the load address).
    pub code32_start: u32,
    /// 0x218: initrd address (low 32 bits).
    pub ramdisk_image: u32,
    /// 0x21c: initrd size (low 32 bits).
    pub ramdisk_size: u32,
    /// 0x220: obsolete.
    pub bootsect_kludge: u32,
    /// 0x224: end of the setup heap (real-mode boot only).
    pub heap_end_ptr: u16,
    /// 0x226: boot loader version extension.
    pub ext_loader_ver: u8,
    /// 0x227: boot loader type extension.
    pub ext_loader_type: u8,
    /// 0x228: command line address (low 32 bits).
    pub cmd_line_ptr: u32,
    /// 0x22c: highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// 0x230: alignment the kernel must be loaded at when relocated.
    pub kernel_alignment: u32,
    /// 0x234: non-zero if the kernel is relocatable.
    pub relocatable_kernel: u8,
    /// 0x235: minimum alignment, as a power of two.
    pub min_alignment: u8,
    /// 0x236: extended load flags ([`XLF_KERNEL_64`], ...).
    pub xloadflags: u16,
    /// 0x238: longest command line, without its terminating NUL.
    pub cmdline_size: u32,
    /// 0x23c: hardware subarchitecture (0: PC).
    pub hardware_subarch: u32,
    /// 0x240: subarchitecture data.
    pub hardware_subarch_data: u64,
    /// 0x248: offset of the compressed payload.
    pub payload_offset: u32,
    /// 0x24c: length of the compressed payload.
    pub payload_length: u32,
    /// 0x250: physical address of the first `setup_data` node.
    pub setup_data: u64,
    /// 0x258: preferred load address.
    pub pref_address: u64,
    /// 0x260: bytes the kernel needs from its load address until it has relocated itself.
    pub init_size: u32,
    /// 0x264: EFI handover entry offset.
    pub handover_offset: u32,
    /// 0x268: offset of `kernel_info`.
    pub kernel_info_offset: u32,
}

/// Size of [`SetupHeader`]: 0x1f1..0x26c.
pub const SETUP_HEADER_SIZE: usize = 0x26c - SETUP_HEADER_OFFSET;

// boot.rst's table, offsets relative to the header's start at 0x1f1.
const _: () = {
    const B: usize = SETUP_HEADER_OFFSET;
    assert!(size_of::<SetupHeader>() == SETUP_HEADER_SIZE);
    assert!(offset_of!(SetupHeader, setup_sects) + B == 0x1f1);
    assert!(offset_of!(SetupHeader, syssize) + B == 0x1f4);
    assert!(offset_of!(SetupHeader, vid_mode) + B == 0x1fa);
    assert!(offset_of!(SetupHeader, boot_flag) + B == 0x1fe);
    assert!(offset_of!(SetupHeader, jump) + B == 0x200);
    assert!(offset_of!(SetupHeader, header) + B == 0x202);
    assert!(offset_of!(SetupHeader, version) + B == 0x206);
    assert!(offset_of!(SetupHeader, type_of_loader) + B == 0x210);
    assert!(offset_of!(SetupHeader, loadflags) + B == 0x211);
    assert!(offset_of!(SetupHeader, code32_start) + B == 0x214);
    assert!(offset_of!(SetupHeader, ramdisk_image) + B == 0x218);
    assert!(offset_of!(SetupHeader, ramdisk_size) + B == 0x21c);
    assert!(offset_of!(SetupHeader, heap_end_ptr) + B == 0x224);
    assert!(offset_of!(SetupHeader, cmd_line_ptr) + B == 0x228);
    assert!(offset_of!(SetupHeader, initrd_addr_max) + B == 0x22c);
    assert!(offset_of!(SetupHeader, kernel_alignment) + B == 0x230);
    assert!(offset_of!(SetupHeader, relocatable_kernel) + B == 0x234);
    assert!(offset_of!(SetupHeader, min_alignment) + B == 0x235);
    assert!(offset_of!(SetupHeader, xloadflags) + B == 0x236);
    assert!(offset_of!(SetupHeader, cmdline_size) + B == 0x238);
    assert!(offset_of!(SetupHeader, hardware_subarch) + B == 0x23c);
    assert!(offset_of!(SetupHeader, payload_offset) + B == 0x248);
    assert!(offset_of!(SetupHeader, setup_data) + B == 0x250);
    assert!(offset_of!(SetupHeader, pref_address) + B == 0x258);
    assert!(offset_of!(SetupHeader, init_size) + B == 0x260);
    assert!(offset_of!(SetupHeader, handover_offset) + B == 0x264);
    assert!(offset_of!(SetupHeader, kernel_info_offset) + B == 0x268);
};

impl SetupHeader {
    /// An all-zero header.
    pub const ZERO: SetupHeader = SetupHeader {
        setup_sects: 0,
        root_flags: 0,
        syssize: 0,
        ram_size: 0,
        vid_mode: 0,
        root_dev: 0,
        boot_flag: 0,
        jump: 0,
        header: 0,
        version: 0,
        realmode_swtch: 0,
        start_sys_seg: 0,
        kernel_version: 0,
        type_of_loader: 0,
        loadflags: 0,
        setup_move_size: 0,
        code32_start: 0,
        ramdisk_image: 0,
        ramdisk_size: 0,
        bootsect_kludge: 0,
        heap_end_ptr: 0,
        ext_loader_ver: 0,
        ext_loader_type: 0,
        cmd_line_ptr: 0,
        initrd_addr_max: 0,
        kernel_alignment: 0,
        relocatable_kernel: 0,
        min_alignment: 0,
        xloadflags: 0,
        cmdline_size: 0,
        hardware_subarch: 0,
        hardware_subarch_data: 0,
        payload_offset: 0,
        payload_length: 0,
        setup_data: 0,
        pref_address: 0,
        init_size: 0,
        handover_offset: 0,
        kernel_info_offset: 0,
    };

    codec!(SetupHeader {
        setup_sects,
        root_flags,
        syssize,
        ram_size,
        vid_mode,
        root_dev,
        boot_flag,
        jump,
        header,
        version,
        realmode_swtch,
        start_sys_seg,
        kernel_version,
        type_of_loader,
        loadflags,
        setup_move_size,
        code32_start,
        ramdisk_image,
        ramdisk_size,
        bootsect_kludge,
        heap_end_ptr,
        ext_loader_ver,
        ext_loader_type,
        cmd_line_ptr,
        initrd_addr_max,
        kernel_alignment,
        relocatable_kernel,
        min_alignment,
        xloadflags,
        cmdline_size,
        hardware_subarch,
        hardware_subarch_data,
        payload_offset,
        payload_length,
        setup_data,
        pref_address,
        init_size,
        handover_offset,
        kernel_info_offset,
    });

    /// The header as bytes (what sits at 0x1f1..0x26c).
    pub fn encode(&self) -> [u8; SETUP_HEADER_SIZE] {
        let mut out = [0u8; SETUP_HEADER_SIZE];
        self.put_fields(&mut out);
        out
    }

    /// A header from its bytes. Bytes past the end of an older kernel's header must be
    /// zero in `bytes` (see [`crate::bzimage::BzImage::parse`]).
    pub fn decode(bytes: &[u8; SETUP_HEADER_SIZE]) -> SetupHeader {
        let mut h = SetupHeader::ZERO;
        h.get_fields(bytes);
        h
    }
}

/// One entry of the zero page's E820 table (`struct boot_e820_entry`).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootE820Entry {
    /// First byte.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type (see [`crate::e820::E820Type`]).
    pub kind: u32,
}

const _: () = {
    assert!(size_of::<BootE820Entry>() == 20);
    assert!(offset_of!(BootE820Entry, addr) == 0);
    assert!(offset_of!(BootE820Entry, size) == 8);
    assert!(offset_of!(BootE820Entry, kind) == 16);
};

impl BootE820Entry {
    const ZERO: BootE820Entry = BootE820Entry {
        addr: 0,
        size: 0,
        kind: 0,
    };
}

/// `struct boot_params`, the zero page. Fields the loader never sets are kept as padding
/// named by their offset.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParams {
    /// 0x000: screen_info, apm_bios_info, tboot_addr, ist_info.
    pub _rsvd_0x000: [u8; 0x70],
    /// 0x070: physical address of the ACPI RSDP (0: let the kernel search).
    pub acpi_rsdp_addr: u64,
    /// 0x078: hd0/hd1 info, sys_desc_table, olpc_ofw_header.
    pub _rsvd_0x078: [u8; 0x48],
    /// 0x0c0: initrd address, high 32 bits.
    pub ext_ramdisk_image: u32,
    /// 0x0c4: initrd size, high 32 bits.
    pub ext_ramdisk_size: u32,
    /// 0x0c8: command line address, high 32 bits.
    pub ext_cmd_line_ptr: u32,
    /// 0x0cc: padding, cc_blob_address, edid_info, efi_info, alt_mem_k, scratch.
    pub _rsvd_0x0cc: [u8; 0x11c],
    /// 0x1e8: number of valid entries in `e820_table`.
    pub e820_entries: u8,
    /// 0x1e9: eddbuf_entries, edd_mbr_sig_buf_entries, kbd_status, secure_boot, padding.
    pub _rsvd_0x1e9: [u8; 6],
    /// 0x1ef: must stay zero: a non-zero sentinel tells the kernel that the loader copied
    /// more than the setup header and that parts of the zero page are garbage.
    pub sentinel: u8,
    /// 0x1f0: padding.
    pub _rsvd_0x1f0: u8,
    /// 0x1f1: the setup header.
    pub hdr: SetupHeader,
    /// 0x26c: padding, edd_mbr_sig_buffer.
    pub _rsvd_0x26c: [u8; 0x64],
    /// 0x2d0: the E820 memory map.
    pub e820_table: [BootE820Entry; E820_MAX_ENTRIES],
    /// 0xcd0: padding, eddbuf.
    pub _rsvd_0xcd0: [u8; 0x330],
}

const _: () = {
    assert!(size_of::<BootParams>() == BOOT_PARAMS_SIZE);
    assert!(offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
    assert!(offset_of!(BootParams, ext_ramdisk_image) == 0x0c0);
    assert!(offset_of!(BootParams, ext_ramdisk_size) == 0x0c4);
    assert!(offset_of!(BootParams, ext_cmd_line_ptr) == 0x0c8);
    assert!(offset_of!(BootParams, e820_entries) == 0x1e8);
    assert!(offset_of!(BootParams, sentinel) == 0x1ef);
    assert!(offset_of!(BootParams, hdr) == 0x1f1);
    assert!(offset_of!(BootParams, e820_table) == 0x2d0);
    assert!(offset_of!(BootParams, _rsvd_0xcd0) == 0xcd0);
};

impl BootParams {
    /// An all-zero zero page.
    pub const ZERO: BootParams = BootParams {
        _rsvd_0x000: [0; 0x70],
        acpi_rsdp_addr: 0,
        _rsvd_0x078: [0; 0x48],
        ext_ramdisk_image: 0,
        ext_ramdisk_size: 0,
        ext_cmd_line_ptr: 0,
        _rsvd_0x0cc: [0; 0x11c],
        e820_entries: 0,
        _rsvd_0x1e9: [0; 6],
        sentinel: 0,
        _rsvd_0x1f0: 0,
        hdr: SetupHeader::ZERO,
        _rsvd_0x26c: [0; 0x64],
        e820_table: [BootE820Entry::ZERO; E820_MAX_ENTRIES],
        _rsvd_0xcd0: [0; 0x330],
    };

    codec!(BootParams {
        _rsvd_0x000,
        acpi_rsdp_addr,
        _rsvd_0x078,
        ext_ramdisk_image,
        ext_ramdisk_size,
        ext_cmd_line_ptr,
        _rsvd_0x0cc,
        e820_entries,
        _rsvd_0x1e9,
        sentinel,
        _rsvd_0x1f0,
        _rsvd_0x26c,
        _rsvd_0xcd0,
    });

    /// The zero page as the 4096 bytes the OS reads.
    pub fn encode(&self) -> [u8; BOOT_PARAMS_SIZE] {
        let mut out = [0u8; BOOT_PARAMS_SIZE];
        self.put_fields(&mut out);
        let hdr = { self.hdr }.encode();
        let at = offset_of!(BootParams, hdr);
        out[at..at + SETUP_HEADER_SIZE].copy_from_slice(&hdr);
        let table = { self.e820_table };
        let base = offset_of!(BootParams, e820_table);
        for (i, e) in table.iter().enumerate() {
            let at = base + i * size_of::<BootE820Entry>();
            put(&mut out, at + offset_of!(BootE820Entry, addr), e.addr);
            put(&mut out, at + offset_of!(BootE820Entry, size), e.size);
            put(&mut out, at + offset_of!(BootE820Entry, kind), e.kind);
        }
        out
    }

    /// A zero page from its bytes (what an OS, or a test, reads back).
    pub fn decode(bytes: &[u8; BOOT_PARAMS_SIZE]) -> BootParams {
        let mut p = BootParams::ZERO;
        p.get_fields(bytes);
        let at = offset_of!(BootParams, hdr);
        p.hdr = SetupHeader::decode(&get::<[u8; SETUP_HEADER_SIZE]>(bytes, at));
        let base = offset_of!(BootParams, e820_table);
        let mut table = [BootE820Entry::ZERO; E820_MAX_ENTRIES];
        for (i, e) in table.iter_mut().enumerate() {
            let at = base + i * size_of::<BootE820Entry>();
            *e = BootE820Entry {
                addr: get(bytes, at + offset_of!(BootE820Entry, addr)),
                size: get(bytes, at + offset_of!(BootE820Entry, size)),
                kind: get(bytes, at + offset_of!(BootE820Entry, kind)),
            };
        }
        p.e820_table = table;
        p
    }

    /// The valid E820 entries (`e820_entries` capped at the table's size).
    pub fn e820(&self) -> impl Iterator<Item = BootE820Entry> {
        let table = self.e820_table;
        let n = usize::from(self.e820_entries).min(E820_MAX_ENTRIES);
        table.into_iter().take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_at_the_offsets_the_kernel_reads() {
        let mut p = BootParams::ZERO;
        p.hdr.type_of_loader = 0xff;
        p.hdr.cmd_line_ptr = 0x1234_5678;
        p.hdr.ramdisk_image = 0x0a0b_0c0d;
        p.hdr.ramdisk_size = 0x0102_0304;
        p.hdr.header = HEADER_MAGIC;
        p.hdr.pref_address = 0x1122_3344_5566_7788;
        p.ext_ramdisk_image = 0xdead_beef;
        p.ext_cmd_line_ptr = 0x77;
        p.acpi_rsdp_addr = 0xe_0000;
        p.e820_entries = 2;
        p.e820_table[1] = BootE820Entry {
            addr: 0x10_0000,
            size: 0x20_0000,
            kind: 2,
        };
        let b = p.encode();
        assert_eq!(b[0x210], 0xff);
        assert_eq!(&b[0x228..0x22c], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&b[0x218..0x21c], &0x0a0b_0c0du32.to_le_bytes());
        assert_eq!(&b[0x21c..0x220], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[0x202..0x206], b"HdrS");
        assert_eq!(&b[0x258..0x260], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[0x0c0..0x0c4], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[0x0c8..0x0cc], &0x77u32.to_le_bytes());
        assert_eq!(&b[0x070..0x078], &0xe_0000u64.to_le_bytes());
        assert_eq!(b[0x1e8], 2);
        let e1 = 0x2d0 + 20;
        assert_eq!(&b[e1..e1 + 8], &0x10_0000u64.to_le_bytes());
        assert_eq!(&b[e1 + 8..e1 + 16], &0x20_0000u64.to_le_bytes());
        assert_eq!(&b[e1 + 16..e1 + 20], &2u32.to_le_bytes());
        assert_eq!(b[0x1ef], 0, "sentinel");
        assert_eq!(BootParams::decode(&b), p);
    }

    #[test]
    fn every_byte_round_trips() {
        // A pattern in every byte, padding included, survives decode + encode.
        let mut bytes = [0u8; BOOT_PARAMS_SIZE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        assert_eq!(BootParams::decode(&bytes).encode(), bytes);
        let mut hdr = [0u8; SETUP_HEADER_SIZE];
        for (i, b) in hdr.iter_mut().enumerate() {
            *b = (i * 13 + 1) as u8;
        }
        assert_eq!(SetupHeader::decode(&hdr).encode(), hdr);
    }

    #[test]
    fn e820_iterator_stops_at_the_count_and_the_table_end() {
        let mut p = BootParams::ZERO;
        p.e820_entries = 3;
        assert_eq!(p.e820().count(), 3);
        p.e820_entries = 200;
        assert_eq!(p.e820().count(), E820_MAX_ENTRIES);
    }
}
