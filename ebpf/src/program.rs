//! SYN-cookie responder.
//!
//! Per packet: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6.
//! TCP to a protected service (`ADDRS` + `PORTS`) is ours: a SYN becomes a
//! cookie SYN-ACK built in place and sent back with `XDP_TX`; anything that
//! cannot be parsed safely is dropped and counted; other TCP to the service
//! goes to the kernel for now. Everything else passes untouched.
//!
//! The code is straight-line per path: each header read is its own bounds
//! check (`load`), the option parser is a 40-step bounded loop, and checksums
//! are summed from the values written rather than read back.

use core::mem::size_of;

use ackgate_common::{
    checksum,
    cookie::{self, FlowV4, FlowV6, Key},
    options::{self, OptionWords, SynAckOptions, SynOptions, NO_WSCALE},
    wire::{
        Addresses, BenchFrame, Config, Counter, Handoff, KeySlot, RecentKey, RecentSynAck,
        BENCH_FRAME_MAX, COUNTERS as N_COUNTERS, FLAG_HANDOFF, HANDOFF_RING_BYTES, HF_ECN, HF_FIN,
        HF_PROBE, HF_SACK, HF_TIMESTAMPS, KEY_SLOTS, MAX_ADDRS_V4, MAX_ADDRS_V6, PORTS_ENTRIES,
        RECENT_ENTRIES, SERVER_FIRST_SHIFT, SYNACK_TCP_MAX, V6_PORT_BIT,
    },
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
    EbpfContext as _,
};

#[map]
static ADDRS: Array<Addresses> = Array::with_max_entries(1, 0);
#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORTS_ENTRIES, 0);
#[map]
static RECENT: LruHashMap<RecentKey, RecentSynAck> =
    LruHashMap::with_max_entries(RECENT_ENTRIES, 0);
#[map]
static KEYS: Array<KeySlot> = Array::with_max_entries(KEY_SLOTS, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS as u32, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_HLEN: usize = 20;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TTL: u8 = 64;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

/// Multi-buffer aware (`xdp.frags`), so it attaches to jumbo-MTU links:
/// headers are always in the first buffer; lengths are checked against
/// the whole frame.
#[xdp(frags)]
pub fn ackgate(ctx: XdpContext) -> u32 {
    process(&ctx)
}

/// Lets everything through. veth only delivers `XDP_TX` frames to a peer that
/// has an XDP program of its own, so labs attach this to the far end.
#[xdp(frags)]
pub fn ackgate_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[map]
static HANDOFF: RingBuf = RingBuf::with_byte_size(HANDOFF_RING_BYTES, 0);

#[map]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Benchmark harness, never attached: restores the frame to the template in
/// `BENCH_FRAME`, then tail-calls the program in `BENCH_TARGET`. With it,
/// BPF_PROG_TEST_RUN's in-kernel repeat loop hands the production program a
/// fresh SYN on every run (it rewrites its input into a SYN-ACK). The
/// benchmark times the same harness in front of `ackgate_drop` and reports
/// the difference.
/// Multi-buffer aware like the program it tail-calls (a program array only
/// holds programs that agree on it).
#[xdp(frags)]
pub fn ackgate_bench(ctx: XdpContext) -> u32 {
    let Some(t) = BENCH_FRAME.get(0) else {
        return XDP_ABORTED;
    };
    let len = t.len as usize;
    if len == 0 || len > BENCH_FRAME_MAX || resize(&ctx, len).is_none() {
        return XDP_ABORTED;
    }
    // SAFETY: reads `len <= BENCH_FRAME_MAX` bytes of the map value; the
    // helper bounds-checks the packet.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, t.bytes.as_ptr() as *mut _, len as u32) } != 0 {
        return XDP_ABORTED;
    }
    // SAFETY: tail call into a program userspace placed in the array.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// Drops everything: the sink for flood generators and the empty-program
/// baseline the benchmark subtracts.
#[xdp(frags)]
pub fn ackgate_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: there is no panicking code path the
    // verifier would accept, and no way to report one from XDP.
    loop {}
}

type Verdict = (u32, Counter);
const PASS: Verdict = (XDP_PASS, Counter::Passed);

/// Counts the verdict and returns its action. Every path ends here exactly
/// once; BPF functions return a plain u32 (at most five register arguments,
/// no struct returns).
#[inline(always)]
fn finish((action, counter): Verdict) -> u32 {
    count(counter);
    action
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot owned by this CPU for the program's run.
        unsafe { *p += 1 };
    }
}

/// Bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a `T` from the frame. Packet data has no alignment guarantee; BPF
/// loads from packet memory may be unaligned (the verifier only enforces
/// alignment under BPF_F_STRICT_ALIGNMENT, which we never set), so a plain
/// load is what we want the JIT to see.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes are inside the frame.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn store<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; same alignment note as `load`.
    unsafe { *p = v };
    Some(())
}

#[inline(always)]
fn process(ctx: &XdpContext) -> u32 {
    let Some(eth) = load::<[u16; 7]>(ctx, 0) else {
        return finish(PASS);
    };
    let macs = mac_word(&eth);
    let mut proto = u16::from_be(eth[6]);
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad), unrolled.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(p) = load::<u16>(ctx, l3 + 2) else {
            return finish(PASS);
        };
        proto = u16::from_be(p);
        l3 += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(p) = load::<u16>(ctx, l3 + 2) else {
                return finish(PASS);
            };
            proto = u16::from_be(p);
            l3 += 4;
        }
    }
    match proto {
        ETH_P_IP => ipv4(ctx, l3, macs),
        ETH_P_IPV6 => ipv6(ctx, l3, macs),
        _ => finish(PASS),
    }
}

/// Protected-address slot of an IPv4 destination (as in the packet).
#[inline(always)]
fn slot_v4(daddr_be: u32) -> Option<u32> {
    let a = ADDRS.get(0)?;
    let mut i = 0;
    while i < MAX_ADDRS_V4 {
        if i as u32 >= a.n4 {
            return None;
        }
        if a.v4[i] == daddr_be {
            return Some(i as u32);
        }
        i += 1;
    }
    None
}

