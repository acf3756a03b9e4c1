//! Page-state change descriptors (56421 §4.1.6 "SNP Page State Change"; Linux
//! `struct snp_psc_desc` in `arch/x86/include/asm/sev-common.h`).
//!
//! The descriptor sits in the scratch area (the shared buffer): an 8-byte header
//! (`cur_entry` u16, `end_entry` u16, reserved u32) and up to [`MAX_ENTRIES`] 8-byte
//! entries: bits 11:0 `cur_page` (progress inside a 2 MiB entry), 51:12 GFN, 55:52
//! operation (1 private, 2 shared), 56 page size (0 = 4 KiB, 1 = 2 MiB), 63:57 reserved.
//! The hypervisor processes entries `cur_entry..=end_entry`, advancing `cur_entry` (and an
//! entry's `cur_page`) as it goes, and returns 0 in `sw_exit_info_2` or an error code.
//!
//! The specification defines this exit for SEV-SNP; sevmirror's VMM also serves it for
//! SEV-ES guests as a second way to announce conversions (KVM's SEV-ES way is VMMCALL
//! `KVM_HC_MAP_GPA_RANGE`, which the VMM serves too).

use super::GhcbError;

/// Most entries one descriptor holds: (2032 - 8) / 8 (Linux `VMGEXIT_PSC_MAX_COUNT`).
pub const MAX_ENTRIES: usize = 253;
/// Size of the header.
pub const HEADER_LEN: usize = 8;

/// `sw_exit_info_2` on success.
pub const OK: u64 = 0;
/// `sw_exit_info_2`: the header is invalid (Linux `VMGEXIT_PSC_ERROR_INVALID_HDR`).
pub const ERROR_INVALID_HEADER: u64 = (1 << 32) | 1;
/// `sw_exit_info_2`: an entry is invalid (Linux `VMGEXIT_PSC_ERROR_INVALID_ENTRY`).
pub const ERROR_INVALID_ENTRY: u64 = (1 << 32) | 2;
/// `sw_exit_info_2`: the hypervisor could not carry out a valid entry (Linux
/// `VMGEXIT_PSC_ERROR_GENERIC`).
pub const ERROR_GENERIC: u64 = 0x100 << 32;

const _: () = assert!(HEADER_LEN + 8 * MAX_ENTRIES == super::SHARED_BUFFER_LEN);

/// What an entry asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Make the pages private (encrypted).
    Private,
    /// Make the pages shared with the host.
    Shared,
}

/// Size of the page an entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB (512 small pages; `cur_page` counts those done).
    Size2M,
}

impl PageSize {
    /// Number of 4 KiB pages.
    pub const fn pages(self) -> u64 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 512,
        }
    }
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 4 KiB pages of this entry already done.
    pub cur_page: u16,
    /// Guest frame number (GPA >> 12), 40 bits.
    pub gfn: u64,
    /// The change.
    pub op: Operation,
    /// Page size.
    pub size: PageSize,
}

const GFN_MASK: u64 = (1 << 40) - 1;

impl Entry {
    /// An entry for the page at `gfn`, nothing done yet.
    pub const fn new(gfn: u64, op: Operation, size: PageSize) -> Self {
        Entry {
            cur_page: 0,
            gfn,
            op,
            size,
        }
    }

    /// The 8-byte encoding.
    pub const fn encode(self) -> u64 {
        let op: u64 = match self.op {
            Operation::Private => 1,
            Operation::Shared => 2,
        };
        let size: u64 = match self.size {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
        };
        (self.cur_page as u64 & 0xfff) | (self.gfn & GFN_MASK) << 12 | op << 52 | size << 56
    }

    /// Decodes entry number `index`: reserved bits clear, a private/shared operation
    /// (PSMASH/UNSMASH are SNP RMP operations this VMM has no use for), `cur_page` within
    /// the page, and a 2 MiB entry 2 MiB-aligned.
    pub fn decode(v: u64, index: u16) -> Result<Self, GhcbError> {
        let bad = GhcbError::PscEntry(index);
        if v >> 57 != 0 {
            return Err(bad);
        }
        let op = match (v >> 52) & 0xf {
            1 => Operation::Private,
            2 => Operation::Shared,
            _ => return Err(bad),
        };
        let size = if v & (1 << 56) != 0 {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        };
        let entry = Entry {
            cur_page: (v & 0xfff) as u16,
            gfn: (v >> 12) & GFN_MASK,
            op,
            size,
        };
        if u64::from(entry.cur_page) > size.pages()
            || (size == PageSize::Size2M && !entry.gfn.is_multiple_of(512))
        {
            return Err(bad);
        }
        Ok(entry)
    }
}

