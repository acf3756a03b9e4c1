//! Building a controller: the launch sequence every program that runs a VM shares — the
//! VM, a directly booted kernel's fw_cfg items, an SEV launch up to LAUNCH_MEASURE (the
//! SEV hashes table of that kernel measured after the firmware; the owner may then attest
//! and inject secrets), and, for a migration target, the listener and its prefault.

use super::{Controller, Incoming, State};
use crate::{
    sev::DEFAULT_VCPU_TYPE,
    vm::{VmConfig, VmError},
    DirectBoot, KvmSystem, Vm,
};
use guest_abi::fwcfg;
use migration::cpu::Feature;
use sev_platform::{vmsa::VcpuType, Policy};
use std::{net::TcpListener, path::PathBuf, sync::Arc};

/// Why a controller could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The VM could not be built.
    #[error(transparent)]
    Vm(VmError),
    /// LAUNCH_START, LAUNCH_UPDATE_VMSA or LAUNCH_MEASURE failed.
    #[error("SEV launch")]
    SevLaunch(#[source] VmError),
    /// The SEV-ES mirror and its measured helper VMSAs could not be made.
    #[error("SEV-ES launch of the mirror's helper vCPUs")]
    EsMirror(#[source] crate::mirror::MirrorError),
    /// An SEV-ES migration target without helper vCPUs.
    #[error("an SEV-ES migration target needs helper vCPUs measured at its launch, as many as the source's (--helpers N)")]
    EsIncomingWithoutHelpers,
    /// The incoming migration's thread could not start.
    #[error("cannot start the incoming migration thread")]
    Incoming(#[source] std::io::Error),
}

/// The launch sequence: what to build, then [`MachineBuilder::build`].
pub struct MachineBuilder {
    config: VmConfig,
    helpers: u16,
    incoming: Option<TcpListener>,
    state_dir: Option<PathBuf>,
    vcpu_type: VcpuType,
    kernel: Option<DirectBoot>,
    cpu_hide: Vec<Feature>,
}

impl MachineBuilder {
    /// A VM of `config`, with no mirror helper and no incoming migration.
    pub fn new(config: VmConfig) -> MachineBuilder {
        MachineBuilder {
            config,
            helpers: 0,
            incoming: None,
            vcpu_type: VcpuType::from_name(DEFAULT_VCPU_TYPE)
                .expect("the default vCPU type is one of VCPU_TYPES"),
            state_dir: None,
            kernel: None,
            cpu_hide: Vec::new(),
        }
    }

    /// Boots `boot`'s kernel, initrd and command line directly: the firmware gets them
    /// through fw_cfg as QEMU passes `-kernel/-initrd/-append`, and an SEV launch measures
    /// the SEV hashes table of the three right after the firmware (`crate::direct_boot`).
    pub fn kernel(mut self, boot: DirectBoot) -> MachineBuilder {
        self.kernel = Some(boot);
        self
    }

    /// CPU features the guest is not given (`run --cpu-hide`), so it can migrate to hosts
    /// whose CPUs lack them: a target refuses a guest given a feature its own CPU lacks.
    pub fn hide_cpu_features(mut self, features: Vec<Feature>) -> MachineBuilder {
        self.cpu_hide = features;
        self
    }

    /// The vCPU model of an SEV-ES launch (its signature is in every measured VMSA;
    /// default [`DEFAULT_VCPU_TYPE`]). Ignored for other guests.
    pub fn vcpu_type(mut self, vcpu_type: VcpuType) -> MachineBuilder {
        self.vcpu_type = vcpu_type;
        self
    }

    /// Where migration recovery files go (a source's commit file, a target's abort
    /// token) unless a command names a file; the working directory by default.
    pub fn state_dir(mut self, dir: PathBuf) -> MachineBuilder {
        self.state_dir = Some(dir);
        self
    }

    /// Starts `helpers` helper vCPUs in the mirror of an SEV guest, once its firmware has
    /// the migration helper ready (0: no mirror).
    pub fn helpers(mut self, helpers: u16) -> MachineBuilder {
        self.helpers = helpers;
        self
    }

    /// Makes the VM a migration target that waits on `listener` (bound by the caller, so
    /// a busy port is an error before anything is built). Its firmware starts only its
    /// helper and parks.
    pub fn incoming(mut self, listener: TcpListener) -> MachineBuilder {
        self.incoming = Some(listener);
        self
    }

    /// Builds the VM, launches an SEV guest up to LAUNCH_MEASURE (an SEV-ES guest with
    /// every vCPU's VMSA measured after the firmware), and starts waiting for an incoming
    /// migration if asked. Nothing runs yet: [`Controller::start`] (or the `cont` command)
    /// starts the guest, then [`Controller::run`].
    pub fn build(self, kvm: Arc<KvmSystem>) -> Result<Controller, LaunchError> {
        let MachineBuilder {
            mut config,
            helpers,
            incoming,
            state_dir,
            vcpu_type,
            kernel,
            cpu_hide,
        } = self;
        let es = config
            .sev
            .as_ref()
            .is_some_and(|s| s.policy.has(Policy::ES));
        if es && helpers == 0 && incoming.is_some() {
            return Err(LaunchError::EsIncomingWithoutHelpers);
        }
        if incoming.is_some() {
            config
                .fw_cfg_files
                .push((fwcfg::FILE_INCOMING.to_string(), Vec::new()));
        }
        // Both sides of a migration must boot the same firmware; the Hello compares this.
        let firmware_digest: [u8; 32] = {
            use sha2::{Digest, Sha256};
            Sha256::digest(config.firmware.image()).into()
        };
        let backend = config.sev.as_ref().map(|s| s.backend.clone());
        // QEMU refuses this too: the firmware could not check the kernel.
        if backend.is_some() && kernel.is_some() && config.firmware.hashes_area().is_none() {
            return Err(LaunchError::Vm(VmError::NoHashesArea));
        }
        let mut vm = Vm::new(&kvm, config).map_err(LaunchError::Vm)?;
        if !cpu_hide.is_empty() {
            vm.hide_cpu_features(&cpu_hide).map_err(LaunchError::Vm)?;
        }
        if let Some(boot) = &kernel {
            vm.direct_boot(boot).map_err(LaunchError::Vm)?;
        }
        let mut mirror = None;
        let launch = match backend {
            Some(_) => {
                let mut started = vm.sev_launch_start().map_err(LaunchError::SevLaunch)?;
                if let Some(boot) = &kernel {
                    started = vm
                        .sev_launch_update_hashes(started, &boot.hashes_table())
                        .map_err(LaunchError::SevLaunch)?;
                }
                if es {
                    started = vm
                        .sev_launch_update_vmsa(started, vcpu_type)
                        .map_err(LaunchError::SevLaunch)?;
                    if helpers > 0 {
                        // The helper VMSAs count only before the owner's LAUNCH_MEASURE.
                        let (s, m) = vm
                            .sev_launch_mirror(started, &kvm, helpers)
                            .map_err(LaunchError::EsMirror)?;
                        started = s;
                        mirror = Some(m);
                    }
                }
                Some(
                    vm.sev_launch_measure(started)
                        .map_err(LaunchError::SevLaunch)?,
                )
            }
            None => None,
        };
        let state = match incoming {
            Some(_) => State::Incoming(Incoming::Unstarted { launch }),
            None => State::Prelaunch { launch },
        };
        let mut controller =
            Controller::new(kvm, vm, state, backend, helpers, firmware_digest, mirror);
        if let Some(dir) = state_dir {
            controller.set_state_dir(dir);
        }
        if let Some(listener) = incoming {
            if let Ok(addr) = listener.local_addr() {
                log::info!("waiting for an incoming migration on {addr}");
            }
            controller.listen(listener).map_err(LaunchError::Incoming)?;
        }
        Ok(controller)
    }
}
