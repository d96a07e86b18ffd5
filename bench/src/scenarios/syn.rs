//! `syn`: what each SYN costs each defence, isolated from the generator and
//! the lab, and the flood rate at which it runs out of its core.
//!
//! The flood lab is one veth pair: the generator (an XDP program run by
//! BPF_PROG_RUN in live-frame mode, or the AF_PACKET sender) on CPU 1, the
//! target's whole receive path in its interface's NAPI thread on CPU 0, and
//! the answers absorbed and counted by XDP on the attacker's end, on CPU 1
//! too. CPU 0's busy time over the SYN-ACKs counted is the target's cost per
//! SYN. An XDP_DROP sink in the target's place gives the generator's ceiling
//! and the lab's own cost per frame on CPU 0 (the veth's NAPI receive),
//! which every target also pays; the floor, a minimal SipHash XDP_TX
//! responder, is what ackgate's extra work is measured against.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::{
    flood_lab::{self, FloodLab, GEN_CPU, TARGET_CPU, TGT4, TGT6, TGT_IF},
    harness::{Attached, Generator},
    workspace_bin, Process,
};
use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::rss_kib;
use crate::{
    flood::{self, Sent, Spec},
    report::{fmt_num, Header, Stat},
    Common,
};

/// The protected port.
const PORT: u16 = 80;
/// ackgate's metrics inside the target namespace.
const METRICS: &str = "127.0.0.1:9469";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Runs per target.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds per flood.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Flood rate in packets per second (default: flat out).
    #[arg(long)]
    pps: Option<u64>,
    /// Flood over IPv6 (the floor and nftables synproxy are IPv4 only and
    /// left out).
    #[arg(long)]
    ipv6: bool,
    /// The flood generator: `xdp` (an XDP program run by BPF_PROG_RUN in
    /// live-frame mode), `af-packet` (sendmmsg), or `auto`: xdp where the
    /// kernel allows live frames, else af-packet (the report says why).
    #[arg(long, value_enum, default_value_t = GenChoice::Auto)]
    generator: GenChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GenChoice {
    Auto,
    Xdp,
    AfPacket,
}

/// The generator that ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GenKind {
    Xdp,
    AfPacket,
}

/// What sits on the target's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SynTarget {
    /// XDP_DROP that counts: the generator's ceiling, the lab's cost.
    Sink,
    /// The minimal SipHash XDP_TX responder (harness program).
    Floor,
    Ackgate,
    /// `tcp_syncookies=2` and a listener (XDP_PASS on the veth: it only
    /// receives the generator's frames with an XDP program attached).
    Syncookies,
    /// nftables synproxy in front of the same listener.
    Synproxy,
}

impl SynTarget {
    fn label(self) -> &'static str {
        match self {
            SynTarget::Sink => "XDP_DROP sink",
            SynTarget::Floor => "floor: bare SipHash XDP_TX",
            SynTarget::Ackgate => "ackgate",
            SynTarget::Syncookies => "kernel syncookies",
            SynTarget::Synproxy => "nftables synproxy",
        }
    }
}

#[derive(Serialize)]
struct Row {
    target: SynTarget,
    /// Frames the generator handed to the attacker's interface per second.
    sent_pps: Stat,
    /// SYN-ACKs counted at the attacker per second (for the sink: frames
    /// it dropped).
    answered_per_s: Stat,
    /// Share of the target's core busy during the flood.
    target_cpu_busy: Stat,
    /// The target's NAPI thread's CPU time per SYN answered.
    ns_per_syn: Stat,
    /// The same less the sink's cost per frame (the lab's veth receive).
    ns_per_syn_above_sink: Stat,
    /// The rate that would fill the target's core: 1 / ns_per_syn.
    ceiling_per_s: Stat,
    /// ackgate only: its process's memory and CPU during the floods.
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<ProcRow>,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    seconds: f64,
    pps: Option<u64>,
    family: &'static str,
    generator: GenKind,
    /// Why `auto` did not run the XDP generator.
    generator_fallback: Option<String>,
    generator_cpu: usize,
    target_cpu: usize,
    /// Frames the sink absorbed per second: the generator's ceiling.
    generator_ceiling_pps: Stat,
    targets: Vec<Row>,
}

/// One flood against one target.
struct Point {
    sent: Sent,
    answered: u64,
    /// The target's core, all of it.
    busy_s: f64,
    /// The target's NAPI thread alone: what the target costs, whatever
    /// else the machine runs on that core.
    napi_s: f64,
    /// ackgate's process through the flood.
    process: Option<ProcSample>,
}

