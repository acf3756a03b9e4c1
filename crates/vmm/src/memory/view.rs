//! [`HostView`]: how the VMM reads and writes guest RAM.
//!
//! For a plain guest the view is the bytes as stored. For an SEV guest it is what the
//! host of a real SEV machine would see: pages the guest keeps private read back as
//! ciphertext and host writes to them land decrypted (garbled for the guest); pages the
//! guest announced as shared are plain. On the emulated platform the platform's
//! [`PageCipher`] produces the ciphertext; on SEV hardware the memory already is
//! ciphertext and no cipher is given. The private/shared state is the VMM's record of the
//! guest's announcements (`KVM_HC_MAP_GPA_RANGE`), as QEMU keeps it.
//!
//! The host has no public way to change that record: only the guest does (its
//! MAP_GPA_RANGE, carried out by the vCPU loop), and on a migration target the guest's
//! own shared list as its migration helper verified it, while the VM receives and has
//! not run the arriving guest. A conversion changes the page as real SEV would: bytes the
//! host wrote in the clear read as garbage once the page is private, and what the guest
//! kept private reads as ciphertext once it is shared. So no VMM code can plant
//! plaintext that a guest then reads as its own private data:
//!
//! ```compile_fail
//! # fn flip(view: &vmm::memory::HostView) {
//! // Outside the VMM's own guest-request paths there is no conversion to call.
//! view.convert(0x10_0000, 4096, vmm::memory::Visibility::Shared);
//! # }
//! ```
//!
//! ```compile_fail
//! # fn flip(view: &vmm::memory::HostView) {
//! // Nor a way to flip the record itself.
//! view.page_states().unwrap().set(256, 1, vmm::memory::Visibility::Shared);
//! # }
//! ```
//!
//! ```compile_fail
//! # fn flip(view: &vmm::memory::HostView) {
//! // Nor to fake the guest's own request.
//! vmm::sev::map_gpa_range(view, [0x10_0000, 1, 0]);
//! # }
//! ```

use super::{GuestRam, MemoryError};
use guest_abi::layout::PAGE_SIZE;
use sev_platform::backend::PageCipher;
use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

/// Whether the guest keeps a page encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Encrypted with the guest's key: the host sees ciphertext.
    Private,
    /// Shared with the host in the clear.
    Shared,
}

/// One bit per RAM page: set = private.
pub struct PageStates {
    bits: Vec<AtomicU64>,
    pages: u64,
    /// A migration target's VM receives a guest (its vCPUs stopped, the arriving guest
    /// never run): the guest's verified shared list may replace the record.
    receiving: AtomicBool,
}

impl PageStates {
    /// States for `pages` pages, all `initial`.
    pub fn new(pages: u64, initial: Visibility) -> Self {
        let fill = match initial {
            Visibility::Private => u64::MAX,
            Visibility::Shared => 0,
        };
        PageStates {
            bits: (0..pages.div_ceil(64))
                .map(|_| AtomicU64::new(fill))
                .collect(),
            pages,
            receiving: AtomicBool::new(false),
        }
    }

    /// The state of RAM page `index` (out-of-range pages count as private).
    pub fn get(&self, index: u64) -> Visibility {
        match self.bits.get((index / 64) as usize) {
            Some(w)
                if index < self.pages && w.load(Ordering::Acquire) & (1 << (index % 64)) == 0 =>
            {
                Visibility::Shared
            }
            _ => Visibility::Private,
        }
    }

    /// Sets pages [first, first + count) to `v`; pages past the end are ignored. Only the
    /// conversion paths of the host view use it (they also change the pages' bytes).
    pub(crate) fn set(&self, first: u64, count: u64, v: Visibility) {
        let end = first.saturating_add(count).min(self.pages);
        for index in first..end {
            let word = &self.bits[(index / 64) as usize];
            let bit = 1u64 << (index % 64);
            match v {
                Visibility::Private => word.fetch_or(bit, Ordering::AcqRel),
                Visibility::Shared => word.fetch_and(!bit, Ordering::AcqRel),
            };
        }
    }

    /// Number of shared pages.
    pub fn shared_count(&self) -> u64 {
        (0..self.pages)
            .filter(|&i| self.get(i) == Visibility::Shared)
            .count() as u64
    }
}

/// What the host sees of an SEV guest's memory.
#[derive(Clone)]
pub struct Encrypted {
    /// The guest's private/shared record.
    pub states: Arc<PageStates>,
    /// The emulated platform's transform (None on hardware, where memory is ciphertext).
    pub cipher: Option<Arc<dyn PageCipher>>,
}

