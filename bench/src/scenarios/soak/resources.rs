//! ackgate's resources as the soak watches them: descriptors by kind,
//! memory, threads and `connections_active`, and what counts as a leak.

use std::{
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate::{sys::rlimit, telemetry::metrics as m};
use anyhow::{Context as _, Result};
use nix::unistd::Pid;
use serde::Serialize;

use super::{super::rss_kib, scrape};
use crate::lab::BenchLab;

/// How long resources may take to come back after the load stops: relays
/// finish their closes and io_uring's idle workers exit (after 5 s).
const SETTLE: Duration = Duration::from_secs(30);
/// Memory a run may keep above its baseline: allocator arenas and caches
/// grown at the peak are not returned to the system, a leak grows with
/// the connection count (1 KiB per connection over a quick run's
/// thousands would pass this, over a full run's hundreds of thousands
/// would not).
const RSS_SLACK_KIB: u64 = 16 << 10;

/// ackgate's resources at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub(super) struct Resources {
    /// Seconds since the soak began (the baseline: 0).
    pub(super) t: f64,
    /// Open descriptors: sockets, pipes (the splice pool: bounded by
    /// `--splice-pipes`, kept for reuse), and the rest (the ring, maps,
    /// eventfds, io_uring, files).
    pub(super) sockets: u64,
    pub(super) pipes: u64,
    pub(super) other_fds: u64,
    pub(super) rss_kib: u64,
    /// The process's own threads, and io_uring's workers (`iou-wrk-*`),
    /// which the kernel starts on demand and ends after 5 s idle.
    pub(super) threads: u64,
    pub(super) io_workers: u64,
    /// `ackgate_connections_active`, all services.
    pub(super) active: f64,
}

pub(super) fn sample(lab: &BenchLab, pid: Pid, t: f64) -> Result<Resources> {
    let proc_ = format!("/proc/{pid}");
    let mut r = Resources {
        t,
        ..Default::default()
    };
    for e in std::fs::read_dir(format!("{proc_}/fd")).context("ackgate's descriptors")? {
        let Ok(link) = std::fs::read_link(e?.path()) else {
            continue; // closed meanwhile
        };
        let l = link.to_string_lossy();
        if l.starts_with("socket:") {
            r.sockets += 1;
        } else if l.starts_with("pipe:") {
            r.pipes += 1;
        } else {
            r.other_fds += 1;
        }
    }
    r.rss_kib = rss_kib(pid.as_raw())?;
    for e in std::fs::read_dir(format!("{proc_}/task"))? {
        let comm = std::fs::read_to_string(e?.path().join("comm")).unwrap_or_default();
        if comm.starts_with("iou-wrk") || comm.starts_with("iou-sqp") {
            r.io_workers += 1;
        } else {
            r.threads += 1;
        }
    }
    r.active = scrape(lab)?.sum(m::CONNECTIONS_ACTIVE, &[]);
    Ok(r)
}

/// Samples until `stop`, every `every`.
pub(super) fn sampler(
    lab: &BenchLab,
    pid: Pid,
    t0: Instant,
    every: Duration,
    stop: &AtomicBool,
) -> Result<Vec<Resources>> {
    let mut v = Vec::new();
    while !stop.load(Relaxed) {
        v.push(sample(lab, pid, t0.elapsed().as_secs_f64())?);
        let next = Instant::now() + every;
        while !stop.load(Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(v)
}

/// Samples until nothing [`leaks`] against `base` or [`SETTLE`] has
/// passed; the last sample and how long it took.
pub(super) fn settle(
    lab: &BenchLab,
    pid: Pid,
    base: &Resources,
    t0: Instant,
) -> Result<(Resources, f64)> {
    let start = Instant::now();
    loop {
        let r = sample(lab, pid, t0.elapsed().as_secs_f64())?;
        if leaks(base, &r).is_empty() || start.elapsed() > SETTLE {
            return Ok((r, start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What `after` holds that `base` did not: descriptors, threads and
/// connections exactly; io_uring workers at most as many; memory within
/// [`RSS_SLACK_KIB`]; pipes within the splice pool's bound (it keeps idle
/// pipes for reuse, up to the default's cap whatever the connection
/// limit: not a leak).
pub(super) fn leaks(base: &Resources, after: &Resources) -> Vec<String> {
    let mut v = Vec::new();
    if after.active != 0.0 {
        v.push(format!("{} connections still active", after.active));
    }
    for (what, b, x) in [
        ("sockets", base.sockets, after.sockets),
        ("other descriptors", base.other_fds, after.other_fds),
        ("threads", base.threads, after.threads),
    ] {
        if x != b {
            v.push(format!("{what}: {x} after, {b} at the baseline"));
        }
    }
    let pipes_max = base
        .pipes
        .max(rlimit::PER_PIPE * rlimit::MAX_DEFAULT_PIPES as u64);
    if after.pipes > pipes_max {
        v.push(format!(
            "pipe descriptors: {} after, more than the pool's bound {pipes_max}",
            after.pipes
        ));
    }
    if after.io_workers > base.io_workers {
        v.push(format!(
            "io_uring workers: {} after, {} at the baseline",
            after.io_workers, base.io_workers
        ));
    }
    if after.rss_kib > base.rss_kib + RSS_SLACK_KIB {
        v.push(format!(
            "memory: {} KiB after, {} KiB at the baseline (slack {RSS_SLACK_KIB} KiB)",
            after.rss_kib, base.rss_kib
        ));
    }
    v
}

/// Each resource's highest sample.
pub(super) fn peak(samples: &[Resources]) -> Resources {
    let max = |f: fn(&Resources) -> u64| samples.iter().map(f).max().unwrap_or(0);
    Resources {
        t: 0.0,
        sockets: max(|r| r.sockets),
        pipes: max(|r| r.pipes),
        other_fds: max(|r| r.other_fds),
        rss_kib: max(|r| r.rss_kib),
        threads: max(|r| r.threads),
        io_workers: max(|r| r.io_workers),
        active: samples.iter().map(|r| r.active).fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Resources {
        Resources {
            sockets: 8,
            pipes: 6,
            other_fds: 30,
            rss_kib: 25_000,
            threads: 3,
            ..Default::default()
        }
    }

    #[test]
    fn leaks_names_what_did_not_come_back() {
        let b = base();
        assert!(leaks(&b, &b).is_empty());
        // The pool kept pipes, memory stayed within the slack, workers ended.
        let fine = Resources {
            pipes: 40,
            rss_kib: b.rss_kib + RSS_SLACK_KIB,
            ..b
        };
        assert!(leaks(&b, &fine).is_empty(), "{:?}", leaks(&b, &fine));
        for (after, what) in [
            (Resources { sockets: 9, ..b }, "sockets: 9 after, 8"),
            (Resources { other_fds: 31, ..b }, "other descriptors"),
            (Resources { threads: 4, ..b }, "threads"),
            (Resources { active: 1.0, ..b }, "1 connections still active"),
            (Resources { io_workers: 1, ..b }, "io_uring workers"),
            (Resources { pipes: 513, ..b }, "pool's bound 512"),
            (
                Resources {
                    rss_kib: b.rss_kib + RSS_SLACK_KIB + 1,
                    ..b
                },
                "memory",
            ),
        ] {
            let l = leaks(&b, &after);
            assert!(l.len() == 1 && l[0].contains(what), "{l:?} for {what}");
        }
    }
}
