//! `attack`: what a SYN flood does to legitimate clients. An open-loop
//! client opens connections at a fixed rate while the attacker floods at
//! rising rates: success, connect and first-byte percentiles, and the share
//! of connections that needed a SYN retransmission. The proxy's receive
//! path gets a core of its own ([`BenchLab::isolate_proxy_rx`]), so the
//! flood loads the target and not the generator's core: a target breaks
//! where its own core does.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::{harness::Attached, napi, Netns};
use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{ceiling, flood, flood_spec, tick, Scenario, SYN_DEFENCES};
use crate::{
    flood::{Sent, Spec},
    lab::{self, BenchLab, Target},
    loadtest::probe::{self, Load, Outcome, Progress},
    report::{self, fmt_num, Header, Stat},
    Common,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Runs per target and flood rate.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Legitimate connections per second (open loop).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds of legitimate load per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Flood rates in pps, comma-separated; 0 is no flood, "max" flat out
    /// [default: 0, 15%, 25%, 50% and 75% of the measured generator
    /// ceiling, max].
    #[arg(long, value_delimiter = ',')]
    flood: Vec<String>,
    /// Per-connection timeout in seconds (a failure past it).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// The legitimate clients' TCP stack: Linux's defaults, or with
/// timestamps off (Windows' default), whose cookies carry the options
/// another way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Clients {
    Linux,
    NoTimestamps,
}

impl Clients {
    const ALL: [Clients; 2] = [Clients::Linux, Clients::NoTimestamps];

    fn label(self) -> &'static str {
        match self {
            Clients::Linux => "Linux",
            Clients::NoTimestamps => "no timestamps",
        }
    }

    /// The client namespace's net.ipv4.tcp_timestamps.
    fn sysctl(self) -> &'static str {
        match self {
            Clients::Linux => "net.ipv4.tcp_timestamps=1",
            Clients::NoTimestamps => "net.ipv4.tcp_timestamps=0",
        }
    }
}

/// Where a target first misses the goal (>= 99.9% served, no SYN
/// retransmission): the lowest flood measured at which it did, or none.
#[derive(Serialize)]
struct Break {
    target: Target,
    clients: Clients,
    /// The flood rate sent there (None: held at every rate measured).
    flood_sent_pps: Option<f64>,
    success_rate: Option<f64>,
    syn_retransmit_share: Option<f64>,
    first_byte_ms: Option<[f64; 3]>,
}

#[derive(Serialize, Clone)]
struct Point {
    target: Target,
    clients: Clients,
    /// Requested flood rate (None: flat out).
    flood_pps: Option<u64>,
    flood_sent_pps: Stat,
    success_rate: Stat,
    connect_p50_ms: Stat,
    connect_p99_ms: Stat,
    connect_p999_ms: Stat,
    first_byte_p50_ms: Stat,
    first_byte_p99_ms: Stat,
    first_byte_p999_ms: Stat,
    /// Share of connections whose connect took >= 1 s (a SYN retransmission).
    syn_retransmit_share: Stat,
    /// Frames (flood and legitimate alike) dropped entering the proxy's
    /// interface during the measurement: its receive queue was full.
    dropped_entering_proxy: Stat,
    /// Share of the proxy's receive core (px0's NAPI thread, where XDP and
    /// the kernel's receive path run) busy during the measurement.
    proxy_rx_busy: Stat,
    /// Answers to the flood's spoofed sources per second (SYN-ACKs, or
    /// resets), counted where the switch absorbs them.
    flood_answered_pps: Stat,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    rate: u64,
    seconds: f64,
    timeout: f64,
    generator_ceiling_pps: f64,
    points: Vec<Point>,
    breaks: Vec<Break>,
    goal: Vec<Goal>,
}

/// The goal, per client stack: at the lowest flood where kernel SYN
/// cookies miss (>= 99.9% served, no SYN retransmission), ackgate serves
/// >= 99.9% with no SYN retransmission and a first-byte p99 under 10 ms.
#[derive(Serialize)]
struct Goal {
    clients: Clients,
    /// Whether kernel SYN cookies missed at any flood measured.
    kernel_missed: bool,
    /// The requested flood rate (None: flat out) where they first missed.
    flood_pps: Option<u64>,
    ackgate_success_rate: Option<f64>,
    ackgate_syn_retransmit_share: Option<f64>,
    ackgate_first_byte_p99_ms: Option<f64>,
    met: Option<bool>,
}

/// First-byte p99 ackgate must stay under where the kernel breaks.
const GOAL_P99_MS: f64 = 10.0;

