//! A virtual machine: memory, devices and vCPU threads, from creation to shutdown.

use crate::{
    console::ConsoleOut,
    devices::{fw_cfg, services::FaultReport, PioBus},
    firmware::Firmware,
    kvm::{KvmError, KvmSystem, KvmVcpu, KvmVm, Slot},
    memory::{GuestRam, HostView, MemoryError, Rom},
    vcpu::{ExitStats, VcpuCommand, VcpuContext, VcpuError, VcpuHandle, VmEvent},
};
use guest_abi::{fwcfg as fwcfg_abi, layout, services::Event};
use std::{
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    time::{Duration, Instant},
};

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM operation failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested; the firmware supports 1 to {max}", max = layout::MAX_VCPUS)]
    VcpuCount(u32),
    /// A fw_cfg file could not be added.
    #[error(transparent)]
    FwCfg(#[from] fw_cfg::FwCfgError),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// `start` was called twice.
    #[error("the VM is already running")]
    AlreadyStarted,
}

/// What the user asked for.
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The firmware.
    pub firmware: Firmware,
    /// Where the guest console goes.
    pub console: ConsoleOut,
    /// Extra fw_cfg files (name, contents), e.g. the workload name.
    pub fw_cfg_files: Vec<(String, Vec<u8>)>,
}

/// How a VM run ended.
#[derive(Debug)]
pub enum VmOutcome {
    /// The guest asked to stop with this status.
    GuestExit(u64),
    /// The guest reported a fatal exception.
    Fault {
        /// Reporting vCPU.
        vcpu: u32,
        /// The exception.
        report: FaultReport,
    },
    /// A vCPU failed.
    Failed {
        /// The vCPU.
        vcpu: u32,
        /// What went wrong.
        error: VcpuError,
    },
    /// A termination signal arrived.
    Signal(i32),
}

/// A boot milestone and when it happened.
#[derive(Clone, Copy, Debug)]
pub struct Milestone {
    /// Reporting vCPU.
    pub vcpu: u32,
    /// The milestone.
    pub event: Event,
    /// Time since the VM started.
    pub at: Duration,
}

/// A VM.
pub struct Vm {
    // Field order matters for drop: vCPU threads stop before the VM and its memory go.
    handles: Vec<VcpuHandle>,
    pending: Vec<KvmVcpu>,
    _vm: KvmVm,
    ram: Arc<GuestRam>,
    _rom: Rom,
    bus: Arc<PioBus>,
    console: ConsoleOut,
    services_gpa: u64,
    events_tx: Sender<VmEvent>,
    events_rx: Receiver<VmEvent>,
    milestones: Vec<Milestone>,
    stats: Vec<ExitStats>,
}

impl Vm {
    /// Builds the VM: memory, ROM, devices and vCPUs (not running yet).
    pub fn new(kvm: &KvmSystem, config: VmConfig) -> Result<Vm, VmError> {
        if config.vcpus == 0 || config.vcpus as usize > layout::MAX_VCPUS {
            return Err(VmError::VcpuCount(config.vcpus));
        }
        let ram = Arc::new(GuestRam::new(config.mem_size)?);
        let rom = Rom::new(config.firmware.image())?;
        let vm = kvm.create_vm()?;
        vm.create_irqchip()?;
        let mut slot = 0;
        for r in ram.regions() {
            // SAFETY: the RAM mapping is owned by `ram`, which the Vm keeps alive longer
            // than the KVM VM (field order).
            unsafe {
                vm.map(Slot {
                    slot,
                    gpa: r.gpa,
                    size: r.size,
                    host_addr: r.host_addr,
                    read_only: false,
                    log_dirty: false,
                })?;
            }
            slot += 1;
        }
        let r = rom.region();
        // SAFETY: as above, for the ROM mapping owned by `rom`.
        unsafe {
            vm.map(Slot {
                slot,
                gpa: r.gpa,
                size: r.size,
                host_addr: r.host_addr,
                read_only: true,
                log_dirty: false,
            })?;
        }

        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            vcpus.push(vm.create_vcpu(id, &kvm.cpuid_for(id)?)?);
        }
        for v in &vcpus[1..] {
            v.refresh_lapic()?;
        }
        let tsc_khz = vcpus[0].tsc_khz()?;

