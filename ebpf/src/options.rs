//! The SYN's (or a handshake ACK's) TCP options: the common layouts read
//! with direct loads, anything else copied out and scanned.

use ackgate_common::options::{self, OptionWords, SynOptions};
use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};

use crate::packet::{ptr_at, Seg, TCP_HLEN};

/// The segment's options: the fast layouts inline, anything else through
/// `syn_options`.
#[inline(never)]
pub(crate) fn read_options(ctx: &XdpContext, s: &Seg, o: &mut SynOptions) -> bool {
    fast_options(ctx, s.l4 + TCP_HLEN, s.thlen - TCP_HLEN, o) || syn_options(ctx, s.l4, s.thlen, o)
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
