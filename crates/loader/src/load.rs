//! Planning and performing a load: where the kernel, the zero page, the command line and
//! the initrd go, what the zero page says, and the hand-off.
//!
//! Both formats get a zero page ([`BootParams`]) with the E820 map, the command line and
//! the initrd: Linux because the boot protocol says so, our own ELF OS because one format
//! for the map is simpler than two.
//!
//! # Hand-off protocols
//!
//! **Linux bzImage** (boot.rst "64-bit Boot Protocol"): the protected-mode kernel at its
//! load address (`code32_start`), entered at load address + 0x200 in 64-bit mode at CPL0,
//! paging on with the kernel, zero page, command line and initrd identity-mapped,
//! interrupts off, a GDT with a flat 64-bit code descriptor at `__BOOT_CS` (0x10) and a
//! flat data descriptor at `__BOOT_DS` (0x18), CS = 0x10, DS = ES = SS = 0x18, and `RSI` =
//! the zero page's address. The setup header in the zero page is the file's, with the
//! loader's fields filled in (`type_of_loader` 0xff, `code32_start`, `cmd_line_ptr`,
//! `ramdisk_image`/`ramdisk_size`), `setup_data` and `hardware_subarch` cleared.
//!
//! **ELF (sevmirror's own OS), version [`ELF_HANDOFF_VERSION`]**: the same register state
//! and the same kind of zero page, so one OS entry path serves both: every `PT_LOAD`
//! segment at its `p_paddr` (`.bss` zeroed), entered at the physical entry point (the
//! `e_entry` translated through the segment that holds it) in 64-bit mode at CPL0,
//! interrupts off, CS = 0x10, DS = ES = SS = 0x18, `RSI` = the zero page. The zero page
//! carries `hdr.header` = "HdrS" and `hdr.version` = [`ELF_HANDOFF_VERSION`] (so the OS
//! can tell it from a stray page), the E820 map, `cmd_line_ptr` (+ `ext_cmd_line_ptr`)
//! and `cmdline_size` = [`MAX_ELF_CMDLINE`], `ramdisk_image`/`ramdisk_size` (+ `ext_*`),
//! `type_of_loader` 0xff; every other field is zero. The firmware's side of both (page
//! tables, stack, what stays mapped) is documented where it jumps (docs/architecture.md,
//! "Direct boot").
//!
//! **APs of an ELF kernel**: the kernel starts them with INIT-SIPI-SIPI at vector
//! `guest_abi::layout::AP_TRAMPOLINE >> 12` (under SEV-ES any vector: an AP starts at its
//! measured reset VMSA, the firmware's reset-block entry). Each comes up through the
//! firmware's AP path and enters the kernel at the same entry point in the same state as
//! the boot CPU, `RSI` = the same zero page; the kernel tells them apart itself (our OS:
//! a flag it sets once its tables are built). Under SEV-ES the GHCB MSR then holds the
//! firmware's GHCB of that CPU. And on an SEV-ES migration target the firmware hands a
//! CPU whose saved-state slot the kernel filled to the kernel's `KERNEL_RESUME` entry
//! (guest-abi `layout::vcpu_save`).
//!
//! Placement order: the kernel (Linux: the lowest `kernel_alignment`-aligned address at
//! or above `pref_address` with `init_size` bytes of usable RAM; ELF: where its segments
//! say), then the zero page and the command line as low as they fit, then the initrd as
//! high as it fits below `initrd_addr_max`, the way QEMU's and GRUB's loaders place it.
//! A caller that still needs some usable RAM while it loads (the firmware keeps its copy
//! of the kernel file there) names it as `avoid` to [`prepare`]: nothing is placed there,
//! and it stays RAM in the E820 map.

use guest_abi::memmap::MemoryMap;

use crate::boot_params::{BootParams, HEADER_MAGIC, LOADER_TYPE_UNDEFINED};
use crate::bzimage::{BzError, BzHeader, BzImage, KernelPlacement, ENTRY64_OFFSET};
use crate::e820::{E820Error, E820Map};
use crate::elf::{ElfError, ElfImage};
use crate::place::{self, ClaimError, Claims, Request};
use crate::{GuestWriter, Span, WriteError};

/// Longest command line passed to an ELF kernel (a Linux kernel names its own maximum).
pub const MAX_ELF_CMDLINE: usize = 4095;
/// Version of the ELF hand-off protocol (the zero page's `hdr.version` for an ELF kernel).
pub const ELF_HANDOFF_VERSION: u16 = 1;
/// Everything the zero page points at stays below 4 GiB (its pointers are 32-bit unless
/// the kernel sets `XLF_CAN_BE_LOADED_ABOVE_4G`; staying low works for every kernel).
const LOW_LIMIT: u64 = 1 << 32;
const PAGE: u64 = 0x1000;

/// The guest the loader places things in.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'m> {
    /// The firmware's memory map: RAM with its reservations carved out.
    pub map: &'m MemoryMap,
    /// MMIO ranges outside RAM that the E820 map reports reserved (the services page).
    pub mmio: &'m [Span],
}

/// The kind of kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Linux bzImage.
    BzImage,
    /// An ELF64 executable (our own guest OS).
    Elf,
}