/// Protected-address slot of an IPv6 destination, as `PORTS` bit index.
#[inline(always)]
fn slot_v6(d: &[u32; 4]) -> Option<u32> {
    let a = ADDRS.get(0)?;
    let mut i = 0;
    while i < MAX_ADDRS_V6 {
        if i as u32 >= a.n6 {
            return None;
        }
        let s = &a.v6[i];
        if s[0] == d[0] && s[1] == d[1] && s[2] == d[2] && s[3] == d[3] {
            return Some(V6_PORT_BIT + i as u32);
        }
        i += 1;
    }
    None
}

/// `PROTECTED` if `port_be` is protected on the address whose bit is `bit`,
/// plus `SERVER_FIRST` if that service speaks first; 0 if not protected.
#[inline(always)]
fn port_flags(bit: u32, port_be: u16) -> u8 {
    match PORTS.get(u16::from_be(port_be) as u32) {
        Some(bits) if *bits & (1 << bit) != 0 => {
            if *bits & (1 << (SERVER_FIRST_SHIFT + bit)) != 0 {
                PROTECTED | SERVER_FIRST
            } else {
                PROTECTED
            }
        }
        _ => 0,
    }
}

const PROTECTED: u8 = 1;
const SERVER_FIRST: u8 = 2;

// Separate BPF functions per family keep each one's stack under 512 bytes.
#[inline(never)]
fn ipv4(ctx: &XdpContext, l3: usize, macs: u64) -> u32 {
    match ipv4_inner(ctx, l3, macs) {
        Ok(action) => action,
        Err(v) => finish(v),
    }
}

