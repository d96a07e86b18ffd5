//! Layouts of the maps userspace and the XDP program share.

/// Map names, so loader and program cannot drift apart.
pub const MAP_ADDRS: &str = "ADDRS";
pub const MAP_PORTS: &str = "PORTS";
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
/// The flood generator (BPF_PROG_RUN live frames), its SYN template and
/// per-CPU run counter; the counting sink and its count; the floor
/// responder and its SipHash key.
pub const PROG_GEN: &str = "ackgate_gen";
pub const MAP_GEN_FRAME: &str = "GEN_FRAME";
pub const MAP_GEN_SEQ: &str = "GEN_SEQ";
pub const PROG_COUNT: &str = "ackgate_count";
pub const MAP_COUNT: &str = "COUNT";
pub const PROG_FLOOR: &str = "ackgate_floor";
/// The switch-side sink for the answers to spoofed flood sources (it
/// counts them in `COUNT`) that passes everything else.
pub const PROG_ABSORB: &str = "ackgate_absorb";
pub const MAP_FLOOR_KEY: &str = "FLOOR_KEY";

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

/// Protected addresses, one array entry. Addresses are stored as the packet
/// carries them (network-order words); unused slots are zero. A packet's
/// destination is looked up by comparing against the `n4`/`n6` used slots,
/// then its port in `PORTS`: array lookups the verifier inlines, where a
/// hash map would cost a hash and several calls per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub v4: [u32; MAX_ADDRS_V4],
    pub v6: [[u32; 4]; MAX_ADDRS_V6],
    pub n4: u32,
    pub n6: u32,
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses {
            v4: [0; MAX_ADDRS_V4],
            v6: [[0; 4]; MAX_ADDRS_V6],
            n4: 0,
            n6: 0,
        }
    }
}

/// Protected IPv4 / IPv6 addresses at most.
pub const MAX_ADDRS_V4: usize = 16;
pub const MAX_ADDRS_V6: usize = 16;
/// `PORTS[port]` bit for IPv4 address slot `i` is `1 << i`, for IPv6 slot
/// `j` it is `1 << (V6_PORT_BIT + j)`.
pub const V6_PORT_BIT: u32 = 16;
/// `PORTS[port]` bit `SERVER_FIRST_SHIFT + b`: the service whose protection
/// bit is `b` speaks first (SSH, SMTP), so XDP remembers its SYN-ACKs in
/// `RECENT` for userspace to retransmit.
pub const SERVER_FIRST_SHIFT: u32 = 32;

/// Recent SYN-ACKs of server-first services (LRU hash): a client whose
/// ACK was lost waits for a banner that never comes; a retransmitted SYN-ACK
/// makes it ACK again. Bounded, so a flood evicts entries before they are
/// old enough to retransmit: it degrades to stateless.
pub const MAP_RECENT: &str = "RECENT";
pub const RECENT_ENTRIES: u32 = 4096;

/// A `RECENT` key: the flow, addresses and ports as in the packet (network
/// order); IPv4 addresses in word 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecentKey {
    pub client: [u32; 4],
    pub service: [u32; 4],
    pub client_port_be: u16,
    pub service_port_be: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Largest TCP header (with options) of a SYN-ACK.
pub const SYNACK_TCP_MAX: usize = 40;

/// A `RECENT` value: the SYN-ACK's TCP header and options exactly as sent
/// (checksum included: the addresses do not change), and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentSynAck {
    pub tcp: [u8; SYNACK_TCP_MAX],
    pub tcp_len: u32,
    /// `Config::clock_ms` when it was sent.
    pub sent_ms: u32,
}
pub const PORTS_ENTRIES: u32 = 65536;

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
    /// Millisecond clock for SYN-ACK TSvals and their freshness check: unix
    /// time in ms (wrapping), so a fleet agrees; refreshed by userspace every
    /// tick: coarse, but the packet paths need no helper call.
    pub clock_ms: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Oldest SYN-ACK (by its echoed TSval) whose ACK is still accepted.
    pub ts_max_age_ms: u32,
    /// Used entries of `ifaces`. Zero: no MAC is checked (test harnesses;
    /// `attach` always adds its interface).
    pub n_ifaces: u32,
    pub _pad: u32,
    /// The attached interfaces' own MACs: on each, only unicast frames to
    /// its MAC are answered.
    pub ifaces: [Iface; MAX_IFACES],
}

