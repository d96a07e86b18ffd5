//! The operating system as ackgate uses it: clocks, interfaces, sysctls,
//! socket options and the raw sockets that write whole IP packets.

pub mod bpf_link;
pub mod clock;
pub mod diag;
pub mod netdev;
pub mod raw;
pub mod rlimit;
pub mod sockopt;
pub mod sysctl;
