//! `ackgate-bench xdp`: what one SYN costs the XDP program.
//!
//! BPF_PROG_TEST_RUN's `repeat` reruns one buffer, which the program rewrites
//! into a SYN-ACK on the first run, so later runs would time the cheap "not a
//! SYN" path. Live-frame mode does not help: its page pool recycles the
//! rewritten pages (measured: 64 of 100,000 runs saw a SYN, one batch), and
//! one call per packet times mostly syscall-cold caches. So the repeat loop
//! runs the `ackgate_bench` harness, which restores the SYN and tail-calls
//! the production program; the responder's counters must show one answered
//! SYN per run, or the run is rejected. The same harness in front of the
//! XDP_DROP program measures the harness itself, and the report gives the
//! SYN path minus that.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ackgate::xdp::{secret::Secret, Responder, Settings};
use ackgate_common::wire::Counter;
use ackgate_lab::{frame::Segment, harness};
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;

use crate::{
    report::{self, Stat},
    Common,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Runs per case; the report gives the median run and the spread.
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Packets per run (BPF_PROG_TEST_RUN repeat).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
}

#[derive(Serialize)]
struct Case {
    name: String,
    frame_bytes: usize,
    /// Mean ns per packet of each run (kernel-timed).
    runs_ns: Vec<f64>,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    unix_time: u64,
    kernel: String,
    cpu: String,
    nproc: usize,
    runs: usize,
    repeat: u32,
    cases: Vec<Case>,
    /// Median SYN run minus the median harness+drop run, per family.
    syn_v4_minus_drop_ns: f64,
    syn_v6_minus_drop_ns: f64,
}

