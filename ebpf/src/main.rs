//! ackgate's XDP program: the SYN-cookie responder `ackgate` (the lab's
//! harness programs are this crate's other binary, `harness.rs`). Built
//! for `bpfel-unknown-none` by `proxy/build.rs`; on the host this crate
//! compiles to an empty binary so workspace-wide commands still work.
//!
//! Per packet: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6.
//! TCP to a protected service (`ADDRS` + `PORTS`) is ours: a SYN becomes a
//! cookie SYN-ACK built in place and sent back with `XDP_TX`; with handoff
//! on, a segment of a flow the kernel has no socket for must carry a valid
//! cookie, and becomes a `HANDOFF` event; anything that cannot be parsed
//! safely, or fails the check, is dropped and counted. Everything else
//! passes untouched.
//!
//! The code is straight-line per path: each header read is its own bounds
//! check (`load`), the option parser is a 40-step bounded loop, and checksums
//! are summed from the values written rather than read back.
//!
//! Modules, each using only those above it: helpers, then the paths, then
//! the entry points below.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// Helpers.
#[cfg(target_arch = "bpf")]
mod acl;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod options;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod synack;
#[cfg(target_arch = "bpf")]
mod verdict;

// Paths, innermost first: SYN, ACK, which of them a segment takes, and the
// frame parse in front of it all.
#[cfg(target_arch = "bpf")]
mod ack;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod syn;
#[cfg(target_arch = "bpf")]
mod tcp;

#[cfg(target_arch = "bpf")]
use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Multi-buffer aware (`xdp.frags`), so it attaches to jumbo-MTU links:
/// headers are always in the first buffer; lengths are checked against
/// the whole frame.
#[cfg(target_arch = "bpf")]
#[xdp(frags)]
pub fn ackgate(ctx: XdpContext) -> u32 {
    parse::process(&ctx)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: there is no panicking code path the
    // verifier would accept, and no way to report one from XDP.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