/// Why a kernel was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Neither ELF nor bzImage.
    #[error("the kernel is neither an ELF executable nor a Linux bzImage")]
    NotAKernel,
    /// A bad bzImage.
    #[error("bzImage: {0}")]
    BzImage(#[from] BzError),
    /// A bad ELF file.
    #[error("ELF kernel: {0}")]
    Elf(#[from] ElfError),
    /// The command line is longer than the kernel accepts.
    #[error("command line of {len} bytes is longer than the kernel's maximum of {max}")]
    CmdlineTooLong {
        /// Its length (without a terminator).
        len: usize,
        /// The maximum (`cmdline_size`).
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("command line contains a NUL byte at offset {at}")]
    CmdlineNul {
        /// Offset of the NUL.
        at: usize,
    },
    /// The initrd does not fit below the kernel's limit.
    #[error("initrd of {size:#x} bytes does not fit in usable RAM below {limit:#x}")]
    InitrdTooBig {
        /// Its size.
        size: u64,
        /// The highest end address allowed.
        limit: u64,
    },
    /// No usable RAM where the kernel may go.
    #[error(
        "no usable RAM for the kernel: {size:#x} bytes at or above {min:#x}, aligned to {align:#x}"
    )]
    KernelDoesNotFit {
        /// Bytes needed (`init_size`).
        size: u64,
        /// Lowest address allowed (`pref_address`).
        min: u64,
        /// Alignment (`kernel_alignment`; for a fixed kernel, the address must equal `min`).
        align: u64,
    },
    /// An ELF segment is not inside usable RAM (it hits a reserved region or no RAM).
    #[error(
        "ELF segment {index} at {base:#x}+{size:#x} is not in usable RAM (reserved or absent)"
    )]
    SegmentNotInRam {
        /// Program header index.
        index: usize,
        /// Its physical address.
        base: u64,
        /// Its memory size.
        size: u64,
    },
    /// An ELF segment overlaps RAM the caller still uses while it loads (the firmware's
    /// copy of the kernel file).
    #[error("ELF segment {index} at {base:#x}+{size:#x} overlaps the loader's staging copy of the kernel at {staging:#x?}; link the kernel lower")]
    SegmentInStaging {
        /// Program header index.
        index: usize,
        /// Its physical address.
        base: u64,
        /// Its memory size.
        size: u64,
        /// The range it overlaps.
        staging: Span,
    },
    /// No room for the zero page or the command line.
    #[error("no usable RAM below 4 GiB for the {what}")]
    NoRoom {
        /// What could not be placed.
        what: &'static str,
    },
    /// Two placements collided.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The E820 map could not be built.
    #[error(transparent)]
    E820(#[from] E820Error),
    /// Writing guest memory failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Tells the two formats apart by their magic.
pub fn detect(image: &[u8]) -> Result<KernelFormat, LoadError> {
    if crate::elf::is_elf(image) {
        return Ok(KernelFormat::Elf);
    }
    match BzHeader::parse(image) {
        Err(BzError::NotBzImage | BzError::TooShort { .. }) => Err(LoadError::NotAKernel),
        // A bzImage, maybe a bad one: `load_linux` reports what is wrong with it.
        _ => Ok(KernelFormat::BzImage),
    }
}

/// The longest command line (without its NUL) `image` accepts: a bzImage's
/// `cmdline_size` (its header checked), [`MAX_ELF_CMDLINE`] for an ELF file. Lets a caller
/// refuse an over-long command line before reading it.
pub fn cmdline_max(image: &[u8]) -> Result<usize, LoadError> {
    match detect(image)? {
        KernelFormat::BzImage => {
            let hdr = BzHeader::parse(image)?;
            Ok(usize::try_from(hdr.header().cmdline_size).unwrap_or(usize::MAX))
        }
        KernelFormat::Elf => Ok(MAX_ELF_CMDLINE),
    }
}

/// Where everything of a load goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The kernel: Linux's load address and `init_size`; ELF's lowest to highest segment byte.
    pub kernel: Span,
    /// The physical 64-bit entry point.
    pub entry: u64,
    /// The zero page (4 KiB).
    pub boot_params: Span,
    /// The command line with its NUL.
    pub cmdline: Span,
    /// The initrd, if there is one.
    pub initrd: Option<Span>,
}

/// What the firmware needs to start the kernel, and what it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The format loaded.
    pub format: KernelFormat,
    /// Where everything went.
    pub plan: Plan,
    /// The zero page as written (its address goes in `RSI`).
    pub params: BootParams,
}

