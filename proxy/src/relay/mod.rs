//! The proxy half: choosing a backend, the PROXY protocol header, the byte
//! pump between the client and the backend, and per-source limits.

pub mod backends;
pub mod proxyproto;
pub mod pump;
pub mod sources;

pub use pump::{reset, Moved, Outcome, Relay, TokioRelay};