/// The host's view of guest RAM: every VMM access to guest memory goes through here.
#[derive(Clone)]
pub struct HostView {
    ram: Arc<GuestRam>,
    encrypted: Option<Encrypted>,
}

impl HostView {
    /// The view of a plain guest's RAM.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        HostView {
            ram,
            encrypted: None,
        }
    }

    /// The view of an SEV guest's RAM.
    pub fn encrypted(ram: Arc<GuestRam>, encrypted: Encrypted) -> Self {
        HostView {
            ram,
            encrypted: Some(encrypted),
        }
    }

    /// The guest's private/shared record, for an SEV guest.
    pub fn page_states(&self) -> Option<&Arc<PageStates>> {
        self.encrypted.as_ref().map(|e| &e.states)
    }

    /// Whether the guest keeps the page at `gpa` private (always shared for a plain guest;
    /// private for an SEV guest's pages outside RAM).
    pub fn visibility(&self, gpa: u64) -> Visibility {
        match &self.encrypted {
            None => Visibility::Shared,
            Some(e) => match self.ram.page_index(gpa) {
                Some(index) => e.states.get(index),
                None => Visibility::Private,
            },
        }
    }

    /// Carries out the guest's request to make [gpa, gpa + len) private or shared. The
    /// range must be page-aligned RAM of an SEV guest; nothing changes otherwise. Each
    /// page that changes state changes as on real SEV: a page becoming private reads, to
    /// the guest, as the host's bytes decrypted with the guest's key (garbage); a page
    /// becoming shared reads, to anyone, as the guest's bytes encrypted (ciphertext).
    ///
    /// Only guest-originated requests reach this: the guest's MAP_GPA_RANGE and, on a
    /// migration target, the guest's own verified shared list
    /// ([`HostView::apply_guest_list`]).
    pub(crate) fn convert(&self, gpa: u64, len: u64, v: Visibility) -> Result<(), MemoryError> {
        let bad = || MemoryError::OutOfRange {
            gpa,
            len: len as usize,
        };
        let e = self.encrypted.as_ref().ok_or_else(bad)?;
        if !gpa.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || self.ram.host_addr(gpa, len).is_none()
        {
            return Err(bad());
        }
        let first = self.ram.page_index(gpa).ok_or_else(bad)?;
        for i in 0..len / PAGE_SIZE {
            let (index, page) = (first + i, gpa + i * PAGE_SIZE);
            if e.states.get(index) == v {
                continue;
            }
            if let Some(cipher) = &e.cipher {
                let mut p = [0u8; PAGE_SIZE as usize];
                self.ram.read_raw(page, &mut p)?;
                match v {
                    Visibility::Private => cipher.decrypt_page(page, &mut p),
                    Visibility::Shared => cipher.encrypt_page(page, &mut p),
                }
                self.ram.write_raw(page, &p)?;
            }
            e.states.set(index, 1, v);
        }
        Ok(())
    }

    /// Records that the guest already maps the page at `gpa` shared, with the bytes it
    /// wrote through that mapping as the page's contents: nothing is converted. Only the
    /// emulated stand-in for an SEV-ES GHCB page uses it — on hardware the guest clears
    /// the C-bit of its GHCB mapping before it has any channel to the host, and writes
    /// the GHCB through it (devices::ghcb, docs/architecture.md §3.2).
    pub(crate) fn record_shared_mapping(&self, gpa: u64) -> Result<(), MemoryError> {
        let bad = || MemoryError::OutOfRange {
            gpa,
            len: PAGE_SIZE as usize,
        };
        let e = self.encrypted.as_ref().ok_or_else(bad)?;
        if !gpa.is_multiple_of(PAGE_SIZE) || self.ram.host_addr(gpa, PAGE_SIZE).is_none() {
            return Err(bad());
        }
        let index = self.ram.page_index(gpa).ok_or_else(bad)?;
        e.states.set(index, 1, Visibility::Shared);
        Ok(())
    }

    /// Lets a migration target take the arriving guest's shared list (its vCPUs are
    /// stopped and the arriving guest has not run), or stops it (the guest runs).
    pub(crate) fn set_receiving(&self, receiving: bool) {
        if let Some(e) = &self.encrypted {
            e.states.receiving.store(receiving, Ordering::Release);
        }
    }

    /// Replaces the record with an arriving guest's own shared list, as its migration
    /// helper verified it: pages in `shared` become shared, every other page of `runs`
    /// private (each converted as [`HostView::convert`] converts). Refused unless the VM
    /// receives an incoming guest (see `set_receiving`).
    pub(crate) fn apply_guest_list(
        &self,
        runs: &[(u64, u64)],
        shared: &[(u64, u64)],
    ) -> Result<(), MemoryError> {
        let e = self.encrypted.as_ref().ok_or(MemoryError::NotReceiving)?;
        if !e.states.receiving.load(Ordering::Acquire) {
            return Err(MemoryError::NotReceiving);
        }
        // Disjoint (start, end) spans sorted by start: a binary search per page.
        let mut sorted: Vec<(u64, u64)> = shared
            .iter()
            .map(|&(g, n)| (g, g.saturating_add(n.saturating_mul(PAGE_SIZE))))
            .collect();
        sorted.sort_unstable();
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (start, end) in sorted {
            match spans.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => spans.push((start, end)),
            }
        }
        let is_shared = |page: u64| {
            let i = spans.partition_point(|&(start, _)| start <= page);
            i > 0 && page < spans[i - 1].1
        };
        for &(base, size) in runs {
            for page in (base..base + size).step_by(PAGE_SIZE as usize) {
                let v = if is_shared(page) {
                    Visibility::Shared
                } else {
                    Visibility::Private
                };
                self.convert(page, PAGE_SIZE, v)?;
            }
        }
        Ok(())
    }

    /// Calls `f(page_gpa, offset_in_page, range_in_buffer)` for each page [gpa, gpa + len)
    /// touches, after checking the whole range is RAM.
    fn pages(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let out_of_range = || MemoryError::OutOfRange { gpa, len };
        let end = gpa.checked_add(len as u64).ok_or_else(out_of_range)?;
        if len > 0 && self.ram.host_addr(gpa, len as u64).is_none() {
            return Err(out_of_range());
        }
        let mut at = gpa;
        while at < end {
            let page = at & !(PAGE_SIZE - 1);
            let next = (page + PAGE_SIZE).min(end);
            f(
                page,
                (at - page) as usize,
                (at - gpa) as usize..(next - gpa) as usize,
            )?;
            at = next;
        }
        Ok(())
    }

    /// The cipher and state record if the page at `page_gpa` is private and transformed.
    fn private_cipher(&self, page_gpa: u64) -> Option<&Arc<dyn PageCipher>> {
        let e = self.encrypted.as_ref()?;
        let index = self.ram.page_index(page_gpa)?;
        match e.states.get(index) {
            Visibility::Private => e.cipher.as_ref(),
            Visibility::Shared => None,
        }
    }

    /// Writes `len` bytes of shared guest memory at `gpa` (e.g. a helper's record window)
    /// to `out` straight from guest memory, with no copy in between. Every page must be
    /// shared (any page of a plain guest is): private memory only leaves as the host
    /// sees it, through [`HostView::read`].
    pub fn write_shared_to<F: vm_memory::WriteVolatile>(
        &self,
        gpa: u64,
        len: usize,
        out: &mut F,
    ) -> Result<(), MemoryError> {
        self.pages(gpa, len, |page, _, _| match self.visibility(page) {
            Visibility::Shared => Ok(()),
            Visibility::Private => Err(MemoryError::NotShared(page)),
        })?;
        self.ram.write_raw_to(gpa, len, out)
    }

    /// Reads exactly `len` bytes from `from` (e.g. the migration socket) straight into
    /// shared guest memory at `gpa` (e.g. a helper's record window), with no copy in
    /// between: the receiving side of [`HostView::write_shared_to`]. Every page must be
    /// shared (any page of a plain guest is): a host write to private memory only lands
    /// as the host's writes do, through [`HostView::write`]. If `from` fails part way,
    /// the pages hold what arrived.
    pub fn read_shared_from<F: vm_memory::ReadVolatile>(
        &self,
        gpa: u64,
        len: usize,
        from: &mut F,
    ) -> Result<(), MemoryError> {
        self.pages(gpa, len, |page, _, _| match self.visibility(page) {
            Visibility::Shared => Ok(()),
            Visibility::Private => Err(MemoryError::NotShared(page)),
        })?;
        self.ram.read_raw_from(gpa, len, from)
    }

    /// Copies guest memory at `gpa` into `buf`, as the host sees it.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.pages(gpa, buf.len(), |page, off, range| {
            match self.private_cipher(page) {
                None => self.ram.read_raw(page + off as u64, &mut buf[range]),
                Some(cipher) => {
                    let mut p = [0u8; PAGE_SIZE as usize];
                    self.ram.read_raw(page, &mut p)?;
                    cipher.encrypt_page(page, &mut p);
                    buf[range.clone()].copy_from_slice(&p[off..off + range.len()]);
                    Ok(())
                }
            }
        })
    }

    /// Copies `data` into guest memory at `gpa`, as a host write would land.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.pages(gpa, data.len(), |page, off, range| {
            match self.private_cipher(page) {
                None => self.ram.write_raw(page + off as u64, &data[range]),
                Some(cipher) => {
                    let mut p = [0u8; PAGE_SIZE as usize];
                    self.ram.read_raw(page, &mut p)?;
                    cipher.encrypt_page(page, &mut p);
                    p[off..off + range.len()].copy_from_slice(&data[range]);
                    cipher.decrypt_page(page, &mut p);
                    self.ram.write_raw(page, &p)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A toy cipher: XOR with a byte derived from the page address.
    struct Xor;

    impl PageCipher for Xor {
        fn encrypt_page(&self, gpa: u64, page: &mut [u8; 4096]) {
            page.iter_mut().for_each(|b| *b ^= 0x5a ^ (gpa >> 12) as u8);
        }
        fn decrypt_page(&self, gpa: u64, page: &mut [u8; 4096]) {
            self.encrypt_page(gpa, page);
        }
    }

    fn sev_view() -> (HostView, Arc<GuestRam>, Arc<PageStates>) {
        let ram = Arc::new(GuestRam::new(64 * MIB).unwrap());
        let states = Arc::new(PageStates::new(ram.pages(), Visibility::Private));
        let view = HostView::encrypted(
            ram.clone(),
            Encrypted {
                states: states.clone(),
                cipher: Some(Arc::new(Xor)),
            },
        );
        (view, ram, states)
    }

    #[test]
    fn plain_view_reads_back_what_it_wrote_and_rejects_holes() {
        let ram = Arc::new(GuestRam::new(64 * MIB).unwrap());
        let view = HostView::new(ram.clone());
        view.write(0x1234, b"canary").unwrap();
        let mut buf = [0u8; 6];
        view.read(0x1234, &mut buf).unwrap();
        assert_eq!(&buf, b"canary");
        assert!(view.read(64 * MIB - 2, &mut buf).is_err());
        assert!(view.write(guest_abi::layout::SERVICES_GPA, b"x").is_err());
    }

    #[test]
    fn private_pages_read_as_ciphertext_and_shared_pages_in_the_clear() {
        let (view, ram, states) = sev_view();
        // What the guest wrote (the platform's raw access stands in for the guest here).
        ram.write_raw(0x3000, b"guest secret").unwrap();
        let mut seen = [0u8; 12];
        view.read(0x3000, &mut seen).unwrap();
        assert_ne!(&seen, b"guest secret");
        states.set(3, 1, Visibility::Shared);
        view.read(0x3000, &mut seen).unwrap();
        assert_eq!(&seen, b"guest secret");
    }

    #[test]
    fn host_writes_to_private_pages_land_decrypted_and_spanning_reads_work() {
        let (view, ram, states) = sev_view();
        view.write(0x1ff8, b"0123456789abcdef").unwrap();
        let mut raw = [0u8; 16];
        ram.read_raw(0x1ff8, &mut raw).unwrap();
        assert_ne!(
            &raw, b"0123456789abcdef",
            "the guest must not see host plaintext"
        );
        let mut back = [0u8; 16];
        view.read(0x1ff8, &mut back).unwrap();
        assert_eq!(
            &back, b"0123456789abcdef",
            "the host reads back its own bytes"
        );
        states.set(0, 16, Visibility::Shared);
        view.write(0x1ff8, b"shared plaintext").unwrap();
        ram.read_raw(0x1ff8, &mut raw).unwrap();
        assert_eq!(&raw, b"shared plaintext");
    }

    #[test]
    fn only_shared_memory_goes_straight_to_a_stream() {
        let (view, ram, states) = sev_view();
        ram.write_raw(0x5000, b"window records").unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            view.write_shared_to(0x5000, 14, &mut out),
            Err(MemoryError::NotShared(0x5000))
        ));
        assert!(out.is_empty(), "nothing of a private page may leave");
        states.set(5, 2, Visibility::Shared);
        view.write_shared_to(0x5000, 14, &mut out).unwrap();
        assert_eq!(out, b"window records");
        // A range that runs into a private page is refused as a whole.
        let mut more = Vec::new();
        assert!(view.write_shared_to(0x6ff0, 0x20, &mut more).is_err());
        assert!(more.is_empty());
    }

    #[test]
    fn only_shared_memory_is_filled_straight_from_a_stream() {
        let (view, ram, states) = sev_view();
        let mut raw = [0u8; 14];
        let mut from: &[u8] = b"window records";
        assert!(matches!(
            view.read_shared_from(0x5000, 14, &mut from),
            Err(MemoryError::NotShared(0x5000))
        ));
        ram.read_raw(0x5000, &mut raw).unwrap();
        assert_eq!(raw, [0; 14], "nothing lands in a private page");
        assert_eq!(from.len(), 14, "nothing was read from the stream");
        states.set(5, 2, Visibility::Shared);
        view.read_shared_from(0x5000, 14, &mut from).unwrap();
        ram.read_raw(0x5000, &mut raw).unwrap();
        assert_eq!(&raw, b"window records");
        // A range that runs into a private page is refused as a whole.
        let mut more: &[u8] = &[0xaa; 0x20];
        assert!(view.read_shared_from(0x6ff0, 0x20, &mut more).is_err());
        let mut tail = [0u8; 0x10];
        ram.read_raw(0x6ff0, &mut tail).unwrap();
        assert_eq!(tail, [0; 0x10]);
        // A stream that ends early is an error.
        let mut short: &[u8] = b"abc";
        assert!(matches!(
            view.read_shared_from(0x5000, 14, &mut short),
            Err(MemoryError::Stream { .. })
        ));
    }

    #[test]
    fn a_conversion_never_hands_one_sides_plaintext_to_the_other() {
        let (view, ram, _) = sev_view();
        // The host plants plaintext in a page the guest shares, then the guest makes it
        // private: it reads garbage, as on SEV hardware, not the host's bytes.
        view.convert(0x8000, 4096, Visibility::Shared).unwrap();
        view.write(0x8000, b"host-planted code").unwrap();
        view.convert(0x8000, 4096, Visibility::Private).unwrap();
        let mut raw = [0u8; 17];
        ram.read_raw(0x8000, &mut raw).unwrap();
        assert_ne!(&raw, b"host-planted code");
        // Converting to the state a page already has changes nothing.
        let before = raw;
        view.convert(0x8000, 4096, Visibility::Private).unwrap();
        ram.read_raw(0x8000, &mut raw).unwrap();
        assert_eq!(raw, before);
        // The other way: what the guest kept private does not show once it shares the
        // page; the host reads ciphertext.
        ram.write_raw(0x9000, b"guest private key").unwrap();
        view.convert(0x9000, 4096, Visibility::Shared).unwrap();
        let mut seen = [0u8; 17];
        view.read(0x9000, &mut seen).unwrap();
        assert_ne!(&seen, b"guest private key");
    }

    #[test]
    fn a_shared_list_applies_only_while_the_vm_receives_and_changes_only_what_it_must() {
        let (view, ram, states) = sev_view();
        let runs = [(0, 64 * 4096)];
        assert!(matches!(
            view.apply_guest_list(&runs, &[(0x3000, 2)]),
            Err(MemoryError::NotReceiving)
        ));
        assert_eq!(states.shared_count(), 0, "nothing changed");
        view.set_receiving(true);
        view.apply_guest_list(&runs, &[(0x3000, 2), (0x10000, 1)])
            .unwrap();
        assert_eq!(states.shared_count(), 3);
        assert_eq!(view.visibility(0x4000), Visibility::Shared);
        assert_eq!(view.visibility(0x5000), Visibility::Private);
        // A page shared by both lists keeps its bytes; one the new list makes private
        // does not keep the host's.
        view.write(0x3000, b"clear page").unwrap();
        view.write(0x10000, b"clear page").unwrap();
        view.apply_guest_list(&runs, &[(0x3000, 1)]).unwrap();
        let mut b = [0u8; 10];
        ram.read_raw(0x3000, &mut b).unwrap();
        assert_eq!(&b, b"clear page");
        ram.read_raw(0x10000, &mut b).unwrap();
        assert_ne!(&b, b"clear page");
        assert_eq!(states.shared_count(), 1);
        // Once the guest runs, only its own requests change its pages.
        view.set_receiving(false);
        assert!(view.apply_guest_list(&runs, &[]).is_err());
        assert_eq!(states.shared_count(), 1);
    }

    #[test]
    fn page_states_track_conversions_and_ignore_out_of_range() {
        let s = PageStates::new(130, Visibility::Private);
        s.set(64, 3, Visibility::Shared);
        s.set(129, 1000, Visibility::Shared);
        assert_eq!(s.get(63), Visibility::Private);
        assert_eq!(s.get(65), Visibility::Shared);
        assert_eq!(s.get(129), Visibility::Shared);
        assert_eq!(s.get(5000), Visibility::Private);
        assert_eq!(s.shared_count(), 4);
        s.set(64, 1, Visibility::Private);
        assert_eq!(s.shared_count(), 3);
    }
}
