//! sevmirror's own GHCB exit: the guest-services calls (exit code
//! [`super::ExitCode::SEVMIRROR_SERVICE`]).
//!
//! Under SEV-ES the firmware may reach the VMM through its GHCB instead of the MMIO
//! guest-services page: `sw_exit_info_1` is the call number below, `sw_exit_info_2` its
//! argument, further arguments in the save-area fields each call names; the VMM answers
//! in `rax` (marked valid). The other services have standard exits and need nothing of
//! ours: CPUID as the VMM configured it is `SVM_EXIT_CPUID`, page conversions
//! (`KVM_HC_MAP_GPA_RANGE`) are `SVM_EXIT_VMMCALL` as KVM serves them for SEV-ES guests, or
//! a page-state change.

use super::{Field, GhcbError, ValidBitmap};

/// A guest-services call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Append bytes to the console: `sw_exit_info_2` = length (1..=2032), the bytes at
    /// `sw_scratch` inside the shared buffer.
    Console,
    /// Stop the VM: `sw_exit_info_2` = exit status.
    Exit,
    /// Boot milestone: `sw_exit_info_2` = [`crate::services::Event`] code.
    Event,
    /// The migration helper finished a request: `sw_exit_info_2` = its status.
    Doorbell,
    /// Fatal guest exception: `sw_exit_info_2` = vector | CPL << 8; `rbx` = RIP, `rcx` =
    /// error code, `rdx` = CR2.
    Fault,
    /// Take the host's pending request to the workload: `rax` returns a
    /// [`crate::services::Request`] code (0 for none).
    TakeRequest,
    /// SEV-ES migration: does the host ask this vCPU to save its register state into
    /// private memory and enter AP reset hold? `rax` returns 1 for yes, 0 for no. Every
    /// vCPU asks from its periodic check (the "migrated out" check); the host cannot
    /// interrupt an SEV-ES vCPU with a request of its own, only answer its exits.
    Checkpoint,
}

impl Call {
    /// Every call.
    pub const ALL: [Call; 7] = [
        Call::Console,
        Call::Exit,
        Call::Event,
        Call::Doorbell,
        Call::Fault,
        Call::TakeRequest,
        Call::Checkpoint,
    ];

    /// The number in `sw_exit_info_1`.
    pub const fn number(self) -> u64 {
        match self {
            Call::Console => 1,
            Call::Exit => 2,
            Call::Event => 3,
            Call::Doorbell => 4,
            Call::Fault => 5,
            Call::TakeRequest => 6,
            Call::Checkpoint => 7,
        }
    }

    /// The call with this number.
    pub fn from_number(n: u64) -> Result<Call, GhcbError> {
        Call::ALL
            .into_iter()
            .find(|c| c.number() == n)
            .ok_or(GhcbError::UnknownService(n))
    }

    /// Save-area fields the call needs marked valid (besides the exit fields).
    pub const fn request_fields(self) -> ValidBitmap {
        match self {
            Call::Console => ValidBitmap::of(&[Field::SwScratch]),
            Call::Fault => ValidBitmap::of(&[Field::Rbx, Field::Rcx, Field::Rdx]),
            Call::Exit | Call::Event | Call::Doorbell | Call::TakeRequest | Call::Checkpoint => {
                ValidBitmap::of(&[])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_refused() {
        for c in Call::ALL {
            assert_eq!(Call::from_number(c.number()), Ok(c));
        }
        for n in [0, 8, u64::MAX] {
            assert_eq!(Call::from_number(n), Err(GhcbError::UnknownService(n)));
        }
    }
}
