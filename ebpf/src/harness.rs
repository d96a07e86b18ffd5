//! The lab's XDP programs (object `ackgate-harness`, loaded by
//! `ackgate-lab`), never part of the product's packet path or object.
//! Built for `bpfel-unknown-none` with the product by `proxy/build.rs`; on
//! the host an empty binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use ackgate_common::wire::{BenchFrame, BENCH_FRAME_MAX};
    use aya_ebpf::{
        bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
        helpers::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
        macros::{map, xdp},
        maps::{Array, ProgramArray},
        programs::XdpContext,
    };

    #[map]
    static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
    #[map]
    static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

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