/// `Ok` once `tcp` has taken (and counted) the packet; `Err` with the
/// verdict otherwise.
#[inline(always)]
fn ipv4_inner(ctx: &XdpContext, l3: usize, macs: u64) -> Result<u32, Verdict> {
    let Some(vihl) = load::<u8>(ctx, l3) else {
        return Err(PASS);
    };
    // One bounds check covers the fixed header; then plain loads. (Loads
    // are never grouped as tuples of Options: the optimiser merges the
    // undefined payloads of failed ones, which the verifier rejects.)
    let Some(h) = ptr_at::<[u32; 5]>(ctx, l3) else {
        return Err(PASS);
    };
    // SAFETY: `ptr_at` checked the 20 bytes.
    let h = unsafe { *h };
    let (saddr, daddr) = (h[3], h[4]);
    let proto = (u32::from_be(h[2]) >> 16) as u8;
    if vihl >> 4 != 4 || proto != IPPROTO_TCP {
        return Err(PASS);
    }
    let Some(bit) = slot_v4(daddr) else {
        return Err(PASS);
    };
    let Some(frag) = load::<u16>(ctx, l3 + 6).map(u16::from_be) else {
        return Err(PASS);
    };
    // From here the destination is a protected address: what cannot be
    // read safely is dropped.
    if frag & 0x3fff != 0 {
        return Err((XDP_DROP, Counter::DropFragment));
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let Some(tot_len) = load::<u16>(ctx, l3 + 2).map(|v| u16::from_be(v) as usize) else {
        return Err(PASS);
    };
    if ihl < IPV4_HLEN || tot_len < ihl + TCP_HLEN || l3 + tot_len > frame_len(ctx, l3 + tot_len) {
        return Err((XDP_DROP, Counter::DropMalformed));
    }
    let l4 = l3 + ihl;
    // Both ports in one load: network order, source first in memory.
    let Some(ports) = load::<u32>(ctx, l4) else {
        return Err((XDP_DROP, Counter::DropMalformed));
    };
    let (sport, dport) = (ports as u16, (ports >> 16) as u16);
    let port = port_flags(bit, dport);
    if port == 0 {
        return Err(PASS);
    }
    let flow = FlowV4 {
        saddr: u32::from_be(saddr),
        daddr: u32::from_be(daddr),
        sport: u16::from_be(sport),
        dport: u16::from_be(dport),
    };
    let server_first = port & SERVER_FIRST != 0;
    Ok(tcp(
        ctx,
        l3,
        l4,
        l3 + tot_len,
        macs,
        server_first,
        &V4(flow, saddr, daddr),
    ))
}

#[inline(never)]
fn ipv6(ctx: &XdpContext, l3: usize, macs: u64) -> u32 {
    match ipv6_inner(ctx, l3, macs) {
        Ok(action) => action,
        Err(v) => finish(v),
    }
}

#[inline(always)]
fn ipv6_inner(ctx: &XdpContext, l3: usize, macs: u64) -> Result<u32, Verdict> {
    let Some(h) = ptr_at::<[u32; 10]>(ctx, l3) else {
        return Err(PASS);
    };
    // SAFETY: `ptr_at` checked the 40-byte fixed header.
    let h = unsafe { *h };
    let vtc = (u32::from_be(h[0]) >> 24) as u8;
    let w1 = u32::from_be(h[1]);
    let plen = (w1 >> 16) as u16;
    let nexthdr = (w1 >> 8) as u8;
    let saddr = [h[2], h[3], h[4], h[5]];
    let daddr = [h[6], h[7], h[8], h[9]];
    if vtc >> 4 != 6 {
        return Err(PASS);
    }
    let Some(bit) = slot_v6(&daddr) else {
        return Err(PASS);
    };
    if nexthdr != IPPROTO_TCP {
        // Extension headers hide the port; a protected address's are ours to
        // drop (xdp_synproxy lets these through: a bypass).
        return Err(if is_ipv6_ext(nexthdr) {
            (XDP_DROP, Counter::DropIpv6Ext)
        } else {
            PASS
        });
    }
    let plen = plen as usize;
    let l4 = l3 + IPV6_HLEN;
    if plen < TCP_HLEN || l4 + plen > frame_len(ctx, l4 + plen) {
        return Err((XDP_DROP, Counter::DropMalformed));
    }
    // Both ports in one load: network order, source first in memory.
    let Some(ports) = load::<u32>(ctx, l4) else {
        return Err((XDP_DROP, Counter::DropMalformed));
    };
    let (sport, dport) = (ports as u16, (ports >> 16) as u16);
    let port = port_flags(bit, dport);
    if port == 0 {
        return Err(PASS);
    }
    let flow = FlowV6 {
        saddr: halves(&saddr),
        daddr: halves(&daddr),
        sport: u16::from_be(sport),
        dport: u16::from_be(dport),
    };
    let server_first = port & SERVER_FIRST != 0;
    Ok(tcp(ctx, l3, l4, l4 + plen, macs, server_first, &V6(flow)))
}

/// The frame's length: the linear part, unless `need` lies beyond it, then
/// the whole multi-buffer frame (a helper call only jumbo frames pay).
#[inline(always)]
fn frame_len(ctx: &XdpContext, need: usize) -> usize {
    let linear = ctx.data_end() - ctx.data();
    if need <= linear {
        return linear;
    }
    // SAFETY: helper on our own context, no other arguments.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    // hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP, shim6
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn halves(a: &[u32; 4]) -> [u64; 2] {
    let w = |i: usize| u32::from_be(a[i]) as u64;
    [(w(0) << 32) | w(1), (w(2) << 32) | w(3)]
}

/// TCP to a protected service: header checks, then the SYN or ACK path,
/// each a BPF function of its own so their frames never stack.
#[inline(always)]
fn tcp<A: Answer>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    seg_end: usize,
    macs: u64,
    server_first: bool,
    addrs: &A,
) -> u32 {
    finish(tcp_inner(ctx, l3, l4, seg_end, macs, server_first, addrs))
}

#[inline(always)]
fn tcp_inner<A: Answer>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    seg_end: usize,
    macs: u64,
    server_first: bool,
    addrs: &A,
) -> Verdict {
    let Some(t) = ptr_at::<[u32; 5]>(ctx, l4) else {
        return (XDP_DROP, Counter::DropMalformed);
    };
    // SAFETY: `ptr_at` checked the 20-byte TCP header.
    let t = unsafe { *t };
    let sport = (t[0] & 0xffff) as u16; // network order: first two bytes in memory
    let seq = t[1];
    let w3 = u32::from_be(t[3]);
    let doff = (w3 >> 24) as u8;
    let flags = (w3 >> 16) as u8;
    let thlen = ((doff >> 4) as usize) * 4;
    if thlen < TCP_HLEN || l4 + thlen > seg_end {
        return (XDP_DROP, Counter::DropMalformed);
    }
    let seg = Seg {
        l3,
        l4,
        thlen,
        seg_end,
        flags,
        seq: u32::from_be(seq),
        ack: u32::from_be(t[2]),
        window: w3 as u16,
        sport,
        macs,
    };
    if flags & SYN == 0 {
        // ACKs, data, FINs, RSTs: with handoff on, those of flows the kernel
        // has no socket for must carry a valid cookie.
        return match CONFIG.get(0) {
            Some(c) if c.ready != 0 && c.flags & FLAG_HANDOFF != 0 => {
                // Two calls in sequence, not nested: their frames never stack.
                let mut o = SynOptions::default();
                match ack_prepare(ctx, &seg, addrs, &mut o) {
                    code @ (ACK_CONTINUE | ACK_CONTINUE_TIME_WAIT) => {
                        // One call, with the same arguments either way: the
                        // verifier walks a static function once per distinct
                        // caller state. What fails the check goes to the
                        // TIME_WAIT socket if the flow has one.
                        match verify_ack(ctx, &seg, addrs, &o) {
                            (XDP_DROP, Counter::AckRejected) if code == ACK_CONTINUE_TIME_WAIT => {
                                (XDP_PASS, Counter::ProtectedPassed)
                            }
                            v => v,
                        }
                    }
                    ACK_SOCKET => (XDP_PASS, Counter::ProtectedPassed),
                    ACK_RST => (XDP_DROP, Counter::DropRstNoFlow),
                    ACK_NOT_UNICAST => (XDP_DROP, Counter::DropNotUnicast),
                    ACK_NO_ACK_FLAG => (XDP_DROP, Counter::AckRejected),
                    _ => (XDP_DROP, Counter::DropMalformed),
                }
            }
            _ => (XDP_PASS, Counter::ProtectedPassed),
        };
    }
    // A SYN for a connection the kernel holds (a client that lost its state
    // and reuses the port) is the kernel's: it answers with a challenge ACK
    // (RFC 5961) and the client recovers; a cookie would stall it. So is a
    // SYN-ACK for one of its own connects; any other SYN-ACK is dropped, so
    // a spoofed SYN-ACK flood is neither answered with RSTs nor costs the
    // stack.
    let live = sock_state(ctx, addrs) == SOCK_LIVE;
    if flags & ACK != 0 {
        return if live {
            (XDP_PASS, Counter::ProtectedPassed)
        } else {
            (XDP_DROP, Counter::DropSynAckNoFlow)
        };
    }
    if flags & (RST | FIN) != 0 {
        return (XDP_DROP, Counter::DropMalformed);
    }
    // A SYN whose payload spills into a second buffer (jumbo frames only)
    // cannot be rewritten in place into an exact-length SYN-ACK.
    if seg_end > ctx.data_end() - ctx.data() {
        return (XDP_DROP, Counter::DropMalformed);
    }
    if !unicast_to_us(seg.macs) {
        return (XDP_DROP, Counter::DropNotUnicast);
    }
    if addrs.martian() {
        return (XDP_DROP, Counter::DropMartian);
    }
    if live {
        return (XDP_PASS, Counter::ProtectedPassed);
    }
    // Options first, then the reply: sequential calls, frames not stacked.
    let mut o = SynOptions::default();
    if !read_options(ctx, &seg, &mut o) {
        return (XDP_DROP, Counter::DropMalformed);
    }
    let v = syn(ctx, &seg, addrs, &o);
    if server_first && v.0 == XDP_TX {
        remember(ctx, seg.l3, addrs.family());
    }
    v
}

