//! The lab scenarios: `syn`, `attack`, `conn`, `bulk`, `relay` and `soak`.
//! Each builds a fresh [`BenchLab`], runs every target side by side
//! (interleaved where they can run together, one after the other where
//! they need the same port or sysctls), repeats, and reports medians with
//! their spread; `soak` runs ackgate alone, for long.
//!
//! This module is what they share, so that each scenario's file says only
//! what it measures.

use std::{net::IpAddr, sync::atomic::AtomicBool, time::Duration};

use ackgate_lab::{harness::Attached, Process};
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;

use crate::{
    flood::{self, Sent, Spec},
    lab::{self, BenchLab, Running, Target},
    report::{self, Header, Stat},
    Common,
};

pub mod attack;
pub mod bulk;
pub mod conn;
pub mod relay;
pub mod soak;
pub mod syn;

/// A scenario's run: its name and flags, and the lab with nginx behind the
/// targets. Fields drop in order, so nginx stops before its namespace goes.
pub struct Scenario<'a> {
    name: &'static str,
    common: &'a Common,
    _nginx: Process,
    pub lab: BenchLab,
}

impl<'a> Scenario<'a> {
    /// A fresh lab; nginx serves `/` and a `/bulk` of `bulk_bytes`.
    pub fn new(name: &'static str, common: &'a Common, bulk_bytes: u64) -> Result<Self> {
        lab::set_extra_args(&common.ackgate_args);
        XDP_PASS_BASELINES.store(
            common.xdp_pass_baselines,
            std::sync::atomic::Ordering::Relaxed,
        );
        let lab = BenchLab::new()?;
        let nginx = lab::nginx(&lab, bulk_bytes)?;
        Ok(Scenario {
            name,
            common,
            _nginx: nginx,
            lab,
        })
    }

    /// Probed when the report is made, so its time is the run's end.
    pub fn header(&self, runs: usize) -> Header {
        Header::probe(self.name, runs)
    }

    /// The Markdown title, the machine and the command line; the scenario
    /// goes on with ": " and what it ran.
    pub fn heading(&self, head: &Header, title: &str) -> String {
        head.markdown(title, self.common.quick)
    }

    /// `<name>.json` and `<name>.md` in `--out`, with the SVGs given.
    pub fn write(&self, rep: &impl Serialize, md: &str, svgs: &[(String, String)]) -> Result<()> {
        report::write(&self.common.out, self.name, rep, md, svgs)
    }
}

// ---------------------------------------------------------------- CPU

/// CPU seconds the machine spent, all cores together (from /proc/stat).
#[derive(Clone, Copy)]
pub struct CpuTime {
    pub busy_s: f64,
}

/// Runs `f` and returns its result with the CPU time spent meanwhile: the
/// targets, clients and generator share the cores, so only the machine's
/// total is honest.
pub fn cpu_during<R>(f: impl FnOnce() -> Result<R>) -> Result<(R, CpuTime)> {
    let c0 = ticks()?;
    let r = f()?;
    let c1 = ticks()?;
    Ok((
        r,
        CpuTime {
            busy_s: (c1 - c0) as f64 * tick(),
        },
    ))
}

/// Seconds per clock tick, the unit of /proc's CPU times.
pub fn tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A process's resident memory (VmRSS), KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// /proc/stat's aggregate line: busy ticks.
fn ticks() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let l = s.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 7, "unexpected /proc/stat: {l}");
    // user nice system idle iowait irq softirq [steal ...]
    Ok(v[0] + v[1] + v[2] + v[5] + v[6])
}

// ---------------------------------------------------------------- floods

/// The attacker's flood CPU: veth runs the receiver's XDP and stack in the
/// sender's softirq, so the whole SYN path shares this core.
pub const FLOOD_CPU: usize = 1;

/// The SYN defences in the order they can run one after another: ackgate
/// last, as its handed-off sockets, bound to the service address, outlive
/// it (closing) and would block the plain listener's bind.
pub const SYN_DEFENCES: [Target; 3] = [Target::Syncookies, Target::Synproxy, Target::Ackgate];

/// Spoofed SYNs at the service on `dst`: `pps` (None: flat out) for `secs`.
pub fn flood_spec(
    lab: &BenchLab,
    dst: IpAddr,
    pps: Option<u64>,
    secs: f64,
    seed: u64,
) -> Result<Spec> {
    Ok(Spec {
        dst,
        dport: lab::PORT,
        pps,
        duration: Duration::from_secs_f64(secs),
        max_packets: 50_000_000,
        src_mac: lab.atk.mac("atk0")?,
        dst_mac: lab.px.mac("px0")?,
        seed,
        sources: None,
    })
}

