//! Frame access and header constants. Every header read is its own bounds
//! check (`load`); writes go through `store` the same way.

use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};

use ackgate_common::wire::MAX_IFACES;

use crate::maps::CONFIG;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88a8;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const TCP_HLEN: usize = 20;
pub(crate) const IPV4_HLEN: usize = 20;
pub(crate) const IPV6_HLEN: usize = 40;
pub(crate) const TTL: u8 = 64;

/// TCP flags.
pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const ECE: u8 = 0x40;
pub(crate) const CWR: u8 = 0x80;

/// Bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
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
pub(crate) fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes are inside the frame.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
pub(crate) fn store<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; same alignment note as `load`.
    unsafe { *p = v };
    Some(())
}

/// The frame's length: the linear part, unless `need` lies beyond it, then
/// the whole multi-buffer frame (a helper call only jumbo frames pay).
#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext, need: usize) -> usize {
    let linear = ctx.data_end() - ctx.data();
    if need <= linear {
        return linear;
    }
    // SAFETY: helper on our own context, no other arguments.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// Grows or shrinks the frame to exactly `len` bytes.
#[inline(always)]
pub(crate) fn resize(ctx: &XdpContext, len: usize) -> Option<()> {
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
pub(crate) fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let m = load::<[u16; 6]>(ctx, 0)?;
    store::<[u16; 6]>(ctx, 0, [m[3], m[4], m[5], m[0], m[1], m[2]])
}

/// The frame's destination MAC (bytes in memory order, byte 0 lowest) and,
/// at bit 48, the source MAC's group bit: what `unicast_to_us` needs, taken
/// from the Ethernet header loaded once.
#[inline(always)]
pub(crate) fn mac_word(eth: &[u16; 7]) -> u64 {
    // The group bit is the first byte's lowest: the low byte of a
    // little-endian u16 load.
    let src_group = (eth[3] & 0x01) as u64;
    eth[0] as u64 | (eth[1] as u64) << 16 | (eth[2] as u64) << 32 | src_group << 48
}

/// Whether the frame came to its interface's own unicast MAC from a
/// unicast source: the only frames ackgate answers or hands off. Each
/// attached interface has its MAC in `Config::ifaces`, found by the ingress
/// ifindex in a bounded scan (an entry with ifindex 0 applies to every
/// interface; no entries: no MAC is checked).
#[inline(always)]
pub(crate) fn unicast_to_us(ctx: &XdpContext, macs: u64) -> bool {
    const DST: u64 = 0xffff_ffff_ffff;
    if macs & (1 << 48) != 0 || macs & 0x01 != 0 {
        return false;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let n = cfg.n_ifaces;
    if n == 0 {
        return true;
    }
    // SAFETY: the context of the running program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let mut i = 0;
    while i < MAX_IFACES {
        if i as u32 >= n {
            return false;
        }
        let e = &cfg.ifaces[i];
        if e.ifindex == ifindex || e.ifindex == 0 {
            return e.mac == macs & DST;
        }
        i += 1;
    }
    false
}

/// A TCP segment to a protected service, as the SYN and ACK paths need it.
pub(crate) struct Seg {
    pub(crate) l3: usize,
    pub(crate) l4: usize,
    pub(crate) thlen: usize,
    pub(crate) seg_end: usize,
    pub(crate) flags: u8,
    /// Host order.
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) window: u16,
    /// Network order.
    pub(crate) sport: u16,
    /// See `mac_word`.
    pub(crate) macs: u64,
}
