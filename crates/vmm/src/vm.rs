//! A virtual machine: memory, devices and vCPU threads, from creation to shutdown.

use crate::{
    console::ConsoleOut,
    devices::{fw_cfg, services::FaultReport, PioBus},
    firmware::Firmware,
    kvm::{cpuid, KvmError, KvmSystem, KvmVcpu, KvmVm, Slot},
    kvm::{es_state::EsVcpuState, state::VcpuState},
    memory::{Encrypted, GuestRam, HostView, MemoryError, PageStates, Rom, Visibility},
    sev::{self, LaunchPhase, SevConfig, SevGuest},
    vcpu::{
        EsContext, EventSink, ExitStats, VcpuCommand, VcpuContext, VcpuError, VcpuHandle, VmEvent,
    },
};
use guest_abi::{fwcfg as fwcfg_abi, layout, services::Event};
use migration::cpu::{Feature, GuestCpu};
use sev_platform::{Policy, SevError};
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
    /// A vCPU did not answer a command.
    #[error("vCPU {0} did not answer (is it paused?)")]
    VcpuUnresponsive(u32),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// `start` was called twice.
    #[error("the VM is already running")]
    AlreadyStarted,
    /// The SEV platform refused a command.
    #[error(transparent)]
    Sev(#[from] SevError),
    /// An SEV operation on a VM that is not an SEV guest.
    #[error("the VM is not an SEV guest")]
    NotSev,
    /// The SEV launch has not finished (LAUNCH_FINISH), so the guest cannot run yet.
    #[error(
        "the SEV launch is not finished (phase {0:?}): measure, inject secrets, then continue"
    )]
    LaunchNotFinished(LaunchPhase),
    /// The firmware declares no SEV secret area.
    #[error("the firmware declares no SEV secret area, so there is nowhere to inject a secret")]
    NoSecretArea,
    /// A secret does not fit the firmware's secret area.
    #[error("a secret of {len} bytes at {gpa:#x} does not fit the firmware's secret area {base:#x}+{size:#x}")]
    SecretOutsideArea {
        /// Where it was to go.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Secret area base.
        base: u64,
        /// Secret area size.
        size: u64,
    },
    /// The CPUID table could not take the SEV leaf.
    #[error("cannot add the SEV CPUID leaf")]
    Cpuid,
    /// An operation that needs running vCPUs before `start`.
    #[error("the VM has not started")]
    NotStarted,
    /// CPUID changes after the vCPUs started (the guest already read its CPUID).
    #[error("the guest's CPU features can change only before its vCPUs start")]
    CpuidAfterStart,
    /// A device-state blob from the source cannot be loaded.
    #[error("cannot load the device state")]
    DeviceState(#[from] crate::devices::state::DeviceStateError),
    /// An SEV-ES policy on a platform that does not offer SEV-ES.
    #[error(
        "the policy {policy:#x} asks for SEV-ES (bit 2), which this SEV platform does not offer"
    )]
    EsUnsupported {
        /// The guest policy.
        policy: u32,
    },
    /// An SEV-ES step for a guest whose policy does not ask for SEV-ES.
    #[error("the guest is not an SEV-ES guest (policy bit 2 is clear): it has no VMSAs")]
    NotEs,
    /// LAUNCH_UPDATE_VMSA was asked for twice, or after the vCPUs started.
    #[error("LAUNCH_UPDATE_VMSA is done already: the vCPUs' state is protected")]
    VmsasDone,
    /// A kernel for an SEV guest whose firmware has no (usable) SEV hashes table area.
    #[error("the firmware has no SEV hashes table area, so it cannot check a directly booted kernel (QEMU refuses this too); use a firmware built for measured direct boot")]
    NoHashesArea,
    /// The hashes table measured at the wrong point of the launch.
    #[error("the SEV hashes table is measured once, right after the firmware and before any VMSA")]
    HashesOutOfOrder,
    /// LAUNCH_MEASURE of an SEV-ES guest before LAUNCH_UPDATE_VMSA.
    #[error("an SEV-ES launch measures every vCPU's VMSA: LAUNCH_UPDATE_VMSA must come before LAUNCH_MEASURE")]
    VmsasMissing,
    /// The reset VMSAs cannot be built for this firmware.
    #[error("cannot build the SEV-ES VMSAs")]
    Vmsa(#[source] sev_platform::vmsa::VmsaError),
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
    /// Run as an SEV guest on this platform.
    pub sev: Option<SevConfig>,
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
    pub(crate) handles: Vec<VcpuHandle>,
    pub(crate) pending: Vec<KvmVcpu>,
    pub(crate) sev: Option<SevGuest>,
    pub(crate) kvm_vm: Arc<KvmVm>,
    pub(crate) ram: Arc<GuestRam>,
    pub(crate) rom: Arc<Rom>,
    fw_cfg: Option<fw_cfg::FwCfg>,
    bus: Option<Arc<PioBus>>,
    page_states: Option<Arc<PageStates>>,
    pub(crate) firmware_secret_area: Option<(u64, u64)>,
    pub(crate) firmware_hashes_area: Option<(u64, u64)>,
    pub(crate) helper: Option<helper_abi::descriptor::HelperDescriptor>,
    console: ConsoleOut,
    pub(crate) services_gpa: u64,
    guest_request: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) helper_ready: Arc<std::sync::atomic::AtomicBool>,
    events: EventSink,
    inbox: Option<Receiver<VmEvent>>,
    acks_tx: Sender<u32>,
    acks_rx: Receiver<u32>,
    holds_tx: Sender<u32>,
    holds_rx: Receiver<u32>,
    milestones: Vec<Milestone>,
    stats: Vec<ExitStats>,
    /// The C-bit position and physical-address reduction the guest's CPUID announces.
    cbit: Option<(u32, u32)>,
    /// The CPUID table each vCPU was given, by vCPU index: the VMM's own record (on
    /// kvm_pvm, KVM_GET_CPUID2 does not return the table that was set).
    cpuid_tables: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

