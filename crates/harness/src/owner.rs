//! The guest owner, in this process: it holds the transport keys of each launch and the
//! migration secret, and gives a VM that secret only after its launch measurement matched
//! the firmware the owner expects. The VMMs only ever see what a host sees.

use crate::{process::VmmProcess, HarnessError, Result};
use serde_json::{json, Value};
use sev_platform::{
    crypto::{random_bytes, TransportKeys},
    measure::{FirmwareVersion, LaunchDigest},
    owner::{self, Measured},
    vmsa::{ResetVmsas, VcpuType, VmmType},
    Policy,
};
use std::path::{Path, PathBuf};

/// The policy the owner asks for: QEMU's default (no debugging).
pub const POLICY: Policy = Policy(Policy::NODBG);

/// An SEV-ES launch as the owner expects it: what its VMSAs depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EsLaunch {
    /// Guest vCPUs (one reset VMSA each).
    pub vcpus: u32,
    /// Helper vCPUs (one helper VMSA each, measured after the guest's).
    pub helpers: u16,
}

/// A guest owner with one migration secret for all its VMs.
pub struct Owner {
    pdh: Vec<u8>,
    migration_secret: [u8; 32],
    /// The firmware the owner expects every VM to boot (default: the embedded image).
    firmware: Vec<u8>,
    /// The kernel it boots directly, whose SEV hashes table the launch measures after the
    /// firmware (default: the embedded guest OS, with no initrd and an empty command
    /// line, what `run` boots; None: the firmware alone).
    kernel: Option<Vec<u8>>,
    /// SEV-ES launches (None: plain SEV).
    es: Option<EsLaunch>,
}

/// One launch session: the keys the owner keeps, the files the host gets.
pub struct Session {
    /// The transport keys (owner side only).
    pub keys: TransportKeys,
    /// The owner's DH certificate, base64 (`--dh-cert-file`).
    pub godh: PathBuf,
    /// The session blob, base64 (`--session-file`).
    pub session: PathBuf,
}

impl Owner {
    /// An owner of guests on the platform whose PDH is `pdh`, with a fresh migration secret.
    pub fn new(pdh: Vec<u8>) -> Result<Owner> {
        Ok(Owner {
            pdh,
            migration_secret: random_bytes::<32>()?,
            firmware: firmware_image::IMAGE.to_vec(),
            kernel: Some(os_image::IMAGE.to_vec()),
            es: None,
        })
    }

    /// Launches SEV-ES guests (policy bit ES) with `launch.vcpus` vCPUs and
    /// `launch.helpers` helper vCPUs, and expects each launch digest to cover both sets of
    /// VMSAs (the run's default vCPU type, QEMU's reset state); with None, plain SEV
    /// guests again.
    pub fn expect_sev(&mut self, launch: Option<EsLaunch>) {
        self.es = launch;
    }

    /// The policy this owner's sessions carry.
    pub fn policy(&self) -> Policy {
        match self.es {
            Some(_) => Policy(POLICY.0 | Policy::ES),
            None => POLICY,
        }
    }

