//! The VM as the migration engine sees it: memory through the host view and dirty log
//! (read on the migration thread), everything that touches vCPUs through requests to
//! the machine loop, which owns the VM.

use super::{MachineReply, MachineRequest};
use crate::machine::Input;
use helper_abi::PAGE_SIZE;
use migration::engine::{LocalGuest, SourceVm, TargetVm};
use std::{
    sync::mpsc::{self, Sender},
    time::Duration,
};
use vmm::{
    memory::{HostView, Visibility},
    vm::DirtyTracker,
};

/// How long the machine loop may take to pause, save or load the VM.
const MACHINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The migration thread's line to the machine loop.
#[derive(Clone)]
pub struct MachineLink {
    tx: Sender<Input>,
}

impl MachineLink {
    /// A link over the machine's inbox.
    pub fn new(tx: Sender<Input>) -> MachineLink {
        MachineLink { tx }
    }

    /// Asks the machine loop to do `request` and waits for its answer.
    pub fn ask(&self, request: MachineRequest) -> Result<MachineReply, String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Input::Migration(request, reply))
            .map_err(|_| "the VM has stopped".to_string())?;
        answer
            .recv_timeout(MACHINE_TIMEOUT)
            .map_err(|_| "the VM did not answer in time".to_string())?
    }
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

    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        self.view
            .read(gpa, out)
            .map_err(|e| format!("cannot read guest page {gpa:#x}: {e}"))
    }

    fn start_dirty_log(&mut self) -> Result<(), String> {
        self.tracker
            .start()
            .map_err(|e| format!("cannot start dirty logging: {e}"))?;
        self.logging = true;
        // Pages written before logging started are in the first round anyway; clear
        // whatever KVM recorded so the first look only shows writes from now on.
        self.tracker
            .take()
            .map(drop)
            .map_err(|e| format!("cannot read the dirty log: {e}"))
    }

    fn take_dirty(&mut self) -> Result<Vec<u64>, String> {
        let mut dirty = self
            .tracker
            .take()
            .map_err(|e| format!("cannot read the dirty log: {e}"))?;
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

    fn pause(&mut self) -> Result<(), String> {
        self.link.ask(MachineRequest::Pause).map(drop)
    }

    fn resume(&mut self) {
        if let Err(e) = self.link.ask(MachineRequest::Resume) {
            log::error!("cannot resume the guest after the failed migration: {e}");
        }
    }

    fn device_state(&mut self) -> Result<Vec<u8>, String> {
        match self.link.ask(MachineRequest::SaveState)? {
            MachineReply::State { vcpus, device } => {
                self.vcpus = Some(vcpus);
                Ok(device)
            }
            _ => Err("the VM returned no state".into()),
        }
    }

    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, String> {
        match self.vcpus.take() {
            Some(v) => Ok(v),
            None => {
                self.device_state()?;
                self.vcpus
                    .take()
                    .ok_or_else(|| "the VM returned no vCPU state".into())
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

    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), String> {
        let convert = |gpa: u64, len: u64, v: Visibility| {
            self.view
                .convert(gpa, len, v)
                .map_err(|e| format!("cannot record {gpa:#x}+{len:#x} as {v:?}: {e}"))
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

    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        let zero = [0u8; PAGE_SIZE];
        self.view
            .write(gpa, data.unwrap_or(&zero))
            .map_err(|e| format!("cannot write guest page {gpa:#x}: {e}"))
    }

    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), String> {
        self.link
            .ask(MachineRequest::Run { vcpus, device })
            .map(drop)
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
