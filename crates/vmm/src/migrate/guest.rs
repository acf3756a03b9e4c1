//! The VM as the migration engine sees it: memory through the host view and dirty log
//! (read on the migration thread), everything that touches vCPUs through requests to
//! the controller, which owns the VM.

use super::{MachineError, MachineLink, MachineReply, MachineRequest, RecoveryFiles};
use crate::{
    kvm::KvmError,
    memory::{HostView, MemoryError},
    vm::DirtyTracker,
};
use helper_abi::{record::COMMIT_RECORD_SIZE, PAGE_SIZE};
use migration::{
    engine::{LocalGuest, PartError, SourceVm, TargetVm},
    frames::AbortToken,
    recovery::{AbortTokenFile, CommitFile, TokenOrigin},
};
use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

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
    /// The guest's verified shared list could not be applied.
    #[error("cannot apply the guest's shared list")]
    SharedList(#[source] MemoryError),
    /// The commit record could not be kept in its file.
    #[error("cannot keep the commit record in {path}")]
    SaveCommit {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The abort token could not be kept in its file.
    #[error("cannot keep the abort token in {path}")]
    SaveToken {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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

/// Writes `bytes` to `path` durably: a temporary file beside it, synced, renamed over
/// it, the directory synced. A reader never sees half a file, and after this returns
/// the file survives a crash of this host.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The source VM.
pub struct VmSource {
    view: HostView,
    tracker: DirtyTracker,
    layout: Layout,
    link: MachineLink,
    logging: bool,
    vcpus: Option<Vec<Vec<u8>>>,
    files: Arc<Mutex<RecoveryFiles>>,
}

impl VmSource {
    /// The source side of a VM; its commit record goes to `files`' commit file.
    pub fn new(
        view: HostView,
        tracker: DirtyTracker,
        layout: Layout,
        link: MachineLink,
        files: Arc<Mutex<RecoveryFiles>>,
    ) -> Self {
        VmSource {
            view,
            tracker,
            layout,
            link,
            logging: false,
            vcpus: None,
            files,
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

    fn save_commit(
        &mut self,
        transcript: &[u8; 32],
        record: &[u8; COMMIT_RECORD_SIZE],
    ) -> Result<(), PartError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let path = files.commit_path(transcript);
        let file = CommitFile {
            transcript: *transcript,
            record: *record,
        };
        write_durably(&path, &file.encode()).map_err(|source| VmPartError::SaveCommit {
            path: path.clone(),
            source,
        })?;
        log::info!("commit record kept in {}", path.display());
        files.commit = Some(path);
        Ok(())
    }
}

/// The target VM (made only by the incoming migration, for a VM that receives: nothing
/// else may apply a shared list to a VM).
pub struct VmTarget {
    view: HostView,
    layout: Layout,
    local: LocalGuest,
    link: MachineLink,
    files: Arc<Mutex<RecoveryFiles>>,
}

impl VmTarget {
    /// The target side of a VM that describes itself as `local`; an abort token goes to
    /// `files`' token file.
    pub(crate) fn new(
        view: HostView,
        layout: Layout,
        local: LocalGuest,
        link: MachineLink,
        files: Arc<Mutex<RecoveryFiles>>,
    ) -> Self {
        VmTarget {
            view,
            layout,
            local,
            link,
            files,
        }
    }
}

impl TargetVm for VmTarget {
    fn local(&self) -> LocalGuest {
        self.local.clone()
    }

    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), PartError> {
        // The helper region keeps the target's own states (its mailboxes are shared).
        self.view
            .apply_guest_list(&self.layout.migratable_runs(), ranges)
            .map_err(|e| VmPartError::SharedList(e).into())
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

    fn keep_abort_token(
        &mut self,
        transcript: &[u8; 32],
        token: &AbortToken,
    ) -> Result<(), PartError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let path = files.token_path(transcript);
        let file = AbortTokenFile {
            origin: TokenOrigin::Target,
            transcript: *transcript,
            tag: token.tag,
        };
        write_durably(&path, &file.encode()).map_err(|source| VmPartError::SaveToken {
            path: path.clone(),
            source,
        })?;
        log::warn!(
            "this target gave the session up for good; its abort token is in {} (it releases a source that committed)",
            path.display()
        );
        files.abort_token = Some(path);
        Ok(())
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
