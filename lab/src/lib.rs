//! ackgate's laboratory: everything that builds worlds for the demo, the
//! tests and the bench, kept out of the product (which depends on nothing
//! here).
//!
//! * [`netns`], [`gateway`]: network namespaces and the client/gateway lab;
//!   [`bench_lab`]: the bench's five-namespace lab with a switch.
//! * [`capture`], [`frame`]: AF_PACKET capture and crafted/parsed frames.
//! * [`harness`]: the harness XDP programs and BPF_PROG_TEST_RUN access;
//!   [`napi`]: threaded NAPI pinned to a core.
//! * [`process`]: the one process guard, and where binaries are.
//! * [`servers`]: echo and HTTP servers; [`transfer`]: bulk transfers.
//! * [`profile`]: client TCP stacks; [`demo`]: the README's first command.

pub mod bench_lab;
pub mod capture;
pub mod demo;
pub mod flood_lab;
pub mod frame;
pub mod gateway;
pub mod harness;
pub mod napi;
pub mod netns;
pub mod process;
pub mod profile;
pub mod servers;
pub mod transfer;

pub use capture::Capture;
pub use gateway::{Handshake, Lab};
pub use netns::{ip, unique, Netns, ScratchDir};
pub use process::{workspace_bin, Process};
