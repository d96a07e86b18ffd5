//! The lab scenarios: `syn`, `attack`, `conn` and `bulk`. Each builds a
//! fresh [`BenchLab`], runs every target side by side (interleaved where
//! they can run together, one after the other where they need the same
//! port or sysctls), repeats, and reports medians with their spread.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::{harness::Attached, Netns};
use anyhow::{bail, ensure, Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    flood::{self, Sent, Spec},
    lab::{self, BenchLab, Running, Target},
    report::{self, fmt_num, Machine, Stat},
    Common,
};

/// The attacker's flood CPU: veth runs the receiver's XDP and stack in the
/// sender's softirq, so the whole SYN path shares this core.
const FLOOD_CPU: usize = 1;

/// /proc/stat's aggregate line, in ticks.
#[derive(Clone, Copy, Default)]
struct Cpu {
    busy: u64,
    softirq: u64,
}

fn cpu() -> Result<Cpu> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let l = s.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 7, "unexpected /proc/stat: {l}");
    // user nice system idle iowait irq softirq [steal ...]
    Ok(Cpu {
        busy: v[0] + v[1] + v[2] + v[5] + v[6],
        softirq: v[6],
    })
}

fn tick_secs() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Floods from the attacker namespace on its own thread (pinned), for the
/// duration of `f`, and returns what was sent with `f`'s result.
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
        let h = sc.spawn(|| {
            lab.atk.run(|| -> Result<Sent> {
                flood::pin(FLOOD_CPU)?;
                flood::run("atk0", &spec, &stop)
            })?
        });
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

fn flood_spec(lab: &BenchLab, dst: IpAddr, pps: Option<u64>, secs: f64, seed: u64) -> Result<Spec> {
    Ok(Spec {
        dst,
        dport: lab::PORT,
        pps,
        duration: Duration::from_secs_f64(secs),
        max_packets: 50_000_000,
        src_mac: lab.atk.mac("atk0")?,
        dst_mac: lab.px.mac("px0")?,
        seed,
    })
}

/// The generator's ceiling: flat out into an XDP_DROP sink on px0.
fn ceiling(lab: &BenchLab, secs: f64) -> Result<Sent> {
    let _sink = lab.px.run(|| Attached::drop_all("px0"))??;
    let spec = flood_spec(lab, lab::VIP4.into(), None, secs, 99)?;
    let stop = AtomicBool::new(false);
    lab.atk.run(|| -> Result<Sent> {
        flood::pin(FLOOD_CPU)?;
        flood::run("atk0", &spec, &stop)
    })?
}

/// SYNs a target answered so far (read inside the proxy namespace).
fn answered(lab: &BenchLab, t: Target) -> Result<u64> {
    match t {
        Target::Ackgate => {
            // XDP counters reach the metrics once a second.
            std::thread::sleep(Duration::from_millis(1200));
            let s = lab
                .px
                .run(|| ackgate::telemetry::stats::scrape(lab::METRICS.parse().unwrap()))??;
            Ok(s.iter()
                .filter(|x| x.name == "ackgate_xdp_syns_answered_total")
                .map(|x| x.value as u64)
                .sum())
        }
        Target::Syncookies => {
            let t = lab
                .px
                .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))??;
            netstat(&t, "TcpExt", "SyncookiesSent")
        }
        Target::Synproxy => {
            let t = lab
                .px
                .run(|| std::fs::read_to_string("/proc/thread-self/net/stat/synproxy"))??;
            // Per-CPU rows of hex columns; syn_received is the second.
            Ok(t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|h| u64::from_str_radix(h, 16).ok())
                .sum())
        }
        _ => bail!("{} does not answer SYNs itself", t.label()),
    }
}

/// A field of /proc/net/netstat (header line, then values line).
fn netstat(text: &str, group: &str, field: &str) -> Result<u64> {
    let mut lines = text.lines();
    while let Some(h) = lines.next() {
        let v = lines.next().unwrap_or("");
        if h.starts_with(&format!("{group}:")) {
            let i = h
                .split_whitespace()
                .position(|f| f == field)
                .with_context(|| format!("no {field} in {group}"))?;
            return v
                .split_whitespace()
                .nth(i)
                .and_then(|x| x.parse().ok())
                .context("netstat value");
        }
    }
    bail!("no {group} in netstat")
}

// ---------------------------------------------------------------- syn