/// Records the SYN-ACK just built in the frame in `RECENT`, so userspace
/// can retransmit it to a server-first client whose ACK is lost. Best
/// effort: an LRU map under a flood simply forgets.
#[inline(never)]
fn remember(ctx: &XdpContext, l3: usize, family: u8) -> u32 {
    let (client, service, l4) = if family == 4 {
        let Some(h) = ptr_at::<[u32; 5]>(ctx, l3) else {
            return 0;
        };
        // SAFETY: `ptr_at` checked the 20 bytes of the header we wrote.
        let h = unsafe { *h };
        ([h[4], 0, 0, 0], [h[3], 0, 0, 0], l3 + IPV4_HLEN)
    } else {
        let Some(h) = ptr_at::<[u32; 10]>(ctx, l3) else {
            return 0;
        };
        // SAFETY: `ptr_at` checked the 40 bytes of the header we wrote.
        let h = unsafe { *h };
        (
            [h[6], h[7], h[8], h[9]],
            [h[2], h[3], h[4], h[5]],
            l3 + IPV6_HLEN,
        )
    };
    let Some(ports) = load::<u32>(ctx, l4) else {
        return 0;
    };
    let Some(doff) = load::<u8>(ctx, l4 + 12) else {
        return 0;
    };
    let len = ((doff >> 4) as usize * 4) & 0x3c;
    if !(TCP_HLEN..=SYNACK_TCP_MAX).contains(&len) {
        return 0;
    }
    let k = RecentKey {
        client,
        service,
        client_port_be: (ports >> 16) as u16,
        service_port_be: ports as u16,
        family,
        _pad: [0; 3],
    };
    // Zeroed with explicit word stores (an array literal becomes a byte-wise
    // memset loop on this target), then the segment copied over it.
    let mut v = core::mem::MaybeUninit::<RecentSynAck>::uninit();
    let p = v.as_mut_ptr();
    // SAFETY: `p` is this frame's value (4-byte aligned); twelve u32 stores
    // cover its 48 bytes (a 40-byte array and two u32s), then fields are
    // overwritten in place.
    unsafe {
        let w = p.cast::<u32>();
        for i in 0..(size_of::<RecentSynAck>() / 4) {
            core::ptr::write_volatile(w.add(i), 0);
        }
        (*p).tcp_len = len as u32;
        (*p).sent_ms = match CONFIG.get(0) {
            Some(c) => c.clock_ms,
            None => 0,
        };
        // `len` is checked again on the register the helper gets (the
        // verifier's bounds do not follow copies; the volatile read keeps
        // LLVM from dropping the check as proven above): the array's size
        // at most. The helper checks the packet range itself.
        let len = core::ptr::read_volatile(&len);
        if !(TCP_HLEN..=SYNACK_TCP_MAX).contains(&len) {
            return 0;
        }
        if bpf_xdp_load_bytes(ctx.ctx, l4 as u32, (*p).tcp.as_mut_ptr().cast(), len as u32) != 0 {
            return 0;
        }
    }
    // SAFETY: fully initialized above.
    let v = unsafe { v.assume_init_ref() };
    let _ = RECENT.insert(&k, v, 0);
    0
}

/// The frame's destination MAC (bytes in memory order, byte 0 lowest) and,
/// at bit 48, the source MAC's group bit: what `unicast_to_us` needs, taken
/// from the Ethernet header loaded once.
#[inline(always)]
fn mac_word(eth: &[u16; 7]) -> u64 {
    // The group bit is the first byte's lowest: the low byte of a
    // little-endian u16 load.
    let src_group = (eth[3] & 0x01) as u64;
    eth[0] as u64 | (eth[1] as u64) << 16 | (eth[2] as u64) << 32 | src_group << 48
}

/// Whether the frame came to this interface's own unicast MAC from a
/// unicast source: the only frames ackgate answers or hands off.
#[inline(always)]
fn unicast_to_us(macs: u64) -> bool {
    const DST: u64 = 0xffff_ffff_ffff;
    if macs & (1 << 48) != 0 || macs & 0x01 != 0 {
        return false;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let m = cfg.mac;
    let own = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
    own == 0 || own == macs & DST
}

/// No kernel socket for the flow.
const SOCK_NONE: u32 = 0;
/// A live socket (established, request, or one of our own connects).
const SOCK_LIVE: u32 = 1;
/// Only a TIME_WAIT socket.
const SOCK_TIME_WAIT: u32 = 2;

/// The kernel's socket for the packet's flow, as `SOCK_*`. Its own BPF
/// function: the lookup tuple gets a frame of its own.
#[inline(never)]
fn sock_state<A: Answer>(ctx: &XdpContext, addrs: &A) -> u32 {
    addrs.sock_state(ctx)
}

/// The segment's options: the fast layouts inline, anything else through
/// `syn_options`.
#[inline(never)]
fn read_options(ctx: &XdpContext, s: &Seg, o: &mut SynOptions) -> bool {
    fast_options(ctx, s.l4 + TCP_HLEN, s.thlen - TCP_HLEN, o) || syn_options(ctx, s.l4, s.thlen, o)
}

/// The SYN path: a cookie SYN-ACK in place. Its own BPF function, so its
/// frame is not stacked under the ACK path's.
#[inline(never)]
fn syn<A: Answer>(ctx: &XdpContext, s: &Seg, addrs: &A, o: &SynOptions) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return (XDP_DROP, Counter::DropNotReady);
    };
    if cfg.ready == 0 {
        return (XDP_DROP, Counter::DropNotReady);
    }
    let epoch = cfg.epoch;
    let Some(slot) = KEYS.get(epoch % KEY_SLOTS) else {
        return (XDP_DROP, Counter::DropNotReady);
    };
    if slot.valid == 0 || slot.epoch != epoch {
        return (XDP_DROP, Counter::DropNotReady);
    }
    let key = Key {
        k0: slot.k0,
        k1: slot.k1,
    };
    let syn_opts = *o;
    let ecn = s.flags & (ECE | CWR) == ECE | CWR;
    let reply = Reply {
        cfg,
        key,
        epoch,
        isn: s.seq,
        sport: s.sport,
        syn_opts,
        ecn,
    };
    addrs.answer(&reply, ctx, s.l3)
}

