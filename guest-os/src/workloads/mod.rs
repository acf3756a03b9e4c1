//! The OS's own workload option: `scribble` (an OS that breaks its memory map on purpose);
//! the workloads themselves are guest-workloads'.

pub mod scribble;