#[derive(clap::Args)]
pub struct SynArgs {
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
    /// Flood over IPv6 instead of IPv4 (ackgate only; the kernel baselines
    /// are measured over IPv4).
    #[arg(long)]
    ipv6: bool,
}

#[derive(Serialize)]
struct SynRow {
    target: Target,
    sent_pps: Stat,
    answered_per_s: Stat,
    softirq_ns_per_syn: Stat,
}

#[derive(Serialize)]
struct SynReport {
    benchmark: &'static str,
    machine: Machine,
    runs: usize,
    seconds: f64,
    pps: Option<u64>,
    family: &'static str,
    flood_cpu: usize,
    generator_ceiling_pps: Stat,
    targets: Vec<SynRow>,
}

pub fn syn(a: SynArgs) -> Result<()> {
    let (runs, secs) = if a.common.quick {
        (1, 1.0)
    } else {
        (a.runs.max(1), a.seconds)
    };
    let lab = BenchLab::new()?;
    let _nginx = lab::nginx(&lab, 1)?;
    let ceil: Vec<f64> = (0..runs)
        .map(|_| ceiling(&lab, secs).map(|s| s.pps))
        .collect::<Result<_>>()?;
    let dst: IpAddr = if a.ipv6 { lab.vip6() } else { lab::VIP4.into() };
    let targets: &[Target] = if a.ipv6 {
        &[Target::Ackgate]
    } else {
        // ackgate last: its handed-off sockets, bound to the service
        // address, outlive it (closing) and would block the plain
        // listener's bind.
        &[Target::Syncookies, Target::Synproxy, Target::Ackgate]
    };
    let mut rows = Vec::new();
    for &t in targets {
        let _run = lab::start(&lab, t)?;
        let (mut sent, mut ans, mut cost) = (vec![], vec![], vec![]);
        for r in 0..runs {
            let before = answered(&lab, t)?;
            let c0 = cpu()?;
            let spec = flood_spec(&lab, dst, a.pps, secs, r as u64)?;
            let stop = AtomicBool::new(false);
            let s = lab.atk.run(|| -> Result<Sent> {
                flood::pin(FLOOD_CPU)?;
                flood::run("atk0", &spec, &stop)
            })??;
            let c1 = cpu()?;
            let n = answered(&lab, t)? - before;
            eprintln!(
                "syn {:18} sent {:>10.0} pps, answered {:>10.0}/s",
                t.label(),
                s.pps,
                n as f64 / s.seconds
            );
            sent.push(s.pps);
            ans.push(n as f64 / s.seconds);
            cost.push((c1.softirq - c0.softirq) as f64 * tick_secs() * 1e9 / (n.max(1)) as f64);
        }
        rows.push(SynRow {
            target: t,
            sent_pps: Stat::of(sent),
            answered_per_s: Stat::of(ans),
            softirq_ns_per_syn: Stat::of(cost),
        });
    }
    rows.sort_by_key(|r| r.target != Target::Ackgate);
    let rep = SynReport {
        benchmark: "syn",
        machine: Machine::probe(),
        runs,
        seconds: secs,
        pps: a.pps,
        family: if a.ipv6 { "ipv6" } else { "ipv4" },
        flood_cpu: FLOOD_CPU,
        generator_ceiling_pps: Stat::of(ceil),
        targets: rows,
    };
    let mut md = format!(
        "### SYN flood: answered per second on one core\n\n{}\n\n`ackgate-bench syn{}`: {} runs x {} s, {} flood {} from the attacker namespace, generator and receiver on CPU {}. Generator ceiling (into XDP_DROP): **{} pps**. Median (min-max).\n\n| target | sent pps | SYN-ACKs per s | softirq ns per SYN |\n|---|---:|---:|---:|\n",
        rep.machine.line(),
        if a.common.quick { " --quick" } else { "" },
        runs,
        secs,
        rep.family,
        a.pps.map_or("flat out".to_string(), |p| format!("at {p} pps")),
        FLOOD_CPU,
        fmt_num(rep.generator_ceiling_pps.median)
    );
    for r in &rep.targets {
        let _ = std::fmt::Write::write_fmt(
            &mut md,
            format_args!(
                "| {} | {} | {} | {} |\n",
                r.target.label(),
                r.sent_pps.show(0),
                r.answered_per_s.show(0),
                r.softirq_ns_per_syn.show(0)
            ),
        );
    }
    if let (Some(ag), rest) = (rep.targets.first(), &rep.targets[1..]) {
        for r in rest {
            md.push_str(&format!(
                "\nackgate answers {:.2}x the SYNs per second of {}.",
                ag.answered_per_s.median / r.answered_per_s.median.max(1.0),
                r.target.label()
            ));
        }
        md.push('\n');
    }
    let svg = report::bars(
        "SYN-ACKs per second, one core (median, min-max)",
        "/s",
        &rep.targets
            .iter()
            .map(|r| {
                (
                    r.target.label().to_string(),
                    r.answered_per_s.median,
                    r.answered_per_s.min,
                    r.answered_per_s.max,
                )
            })
            .collect::<Vec<_>>(),
    );
    report::write(&a.common.out, "syn", &rep, &md, &[("syn.svg".into(), svg)])
}