/// A process sampled every 100 ms through a flood.
#[derive(Clone, Copy)]
struct ProcSample {
    rss_start_kib: u64,
    rss_max_kib: u64,
    rss_end_kib: u64,
    /// Its CPU time (all threads, user and system) over the flood, as a
    /// share of one core.
    cpu: f64,
}

/// ackgate's memory and CPU through the floods (item 4 of the bench's
/// brief: flat while only SYNs arrive).
#[derive(Serialize)]
struct ProcRow {
    rss_start_mib: Stat,
    rss_max_mib: Stat,
    rss_end_mib: Stat,
    /// Share of one core its process used during the flood.
    cpu_share: Stat,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let secs = a.common.pick(1.0, a.seconds);
    let lab = FloodLab::new()?;
    let dst: IpAddr = if a.ipv6 { TGT6.into() } else { TGT4.into() };
    let spec = Spec {
        dst,
        dport: PORT,
        pps: a.pps,
        duration: Duration::from_secs_f64(secs),
        max_packets: 200_000_000,
        src_mac: lab.atk.mac(flood_lab::ATK_IF)?,
        dst_mac: lab.tgt.mac(TGT_IF)?,
        seed: 7,
        sources: None,
    };
    let (generator, fallback) = choose_generator(&lab, &spec, a.generator)?;
    let targets: &[SynTarget] = if a.ipv6 {
        &[SynTarget::Sink, SynTarget::Ackgate, SynTarget::Syncookies]
    } else {
        &[
            SynTarget::Sink,
            SynTarget::Floor,
            SynTarget::Ackgate,
            SynTarget::Syncookies,
            SynTarget::Synproxy,
        ]
    };
    let mut points: Vec<Vec<Point>> = targets.iter().map(|_| Vec::new()).collect();
    // Targets in turn within each round, so all see the same machine.
    for r in 0..runs {
        for (&t, pts) in targets.iter().zip(&mut points) {
            let running = start(&lab, t)?;
            let spec = Spec {
                seed: r as u64,
                ..spec.clone()
            };
            let p = flood_once(&lab, &running, generator.as_ref(), &spec)?;
            eprintln!(
                "syn {:28} sent {:>10.0} pps, answered {:>10.0}/s, CPU {TARGET_CPU} {:3.0}% busy, NAPI thread {:6.0} ns per SYN",
                t.label(),
                p.sent.pps,
                p.answered as f64 / p.sent.seconds,
                100.0 * p.busy_s / p.sent.seconds,
                p.ns()
            );
            pts.push(p);
            drop(running);
        }
    }
    let sink_ns: Vec<f64> = points[0].iter().map(Point::ns).collect();
    let sink_median = Stat::of(sink_ns).median;
    let rows: Vec<Row> = targets
        .iter()
        .zip(&points)
        .map(|(&t, pts)| {
            let ns: Vec<f64> = pts.iter().map(Point::ns).collect();
            Row {
                target: t,
                sent_pps: Stat::of(pts.iter().map(|p| p.sent.pps).collect()),
                answered_per_s: Stat::of(
                    pts.iter()
                        .map(|p| p.answered as f64 / p.sent.seconds)
                        .collect(),
                ),
                target_cpu_busy: Stat::of(pts.iter().map(|p| p.busy_s / p.sent.seconds).collect()),
                ns_per_syn_above_sink: Stat::of(
                    ns.iter().map(|n| (n - sink_median).max(0.0)).collect(),
                ),
                ceiling_per_s: Stat::of(ns.iter().map(|n| 1e9 / n.max(1e-3)).collect()),
                ns_per_syn: Stat::of(ns),
                process: proc_row(pts),
            }
        })
        .collect();
    let rep = Report {
        head: Header::probe("syn", runs),
        seconds: secs,
        pps: a.pps,
        family: if a.ipv6 { "ipv6" } else { "ipv4" },
        generator: if generator.is_some() {
            GenKind::Xdp
        } else {
            GenKind::AfPacket
        },
        generator_fallback: fallback,
        generator_cpu: GEN_CPU,
        target_cpu: TARGET_CPU,
        generator_ceiling_pps: Stat::of(
            points[0]
                .iter()
                .map(|p| p.answered as f64 / p.sent.seconds)
                .collect(),
        ),
        targets: rows,
    };
    let md = markdown(&rep, &a.common, runs);
    let svg = crate::report::bars(
        "Target CPU time per SYN answered, ns (median, min-max)",
        "ns",
        &rep.targets
            .iter()
            .filter(|r| r.target != SynTarget::Sink)
            .map(|r| (r.target.label(), &r.ns_per_syn))
            .collect::<Vec<_>>(),
    );
    crate::report::write(&a.common.out, "syn", &rep, &md, &[("syn.svg".into(), svg)])
}

