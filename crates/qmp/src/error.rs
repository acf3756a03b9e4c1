//! QMP error classes and the error a [`Controller`](super::Controller) returns.

use super::reply::RunState;
use serde::{Serialize, Serializer};

/// A QMP error class, as QEMU names it on the wire (`qapi/error.json`, `QapiErrorClass`).
///
/// QEMU reports almost everything as [`GenericError`](Self::GenericError); the other classes
/// exist for compatibility, and clients may branch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Any error that does not need a specific class (the default).
    GenericError,
    /// The command does not exist, or is not available before `qmp_capabilities`.
    CommandNotFound,
    /// A device has failed to become active.
    DeviceNotActive,
    /// The requested device does not exist.
    DeviceNotFound,
    /// A KVM capability the operation needs is missing (`KVMMissingCap`).
    KvmMissingCap,
}

/// The one table between [`ErrorClass`] and its wire name.
const CLASS_NAMES: [(ErrorClass, &str); 5] = [
    (ErrorClass::GenericError, "GenericError"),
    (ErrorClass::CommandNotFound, "CommandNotFound"),
    (ErrorClass::DeviceNotActive, "DeviceNotActive"),
    (ErrorClass::DeviceNotFound, "DeviceNotFound"),
    (ErrorClass::KvmMissingCap, "KVMMissingCap"),
];

impl ErrorClass {
    /// The wire name, e.g. `"GenericError"`.
    pub fn name(self) -> &'static str {
        CLASS_NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
            .expect("CLASS_NAMES lists every ErrorClass")
    }

    /// Decodes a wire name; `None` for a class this build does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        CLASS_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorClass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A failed command: `{"error": {"class": CLASS, "desc": DESC}}` on the wire.
///
/// `desc` is for humans (QMP clients must not parse it); write it like QEMU does: one
/// sentence, capitalised, no trailing period, naming the state or value that was wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct ControlError {
    /// The error class.
    pub class: ErrorClass,
    /// The human-readable description.
    pub desc: String,
}

impl ControlError {
    /// An error of class `class`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        Self {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`, the class QEMU uses for nearly every failure.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    /// The command is illegal in the VM's current run state, worded as QEMU words it
    /// (`qapi/qmp-dispatch.c`): "The command 'cont' isn't permitted in 'inmigrate' state".
    pub fn not_permitted(command: &str, state: RunState) -> Self {
        Self::generic(format!(
            "The command '{command}' isn't permitted in '{}' state",
            state.name()
        ))
    }

    /// QEMU's answer to a command it does not know: "The command X has not been found".
    pub fn command_not_found(command: &str) -> Self {
        Self::new(
            ErrorClass::CommandNotFound,
            format!("The command {command} has not been found"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_round_trips_through_its_wire_name() {
        for (class, name) in CLASS_NAMES {
            assert_eq!(class.name(), name);
            assert_eq!(ErrorClass::from_name(name), Some(class));
            assert_eq!(serde_json::to_value(class).unwrap(), name);
        }
        assert_eq!(ErrorClass::from_name("NoSuchClass"), None);
        assert_eq!(ErrorClass::from_name("genericerror"), None);
    }

    #[test]
    fn control_error_encodes_class_and_desc() {
        let e = ControlError::not_permitted("cont", RunState::InMigrate);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"class": "GenericError",
                "desc": "The command 'cont' isn't permitted in 'inmigrate' state"})
        );
        let e = ControlError::command_not_found("frob");
        assert_eq!(e.class, ErrorClass::CommandNotFound);
        assert_eq!(e.desc, "The command frob has not been found");
        assert_eq!(
            e.to_string(),
            "CommandNotFound: The command frob has not been found"
        );
    }
}