/// A descriptor: header and entries (a private copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PscDesc {
    /// First entry still to process.
    pub cur_entry: u16,
    /// Last entry to process.
    pub end_entry: u16,
    entries: [u64; MAX_ENTRIES],
    len: usize,
}

impl Default for PscDesc {
    fn default() -> Self {
        Self::new()
    }
}

impl PscDesc {
    /// An empty descriptor.
    pub const fn new() -> Self {
        PscDesc {
            cur_entry: 0,
            end_entry: 0,
            entries: [0; MAX_ENTRIES],
            len: 0,
        }
    }

    /// Appends an entry and makes it the last to process; fails when full.
    pub fn push(&mut self, entry: Entry) -> Result<(), GhcbError> {
        let slot = self.entries.get_mut(self.len).ok_or(GhcbError::PscHeader {
            cur: self.cur_entry,
            end: MAX_ENTRIES as u16,
        })?;
        *slot = entry.encode();
        self.end_entry = self.len as u16;
        self.len += 1;
        Ok(())
    }

    /// Number of entries held (`end_entry + 1` once decoded).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the descriptor holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `index`, decoded.
    pub fn entry(&self, index: u16) -> Result<Entry, GhcbError> {
        let raw = *self
            .entries
            .get(usize::from(index))
            .filter(|_| usize::from(index) < self.len)
            .ok_or(GhcbError::PscEntry(index))?;
        Entry::decode(raw, index)
    }

    /// Records progress: entry `index` is done (all its pages), and processing resumes
    /// after it.
    pub fn complete(&mut self, index: u16) -> Result<(), GhcbError> {
        let mut e = self.entry(index)?;
        e.cur_page = e.size.pages() as u16;
        if let Some(slot) = self.entries.get_mut(usize::from(index)) {
            *slot = e.encode();
        }
        self.cur_entry = index.saturating_add(1);
        Ok(())
    }

    /// Indices of the entries still to process (`cur_entry..=end_entry`; empty when
    /// `cur_entry` is past the end).
    pub fn pending(&self) -> core::ops::Range<u16> {
        if self.len == 0 {
            return 0..0;
        }
        // end_entry < MAX_ENTRIES, so the sum cannot overflow.
        self.cur_entry..self.end_entry + 1
    }

    /// Decodes a descriptor from the scratch area: `end_entry` below [`MAX_ENTRIES`],
    /// the entries up to it inside `buf`, and every pending entry well formed.
    pub fn decode(buf: &[u8]) -> Result<Self, GhcbError> {
        let header = buf
            .get(..HEADER_LEN)
            .ok_or(GhcbError::Length(buf.len() as u64))?;
        let cur = u16::from_le_bytes([header[0], header[1]]);
        let end = u16::from_le_bytes([header[2], header[3]]);
        let bad_header = GhcbError::PscHeader { cur, end };
        if usize::from(end) >= MAX_ENTRIES {
            return Err(bad_header);
        }
        let len = usize::from(end) + 1;
        let body = buf
            .get(HEADER_LEN..HEADER_LEN + 8 * len)
            .ok_or(bad_header)?;
        let mut desc = PscDesc {
            cur_entry: cur,
            end_entry: end,
            entries: [0; MAX_ENTRIES],
            len,
        };
        for (slot, raw) in desc.entries.iter_mut().zip(body.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            *slot = u64::from_le_bytes(b);
        }
        for i in desc.pending() {
            desc.entry(i)?;
        }
        Ok(desc)
    }

