//! A firmware image as the VMM accepts it: size checks and what its GUID table declares.
//!
//! The file comes from the user (`--firmware FILE`) and is parsed defensively: every
//! problem is an error naming the file's defect, never a panic.

use fwtable::{guid, EntryValue, Table, TableError};
use guest_abi::layout;
use helper_abi::descriptor::{EntryMode, HelperDescriptor};
use sev_platform::vmsa::{
    entry::{flat32_vmsa, Flat32Entry},
    VmmType, Vmsa,
};

/// Largest image that fits between the guest-services page and 4 GiB.
pub const MAX_IMAGE_SIZE: u64 = 16 << 20;

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The file is empty.
    #[error("firmware image is empty")]
    Empty,
    /// The size is not a whole number of pages.
    #[error("firmware image is {0} bytes, not a multiple of 4 KiB")]
    Unaligned(usize),
    /// The image would not fit below 4 GiB.
    #[error("firmware image is {0} bytes; at most {max} MiB fit below 4 GiB", max = MAX_IMAGE_SIZE >> 20)]
    TooLarge(usize),
    /// The footer GUID table is missing or broken.
    #[error("firmware GUID table")]
    Table(#[source] TableError),
    /// The table lacks the guest-services descriptor.
    #[error("firmware declares no guest-services page (is it a sevmirror firmware? OVMF cannot run on this VMM)")]
    NoServicesPage,
    /// The migration-helper descriptor is malformed.
    #[error("firmware's migration-helper descriptor: {0}")]
    Helper(helper_abi::descriptor::DescriptorError),
    /// The declared services page overlaps RAM or the image.
    #[error("firmware's guest-services page {0:#x} overlaps RAM or the image")]
    BadServicesPage(u64),
}

/// Why the helper VMSAs of an SEV-ES launch cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HelperVmsaError {
    /// The image could not be read as a firmware.
    #[error(transparent)]
    Firmware(Box<FirmwareError>),
    /// The firmware declares no migration helper.
    #[error("the firmware declares no migration helper: it has no helper VMSAs to measure")]
    NoHelper,
    /// More helper vCPUs than the descriptor provides (or none).
    #[error("{asked} helper vCPUs: the firmware's helper descriptor provides 1 to {max}")]
    Count {
        /// Asked for.
        asked: u16,
        /// Provided.
        max: u16,
    },
}

/// The VMSAs of helper vCPUs `0..helpers` as an SEV-ES launch measures them (mirror
/// LAUNCH_UPDATE_VMSA, after the guest's VMSAs): each starts at the descriptor's entry, in
/// its mode with its segments, on its own stack in the helper region
/// (`HelperDescriptor::entry`), with `vmm`'s reset values elsewhere
/// (`sev_platform::vmsa::entry`).
pub fn helper_vmsas(
    descriptor: &HelperDescriptor,
    helpers: u16,
    vmm: VmmType,
) -> Result<Vec<Vmsa>, HelperVmsaError> {
    if helpers == 0 || helpers > descriptor.max_vcpus {
        return Err(HelperVmsaError::Count {
            asked: helpers,
            max: descriptor.max_vcpus,
        });
    }
    Ok((0..helpers)
        .map(|i| {
            let e = descriptor.entry(i);
            match e.mode {
                EntryMode::Flat32 => flat32_vmsa(
                    &Flat32Entry {
                        rip: e.rip,
                        code_selector: e.code_selector,
                        data_selector: e.data_selector,
                        rsp: e.rsp,
                    },
                    vmm,
                ),
            }
        })
        .collect())
}

/// [`helper_vmsas`] of the helper descriptor in a firmware image (`measure --helpers`,
/// `owner verify --helpers`).
pub fn image_helper_vmsas(
    image: &[u8],
    helpers: u16,
    vmm: VmmType,
) -> Result<Vec<Vmsa>, HelperVmsaError> {
    let fw = Firmware::load(image.to_vec()).map_err(|e| HelperVmsaError::Firmware(Box::new(e)))?;
    let d = fw.helper().ok_or(HelperVmsaError::NoHelper)?;
    helper_vmsas(d, helpers, vmm)
}

/// A validated firmware image.
#[derive(Clone)]
pub struct Firmware {
    image: Vec<u8>,
    services_gpa: u64,
    secret_area: Option<(u64, u64)>,
    hashes_area: Option<(u64, u64)>,
    helper: Option<HelperDescriptor>,
}

