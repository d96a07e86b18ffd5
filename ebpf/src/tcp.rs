//! TCP to a protected service: header checks, then which path the segment
//! takes: the SYN path, the ACK path, or the kernel.

use ackgate_common::{
    options::SynOptions,
    wire::{Counter, FLAG_ACL_GLOBAL, FLAG_ACL_SERVICE, FLAG_HANDOFF},
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};

use crate::{
    ack::{
        ack_prepare, verify_ack, ACK_CONTINUE, ACK_CONTINUE_TIME_WAIT, ACK_NOT_UNICAST,
        ACK_NO_ACK_FLAG, ACK_RST, ACK_SOCKET,
    },
    acl::{ACL_REFUSED_GLOBAL, ACL_REFUSED_SERVICE},
    family::{acl_verdict, sock_state, Answer, SOCK_LIVE},
    maps::CONFIG,
    options::read_options,
    packet::{ptr_at, unicast_to_us, Seg, ACK, FIN, RST, SYN, TCP_HLEN},
    syn::{remember, syn},
    verdict::{finish, Verdict},
};

/// TCP to a protected service: header checks, then the SYN or ACK path,
/// each a BPF function of its own so their frames never stack.
#[inline(always)]
pub(crate) fn tcp<A: Answer>(
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
    if flags & ACK != 0 {
        return if sock_state(ctx, addrs) == SOCK_LIVE {
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
    if !unicast_to_us(ctx, seg.macs) {
        return (XDP_DROP, Counter::DropNotUnicast);
    }
    if addrs.martian() {
        return (XDP_DROP, Counter::DropMartian);
    }
    // Access lists before the socket lookup and any cookie work: a refused
    // source costs one trie lookup. No list configured: not even that.
    let acl = match CONFIG.get(0) {
        Some(c) => c.flags & (FLAG_ACL_GLOBAL | FLAG_ACL_SERVICE),
        None => 0,
    };
    if acl != 0 {
        match acl_verdict(addrs, acl) {
            ACL_REFUSED_GLOBAL => return (XDP_DROP, Counter::DropAclGlobal),
            ACL_REFUSED_SERVICE => return (XDP_DROP, Counter::DropAclService),
            _ => {}
        }
    }
    if sock_state(ctx, addrs) == SOCK_LIVE {
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
