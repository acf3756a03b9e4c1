//! One code path that drives every parser of this crate over one input.
//!
//! Used by the cargo-fuzz target (`fuzz/fuzz_targets/fwtable.rs`), the seed
//! replay test (`tests/fuzz_seeds.rs`) and the random-input test below, so
//! all three exercise the same calls. Besides "does not panic", it asserts
//! round-trip properties: a table that parses is rebuilt byte for byte by the
//! builder, and every decoder that accepts data encodes it back unchanged.

use std::string::ToString;
use std::vec::Vec;

use crate::decode::{
    encode_sev_metadata, EntryValue, MetadataOffset, MirrorHelperRaw, ServicesDescriptor, SevArea,
    SevEsResetBlock, SevMetadata, SevSection, TdxMetadata,
};
use crate::guid::{self, Guid};
use crate::report::report;
use crate::table::Table;
use crate::{place_in_image, Entry, TableError};

/// Runs every decoder on `data`, whatever the GUID says it is.
fn decode_all(image: &[u8], entry: &Entry<'_>) {
    let data = entry.data;
    if let Ok(r) = SevEsResetBlock::decode(data) {
        assert_eq!(r.encode().ok().as_ref().map(|b| &b[..]), Some(data));
    }
    if let Ok(a) = SevArea::decode(data) {
        assert_eq!(&a.encode()[..], data);
        let _ = a.end();
    }
    if let Ok(d) = ServicesDescriptor::decode(data) {
        assert_eq!(&d.encode()[..], data);
    }
    if let Ok(m) = MirrorHelperRaw::decode(data) {
        assert_eq!(m.data, data);
    }
    if let Ok(off) = MetadataOffset::decode(data) {
        assert_eq!(&off.encode()[..], data);
        if let Ok(m) = SevMetadata::decode(image, off) {
            let sections: Vec<SevSection> = m.sections().collect();
            assert_eq!(sections.len(), m.section_count());
            let mut out = std::vec![0u8; 16 + 12 * sections.len()];
            let n = encode_sev_metadata(&sections, &mut out);
            assert_eq!(n, Ok(out.len()));
            assert_eq!(image.get(m.offset..m.offset + out.len()), Some(&out[..]));
            for s in &sections {
                let _ = (s.kind.name(), s.kind.to_string());
            }
        }
        if let Ok(m) = TdxMetadata::decode(image, off) {
            let mut n = 0;
            for s in m.sections() {
                let _ = (s.kind.name(), s.kind.to_string());
                n += 1;
            }
            assert_eq!(n, m.section_count());
        }
    }
    let _ = EntryValue::decode(image, entry);
    let _ = entry.name();
}

/// Drives parse, walk, find, every decoder, the builder and the report over
/// `data`; returns the report (for callers that also serialise it).
pub fn exercise(data: &[u8]) -> Result<crate::Report, TableError> {
    if let Ok(text) = core::str::from_utf8(data) {
        if let Ok(g) = Guid::try_parse(text) {
            assert_eq!(g.to_string(), text.to_ascii_lowercase());
        }
    }

    if let Ok(table) = Table::parse(data) {
        let bound = table.entries().size_hint().1.unwrap_or(0);
        let mut walked = Vec::new();
        let mut failed = false;
        for (i, entry) in table.entries().enumerate() {
            assert!(i < bound, "walk longer than its bound");
            match entry {
                Ok(entry) => {
                    decode_all(data, &entry);
                    walked.push(entry);
                }
                Err(e) => {
                    let _ = e.to_string();
                    failed = true;
                }
            }
        }
        assert_eq!(table.validate().is_ok(), !failed);
        for (g, _) in guid::KNOWN {
            let _ = table.find(*g);
        }
        if !failed {
            // Rebuild: the first entry written is the last one walked.
            let entries: Vec<(Guid, &[u8])> =
                walked.iter().rev().map(|e| (e.guid, e.data)).collect();
            let mut copy = data.to_vec();
            let range = place_in_image(&mut copy, &entries);
            assert_eq!(range, Ok(table.start()..table.start() + table.len()));
            assert_eq!(copy, data, "rebuilt table differs from the parsed one");
        }
    }

    let result = report(data);
    match &result {
        Ok(r) => {
            let _ = r.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// xorshift64*: deterministic, no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn built_image(rng: &mut Rng) -> Vec<u8> {
        let len = 64 + rng.below(2048);
        let mut image: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut datas = Vec::new();
        for _ in 0..rng.below(6) {
            let g = guid::KNOWN[rng.below(guid::KNOWN.len())].0;
            let d: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
            datas.push((g, d));
        }
        let entries: Vec<(Guid, &[u8])> = datas.iter().map(|(g, d)| (*g, &d[..])).collect();
        let _ = place_in_image(&mut image, &entries);
        image
    }

    /// Random, mutated and truncated images: nothing panics, and the
    /// round-trip assertions in `exercise` hold.
    #[test]
    fn random_and_mutated_inputs_do_not_panic() {
        let tail = include_bytes!("../tests/data/ovmf-tail.bin");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for round in 0..6000 {
            let mut buf = match round % 3 {
                0 => tail.to_vec(),
                1 => built_image(&mut rng),
                _ => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            };
            // Plant the footer GUID in some random buffers so the walk runs.
            if round % 3 == 2 && buf.len() >= 50 && rng.below(2) == 0 {
                let at = buf.len() - 48;
                buf[at..at + 16].copy_from_slice(guid::FOOTER.as_bytes());
                let total = 18 + rng.below(buf.len() - 49) as u16;
                buf[at - 2..at].copy_from_slice(&total.to_le_bytes());
            }
            // Mutate bytes, mostly near the end where the table lives.
            for _ in 0..rng.below(8) {
                if buf.is_empty() {
                    break;
                }
                let i = if rng.below(4) == 0 {
                    rng.below(buf.len())
                } else {
                    buf.len() - 1 - rng.below(buf.len().min(200))
                };
                buf[i] = rng.next() as u8;
            }
            // Sometimes cut from the front (keeps the end) or the back.
            match rng.below(8) {
                0 => {
                    let cut = rng.below(buf.len() + 1);
                    buf.drain(..cut);
                }
                1 => buf.truncate(rng.below(buf.len() + 1)),
                _ => {}
            }
            if let Ok(r) = exercise(&buf) {
                parsed += 1;
                let _ = serde_json::to_string(&r).unwrap();
            }
        }
        // The corpus must reach deep: most rounds produce a report.
        assert!(parsed > 1500, "only {parsed} inputs parsed");
    }

    #[test]
    fn garbage_is_rejected() {
        let mut rng = Rng(42);
        for len in [0usize, 1, 49, 50, 51, 4096] {
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(exercise(&buf).is_err());
        }
        assert!(exercise(&vec![0xff; 4096]).is_err());
    }
}