/// Points in the order of the rate asked for, flat out last: what the
/// generator delivers against a saturated target is not a rate of its
/// choosing (the kernel baselines' answers load its core), so the sent
/// rates of the higher levels need not rise.
fn level_order(l: Option<u64>) -> u64 {
    l.unwrap_or(u64::MAX)
}

fn misses(p: &Point) -> bool {
    p.success_rate.median < 0.999 || p.syn_retransmit_share.median > 0.0
}

/// [`Goal`] for each client stack, from the points measured.
fn goals(points: &[Point]) -> Vec<Goal> {
    Clients::ALL
        .iter()
        .map(|&c| {
            let mut kernel: Vec<&Point> = points
                .iter()
                .filter(|p| p.target == Target::Syncookies && p.clients == c)
                .collect();
            kernel.sort_by_key(|p| level_order(p.flood_pps));
            let level = kernel.iter().find(|p| misses(p)).map(|p| p.flood_pps);
            let ours = level.and_then(|l| {
                points
                    .iter()
                    .find(|p| p.target == Target::Ackgate && p.clients == c && p.flood_pps == l)
            });
            Goal {
                clients: c,
                kernel_missed: level.is_some(),
                flood_pps: level.flatten(),
                ackgate_success_rate: ours.map(|p| p.success_rate.median),
                ackgate_syn_retransmit_share: ours.map(|p| p.syn_retransmit_share.median),
                ackgate_first_byte_p99_ms: ours.map(|p| p.first_byte_p99_ms.median),
                met: ours.map(|p| !misses(p) && p.first_byte_p99_ms.median < GOAL_P99_MS),
            }
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let secs = a.common.pick(1.0, a.seconds);
    let rate = a.common.pick(a.rate.min(100), a.rate.max(1));
    let sc = Scenario::new("attack", &a.common, 1)?;
    let lab = &sc.lab;
    let ceil = ceiling(lab, a.common.pick(0.5, 2.0))?.pps;
    let levels = levels(&a, ceil)?;
    let mut points = Vec::new();
    for t in SYN_DEFENCES {
        let run = lab::start(lab, t)?;
        // The kernel baselines get a pass program on px0 so that its
        // receive path, too, runs in a NAPI thread on its own core.
        let pass = match t.attaches_xdp() {
            true => None,
            false => Some(lab.px.run(|| Attached::pass("px0"))??),
        };
        let rx_threads = lab.isolate_proxy_rx()?;
        for (&level, clients) in levels
            .iter()
            .flat_map(|l| Clients::ALL.iter().map(move |&c| (l, c)))
        {
            lab.cli.exec(&["sysctl", "-qw", clients.sysctl()])?;
            let mut acc: Vec<Measured> = Vec::new();
            for r in 0..runs {
                let spec = match level {
                    Some(0) => None,
                    pps => Some(flood_spec(
                        lab,
                        lab::VIP4.into(),
                        pps,
                        secs + 2.0 + a.timeout,
                        r as u64,
                    )?),
                };
                let (d0, a0) = (lab.ingress_drops()?, lab.answers_absorbed()?);
                let (t0, c0) = (Instant::now(), napi::threads_ticks(&rx_threads)?);
                let (sent, o) = with_flood(lab, spec, || {
                    open_loop(&lab.cli, run.addr, rate, secs, a.timeout)
                })?;
                let secs_in = t0.elapsed().as_secs_f64();
                let rx_busy = (napi::threads_ticks(&rx_threads)? - c0) as f64 * tick() / secs_in;
                let answered = (lab.answers_absorbed()? - a0) as f64 / secs_in;
                let dropped = lab.ingress_drops()? - d0;
                eprintln!(
                    "attack {:18} {:14} flood {:>9} pps: {}/{} ok, connect p99 {:.1} ms, {} retransmitted, {} frames dropped entering px0, its receive core {:.0}% busy, {} flood SYNs answered/s",
                    t.label(),
                    clients.label(),
                    fmt_num(sent.pps),
                    o.ok,
                    o.total,
                    o.connect.value_at_quantile(0.99) as f64 / 1e3,
                    o.retrans,
                    dropped,
                    rx_busy * 100.0,
                    fmt_num(answered)
                );
                acc.push((sent.pps, o, dropped, rx_busy, answered));
            }
            points.push(point(t, clients, level, &acc));
        }
        drop(run);
        drop(pass);
    }
    lab.cli.exec(&["sysctl", "-qw", Clients::Linux.sysctl()])?;
    points.sort_by_key(|p| p.target != Target::Ackgate);
    let breaks = breaks(&points);
    let goal = goals(&points);
    let rep = Report {
        head: sc.header(runs),
        rate,
        seconds: secs,
        timeout: a.timeout,
        generator_ceiling_pps: ceil,
        points,
        breaks,
        goal,
    };
    let mut md = sc.heading(&rep.head, "Legitimate clients under a SYN flood");
    md.push_str(&format!(
        ": an open-loop client opens {} connections/s for {} s (each timed from its scheduled start) and fetches a 2-byte page from nginx while the attacker floods spoofed SYNs; {} run(s) per point, median (min-max). The proxy's receive path (px0's NAPI thread: XDP and the kernel's receive work, every target given an XDP program so that it has one) runs alone on CPU 0, as a NIC queue with its own core would; the generator, the switch and the clients share CPU 1. Generator ceiling {} pps into an XDP_DROP sink there.\n\n| target | clients | flood pps (sent / answered) | success | connect p50 / p99 / p99.9 ms | first byte p50 / p99 / p99.9 ms | SYN retransmitted | frames dropped entering the proxy | proxy's receive core busy |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        rate,
        secs,
        runs,
        fmt_num(ceil)
    ));
    for p in &rep.points {
        md.push_str(&format!(
            "| {} | {} | {} / {} | {:.1}% | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.1}% | {} | {:.0}% |\n",
            p.target.label(),
            p.clients.label(),
            fmt_num(p.flood_sent_pps.median),
            fmt_num(p.flood_answered_pps.median),
            p.success_rate.median * 100.0,
            p.connect_p50_ms.median,
            p.connect_p99_ms.median,
            p.connect_p999_ms.median,
            p.first_byte_p50_ms.median,
            p.first_byte_p99_ms.median,
            p.first_byte_p999_ms.median,
            p.syn_retransmit_share.median * 100.0,
            fmt_num(p.dropped_entering_proxy.median),
            p.proxy_rx_busy.median * 100.0
        ));
    }
    md.push('\n');
    for b in &rep.breaks {
        md.push_str(&match (b.flood_sent_pps, b.first_byte_ms) {
            (Some(pps), Some(fb)) => format!(
                "\n{} ({} clients) first misses the goal (>= 99.9% served, no SYN retransmission) at {} pps: {:.1}% served, {:.1}% SYN retransmitted, first byte p50 / p99 / p99.9 {:.2} / {:.2} / {:.2} ms.",
                b.target.label(),
                b.clients.label(),
                fmt_num(pps),
                100.0 * b.success_rate.unwrap_or(0.0),
                100.0 * b.syn_retransmit_share.unwrap_or(0.0),
                fb[0],
                fb[1],
                fb[2]
            ),
            _ => format!(
                "\n{} ({} clients) meets the goal at every flood measured, up to what the generator sent against it.",
                b.target.label(),
                b.clients.label()
            ),
        });
    }
    md.push('\n');
    for g in &rep.goal {
        let rate = |l: Option<u64>| {
            l.map_or("flat out".to_string(), |r| {
                format!("{} pps", fmt_num(r as f64))
            })
        };
        md.push_str(&match (g.kernel_missed, g.met) {
            (true, Some(met)) => format!(
                "\nGoal ({} clients), at the flood where kernel SYN cookies first miss ({}): ackgate {:.2}% served, {:.1}% SYN retransmitted, first byte p99 {:.2} ms (goal >= 99.9%, none, < {GOAL_P99_MS} ms): {}.",
                g.clients.label(),
                rate(g.flood_pps),
                100.0 * g.ackgate_success_rate.unwrap_or(0.0),
                100.0 * g.ackgate_syn_retransmit_share.unwrap_or(0.0),
                g.ackgate_first_byte_p99_ms.unwrap_or(f64::NAN),
                if met { "met" } else { "not met" }
            ),
            _ => format!(
                "\nGoal ({} clients): not measured, kernel SYN cookies did not miss at any flood measured.",
                g.clients.label()
            ),
        });
    }
    md.push('\n');
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        [Target::Ackgate, Target::Syncookies, Target::Synproxy]
            .iter()
            .map(|&t| {
                (
                    t.label().to_string(),
                    rep.points
                        .iter()
                        .filter(|p| p.target == t && p.clients == Clients::Linux)
                        .map(|p| (p.flood_sent_pps.median, f(p)))
                        .filter(|p| p.1.is_finite())
                        .collect(),
                )
            })
            .collect()
    };
    let svgs = vec![
        (
            "attack_latency.svg".to_string(),
            report::lines(
                "Legitimate first-byte p99 vs SYN flood rate",
                "flood packets/s (sent)",
                "first byte p99 (ms)",
                &series(&|p| p.first_byte_p99_ms.median),
            ),
        ),
        (
            "attack_success.svg".to_string(),
            report::lines(
                "Legitimate connections served vs SYN flood rate",
                "flood packets/s (sent)",
                "success (%)",
                &series(&|p| p.success_rate.median * 100.0),
            ),
        ),
    ];
    sc.write(&rep, &md, &svgs)
}

/// Each (target, clients): the lowest flood level at which it missed the
/// goal.
fn breaks(points: &[Point]) -> Vec<Break> {
    let mut out = Vec::new();
    for t in SYN_DEFENCES {
        for c in Clients::ALL {
            let mut ps: Vec<&Point> = points
                .iter()
                .filter(|p| p.target == t && p.clients == c)
                .collect();
            ps.sort_by_key(|p| level_order(p.flood_pps));
            let miss = ps.iter().find(|p| misses(p));
            out.push(Break {
                target: t,
                clients: c,
                flood_sent_pps: miss.map(|p| p.flood_sent_pps.median),
                success_rate: miss.map(|p| p.success_rate.median),
                syn_retransmit_share: miss.map(|p| p.syn_retransmit_share.median),
                first_byte_ms: miss.map(|p| {
                    [
                        p.first_byte_p50_ms.median,
                        p.first_byte_p99_ms.median,
                        p.first_byte_p999_ms.median,
                    ]
                }),
            });
        }
    }
    out
}

/// The flood rates to measure at: `--flood`, or fractions of the ceiling.
fn levels(a: &Args, ceil: f64) -> Result<Vec<Option<u64>>> {
    if !a.flood.is_empty() {
        return a
            .flood
            .iter()
            .map(|f| match f.trim() {
                "max" => Ok(None),
                v => v
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("--flood: '{v}' is not a rate or 'max'")),
            })
            .collect();
    }
    Ok(a.common.pick(
        vec![Some(0), None],
        vec![
            Some(0),
            Some((ceil * 0.15) as u64),
            Some((ceil * 0.25) as u64),
            Some((ceil * 0.5) as u64),
            Some((ceil * 0.75) as u64),
            None,
        ],
    ))
}

