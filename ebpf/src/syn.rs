//! The SYN path: a cookie SYN-ACK for a SYN the kernel has no socket for,
//! and, for server-first services, a record of it for retransmission.

use core::mem::size_of;

use ackgate_common::{
    cookie::Key,
    options::SynOptions,
    wire::{Counter, RecentKey, RecentSynAck, KEY_SLOTS, SYNACK_TCP_MAX},
};
use aya_ebpf::{bindings::xdp_action::XDP_DROP, helpers::bpf_xdp_load_bytes, programs::XdpContext};

use crate::{
    family::Answer,
    maps::{CONFIG, KEYS, RECENT},
    packet::{load, ptr_at, Seg, CWR, ECE, IPV4_HLEN, IPV6_HLEN, TCP_HLEN},
    synack::Reply,
    verdict::Verdict,
};

/// The SYN path: a cookie SYN-ACK in place. Its own BPF function, so its
/// frame is not stacked under the ACK path's.
#[inline(never)]
pub(crate) fn syn<A: Answer>(ctx: &XdpContext, s: &Seg, addrs: &A, o: &SynOptions) -> Verdict {
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

/// Records the SYN-ACK just built in the frame in `RECENT`, so userspace
/// can retransmit it to a server-first client whose ACK is lost. Best
/// effort: an LRU map under a flood simply forgets.
#[inline(never)]
pub(crate) fn remember(ctx: &XdpContext, l3: usize, family: u8) -> u32 {
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
