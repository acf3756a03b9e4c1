//! The VM as the migration engine sees it: memory through the host view and dirty log
//! (read on the migration thread), everything that touches vCPUs through requests to
//! the controller, which owns the VM.

use super::{MachineError, MachineLink, MachineReply, MachineRequest};
use crate::{
    kvm::KvmError,
    memory::{HostView, MemoryError, Visibility},
    vm::DirtyTracker,
};
use helper_abi::PAGE_SIZE;
use migration::engine::{LocalGuest, PartError, SourceVm, TargetVm};

/// Why the VM could not do its part of a migration.
#[derive(Debug, thiserror::Error)]
pub enum VmPartError {
    /// A guest page could not be read through the host view.
    #[error("cannot read guest page {gpa:#x}")]
    ReadPage {
        /// The page.
        gpa: u64,
        /// The view's error.
        #[source]
        source: MemoryError,
    },
    /// A guest page could not be written through the host view.
    #[error("cannot write guest page {gpa:#x}")]
    WritePage {
        /// The page.
        gpa: u64,
        /// The view's error.
        #[source]
        source: MemoryError,
    },
    /// A range could not be recorded as private or shared.
    #[error("cannot record {gpa:#x}+{len:#x} as {visibility:?}")]
    Convert {
        /// First byte.
        gpa: u64,
        /// Length.
        len: u64,
        /// What it was to become.
        visibility: Visibility,
        /// The view's error.
        #[source]
        source: MemoryError,
    },
    /// Dirty logging could not be started.
    #[error("cannot start dirty logging")]
    StartDirtyLog(#[source] KvmError),
    /// The dirty log could not be read.
    #[error("cannot read the dirty log")]
    DirtyLog(#[source] KvmError),
    /// The controller refused or failed a request.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The controller answered with the wrong kind of reply.
    #[error("the VM answered {0} with another kind of reply")]
    UnexpectedReply(&'static str),
}

/// Guest RAM, page aligned: (base, size) runs.
#[derive(Clone, Debug)]
pub struct Layout {
    /// RAM regions.
    pub ram: Vec<(u64, u64)>,
    /// The helper region, never migrated (SEV).
    pub helper_region: Option<(u64, u64)>,
}

impl Layout {
    fn in_helper_region(&self, gpa: u64) -> bool {
        self.helper_region
            .is_some_and(|(base, size)| gpa >= base && gpa - base < size)
    }

    /// Every page to migrate, ascending.
    pub fn pages(&self) -> Vec<u64> {
        self.ram
            .iter()
            .flat_map(|&(base, size)| {
                (0..size / PAGE_SIZE as u64).map(move |i| base + i * PAGE_SIZE as u64)
            })
            .filter(|&gpa| !self.in_helper_region(gpa))
            .collect()
    }

    /// The RAM outside the helper region, as (base, size) runs.
    fn migratable_runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        for &(base, size) in &self.ram {
            let end = base + size;
            match self.helper_region {
                Some((h, hsize)) if h < end && base < h + hsize => {
                    if base < h {
                        runs.push((base, h - base));
                    }
                    if h + hsize < end {
                        runs.push((h + hsize, end - (h + hsize)));
                    }
                }
                _ => runs.push((base, size)),
            }
        }
        runs
    }
}

/// The source VM.
pub struct VmSource {
    view: HostView,
    tracker: DirtyTracker,
    layout: Layout,
    link: MachineLink,
    logging: bool,
    vcpus: Option<Vec<Vec<u8>>>,
}

impl VmSource {
    /// The source side of a VM.
    pub fn new(view: HostView, tracker: DirtyTracker, layout: Layout, link: MachineLink) -> Self {
        VmSource {
            view,
            tracker,
            layout,
            link,
            logging: false,
            vcpus: None,
        }
    }
}

impl SourceVm for VmSource {
    fn pages(&self) -> Vec<u64> {
        self.layout.pages()
    }

    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), PartError> {
        self.view
            .read(gpa, out)
            .map_err(|source| VmPartError::ReadPage { gpa, source }.into())
    }

    fn start_dirty_log(&mut self) -> Result<(), PartError> {
        self.tracker.start().map_err(VmPartError::StartDirtyLog)?;
        self.logging = true;
        // Pages written before logging started are in the first round anyway; clear
        // whatever KVM recorded so the first look only shows writes from now on.
        self.tracker
            .take()
            .map(drop)
            .map_err(|e| VmPartError::DirtyLog(e).into())
    }

    fn take_dirty(&mut self) -> Result<Vec<u64>, PartError> {
        let mut dirty = self.tracker.take().map_err(VmPartError::DirtyLog)?;
        dirty.retain(|&gpa| !self.layout.in_helper_region(gpa));
        Ok(dirty)
    }

    fn stop_dirty_log(&mut self) {
        if std::mem::take(&mut self.logging) {
            if let Err(e) = self.tracker.stop() {
                log::warn!("cannot stop dirty logging: {e}");
            }
        }
    }

    fn pause(&mut self) -> Result<(), PartError> {
        self.link
            .ask(MachineRequest::Pause)
            .map(drop)
            .map_err(|e| VmPartError::Machine(e).into())
    }

    fn resume(&mut self) {
        if let Err(e) = self.link.ask(MachineRequest::Resume) {
            log::error!("cannot resume the guest after the failed migration: {e}");
        }
    }

    fn device_state(&mut self) -> Result<Vec<u8>, PartError> {
        match self
            .link
            .ask(MachineRequest::SaveState)
            .map_err(VmPartError::Machine)?
        {
            MachineReply::State { vcpus, device } => {
                self.vcpus = Some(vcpus);
                Ok(device)
            }
            _ => Err(VmPartError::UnexpectedReply("save-state").into()),
        }
    }

    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, PartError> {
        match self.vcpus.take() {
            Some(v) => Ok(v),
            None => {
                self.device_state()?;
                self.vcpus
                    .take()
                    .ok_or_else(|| VmPartError::UnexpectedReply("save-state").into())
            }
        }
    }
}

/// The target VM.
pub struct VmTarget {
    view: HostView,
    layout: Layout,
    local: LocalGuest,
    link: MachineLink,
}

impl VmTarget {
    /// The target side of a VM that describes itself as `local`.
    pub fn new(view: HostView, layout: Layout, local: LocalGuest, link: MachineLink) -> Self {
        VmTarget {
            view,
            layout,
            local,
            link,
        }
    }
}

impl TargetVm for VmTarget {
    fn local(&self) -> LocalGuest {
        self.local.clone()
    }

    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), PartError> {
        let convert = |gpa: u64, len: u64, visibility: Visibility| {
            self.view
                .convert(gpa, len, visibility)
                .map_err(|source| VmPartError::Convert {
                    gpa,
                    len,
                    visibility,
                    source,
                })
        };
        // The helper region keeps the target's own (its mailboxes are shared).
        for (base, size) in self.layout.migratable_runs() {
            convert(base, size, Visibility::Private)?;
        }
        for &(gpa, pages) in ranges {
            convert(gpa, pages * PAGE_SIZE as u64, Visibility::Shared)?;
        }
        Ok(())
    }

    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), PartError> {
        let zero = [0u8; PAGE_SIZE];
        self.view
            .write(gpa, data.unwrap_or(&zero))
            .map_err(|source| VmPartError::WritePage { gpa, source }.into())
    }

    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), PartError> {
        self.link
            .ask(MachineRequest::Run { vcpus, device })
            .map(drop)
            .map_err(|e| VmPartError::Machine(e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_region_is_never_listed_and_splits_the_private_runs() {
        let layout = Layout {
            ram: vec![(0, 16 * 4096), (1 << 32, 4 * 4096)],
            helper_region: Some((4 * 4096, 2 * 4096)),
        };
        let pages = layout.pages();
        assert_eq!(pages.len(), 18);
        assert!(!pages.contains(&(4 * 4096)) && !pages.contains(&(5 * 4096)));
        assert!(pages.contains(&(6 * 4096)) && pages.contains(&((1 << 32) + 3 * 4096)));
        assert_eq!(
            layout.migratable_runs(),
            vec![(0, 4 * 4096), (6 * 4096, 10 * 4096), (1 << 32, 4 * 4096)]
        );
    }
}
