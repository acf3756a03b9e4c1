//! What the VMM configures for the workloads through fw_cfg (guest-abi `fwcfg`): the
//! number of CPUs, the TSC rate, the workload's name and the dirty workload's rate. The
//! host's word, unmeasured: parsed defensively, every problem a clear error.

use guest_abi::{fwcfg as abi, layout::MAX_VCPUS};
use guest_rt::fwcfg::{FwCfg, FwCfgError};

/// The dirty workload's rate when the VMM names none (pages per second).
pub const DEFAULT_DIRTY_RATE: u64 = 1000;
/// Longest workload name read.
pub const MAX_NAME: usize = 32;

/// The workloads' settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// CPUs taking part (1 ..= MAX_VCPUS; 1 if the VMM does not say).
    pub ncpus: u32,
    /// The TSC rate in kHz (non-zero).
    pub tsc_khz: u64,
    /// Pages per second the dirty workload rewrites (0: as fast as it can).
    pub dirty_rate: u64,
}

/// Why the settings are unusable.
#[derive(Clone, Copy, Debug)]
pub enum ConfigError {
    /// No TSC rate, or not a positive decimal number.
    TscKhz,
    /// The dirty rate is not a decimal number.
    DirtyRate,
    /// The workload's name could not be read.
    Workload(FwCfgError),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::TscKhz => write!(f, "no usable {}", abi::FILE_TSC_KHZ),
            ConfigError::DirtyRate => write!(f, "{} is not a number", abi::FILE_DIRTY_RATE),
            ConfigError::Workload(e) => write!(f, "{}: {e}", abi::FILE_WORKLOAD),
        }
    }
}

/// A decimal number, surrounding whitespace ignored; None for anything else or overflow.
pub fn parse_decimal(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u64::from(c - b'0')))
            .flatten()
    })
}

/// Reads the settings.
pub fn read(fw: &FwCfg) -> Result<Settings, ConfigError> {
    let mut n = [0u8; 2];
    let ncpus = match fw.read(abi::KEY_NB_CPUS, &mut n) {
        Ok(()) => u32::from(u16::from_le_bytes(n)).clamp(1, MAX_VCPUS as u32),
        Err(_) => 1,
    };
    let mut text = [0u8; 32];
    let tsc_khz = fw
        .read_file(abi::FILE_TSC_KHZ, &mut text)
        .ok()
        .and_then(|n| parse_decimal(text.get(..n)?))
        .filter(|&khz| khz > 0)
        .ok_or(ConfigError::TscKhz)?;
    let mut text = [0u8; 32];
    let dirty_rate = match fw.read_file(abi::FILE_DIRTY_RATE, &mut text) {
        Ok(n) => parse_decimal(text.get(..n).unwrap_or(&[])).ok_or(ConfigError::DirtyRate)?,
        Err(_) => DEFAULT_DIRTY_RATE,
    };
    Ok(Settings {
        ncpus,
        tsc_khz,
        dirty_rate,
    })
}

/// The workload's name as the VMM gave it (at most [`MAX_NAME`] bytes, in `buf`), or None
/// when it names none (the image's default).
pub fn workload_name<'b>(
    fw: &FwCfg,
    buf: &'b mut [u8; MAX_NAME],
) -> Result<Option<&'b [u8]>, ConfigError> {
    match fw.read_file(abi::FILE_WORKLOAD, buf) {
        Err(FwCfgError::NoSuchFile) => Ok(None),
        Err(e) => Err(ConfigError::Workload(e)),
        Ok(n) => Ok(Some(&buf[..n.min(MAX_NAME)])),
    }
}
