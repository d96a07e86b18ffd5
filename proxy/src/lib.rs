//! ackgate: XDP answers SYNs with SipHash cookies; verified connections are
//! materialized as kernel sockets and proxied to backends.
//!
//! * [`config`]: flags and the TOML file, validated once into a [`config::Plan`].
//! * [`control`]: `ackgate check` and `ackgate reload`.
//! * [`engine`]: the one loop that runs every mode.
//! * [`xdp`]: the embedded XDP program, its maps, keys, counters and ring.
//! * [`handoff`]: a verified flow becomes an established socket.
//! * [`relay`]: backends, PROXY protocol and the byte pump.
//! * [`telemetry`]: metrics, `ackgate stats` and logs.
//! * [`takeover`]: a new process takes over from a running one (upgrades).
//! * [`sys`]: clocks, interfaces, sysctls, socket options, raw sockets.

pub mod config;
pub mod control;
pub mod engine;
pub mod handoff;
pub mod relay;
pub mod sys;
pub mod takeover;
pub mod telemetry;
pub mod xdp;