fn check_cmdline(cmdline: &[u8], max: usize) -> Result<(), LoadError> {
    if let Some(at) = cmdline.iter().position(|&b| b == 0) {
        return Err(LoadError::CmdlineNul { at });
    }
    if cmdline.len() > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Places the zero page, the command line and the initrd around what `claims` holds.
fn place_common(
    map: &MemoryMap,
    claims: &mut Claims,
    cmdline_len: usize,
    initrd_len: u64,
    initrd_limit: u64,
) -> Result<(Span, Span, Option<Span>), LoadError> {
    let low = |size, align| Request {
        size,
        align,
        min: 0,
        limit: LOW_LIMIT,
    };
    let boot_params = place::lowest(map, claims, &low(PAGE, PAGE))
        .ok_or(LoadError::NoRoom { what: "zero page" })?;
    claims.claim(boot_params)?;
    let cmdline_size = cmdline_len as u64 + 1;
    let cmdline = place::lowest(map, claims, &low(cmdline_size, 16)).ok_or(LoadError::NoRoom {
        what: "command line",
    })?;
    claims.claim(cmdline)?;
    let initrd = if initrd_len == 0 {
        None
    } else {
        let limit = initrd_limit.min(LOW_LIMIT);
        let too_big = LoadError::InitrdTooBig {
            size: initrd_len,
            limit,
        };
        let span = place::highest(
            map,
            claims,
            &Request {
                size: initrd_len,
                align: PAGE,
                min: 0,
                limit,
            },
        )
        .ok_or(too_big)?;
        claims.claim(span)?;
        Some(span)
    };
    Ok((boot_params, cmdline, initrd))
}

/// Low and high halves of an address or size for the 32-bit zero-page fields.
const fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// Fills the fields every zero page gets: E820 map, command line, initrd.
fn fill_common(p: &mut BootParams, plan: &Plan, layout: &Layout<'_>) -> Result<(), LoadError> {
    let (table, count) = E820Map::build(layout.map, layout.mmio)?.table();
    p.e820_table = table;
    p.e820_entries = count;
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    let (lo, hi) = split(plan.cmdline.base);
    p.hdr.cmd_line_ptr = lo;
    p.ext_cmd_line_ptr = hi;
    let initrd = plan.initrd.unwrap_or(Span { base: 0, size: 0 });
    let (lo, hi) = split(initrd.base);
    p.hdr.ramdisk_image = lo;
    p.ext_ramdisk_image = hi;
    let (lo, hi) = split(initrd.size);
    p.hdr.ramdisk_size = lo;
    p.ext_ramdisk_size = hi;
    Ok(())
}

/// Decides where a Linux kernel of `kernel_len` protected-mode bytes, an initrd of
/// `initrd_len` bytes and a command line of `cmdline_len` bytes (without NUL) go.
pub fn plan_linux(
    hdr: &BzHeader,
    kernel_len: u64,
    initrd_len: u64,
    cmdline_len: usize,
    layout: &Layout<'_>,
) -> Result<Plan, LoadError> {
    plan_linux_avoiding(hdr, kernel_len, initrd_len, cmdline_len, layout, &[])
}

/// Claims that start out holding `avoid`.
fn claims_avoiding(avoid: &[Span]) -> Result<Claims, LoadError> {
    let mut claims = Claims::new();
    for &span in avoid {
        claims.claim(span)?;
    }
    Ok(claims)
}

fn plan_linux_avoiding(
    hdr: &BzHeader,
    kernel_len: u64,
    initrd_len: u64,
    cmdline_len: usize,
    layout: &Layout<'_>,
    avoid: &[Span],
) -> Result<Plan, LoadError> {
    let max = usize::try_from(hdr.header().cmdline_size).unwrap_or(usize::MAX);
    if cmdline_len > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline_len,
            max,
        });
    }
    let size = place::align_up(hdr.load_size(kernel_len), PAGE).unwrap_or(u64::MAX);
    let mut claims = claims_avoiding(avoid)?;
    let kernel = match hdr.placement() {
        KernelPlacement::Relocatable { min, align } => place::lowest(
            layout.map,
            &claims,
            &Request {
                size,
                align,
                min,
                limit: LOW_LIMIT,
            },
        )
        .ok_or(LoadError::KernelDoesNotFit { size, min, align })?,
        KernelPlacement::Fixed { at } => Span::new(at, size)
            .filter(|s| {
                s.end() <= LOW_LIMIT
                    && place::in_usable_ram(layout.map, s)
                    && claims.overlapping(s).is_none()
            })
            .ok_or(LoadError::KernelDoesNotFit {
                size,
                min: at,
                align: 0,
            })?,
    };
    claims.claim(kernel)?;
    let initrd_limit = u64::from(hdr.header().initrd_addr_max).saturating_add(1);
    let (boot_params, cmdline, initrd) = place_common(
        layout.map,
        &mut claims,
        cmdline_len,
        initrd_len,
        initrd_limit,
    )?;
    Ok(Plan {
        kernel,
        entry: kernel.base + ENTRY64_OFFSET,
        boot_params,
        cmdline,
        initrd,
    })
}

/// The zero page for a Linux kernel placed by `plan`.
pub fn linux_boot_params(
    hdr: &BzHeader,
    plan: &Plan,
    layout: &Layout<'_>,
) -> Result<BootParams, LoadError> {
    let mut p = BootParams::ZERO;
    // boot.rst: copy the kernel's setup header into a zeroed zero page, then fill in the
    // loader's fields.
    p.hdr = hdr.header();
    fill_common(&mut p, plan, layout)?;
    // The kernel reads `code32_start` as its load address (boot.rst); below 4 GiB by plan.
    p.hdr.code32_start = plan.kernel.base as u32;
    // No setup_data list and a plain PC: whatever the file had there is not ours to pass.
    p.hdr.setup_data = 0;
    p.hdr.hardware_subarch = 0;
    p.hdr.hardware_subarch_data = 0;
    Ok(p)
}

