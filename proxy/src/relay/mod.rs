//! The proxy half: choosing a backend and checking its health, the PROXY
//! protocol header, the byte pump between the client and the backend (with
//! its pipe pool for zero-copy), and per-source limits.

pub mod backends;
pub mod health;
pub mod proxyproto;
pub mod pump;
pub mod sources;
pub mod splice;
pub mod uring_connect;

pub use pump::{reset, Moved, Outcome, Relay, TokioRelay};
