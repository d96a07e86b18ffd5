//! The ACK path for flows the kernel has no socket for: a segment carrying
//! a valid cookie becomes a `Handoff` event for userspace.

use ackgate_common::{
    cookie::{self, Key},
    options::SynOptions,
    wire::{Counter, Handoff, HF_ECN, HF_FIN, HF_PROBE, HF_SACK, HF_TIMESTAMPS, KEY_SLOTS},
};
use aya_ebpf::{bindings::xdp_action::XDP_DROP, helpers::bpf_ktime_get_ns, programs::XdpContext};

use crate::{
    family::{Answer, SOCK_LIVE, SOCK_TIME_WAIT},
    maps::{CONFIG, HANDOFF, KEYS},
    options::read_options,
    packet::{load, unicast_to_us, Seg, ACK, FIN, RST},
    verdict::Verdict,
};

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
pub(crate) fn ack_prepare<A: Answer>(
    ctx: &XdpContext,
    s: &Seg,
    addrs: &A,
    o: &mut SynOptions,
) -> u32 {
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
    if !unicast_to_us(ctx, s.macs) {
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

/// `ack_prepare`'s outcome: go on to `verify_ack` (`ACK_CONTINUE*`), or
/// why not.
pub(crate) const ACK_CONTINUE: u32 = 0;
pub(crate) const ACK_SOCKET: u32 = 1;
pub(crate) const ACK_RST: u32 = 2;
pub(crate) const ACK_MALFORMED: u32 = 3;
pub(crate) const ACK_CONTINUE_TIME_WAIT: u32 = 4;
pub(crate) const ACK_NOT_UNICAST: u32 = 5;
pub(crate) const ACK_NO_ACK_FLAG: u32 = 6;

/// Cookie check and handoff event, in a frame of its own.
#[inline(never)]
pub(crate) fn verify_ack<A: Answer>(
    ctx: &XdpContext,
    s: &Seg,
    addrs: &A,
    o: &SynOptions,
) -> Verdict {
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
