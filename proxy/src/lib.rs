//! ackgate userspace: loads and drives the XDP SYN-cookie responder.
//!
//! * [`responder`]: the embedded XDP object, its maps and attachment.
//! * [`secret`]: the fleet's master secret and epoch key rotation.
//! * [`lab`]: network-namespace labs for the demo and the tests.

pub mod backends;
pub mod config;
pub mod demo;
pub mod handoff;
pub mod lab;
pub mod metrics;
pub mod netdev;
pub mod packet;
pub mod proxyproto;
pub mod relay;
pub mod responder;
pub mod retransmit;
pub mod secret;
pub mod serve;
pub mod stats;
