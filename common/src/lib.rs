//! Code shared by the XDP program (`bpfel-unknown-none`) and userspace.
//!
//! Everything here is `no_std`, allocation-free and loop-bounded so the same
//! source compiles into the kernel program and into host tests: the cookie the
//! tests verify is the cookie the XDP program mints.
#![no_std]

pub mod checksum;
pub mod cookie;
pub mod options;
pub mod siphash;
pub mod wire;