/// Interfaces one responder can be attached to at most.
pub const MAX_IFACES: usize = 8;

/// An attached interface and its MAC, as `Config::ifaces` holds them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// The MAC's six bytes in memory order in the low 48 bits of a
    /// little-endian word (`u64::from_le_bytes([m0, .., m5, 0, 0])`): what
    /// one compare against the frame's destination needs.
    pub mac: u64,
    /// The ingress ifindex frames on it carry; 0 matches every interface
    /// (a MAC set without an attachment, for test harnesses).
    pub ifindex: u32,
    pub _pad: u32,
}

impl Iface {
    pub const fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        Iface {
            mac: u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]),
            ifindex,
            _pad: 0,
        }
    }
}

/// `Config::flags`: verify ACKs for flows with no kernel socket and hand the
/// valid ones to userspace (`HANDOFF` ring buffer). Off, such ACKs go to the
/// kernel like any other non-SYN segment.
pub const FLAG_HANDOFF: u32 = 1;
/// `Config::flags`: SYNs are checked against the global access list
/// (`ACL4`/`ACL6`). Off, the SYN path makes no lookup for it.
pub const FLAG_ACL_GLOBAL: u32 = 2;
/// `Config::flags`: SYNs are checked against their service's access list
/// (`SVC_ACL4`/`SVC_ACL6`).
pub const FLAG_ACL_SERVICE: u32 = 4;

/// Access lists: LPM tries whose value is `ACL_ALLOW` or `ACL_DENY`. The
/// longest prefix matching a SYN decides; nothing matching allows (userspace
/// states a list's default deny as a deny entry with a zero-length source
/// prefix). Any value but `ACL_ALLOW` denies.
///
/// Global, IPv4: key data = the source address as in the packet.
pub const MAP_ACL4: &str = "ACL4";
/// Global, IPv6: key data = the source address as in the packet.
pub const MAP_ACL6: &str = "ACL6";
/// Per service, IPv4: key data = `[port word, service address, source]`
/// (see `acl_port_word`), prefix length `SVC_ACL4_FIXED_BITS` + the source
/// prefix, so a service's rules match only SYNs to its own address:port.
pub const MAP_SVC_ACL4: &str = "SVC_ACL4";
/// Per service, IPv6: key data = `[port word, service address (4 words),
/// source (4 words)]`, prefix length `SVC_ACL6_FIXED_BITS` + the source
/// prefix.
pub const MAP_SVC_ACL6: &str = "SVC_ACL6";
pub const ACL_ALLOW: u8 = 1;
pub const ACL_DENY: u8 = 2;
/// Entries per access-list map at most (LPM tries allocate per entry).
pub const ACL_ENTRIES: u32 = 65536;
/// Key data bits before the source address in the per-service tries: the
/// port word and the service address.
pub const SVC_ACL4_FIXED_BITS: u32 = 32 + 32;
pub const SVC_ACL6_FIXED_BITS: u32 = 32 + 128;
pub type AclKey4 = u32;
pub type AclKey6 = [u32; 4];
pub type SvcAclKey4 = [u32; 3];
pub type SvcAclKey6 = [u32; 9];

/// The first word of a per-service key: the destination port as the packet
/// carries it (network order, its two bytes first in memory), then two zero
/// bytes. `port_be` is the port field as loaded from the packet.
#[inline(always)]
pub const fn acl_port_word(port_be: u16) -> u32 {
    let b = port_be.to_ne_bytes();
    u32::from_ne_bytes([b[0], b[1], 0, 0])
}