/// The XDP generator if asked for, or under `auto` if one live-frame run
/// of a single SYN works here; otherwise the AF_PACKET sender and why.
fn choose_generator(
    lab: &FloodLab,
    spec: &Spec,
    choice: GenChoice,
) -> Result<(Option<Generator>, Option<String>)> {
    if choice == GenChoice::AfPacket {
        return Ok((None, None));
    }
    let probe = || -> Result<Generator> {
        let g = Generator::load(&flood::frames(spec)[0])?;
        let ifindex = lab.atk_ifindex()?;
        lab.atk.run(|| g.send(ifindex, 1))??;
        Ok(g)
    };
    match probe() {
        Ok(g) => Ok((Some(g), None)),
        Err(e) if choice == GenChoice::Auto => {
            let why = format!("{e:#}");
            eprintln!("syn: XDP generator unavailable ({why}): using AF_PACKET");
            Ok((None, Some(why)))
        }
        Err(e) => Err(e.context("the XDP generator (--generator xdp)")),
    }
}

fn markdown(rep: &Report, common: &Common, runs: usize) -> String {
    let mut md = rep.head.markdown(
        "SYN flood: cost per SYN on the target's own core, and its ceiling",
        common.quick,
    );
    md.push_str(&format!(
        ": {runs} round(s) x {} s, {} flood {} from the {} generator on CPU {GEN_CPU}; the target's receive path in its veth's NAPI thread on CPU {TARGET_CPU}; SYN-ACKs absorbed and counted by XDP at the attacker (CPU {GEN_CPU}). Generator ceiling (into the XDP_DROP sink on CPU {TARGET_CPU}): **{} pps**. ns per SYN = the CPU time of the target interface's NAPI thread (its whole receive path: XDP, or the kernel's stack) / SYN-ACKs counted, so other work on CPU {TARGET_CPU} is not charged; above sink = less the sink's ns per frame (the veth's NAPI receive every target pays); ceiling = the rate at which that thread would fill its core; CPU {TARGET_CPU} busy = the whole core, for context. Median (min-max).\n\n| target | sent pps | answered/s | CPU {TARGET_CPU} busy | ns per SYN | above sink | ceiling/s |\n|---|---:|---:|---:|---:|---:|---:|\n",
        rep.seconds,
        rep.family,
        rep.pps.map_or("flat out".to_string(), |p| format!("at {p} pps")),
        match (rep.generator, &rep.generator_fallback) {
            (GenKind::Xdp, _) => "XDP live-frame".to_string(),
            (GenKind::AfPacket, None) => "AF_PACKET".to_string(),
            (GenKind::AfPacket, Some(why)) =>
                format!("AF_PACKET (XDP live frames refused here: {why})"),
        },
        fmt_num(rep.generator_ceiling_pps.median)
    ));
    for r in &rep.targets {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0}% | {} | {} | {} |\n",
            r.target.label(),
            r.sent_pps.show(0),
            r.answered_per_s.show(0),
            100.0 * r.target_cpu_busy.median,
            r.ns_per_syn.show(0),
            if r.target == SynTarget::Sink {
                "-".to_string()
            } else {
                r.ns_per_syn_above_sink.show(0)
            },
            r.ceiling_per_s.show(0)
        ));
    }
    let get = |t: SynTarget| rep.targets.iter().find(|r| r.target == t);
    md.push('\n');
    if let Some(ag) = get(SynTarget::Ackgate) {
        let (n, a) = (ag.ns_per_syn.median, ag.ns_per_syn_above_sink.median);
        if let Some(f) = get(SynTarget::Floor) {
            md.push_str(&format!(
                "\nackgate against the floor: {:.2}x its ns per SYN ({:.2}x above the sink).",
                n / f.ns_per_syn.median.max(1e-9),
                a / f.ns_per_syn_above_sink.median.max(1e-9)
            ));
        }
        for t in [SynTarget::Syncookies, SynTarget::Synproxy] {
            if let Some(k) = get(t) {
                md.push_str(&format!(
                    "\n{} costs {:.2}x ackgate's ns per SYN ({:.2}x above the sink).",
                    t.label(),
                    k.ns_per_syn.median / n.max(1e-9),
                    k.ns_per_syn_above_sink.median / a.max(1e-9)
                ));
            }
        }
        md.push_str(&format!(
            "\nThe generator's ceiling is {:.2}x ackgate's.\n",
            rep.generator_ceiling_pps.median / ag.ceiling_per_s.median.max(1e-9)
        ));
        if let Some(p) = &ag.process {
            md.push_str(&format!(
                "\nackgate's process through each flood (sampled every 100 ms): resident memory {} MiB at the start, at most {}, {} at the end; CPU {:.1}% of one core (its XDP program runs in the NAPI thread, not in the process).\n",
                p.rss_start_mib.show(1),
                p.rss_max_mib.show(1),
                p.rss_end_mib.show(1),
                100.0 * p.cpu_share.median
            ));
        }
    }
    md
}