impl Firmware {
    /// Checks `image` and reads what the VMM needs from its table.
    pub fn load(image: Vec<u8>) -> Result<Firmware, FirmwareError> {
        if image.is_empty() {
            return Err(FirmwareError::Empty);
        }
        if !(image.len() as u64).is_multiple_of(layout::PAGE_SIZE) {
            return Err(FirmwareError::Unaligned(image.len()));
        }
        if image.len() as u64 > MAX_IMAGE_SIZE {
            return Err(FirmwareError::TooLarge(image.len()));
        }
        let table = Table::parse(&image).map_err(FirmwareError::Table)?;
        let entry = table
            .find(guid::SERVICES_DESCRIPTOR)
            .map_err(FirmwareError::Table)?
            .ok_or(FirmwareError::NoServicesPage)?;
        let services_gpa = match EntryValue::decode(&image, &entry).map_err(FirmwareError::Table)? {
            EntryValue::Services(d) => d.services_gpa,
            _ => return Err(FirmwareError::NoServicesPage),
        };
        let rom_base = (1u64 << 32) - image.len() as u64;
        if services_gpa < layout::LOW_RAM_LIMIT || services_gpa + layout::PAGE_SIZE > rom_base {
            return Err(FirmwareError::BadServicesPage(services_gpa));
        }
        let secret_area = match table
            .find(guid::SEV_SECRET_BLOCK)
            .map_err(FirmwareError::Table)?
        {
            Some(entry) => {
                match EntryValue::decode(&image, &entry).map_err(FirmwareError::Table)? {
                    EntryValue::SevSecretBlock(a) if a.size > 0 => {
                        Some((u64::from(a.base), u64::from(a.size)))
                    }
                    _ => None,
                }
            }
            None => None,
        };
        // The SEV hashes table page (measured direct boot); an empty entry (Debian's
        // OVMF.fd has one) or one too small for the table means the firmware cannot
        // check a kernel.
        let hashes_area = match table
            .find(guid::SEV_HASH_TABLE)
            .map_err(FirmwareError::Table)?
        {
            Some(entry) => {
                match EntryValue::decode(&image, &entry).map_err(FirmwareError::Table)? {
                    EntryValue::SevHashTable(a)
                        if a.base != 0 && a.size as usize >= os_loader::hashes::PADDED_SIZE =>
                    {
                        Some((u64::from(a.base), u64::from(a.size)))
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let helper = match table
            .find(guid::MIRROR_HELPER_DESCRIPTOR)
            .map_err(FirmwareError::Table)?
        {
            Some(entry) => {
                Some(HelperDescriptor::decode(entry.data).map_err(FirmwareError::Helper)?)
            }
            None => None,
        };
        Ok(Firmware {
            image,
            services_gpa,
            secret_area,
            hashes_area,
            helper,
        })
    }

    /// The image bytes.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// The SEV secret area (base, size) the image declares, if any.
    pub fn secret_area(&self) -> Option<(u64, u64)> {
        self.secret_area
    }

    /// The SEV hashes table area (base, size) the image declares, if it can check a
    /// directly booted kernel: present, non-empty, room for the padded table.
    pub fn hashes_area(&self) -> Option<(u64, u64)> {
        self.hashes_area
    }

    /// The migration helper the image declares, if any.
    pub fn helper(&self) -> Option<&HelperDescriptor> {
        self.helper.as_ref()
    }

    /// Guest-physical address of the guest-services page.
    pub fn services_gpa(&self) -> u64 {
        self.services_gpa
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let cases: [(Vec<u8>, &str); 4] = [
            (vec![], "empty"),
            (vec![0; 4095], "multiple of 4 KiB"),
            (vec![0; 17 << 20], "16 MiB"),
            (vec![0; 1 << 20], "GUID table"),
        ];
        for (image, want) in cases {
            let msg = Firmware::load(image).err().unwrap().to_string();
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn an_image_without_a_services_descriptor_is_not_ours() {
        let mut image = vec![0u8; 64 << 10];
        let data = fwtable::SevArea { base: 0, size: 0 }.encode();
        fwtable::place_in_image(&mut image, &[(guid::SEV_SECRET_BLOCK, &data)]).unwrap();
        assert!(matches!(
            Firmware::load(image),
            Err(FirmwareError::NoServicesPage)
        ));
    }

    #[test]
    fn the_embedded_image_declares_its_services_page() {
        let fw = Firmware::load(firmware_image::IMAGE.to_vec()).unwrap();
        assert_eq!(fw.services_gpa(), layout::SERVICES_GPA);
        assert_eq!(
            fw.helper().map(|h| h.region_base),
            Some(layout::HELPER_REGION_BASE)
        );
        assert_eq!(
            fw.secret_area(),
            Some((layout::SEV_SECRET_BASE, layout::SEV_SECRET_SIZE))
        );
        assert_eq!(
            fw.hashes_area(),
            Some((layout::SEV_HASH_TABLE_BASE, layout::SEV_HASH_TABLE_SIZE))
        );
    }

    #[test]
    fn an_empty_hashes_entry_means_no_hashes_area() {
        // As Debian's OVMF.fd declares it: the entry is there, base and size 0.
        let services = fwtable::ServicesDescriptor {
            flags: 0,
            services_gpa: layout::SERVICES_GPA,
        }
        .encode();
        let empty = fwtable::SevArea { base: 0, size: 0 }.encode();
        let mut image = vec![0u8; 64 << 10];
        fwtable::place_in_image(
            &mut image,
            &[
                (guid::SERVICES_DESCRIPTOR, &services),
                (guid::SEV_HASH_TABLE, &empty),
            ],
        )
        .unwrap();
        assert_eq!(Firmware::load(image).unwrap().hashes_area(), None);
    }
}