/// Medians over a point's runs: latencies in ms, shares of all connections.
fn point(target: Target, clients: Clients, flood_pps: Option<u64>, acc: &[Measured]) -> Point {
    let st = |f: &dyn Fn(&Measured) -> f64| Stat::of(acc.iter().map(f).collect());
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(q) as f64 / 1e3
        }
    };
    Point {
        target,
        clients,
        flood_pps,
        flood_sent_pps: st(&|x| x.0),
        success_rate: st(&|x| x.1.ok as f64 / x.1.total.max(1) as f64),
        connect_p50_ms: st(&|x| q(&x.1.connect, 0.5)),
        connect_p99_ms: st(&|x| q(&x.1.connect, 0.99)),
        connect_p999_ms: st(&|x| q(&x.1.connect, 0.999)),
        first_byte_p50_ms: st(&|x| q(&x.1.first_byte, 0.5)),
        first_byte_p99_ms: st(&|x| q(&x.1.first_byte, 0.99)),
        first_byte_p999_ms: st(&|x| q(&x.1.first_byte, 0.999)),
        syn_retransmit_share: st(&|x| x.1.retrans as f64 / x.1.total.max(1) as f64),
        dropped_entering_proxy: st(&|x| x.2 as f64),
        proxy_rx_busy: st(&|x| x.3),
        flood_answered_pps: st(&|x| x.4),
    }
}