fn linux_opts(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    vec![
        2, 4, m[0], m[1], 4, 2, 8, 10, 0, 1, 2, 3, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "BPF_PROG_TEST_RUN needs root"
    );
    let runs = a.common.pick(3, a.runs.max(1));
    let repeat = a.common.pick(100_000, a.repeat.max(1));
    let vip4 = Ipv4Addr::new(198, 18, 0, 1);
    let vip6: Ipv6Addr = "fd00:ac6a::1".parse().unwrap();
    let mut r = Responder::load()?;
    r.add_service(SocketAddr::new(vip4.into(), 80))?;
    r.add_service(SocketAddr::new(vip6.into(), 80))?;
    let settings = Settings {
        mss4: 1460,
        mss6: 1440,
        wscale: 7,
        window: 0,
        ts_max_age_ms: ackgate::xdp::DEFAULT_TS_MAX_AGE_MS,
    };
    r.install_keys(&Secret::random(), 1000, &settings)?;
    let mut bench = harness::Bench::load()?;
    // The ACK path runs only with the proxy's handoff on.
    r.set_handoff(true)?;

    let syn4 = Segment::syn(
        Ipv4Addr::new(198, 18, 9, 9).into(),
        40000,
        vip4.into(),
        80,
        12345,
        &linux_opts(1460),
    )
    .build();
    let syn6 = Segment::syn(
        "fd00:ac6a::9".parse::<Ipv6Addr>()?.into(),
        40000,
        vip6.into(),
        80,
        12345,
        &linux_opts(1440),
    )
    .build();
    let syn4_bare = Segment::syn(
        Ipv4Addr::new(198, 18, 9, 9).into(),
        40000,
        vip4.into(),
        80,
        12345,
        &[2, 4, 5, 0xb4],
    )
    .build();
    // A verified ACK: the SYN-ACK for syn4, answered. A forged one: the
    // same with a wrong acknowledgment number. Pass: a port not protected.
    let mut out = [0u8; 256];
    let res = harness::test_run(&r, &syn4, &mut out)?;
    let synack = ackgate_lab::frame::parse(&out[..res.data_size_out as usize])
        .context("parsing the bench SYN-ACK")?;
    let mut ack = Segment::syn(
        Ipv4Addr::new(198, 18, 9, 9).into(),
        40000,
        vip4.into(),
        80,
        12346,
        &[],
    );
    ack.flags = ackgate_lab::frame::TCP_ACK;
    ack.ack = synack.seq.wrapping_add(1);
    ack.window = 502;
    let tsecr = synack.options.ts().map_or(0, |t| t.0).to_be_bytes();
    ack.tcp_options = [&[1, 1, 8, 10, 0, 0, 0x13, 0x89][..], &tsecr[..]].concat();
    let ack_ok = ack.build();
    ack.ack = ack.ack.wrapping_add(0x1000);
    let ack_forged = ack.build();
    let mut pass = Segment::syn(
        Ipv4Addr::new(198, 18, 9, 9).into(),
        40000,
        vip4.into(),
        81,
        12345,
        &[],
    );
    pass.flags = ackgate_lab::frame::TCP_ACK;
    let pass = pass.build();
    // Each verified ACK is a ring-buffer event; a run must fit in the ring.
    let ring_runs = repeat.min(10_000);
    // (name, harness in front of XDP_DROP, frame, counter each run must
    // bump, packets per run)
    type Spec<'a> = (&'a str, bool, &'a [u8], Option<Counter>, u32);
    let cases: [Spec; 7] = [
        (
            "syn_v4_full_options",
            false,
            &syn4,
            Some(Counter::SynAnswered),
            repeat,
        ),
        (
            "syn_v4_mss_only",
            false,
            &syn4_bare,
            Some(Counter::SynAnswered),
            repeat,
        ),
        (
            "syn_v6_full_options",
            false,
            &syn6,
            Some(Counter::SynAnswered),
            repeat,
        ),
        (
            "ack_v4_forged",
            false,
            &ack_forged,
            Some(Counter::AckRejected),
            repeat,
        ),
        (
            "ack_v4_verified",
            false,
            &ack_ok,
            Some(Counter::AckVerified),
            ring_runs,
        ),
        (
            "pass_v4_other_port",
            false,
            &pass,
            Some(Counter::Passed),
            repeat,
        ),
        ("harness_plus_xdp_drop_v4", true, &syn4, None, repeat),
    ];
    let mut results = Vec::new();
    for (name, baseline, frame, expect, repeat) in cases {
        let mut ns = Vec::with_capacity(runs);
        for _ in 0..runs {
            let before = r.counters()?;
            let target = if baseline {
                harness::Target::Drop
            } else {
                harness::Target::Responder
            };
            let res = bench
                .run(&r, target, frame, repeat)
                .with_context(|| format!("{name}: test run"))?;
            let d = r.counters()?.since(&before);
            if let Some(c) = expect {
                ensure!(
                    d.get(c) == repeat as u64,
                    "{name}: {} of {repeat} runs counted {}; the harness did not present the packet it should",
                    d.get(c),
                    c.name()
                );
            }
            if expect == Some(Counter::AckVerified) {
                let n = harness::drain_handoffs(&mut r)?.len();
                ensure!(
                    n == repeat as usize,
                    "{name}: {n} handoff events for {repeat} runs"
                );
            }
            ns.push(res.duration.as_nanos() as f64);
        }
        let s = Stat::of(ns);
        eprintln!(
            "{name:24} median {:7.1} ns/packet  (min {:.1}, max {:.1}, {runs} x {repeat})",
            s.median, s.min, s.max
        );
        results.push(Case {
            name: name.into(),
            frame_bytes: frame.len(),
            runs_ns: s.runs,
            median_ns: s.median,
            min_ns: s.min,
            max_ns: s.max,
        });
    }
    let drop = results[6].median_ns;
    let rep = Report {
        benchmark: "xdp",
        unix_time: report::unix_time(),
        kernel: report::kernel(),
        cpu: report::cpu_model(),
        nproc: report::nproc(),
        runs,
        repeat,
        syn_v4_minus_drop_ns: results[0].median_ns - drop,
        syn_v6_minus_drop_ns: results[2].median_ns - drop,
        cases: results,
    };
    report::write(&a.common.out, "xdp", &rep, &markdown(&rep), &[])
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "### XDP paths (BPF_PROG_TEST_RUN repeat, the packet restored before every run)\n\nkernel {}, {} ({} CPUs); {} runs x {} packets (verified ACKs: at most 10,000 per run, the ring buffer's room); median run (min-max), ns per packet, harness included\n\n| case | frame bytes | median ns | min | max |\n|---|---:|---:|---:|---:|\n",
        r.kernel, r.cpu, r.nproc, r.runs, r.repeat
    );
    for k in &r.cases {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            k.name, k.frame_bytes, k.median_ns, k.min_ns, k.max_ns
        ));
    }
    md.push_str(&format!(
        "\nSYN path alone (minus the harness in front of XDP_DROP): **IPv4 {:.1} ns, IPv6 {:.1} ns per SYN**.\n",
        r.syn_v4_minus_drop_ns, r.syn_v6_minus_drop_ns
    ));
    md
}
