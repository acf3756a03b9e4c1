//! Replays every seed of the `fwtable` fuzz target (`fuzz/seeds/fwtable/`)
//! through the code path the target runs, `fwtable::fuzzing::exercise`, plus
//! the JSON serialisation `sevmirror inspect --json` does. Crashes found by
//! fuzzing are added to that folder, so this test keeps them fixed.
//!
//! `sevmirror-table.bin` is also a golden file for the builder; regenerate the
//! generated seeds with `FWTABLE_BLESS=1 cargo test -p fwtable --test fuzz_seeds`.

use std::path::{Path, PathBuf};

use fwtable::{
    encode_sev_metadata, guid, place_in_image, MetadataOffset, SectionType, ServicesDescriptor,
    SevArea, SevEsResetBlock, SevSection, Table,
};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/fwtable")
}

/// An 8 KiB image shaped like our firmware's: SEV entries, an ASEV block, the
/// guest-services descriptor and a (version 1, raw) mirror helper descriptor.
fn sevmirror_image() -> Vec<u8> {
    let mut image = vec![0u8; 0x2000];
    let asev_from_end = 0x400usize;
    let at = image.len() - asev_from_end;
    encode_sev_metadata(
        &[
            SevSection {
                base: 0x80_0000,
                size: 0x1000,
                kind: SectionType::SNP_SEC_MEM,
            },
            SevSection {
                base: 0x80_1000,
                size: 0x1000,
                kind: SectionType::SNP_SECRETS,
            },
            SevSection {
                base: 0x80_2000,
                size: 0x1000,
                kind: SectionType::CPUID,
            },
        ],
        &mut image[at..],
    )
    .unwrap();
    let meta = MetadataOffset(asev_from_end as u32).encode();
    let hash = SevArea {
        base: 0x80_3000,
        size: 0x400,
    }
    .encode();
    let secret = SevArea {
        base: 0x80_4000,
        size: 0x1000,
    }
    .encode();
    let reset = SevEsResetBlock {
        ip: 0xf000,
        cs_base: 0xffff_0000,
    }
    .encode()
    .unwrap();
    let services = ServicesDescriptor {
        flags: 0,
        services_gpa: 0xfeb0_0000,
    }
    .encode();
    let helper = [1u8, 0, 0, 0, 0, 0x10, 0x90, 0, 0, 0, 0, 0];
    place_in_image(
        &mut image,
        &[
            (guid::MIRROR_HELPER_DESCRIPTOR, &helper[..]),
            (guid::SERVICES_DESCRIPTOR, &services[..]),
            (guid::SEV_METADATA, &meta[..]),
            (guid::SEV_HASH_TABLE, &hash[..]),
            (guid::SEV_SECRET_BLOCK, &secret[..]),
            (guid::SEV_ES_RESET_BLOCK, &reset[..]),
        ],
    )
    .unwrap();
    image
}

/// Seeds derived from code; `FWTABLE_BLESS=1` rewrites them.
fn generated_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tail = include_bytes!("data/ovmf-tail.bin").to_vec();
    let built = sevmirror_image();
    let n = built.len();
    // Entry nearest the footer claims length 0.
    let mut zero_len = built.clone();
    zero_len[n - 50 - 18..n - 50 - 16].copy_from_slice(&0u16.to_le_bytes());
    // Entry nearest the footer claims to reach past the table start.
    let mut overlap = built.clone();
    overlap[n - 50 - 18..n - 50 - 16].copy_from_slice(&0x1000u16.to_le_bytes());
    // ASEV count far larger than the image.
    let mut asev_count = built.clone();
    asev_count[n - 0x400 + 12..n - 0x400 + 16].copy_from_slice(&0x0fff_ffffu32.to_le_bytes());
    vec![
        ("empty.bin", Vec::new()),
        ("ovmf-tail.bin", tail.clone()),
        (
            "ovmf-tail-truncated-49.bin",
            tail[tail.len() - 49..].to_vec(),
        ),
        ("sevmirror-table.bin", built),
        ("entry-len-zero.bin", zero_len),
        ("entry-overlaps-start.bin", overlap),
        ("asev-count-too-large.bin", asev_count),
    ]
}

#[test]
fn generated_seeds_are_current() {
    let dir = seeds_dir();
    let bless = std::env::var_os("FWTABLE_BLESS").is_some();
    for (name, bytes) in generated_seeds() {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (FWTABLE_BLESS=1 regenerates)", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from what the code builds (FWTABLE_BLESS=1 regenerates)",
            path.display()
        );
    }
}

#[test]
fn sevmirror_seed_decodes() {
    let image = sevmirror_image();
    let table = Table::parse(&image).unwrap();
    assert_eq!(table.validate(), Ok(6));
    let services = table.find(guid::SERVICES_DESCRIPTOR).unwrap().unwrap();
    assert_eq!(
        ServicesDescriptor::decode(services.data)
            .unwrap()
            .services_gpa,
        0xfeb0_0000
    );
    let r = fwtable::report(&image).unwrap();
    assert!(r
        .entries
        .iter()
        .all(|e| !matches!(e.decoded, fwtable::Decoded::Invalid { .. })));
}

#[test]
fn replay_all_seeds() {
    let dir = seeds_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(
        paths.len() >= generated_seeds().len(),
        "too few seeds in {}",
        dir.display()
    );
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let result = fwtable::fuzzing::exercise(&data);
        if let Ok(report) = &result {
            serde_json::to_string_pretty(report).unwrap();
        }
        println!(
            "{}: {}",
            path.file_name().unwrap().to_string_lossy(),
            match &result {
                Ok(r) => format!("{} entries", r.entries.len()),
                Err(e) => e.to_string(),
            }
        );
    }
}
