//! The two clocks XDP and userspace must agree on.

/// Unix time in milliseconds (wrapping): the clock of SYN-ACK TSvals. A
/// fleet's instances agree on it (NTP), unlike on uptime; each flow adds a
/// secret offset, so TSvals reveal neither.
pub fn cookie_clock_ms() -> u32 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as u32
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps handoff events.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