/// The process samples of a target's floods, if it has a process.
fn proc_row(pts: &[Point]) -> Option<ProcRow> {
    let ps: Vec<ProcSample> = pts.iter().filter_map(|p| p.process).collect();
    if ps.is_empty() {
        return None;
    }
    let mib =
        |f: fn(&ProcSample) -> u64| Stat::of(ps.iter().map(|p| f(p) as f64 / 1024.0).collect());
    Some(ProcRow {
        rss_start_mib: mib(|p| p.rss_start_kib),
        rss_max_mib: mib(|p| p.rss_max_kib),
        rss_end_mib: mib(|p| p.rss_end_kib),
        cpu_share: Stat::of(ps.iter().map(|p| p.cpu).collect()),
    })
}

impl Point {
    /// The target's NAPI thread time per SYN answered.
    fn ns(&self) -> f64 {
        self.napi_s * 1e9 / self.answered.max(1) as f64
    }
}

/// A target in place on the target's interface; dropping it undoes it.
struct Running {
    attached: Option<Attached>,
    procs: Vec<Process>,
    listeners: Vec<TcpListener>,
    undo: Vec<Vec<String>>,
    tgt: String,
    /// The target interface's NAPI thread(s): its receive path.
    napi: Vec<i32>,
    /// The target's own process (ackgate), sampled through each flood.
    pid: Option<i32>,
    /// The sink counts for itself (it answers nothing).
    sink: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        for cmd in &self.undo {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &self.tgt]).args(cmd);
            let _ = c.output();
        }
    }
}

fn start(lab: &FloodLab, t: SynTarget) -> Result<Running> {
    let tgt = &lab.tgt;
    let mut r = Running {
        attached: None,
        procs: Vec::new(),
        listeners: Vec::new(),
        undo: Vec::new(),
        tgt: tgt.name.clone(),
        napi: Vec::new(),
        pid: None,
        sink: t == SynTarget::Sink,
    };
    let listen = |ipv: IpAddr| -> Result<TcpListener> {
        tgt.run(move || -> Result<TcpListener> {
            let s = socket2_listener(SocketAddr::new(ipv, PORT))?;
            Ok(s)
        })?
    };
    match t {
        SynTarget::Sink => r.attached = Some(tgt.run(|| Attached::counting(TGT_IF))??),
        SynTarget::Floor => {
            let key = [rand::random(), rand::random()];
            r.attached = Some(tgt.run(|| Attached::floor(TGT_IF, key))??);
        }
        SynTarget::Ackgate => {
            let mut cmd = tgt.command(workspace_bin("ackgate")?.to_str().unwrap());
            cmd.args([
                "run",
                "--iface",
                TGT_IF,
                "--listen",
                &SocketAddr::new(TGT4.into(), PORT).to_string(),
                "--listen",
                &SocketAddr::new(TGT6.into(), PORT).to_string(),
                // Nothing connects during a SYN flood: no backend is reached.
                "--backend",
                "10.76.0.1:8080",
                "--stats-interval",
                "0",
                "--metrics",
                METRICS,
            ]);
            cmd.args(crate::lab::extra_args());
            let mut p = Process::spawn("ackgate", cmd)?;
            wait_until_attached(lab, &mut p)?;
            r.pid = Some(p.pid().as_raw());
            r.procs.push(p);
        }
        SynTarget::Syncookies | SynTarget::Synproxy => {
            r.attached = Some(tgt.run(|| Attached::pass(TGT_IF))??);
            let sysctl = |kv: &str| tgt.exec(&["sysctl", "-qw", kv]).map(|_| ());
            if t == SynTarget::Syncookies {
                sysctl("net.ipv4.tcp_syncookies=2")?;
                r.undo.push(vec![
                    "sysctl".into(),
                    "-qw".into(),
                    "net.ipv4.tcp_syncookies=1".into(),
                ]);
            } else {
                crate::lab::synproxy(tgt, &lab.dir, TGT4, PORT)?;
                r.undo.push(
                    ["nft", "delete", "table", "inet", "benchsynproxy"]
                        .map(String::from)
                        .to_vec(),
                );
            }
            r.listeners.push(listen(TGT4.into())?);
            r.listeners.push(listen(TGT6.into())?);
        }
    }
    // veth has NAPI while XDP is attached: its thread, on its core, now.
    r.napi = lab.target_napi()?;
    Ok(r)
}

