//! The mirror-helper descriptor: the firmware's GUID-table entry (GUID
//! `316739c7-2233-4c79-8605-f42df59c6913`) that tells the VMM where the measured helper
//! entry point is, in which mode and with which segments and stack a helper vCPU starts
//! there, and where each helper vCPU's mailbox lives.
//!
//! Under SEV-ES the VMM builds each helper vCPU's VMSA from this descriptor
//! ([`HelperDescriptor::entry`]) and the launch measures it: the descriptor is then the
//! guest owner's statement, through the digest, of where and how the helper starts.

use crate::{le32, le64, put32, put64};

/// How a helper vCPU is in when it starts at the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit flat protected mode, paging off, interrupts off: CS a 32-bit code segment
    /// and DS/ES/FS/GS/SS a data segment, all base 0 and limit 4 GiB (what a VMM can set
    /// up without any guest secret, and the state the entry point expects).
    Flat32,
}

impl EntryMode {
    /// The descriptor's encoding.
    pub const fn code(self) -> u16 {
        match self {
            EntryMode::Flat32 => 1,
        }
    }

    /// Decodes the descriptor's field (unknown modes are refused).
    pub fn from_code(code: u16) -> Option<EntryMode> {
        match code {
            1 => Some(EntryMode::Flat32),
            _ => None,
        }
    }
}

/// A helper vCPU's starting state, as the descriptor declares it (the VMM sets exactly
/// this, and under SEV-ES it is the measured VMSA's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperEntry {
    /// The mode.
    pub mode: EntryMode,
    /// Linear (= physical) address of the first instruction.
    pub rip: u32,
    /// CS selector.
    pub code_selector: u16,
    /// DS, ES, FS, GS and SS selector.
    pub data_selector: u16,
    /// Initial stack pointer: the top of this vCPU's stack in the reserved helper region
    /// (unused before the entry has taken its slot; there only to be inside the region).
    pub rsp: u64,
}

/// The descriptor, version 3 (104 bytes, little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperDescriptor {
    /// Most helper vCPUs the firmware has mailboxes and stacks for.
    pub max_vcpus: u16,
    /// Record windows per helper vCPU.
    pub windows_per_vcpu: u16,
    /// GPA of the 32-bit protected-mode entry point (in the measured image). No
    /// register carries anything in: the entry takes its slot (stack, mailbox, lane id)
    /// from a counter in the helper's private anchor page, and announces the slot with
    /// its first doorbell (`mailbox::doorbell::ready`).
    pub entry32: u32,
    /// Most records per request.
    pub max_batch: u32,
    /// GPA of the anchor page the entry point reads.
    pub anchor_gpa: u64,
    /// First byte of the helper region (reserved in every memory map).
    pub region_base: u64,
    /// Size of the region's fixed part; a per-page version table follows it, sized by
    /// guest RAM (INFO reports the whole region).
    pub region_static_size: u64,
    /// GPA of helper vCPU 0's control page.
    pub mailbox_gpa: u64,
    /// Bytes from one helper vCPU's mailbox to the next.
    pub mailbox_stride: u64,
    /// Bytes per record window (a window follows the control page).
    pub window_size: u64,
    /// GPA the helper writes to ring the doorbell (an MMIO page with no memslot).
    pub doorbell_gpa: u64,
    /// The mode a helper vCPU starts in at `entry32`.
    pub entry_mode: EntryMode,
    /// The CS selector it starts with (in the firmware's boot GDT, which the entry loads).
    pub code_selector: u16,
    /// The data selector it starts with.
    pub data_selector: u16,
    /// GPA of the helper vCPUs' entry stacks (in the helper region): vCPU `i` starts with
    /// RSP at the top of the `i`-th `stack_size` block.
    pub stacks_gpa: u64,
    /// Bytes per entry stack.
    pub stack_size: u64,
    /// SEV-ES: GPA of helper slot 0's GHCB page (slot `n`'s is `n` pages further), in the
    /// helper region and shared with the host.
    pub ghcb_gpa: u64,
}

