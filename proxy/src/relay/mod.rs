//! The proxy half: choosing a backend, the PROXY protocol header, and the
//! byte pump between the client and the backend.

pub mod backends;
pub mod proxyproto;
pub mod pump;

pub use pump::{reset, Moved, Outcome, Relay, TokioRelay};