// ---------------------------------------------------------------- attack

#[derive(clap::Args)]
pub struct AttackArgs {
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
    /// [default: 0, 10% and 30% of the measured generator ceiling, max].
    #[arg(long, value_delimiter = ',')]
    flood: Vec<String>,
    /// Per-connection timeout in seconds (a failure past it).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

#[derive(Serialize, Clone)]
struct Point {
    target: Target,
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
}

#[derive(Serialize)]
struct AttackReport {
    benchmark: &'static str,
    machine: Machine,
    runs: usize,
    rate: u64,
    seconds: f64,
    timeout: f64,
    generator_ceiling_pps: f64,
    points: Vec<Point>,
}

/// One open-loop client run: what happened to each connection.
struct Outcome {
    ok: u64,
    total: u64,
    retrans: u64,
    connect: Histogram<u64>,
    first_byte: Histogram<u64>,
}

/// Opens `rate` connections per second for `secs` from the client
/// namespace, each timed from its scheduled start (so a stalled client does
/// not hide latency), fetching `/` over HTTP/1.0.
fn open_loop(
    cli: &Netns,
    target: SocketAddr,
    rate: u64,
    secs: f64,
    timeout: f64,
) -> Result<Outcome> {
    cli.run(move || -> Result<Outcome> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let n = (rate as f64 * secs) as u64;
            let start = tokio::time::Instant::now() + Duration::from_millis(50);
            let to = Duration::from_secs_f64(timeout);
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                set.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let r = tokio::time::timeout(to, async {
                        let mut s = tokio::net::TcpStream::connect(target).await?;
                        let connected = at.elapsed();
                        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                        let mut buf = [0u8; 512];
                        let k = s.read(&mut buf).await?;
                        let first = at.elapsed();
                        let ok = buf[..k].starts_with(b"HTTP/1.1 200");
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest).await?;
                        std::io::Result::Ok((connected, first, ok))
                    })
                    .await;
                    match r {
                        Ok(Ok((c, f, true))) => Some((c, f)),
                        _ => None,
                    }
                });
            }
            let mut o = Outcome {
                ok: 0,
                total: n,
                retrans: 0,
                connect: Histogram::new(3)?,
                first_byte: Histogram::new(3)?,
            };
            while let Some(r) = set.join_next().await {
                if let Some((c, f)) = r? {
                    o.ok += 1;
                    if c >= Duration::from_secs(1) {
                        o.retrans += 1;
                    }
                    o.connect.record(c.as_micros() as u64)?;
                    o.first_byte.record(f.as_micros() as u64)?;
                }
            }
            anyhow::Ok(o)
        })
    })?
}