/// Floods into the switch's port toward the proxy ([`lab::FLOOD_PORT`]),
/// frames from the attacker's address, on [`FLOOD_CPU`] until the spec
/// ends or `stop` is set.
pub fn flood(lab: &BenchLab, spec: &Spec, stop: &AtomicBool) -> Result<Sent> {
    lab.sw.run(|| -> Result<Sent> {
        flood::pin(FLOOD_CPU)?;
        flood::run(lab::FLOOD_PORT, spec, stop)
    })?
}

/// The generator's ceiling: flat out into an XDP_DROP sink on px0 (its
/// receive path isolated as the targets' is), so a reader can tell the
/// generator's limit from the target's.
pub fn ceiling(lab: &BenchLab, secs: f64) -> Result<Sent> {
    let _sink = lab.px.run(|| Attached::drop_all("px0"))??;
    lab.isolate_proxy_rx()?;
    let spec = flood_spec(lab, lab::VIP4.into(), None, secs, 99)?;
    flood(lab, &spec, &AtomicBool::new(false))
}

// ---------------------------------------------------------------- side by side

/// A target's figure over the rounds, and the CPU it cost per unit.
#[derive(Serialize)]
pub struct RateRow {
    pub target: Target,
    pub value: Stat,
    pub cpu_per_unit: Stat,
    /// Connections that failed or timed out (3 s), summed over runs.
    pub failed: u64,
}

/// One measurement of one target.
pub struct Sample {
    pub value: f64,
    pub cpu_per_unit: f64,
    pub failed: u64,
}

/// `--xdp-pass-baselines`.
static XDP_PASS_BASELINES: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The targets relays are compared across.
pub const RELAYS: [Target; 6] = [
    Target::Ackgate,
    Target::AckgateOneThread,
    Target::AckgateTokio,
    Target::AckgateCopy,
    Target::Haproxy,
    Target::Direct,
];

/// Measures each of `targets` in turn, `runs` rounds, so all see the same
/// machine. Those that can run at once (HAProxy listens on port 81, which
/// XDP passes; direct goes to the backend) start once; the ones that attach
/// XDP are started for each of their measurements and stopped after it.
pub fn side_by_side(
    lab: &BenchLab,
    runs: usize,
    targets: &[Target],
    mut measure: impl FnMut(&Running) -> Result<Sample>,
) -> Result<Vec<RateRow>> {
    let standing = targets
        .iter()
        .map(|&t| (!t.attaches_xdp()).then(|| lab::start(lab, t)).transpose())
        .collect::<Result<Vec<_>>>()?;
    let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for ((&t, running), s) in targets.iter().zip(&standing).zip(&mut samples) {
            let sample = match running {
                Some(r) if XDP_PASS_BASELINES.load(std::sync::atomic::Ordering::Relaxed) => {
                    let _pass = lab.px.run(|| Attached::pass("px0"))??;
                    measure(r)?
                }
                Some(r) => measure(r)?,
                None => measure(&lab::start(lab, t)?)?,
            };
            s.push(sample);
        }
    }
    Ok(targets
        .iter()
        .zip(samples)
        .map(|(&target, s)| RateRow {
            target,
            value: Stat::of(s.iter().map(|x| x.value).collect()),
            cpu_per_unit: Stat::of(s.iter().map(|x| x.cpu_per_unit).collect()),
            failed: s.iter().map(|x| x.failed).sum(),
        })
        .collect())
}

/// One line per other target: ackgate's median over theirs.
pub fn ratios(md: &mut String, rows: &[RateRow], what: &str) {
    if let Some(ag) = rows.iter().find(|r| r.target == Target::Ackgate) {
        for r in rows.iter().filter(|r| r.target != Target::Ackgate) {
            md.push_str(&format!(
                "\nackgate: {:.2}x {what} of {}.",
                ag.value.median / r.value.median.max(1e-9),
                r.target.label()
            ));
        }
        md.push('\n');
    }
}

/// A bar per target, its median with the min-max whisker.
pub fn bars<'a>(
    title: &str,
    unit: &str,
    rows: impl IntoIterator<Item = (Target, &'a Stat)>,
) -> String {
    let items: Vec<(&str, &Stat)> = rows.into_iter().map(|(t, s)| (t.label(), s)).collect();
    report::bars(title, unit, &items)
}