        let mut dev = fw_cfg::FwCfg::new();
        dev.set_item(
            fwcfg_abi::KEY_RAM_SIZE,
            config.mem_size.to_le_bytes().to_vec(),
        );
        let ncpus = (config.vcpus as u16).to_le_bytes().to_vec();
        dev.set_item(fwcfg_abi::KEY_NB_CPUS, ncpus.clone());
        dev.set_item(fwcfg_abi::KEY_MAX_CPUS, ncpus);
        let e820: Vec<(u64, u64)> = ram.regions().iter().map(|r| (r.gpa, r.size)).collect();
        dev.add_file(fwcfg_abi::FILE_E820, fw_cfg::e820_table(&e820))?;
        dev.add_file(fwcfg_abi::FILE_TSC_KHZ, tsc_khz.to_string().into_bytes())?;
        for (name, data) in config.fw_cfg_files {
            dev.add_file(&name, data)?;
        }
        let bus = Arc::new(PioBus::new(
            config.console.clone(),
            dev,
            HostView::new(ram.clone()),
        ));
        let (events_tx, events_rx) = mpsc::channel();
        Ok(Vm {
            handles: Vec::new(),
            pending: vcpus,
            _vm: vm,
            ram,
            _rom: rom,
            bus,
            console: config.console,
            services_gpa: config.firmware.services_gpa(),
            events_tx,
            events_rx,
            milestones: Vec::new(),
            stats: Vec::new(),
        })
    }

    /// The host's view of guest RAM.
    pub fn host_view(&self) -> HostView {
        HostView::new(self.ram.clone())
    }

    /// A sender other parts of the process can report events with (e.g. signals).
    pub fn event_sender(&self) -> Sender<VmEvent> {
        self.events_tx.clone()
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.pending.is_empty() {
            return Err(VmError::AlreadyStarted);
        }
        let started = Instant::now();
        for vcpu in self.pending.drain(..) {
            let (tx, rx) = mpsc::channel();
            let ctx = VcpuContext {
                bus: self.bus.clone(),
                console: self.console.clone(),
                services_gpa: self.services_gpa,
                events: self.events_tx.clone(),
                started,
            };
            self.handles
                .push(VcpuHandle::spawn(vcpu, ctx, tx, rx).map_err(VmError::Thread)?);
        }
        Ok(())
    }

    /// Waits until the run ends (guest exit, fault, failure or signal), recording
    /// milestones on the way.
    pub fn wait(&mut self) -> VmOutcome {
        loop {
            let Ok(event) = self.events_rx.recv() else {
                // Unreachable while `self` holds a sender; treat as a failure regardless.
                return VmOutcome::Signal(0);
            };
            match event {
                VmEvent::GuestExit { status, .. } => return VmOutcome::GuestExit(status),
                VmEvent::Fault { vcpu, report } => return VmOutcome::Fault { vcpu, report },
                VmEvent::Failed { vcpu, error } => return VmOutcome::Failed { vcpu, error },
                VmEvent::Signal(sig) => return VmOutcome::Signal(sig),
                VmEvent::Milestone { vcpu, event, at } => {
                    log::debug!("vCPU {vcpu}: {} at {at:?}", event.name().unwrap_or("event"));
                    self.milestones.push(Milestone { vcpu, event, at });
                }
                VmEvent::Paused { .. } => {}
            }
        }
    }

    /// Stops every vCPU thread and collects their exit counts.
    pub fn stop(&mut self) {
        for h in &self.handles {
            h.command(VcpuCommand::Stop);
        }
        for mut h in self.handles.drain(..) {
            if let Some(s) = h.stop(Duration::from_secs(2)) {
                self.stats.push(s);
            }
        }
    }

    /// Milestones seen so far.
    pub fn milestones(&self) -> &[Milestone] {
        &self.milestones
    }

    /// Exit counts of the stopped vCPUs.
    pub fn exit_stats(&self) -> &[ExitStats] {
        &self.stats
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}