    /// Writes the descriptor into `buf`; returns the bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, GhcbError> {
        let n = HEADER_LEN + 8 * self.len;
        let out = buf.get_mut(..n).ok_or(GhcbError::Length(n as u64))?;
        out[0..2].copy_from_slice(&self.cur_entry.to_le_bytes());
        out[2..4].copy_from_slice(&self.end_entry.to_le_bytes());
        out[4..8].fill(0);
        for (chunk, e) in out[HEADER_LEN..].chunks_exact_mut(8).zip(&self.entries) {
            chunk.copy_from_slice(&e.to_le_bytes());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_use_the_spec_bit_layout() {
        let e = Entry::new(0x810, Operation::Shared, PageSize::Size4K);
        assert_eq!(e.encode(), 0x810 << 12 | 2 << 52);
        let big = Entry {
            cur_page: 3,
            gfn: 0x200,
            op: Operation::Private,
            size: PageSize::Size2M,
        };
        assert_eq!(big.encode(), 3 | 0x200 << 12 | 1 << 52 | 1 << 56);
        assert_eq!(Entry::decode(big.encode(), 0), Ok(big));
        assert_eq!(Entry::decode(e.encode(), 0), Ok(e));
    }

    #[test]
    fn malformed_entries_are_refused() {
        let good = Entry::new(0x810, Operation::Shared, PageSize::Size4K).encode();
        let unaligned_2m = Entry::new(0x201, Operation::Shared, PageSize::Size2M).encode();
        for bad in [
            good | 1 << 57,
            good | 1 << 63,
            good & !(0xf << 52),
            (good & !(0xf << 52)) | 3 << 52,
            good | 2,
            unaligned_2m,
        ] {
            assert_eq!(
                Entry::decode(bad, 7),
                Err(GhcbError::PscEntry(7)),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn descriptors_round_trip_through_the_shared_buffer() {
        let mut d = PscDesc::new();
        assert!(d.pending().is_empty());
        for gfn in 0x810..0x830 {
            d.push(Entry::new(gfn, Operation::Shared, PageSize::Size4K))
                .unwrap();
        }
        let mut buf = [0u8; crate::ghcb::SHARED_BUFFER_LEN];
        let n = d.encode(&mut buf).unwrap();
        assert_eq!(n, 8 + 32 * 8);
        assert_eq!(&buf[..8], &[0, 0, 31, 0, 0, 0, 0, 0]);
        let back = PscDesc::decode(&buf).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.pending(), 0..32);
        assert_eq!(back.entry(5).unwrap().gfn, 0x815);
    }

    #[test]
    fn a_full_descriptor_fills_the_shared_buffer_exactly() {
        let mut d = PscDesc::new();
        for gfn in 0..MAX_ENTRIES as u64 {
            d.push(Entry::new(gfn, Operation::Private, PageSize::Size4K))
                .unwrap();
        }
        assert!(d
            .push(Entry::new(0, Operation::Private, PageSize::Size4K))
            .is_err());
        let mut buf = [0u8; crate::ghcb::SHARED_BUFFER_LEN];
        assert_eq!(d.encode(&mut buf), Ok(buf.len()));
        assert_eq!(PscDesc::decode(&buf).unwrap().len(), MAX_ENTRIES);
    }

    #[test]
    fn too_many_entries_or_a_short_buffer_are_refused() {
        let mut buf = [0u8; crate::ghcb::SHARED_BUFFER_LEN];
        buf[2..4].copy_from_slice(&(MAX_ENTRIES as u16).to_le_bytes());
        assert_eq!(
            PscDesc::decode(&buf),
            Err(GhcbError::PscHeader {
                cur: 0,
                end: MAX_ENTRIES as u16
            })
        );
        buf[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(PscDesc::decode(&buf).is_err());
        // Ten entries announced, room for three.
        let mut short = [0u8; 8 + 3 * 8];
        short[2] = 9;
        assert_eq!(
            PscDesc::decode(&short),
            Err(GhcbError::PscHeader { cur: 0, end: 9 })
        );
        assert_eq!(PscDesc::decode(&[0u8; 4]), Err(GhcbError::Length(4)));
    }

    #[test]
    fn only_pending_entries_are_checked_and_progress_is_recorded() {
        let mut d = PscDesc::new();
        d.push(Entry::new(1, Operation::Shared, PageSize::Size4K))
            .unwrap();
        d.push(Entry::new(2, Operation::Shared, PageSize::Size4K))
            .unwrap();
        let mut buf = [0u8; 64];
        d.encode(&mut buf).unwrap();
        // Entry 0 is garbage but already done: the hypervisor must not look at it.
        buf[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        buf[0] = 1;
        let mut back = PscDesc::decode(&buf).unwrap();
        assert_eq!(back.pending(), 1..2);
        back.complete(1).unwrap();
        assert!(back.pending().is_empty());
        assert_eq!(back.entry(1).unwrap().cur_page, 1);
        buf[0] = 0;
        assert_eq!(PscDesc::decode(&buf), Err(GhcbError::PscEntry(0)));
    }
}
