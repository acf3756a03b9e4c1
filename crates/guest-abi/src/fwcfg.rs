//! fw_cfg names and keys, QEMU compatible (`docs/specs/fw_cfg.rst` in QEMU).

/// Selector port (16-bit writes).
pub const PORT_SELECTOR: u16 = 0x510;
/// Data port (8-bit reads).
pub const PORT_DATA: u16 = 0x511;
/// DMA address port: high 32 bits at +0, low 32 bits at +4 (writing the low half starts
/// the transfer); values are big-endian.
pub const PORT_DMA: u16 = 0x514;

/// Key of the "QEMU" signature.
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key of the feature bitmap.
pub const KEY_ID: u16 = 0x0001;
/// Key of the RAM size (u64 LE).
pub const KEY_RAM_SIZE: u16 = 0x0003;
/// Key of the number of boot CPUs (u16 LE).
pub const KEY_NB_CPUS: u16 = 0x0005;
/// Key of the maximum number of CPUs (u16 LE).
pub const KEY_MAX_CPUS: u16 = 0x000f;
/// Key of the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;

// Direct boot (QEMU `-kernel/-initrd/-append`, `hw/i386/x86-common.c` `x86_load_linux`;
// OVMF's `QemuKernelLoaderFsDxe` reads the same items). Sizes and addresses are u32 LE.
// A bzImage is split as `os_loader::bzimage::fw_cfg_setup_len` says: its setup sectors
// in the setup item, the protected-mode kernel in the kernel item, both unmodified; any
// other file (an ELF OS) goes whole in the kernel item with an empty setup item.

/// Key of the protected-mode kernel's load address QEMU suggests (the firmware places
/// the kernel itself and ignores it).
pub const KEY_KERNEL_ADDR: u16 = 0x0007;
/// Key of the kernel item's size (u32 LE; 0 or absent: no kernel).
pub const KEY_KERNEL_SIZE: u16 = 0x0008;
/// Key of the initrd's suggested address (ignored, as [`KEY_KERNEL_ADDR`]).
pub const KEY_INITRD_ADDR: u16 = 0x000a;
/// Key of the initrd's size (u32 LE; 0 or absent: none).
pub const KEY_INITRD_SIZE: u16 = 0x000b;
/// Key of the kernel item: a bzImage's protected-mode kernel, or a whole ELF file.
pub const KEY_KERNEL_DATA: u16 = 0x0011;
/// Key of the initrd.
pub const KEY_INITRD_DATA: u16 = 0x0012;
/// Key of the command line's suggested address (ignored, as [`KEY_KERNEL_ADDR`]).
pub const KEY_CMDLINE_ADDR: u16 = 0x0013;
/// Key of the command line's size, its terminating NUL included (u32 LE).
pub const KEY_CMDLINE_SIZE: u16 = 0x0014;
/// Key of the command line, NUL-terminated.
pub const KEY_CMDLINE_DATA: u16 = 0x0015;
/// Key of the setup's suggested address (ignored, as [`KEY_KERNEL_ADDR`]).
pub const KEY_SETUP_ADDR: u16 = 0x0016;
/// Key of the setup item's size (u32 LE).
pub const KEY_SETUP_SIZE: u16 = 0x0017;
/// Key of the setup item: a bzImage's setup sectors, unmodified.
pub const KEY_SETUP_DATA: u16 = 0x0018;
/// The whole kernel file, without QEMU's setup header patches (QEMU 9.2+; for firmware
/// that verifies the file as it was signed). sevmirror passes it too.
pub const FILE_BOOT_KERNEL: &str = "etc/boot/kernel";
/// First key given to named files.
pub const KEY_FILE_FIRST: u16 = 0x0020;

/// The signature read at [`KEY_SIGNATURE`].
pub const SIGNATURE: [u8; 4] = *b"QEMU";
/// Feature bit: the traditional interface.
pub const ID_TRADITIONAL: u32 = 1 << 0;
/// Feature bit: the DMA interface.
pub const ID_DMA: u32 = 1 << 1;

/// DMA control: error (set by the device).
pub const DMA_CTL_ERROR: u32 = 0x01;
/// DMA control: read from the item into guest memory.
pub const DMA_CTL_READ: u32 = 0x02;
/// DMA control: skip bytes of the item.
pub const DMA_CTL_SKIP: u32 = 0x04;
/// DMA control: select the key in the upper 16 bits first.
pub const DMA_CTL_SELECT: u32 = 0x08;
/// DMA control: write guest memory into the item.
pub const DMA_CTL_WRITE: u32 = 0x10;
/// Size of a `FWCfgDmaAccess` descriptor: be32 control, be32 length, be64 address.
pub const DMA_ACCESS_SIZE: usize = 16;

/// Length of a name in the file directory, NUL included.
pub const FILE_NAME_LEN: usize = 56;
/// Size of one file directory entry: be32 size, be16 select, be16 reserved, name.
pub const FILE_DIR_ENTRY_SIZE: usize = 64;

/// QEMU's E820 table: packed entries of u64 address, u64 length, u32 type (LE).
pub const FILE_E820: &str = "etc/e820";
/// Size of one `etc/e820` entry.
pub const E820_ENTRY_SIZE: usize = 20;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Name of the built-in workload to run (text, e.g. `selftest`).
pub const FILE_WORKLOAD: &str = "opt/sevmirror/workload";
/// Pages per second the `dirty` workload writes (decimal text; 0 = as fast as it can).
pub const FILE_DIRTY_RATE: &str = "opt/sevmirror/dirty-rate";
/// Present (any contents) on a migration target: the firmware prepares its helper and
/// parks instead of running a workload; the guest it will run arrives by migration.
pub const FILE_INCOMING: &str = "opt/sevmirror/incoming";
/// TSC frequency in kHz (decimal text), for the firmware's timings.
pub const FILE_TSC_KHZ: &str = "opt/sevmirror/tsc-khz";
/// Present (any contents): the firmware loads the kernel it was given but, instead of
/// jumping to it, reports the hand-off (entry point and zero page) on the console and
/// stops with `exit_code::HANDOFF_STOPPED`, leaving guest memory for the host to inspect.
/// For tests of the loader: Linux cannot run on the development machines.
pub const FILE_STOP_AT_HANDOFF: &str = "opt/sevmirror/stop-at-handoff";
/// Present (any contents): a test of the helper's self-check. Once the migration helper
/// has served its first request, the guest writes into the helper's region (what an OS
/// that ignores its memory map would do), then runs its workload as usual.
pub const FILE_SCRIBBLE: &str = "opt/sevmirror/scribble";