/// One measurement: flood pps sent, the clients' outcome, frames dropped
/// entering the proxy, the share of its receive core px0's NAPI thread
/// used, and the flood SYNs answered per second.
type Measured = (f64, Outcome, u64, f64, f64);

/// Floods from the attacker namespace on its own thread for the duration
/// of `f`, and returns what was sent with `f`'s result.
fn with_flood<R>(
    lab: &BenchLab,
    spec: Option<Spec>,
    f: impl FnOnce() -> Result<R>,
) -> Result<(Sent, R)> {
    let Some(spec) = spec else {
        return Ok((Sent::default(), f()?));
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| flood(lab, &spec, &stop));
        // Let the flood reach its rate before measuring.
        std::thread::sleep(Duration::from_millis(300));
        let r = f();
        stop.store(true, Relaxed);
        let sent = h
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        Ok((sent, r?))
    })
}

/// Opens `rate` connections per second for `secs` from the client
/// namespace (the open-loop client of `probe`), fetching `/` over HTTP/1.0.
fn open_loop(
    cli: &Netns,
    target: SocketAddr,
    rate: u64,
    secs: f64,
    timeout: f64,
) -> Result<Outcome> {
    let load = Load {
        target,
        rate,
        count: (rate as f64 * secs) as u64,
        timeout: Duration::from_secs_f64(timeout),
        send: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        expect: Some(b"HTTP/1.1 200".to_vec()),
    };
    cli.run(move || probe::open_loop(&load, &Progress::default()))?
}