/// The zero page for an ELF kernel placed by `plan` (the ELF hand-off protocol above).
pub fn elf_boot_params(plan: &Plan, layout: &Layout<'_>) -> Result<BootParams, LoadError> {
    let mut p = BootParams::ZERO;
    fill_common(&mut p, plan, layout)?;
    p.hdr.header = HEADER_MAGIC;
    p.hdr.version = ELF_HANDOFF_VERSION;
    p.hdr.cmdline_size = MAX_ELF_CMDLINE as u32;
    Ok(p)
}

/// A parsed kernel of either format.
#[derive(Clone, Copy, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "no_std without alloc: nothing to box into, and one lives at a time"
)]
enum Image<'k> {
    Linux(BzImage<'k>),
    Elf(ElfImage<'k>),
}

/// A load planned and checked but not yet written: what [`prepare`] returns. The caller
/// may put the initrd at [`Prepared::plan`]'s `initrd` itself (the firmware reads it from
/// fw_cfg straight to its place), then [`Prepared::write`] writes the rest.
#[derive(Clone, Copy, Debug)]
pub struct Prepared<'k, 'c> {
    image: Image<'k>,
    cmdline: &'c [u8],
    plan: Plan,
    params: BootParams,
}

/// Parses `image` (either format, by its magic), checks the command line (`cmdline`,
/// without NUL) against the kernel's maximum, and plans the load of it and of an initrd of
/// `initrd_len` bytes, placing nothing in `avoid`. Writes nothing.
pub fn prepare<'k, 'c>(
    image: &'k [u8],
    initrd_len: u64,
    cmdline: &'c [u8],
    layout: &Layout<'_>,
    avoid: &[Span],
) -> Result<Prepared<'k, 'c>, LoadError> {
    let (image, plan, params) = match detect(image)? {
        KernelFormat::BzImage => {
            let bz = BzImage::parse(image)?;
            let hdr = bz.header();
            check_cmdline(
                cmdline,
                usize::try_from(hdr.header().cmdline_size).unwrap_or(usize::MAX),
            )?;
            let plan = plan_linux_avoiding(
                hdr,
                bz.kernel().len() as u64,
                initrd_len,
                cmdline.len(),
                layout,
                avoid,
            )?;
            let params = linux_boot_params(hdr, &plan, layout)?;
            (Image::Linux(bz), plan, params)
        }
        KernelFormat::Elf => {
            let elf = ElfImage::parse(image)?;
            check_cmdline(cmdline, MAX_ELF_CMDLINE)?;
            let plan = plan_elf_avoiding(&elf, initrd_len, cmdline.len(), layout, avoid)?;
            let params = elf_boot_params(&plan, layout)?;
            (Image::Elf(elf), plan, params)
        }
    };
    Ok(Prepared {
        image,
        cmdline,
        plan,
        params,
    })
}

impl Prepared<'_, '_> {
    /// The kernel's format.
    pub fn format(&self) -> KernelFormat {
        match self.image {
            Image::Linux(_) => KernelFormat::BzImage,
            Image::Elf(_) => KernelFormat::Elf,
        }
    }

    /// Where everything goes.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The zero page that [`Prepared::write`] writes.
    pub fn params(&self) -> &BootParams {
        &self.params
    }

    /// Writes the zero page, the command line (with its NUL) and the kernel (a bzImage's
    /// protected-mode part at its load address, or every ELF segment with its `.bss`
    /// zeroed), everything but the initrd.
    pub fn write(self, mem: &mut impl GuestWriter) -> Result<Handoff, LoadError> {
        let plan = self.plan;
        mem.write(plan.boot_params.base, &self.params.encode())?;
        mem.write(plan.cmdline.base, self.cmdline)?;
        mem.write(plan.cmdline.base + self.cmdline.len() as u64, &[0])?;
        match self.image {
            Image::Linux(bz) => mem.write(plan.kernel.base, bz.kernel())?,
            Image::Elf(elf) => {
                for seg in elf.segments() {
                    let bytes = elf.file_bytes(seg);
                    mem.write(seg.paddr, bytes)?;
                    let tail = seg.mem_size - bytes.len() as u64;
                    if tail > 0 {
                        mem.zero(seg.paddr + bytes.len() as u64, tail)?;
                    }
                }
            }
        }
        Ok(Handoff {
            format: self.format(),
            plan,
            params: self.params,
        })
    }

    /// Writes the initrd where the plan put it, then everything else ([`Prepared::write`]).
    fn write_all(self, initrd: &[u8], mem: &mut impl GuestWriter) -> Result<Handoff, LoadError> {
        if let Some(span) = self.plan.initrd {
            mem.write(span.base, initrd)?;
        }
        self.write(mem)
    }
}

/// Loads a Linux bzImage, its initrd (empty: none) and command line (without NUL).
pub fn load_linux(
    image: &BzImage<'_>,
    initrd: &[u8],
    cmdline: &[u8],
    layout: &Layout<'_>,
    mem: &mut impl GuestWriter,
) -> Result<Handoff, LoadError> {
    let hdr = image.header();
    check_cmdline(
        cmdline,
        usize::try_from(hdr.header().cmdline_size).unwrap_or(usize::MAX),
    )?;
    let plan = plan_linux(
        hdr,
        image.kernel().len() as u64,
        initrd.len() as u64,
        cmdline.len(),
        layout,
    )?;
    let params = linux_boot_params(hdr, &plan, layout)?;
    Prepared {
        image: Image::Linux(*image),
        cmdline,
        plan,
        params,
    }
    .write_all(initrd, mem)
}

/// Decides where an ELF kernel's zero page, command line and initrd go, after checking
/// that every segment lies in usable RAM.
pub fn plan_elf(
    elf: &ElfImage<'_>,
    initrd_len: u64,
    cmdline_len: usize,
    layout: &Layout<'_>,
) -> Result<Plan, LoadError> {
    plan_elf_avoiding(elf, initrd_len, cmdline_len, layout, &[])
}

fn plan_elf_avoiding(
    elf: &ElfImage<'_>,
    initrd_len: u64,
    cmdline_len: usize,
    layout: &Layout<'_>,
    avoid: &[Span],
) -> Result<Plan, LoadError> {
    if cmdline_len > MAX_ELF_CMDLINE {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline_len,
            max: MAX_ELF_CMDLINE,
        });
    }
    let mut claims = claims_avoiding(avoid)?;
    let (mut lo, mut hi) = (u64::MAX, 0);
    for seg in elf.segments() {
        let span = seg.span();
        if !place::in_usable_ram(layout.map, &span) {
            return Err(LoadError::SegmentNotInRam {
                index: seg.index,
                base: span.base,
                size: span.size,
            });
        }
        if let Some(&staging) = avoid.iter().find(|a| a.overlaps(&span)) {
            return Err(LoadError::SegmentInStaging {
                index: seg.index,
                base: span.base,
                size: span.size,
                staging,
            });
        }
        claims.claim(span)?;
        lo = lo.min(span.base);
        hi = hi.max(span.end());
    }
    let (boot_params, cmdline, initrd) =
        place_common(layout.map, &mut claims, cmdline_len, initrd_len, LOW_LIMIT)?;
    Ok(Plan {
        kernel: Span {
            base: lo,
            size: hi.saturating_sub(lo),
        },
        entry: elf.physical_entry()?,
        boot_params,
        cmdline,
        initrd,
    })
}

