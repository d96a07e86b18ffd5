//! The lab's XDP programs (object `ackgate-harness`, loaded by
//! `ackgate-lab`), never part of the product's packet path or object:
//! pass and drop for veth ends, counting sinks, the BPF_PROG_TEST_RUN
//! bench harness, the live-frame flood generator and the floor responder.
//! Built for `bpfel-unknown-none` with the product by `proxy/build.rs`; on
//! the host an empty binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use ackgate_common::{
        checksum::{add16, add32, finish},
        siphash::sip24_words,
        wire::{BenchFrame, BENCH_FRAME_MAX},
    };
    use aya_ebpf::{
        bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
        helpers::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
        macros::{map, xdp},
        maps::{Array, PerCpuArray, ProgramArray},
        programs::XdpContext,
    };

    #[map]
    static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
    #[map]
    static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
    #[map]
    static GEN_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
    #[map]
    static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static FLOOR_KEY: Array<[u64; 2]> = Array::with_max_entries(1, 0);

    /// Bytes of Ethernet + IPv6 + TCP: every field the generator varies
    /// lies below this in either family.
    const GEN_MIN: usize = 74;
    /// Ethernet + IPv4 + TCP without options: the floor's SYN-ACK.
    const FLOOR_LEN: usize = 54;

    /// Lets everything through. veth only delivers `XDP_TX` frames to a peer that
    /// has an XDP program of its own, so labs attach this to the far end.
    #[xdp(frags)]
    pub fn ackgate_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

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
        if restore(&ctx, BENCH_FRAME.get(0)).is_none() {
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

    /// Drops everything and counts it: the sink that absorbs SYN-ACKs at
    /// the attacker's interface, and the target-side sink whose rate is the
    /// generator's ceiling.
    #[xdp]
    pub fn ackgate_count(_ctx: XdpContext) -> u32 {
        if let Some(n) = COUNT.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array; nothing else
            // writes it while the program runs.
            unsafe { *n += 1 };
        }
        XDP_DROP
    }

    /// Drops (and counts) frames addressed to the flood's spoofed sources,
    /// 10.99.0.0/16 and fd00:99::/64, and passes the rest: on the switch's
    /// end toward the proxy, the answers to a flood end there, as the
    /// attacker's network absorbs them, while the legitimate clients'
    /// replies go on through the switch. Multi-buffer aware, like `pass`
    /// which it stands in for.
    #[xdp(frags)]
    pub fn ackgate_absorb(ctx: XdpContext) -> u32 {
        let (data, end) = (ctx.data(), ctx.data_end());
        // Ethernet + the IPv6 header's addresses: enough for either family.
        if data + 54 > end {
            return XDP_PASS;
        }
        let p = data as *const u8;
        // SAFETY: offsets under 54, checked above.
        let spoofed = unsafe {
            match (*p.add(12), *p.add(13)) {
                // IPv4: the destination address at 30.
                (0x08, 0x00) => *p.add(30) == 10 && *p.add(31) == 99,
                // IPv6: the destination's first 64 bits at 38.
                (0x86, 0xdd) => u32::from_be(get32(p, 38)) == 0xfd00_0099 && get32(p, 42) == 0,
                _ => false,
            }
        };
        if !spoofed {
            return XDP_PASS;
        }
        if let Some(n) = COUNT.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *n += 1 };
        }
        XDP_DROP
    }

    /// The flood generator, driven by BPF_PROG_RUN in live-frame mode and
    /// never attached. Each run writes the template SYN in `GEN_FRAME` over
    /// the frame (pages come back from the target rewritten into SYN-ACKs),
    /// gives it this CPU's next source address (low 16 bits), source port
    /// and sequence number, patches both checksums for exactly those
    /// words, and transmits it out of the interface the run names.
    #[xdp]
    pub fn ackgate_gen(ctx: XdpContext) -> u32 {
        // GEN_MIN is checked on the frame below.
        if restore(&ctx, GEN_FRAME.get(0)).is_none() {
            return XDP_ABORTED;
        }
        let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
            return XDP_ABORTED;
        };
        // SAFETY: this CPU's slot of a per-CPU array.
        let n = unsafe {
            let n = *seq;
            *seq = n.wrapping_add(1);
            n
        };
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + GEN_MIN > end {
            return XDP_ABORTED;
        }
        let p = data as *mut u8;
        // IPv6: the source's last word at 36, TCP at 54; IPv4: at 28, TCP
        // at 34 and the header checksum at 24.
        // SAFETY: every offset below is under GEN_MIN, checked above.
        unsafe {
            let v6 = *p.add(12) == 0x86;
            let (src, tcp) = if v6 { (36, 54) } else { (28, 34) };
            let new_src = n.wrapping_mul(40503) as u16;
            let new_port = ((n.wrapping_mul(2_654_435_761) >> 16) as u16) | 0x0400;
            let new_seq = n.wrapping_mul(0x9E37_79B1);
            let old_src = get16(p, src);
            let old_port = get16(p, tcp);
            let (old_hi, old_lo) = (get16(p, tcp + 4), get16(p, tcp + 6));
            let (new_hi, new_lo) = ((new_seq >> 16) as u16, new_seq as u16);
            put16(p, src, new_src);
            put16(p, tcp, new_port);
            put16(p, tcp + 4, new_hi);
            put16(p, tcp + 6, new_lo);
            let mut c = get16(p, tcp + 16);
            c = patch(c, old_src, new_src);
            c = patch(c, old_port, new_port);
            c = patch(c, old_hi, new_hi);
            c = patch(c, old_lo, new_lo);
            put16(p, tcp + 16, c);
            if !v6 {
                put16(p, 24, patch(get16(p, 24), old_src, new_src));
            }
        }
        XDP_TX
    }

    /// The floor: the least a SipHash SYN-cookie responder can do. An IPv4
    /// SYN without IP options becomes a SYN-ACK without TCP options (the
    /// frame cut to 54 bytes), its sequence number a SipHash-2-4 of the
    /// 4-tuple and the client's ISN, sent back out with XDP_TX. Anything
    /// else passes. No MSS, window scale, SACK or timestamps, no epochs, no
    /// service lookup, no counters: what ackgate adds on top of this is
    /// what its cost per SYN is compared against.
    #[xdp]
    pub fn ackgate_floor(ctx: XdpContext) -> u32 {
        let Some(key) = FLOOR_KEY.get(0) else {
            return XDP_ABORTED;
        };
        let (k0, k1) = (key[0], key[1]);
        {
            let (data, end) = (ctx.data(), ctx.data_end());
            if data + FLOOR_LEN > end {
                return XDP_PASS;
            }
            let p = data as *const u8;
            // SAFETY: offsets under FLOOR_LEN, checked above.
            let syn = unsafe {
                *p.add(12) == 0x08
                    && *p.add(13) == 0x00
                    && *p.add(14) == 0x45
                    && *p.add(23) == 6
                    && *p.add(47) & 0x3f == 0x02
            };
            if !syn {
                return XDP_PASS;
            }
        }
        if resize(&ctx, FLOOR_LEN).is_none() {
            return XDP_ABORTED;
        }
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + FLOOR_LEN > end {
            return XDP_ABORTED;
        }
        let p = data as *mut u8;
        // SAFETY: offsets under FLOOR_LEN, checked above.
        unsafe {
            let (saddr, daddr) = (get32(p, 26), get32(p, 30));
            let (sport, dport) = (get16(p, 34), get16(p, 36));
            let isn = get32(p, 38);
            let words = [
                (u64::from(saddr) << 32) | u64::from(daddr),
                (u64::from(sport) << 48) | (u64::from(dport) << 32) | u64::from(isn),
            ];
            let cookie = sip24_words(k0, k1, &words) as u32;
            // Ethernet: swap the addresses.
            let mut i = 0;
            while i < 6 {
                let b = *p.add(i);
                *p.add(i) = *p.add(6 + i);
                *p.add(6 + i) = b;
                i += 1;
            }
            // IPv4: a 40-byte datagram back to the sender.
            put16(p, 16, 40u16.to_be());
            put16(p, 18, 0);
            put16(p, 20, 0x4000u16.to_be());
            *p.add(22) = 64;
            put32(p, 26, daddr);
            put32(p, 30, saddr);
            put16(p, 24, 0);
            let mut s = 0u64;
            let mut w = 14;
            while w < 34 {
                s = add16(s, u16::from_be(get16(p, w)));
                w += 2;
            }
            put16(p, 24, finish(s).to_be());
            // TCP: ports swapped, the cookie, the client's ISN + 1.
            put16(p, 34, dport);
            put16(p, 36, sport);
            put32(p, 38, cookie.to_be());
            put32(p, 42, u32::from_be(isn).wrapping_add(1).to_be());
            *p.add(46) = 0x50;
            *p.add(47) = 0x12;
            put16(p, 48, 0xffff);
            put16(p, 50, 0);
            put16(p, 52, 0);
            let mut s = add32(add32(0, u32::from_be(daddr)), u32::from_be(saddr));
            s = add32(s, 6 + 20);
            let mut w = 34;
            while w < 54 {
                s = add16(s, u16::from_be(get16(p, w)));
                w += 2;
            }
            put16(p, 50, finish(s).to_be());
        }
        XDP_TX
    }

    /// RFC 1624: the checksum after one 16-bit word changed from `old` to
    /// `new` (any byte order, as long as all three agree).
    #[inline(always)]
    fn patch(sum: u16, old: u16, new: u16) -> u16 {
        let mut s = u32::from(!sum) + u32::from(!old) + u32::from(new);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }

    /// Unaligned packet reads and writes in the packet's byte order.
    #[inline(always)]
    unsafe fn get16(p: *const u8, off: usize) -> u16 {
        (p.add(off) as *const u16).read_unaligned()
    }
    #[inline(always)]
    unsafe fn put16(p: *mut u8, off: usize, v: u16) {
        (p.add(off) as *mut u16).write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn get32(p: *const u8, off: usize) -> u32 {
        (p.add(off) as *const u32).read_unaligned()
    }
    #[inline(always)]
    unsafe fn put32(p: *mut u8, off: usize, v: u32) {
        (p.add(off) as *mut u32).write_unaligned(v)
    }

    /// Makes the frame a copy of the template `t`: its length, its bytes.
    #[inline(always)]
    fn restore(ctx: &XdpContext, t: Option<&BenchFrame>) -> Option<()> {
        let t = t?;
        let len = t.len as usize;
        // Two tests, not a range: LLVM folds a range test into one
        // subtraction, which leaves the verifier without a bound on `len`.
        if len == 0 || len > BENCH_FRAME_MAX {
            return None;
        }
        resize(ctx, len)?;
        // SAFETY: reads `len <= BENCH_FRAME_MAX` bytes of the map value; the
        // helper bounds-checks the packet.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, t.bytes.as_ptr() as *mut _, len as u32) } != 0 {
            return None;
        }
        Some(())
    }

    /// Grows or shrinks the frame to exactly `len` bytes (as the product's
    /// `packet::resize`, repeated here to keep this file standalone).
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

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable in a verified program.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