    /// The launch digest a VM of this owner must show: the firmware and its kernel's SEV
    /// hashes table (SEV), then the guest's reset VMSAs and the helpers' (SEV-ES).
    fn expected(&self) -> Result<Measured<'_>> {
        let mut digest = LaunchDigest::new();
        digest.update_data(&self.firmware);
        if let Some(kernel) = &self.kernel {
            let boot = vmm::DirectBoot::new(kernel.clone(), None, String::new())
                .map_err(|e| HarnessError::Unexpected(format!("the expected kernel: {e}")))?;
            digest.update_data(&boot.hashes_table());
        }
        let Some(es) = self.es else {
            return Ok(Measured::Digest(digest.value()));
        };
        let vcpu_type = VcpuType::from_name(vmm::sev::DEFAULT_VCPU_TYPE)
            .map_err(|e| HarnessError::Unexpected(e.to_string()))?;
        let mut vmsas = ResetVmsas::for_firmware(&self.firmware, vcpu_type, VmmType::Qemu)
            .and_then(|r| r.all(es.vcpus))
            .map_err(|e| HarnessError::Unexpected(format!("SEV-ES VMSAs: {e}")))?;
        vmsas.extend(
            vmm::firmware::image_helper_vmsas(&self.firmware, es.helpers, VmmType::Qemu)
                .map_err(|e| HarnessError::Unexpected(format!("helper VMSAs: {e}")))?,
        );
        for v in &vmsas {
            digest.update_vmsa(&v.to_bytes());
        }
        Ok(Measured::Digest(digest.value()))
    }

    /// Expects VMs to boot `image` instead of the embedded firmware (a VMM of another
    /// build embeds its own).
    pub fn expect_firmware(&mut self, image: Vec<u8>) {
        self.firmware = image;
    }

    /// Expects VMs to boot `kernel` directly (None: the firmware alone, `run
    /// --no-kernel`) instead of the embedded guest OS.
    pub fn expect_kernel(&mut self, kernel: Option<Vec<u8>>) {
        self.kernel = kernel;
    }

    /// Writes the migration secret to `path` (mode 0600), for the owner's own tools
    /// (`sevmirror owner abort`).
    pub fn write_migration_secret(&self, path: &Path) -> Result<()> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let what = format!("cannot write {}", path.display());
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&self.migration_secret))
            .map_err(HarnessError::io(what))
    }

    /// Makes a session for the next VM, writing the host's two files into `dir`.
    pub fn session(&self, dir: &Path, name: &str) -> Result<Session> {
        let s = owner::session(&self.pdh, self.policy()).map_err(|source| HarnessError::Owner {
            what: "cannot make a session",
            source,
        })?;
        let files = s
            .write_files(dir, name)
            .map_err(|source| HarnessError::Owner {
                what: "cannot write the session",
                source,
            })?;
        Ok(Session {
            keys: s.keys,
            godh: files.godh,
            session: files.session,
        })
    }

    /// The `run` options that launch a VM with `session` under this owner's policy.
    pub fn run_args(&self, session: &Session) -> Vec<String> {
        vec![
            "--sev".into(),
            "--paused".into(),
            "--policy".into(),
            format!("{:#x}", self.policy().0),
            "--dh-cert-file".into(),
            session.godh.display().to_string(),
            "--session-file".into(),
            session.session.display().to_string(),
        ]
    }

    /// Checks the VM's launch measurement and, only if it matches the embedded firmware,
    /// injects the migration secret and lets the launch finish.
    pub fn attest_and_start(&self, vm: &mut VmmProcess, keys: &TransportKeys) -> Result<()> {
        let data = vm.measurement()?;
        let sev = vm.execute("query-sev", None)?;
        let field = |k: &str| sev[k].as_u64().and_then(|v| u8::try_from(v).ok());
        let version = match (field("api-major"), field("api-minor"), field("build-id")) {
            (Some(api_major), Some(api_minor), Some(build)) => FirmwareVersion {
                api_major,
                api_minor,
                build,
            },
            _ => {
                return Err(HarnessError::Unexpected(format!(
                    "{}: query-sev has no platform version: {sev}",
                    vm.name()
                )))
            }
        };
        let measurement =
            owner::verify(self.expected()?, version, self.policy(), keys.tik(), &data).map_err(
                |source| HarnessError::Owner {
                    what: "the launch measurement does not verify",
                    source,
                },
            )?;
        let guid = fwtable::Guid::from_bytes(helper_abi::MIGRATION_SECRET_GUID);
        let packet = owner::secret(
            keys,
            &measurement,
            &[(guid, self.migration_secret.to_vec())],
        )
        .map_err(|source| HarnessError::Owner {
            what: "cannot build the secret",
            source,
        })?;
        vm.execute(
            "sev-inject-launch-secret",
            Some(json!({
                "packet-header": packet.header_b64(),
                "secret": packet.secret_b64(),
            })),
        )?;
        vm.execute("cont", None::<Value>)?;
        Ok(())
    }
}
