//! Per packet: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6,
//! then the protected-service lookup (`ADDRS` + `PORTS`). TCP to a
//! protected service goes on to `tcp`; anything else passes untouched.

use ackgate_common::{
    cookie::{FlowV4, FlowV6},
    wire::{Counter, MAX_ADDRS_V4, MAX_ADDRS_V6, SERVER_FIRST_SHIFT, V6_PORT_BIT},
};
use aya_ebpf::{bindings::xdp_action::XDP_DROP, programs::XdpContext};

use crate::{
    family::{V4, V6},
    maps::{ADDRS, PORTS},
    packet::{
        frame_len, load, mac_word, ptr_at, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP,
        ETH_P_IPV6, IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN, TCP_HLEN,
    },
    tcp::tcp,
    verdict::{finish, Verdict, PASS},
};

/// `port_flags` bits.
const PROTECTED: u8 = 1;
const SERVER_FIRST: u8 = 2;

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

/// The frame's action, counted: the whole of `ackgate`.
#[inline(always)]
pub(crate) fn process(ctx: &XdpContext) -> u32 {
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