/// Per-family SYN-ACK construction.
trait Answer {
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict;
    /// The kernel's socket for the packet's 4-tuple, as `SOCK_*`.
    fn sock_state(&self, ctx: &XdpContext) -> u32;
    /// Cookie check for this flow: the TSval offset if valid.
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32>;
    /// Whether the source can never open a connection (see `DropMartian`).
    fn martian(&self) -> bool;
    /// 4 or 6.
    fn family(&self) -> u8;
    /// Addresses and family for a handoff event.
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8);
    /// The family's MSS table.
    fn mss(&self, idx: u8) -> u16;
}

/// A TCP segment to a protected service, as the SYN and ACK paths need it.
struct Seg {
    l3: usize,
    l4: usize,
    thlen: usize,
    seg_end: usize,
    flags: u8,
    /// Host order.
    seq: u32,
    ack: u32,
    window: u16,
    /// Network order.
    sport: u16,
    /// See `mac_word`.
    macs: u64,
}

/// The ACK path for a flow with no kernel socket, first half: socket lookup,
/// RST, options. Then `verify_ack`: a valid cookie becomes a `Handoff`
/// event and the segment is consumed (the kernel would answer it with a
/// RST); anything else is dropped silently, never answered.
///
/// A flow whose only socket is in TIME_WAIT is checked too (a client that
/// reuses its port has sent a new SYN, which XDP answered), but what fails
/// the check goes to the kernel's time-wait handling (a retransmitted FIN
/// must be re-ACKed) instead of being dropped as forged.
#[inline(never)]
fn ack_prepare<A: Answer>(ctx: &XdpContext, s: &Seg, addrs: &A, o: &mut SynOptions) -> u32 {
    let state = addrs.sock_state(ctx);
    if state == SOCK_LIVE {
        return ACK_SOCKET;
    }
    let tw = state == SOCK_TIME_WAIT;
    if s.flags & RST != 0 || s.flags & ACK == 0 {
        if tw {
            return ACK_SOCKET;
        }
        // Nothing to reset; and without the ACK flag the acknowledgment
        // field means nothing, so such a segment never completes a handshake.
        return if s.flags & RST != 0 {
            ACK_RST
        } else {
            ACK_NO_ACK_FLAG
        };
    }
    if !unicast_to_us(s.macs) {
        return ACK_NOT_UNICAST;
    }
    if !read_options(ctx, s, o) {
        return ACK_MALFORMED;
    }
    if tw {
        ACK_CONTINUE_TIME_WAIT
    } else {
        ACK_CONTINUE
    }
}

const ACK_CONTINUE: u32 = 0;
const ACK_SOCKET: u32 = 1;
const ACK_RST: u32 = 2;
const ACK_MALFORMED: u32 = 3;
const ACK_CONTINUE_TIME_WAIT: u32 = 4;
const ACK_NOT_UNICAST: u32 = 5;
const ACK_NO_ACK_FLAG: u32 = 6;

/// Cookie check and handoff event, in a frame of its own.
#[inline(never)]
fn verify_ack<A: Answer>(ctx: &XdpContext, s: &Seg, addrs: &A, o: &SynOptions) -> Verdict {
    let reject = (XDP_DROP, Counter::AckRejected);
    let c = s.ack.wrapping_sub(1);
    let opts = if o.has_ts {
        cookie::ack_option_bits(c, Some(o.tsecr))
    } else {
        cookie::ack_option_bits(c, None)
    };
    let bits = cookie::epoch_bits(c);
    // Slot `e % 4` holds epoch `e`'s key; only e-1, e, e+1 are valid.
    let Some(slot) = KEYS.get(bits as u32) else {
        return reject;
    };
    if slot.valid == 0 || (slot.epoch % KEY_SLOTS) as u8 != bits {
        return reject;
    }
    let key = Key {
        k0: slot.k0,
        k1: slot.k1,
    };
    let epoch = slot.epoch;
    let payload = s.seg_end - s.l4 - s.thlen;
    let mut isn = s.seq.wrapping_sub(1);
    let mut hf = 0u8;
    let ts_offset = match addrs.check(&key, epoch, c, isn, opts) {
        Some(off) => off,
        // With the SYN-ACK's zero window, a client whose first ACK was lost
        // sends zero-window probes, which carry seq = ISN.
        None if payload == 0 => match addrs.check(&key, epoch, c, s.seq, opts) {
            Some(off) => {
                isn = s.seq;
                hf |= HF_PROBE;
                off
            }
            None => return reject,
        },
        None => return reject,
    };
    // The echoed TSval dates the SYN-ACK: older than the cookie lifetime is
    // a replay, however valid its MAC.
    if o.has_ts {
        let Some(cfg) = CONFIG.get(0) else {
            return reject;
        };
        if !cookie::fresh(o.tsecr, ts_offset, cfg.clock_ms, cfg.ts_max_age_ms) {
            return reject;
        }
    }
    let Some(mut e) = HANDOFF.reserve::<Handoff>(0) else {
        return (XDP_DROP, Counter::DropRingFull);
    };
    let r = cookie::restore_bits(opts);
    if r.sack {
        hf |= HF_SACK;
    }
    if r.ecn {
        hf |= HF_ECN;
    }
    if r.timestamps {
        hf |= HF_TIMESTAMPS;
    }
    if s.flags & FIN != 0 {
        hf |= HF_FIN;
    }
    let (saddr, daddr, family) = addrs.addrs();
    let dport_be = match load::<u16>(ctx, s.l4 + 2) {
        Some(d) => d,
        None => 0,
    };
    let mss = addrs.mss(cookie::mss_bits(c));
    // SAFETY: helper without arguments or side effects.
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    // Field by field into the reserved record: building a `Handoff` first
    // would cost its 72 bytes of this frame's stack, and the ACK path's
    // call chain is near the 512-byte limit.
    let h = e.as_mut_ptr();
    // SAFETY: `h` points to the reserved, exclusively owned record; every
    // field is written before `submit`.
    unsafe {
        (*h).saddr = saddr;
        (*h).daddr = daddr;
        (*h).sport_be = s.sport;
        (*h).dport_be = dport_be;
        (*h).family = family;
        (*h).wscale = r.wscale;
        (*h).flags = hf;
        (*h)._pad = 0;
        (*h).client_isn = isn;
        (*h).cookie = c;
        (*h).mss = mss;
        (*h).window = s.window;
        (*h).tsval = o.tsval;
        (*h).tsecr = o.tsecr;
        (*h).payload_len = payload as u16;
        (*h)._pad2 = 0;
        (*h).ktime_ns = ktime_ns;
    }
    e.submit(0);
    (XDP_DROP, Counter::AckVerified)
}

