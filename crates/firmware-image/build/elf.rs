//! Just enough ELF64 reading to turn the linked firmware into a flat image: loadable
//! segments by physical address, and symbol values by name.

use std::collections::HashMap;

fn u16_at(b: &[u8], off: usize) -> Result<u16, String> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, String> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("slice of 8")))
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))
}

/// A loadable segment: where its bytes go (physical address) and how many there are.
pub struct Segment<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

/// A parsed ELF64 little-endian executable.
pub struct Elf<'a> {
    bytes: &'a [u8],
}

impl<'a> Elf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.get(0..4) != Some(b"\x7fELF")
            || bytes.get(4) != Some(&2)
            || bytes.get(5) != Some(&1)
        {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        Ok(Elf { bytes })
    }

    pub fn segments(&self) -> Result<Vec<Segment<'a>>, String> {
        let b = self.bytes;
        let phoff = u64_at(b, 0x20)? as usize;
        let phentsize = u16_at(b, 0x36)? as usize;
        let phnum = u16_at(b, 0x38)? as usize;
        let mut out = Vec::new();
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            if u32_at(b, ph)? != 1 {
                continue; // not PT_LOAD
            }
            let offset = u64_at(b, ph + 0x08)? as usize;
            let paddr = u64_at(b, ph + 0x18)?;
            let filesz = u64_at(b, ph + 0x20)? as usize;
            let memsz = u64_at(b, ph + 0x28)?;
            let data = b
                .get(offset..offset + filesz)
                .ok_or_else(|| format!("segment {i} lies outside the file"))?;
            out.push(Segment { paddr, data, memsz });
        }
        Ok(out)
    }

    pub fn symbols(&self) -> Result<HashMap<String, u64>, String> {
        let b = self.bytes;
        let shoff = u64_at(b, 0x28)? as usize;
        let shentsize = u16_at(b, 0x3a)? as usize;
        let shnum = u16_at(b, 0x3c)? as usize;
        let section = |i: usize| -> Result<(u32, usize, usize, u32, usize), String> {
            let sh = shoff + i * shentsize;
            Ok((
                u32_at(b, sh + 0x04)?,
                u64_at(b, sh + 0x18)? as usize,
                u64_at(b, sh + 0x20)? as usize,
                u32_at(b, sh + 0x28)?,
                u64_at(b, sh + 0x38)? as usize,
            ))
        };
        let mut out = HashMap::new();
        for i in 0..shnum {
            let (kind, offset, size, link, entsize) = section(i)?;
            if kind != 2 || entsize == 0 {
                continue; // not SHT_SYMTAB
            }
            let (_, str_off, str_size, _, _) = section(link as usize)?;
            let strtab = b
                .get(str_off..str_off + str_size)
                .ok_or("string table outside the file")?;
            for s in (offset..offset + size).step_by(entsize) {
                let name_off = u32_at(b, s)? as usize;
                let value = u64_at(b, s + 8)?;
                let name = strtab.get(name_off..).ok_or("bad symbol name")?;
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                if end > 0 {
                    out.insert(String::from_utf8_lossy(&name[..end]).into_owned(), value);
                }
            }
        }
        Ok(out)
    }
}