/// A listener with a deep backlog, made in the calling thread's namespace.
fn socket2_listener(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // SAFETY: listen(2) again on a bound, listening socket only changes
    // its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    Ok(l)
}

/// Waits until ackgate's metrics answer (its XDP program is attached by
/// then).
fn wait_until_attached(lab: &FloodLab, p: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = lab
            .tgt
            .run(|| ackgate::telemetry::stats::scrape(METRICS.parse().unwrap()).is_ok())?;
        if up {
            return Ok(());
        }
        p.check()?;
        if Instant::now() > deadline {
            bail!("ackgate did not start in the target namespace");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One flood: what was sent, the answers counted at the attacker (for the
/// sink, what it dropped) and the target core's busy seconds.
fn flood_once(
    lab: &FloodLab,
    running: &Running,
    generator: Option<&Generator>,
    spec: &Spec,
) -> Result<Point> {
    let counter = |r: &Running| -> Result<u64> {
        match (&r.attached, r.sink) {
            (Some(a), true) => a.count(),
            _ => lab.answers.count(),
        }
    };
    let napi_ticks = || ackgate_lab::napi::threads_ticks(&running.napi);
    let before = counter(running)?;
    let c0 = cpu_ticks(TARGET_CPU)?;
    let n0 = napi_ticks()?;
    let p0 = running
        .pid
        .map(ackgate_lab::napi::thread_ticks)
        .transpose()?;
    let rss0 = running.pid.map(rss_kib).transpose()?;
    let done = AtomicBool::new(false);
    let rss_max = std::sync::atomic::AtomicU64::new(rss0.unwrap_or(0));
    let flood = || -> Result<Sent> {
        Ok(match generator {
            Some(g) => {
                let ifindex = lab.atk_ifindex()?;
                lab.atk.run(|| xdp_flood(g, ifindex, spec))??
            }
            None => lab.atk.run(|| -> Result<Sent> {
                flood::pin(GEN_CPU)?;
                flood::run(flood_lab::ATK_IF, spec, &AtomicBool::new(false))
            })??,
        })
    };
    let sent = std::thread::scope(|s| {
        if let Some(pid) = running.pid {
            let (done, rss_max) = (&done, &rss_max);
            s.spawn(move || {
                while !done.load(Relaxed) {
                    if let Ok(k) = rss_kib(pid) {
                        rss_max.fetch_max(k, Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        let r = flood();
        done.store(true, Relaxed);
        r
    })?;
    // The last frames drain from the target's queue.
    std::thread::sleep(Duration::from_millis(100));
    let c1 = cpu_ticks(TARGET_CPU)?;
    let n1 = napi_ticks()?;
    let p1 = running
        .pid
        .map(ackgate_lab::napi::thread_ticks)
        .transpose()?;
    let rss1 = running.pid.map(rss_kib).transpose()?;
    let answered = counter(running)? - before;
    let tick = super::tick();
    Ok(Point {
        sent,
        answered,
        busy_s: (c1 - c0) as f64 * tick,
        napi_s: (n1 - n0) as f64 * tick,
        process: match (p0, p1, rss0, rss1) {
            (Some(p0), Some(p1), Some(r0), Some(r1)) => Some(ProcSample {
                rss_start_kib: r0,
                rss_max_kib: rss_max.load(Relaxed).max(r1),
                rss_end_kib: r1,
                cpu: (p1 - p0) as f64 * tick / sent.seconds,
            }),
            _ => None,
        },
    })
}

/// Floods with the live-frame generator on [`GEN_CPU`] until the spec's
/// duration or packet count; `pps` paces chunks against the clock.
fn xdp_flood(g: &Generator, ifindex: u32, spec: &Spec) -> Result<Sent> {
    flood::pin(GEN_CPU)?;
    // Chunks of ~1 ms at the rate asked (flat out: 64k frames, ~10 ms).
    let chunk = spec.pps.map_or(65_536, |p| (p / 1000).clamp(1, 65_536));
    flood::drive(spec, &AtomicBool::new(false), chunk, |n| {
        g.send(ifindex, n as u32)?;
        Ok(n)
    })
}

/// Busy ticks of one CPU (user, nice, system, irq, softirq) from /proc/stat.
fn cpu_ticks(cpu: usize) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let l = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        bail!("unexpected /proc/stat: {l}");
    }
    Ok(v[0] + v[1] + v[2] + v[5] + v[6])
}