/// Ring buffer of verified flows for the proxy.
pub const MAP_HANDOFF: &str = "HANDOFF";
pub const HANDOFF_RING_BYTES: u32 = 1 << 20;

/// `Handoff::flags` bits.
pub const HF_SACK: u8 = 1;
pub const HF_ECN: u8 = 2;
pub const HF_TIMESTAMPS: u8 = 4;
pub const HF_FIN: u8 = 8;
/// The verifying segment was a zero-window probe (seq = client ISN).
pub const HF_PROBE: u8 = 16;

/// A verified ACK: everything userspace needs to materialize the connection.
/// Addresses and ports as in the packet (network order); IPv4 addresses are
/// in `saddr[0]`/`daddr[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    /// 4 or 6.
    pub family: u8,
    /// The client's window shift, or `options::NO_WSCALE`.
    pub wscale: u8,
    /// `HF_*` bits.
    pub flags: u8,
    pub _pad: u8,
    pub client_isn: u32,
    pub cookie: u32,
    /// Negotiated MSS (from the cookie's table).
    pub mss: u16,
    /// The client's raw (unscaled) window field in the ACK.
    pub window: u16,
    /// The ACK's TSval (client clock) and TSecr (our SYN-ACK TSval).
    pub tsval: u32,
    pub tsecr: u32,
    /// Payload bytes the segment carried (not delivered: the SYN-ACK's window
    /// was zero, so the client resends them once the window opens).
    pub payload_len: u16,
    pub _pad2: u16,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) when the ACK verified: the start
    /// of the handoff latency userspace reports.
    pub ktime_ns: u64,
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
    /// ACKs with a valid cookie handed to userspace.
    AckVerified = 8,
    /// ACKs with no socket and no valid cookie: dropped silently.
    AckRejected = 9,
    /// Valid ACKs dropped because the handoff ring was full.
    DropRingFull = 10,
    /// RSTs for flows with no socket (nothing to reset): dropped.
    DropRstNoFlow = 11,
    /// SYN+ACKs for flows with no socket: dropped, never answered with a RST
    /// (that would reflect a spoofed SYN-ACK flood at its claimed source).
    DropSynAckNoFlow = 12,
    /// Frames to a protected service not addressed to the interface's own
    /// unicast MAC, or from a multicast source MAC: never answered.
    DropNotUnicast = 13,
    /// SYNs from martian sources (unspecified, loopback, multicast,
    /// broadcast, class E, link-local to a global address, the protected
    /// address itself): never answered.
    DropMartian = 14,
    /// SYNs refused by the global access list: dropped, never answered.
    DropAclGlobal = 15,
    /// SYNs refused by their service's access list: dropped, never answered.
    DropAclService = 16,
}

pub const COUNTERS: usize = 17;

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
        Counter::AckVerified,
        Counter::AckRejected,
        Counter::DropRingFull,
        Counter::DropRstNoFlow,
        Counter::DropSynAckNoFlow,
        Counter::DropNotUnicast,
        Counter::DropMartian,
        Counter::DropAclGlobal,
        Counter::DropAclService,
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
            Counter::AckVerified => "ack_verified",
            Counter::AckRejected => "ack_rejected",
            Counter::DropRingFull => "drop_ring_full",
            Counter::DropRstNoFlow => "drop_rst_no_flow",
            Counter::DropSynAckNoFlow => "drop_synack_no_flow",
            Counter::DropNotUnicast => "drop_not_unicast",
            Counter::DropMartian => "drop_martian",
            Counter::DropAclGlobal => "drop_acl_global",
            Counter::DropAclService => "drop_acl_service",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) structs of integers with no implicit padding
    // (field sizes sum to the struct size), valid for any bit pattern.
    unsafe impl aya::Pod for super::Addresses {}
    unsafe impl aya::Pod for super::KeySlot {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Iface {}
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::Handoff {}
    unsafe impl aya::Pod for super::RecentKey {}
    unsafe impl aya::Pod for super::RecentSynAck {}
}
