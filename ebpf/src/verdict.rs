//! What a path decides: an XDP action and the counter that records it.

use ackgate_common::wire::Counter;
use aya_ebpf::bindings::xdp_action::XDP_PASS;

use crate::maps::COUNTERS;

pub(crate) type Verdict = (u32, Counter);
pub(crate) const PASS: Verdict = (XDP_PASS, Counter::Passed);

/// Counts the verdict and returns its action. Every path ends here exactly
/// once; BPF functions return a plain u32 (at most five register arguments,
/// no struct returns).
#[inline(always)]
pub(crate) fn finish((action, counter): Verdict) -> u32 {
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