/// IPv4 flow plus the raw network-order addresses to write back swapped.
struct V4(FlowV4, u32, u32);

impl Answer for V4 {
    #[inline(always)]
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict {
        r.v4(ctx, l3, &self.0, self.1, self.2)
    }

    #[inline(always)]
    fn sock_state(&self, ctx: &XdpContext) -> u32 {
        let mut t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: self.1,
                    daddr: self.2,
                    sport: self.0.sport.to_be(),
                    dport: self.0.dport.to_be(),
                },
            },
        };
        lookup(
            ctx,
            &mut t,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        )
    }

    #[inline(always)]
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32> {
        cookie::check_offset(&self.0, key, epoch, cookie, isn, opts)
    }

    #[inline(always)]
    fn family(&self) -> u8 {
        4
    }

    #[inline(always)]
    fn martian(&self) -> bool {
        // 0/8, 127/8, multicast 224/4, class E 240/4 and broadcast, or
        // the protected address itself.
        let first = (self.0.saddr >> 24) as u8;
        first == 0 || first == 127 || first >= 224 || self.0.saddr == self.0.daddr
    }

    #[inline(always)]
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8) {
        ([self.1, 0, 0, 0], [self.2, 0, 0, 0], 4)
    }

    #[inline(always)]
    fn mss(&self, idx: u8) -> u16 {
        cookie::MSS_V4[(idx & 7) as usize]
    }
}

/// The namespace's TCP socket for this exact flow, as `SOCK_*`: live
/// (established, request, connecting) or only TIME_WAIT. A listener on the
/// port does not count: it would answer the ACK with its own cookie check,
/// not ours.
#[inline(always)]
fn lookup(ctx: &XdpContext, t: &mut bpf_sock_tuple, size: usize) -> u32 {
    // SAFETY: `t` is a valid tuple of `size` bytes; the returned socket is
    // read and released before this function returns, as the verifier
    // requires.
    unsafe {
        let sk = bpf_skc_lookup_tcp(ctx.as_ptr(), t, size as u32, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return SOCK_NONE;
        }
        let state = (*sk).state;
        bpf_sk_release(sk.cast());
        if state == TCP_LISTEN {
            SOCK_NONE
        } else if state == TCP_TIME_WAIT {
            SOCK_TIME_WAIT
        } else {
            SOCK_LIVE
        }
    }
}

/// `BPF_TCP_LISTEN` and `BPF_TCP_TIME_WAIT` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;
const TCP_TIME_WAIT: u32 = 6;

struct V6(FlowV6);

impl Answer for V6 {
    #[inline(always)]
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict {
        r.v6(ctx, l3, &self.0)
    }

    #[inline(always)]
    fn sock_state(&self, ctx: &XdpContext) -> u32 {
        let (saddr, daddr, _) = self.addrs();
        let mut t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr,
                    daddr,
                    sport: self.0.sport.to_be(),
                    dport: self.0.dport.to_be(),
                },
            },
        };
        lookup(
            ctx,
            &mut t,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        )
    }

    #[inline(always)]
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32> {
        cookie::check_offset(&self.0, key, epoch, cookie, isn, opts)
    }

    #[inline(always)]
    fn family(&self) -> u8 {
        6
    }

    #[inline(always)]
    fn martian(&self) -> bool {
        let s = &self.0.saddr;
        let d = &self.0.daddr;
        // ::, ::1, multicast ff00::/8, link-local fe80::/10 to a non
        // link-local address, or the protected address itself.
        let unspecified_or_loopback = s[0] == 0 && s[1] <= 1;
        let multicast = (s[0] >> 56) == 0xff;
        let link_local = |a: u64| (a >> 54) == 0x3fa;
        unspecified_or_loopback
            || multicast
            || (link_local(s[0]) && !link_local(d[0]))
            || (s[0] == d[0] && s[1] == d[1])
    }

    #[inline(always)]
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8) {
        let w = |h: &[u64; 2]| {
            [
                ((h[0] >> 32) as u32).to_be(),
                (h[0] as u32).to_be(),
                ((h[1] >> 32) as u32).to_be(),
                (h[1] as u32).to_be(),
            ]
        };
        (w(&self.0.saddr), w(&self.0.daddr), 6)
    }

    #[inline(always)]
    fn mss(&self, idx: u8) -> u16 {
        cookie::MSS_V6[(idx & 7) as usize]
    }
}

