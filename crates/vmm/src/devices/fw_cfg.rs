//! QEMU-compatible fw_cfg device (QEMU `docs/specs/fw_cfg.rst`): the selector/data ports
//! and the DMA interface, with a signature, a feature bitmap, RAM size, CPU count and a
//! directory of named files.
//!
//! The guest is untrusted: selectors, DMA descriptors and lengths are validated, DMA moves
//! at most one item's bytes plus zero fill, and bad guest addresses set the error bit
//! instead of failing the VMM.

use crate::memory::{HostView, MemoryError};
use guest_abi::fwcfg as abi;
use std::collections::BTreeMap;

/// Guest memory as the DMA engine sees it.
pub trait DmaMemory {
    /// Reads guest memory.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes guest memory.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;
}

impl DmaMemory for HostView {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        HostView::read(self, gpa, buf)
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        HostView::write(self, gpa, data)
    }
}

/// Why a file could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name does not fit the 56-byte directory field.
    #[error("fw_cfg file name {0:?} is longer than 55 bytes")]
    NameTooLong(String),
    /// The name is empty or contains a NUL byte.
    #[error("fw_cfg file name {0:?} is empty or contains a NUL byte")]
    BadName(String),
    /// A file of that name exists already.
    #[error("fw_cfg file {0:?} is given twice")]
    Duplicate(String),
    /// The file is larger than fw_cfg can describe (u32).
    #[error("fw_cfg file {0:?} is larger than 4 GiB")]
    TooLarge(String),
    /// All file keys are used.
    #[error("too many fw_cfg files")]
    TooManyFiles,
}

/// Port offsets from 0x510.
const SELECTOR: u16 = abi::PORT_SELECTOR;
const DATA: u16 = abi::PORT_DATA;
const DMA_HIGH: u16 = abi::PORT_DMA;
const DMA_LOW: u16 = abi::PORT_DMA + 4;

/// First port and number of ports the device decodes.
pub const PORT_BASE: u16 = abi::PORT_SELECTOR;
/// Number of ports from [`PORT_BASE`].
pub const PORT_LEN: u16 = DMA_LOW + 4 - abi::PORT_SELECTOR;

/// Bytes moved per guest-memory access during DMA.
const DMA_CHUNK: usize = 4096;

/// The fw_cfg device.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: usize,
    dma_high: u32,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// A device with the signature, the feature bitmap (traditional + DMA) and an empty
    /// file directory.
    pub fn new() -> Self {
        let mut dev = FwCfg {
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
        };
        dev.items
            .insert(abi::KEY_SIGNATURE, abi::SIGNATURE.to_vec());
        dev.items.insert(
            abi::KEY_ID,
            (abi::ID_TRADITIONAL | abi::ID_DMA).to_le_bytes().to_vec(),
        );
        dev.rebuild_directory();
        dev
    }

    /// Sets a numbered item (RAM size, CPU count, ...).
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, data);
    }

    /// Adds a named file.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        if name.len() >= abi::FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong(name.into()));
        }
        if name.is_empty() || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.into()));
        }
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| abi::KEY_FILE_FIRST.checked_add(n))
            .filter(|&k| k < 0x4000)
            .ok_or(FwCfgError::TooManyFiles)?;
        self.items.insert(key, data);
        self.files.push((name.into(), key));
        self.rebuild_directory();
        Ok(())
    }

    fn rebuild_directory(&mut self) {
        // QEMU lists files sorted by name.
        let mut files = self.files.clone();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in files {
            let size = self.items.get(&key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; abi::FILE_NAME_LEN];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(abi::KEY_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    fn next_byte(&mut self) -> u8 {
        let byte = self
            .items
            .get(&self.selected)
            .and_then(|d| d.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        byte
    }

    /// A guest `in` from `port`.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            DATA => data.iter_mut().for_each(|b| *b = self.next_byte()),
            _ => data.fill(0),
        }
    }

    /// A guest `out` to `port`; a write to the low DMA half runs the transfer.
    pub fn pio_write(&mut self, port: u16, data: &[u8], mem: &dyn DmaMemory) {
        match (port, data.len()) {
            (SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr, mem);
            }
            _ => log::debug!(
                "fw_cfg: ignored {}-byte write to port {port:#x}",
                data.len()
            ),
        }
    }

    /// Runs the DMA descriptor at `addr` and writes its status back.
    fn dma(&mut self, addr: u64, mem: &dyn DmaMemory) {
        let mut desc = [0u8; abi::DMA_ACCESS_SIZE];
        if mem.read(addr, &mut desc).is_err() {
            log::debug!("fw_cfg: DMA descriptor at {addr:#x} is not in RAM");
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]);
        let target = u64::from_be_bytes(desc[8..16].try_into().expect("8-byte slice"));
        let ok = self.dma_transfer(control, length, target, mem);
        let status = if ok { 0 } else { abi::DMA_CTL_ERROR };
        // If the guest unmapped its descriptor in between there is nobody to tell.
        let _ = mem.write(addr, &status.to_be_bytes());
    }

    fn dma_transfer(
        &mut self,
        control: u32,
        length: u32,
        target: u64,
        mem: &dyn DmaMemory,
    ) -> bool {
        if control & abi::DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let length = length as usize;
        if control & abi::DMA_CTL_WRITE != 0 {
            return false; // no writable items
        }
        if control & abi::DMA_CTL_READ != 0 {
            let item: &[u8] = self.items.get(&self.selected).map_or(&[], Vec::as_slice);
            let avail = item.get(self.offset..).unwrap_or(&[]);
            let zeros = [0u8; DMA_CHUNK];
            let mut done = 0;
            while done < length {
                let n = (length - done).min(DMA_CHUNK);
                let src = avail.get(done..).unwrap_or(&[]);
                let src = if src.len() >= n { &src[..n] } else { src };
                let gpa = target.wrapping_add(done as u64);
                let mut ok = mem.write(gpa, src).is_ok();
                if src.len() < n {
                    ok &= mem
                        .write(gpa + src.len() as u64, &zeros[..n - src.len()])
                        .is_ok();
                }
                if !ok {
                    return false;
                }
                done += n;
            }
        } else if control & abi::DMA_CTL_SKIP == 0 {
            return true; // select only
        }
        self.offset = self.offset.saturating_add(length);
        true
    }
}

