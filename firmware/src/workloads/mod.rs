//! The firmware's own workload option: `scribble` (its test of the helper's self-check);
//! the workloads themselves are guest-workloads'.

pub mod scribble;