/// Loads an ELF kernel, its initrd (empty: none) and command line (without NUL).
pub fn load_elf(
    elf: &ElfImage<'_>,
    initrd: &[u8],
    cmdline: &[u8],
    layout: &Layout<'_>,
    mem: &mut impl GuestWriter,
) -> Result<Handoff, LoadError> {
    check_cmdline(cmdline, MAX_ELF_CMDLINE)?;
    let plan = plan_elf(elf, initrd.len() as u64, cmdline.len(), layout)?;
    let params = elf_boot_params(&plan, layout)?;
    Prepared {
        image: Image::Elf(*elf),
        cmdline,
        plan,
        params,
    }
    .write_all(initrd, mem)
}

/// Loads either format, by its magic.
pub fn load(
    image: &[u8],
    initrd: &[u8],
    cmdline: &[u8],
    layout: &Layout<'_>,
    mem: &mut impl GuestWriter,
) -> Result<Handoff, LoadError> {
    prepare(image, initrd.len() as u64, cmdline, layout, &[])?.write_all(initrd, mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_params::{BOOT_PARAMS_SIZE, HEADER_MAGIC};
    use crate::e820::E820Type;
    use crate::elf::{test_elf, PF_R, PF_W, PF_X};
    use crate::testmem::FakeRam;
    use guest_abi::{layout as fixed, memmap::firmware_reservations};
    use std::vec;

    const MIB: u64 = 1 << 20;
    const HELPER: u64 = 2 * MIB;

    fn map(ram: u64) -> MemoryMap {
        MemoryMap::build([(0, ram)], &firmware_reservations(HELPER)).unwrap()
    }

    fn services() -> [Span; 1] {
        [Span {
            base: fixed::SERVICES_GPA,
            size: fixed::PAGE_SIZE,
        }]
    }

    fn read_params(ram: &FakeRam, at: u64) -> BootParams {
        let mut b = [0u8; BOOT_PARAMS_SIZE];
        b.copy_from_slice(ram.read(at, BOOT_PARAMS_SIZE));
        BootParams::decode(&b)
    }

    fn reserved() -> [Span; 5] {
        firmware_reservations(HELPER).map(|(base, size, _)| Span { base, size })
    }

    #[test]
    fn linux_is_placed_clear_of_every_reservation_and_described() {
        let m = map(256 * MIB);
        let mmio = services();
        let layout = Layout {
            map: &m,
            mmio: &mmio,
        };
        let file = crate::bzimage::test_image();
        let bz = BzImage::parse(&file).unwrap();
        let initrd = vec![0x42u8; 3 * MIB as usize + 5];
        let mut ram = FakeRam::new(0, 256 * MIB as usize);
        let h = load_linux(&bz, &initrd, b"console=ttyS0 quiet", &layout, &mut ram).unwrap();
        let plan = h.plan;
        assert_eq!(h.format, KernelFormat::BzImage);

        // Kernel: aligned, at or above pref_address, past the helper region.
        assert_eq!(plan.kernel.base % 0x20_0000, 0);
        assert!(plan.kernel.base >= 0x100_0000);
        assert!(plan.kernel.base >= fixed::HELPER_REGION_BASE + HELPER);
        assert_eq!(plan.kernel.size, 0x40_0000);
        assert_eq!(plan.entry, plan.kernel.base + 0x200);
        assert_eq!(ram.read(plan.kernel.base, bz.kernel().len()), bz.kernel());

        // Initrd: as high as possible, page aligned, its bytes there.
        let initrd_span = plan.initrd.unwrap();
        assert_eq!(initrd_span.base % 0x1000, 0);
        assert_eq!(initrd_span.size, initrd.len() as u64);
        assert!(initrd_span.end() <= 256 * MIB && initrd_span.end() > 256 * MIB - 0x1000);
        assert_eq!(ram.read(initrd_span.base, initrd.len()), &initrd[..]);

        // Nothing overlaps anything, nor any reservation.
        let placed = [plan.kernel, plan.boot_params, plan.cmdline, initrd_span];
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                assert!(!a.overlaps(b), "{a:x?} {b:x?}");
            }
            for r in reserved() {
                assert!(!a.overlaps(&r), "{a:x?} overlaps reserved {r:x?}");
            }
        }
        // The loader wrote only where it placed things.
        for &(gpa, len) in &ram.writes {
            let w = Span::new(gpa, len).unwrap();
            assert!(placed.iter().any(|p| p.contains(&w)), "stray write {w:x?}");
        }

        // The zero page in guest memory is the one returned, field by field.
        let p = read_params(&ram, plan.boot_params.base);
        assert_eq!(p, h.params);
        let mut expect_hdr = bz.header().header();
        expect_hdr.type_of_loader = 0xff;
        expect_hdr.code32_start = plan.kernel.base as u32;
        expect_hdr.cmd_line_ptr = plan.cmdline.base as u32;
        expect_hdr.ramdisk_image = initrd_span.base as u32;
        expect_hdr.ramdisk_size = initrd.len() as u32;
        assert_eq!({ p.hdr }, expect_hdr);
        assert_eq!({ p.hdr.header }, HEADER_MAGIC);
        assert_eq!(
            (p.ext_cmd_line_ptr, p.ext_ramdisk_image, p.ext_ramdisk_size),
            (0, 0, 0)
        );
        assert_eq!(p.sentinel, 0);
        assert_eq!(
            ram.read(plan.cmdline.base, plan.cmdline.size as usize),
            b"console=ttyS0 quiet\0"
        );
        let e820: std::vec::Vec<_> = p.e820().collect();
        assert_eq!(e820.len(), m.regions().len() + 1);
        for r in reserved().iter().chain(services().iter()) {
            assert!(
                e820.iter().any(|e| e.kind == E820Type::RESERVED.0
                    && { e.addr } <= r.base
                    && r.end() <= { e.addr } + { e.size }),
                "{r:x?} not reserved in {e820:x?}"
            );
        }
        for span in placed {
            assert!(
                e820.iter().any(|e| e.kind == E820Type::RAM.0
                    && { e.addr } <= span.base
                    && span.end() <= { e.addr } + { e.size }),
                "{span:x?} is not in E820 RAM"
            );
        }
    }

    #[test]
    fn no_initrd_leaves_the_ramdisk_fields_zero() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let file = crate::bzimage::test_image();
        let mut ram = FakeRam::new(0, 128 * MIB as usize);
        let h = load(&file, &[], b"", &layout, &mut ram).unwrap();
        assert_eq!(h.plan.initrd, None);
        assert_eq!(
            ({ h.params.hdr.ramdisk_image }, {
                h.params.hdr.ramdisk_size
            }),
            (0, 0)
        );
        assert_eq!(ram.read(h.plan.cmdline.base, 1), b"\0");
    }

    #[test]
    fn command_lines_are_checked_against_cmdline_size() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let file = crate::bzimage::test_image();
        let mut ram = FakeRam::new(0, 128 * MIB as usize);
        let at_max = vec![b'x'; 0x7ff];
        load(&file, &[], &at_max, &layout, &mut ram).unwrap();
        let over = vec![b'x'; 0x800];
        assert_eq!(
            load(&file, &[], &over, &layout, &mut ram).unwrap_err(),
            LoadError::CmdlineTooLong {
                len: 0x800,
                max: 0x7ff
            }
        );
        assert_eq!(
            load(&file, &[], b"a\0b", &layout, &mut ram).unwrap_err(),
            LoadError::CmdlineNul { at: 1 }
        );
    }

    #[test]
    fn an_initrd_that_does_not_fit_is_refused() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let mut file = crate::bzimage::test_image();
        let hdr = BzHeader::parse(&file).unwrap();
        // Bigger than the free RAM.
        assert!(matches!(
            plan_linux(&hdr, 0x1_0000, 120 * MIB, 0, &layout).unwrap_err(),
            LoadError::InitrdTooBig { size, limit: 0x8000_0000 } if size == 120 * MIB
        ));
        // initrd_addr_max below the only free room that is big enough (below 8 MiB the
        // largest usable gap is [4 MiB, 8 MiB), between the firmware and SEV areas).
        file[0x22c..0x230].copy_from_slice(&(0x80_0000u32 - 1).to_le_bytes());
        let hdr = BzHeader::parse(&file).unwrap();
        assert_eq!(
            plan_linux(&hdr, 0x1_0000, 4 * MIB + 1, 0, &layout).unwrap_err(),
            LoadError::InitrdTooBig {
                size: 4 * MIB + 1,
                limit: 0x80_0000
            }
        );
        // A small one fits under the limit, in low RAM.
        let plan = plan_linux(&hdr, 0x1_0000, 0x8000, 0, &layout).unwrap();
        assert!(plan.initrd.unwrap().end() <= 0x80_0000);
    }

    #[test]
    fn a_kernel_that_does_not_fit_is_refused() {
        let m = map(64 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let mut file = crate::bzimage::test_image();
        file[0x260..0x264].copy_from_slice(&(60 * MIB as u32).to_le_bytes());
        let hdr = BzHeader::parse(&file).unwrap();
        assert_eq!(
            plan_linux(&hdr, 0x1_0000, 0, 0, &layout).unwrap_err(),
            LoadError::KernelDoesNotFit {
                size: 60 * MIB,
                min: 0x100_0000,
                align: 0x20_0000
            }
        );
        // A fixed kernel whose pref_address is in the helper region.
        let mut file = crate::bzimage::test_image();
        file[0x234] = 0;
        let hdr = BzHeader::parse(&file).unwrap();
        assert!(matches!(
            plan_linux(&hdr, 0x1_0000, 0, 0, &layout).unwrap_err(),
            LoadError::KernelDoesNotFit {
                min: 0x100_0000,
                align: 0,
                ..
            }
        ));
    }

    #[test]
    fn elf_segments_are_loaded_and_bss_zeroed() {
        let m = map(128 * MIB);
        let mmio = services();
        let layout = Layout {
            map: &m,
            mmio: &mmio,
        };
        let base = 0x400_0000;
        let file = test_elf(
            base + 0x40,
            &[
                (base, base, 0x2000, 0x2000, PF_R | PF_X),
                (
                    base + 0x10_0000,
                    base + 0x10_0000,
                    0x100,
                    0x3000,
                    PF_R | PF_W,
                ),
            ],
        );
        let elf = ElfImage::parse(&file).unwrap();
        let mut ram = FakeRam::new(0, 128 * MIB as usize);
        let h = load(&file, b"initrd!", b"selftest", &layout, &mut ram).unwrap();
        assert_eq!(h.format, KernelFormat::Elf);
        assert_eq!(h.plan.entry, base + 0x40);
        assert_eq!(h.plan.kernel, Span::new(base, 0x10_3000).unwrap());
        let s0 = elf.segments()[0];
        assert_eq!(ram.read(base, 0x2000), elf.file_bytes(&s0));
        let s1 = elf.segments()[1];
        assert_eq!(ram.read(base + 0x10_0000, 0x100), elf.file_bytes(&s1));
        assert!(ram.read(base + 0x10_0100, 0x2f00).iter().all(|&b| b == 0));
        assert_eq!(
            ram.read(base + 0x10_3000, 1),
            &[0xa5],
            "no write past memsz"
        );
        let p = read_params(&ram, h.plan.boot_params.base);
        assert_eq!({ p.hdr.cmd_line_ptr } as u64, h.plan.cmdline.base);
        assert_eq!({ p.hdr.ramdisk_size }, 7);
        assert_eq!(usize::from(p.e820_entries), m.regions().len() + 1);
    }

    #[test]
    fn elf_segments_in_reserved_memory_are_refused() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let mut ram = FakeRam::new(0, 128 * MIB as usize);
        for (at, what) in [
            (fixed::HELPER_REGION_BASE + 0x1000, "helper"),
            (fixed::SEV_HASH_TABLE_BASE, "hashes"),
            (fixed::FW_AREA_BASE, "firmware"),
            (200 * MIB, "beyond RAM"),
        ] {
            let file = test_elf(at, &[(at, at, 0x10, 0x1000, PF_R | PF_X)]);
            assert!(
                matches!(
                    load(&file, &[], b"", &layout, &mut ram).unwrap_err(),
                    LoadError::SegmentNotInRam { index: 0, base, .. } if base == at
                ),
                "{what}"
            );
        }
        // Straddling the end of usable RAM into the helper region.
        let at = fixed::HELPER_REGION_BASE - 0x1000;
        let file = test_elf(at, &[(at, at, 0x10, 0x2000, PF_R | PF_X)]);
        assert!(matches!(
            load(&file, &[], b"", &layout, &mut ram).unwrap_err(),
            LoadError::SegmentNotInRam { .. }
        ));
        assert!(
            ram.writes.is_empty(),
            "nothing is written before the checks pass"
        );
    }

    #[test]
    fn neither_format_is_refused() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let mut ram = FakeRam::new(0, 4096);
        for junk in [&b""[..], b"MZ", &[0u8; 8192]] {
            assert_eq!(
                load(junk, &[], b"", &layout, &mut ram).unwrap_err(),
                LoadError::NotAKernel
            );
        }
        // A bzImage that is wrong is reported as what it is.
        let mut file = crate::bzimage::test_image();
        file[0x206] = 0x04;
        assert_eq!(
            load(&file, &[], b"", &layout, &mut ram).unwrap_err(),
            LoadError::BzImage(BzError::ProtocolTooOld { version: 0x0204 })
        );
    }

    #[test]
    fn prepare_avoids_the_callers_ram_and_leaves_the_initrd_to_it() {
        let m = map(256 * MIB);
        let mmio = services();
        let layout = Layout {
            map: &m,
            mmio: &mmio,
        };
        let file = crate::bzimage::test_image();
        // The caller's copy of the kernel file sits at the top of RAM, where the initrd
        // would otherwise go.
        let staging = Span::new(256 * MIB - 4 * MIB, 4 * MIB).unwrap();
        let p = prepare(&file, 3 * MIB, b"quiet", &layout, &[staging]).unwrap();
        assert_eq!(p.format(), KernelFormat::BzImage);
        let plan = *p.plan();
        let rd = plan.initrd.unwrap();
        assert_eq!(
            rd.end(),
            staging.base,
            "as high as it fits, below the staging"
        );
        for span in [plan.kernel, plan.boot_params, plan.cmdline, rd] {
            assert!(!span.overlaps(&staging), "{span:x?}");
        }
        let mut ram = FakeRam::new(0, 256 * MIB as usize);
        let params = *p.params();
        let h = p.write(&mut ram).unwrap();
        assert_eq!(h.params, params);
        assert!(
            ram.writes
                .iter()
                .all(|&(gpa, len)| !rd.overlaps(&Span::new(gpa, len).unwrap())),
            "the initrd is the caller's to write"
        );
        assert_eq!(read_params(&ram, plan.boot_params.base), params);
        assert_eq!(ram.read(plan.cmdline.base, 6), b"quiet\0");
        // The same load without the staging puts the initrd at the top of RAM.
        let q = prepare(&file, 3 * MIB, b"quiet", &layout, &[]).unwrap();
        assert!(q.plan().initrd.unwrap().overlaps(&staging));
        // The E820 map still calls the staging RAM usable: it is the OS's afterwards.
        let e820: std::vec::Vec<_> = params.e820().collect();
        assert!(e820.iter().any(|e| e.kind == E820Type::RAM.0
            && { e.addr } <= staging.base
            && staging.end() <= { e.addr } + { e.size }));
    }

    #[test]
    fn the_command_line_maximum_is_the_kernels() {
        let mut file = crate::bzimage::test_image();
        assert_eq!(cmdline_max(&file), Ok(0x7ff));
        assert_eq!(cmdline_max(&test_elf(0x40_0000, &[])), Ok(MAX_ELF_CMDLINE));
        assert_eq!(cmdline_max(b"junk"), Err(LoadError::NotAKernel));
        file[0x206] = 0x04;
        assert_eq!(
            cmdline_max(&file),
            Err(LoadError::BzImage(BzError::ProtocolTooOld {
                version: 0x0204
            }))
        );
    }

    #[test]
    fn elf_segments_in_the_staging_are_refused_and_the_zero_page_is_marked() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let base = 0x400_0000;
        let file = test_elf(base, &[(base, base, 0x100, 0x2000, PF_R | PF_X)]);
        let staging = Span::new(base + 0x1000, 0x10_0000).unwrap();
        let e = prepare(&file, 0, b"", &layout, &[staging]).unwrap_err();
        assert_eq!(
            e,
            LoadError::SegmentInStaging {
                index: 0,
                base,
                size: 0x2000,
                staging
            }
        );
        assert!(std::format!("{e}").contains("staging"));
        let p = prepare(&file, 0, b"os", &layout, &[]).unwrap();
        assert_eq!(p.format(), KernelFormat::Elf);
        let hdr = p.params().hdr;
        assert_eq!({ hdr.header }, HEADER_MAGIC);
        assert_eq!({ hdr.version }, ELF_HANDOFF_VERSION);
        assert_eq!({ hdr.cmdline_size }, MAX_ELF_CMDLINE as u32);
        assert_eq!(
            { hdr.code32_start },
            0,
            "fields the protocol does not name are zero"
        );
        assert_eq!(p.plan().entry, base);
    }

    #[test]
    fn write_failures_are_errors() {
        let m = map(128 * MIB);
        let layout = Layout { map: &m, mmio: &[] };
        let file = crate::bzimage::test_image();
        // Guest memory smaller than the map claims.
        let mut ram = FakeRam::new(0, 16 * MIB as usize);
        assert!(matches!(
            load(&file, &[], b"", &layout, &mut ram).unwrap_err(),
            LoadError::Write(_)
        ));
    }
}
