//! The real OVMF: Debian's `ovmf` 2022.11 package (/usr/share/ovmf/OVMF.fd)
//! when installed, and unconditionally its last 4 KiB kept in
//! `tests/data/ovmf-tail.bin` (edk2 output, BSD-2-Clause-Patent). The table
//! and both metadata blocks (0x52c and 0x840 bytes from the end) lie inside
//! that tail, and every offset in the format counts from the end of the
//! image, so the tail decodes to the same values.

use fwtable::{
    guid, report, Decoded, EntryValue, MetadataOffset, SectionType, SevArea, SevEsResetBlock,
    SevMetadata, SevSection, Table, TdxMetadata, TdxSection, TdxSectionType,
};

const OVMF_FD: &str = "/usr/share/ovmf/OVMF.fd";
const TAIL: &[u8] = include_bytes!("data/ovmf-tail.bin");

const ASEV_SECTIONS: [SevSection; 5] = [
    SevSection {
        base: 0x80_0000,
        size: 0x9000,
        kind: SectionType::SNP_SEC_MEM,
    },
    SevSection {
        base: 0x80_a000,
        size: 0x3000,
        kind: SectionType::SNP_SEC_MEM,
    },
    SevSection {
        base: 0x80_d000,
        size: 0x1000,
        kind: SectionType::SNP_SECRETS,
    },
    SevSection {
        base: 0x80_e000,
        size: 0x1000,
        kind: SectionType::CPUID,
    },
    SevSection {
        base: 0x80_f000,
        size: 0x1_1000,
        kind: SectionType::SNP_SEC_MEM,
    },
];

/// Everything we know about the Debian 2022.11 OVMF.fd table.
fn check_ovmf(image: &[u8]) {
    let n = image.len();
    let table = Table::parse(image).unwrap();
    assert_eq!(table.len(), 136);
    assert_eq!(table.start(), n - 32 - 136);

    let entries: Vec<_> = table.entries().map(Result::unwrap).collect();
    let guids: Vec<_> = entries.iter().map(|e| e.guid).collect();
    assert_eq!(
        guids,
        [
            guid::SEV_ES_RESET_BLOCK,
            guid::SEV_SECRET_BLOCK,
            guid::SEV_HASH_TABLE,
            guid::SEV_METADATA,
            guid::TDX_METADATA,
        ]
    );
    assert_eq!(entries[0].offset, n - 0x48);

    let reset = SevEsResetBlock::decode(entries[0].data).unwrap();
    assert_eq!(
        reset,
        SevEsResetBlock {
            ip: 0xb004,
            cs_base: 0x80_0000
        }
    );
    assert_eq!(reset.reset_address(), 0x0080_b004);
    let zero = SevArea { base: 0, size: 0 };
    assert_eq!(SevArea::decode(entries[1].data), Ok(zero));
    assert_eq!(SevArea::decode(entries[2].data), Ok(zero));

    let sev_off = MetadataOffset::decode(entries[3].data).unwrap();
    assert_eq!(sev_off, MetadataOffset(0x52c));
    let sev = SevMetadata::decode(image, sev_off).unwrap();
    assert_eq!(sev.offset, n - 0x52c);
    assert_eq!(sev.version, 1);
    assert!(sev.sections().eq(ASEV_SECTIONS));

    let tdx_off = MetadataOffset::decode(entries[4].data).unwrap();
    assert_eq!(tdx_off, MetadataOffset(0x840));
    let tdx = TdxMetadata::decode(image, tdx_off).unwrap();
    assert_eq!(tdx.offset, n - 0x840);
    // edk2 puts the TDVF GUID e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae right
    // before the descriptor; the offset skips it.
    assert_eq!(
        fwtable::Guid::from_bytes(image[n - 0x850..n - 0x840].try_into().unwrap()).to_string(),
        "e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae"
    );
    let sections: Vec<TdxSection> = tdx.sections().collect();
    assert_eq!(sections.len(), 6);
    assert_eq!(
        sections[0],
        TdxSection {
            data_offset: 0x2_0000,
            raw_data_size: 0x1e_0000,
            memory_address: 0xffe2_0000,
            memory_size: 0x1e_0000,
            kind: TdxSectionType::BFV,
            attributes: 1,
        }
    );
    assert_eq!(sections[1].kind, TdxSectionType::CFV);
    assert_eq!(sections[1].memory_address, 0xffe0_0000);
    assert_eq!(
        sections.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [
            TdxSectionType::BFV,
            TdxSectionType::CFV,
            TdxSectionType::TEMP_MEM,
            TdxSectionType::TEMP_MEM,
            TdxSectionType::TD_HOB,
            TdxSectionType::TEMP_MEM,
        ]
    );

    for e in &entries {
        assert!(
            !matches!(EntryValue::decode(image, e).unwrap(), EntryValue::Raw(_)),
            "{}",
            e.guid
        );
    }

    let r = report(image).unwrap();
    assert_eq!(r.entries.len(), 5);
    assert!(r
        .entries
        .iter()
        .all(|e| !matches!(e.decoded, Decoded::Invalid { .. } | Decoded::Raw { .. })));
    assert_eq!(
        r.entries[0].decoded,
        Decoded::SevEsResetBlock {
            ip: 0xb004,
            cs_base: 0x80_0000
        }
    );
}

#[test]
fn ovmf_tail_golden() {
    assert_eq!(TAIL.len(), 0x1000);
    check_ovmf(TAIL);
}

#[test]
fn installed_ovmf_fd() {
    let image = match std::fs::read(OVMF_FD) {
        Ok(image) => image,
        Err(e) => {
            eprintln!(
                "SKIPPED: {OVMF_FD} not installed (apt-get install ovmf): {e}\n\
                 (the golden tail in tests/data/ovmf-tail.bin still ran)"
            );
            return;
        }
    };
    // The report of the full image, for the record (`--nocapture` shows it).
    let r = report(&image).unwrap();
    println!("{r}");
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    if image.len() != 0x20_0000 || image[image.len() - 0x1000..] != *TAIL {
        // A different OVMF build: parse it and decode every entry, but the
        // golden values only hold for Debian's 2022.11 image.
        eprintln!("note: {OVMF_FD} is not the Debian 2022.11 build; checking structure only");
        let table = Table::parse(&image).unwrap();
        for e in table.entries() {
            let e = e.unwrap();
            EntryValue::decode(&image, &e).unwrap();
        }
        return;
    }
    check_ovmf(&image);
}