/// The option layouts Linux, Apple and Windows send, read with direct packet
/// loads of their exact lengths and matched as words. False: not one of
/// them (or not readable), leave it to `syn_options`.
#[inline(always)]
fn fast_options(ctx: &XdpContext, off: usize, len: usize, out: &mut SynOptions) -> bool {
    // Words hold option bytes in memory order, zero-padded; a zero-extended
    // u32 load is that on little-endian BPF.
    let w: OptionWords = match len {
        0 => [0; 5],
        4 => match ptr_at::<u32>(ctx, off) {
            // SAFETY: `ptr_at` checked the 4 bytes.
            Some(p) => [unsafe { *p } as u64, 0, 0, 0, 0],
            None => return false,
        },
        20 => match ptr_at::<[u32; 5]>(ctx, off) {
            // SAFETY: `ptr_at` checked the 20 bytes.
            Some(p) => {
                let b = unsafe { *p };
                [words(b[0], b[1]), words(b[2], b[3]), b[4] as u64, 0, 0]
            }
            None => return false,
        },
        24 => match ptr_at::<[u32; 6]>(ctx, off) {
            Some(p) => {
                // SAFETY: `ptr_at` checked the 24 bytes.
                let b = unsafe { *p };
                [
                    words(b[0], b[1]),
                    words(b[2], b[3]),
                    words(b[4], b[5]),
                    0,
                    0,
                ]
            }
            None => return false,
        },
        12 => match ptr_at::<[u32; 3]>(ctx, off) {
            Some(p) => {
                // SAFETY: `ptr_at` checked the 12 bytes.
                let b = unsafe { *p };
                [words(b[0], b[1]), b[2] as u64, 0, 0, 0]
            }
            None => return false,
        },
        _ => return false,
    };
    match options::parse_fast(&w, len) {
        Some(o) => {
            *out = o;
            true
        }
        None => false,
    }
}

/// Two consecutive u32s as the u64 occupying the same memory (little-endian).
#[inline(always)]
fn words(lo: u32, hi: u32) -> u64 {
    ((hi as u64) << 32) | lo as u64
}

#[cfg(not(target_endian = "little"))]
compile_error!("fast_options assumes little-endian BPF (bpfel)");

/// Parses the SYN's options into `out`; false if they cannot be read.
/// A separate BPF function: its 40-byte buffer and scan state get their own
/// stack frame.
#[inline(never)]
fn syn_options(ctx: &XdpContext, l4: usize, thlen: usize, out: &mut SynOptions) -> bool {
    // Copy the options to the stack once: the parser then reads fixed stack
    // offsets, and the verifier has no packet ranges to track per option.
    // Re-checked on this register: the caller's check may have been made on
    // another one (the verifier's bounds do not follow), and the volatile
    // read keeps LLVM from dropping the check as proven by the caller.
    // SAFETY: reading a local.
    let thlen = unsafe { core::ptr::read_volatile(&thlen) };
    if !(TCP_HLEN..=TCP_HLEN + options::MAX_OPTIONS_LEN).contains(&thlen) {
        return false;
    }
    let opt_len = thlen - TCP_HLEN;
    // Zeroed with explicit stores: `[0; 5]` becomes a call to a byte-wise
    // BPF memset (40 iterations) on this target.
    let mut raw = core::mem::MaybeUninit::<OptionWords>::uninit();
    let words = raw.as_mut_ptr().cast::<u64>();
    // SAFETY: five in-bounds word stores initialise the whole array.
    unsafe {
        for i in 0..5 {
            core::ptr::write_volatile(words.add(i), 0);
        }
    }
    if opt_len > 0 {
        // SAFETY: the array has room for the at most 40 option bytes; the
        // helper checks the packet range itself.
        let r = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                (l4 + TCP_HLEN) as u32,
                words.cast(),
                opt_len as u32,
            )
        };
        if r != 0 {
            return false;
        }
    }
    // SAFETY: initialised above.
    let raw = unsafe { raw.assume_init_ref() };
    // The parser gets its own copy of the length, re-read from the packet:
    // `opt_len` is the helper's size argument, so the verifier tracks it
    // precisely, and comparing the parser's offsets against it would make
    // every path through the 40 positions distinct (state explosion).
    let Some(p) = ptr_at::<u8>(ctx, l4 + 12) else {
        return false;
    };
    // SAFETY: bounds checked by `ptr_at`; volatile so it is a separate load.
    let doff = unsafe { core::ptr::read_volatile(p) };
    let parse_len = (((doff >> 4) as usize) * 4).saturating_sub(TCP_HLEN);
    *out = options::parse_scan(raw, parse_len);
    true
}

struct Reply<'a> {
    cfg: &'a Config,
    key: Key,
    epoch: u32,
    isn: u32,
    sport: u16,
    syn_opts: SynOptions,
    ecn: bool,
}