impl Vm {
    /// Builds the VM: memory, ROM, devices and vCPUs (not running yet).
    pub fn new(kvm: &KvmSystem, config: VmConfig) -> Result<Vm, VmError> {
        if config.vcpus == 0 || config.vcpus as usize > layout::MAX_VCPUS {
            return Err(VmError::VcpuCount(config.vcpus));
        }
        if let Some(s) = config.sev.as_ref().filter(|s| s.policy.has(Policy::ES)) {
            // Refused before anything is created, so the platform is left as it was.
            if !s.backend.platform_status()?.es {
                return Err(VmError::EsUnsupported { policy: s.policy.0 });
            }
        }
        let ram = Arc::new(GuestRam::new(config.mem_size)?);
        let rom = Rom::new(config.firmware.image())?;
        let (kvm_type, platform_type) = sev::vm_types(config.sev.as_ref(), kvm);
        let vm = Arc::new(kvm.create_vm_with_type(kvm_type)?);
        vm.create_irqchip()?;
        // KVM_SEV_INIT must come before any vCPU exists.
        let sev = config
            .sev
            .map(|c| SevGuest::init(&vm, c, platform_type))
            .transpose()?;
        let transport = sev.as_ref().map(|s| s.config.transport);
        let es = sev.as_ref().is_some_and(|s| s.es);
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
        let mut cbit = None;
        let mut cpuid_tables = Vec::new();
        for id in 0..config.vcpus {
            let mut cpuid = kvm.cpuid_for(id)?;
            sev::patch_cpuid(&mut cpuid, transport)?;
            if es {
                sev::patch_cpuid_es(&mut cpuid);
            }
            if transport.is_some() {
                cbit = cbit.or(sev::cbit_and_reduction(cpuid.as_slice()));
            }
            cpuid_tables.push(cpuid.as_slice().to_vec());
            vcpus.push(vm.create_vcpu(id, &cpuid)?);
            if let Some(s) = &sev {
                s.config.backend.vcpu_created(s.vm_ref)?;
            }
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
        let page_states = sev
            .as_ref()
            .map(|_| Arc::new(PageStates::new(ram.pages(), Visibility::Private)));
        let (events_tx, events_rx) = mpsc::channel();
        let (acks_tx, acks_rx) = mpsc::channel();
        let (holds_tx, holds_rx) = mpsc::channel();
        Ok(Vm {
            handles: Vec::new(),
            pending: vcpus,
            sev,
            kvm_vm: vm,
            ram,
            rom: Arc::new(rom),
            fw_cfg: Some(dev),
            bus: None,
            helper: config.firmware.helper().copied(),
            page_states,
            firmware_secret_area: config.firmware.secret_area(),
            firmware_hashes_area: config.firmware.hashes_area(),
            console: config.console,
            services_gpa: config.firmware.services_gpa(),
            guest_request: Arc::default(),
            helper_ready: Arc::default(),
            events: Arc::new(move |e| {
                let _ = events_tx.send(e);
            }),
            inbox: Some(events_rx),
            acks_tx,
            acks_rx,
            holds_tx,
            holds_rx,
            milestones: Vec::new(),
            stats: Vec::new(),
            cbit,
            cpuid_tables,
        })
    }

    /// The CPU model and features the guest's CPUID gives it (vCPU 0's table): what an
    /// outgoing migration's Hello says, and what an incoming one's guest must not exceed.
    pub fn guest_cpu(&self) -> GuestCpu {
        cpuid::guest_cpu(self.cpuid_tables.first().map_or(&[], Vec::as_slice))
    }

    /// Takes `features` out of every vCPU's CPUID table, so the guest can move to hosts
    /// that lack them (`run --cpu-hide`). Only before the vCPUs start: a guest reads
    /// its CPUID as it boots and uses what it found from then on.
    pub fn hide_cpu_features(&mut self, features: &[Feature]) -> Result<(), VmError> {
        if !self.handles.is_empty() {
            return Err(VmError::CpuidAfterStart);
        }
        for (v, table) in self.pending.iter().zip(self.cpuid_tables.iter_mut()) {
            cpuid::hide(table, features);
            v.set_cpuid(table)?;
        }
        Ok(())
    }

    /// The C-bit position and physical-address reduction (CPUID 0x8000001F EBX[5:0] and
    /// EBX[11:6]) an SEV guest's vCPUs announce.
    pub fn sev_cbit(&self) -> Option<(u32, u32)> {
        self.cbit
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.handles.len() + self.pending.len()
    }

    /// Guest RAM: its guest-physical ranges (the host mappings stay inside the VMM).
    pub fn ram_regions(&self) -> Vec<crate::memory::RamRange> {
        self.ram
            .regions()
            .iter()
            .map(|r| crate::memory::RamRange {
                gpa: r.gpa,
                size: r.size,
            })
            .collect()
    }

    /// The host's view of guest RAM (ciphertext for an SEV guest's private pages).
    pub fn host_view(&self) -> HostView {
        match (&self.sev, &self.page_states) {
            (Some(sev), Some(states)) => HostView::encrypted(
                self.ram.clone(),
                Encrypted {
                    states: states.clone(),
                    cipher: sev.config.backend.page_cipher(sev.vm_ref),
                },
            ),
            _ => HostView::new(self.ram.clone()),
        }
    }

    /// How the SEV platform names this VM.
    pub fn sev_ref(&self) -> sev_platform::backend::VmRef {
        self.kvm_vm.sev_ref()
    }

    /// Where the VM's events go: `wait` sees them unless the owner routes them itself
    /// with [`Vm::route_events`].
    pub fn event_sink(&self) -> EventSink {
        self.events.clone()
    }

    /// Sends the VM's events (vCPU outcomes, milestones) to `sink` instead of `wait`.
    /// Call before `start`.
    pub fn route_events(&mut self, sink: EventSink) {
        self.events = sink;
        self.inbox = None;
    }

    /// Hands `boot`'s kernel, initrd and command line to the firmware through fw_cfg
    /// (`direct_boot` has the items). Before [`Vm::start`]. Under SEV the hashes table is
    /// measured separately ([`Vm::sev_launch_update_hashes`]).
    pub fn direct_boot(&mut self, boot: &crate::DirectBoot) -> Result<(), VmError> {
        let dev = self.fw_cfg.as_mut().ok_or(VmError::AlreadyStarted)?;
        for (key, data) in boot.fw_cfg_items() {
            dev.set_item(key, data);
        }
        for (name, data) in boot.fw_cfg_files() {
            dev.add_file(&name, data)?;
        }
        Ok(())
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), VmError> {
        if let Some(phase) = self.sev_phase().filter(|&p| p != LaunchPhase::Finished) {
            return Err(VmError::LaunchNotFinished(phase));
        }
        let Some(fw_cfg) = self.fw_cfg.take() else {
            return Err(VmError::AlreadyStarted);
        };
        let view = self.host_view();
        let bus = Arc::new(PioBus::new(self.console.clone(), fw_cfg, view.clone()));
        self.bus = Some(bus.clone());
        let sev_status = self.sev.as_ref().map(SevGuest::status_msr);
        let started = Instant::now();
        // Every vCPU's channel exists before any thread starts: under emulated SEV-ES the
        // boot vCPU's INIT and SIPI (GHCB MSR writes) reach the APs through them.
        let (senders, inboxes): (Vec<_>, Vec<_>) =
            self.pending.iter().map(|_| mpsc::channel()).unzip();
        let es = self
            .pending
            .iter()
            .all(KvmVcpu::is_emulated_es)
            .then(|| EsContext {
                peers: senders.clone().into(),
            });
        for ((vcpu, tx), rx) in self.pending.drain(..).zip(senders).zip(inboxes) {
            let ctx = VcpuContext {
                es: es.clone(),
                bus: bus.clone(),
                console: self.console.clone(),
                services_gpa: self.services_gpa,
                events: self.events.clone(),
                acks: self.acks_tx.clone(),
                started,
                view: view.clone(),
                sev_status,
                guest_request: self.guest_request.clone(),
                helper_ready: self.helper_ready.clone(),
                holds: self.holds_tx.clone(),
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
            let Some(Ok(event)) = self.inbox.as_ref().map(Receiver::recv) else {
                // Events are routed elsewhere (or the channel is gone): nothing to wait for.
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
                VmEvent::Paused { .. } | VmEvent::Held { .. } => {}
            }
        }
    }

    /// Stops running guest code on every vCPU and waits until each has acknowledged
    /// (at most `timeout`). Returns whether all did.
    pub fn pause(&mut self, timeout: Duration) -> bool {
        while self.acks_rx.try_recv().is_ok() {}
        for h in &self.handles {
            h.command(VcpuCommand::Pause);
        }
        let deadline = Instant::now() + timeout;
        let mut acked = 0;
        while acked < self.handles.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks_rx.recv_timeout(left) {
                Ok(_) => acked += 1,
                Err(_) => return false,
            }
        }
        true
    }

    /// SEV-ES: asks every vCPU to save its state into guest memory and enter AP reset hold
    /// (each sees the request at its next checkpoint question, at most ~10 ms apart), and
    /// waits until all are held (at most `timeout`). On success every vCPU's registers are
    /// in its slot and it does not run until released; otherwise the vCPUs that did not
    /// hold are returned and the request stays (release it with [`Vm::release_holds`]).
    pub fn hold_all(&mut self, timeout: Duration) -> Result<(), Vec<u32>> {
        while self.holds_rx.try_recv().is_ok() {}
        for h in &self.handles {
            h.command(VcpuCommand::RequestHold);
        }
        let deadline = Instant::now() + timeout;
        let mut held = vec![false; self.handles.len()];
        while held.iter().any(|h| !h) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.holds_rx.recv_timeout(left) {
                Ok(id) => {
                    if let Some(h) = held.get_mut(id as usize) {
                        *h = true;
                    }
                }
                Err(_) => {
                    return Err((0u32..)
                        .zip(held)
                        .filter(|(_, h)| !h)
                        .map(|(id, _)| id)
                        .collect())
                }
            }
        }
        Ok(())
    }

