//! KVM's binary statistics of a vCPU (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst
//! §4.133): on these machines the count of emulated instructions tells how much guest
//! CPL0 code ran, which is what makes boot slow.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
/// Size of `struct kvm_stats_header`.
const HEADER_SIZE: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
const DESC_SIZE: usize = 16;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Reads the named cumulative counters of the vCPU behind `fd`; names KVM does not
/// report are left out.
pub fn read(fd: &impl AsRawFd, names: &[&str]) -> Vec<(String, u64)> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor or -1.
    let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD, 0) };
    if raw < 0 {
        return Vec::new();
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let stats = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: `buf` is valid for its length; pread does not outlive the call.
    let n = unsafe { libc::pread(stats.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < HEADER_SIZE as isize {
        return Vec::new();
    }
    buf.truncate(n as usize);
    parse(&buf, names)
}

/// Parses a stats file image (header, descriptors, data).
fn parse(buf: &[u8], names: &[&str]) -> Vec<(String, u64)> {
    let (Some(name_size), Some(num_desc), Some(desc_offset), Some(data_offset)) = (
        u32_at(buf, 4),
        u32_at(buf, 8),
        u32_at(buf, 16),
        u32_at(buf, 20),
    ) else {
        return Vec::new();
    };
    let stride = DESC_SIZE + name_size as usize;
    let mut out = Vec::new();
    for i in 0..num_desc as usize {
        let d = desc_offset as usize + i * stride;
        let Some(name) = buf.get(d + DESC_SIZE..d + stride) else {
            break;
        };
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        let Some(offset) = u32_at(buf, d + 8) else {
            continue;
        };
        let at = data_offset as usize + offset as usize;
        if let Some(v) = buf.get(at..at + 8) {
            out.push((
                name.to_string(),
                u64::from_le_bytes(v.try_into().expect("8 bytes")),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_named_counters_and_survives_truncation() {
        let name_size = 8usize;
        let mut b = vec![0u8; HEADER_SIZE];
        b[4..8].copy_from_slice(&(name_size as u32).to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let desc_offset = HEADER_SIZE + name_size;
        let data_offset = desc_offset + 2 * (DESC_SIZE + name_size);
        b[16..20].copy_from_slice(&(desc_offset as u32).to_le_bytes());
        b[20..24].copy_from_slice(&(data_offset as u32).to_le_bytes());
        b.resize(data_offset + 16, 0);
        for (i, (name, value)) in [("exits", 7u64), ("other", 9)].iter().enumerate() {
            let d = desc_offset + i * (DESC_SIZE + name_size);
            b[d + 8..d + 12].copy_from_slice(&(8 * i as u32).to_le_bytes());
            b[d + DESC_SIZE..d + DESC_SIZE + name.len()].copy_from_slice(name.as_bytes());
            b[data_offset + 8 * i..data_offset + 8 * i + 8].copy_from_slice(&value.to_le_bytes());
        }
        assert_eq!(parse(&b, &["exits"]), vec![("exits".to_string(), 7)]);
        for cut in 0..b.len() {
            let _ = parse(&b[..cut], &["exits", "other"]);
        }
    }
}
