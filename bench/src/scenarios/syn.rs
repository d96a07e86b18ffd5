//! `syn`: SYN-ACKs answered per second with the generator and the whole
//! receive path on one core, and the softirq CPU each SYN costs.

use std::{net::IpAddr, sync::atomic::AtomicBool, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{ceiling, cpu_during, flood, flood_spec, Scenario, FLOOD_CPU, SYN_DEFENCES};
use crate::{
    lab::{self, BenchLab, Target},
    report::{fmt_num, Header, Stat},
    Common,
};

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
    /// Flood over IPv6 instead of IPv4 (ackgate only; the kernel baselines
    /// are measured over IPv4).
    #[arg(long)]
    ipv6: bool,
}

#[derive(Serialize)]
struct Row {
    target: Target,
    sent_pps: Stat,
    answered_per_s: Stat,
    softirq_ns_per_syn: Stat,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    seconds: f64,
    pps: Option<u64>,
    family: &'static str,
    flood_cpu: usize,
    generator_ceiling_pps: Stat,
    targets: Vec<Row>,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let secs = a.common.pick(1.0, a.seconds);
    let sc = Scenario::new("syn", &a.common, 1)?;
    let lab = &sc.lab;
    let ceil: Vec<f64> = (0..runs)
        .map(|_| ceiling(lab, secs).map(|s| s.pps))
        .collect::<Result<_>>()?;
    let dst: IpAddr = if a.ipv6 { lab.vip6() } else { lab::VIP4.into() };
    let targets: &[Target] = if a.ipv6 {
        &[Target::Ackgate]
    } else {
        &SYN_DEFENCES
    };
    let mut rows = Vec::new();
    for &t in targets {
        let _run = lab::start(lab, t)?;
        let (mut sent, mut ans, mut cost) = (vec![], vec![], vec![]);
        for r in 0..runs {
            let before = answered(lab, t)?;
            let spec = flood_spec(lab, dst, a.pps, secs, r as u64)?;
            let (s, cpu) = cpu_during(|| flood(lab, &spec, &AtomicBool::new(false)))?;
            let n = answered(lab, t)? - before;
            eprintln!(
                "syn {:18} sent {:>10.0} pps, answered {:>10.0}/s",
                t.label(),
                s.pps,
                n as f64 / s.seconds
            );
            sent.push(s.pps);
            ans.push(n as f64 / s.seconds);
            cost.push(cpu.softirq_s * 1e9 / (n.max(1)) as f64);
        }
        rows.push(Row {
            target: t,
            sent_pps: Stat::of(sent),
            answered_per_s: Stat::of(ans),
            softirq_ns_per_syn: Stat::of(cost),
        });
    }
    rows.sort_by_key(|r| r.target != Target::Ackgate);
    let rep = Report {
        head: sc.header(runs),
        seconds: secs,
        pps: a.pps,
        family: if a.ipv6 { "ipv6" } else { "ipv4" },
        flood_cpu: FLOOD_CPU,
        generator_ceiling_pps: Stat::of(ceil),
        targets: rows,
    };
    let mut md = sc.heading(&rep.head, "SYN flood: answered per second on one core");
    md.push_str(&format!(
        ": {} runs x {} s, {} flood {} from the attacker namespace, generator and receiver on CPU {}. Generator ceiling (into XDP_DROP): **{} pps**. Median (min-max).\n\n| target | sent pps | SYN-ACKs per s | softirq ns per SYN |\n|---|---:|---:|---:|\n",
        runs,
        secs,
        rep.family,
        a.pps.map_or("flat out".to_string(), |p| format!("at {p} pps")),
        FLOOD_CPU,
        fmt_num(rep.generator_ceiling_pps.median)
    ));
    for r in &rep.targets {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.target.label(),
            r.sent_pps.show(0),
            r.answered_per_s.show(0),
            r.softirq_ns_per_syn.show(0)
        ));
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
    let svg = super::bars(
        "SYN-ACKs per second, one core (median, min-max)",
        "/s",
        rep.targets.iter().map(|r| (r.target, &r.answered_per_s)),
    );
    sc.write(&rep, &md, &[("syn.svg".into(), svg)])
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