/// Why a descriptor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// Not exactly [`HelperDescriptor::SIZE`] bytes.
    Length(usize),
    /// A version this code does not know.
    Version(u16),
    /// A field is out of range or the layout overlaps itself.
    Layout(&'static str),
}

impl core::fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DescriptorError::Length(n) => {
                write!(
                    f,
                    "helper descriptor is {n} bytes, expected {}",
                    HelperDescriptor::SIZE
                )
            }
            DescriptorError::Version(v) => {
                write!(
                    f,
                    "helper descriptor version {v} is not supported (this VMM knows version {})",
                    HelperDescriptor::VERSION
                )
            }
            DescriptorError::Layout(why) => write!(f, "helper descriptor is inconsistent: {why}"),
        }
    }
}

impl HelperDescriptor {
    /// Encoded size.
    pub const SIZE: usize = 104;
    /// The version this code writes and reads. Version 2: the entry point takes its slot
    /// from a private counter (no register) and announces it with its first doorbell.
    /// Version 3: the entry's mode, segments and stacks (what an SEV-ES launch measures in
    /// each helper VMSA) and the helpers' GHCB pages.
    pub const VERSION: u16 = 3;

    /// Encodes the descriptor.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..2].copy_from_slice(&Self::VERSION.to_le_bytes());
        b[2..4].copy_from_slice(&(Self::SIZE as u16).to_le_bytes());
        b[4..6].copy_from_slice(&self.max_vcpus.to_le_bytes());
        b[6..8].copy_from_slice(&self.windows_per_vcpu.to_le_bytes());
        put32(&mut b, 8, self.entry32);
        put32(&mut b, 12, self.max_batch);
        put64(&mut b, 16, self.anchor_gpa);
        put64(&mut b, 24, self.region_base);
        put64(&mut b, 32, self.region_static_size);
        put64(&mut b, 40, self.mailbox_gpa);
        put64(&mut b, 48, self.mailbox_stride);
        put64(&mut b, 56, self.window_size);
        put64(&mut b, 64, self.doorbell_gpa);
        b[72..74].copy_from_slice(&self.entry_mode.code().to_le_bytes());
        b[74..76].copy_from_slice(&self.code_selector.to_le_bytes());
        b[76..78].copy_from_slice(&self.data_selector.to_le_bytes());
        put64(&mut b, 80, self.stacks_gpa);
        put64(&mut b, 88, self.stack_size);
        put64(&mut b, 96, self.ghcb_gpa);
        b
    }

    /// Decodes and checks a descriptor from untrusted bytes.
    pub fn decode(b: &[u8]) -> Result<HelperDescriptor, DescriptorError> {
        if b.len() < 4 {
            return Err(DescriptorError::Length(b.len()));
        }
        let version = u16::from_le_bytes([b[0], b[1]]);
        if version != Self::VERSION {
            return Err(DescriptorError::Version(version));
        }
        if b.len() != Self::SIZE || usize::from(u16::from_le_bytes([b[2], b[3]])) != Self::SIZE {
            return Err(DescriptorError::Length(b.len()));
        }
        let d = HelperDescriptor {
            max_vcpus: u16::from_le_bytes([b[4], b[5]]),
            windows_per_vcpu: u16::from_le_bytes([b[6], b[7]]),
            entry32: le32(b, 8),
            max_batch: le32(b, 12),
            anchor_gpa: le64(b, 16),
            region_base: le64(b, 24),
            region_static_size: le64(b, 32),
            mailbox_gpa: le64(b, 40),
            mailbox_stride: le64(b, 48),
            window_size: le64(b, 56),
            doorbell_gpa: le64(b, 64),
            entry_mode: EntryMode::from_code(u16::from_le_bytes([b[72], b[73]]))
                .ok_or(DescriptorError::Layout("unknown entry mode"))?,
            code_selector: u16::from_le_bytes([b[74], b[75]]),
            data_selector: u16::from_le_bytes([b[76], b[77]]),
            stacks_gpa: le64(b, 80),
            stack_size: le64(b, 88),
            ghcb_gpa: le64(b, 96),
        };
        if b[78..80] != [0, 0] {
            return Err(DescriptorError::Layout(
                "reserved bytes 78..80 are not zero",
            ));
        }
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<(), DescriptorError> {
        let page = crate::PAGE_SIZE as u64;
        let err = |why| Err(DescriptorError::Layout(why));
        if self.max_vcpus == 0 || usize::from(self.max_vcpus) > crate::MAX_HELPER_VCPUS {
            return err("max_vcpus out of range");
        }
        if self.windows_per_vcpu == 0
            || usize::from(self.windows_per_vcpu) > crate::WINDOWS_PER_VCPU
        {
            return err("windows_per_vcpu out of range");
        }
        if self.max_batch == 0 || self.max_batch as usize > crate::MAX_BATCH {
            return err("max_batch out of range");
        }
        let aligned = [
            self.anchor_gpa,
            self.region_base,
            self.region_static_size,
            self.mailbox_gpa,
            self.mailbox_stride,
            self.window_size,
        ];
        if aligned.iter().any(|v| v % page != 0) {
            return err("an address or size is not page-aligned");
        }
        if self.window_size < u64::from(self.max_batch) * crate::record::PAGE_RECORD_SIZE as u64 {
            return err("a window cannot hold max_batch page records");
        }
        let per_vcpu = page + u64::from(self.windows_per_vcpu) * self.window_size;
        if self.mailbox_stride < per_vcpu {
            return err("mailboxes overlap");
        }
        let Some(region_end) = self.region_base.checked_add(self.region_static_size) else {
            return err("region overflows");
        };
        let mailboxes_end = u64::from(self.max_vcpus)
            .checked_mul(self.mailbox_stride)
            .and_then(|n| n.checked_add(self.mailbox_gpa));
        let inside = |a: u64| a >= self.region_base && a < region_end;
        if !inside(self.anchor_gpa)
            || !inside(self.mailbox_gpa)
            || mailboxes_end.is_none_or(|e| e > region_end)
        {
            return err("anchor or mailboxes lie outside the helper region");
        }
        // A selector with the table bit or an RPL set, or the null selector, cannot be a
        // CPL0 segment of the boot GDT.
        let selector_ok = |s: u16| s != 0 && s & 7 == 0;
        if !selector_ok(self.code_selector) || !selector_ok(self.data_selector) {
            return err("entry selectors must be non-null GDT selectors with RPL 0");
        }
        let stacks_end = u64::from(self.max_vcpus)
            .checked_mul(self.stack_size)
            .and_then(|n| n.checked_add(self.stacks_gpa));
        if self.stack_size < 16
            || !self.stack_size.is_multiple_of(16)
            || !inside(self.stacks_gpa)
            || stacks_end.is_none_or(|e| e > region_end)
        {
            return err("entry stacks lie outside the helper region or are not 16-byte blocks");
        }
        let ghcbs_end = u64::from(self.max_vcpus)
            .checked_mul(page)
            .and_then(|n| n.checked_add(self.ghcb_gpa));
        if !self.ghcb_gpa.is_multiple_of(page)
            || !inside(self.ghcb_gpa)
            || ghcbs_end.is_none_or(|e| e > region_end)
        {
            return err("the helper GHCB pages lie outside the helper region");
        }
        // The entry stacks below 4 GiB: a 32-bit entry's RSP.
        if stacks_end.is_none_or(|e| e > 1 << 32) {
            return err("entry stacks above 4 GiB");
        }
        Ok(())
    }

    /// How helper vCPU `index` starts (under SEV-ES: its measured VMSA's state).
    pub fn entry(&self, index: u16) -> HelperEntry {
        HelperEntry {
            mode: self.entry_mode,
            rip: self.entry32,
            code_selector: self.code_selector,
            data_selector: self.data_selector,
            rsp: self.stacks_gpa + (u64::from(index) + 1) * self.stack_size,
        }
    }

    /// GPA of helper slot `slot`'s GHCB page (SEV-ES).
    pub fn helper_ghcb_gpa(&self, slot: u16) -> u64 {
        self.ghcb_gpa + u64::from(slot) * crate::PAGE_SIZE as u64
    }

    /// GPA of helper vCPU `vcpu`'s control page.
    pub fn control_gpa(&self, vcpu: u16) -> u64 {
        self.mailbox_gpa + u64::from(vcpu) * self.mailbox_stride
    }

    /// GPA of window `window` of helper vCPU `vcpu`.
    pub fn window_gpa(&self, vcpu: u16, window: u16) -> u64 {
        self.control_gpa(vcpu) + crate::PAGE_SIZE as u64 + u64::from(window) * self.window_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HelperDescriptor {
        HelperDescriptor {
            max_vcpus: 2,
            windows_per_vcpu: 2,
            entry32: 0xfff0_1000,
            max_batch: 256,
            anchor_gpa: 0x100_0000,
            region_base: 0x100_0000,
            region_static_size: 0x80_0000,
            mailbox_gpa: 0x101_0000,
            mailbox_stride: 0x21_0000,
            window_size: 0x10_3000,
            doorbell_gpa: 0xfe00_0080,
            entry_mode: EntryMode::Flat32,
            code_selector: 0x28,
            data_selector: 0x10,
            stacks_gpa: 0x105_0000,
            stack_size: 0x2000,
            ghcb_gpa: 0x10f_0000,
        }
    }

    #[test]
    fn round_trips_and_locates_windows() {
        let d = sample();
        assert_eq!(HelperDescriptor::decode(&d.encode()), Ok(d));
        assert_eq!(
            d.window_gpa(1, 1),
            0x101_0000 + 0x21_0000 + 0x1000 + 0x10_3000
        );
        let e = d.entry(1);
        assert_eq!((e.rip, e.rsp), (0xfff0_1000, 0x105_4000));
        assert_eq!((e.code_selector, e.data_selector), (0x28, 0x10));
        assert_eq!(d.helper_ghcb_gpa(1), 0x10f_1000);
    }

    #[test]
    fn rejects_bad_versions_sizes_and_layouts() {
        let mut b = sample().encode();
        assert_eq!(
            HelperDescriptor::decode(&b[..70]),
            Err(DescriptorError::Length(70))
        );
        b[78] = 1;
        assert!(matches!(
            HelperDescriptor::decode(&b),
            Err(DescriptorError::Layout(_))
        ));
        b[78] = 0;
        b[72] = 9;
        assert_eq!(
            HelperDescriptor::decode(&b),
            Err(DescriptorError::Layout("unknown entry mode"))
        );
        b[72] = 1;
        b[0] = 1;
        assert_eq!(
            HelperDescriptor::decode(&b),
            Err(DescriptorError::Version(1)),
            "a version-1 descriptor promised an entry that takes its index from ESI"
        );
        b[0] = 2;
        assert_eq!(
            HelperDescriptor::decode(&b),
            Err(DescriptorError::Version(2)),
            "a version-2 descriptor declares no entry mode, segments or stacks"
        );
        for bad in [
            HelperDescriptor {
                max_vcpus: 0,
                ..sample()
            },
            HelperDescriptor {
                max_vcpus: 9,
                ..sample()
            },
            HelperDescriptor {
                window_size: 0x1000,
                ..sample()
            },
            HelperDescriptor {
                mailbox_stride: 0x1000,
                ..sample()
            },
            HelperDescriptor {
                anchor_gpa: 0x200_0000,
                ..sample()
            },
            HelperDescriptor {
                region_static_size: 0x20_0000,
                ..sample()
            },
            HelperDescriptor {
                mailbox_gpa: 0x101_0800,
                ..sample()
            },
            HelperDescriptor {
                region_base: !0xfff,
                ..sample()
            },
            HelperDescriptor {
                code_selector: 0x2b,
                ..sample()
            },
            HelperDescriptor {
                data_selector: 0,
                ..sample()
            },
            HelperDescriptor {
                stacks_gpa: 0x17f_f000,
                ..sample()
            },
            HelperDescriptor {
                stack_size: 8,
                ..sample()
            },
            HelperDescriptor {
                ghcb_gpa: 0x180_0000,
                ..sample()
            },
        ] {
            assert!(
                matches!(
                    HelperDescriptor::decode(&bad.encode()),
                    Err(DescriptorError::Layout(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            HelperDescriptor::decode(&[]),
            Err(DescriptorError::Length(0))
        );
    }
}
