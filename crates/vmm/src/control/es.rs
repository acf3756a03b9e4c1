//! The controller's SEV-ES parts: the mirror measured at the launch, and a migration whose
//! vCPU state moves through guest memory (docs/migration.md, SEV-ES).
//!
//! - The mirror and its helper vCPUs were made during the launch ([`super::MachineBuilder`]);
//!   their helpers start once the firmware reports its helper ready, once (an SEV-ES
//!   mirror is never attached again).
//! - Source, stop-and-copy: every vCPU is asked, through its GHCB, to save its registers
//!   into its private slot and enter AP reset hold; only once all hold are they paused, so
//!   the slots are in the last round's dirty pages. The vCPU records of the stream carry
//!   what the host keeps of each vCPU (local APIC, APIC base, TSC, TSC deadline). A
//!   migration that fails before the commit releases the holds: the vCPUs never lost
//!   their registers.
//! - Target: the boot CPU holds once its helper is ready (the VM is then parked); the
//!   pages arrive; the vCPU records load the host's part of each vCPU; the boot CPU is
//!   released, restores its saved state and starts the others, each of which starts from
//!   its measured reset VMSA and restores its own.

use super::{Controller, HelperSlot, Incoming, State, Trigger, PAUSE_TIMEOUT};
use crate::{
    kvm::es_state::EsVcpuState,
    migrate::{MachineError, MachineReply},
    mirror::{HelperError, MirrorError},
};
use std::time::Duration;

/// How long the vCPUs get to save their state and hold.
const HOLD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often starting a measured mirror is tried while its helper says "not ready".
const START_TRIES: u32 = 100;

impl Controller {
    /// Starts the helpers of the mirror measured at the launch (the firmware reported its
    /// helper ready). A helper that still finds no anchor holds and is run again shortly.
    pub(super) fn start_measured_mirror(&mut self) {
        let HelperSlot::Measured(mut m) = std::mem::replace(&mut self.helper, HelperSlot::Off)
        else {
            return;
        };
        let mut tries = 0;
        let result = loop {
            match m.start() {
                Err(MirrorError::Start(_, HelperError::NotReady)) if tries < START_TRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        self.helper = match result {
            Ok(()) => {
                log::info!(
                    "measured mirror started: {} helper vCPU(s), helper region {:#x}+{:#x}",
                    m.vcpus(),
                    m.info().region_base,
                    m.info().region_size
                );
                HelperSlot::Attached(m)
            }
            Err(e) => {
                log::warn!(
                    "cannot start the measured helper vCPUs (an SEV-ES mirror is never attached again): {}",
                    migration::engine::chain(&e)
                );
                HelperSlot::Failed
            }
        };
    }

    /// A vCPU entered AP reset hold. An SEV-ES migration target's boot CPU holds once its
    /// helper is ready: the VM is parked, and received pages can no longer be overwritten.
    pub(super) fn vcpu_held(&mut self, vcpu: u32) {
        if vcpu == 0 && self.vm.sev_es() && matches!(self.state, State::Incoming(Incoming::Booting))
        {
            let _ = self.advance(Trigger::Parked);
        }
    }

    /// Source, stop-and-copy: every vCPU saves its state into guest memory and holds, then
    /// the vCPUs are paused. A guest paused before runs just long enough to save. On
    /// failure the holds are released and the guest is as before.
    pub(super) fn hold_for_migration(&mut self) -> Result<(), MachineError> {
        let was_paused = matches!(self.state, State::Paused);
        if was_paused {
            self.vm.resume();
        }
        let held = self.vm.hold_all(HOLD_TIMEOUT);
        let paused = held.is_ok() && self.vm.pause(PAUSE_TIMEOUT);
        if held.is_err() || !paused {
            self.vm.release_holds();
            if was_paused && !self.vm.pause(PAUSE_TIMEOUT) {
                log::warn!("the guest did not pause again after a failed hold");
            }
            return Err(match held {
                Err(ids) => MachineError::HoldTimeout(ids),
                Ok(()) => MachineError::PauseTimeout,
            });
        }
        Ok(())
    }

    /// Source: the host's part of each vCPU and the devices' state (the vCPUs' registers
    /// are in guest memory already).
    pub(super) fn save_es_state(&mut self) -> Result<MachineReply, MachineError> {
        let vcpus = self
            .vm
            .save_platform()
            .map_err(MachineError::SavePlatform)?
            .iter()
            .map(EsVcpuState::to_bytes)
            .collect();
        let device = self.vm.device_state().map_err(MachineError::SaveDevices)?;
        Ok(MachineReply::State { vcpus, device })
    }

    /// Target, after the commit: the host's part of each vCPU and the devices load, then
    /// the boot CPU leaves its hold and restores the guest's vCPUs from guest memory.
    pub(super) fn run_received_es(
        &mut self,
        vcpus: &[Vec<u8>],
        device: &[u8],
    ) -> Result<MachineReply, MachineError> {
        let states = vcpus
            .iter()
            .enumerate()
            .map(|(index, b)| {
                EsVcpuState::from_bytes(b)
                    .map_err(|source| MachineError::EsVcpuState { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err(MachineError::PauseTimeout);
        }
        // From here the guest's page states follow only its own requests.
        self.vm.host_view().set_receiving(false);
        self.vm
            .restore_platform(states)
            .map_err(MachineError::LoadPlatform)?;
        self.vm
            .restore_device_state(device)
            .map_err(MachineError::LoadDevices)?;
        self.vm.release_hold(0);
        self.vm.resume();
        self.advance(Trigger::MigrationDone)?;
        // The workload checks its memory on arrival (the dirty workload's verify).
        self.vm.request_guest(guest_abi::services::Request::VERIFY);
        self.emit(super::Event::Resume);
        Ok(MachineReply::Done)
    }
}