pub fn attack(a: AttackArgs) -> Result<()> {
    let (runs, secs, rate) = if a.common.quick {
        (1, 1.0, a.rate.min(100))
    } else {
        (a.runs.max(1), a.seconds, a.rate.max(1))
    };
    let lab = BenchLab::new()?;
    let _nginx = lab::nginx(&lab, 1)?;
    let ceil = ceiling(&lab, if a.common.quick { 0.5 } else { 2.0 })?.pps;
    let levels: Vec<Option<u64>> = if a.flood.is_empty() {
        if a.common.quick {
            vec![Some(0), None]
        } else {
            vec![
                Some(0),
                Some((ceil * 0.1) as u64),
                Some((ceil * 0.3) as u64),
                None,
            ]
        }
    } else {
        a.flood
            .iter()
            .map(|f| match f.trim() {
                "max" => Ok(None),
                v => v
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("--flood: '{v}' is not a rate or 'max'")),
            })
            .collect::<Result<_>>()?
    };
    let mut points = Vec::new();
    // ackgate last (see `syn`).
    for t in [Target::Syncookies, Target::Synproxy, Target::Ackgate] {
        let run = lab::start(&lab, t)?;
        for &level in &levels {
            let mut acc: Vec<(f64, Outcome)> = Vec::new();
            for r in 0..runs {
                let spec = match level {
                    Some(0) => None,
                    pps => Some(flood_spec(
                        &lab,
                        lab::VIP4.into(),
                        pps,
                        secs + 2.0 + a.timeout,
                        r as u64,
                    )?),
                };
                let (sent, o) = with_flood(&lab, spec, || {
                    open_loop(&lab.cli, run.addr, rate, secs, a.timeout)
                })?;
                eprintln!(
                    "attack {:18} flood {:>9} pps: {}/{} ok, connect p99 {:.1} ms, {} retransmitted",
                    t.label(),
                    fmt_num(sent.pps),
                    o.ok,
                    o.total,
                    o.connect.value_at_quantile(0.99) as f64 / 1e3,
                    o.retrans
                );
                acc.push((sent.pps, o));
            }
            let st = |f: &dyn Fn(&(f64, Outcome)) -> f64| Stat::of(acc.iter().map(f).collect());
            let q = |h: &Histogram<u64>, q: f64| {
                if h.is_empty() {
                    f64::NAN
                } else {
                    h.value_at_quantile(q) as f64 / 1e3
                }
            };
            points.push(Point {
                target: t,
                flood_pps: level,
                flood_sent_pps: st(&|x| x.0),
                success_rate: st(&|x| x.1.ok as f64 / x.1.total.max(1) as f64),
                connect_p50_ms: st(&|x| q(&x.1.connect, 0.5)),
                connect_p99_ms: st(&|x| q(&x.1.connect, 0.99)),
                connect_p999_ms: st(&|x| q(&x.1.connect, 0.999)),
                first_byte_p50_ms: st(&|x| q(&x.1.first_byte, 0.5)),
                first_byte_p99_ms: st(&|x| q(&x.1.first_byte, 0.99)),
                first_byte_p999_ms: st(&|x| q(&x.1.first_byte, 0.999)),
                syn_retransmit_share: st(&|x| x.1.retrans as f64 / x.1.total.max(1) as f64),
            });
        }
        drop(run);
    }
    points.sort_by_key(|p| p.target != Target::Ackgate);
    let rep = AttackReport {
        benchmark: "attack",
        machine: Machine::probe(),
        runs,
        rate,
        seconds: secs,
        timeout: a.timeout,
        generator_ceiling_pps: ceil,
        points,
    };
    let mut md = format!(
        "### Legitimate clients under a SYN flood\n\n{}\n\n`ackgate-bench attack{}`: an open-loop client opens {} connections/s for {} s (each timed from its scheduled start) and fetches a 2-byte page from nginx while the attacker floods spoofed SYNs; {} run(s) per point, median (min-max). Generator ceiling {} pps.\n\n| target | flood pps (sent) | success | connect p50 / p99 / p99.9 ms | first byte p50 / p99 / p99.9 ms | SYN retransmitted |\n|---|---:|---:|---:|---:|---:|\n",
        rep.machine.line(),
        if a.common.quick { " --quick" } else { "" },
        rate,
        secs,
        runs,
        fmt_num(ceil)
    );
    for p in &rep.points {
        md.push_str(&format!(
            "| {} | {} | {:.1}% | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.1}% |\n",
            p.target.label(),
            fmt_num(p.flood_sent_pps.median),
            p.success_rate.median * 100.0,
            p.connect_p50_ms.median,
            p.connect_p99_ms.median,
            p.connect_p999_ms.median,
            p.first_byte_p50_ms.median,
            p.first_byte_p99_ms.median,
            p.first_byte_p999_ms.median,
            p.syn_retransmit_share.median * 100.0
        ));
    }
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        [Target::Ackgate, Target::Syncookies, Target::Synproxy]
            .iter()
            .map(|&t| {
                (
                    t.label().to_string(),
                    rep.points
                        .iter()
                        .filter(|p| p.target == t)
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
    report::write(&a.common.out, "attack", &rep, &md, &svgs)
}

// ---------------------------------------------------------------- conn, bulk

#[derive(clap::Args)]
pub struct ConnArgs {
    #[command(flatten)]
    common: Common,
    /// Rounds; each measures every target once, in turn.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[derive(Serialize)]
struct RateRow {
    target: Target,
    value: Stat,
    cpu_per_unit: Stat,
    /// Connections that failed or timed out (3 s), summed over runs.
    failed: u64,
}

#[derive(Serialize)]
struct ConnReport {
    benchmark: &'static str,
    machine: Machine,
    runs: usize,
    clients: usize,
    seconds: f64,
    connections_per_s: Vec<RateRow>,
}

/// The three that can run at once: ackgate protects port 80, HAProxy
/// listens on 81 (XDP passes it), direct goes to the backend.
fn side_by_side(lab: &BenchLab) -> Result<Vec<Running>> {
    Ok(vec![
        lab::start(lab, Target::Ackgate)?,
        lab::start(lab, Target::Haproxy)?,
        lab::start(lab, Target::Direct)?,
    ])
}

/// Closed loop: `clients` threads connect, fetch `/`, close, for `secs`.
fn conn_rate(cli: &Netns, target: SocketAddr, clients: usize, secs: f64) -> Result<(f64, u64)> {
    cli.run(move || -> Result<(f64, u64)> {
        let done = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs_f64(secs);
        std::thread::scope(|sc| {
            for _ in 0..clients {
                sc.spawn(|| {
                    while Instant::now() < until {
                        let r = (|| -> std::io::Result<bool> {
                            let mut s = std::net::TcpStream::connect_timeout(
                                &target,
                                Duration::from_secs(3),
                            )?;
                            s.set_read_timeout(Some(Duration::from_secs(3)))?;
                            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                            let mut b = Vec::new();
                            s.read_to_end(&mut b)?;
                            Ok(b.starts_with(b"HTTP/1.1 200"))
                        })();
                        match r {
                            Ok(true) => done.fetch_add(1, Relaxed),
                            _ => failed.fetch_add(1, Relaxed),
                        };
                    }
                });
            }
        });
        Ok((
            done.load(Relaxed) as f64 / t0.elapsed().as_secs_f64(),
            failed.load(Relaxed),
        ))
    })?
}

pub fn conn(a: ConnArgs) -> Result<()> {
    let (runs, secs) = if a.common.quick {
        (1, 1.0)
    } else {
        (a.runs.max(1), a.seconds)
    };
    let lab = BenchLab::new()?;
    let _nginx = lab::nginx(&lab, 1)?;
    let targets = side_by_side(&lab)?;
    let mut vals = vec![(vec![], vec![]); targets.len()];
    let mut fails = vec![0u64; targets.len()];
    for _ in 0..runs {
        for (i, t) in targets.iter().enumerate() {
            let c0 = cpu()?;
            let (rate, failed) = conn_rate(&lab.cli, t.addr, a.clients, secs)?;
            let c1 = cpu()?;
            fails[i] += failed;
            eprintln!(
                "conn {:10} {:>8.0} connections/s ({failed} failed)",
                t.target.label(),
                rate
            );
            vals[i].0.push(rate);
            // CPU microseconds (all cores) per connection.
            vals[i]
                .1
                .push((c1.busy - c0.busy) as f64 * tick_secs() * 1e6 / (rate * secs).max(1.0));
        }
    }
    let rows: Vec<RateRow> = targets
        .iter()
        .zip(vals)
        .zip(fails)
        .map(|((t, (v, c)), failed)| RateRow {
            target: t.target,
            value: Stat::of(v),
            cpu_per_unit: Stat::of(c),
            failed,
        })
        .collect();
    let rep = ConnReport {
        benchmark: "conn",
        machine: Machine::probe(),
        runs,
        clients: a.clients,
        seconds: secs,
        connections_per_s: rows,
    };
    let mut md = format!(
        "### Connections per second\n\n{}\n\n`ackgate-bench conn{}`: {} closed-loop clients connect, fetch a 2-byte page from nginx and close, {} s per measurement, targets in turn, {} round(s); median (min-max). CPU is all cores (client, proxy and nginx share them).\n\n| target | connections/s | CPU us per connection | failed (all runs) |\n|---|---:|---:|---:|\n",
        rep.machine.line(),
        if a.common.quick { " --quick" } else { "" },
        a.clients,
        secs,
        runs
    );
    for r in &rep.connections_per_s {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.target.label(),
            r.value.show(0),
            r.cpu_per_unit.show(1),
            r.failed
        ));
    }
    ratios(&mut md, &rep.connections_per_s, "the connection rate");
    let svg = rate_bars(
        "Connections per second (median, min-max)",
        "conn/s",
        &rep.connections_per_s,
    );
    report::write(
        &a.common.out,
        "conn",
        &rep,
        &md,
        &[("conn.svg".into(), svg)],
    )
}

fn ratios(md: &mut String, rows: &[RateRow], what: &str) {
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

fn rate_bars(title: &str, unit: &str, rows: &[RateRow]) -> String {
    report::bars(
        title,
        unit,
        &rows
            .iter()
            .map(|r| {
                (
                    r.target.label().to_string(),
                    r.value.median,
                    r.value.min,
                    r.value.max,
                )
            })
            .collect::<Vec<_>>(),
    )
}

#[derive(clap::Args)]
pub struct BulkArgs {
    #[command(flatten)]
    common: Common,
    /// Rounds; each measures every target once, in turn.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// MiB per download.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
}

#[derive(Serialize)]
struct BulkReport {
    benchmark: &'static str,
    machine: Machine,
    runs: usize,
    mib: u64,
    gbit_per_s: Vec<RateRow>,
}

/// One download of `/bulk` through `target`; returns seconds.
fn download(cli: &Netns, target: SocketAddr, bytes: u64) -> Result<f64> {
    cli.run(move || -> Result<f64> {
        let t0 = Instant::now();
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"GET /bulk HTTP/1.0\r\n\r\n")?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        ensure!(
            got > bytes,
            "short download: {got} bytes of {bytes} + headers"
        );
        Ok(t0.elapsed().as_secs_f64())
    })?
}

pub fn bulk(a: BulkArgs) -> Result<()> {
    let (runs, mib) = if a.common.quick {
        (1, 64)
    } else {
        (a.runs.max(1), a.mib.max(1))
    };
    let bytes = mib << 20;
    let lab = BenchLab::new()?;
    let _nginx = lab::nginx(&lab, bytes)?;
    let targets = side_by_side(&lab)?;
    let mut vals = vec![(vec![], vec![]); targets.len()];
    for _ in 0..runs {
        for (i, t) in targets.iter().enumerate() {
            let c0 = cpu()?;
            let secs = download(&lab.cli, t.addr, bytes)?;
            let c1 = cpu()?;
            let gbit = bytes as f64 * 8.0 / secs / 1e9;
            eprintln!("bulk {:10} {gbit:6.2} Gbit/s", t.target.label());
            vals[i].0.push(gbit);
            // CPU seconds (all cores) per GB moved.
            vals[i]
                .1
                .push((c1.busy - c0.busy) as f64 * tick_secs() / (bytes as f64 / 1e9));
        }
    }
    let rows: Vec<RateRow> = targets
        .iter()
        .zip(vals)
        .map(|(t, (v, c))| RateRow {
            target: t.target,
            value: Stat::of(v),
            cpu_per_unit: Stat::of(c),
            failed: 0,
        })
        .collect();
    let rep = BulkReport {
        benchmark: "bulk",
        machine: Machine::probe(),
        runs,
        mib,
        gbit_per_s: rows,
    };
    let mut md = format!(
        "### Relay throughput\n\n{}\n\n`ackgate-bench bulk{}`: one download of {} MiB from nginx (sendfile) per measurement, targets in turn, {} round(s); median (min-max). CPU is all cores (client, proxy and nginx share them).\n\n| target | Gbit/s | CPU s per GB |\n|---|---:|---:|\n",
        rep.machine.line(),
        if a.common.quick { " --quick" } else { "" },
        mib,
        runs
    );
    for r in &rep.gbit_per_s {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            r.target.label(),
            r.value.show(2),
            r.cpu_per_unit.show(2)
        ));
    }
    ratios(&mut md, &rep.gbit_per_s, "the throughput");
    let svg = rate_bars(
        "Relay throughput, Gbit/s (median, min-max)",
        "Gbit/s",
        &rep.gbit_per_s,
    );
    report::write(
        &a.common.out,
        "bulk",
        &rep,
        &md,
        &[("bulk.svg".into(), svg)],
    )
}