    /// SEV-ES: withdraws the hold request and lets every held vCPU run again (their saved
    /// state is dropped: they never lost their registers).
    pub fn release_holds(&mut self) {
        for h in &self.handles {
            h.command(VcpuCommand::ReleaseHold);
        }
    }

    /// SEV-ES: lets vCPU `vcpu` leave its hold (a migration target's boot CPU once the
    /// guest arrived).
    pub fn release_hold(&mut self, vcpu: u32) {
        if let Some(h) = self.handles.iter().find(|h| h.id() == vcpu) {
            h.command(VcpuCommand::ReleaseHold);
        }
    }

    /// SEV-ES: the host's part of every vCPU (LAPIC, APIC base, TSC, TSC deadline), in
    /// index order. The vCPUs must be paused.
    pub fn save_platform(&mut self) -> Result<Vec<EsVcpuState>, VmError> {
        let mut out = Vec::new();
        for h in &self.handles {
            let (tx, rx) = mpsc::channel();
            h.command(VcpuCommand::SavePlatform(tx));
            out.push(
                rx.recv_timeout(Duration::from_secs(5))
                    .map_err(|_| VmError::VcpuUnresponsive(h.id()))??,
            );
        }
        Ok(out)
    }

    /// SEV-ES: loads the host's part of every vCPU (one per vCPU, in index order). The
    /// vCPUs must be paused (or held, or waiting for their start).
    pub fn restore_platform(&mut self, states: Vec<EsVcpuState>) -> Result<(), VmError> {
        if states.len() != self.handles.len() {
            return Err(VmError::VcpuCount(states.len() as u32));
        }
        for (h, state) in self.handles.iter().zip(states) {
            let (tx, rx) = mpsc::channel();
            h.command(VcpuCommand::RestorePlatform(Box::new(state), tx));
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| VmError::VcpuUnresponsive(h.id()))??;
        }
        Ok(())
    }

    /// The state of every vCPU, in index order. The vCPUs must be paused.
    pub fn save_vcpus(&mut self) -> Result<Vec<VcpuState>, VmError> {
        let mut out = Vec::new();
        for h in &self.handles {
            let (tx, rx) = mpsc::channel();
            h.command(VcpuCommand::Save(tx));
            out.push(
                rx.recv_timeout(Duration::from_secs(5))
                    .map_err(|_| VmError::VcpuUnresponsive(h.id()))??,
            );
        }
        Ok(out)
    }

    /// Loads states into the vCPUs (one per vCPU, in index order). The vCPUs must be paused.
    pub fn restore_vcpus(&mut self, states: Vec<VcpuState>) -> Result<(), VmError> {
        if states.len() != self.handles.len() {
            return Err(VmError::VcpuCount(states.len() as u32));
        }
        for (h, state) in self.handles.iter().zip(states) {
            let (tx, rx) = mpsc::channel();
            h.command(VcpuCommand::Restore(Box::new(state), tx));
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| VmError::VcpuUnresponsive(h.id()))??;
        }
        Ok(())
    }

    /// The devices' state as the migration stream carries it.
    pub fn device_state(&self) -> Result<Vec<u8>, VmError> {
        Ok(self
            .bus
            .as_ref()
            .ok_or(VmError::NotStarted)?
            .state()
            .encode())
    }

    /// Loads a device-state blob from [`Vm::device_state`] (the vCPUs must be paused).
    pub fn restore_device_state(&self, blob: &[u8]) -> Result<(), VmError> {
        let state = crate::devices::state::DeviceState::decode(blob)?;
        self.bus
            .as_ref()
            .ok_or(VmError::NotStarted)?
            .set_state(&state)?;
        Ok(())
    }

    /// Dirty-page tracking of guest RAM (for live migration).
    pub fn dirty_tracker(&self) -> DirtyTracker {
        DirtyTracker {
            vm: self.kvm_vm.clone(),
            ram: self.ram.clone(),
        }
    }

    /// Touches every page of guest RAM now, so that later first touches are fast (a
    /// migration target prepares this way while it waits).
    pub fn prefault_ram(&self) -> std::io::Result<()> {
        self.ram.prefault()
    }

    /// Like [`Vm::prefault_ram`], as a job for another thread (it keeps the memory alive).
    pub fn prefault_job(&self) -> impl FnOnce() -> std::io::Result<()> + Send + 'static {
        let ram = self.ram.clone();
        move || ram.prefault()
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) {
        for h in &self.handles {
            h.command(VcpuCommand::Resume);
        }
    }

    /// Leaves a request for the guest's workload (e.g. verify memory); the workload takes
    /// it the next time it looks, replacing any request not yet taken.
    pub fn request_guest(&self, request: guest_abi::services::Request) {
        self.guest_request
            .store(request.0, std::sync::atomic::Ordering::Release);
    }

    /// Whether the vCPU threads have been started.
    pub fn started(&self) -> bool {
        self.fw_cfg.is_none()
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

/// Which guest pages were written since the last look (KVM dirty logging on the RAM
/// slots). Dirty logging with D bits already set in guest page tables would report reads
/// too (docs/architecture.md §4); the firmware leaves them clear.
pub struct DirtyTracker {
    vm: Arc<KvmVm>,
    ram: Arc<GuestRam>,
}

impl DirtyTracker {
    fn set(&self, on: bool) -> Result<(), KvmError> {
        for (slot, r) in (0u32..).zip(self.ram.regions()) {
            // SAFETY: the same mapping as at VM creation, kept alive by `ram` (and by the
            // VM itself); only the flags change.
            unsafe {
                self.vm.map(Slot {
                    slot,
                    gpa: r.gpa,
                    size: r.size,
                    host_addr: r.host_addr,
                    read_only: false,
                    log_dirty: on,
                })?;
            }
        }
        Ok(())
    }

    /// Starts logging writes to guest RAM.
    pub fn start(&self) -> Result<(), KvmError> {
        self.set(true)
    }

    /// Stops logging.
    pub fn stop(&self) -> Result<(), KvmError> {
        self.set(false)
    }

    /// The GPAs of pages written since the last call (or since `start`), in order.
    pub fn take(&self) -> Result<Vec<u64>, KvmError> {
        let mut out = Vec::new();
        for (slot, r) in (0u32..).zip(self.ram.regions()) {
            let bitmap = self.vm.dirty_log(slot, r.size)?;
            for (w, &word) in bitmap.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    out.push(r.gpa + (w as u64 * 64 + b) * layout::PAGE_SIZE);
                    bits &= bits - 1;
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The vCPUs stop before the SEV guest (its Drop tells the platform) and the VM go.
        self.stop();
    }
}
