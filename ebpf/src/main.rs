//! ackgate's XDP program. Built for `bpfel-unknown-none` by `proxy/build.rs`;
//! on the host this crate compiles to an empty binary so workspace-wide
//! commands still work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