/// `etc/e820` contents for RAM regions `(base, size)`.
pub fn e820_table(ram: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(base, size) in ram.iter().filter(|r| r.1 > 0) {
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&abi::E820_RAM.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// 64 KiB of fake guest RAM at 0.
    struct FakeMem(RefCell<Vec<u8>>);

    impl DmaMemory for FakeMem {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let m = self.0.borrow();
            let s =
                m.get(gpa as usize..gpa as usize + buf.len())
                    .ok_or(MemoryError::OutOfRange {
                        gpa,
                        len: buf.len(),
                    })?;
            buf.copy_from_slice(s);
            Ok(())
        }

        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
            let mut m = self.0.borrow_mut();
            let s = m.get_mut(gpa as usize..gpa as usize + data.len()).ok_or(
                MemoryError::OutOfRange {
                    gpa,
                    len: data.len(),
                },
            )?;
            s.copy_from_slice(data);
            Ok(())
        }
    }

    fn mem() -> FakeMem {
        FakeMem(RefCell::new(vec![0xaa; 0x10000]))
    }

    fn read_item(dev: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        dev.pio_write(SELECTOR, &key.to_le_bytes(), &mem());
        let mut out = vec![0; n];
        for b in &mut out {
            let mut one = [0];
            dev.pio_read(DATA, &mut one);
            *b = one[0];
        }
        out
    }

    fn dma(dev: &mut FwCfg, m: &FakeMem, desc_at: u64, control: u32, len: u32, target: u64) -> u32 {
        let mut d = control.to_be_bytes().to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&target.to_be_bytes());
        m.write(desc_at, &d).unwrap();
        dev.pio_write(DMA_HIGH, &((desc_at >> 32) as u32).to_be_bytes(), m);
        dev.pio_write(DMA_LOW, &(desc_at as u32).to_be_bytes(), m);
        let mut status = [0u8; 4];
        m.read(desc_at, &mut status).unwrap();
        u32::from_be_bytes(status)
    }

    #[test]
    fn signature_and_features_read_through_the_data_port() {
        let mut dev = FwCfg::new();
        assert_eq!(read_item(&mut dev, abi::KEY_SIGNATURE, 4), b"QEMU");
        let id = read_item(&mut dev, abi::KEY_ID, 4);
        assert_eq!(
            u32::from_le_bytes(id.try_into().unwrap()),
            abi::ID_TRADITIONAL | abi::ID_DMA
        );
        // Reading past the end yields zeros, never a panic.
        assert_eq!(read_item(&mut dev, abi::KEY_SIGNATURE, 6)[4..], [0, 0]);
        assert_eq!(read_item(&mut dev, 0x7777, 2), [0, 0]);
    }

    #[test]
    fn files_are_listed_sorted_with_size_and_key() {
        let mut dev = FwCfg::new();
        dev.add_file("opt/z", vec![1, 2, 3]).unwrap();
        dev.add_file("etc/e820", vec![0; 20]).unwrap();
        let dir = read_item(&mut dev, abi::KEY_FILE_DIR, 4 + 2 * 64);
        assert_eq!(u32::from_be_bytes(dir[0..4].try_into().unwrap()), 2);
        let entry = |i: usize| &dir[4 + 64 * i..4 + 64 * (i + 1)];
        assert_eq!(&entry(0)[8..16], b"etc/e820");
        assert_eq!(u32::from_be_bytes(entry(0)[0..4].try_into().unwrap()), 20);
        assert_eq!(&entry(1)[8..13], b"opt/z");
        let key = u16::from_be_bytes(entry(1)[4..6].try_into().unwrap());
        assert_eq!(read_item(&mut dev, key, 3), [1, 2, 3]);
    }

    #[test]
    fn bad_file_names_are_refused() {
        let mut dev = FwCfg::new();
        assert_eq!(
            dev.add_file(&"x".repeat(56), vec![]),
            Err(FwCfgError::NameTooLong("x".repeat(56)))
        );
        assert!(matches!(
            dev.add_file("", vec![]),
            Err(FwCfgError::BadName(_))
        ));
        dev.add_file("a", vec![]).unwrap();
        assert_eq!(
            dev.add_file("a", vec![]),
            Err(FwCfgError::Duplicate("a".into()))
        );
    }

    #[test]
    fn dma_select_read_continues_and_zero_fills() {
        let mut dev = FwCfg::new();
        dev.add_file("opt/data", (1..=10).collect()).unwrap();
        let key = abi::KEY_FILE_FIRST;
        let m = mem();
        let sel_read = abi::DMA_CTL_SELECT | abi::DMA_CTL_READ | u32::from(key) << 16;
        assert_eq!(dma(&mut dev, &m, 0x100, sel_read, 4, 0x1000), 0);
        assert_eq!(dma(&mut dev, &m, 0x100, abi::DMA_CTL_SKIP, 2, 0), 0);
        assert_eq!(dma(&mut dev, &m, 0x100, abi::DMA_CTL_READ, 6, 0x2000), 0);
        let mut out = [0u8; 6];
        m.read(0x1000, &mut out[..4]).unwrap();
        assert_eq!(out[..4], [1, 2, 3, 4]);
        m.read(0x2000, &mut out).unwrap();
        assert_eq!(out, [7, 8, 9, 10, 0, 0]);
    }

    #[test]
    fn dma_to_bad_addresses_or_writes_report_an_error_without_panicking() {
        let mut dev = FwCfg::new();
        let m = mem();
        let sel_read = abi::DMA_CTL_SELECT | abi::DMA_CTL_READ;
        assert_eq!(
            dma(&mut dev, &m, 0x100, sel_read, 4, 0xffff_ffff_0000),
            abi::DMA_CTL_ERROR
        );
        assert_eq!(
            dma(&mut dev, &m, 0x100, sel_read, u32::MAX, 0x8000),
            abi::DMA_CTL_ERROR
        );
        assert_eq!(
            dma(&mut dev, &m, 0x100, abi::DMA_CTL_WRITE, 4, 0x1000),
            abi::DMA_CTL_ERROR
        );
        // A descriptor outside RAM is ignored.
        dev.pio_write(DMA_LOW, &0x00ff_0000u32.to_be_bytes(), &m);
    }

    #[test]
    fn e820_lists_only_non_empty_ram() {
        let t = e820_table(&[(0, 0x1000), (1 << 32, 0)]);
        assert_eq!(t.len(), abi::E820_ENTRY_SIZE);
        assert_eq!(u64::from_le_bytes(t[8..16].try_into().unwrap()), 0x1000);
        assert_eq!(
            u32::from_le_bytes(t[16..20].try_into().unwrap()),
            abi::E820_RAM
        );
    }
}