impl Reply<'_> {
    /// Cookie and SYN-ACK options for a flow whose family has `table` and
    /// `mss_clamp`; `default_mss` is RFC's value when the SYN carried none.
    #[inline(always)]
    fn cookie<F: cookie::Flow>(
        &self,
        flow: &F,
        mss_clamp: u16,
        default_mss: u16,
    ) -> (u32, SynAckOptions) {
        let o = &self.syn_opts;
        let mut mss = if o.mss == 0 { default_mss } else { o.mss };
        if mss > mss_clamp {
            mss = mss_clamp;
        }
        let idx = cookie::mss_index(&F::MSS_TABLE, mss);
        // The cookie keeps what we may send (the client's MSS, within our
        // clamp); the SYN-ACK states what we receive: our own MSS, as a
        // kernel listener does. Mirroring a small client MSS would make
        // that client upload in small segments too.
        let mss = mss_clamp;
        if o.has_ts {
            let bits = cookie::option_bits(o.wscale, o.sack_ok, self.ecn);
            let m = cookie::mint(flow, &self.key, self.epoch, self.isn, idx, bits);
            let our_ts = cookie::encode_tsval(self.cfg.clock_ms, m.ts_offset, bits);
            let ws = if o.wscale == NO_WSCALE {
                NO_WSCALE
            } else {
                self.cfg.wscale
            };
            (
                m.cookie,
                options::synack(mss, true, our_ts, o.tsval, o.sack_ok, ws),
            )
        } else {
            // The cookie keeps SACK and the client's shift (if encodable);
            // scaling is offered only when it does, so both sides agree.
            let bits = cookie::option_bits_no_ts(o.wscale, o.sack_ok);
            let c = cookie::make(flow, &self.key, self.epoch, self.isn, idx, bits);
            let ws = if cookie::no_ts_keeps_wscale(bits) {
                self.cfg.wscale
            } else {
                NO_WSCALE
            };
            (c, options::synack(mss, false, 0, 0, o.sack_ok, ws))
        }
    }

    #[inline(always)]
    fn v4(
        &self,
        ctx: &XdpContext,
        l3: usize,
        flow: &FlowV4,
        saddr_be: u32,
        daddr_be: u32,
    ) -> Verdict {
        let (c, opts) = self.cookie(flow, self.cfg.mss4, 536);
        let tcp_len = TCP_HLEN + 4 * opts.len;
        let tot_len = (IPV4_HLEN + tcp_len) as u16;
        if resize(ctx, l3 + tot_len as usize).is_none() || swap_macs(ctx).is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        // IPv4 header: no options, DF, fresh checksum.
        let mut s = 0u64;
        s = checksum::add32(s, 0x4500_0000 | tot_len as u32);
        s = checksum::add32(s, 0x0000_4000);
        s = checksum::add32(s, ((TTL as u32) << 24) | ((IPPROTO_TCP as u32) << 16));
        s = checksum::add32(s, flow.daddr);
        s = checksum::add32(s, flow.saddr);
        let ip_csum = checksum::finish(s);
        let ok = store::<[u32; 5]>(
            ctx,
            l3,
            [
                (0x4500_0000u32 | tot_len as u32).to_be(),
                0x0000_4000u32.to_be(),
                (((TTL as u32) << 24) | ((IPPROTO_TCP as u32) << 16) | ip_csum as u32).to_be(),
                daddr_be,
                saddr_be,
            ],
        );
        if ok.is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let mut ps = 0u64;
        ps = checksum::add32(ps, flow.daddr);
        ps = checksum::add32(ps, flow.saddr);
        ps = checksum::add32(ps, IPPROTO_TCP as u32 + tcp_len as u32);
        self.write_tcp(ctx, l3 + IPV4_HLEN, flow.dport, c, &opts, ps)
    }

    #[inline(always)]
    fn v6(&self, ctx: &XdpContext, l3: usize, flow: &FlowV6) -> Verdict {
        let (c, opts) = self.cookie(flow, self.cfg.mss6, 1220);
        let tcp_len = TCP_HLEN + 4 * opts.len;
        if resize(ctx, l3 + IPV6_HLEN + tcp_len).is_none() || swap_macs(ctx).is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let hdr = [
            0x6000_0000u32.to_be(),
            (((tcp_len as u32) << 16) | ((IPPROTO_TCP as u32) << 8) | TTL as u32).to_be(),
        ];
        let d = flow.daddr;
        let s = flow.saddr;
        let ok = store::<[u32; 2]>(ctx, l3, hdr)
            .and_then(|_| store::<[u64; 2]>(ctx, l3 + 8, [d[0].to_be(), d[1].to_be()]))
            .and_then(|_| store::<[u64; 2]>(ctx, l3 + 24, [s[0].to_be(), s[1].to_be()]));
        if ok.is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let mut ps = 0u64;
        ps = checksum::add64(ps, d[0]);
        ps = checksum::add64(ps, d[1]);
        ps = checksum::add64(ps, s[0]);
        ps = checksum::add64(ps, s[1]);
        ps = checksum::add32(ps, tcp_len as u32);
        ps = checksum::add32(ps, IPPROTO_TCP as u32);
        self.write_tcp(ctx, l3 + IPV6_HLEN, flow.dport, c, &opts, ps)
    }

    /// Writes the SYN-ACK's TCP header and options at `l4`; `sum` holds the
    /// pseudo-header.
    #[inline(always)]
    fn write_tcp(
        &self,
        ctx: &XdpContext,
        l4: usize,
        dport: u16,
        cookie: u32,
        o: &SynAckOptions,
        mut sum: u64,
    ) -> Verdict {
        let sport = u16::from_be(self.sport);
        let ports = ((dport as u32) << 16) | sport as u32;
        let ack = self.isn.wrapping_add(1);
        let doff_flags =
            ((((5 + o.len) as u32) << 12) | (SYN | ACK) as u32) << 16 | self.cfg.window as u32;
        sum = checksum::add32(sum, ports);
        sum = checksum::add32(sum, cookie);
        sum = checksum::add32(sum, ack);
        sum = checksum::add32(sum, doff_flags);
        let w = &o.words;
        // Unused option words are zero: summing all five is exact.
        sum = checksum::add32(sum, w[0]);
        sum = checksum::add32(sum, w[1]);
        sum = checksum::add32(sum, w[2]);
        sum = checksum::add32(sum, w[3]);
        sum = checksum::add32(sum, w[4]);
        let csum = checksum::finish(sum);
        let hdr = [
            ports.to_be(),
            cookie.to_be(),
            ack.to_be(),
            doff_flags.to_be(),
            ((csum as u32) << 16).to_be(),
        ];
        let mut ok =
            store::<[u32; 5]>(ctx, l4, hdr).and_then(|_| store::<u32>(ctx, l4 + 20, w[0].to_be()));
        if o.len > 1 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 24, w[1].to_be()));
        }
        if o.len > 2 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 28, w[2].to_be()));
        }
        if o.len > 3 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 32, w[3].to_be()));
        }
        if o.len > 4 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 36, w[4].to_be()));
        }
        match ok {
            Some(()) => (XDP_TX, Counter::SynAnswered),
            None => (XDP_DROP, Counter::DropResize),
        }
    }
}

/// Grows or shrinks the frame to exactly `len` bytes.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<()> {
    let cur = ctx.data_end() - ctx.data();
    let delta = len as i32 - cur as i32;
    if delta != 0 {
        // SAFETY: helper on our own context; it validates `delta`.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return None;
        }
    }
    Some(())
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let m = load::<[u16; 6]>(ctx, 0)?;
    store::<[u16; 6]>(ctx, 0, [m[3], m[4], m[5], m[0], m[1], m[2]])
}
