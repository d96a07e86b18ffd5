//! Layouts of the maps userspace and the XDP program share.

/// Map names, so loader and program cannot drift apart.
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_KEYS: &str = "KEYS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Program names in the object file.
pub const PROG_RESPONDER: &str = "ackgate";
pub const PROG_PASS: &str = "ackgate_pass";
pub const PROG_DROP: &str = "ackgate_drop";
pub const PROG_BENCH: &str = "ackgate_bench";
pub const MAP_BENCH_FRAME: &str = "BENCH_FRAME";
pub const MAP_BENCH_TARGET: &str = "BENCH_TARGET";

/// Largest frame the benchmark harness can restore.
pub const BENCH_FRAME_MAX: usize = 124;

/// The frame the benchmark harness restores before every run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    pub len: u32,
    pub bytes: [u8; BENCH_FRAME_MAX],
}

/// Number of key slots: indexed by `epoch % 4`, the cookie's epoch bits.
pub const KEY_SLOTS: u32 = 4;
/// Maximum protected services (address:port pairs plus their address entries).
pub const MAX_SERVICES: u32 = 1024;

/// Key of the services map. `addr` holds the address's 16 bytes as four
/// 32-bit words in network byte order (as loaded from the packet); IPv4
/// addresses are stored v4-mapped (`::ffff:a.b.c.d`). `port_be` is the port in network byte order; port 0
/// marks "this address has protected ports", used to drop fragments and IPv6
/// extension-header packets whose port cannot be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    pub port_be: u16,
    pub _pad: u16,
}

/// One epoch's key. `valid == 0` means the slot accepts nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySlot {
    pub k0: u64,
    pub k1: u64,
    pub epoch: u32,
    pub valid: u32,
}

/// Responder settings, one array entry, written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Epoch whose key mints new cookies (userspace keeps it current).
    pub epoch: u32,
    /// MSS clamps for IPv4 and IPv6 SYN-ACKs.
    pub mss4: u16,
    pub mss6: u16,
    /// Window scale we advertise when the client offered one.
    pub wscale: u8,
    /// Non-zero once userspace has filled keys and config.
    pub ready: u8,
    /// Window in the SYN-ACK (unscaled, as windows in SYNs always are).
    pub window: u16,
}

/// Per-CPU counters, summed by userspace.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// SYNs to a protected service answered with a cookie SYN-ACK.
    SynAnswered = 0,
    /// Non-SYN TCP to a protected service handed to the kernel.
    ProtectedPassed = 1,
    /// Traffic for anything else, untouched.
    Passed = 2,
    /// Bad TCP header, bad flags or lengths, to a protected service.
    DropMalformed = 3,
    /// IPv4 fragments to a protected address.
    DropFragment = 4,
    /// IPv6 packets with extension headers to a protected address.
    DropIpv6Ext = 5,
    /// The SYN-ACK could not be built (frame could not be resized).
    DropResize = 6,
    /// SYNs dropped because userspace has not finished configuring keys.
    DropNotReady = 7,
}

pub const COUNTERS: usize = 8;

impl Counter {
    pub const ALL: [Counter; COUNTERS] = [
        Counter::SynAnswered,
        Counter::ProtectedPassed,
        Counter::Passed,
        Counter::DropMalformed,
        Counter::DropFragment,
        Counter::DropIpv6Ext,
        Counter::DropResize,
        Counter::DropNotReady,
    ];

    /// Stable snake_case name (used in output and, later, metric labels).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SynAnswered => "syn_answered",
            Counter::ProtectedPassed => "protected_passed",
            Counter::Passed => "passed",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropFragment => "drop_fragment",
            Counter::DropIpv6Ext => "drop_ipv6_ext",
            Counter::DropResize => "drop_resize",
            Counter::DropNotReady => "drop_not_ready",
        }
    }
}

impl ServiceKey {
    /// Key for an IPv6 address (network-order bytes) and port.
    pub fn from_octets(octets: [u8; 16], port: u16) -> Self {
        let w =
            |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
        ServiceKey {
            addr: [w(0), w(4), w(8), w(12)],
            port_be: port.to_be(),
            _pad: 0,
        }
    }

    /// Key for an IPv4 address (network-order bytes) and port, v4-mapped.
    pub fn from_v4_octets(o: [u8; 4], port: u16) -> Self {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&o);
        Self::from_octets(m, port)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) structs of integers with no implicit padding
    // (field sizes sum to the struct size), valid for any bit pattern.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::KeySlot {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::BenchFrame {}
}
