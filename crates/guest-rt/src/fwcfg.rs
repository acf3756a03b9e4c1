//! fw_cfg client over the DMA interface, with a bounce page shared with the host.
//!
//! Everything read from fw_cfg comes from the host: the descriptor and data are copied
//! out of the bounce page once and only the copies are used.

use crate::cpu;
use crate::layout;
use guest_abi::fwcfg as abi;

/// Why fw_cfg could not be used.
#[derive(Clone, Copy, Debug)]
pub enum FwCfgError {
    /// No "QEMU" signature at the selector/data ports.
    NoDevice,
    /// The device does not offer the DMA interface.
    NoDma,
    /// The device reported an error for a transfer.
    Transfer,
    /// A named file is missing.
    NoSuchFile,
}

impl core::fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FwCfgError::NoDevice => "no fw_cfg device (signature missing)",
            FwCfgError::NoDma => "fw_cfg device lacks the DMA interface",
            FwCfgError::Transfer => "fw_cfg DMA transfer failed",
            FwCfgError::NoSuchFile => "fw_cfg file not found",
        })
    }
}

/// Largest transfer through the bounce page (the descriptor takes the first 16 bytes).
const CHUNK: usize = layout::PAGE_SIZE as usize - abi::DMA_ACCESS_SIZE;
/// Most directory entries looked at.
const MAX_FILES: u32 = 1024;

/// A probed fw_cfg device.
pub struct FwCfg(());

impl FwCfg {
    /// Checks the signature and the DMA feature bit through the traditional interface.
    pub fn probe() -> Result<FwCfg, FwCfgError> {
        let mut sig = [0u8; 4];
        cpu::outw(abi::PORT_SELECTOR, abi::KEY_SIGNATURE);
        sig.iter_mut().for_each(|b| *b = cpu::inb(abi::PORT_DATA));
        if sig != abi::SIGNATURE {
            return Err(FwCfgError::NoDevice);
        }
        let mut id = [0u8; 4];
        cpu::outw(abi::PORT_SELECTOR, abi::KEY_ID);
        id.iter_mut().for_each(|b| *b = cpu::inb(abi::PORT_DATA));
        if u32::from_le_bytes(id) & abi::ID_DMA == 0 {
            return Err(FwCfgError::NoDma);
        }
        Ok(FwCfg(()))
    }

    /// One DMA read of `out.len()` (<= CHUNK) bytes, selecting `key` first if given.
    fn dma_read(&self, key: Option<u16>, out: &mut [u8]) -> Result<(), FwCfgError> {
        let page = layout::FWCFG_DMA_PAGE;
        let data = page + abi::DMA_ACCESS_SIZE as u64;
        let mut control = abi::DMA_CTL_READ;
        if let Some(key) = key {
            control |= abi::DMA_CTL_SELECT | u32::from(key) << 16;
        }
        let mut desc = [0u8; abi::DMA_ACCESS_SIZE];
        desc[0..4].copy_from_slice(&control.to_be_bytes());
        desc[4..8].copy_from_slice(&(out.len() as u32).to_be_bytes());
        desc[8..16].copy_from_slice(&data.to_be_bytes());
        // SAFETY: the bounce page is reserved RAM shared with the host and used only here,
        // by the boot CPU; `out.len()` <= CHUNK keeps the data inside the page.
        unsafe {
            core::ptr::copy_nonoverlapping(desc.as_ptr(), page as *mut u8, desc.len());
        }
        // The address goes out big-endian, high half first; the low half starts the transfer.
        cpu::outl(abi::PORT_DMA, ((page >> 32) as u32).swap_bytes());
        cpu::outl(abi::PORT_DMA + 4, (page as u32).swap_bytes());
        let mut status = [0u8; 4];
        // SAFETY: as above; the transfer is complete when the port write returns.
        unsafe {
            core::ptr::copy_nonoverlapping(page as *const u8, status.as_mut_ptr(), 4);
            core::ptr::copy_nonoverlapping(data as *const u8, out.as_mut_ptr(), out.len());
        }
        if u32::from_be_bytes(status) & abi::DMA_CTL_ERROR != 0 {
            return Err(FwCfgError::Transfer);
        }
        Ok(())
    }

    /// Reads the start of item `key` into `out`.
    pub fn read(&self, key: u16, out: &mut [u8]) -> Result<(), FwCfgError> {
        let mut select = Some(key);
        for chunk in out.chunks_mut(CHUNK) {
            self.dma_read(select.take(), chunk)?;
        }
        Ok(())
    }

    /// Reads a u32 item (little-endian), such as the size of the kernel; 0 for an item
    /// the device does not have (fw_cfg reads missing items as zeros).
    pub fn read_u32(&self, key: u16) -> Result<u32, FwCfgError> {
        let mut b = [0u8; 4];
        self.read(key, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Selects item `key` and reads its first `len` bytes to guest-physical `gpa`, through
    /// the bounce page, one page at a time, then passes the copy in private memory to
    /// `each` (offset, bytes) piece by piece (for hashing). Only the copy is ever looked at:
    /// the host may change the bounce page at any time.
    ///
    /// # Safety
    /// `[gpa, gpa + len)` must be RAM identity-mapped for the boot CPU, reserved for this
    /// use (no other reference to it exists while this runs).
    pub unsafe fn read_to_ram(
        &self,
        key: u16,
        gpa: u64,
        len: u64,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), FwCfgError> {
        // SAFETY: the caller guarantees the range is ours alone and mapped.
        let dst = unsafe { core::slice::from_raw_parts_mut(gpa as *mut u8, len as usize) };
        let mut select = Some(key);
        for chunk in dst.chunks_mut(CHUNK) {
            self.dma_read(select.take(), chunk)?;
            each(chunk);
        }
        Ok(())
    }

    /// Finds a named file: its key and size.
    pub fn find(&self, name: &str) -> Result<(u16, u32), FwCfgError> {
        let mut count = [0u8; 4];
        self.dma_read(Some(abi::KEY_FILE_DIR), &mut count)?;
        for _ in 0..u32::from_be_bytes(count).min(MAX_FILES) {
            let mut e = [0u8; abi::FILE_DIR_ENTRY_SIZE];
            self.dma_read(None, &mut e)?;
            let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let key = u16::from_be_bytes([e[4], e[5]]);
            let raw = &e[8..8 + abi::FILE_NAME_LEN];
            let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            if &raw[..len] == name.as_bytes() {
                return Ok((key, size));
            }
        }
        Err(FwCfgError::NoSuchFile)
    }

    /// Reads a named file into `out`; returns the file's full size (it may exceed `out`).
    pub fn read_file(&self, name: &str, out: &mut [u8]) -> Result<usize, FwCfgError> {
        let (key, size) = self.find(name)?;
        let n = out.len().min(size as usize);
        self.read(key, &mut out[..n])?;
        Ok(size as usize)
    }
}
