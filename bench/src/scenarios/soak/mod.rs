//! `soak`: ackgate in front of nginx for minutes, under a background SYN
//! flood, while closed-loop clients cycle through the ways real clients
//! use and misuse a connection (short, keep-alive, downloads, idle,
//! half-closed, left to the idle timeout, aborted with a reset). The
//! question is what a long run leaves behind: ackgate's descriptors,
//! memory and threads are sampled before, during and after, and must come
//! back to the baseline taken after a warm-up; `connections_active` must
//! return to 0; and the relayed-byte counters must match what the clients
//! sent and received. The resetting clients use a service of their own
//! (ackgate counts bytes per service), so the other's counters must equal
//! the clients' counts exactly, and the resets' stay within bounds (a
//! reset may overtake bytes in flight, so no client knows their count).
//!
//! The scenario writes its report, then fails if any check failed, so a
//! leak fails the command (CI runs `--quick`).

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate::{
    config::EngineArg,
    telemetry::{metrics as m, stats::Snapshot},
};
use ackgate_lab::{workspace_bin, Process};
use anyhow::{bail, ensure, Context as _, Result};
use clap::ValueEnum as _;
use serde::Serialize;

use self::{
    clients::{load, Profile, Tally, BULK, MIX},
    resources::{leaks, peak, sample, sampler, settle, Resources},
};
use super::{flood, flood_spec, Scenario};
use crate::{
    lab::{self, BenchLab},
    report::{self, fmt_num, Header},
    Common,
};

mod clients;
mod resources;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Seconds of mixed load under the flood.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    /// Concurrent closed-loop clients (a thread each), each cycling
    /// through the profiles.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..=2000))]
    clients: u64,
    /// Background SYN flood, spoofed SYNs per second (0: none).
    #[arg(long, default_value_t = 100_000)]
    flood_pps: u64,
    /// ackgate's idle timeout for the run (`--idle-timeout-secs`), which
    /// the `idle_timeout` profile outwaits.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60))]
    idle_timeout: u64,
    /// The engine ackgate runs (its `--engine`).
    #[arg(long, value_enum, default_value = "io_uring")]
    engine: EngineArg,
}

/// The two services, both in front of nginx: every profile but the
/// resets on [`CLEAN`] (the flood's target), the resets on [`RESET`].
const CLEAN: &str = "clean";
const RESET: &str = "reset";
const RESET_PORT: u16 = 8080;

/// ackgate's metrics now, scraped in the proxy namespace.
fn scrape(lab: &BenchLab) -> Result<Snapshot> {
    Ok(lab
        .px
        .run(|| Snapshot::take(lab::METRICS.parse().unwrap()))??)
}

/// Bytes relayed so far per (service, direction) of [`DIRECTIONS`].
fn relayed(snap: &Snapshot) -> [f64; 4] {
    DIRECTIONS.map(|(svc, dir)| snap.sum(m::RELAYED_BYTES, &[("service", svc), ("direction", dir)]))
}

const DIRECTIONS: [(&str, &str); 4] = [
    (CLEAN, "to_backend"),
    (CLEAN, "to_client"),
    (RESET, "to_backend"),
    (RESET, "to_client"),
];

/// ackgate in the proxy namespace with the two services, its idle timeout
/// `idle`, on `engine`.
fn start(lab: &BenchLab, engine: &str, idle: Duration) -> Result<Process> {
    let cfg = lab.dir.join("soak.toml");
    std::fs::write(
        &cfg,
        format!(
            "interfaces = [\"px0\"]
engine = \"{}\"
metrics = \"{}\"
stats_interval_secs = 0

[limits]
idle_timeout_secs = {}

[[service]]
name = \"{CLEAN}\"
listen = [\"{}\"]
backends = [\"{}\"]

[[service]]
name = \"{RESET}\"
listen = [\"{}:{RESET_PORT}\"]
backends = [\"{}\"]
",
            engine,
            lab::METRICS,
            idle.as_secs(),
            lab.vip(),
            lab.backend(),
            lab::VIP4,
            lab.backend()
        ),
    )?;
    let mut cmd = lab.px.command(workspace_bin("ackgate")?.to_str().unwrap());
    cmd.args(["run", "--config", cfg.to_str().unwrap()]);
    cmd.args(lab::extra_args());
    let mut p = Process::spawn("ackgate", cmd)?;
    lab::wait_listening(&lab.cli, lab.vip(), "ackgate", &mut p)?;
    Ok(p)
}

/// Each of [`DIRECTIONS`]' counters over the soak (`before` to `after`)
/// against what the clients of that service counted.
fn accounts(
    profiles: &BTreeMap<Profile, Tally>,
    before: [f64; 4],
    after: [f64; 4],
) -> Vec<Account> {
    DIRECTIONS
        .iter()
        .enumerate()
        .map(|(i, &(service, direction))| {
            let mut t = Tally::default();
            for (_, x) in profiles.iter().filter(|(p, _)| p.service() == service) {
                t.merge(x);
            }
            let (exact, bound) = match direction {
                "to_backend" => (t.exact_sent, t.bound_sent),
                _ => (t.exact_received, t.bound_received),
            };
            let relayed = after[i] - before[i];
            Account {
                service,
                direction,
                relayed,
                exact,
                bound,
                ok: relayed >= exact as f64 && relayed <= (exact + bound) as f64,
            }
        })
        .collect()
}

/// A relayed-byte counter against what the clients saw.
#[derive(Serialize)]
struct Account {
    service: &'static str,
    direction: &'static str,
    /// `ackgate_relayed_bytes_total` over the soak.
    relayed: f64,
    /// Client-side bytes of the connections that ended as planned.
    exact: u64,
    /// Most the reset and failed connections can add.
    bound: u64,
    ok: bool,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    seconds: f64,
    clients: usize,
    /// ackgate's `--engine` value.
    engine: String,
    idle_timeout_s: u64,
    flood_pps_requested: u64,
    flood_pps_sent: f64,
    syns_answered: f64,
    connections: u64,
    failed: u64,
    answered: u64,
    handoffs: f64,
    /// Frames (flood and clients alike) lost entering px0 during the soak.
    ingress_drops: u64,
    profiles: BTreeMap<Profile, Tally>,
    bytes: Vec<Account>,
    baseline: Resources,
    peak: Resources,
    after: Resources,
    settle_s: f64,
    samples: Vec<Resources>,
    /// What failed; empty when the soak passed.
    failures: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        a.seconds.is_finite() && (1.0..=86_400.0).contains(&a.seconds),
        "--seconds {}: must be 1-86400",
        a.seconds
    );
    let secs = a.common.pick(20.0, a.seconds);
    let clients = a.common.pick(a.clients.min(32), a.clients) as usize;
    let flood_pps = a.common.pick(a.flood_pps.min(50_000), a.flood_pps);
    let idle_timeout = Duration::from_secs(a.idle_timeout);
    let sc = Scenario::new("soak", &a.common, BULK)?;
    let lab = &sc.lab;
    let engine = a
        .engine
        .to_possible_value()
        .context("an engine without a name")?
        .get_name()
        .to_string();
    let ackgate = start(lab, &engine, idle_timeout)?;
    let pid = ackgate.pid();

    // Warm-up: every profile but the slow idle timeout, so pools, caches
    // and the allocator reach their working size before the baseline.
    let warm: Vec<Profile> = MIX
        .iter()
        .copied()
        .filter(|&p| p != Profile::IdleTimeout)
        .collect();
    eprintln!("soak: warm-up, {clients} clients for 3 s");
    load(
        lab,
        clients,
        Instant::now() + Duration::from_secs(3),
        &warm,
        idle_timeout,
    )?;
    // io_uring's workers from the warm-up end after 5 s idle.
    std::thread::sleep(Duration::from_secs(6));
    let baseline = sample(lab, pid, 0.0)?;
    if baseline.active != 0.0 {
        bail!(
            "{} connections still active after the warm-up",
            baseline.active
        );
    }
    let (m0, drops0) = (scrape(lab)?, lab.ingress_drops()?);
    eprintln!(
        "soak: baseline {} sockets, {} pipes, {} other descriptors, {} MiB, {} threads; {clients} clients for {secs} s under a {} pps flood",
        baseline.sockets,
        baseline.pipes,
        baseline.other_fds,
        baseline.rss_kib >> 10,
        baseline.threads,
        fmt_num(flood_pps as f64)
    );

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let stop_flood = AtomicBool::new(false);
    let stop_samples = AtomicBool::new(false);
    // Bounded by time and packets, with room for the whole soak and the
    // stragglers after it (the flood stops when the clients do).
    let mut spec = flood_spec(lab, lab::VIP4.into(), Some(flood_pps), secs + 30.0, 7)?;
    spec.max_packets = spec
        .max_packets
        .max(((secs + 30.0) * flood_pps as f64) as u64);
    let (profiles, sent, mut samples) = std::thread::scope(|s| -> Result<_> {
        let fl = (flood_pps > 0).then(|| s.spawn(|| flood(lab, &spec, &stop_flood)));
        let sm = s.spawn(|| {
            sampler(
                lab,
                pid,
                t0,
                Duration::from_secs_f64((secs / 60.0).max(1.0)),
                &stop_samples,
            )
        });
        let profiles = load(lab, clients, until, &MIX, idle_timeout);
        stop_flood.store(true, Relaxed);
        stop_samples.store(true, Relaxed);
        let sent = match fl {
            Some(h) => {
                h.join()
                    .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
                    .pps
            }
            None => 0.0,
        };
        let samples = sm
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
        Ok((profiles?, sent, samples))
    })?;
    let (after, settle_s) = settle(lab, pid, &baseline, t0)?;
    samples.push(after);

    let mut total = Tally::default();
    for t in profiles.values() {
        total.merge(t);
    }
    let (m1, ingress_drops) = (scrape(lab)?, lab.ingress_drops()? - drops0);
    let bytes = accounts(&profiles, relayed(&m0), relayed(&m1));
    let over = |name: &str| m1.sum(name, &[]) - m0.sum(name, &[]);
    let (handoffs, syns_answered) = (over(m::HANDOFFS), over(m::XDP_SYNS_ANSWERED));
    // A drain with nothing left to drain: a prompt, clean exit.
    let (status, _) = ackgate.stop(Duration::from_secs(20))?;

    let mut failures = Vec::new();
    if !status.success() {
        failures.push(format!("ackgate exited with {status} on SIGTERM"));
    }
    failures.extend(leaks(&baseline, &after));
    for b in bytes.iter().filter(|b| !b.ok) {
        failures.push(format!(
            "{} {}: {} bytes relayed, the clients account for {} exactly plus at most {}",
            b.service, b.direction, b.relayed, b.exact, b.bound
        ));
    }
    let connections = total.ok + total.failed;
    // Every answered connection was a handoff, and no connection two.
    if handoffs < total.answered as f64 || handoffs > connections as f64 {
        failures.push(format!(
            "{handoffs} handoffs for {connections} connections, {} of them answered",
            total.answered
        ));
    }
    if total.failed > 0 {
        failures.push(format!(
            "{} of {connections} connections failed: {}",
            total.failed,
            total.errors.join("; ")
        ));
    }
    let peak = peak(&samples);
    let rep = Report {
        head: sc.header(1),
        seconds: secs,
        clients,
        engine,
        idle_timeout_s: idle_timeout.as_secs(),
        flood_pps_requested: flood_pps,
        flood_pps_sent: sent,
        syns_answered,
        connections,
        failed: total.failed,
        answered: total.answered,
        handoffs,
        ingress_drops,
        profiles,
        bytes,
        baseline,
        peak,
        after,
        settle_s,
        samples,
        failures,
    };
    let md = markdown(&sc, &rep);
    sc.write(&rep, &md, &charts(&rep))?;
    if !rep.failures.is_empty() {
        bail!("soak failed: {}", rep.failures.join("; "));
    }
    eprintln!(
        "soak: {connections} connections, resources back to the baseline in {settle_s:.1} s, every byte accounted for"
    );
    Ok(())
}

/// One figure of a [`Resources`] sample.
type Of = fn(&Resources) -> f64;

fn markdown(sc: &Scenario, r: &Report) -> String {
    let mut md = sc.heading(&r.head, "Soak");
    md.push_str(&format!(
        ": {} closed-loop clients for {} s through ackgate ({} engine, idle timeout {} s) to nginx, each cycling through the profiles below, while {} spoofed SYNs/s ({} sent) flood the same service; {} SYNs answered by XDP meanwhile. Resources of the ackgate process from /proc, `connections_active` and the relayed-byte counters from its metrics; the baseline is taken after a 3 s warm-up and 6 s of quiet.\n\n",
        r.clients,
        r.seconds,
        r.engine,
        r.idle_timeout_s,
        fmt_num(r.flood_pps_requested as f64),
        fmt_num(r.flood_pps_sent),
        fmt_num(r.syns_answered),
    ));
    md.push_str("| profile | connections | failed | answered | bytes sent (exact) | bytes received (exact) |\n|---|---:|---:|---:|---:|---:|\n");
    for (p, t) in &r.profiles {
        let exact = |v: u64| match p.exact() {
            true => v.to_string(),
            false => "reset: bounded".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            serde_json::to_value(p).unwrap().as_str().unwrap_or(""),
            t.ok + t.failed,
            t.failed,
            t.answered,
            exact(t.exact_sent),
            exact(t.exact_received)
        ));
    }
    md.push_str(&format!(
        "\n{} connections, {} failed, {} answered by the backend; {} handoffs ({} frames dropped entering the proxy's interface: a client that never hears back cannot tell whether its handshake's last ACK was one). Relayed bytes per service (`{CLEAN}`: every profile but the resets, whose counts the clients know exactly; `{RESET}`: the resets) against the clients' counts:\n\n| service | direction | ackgate_relayed_bytes_total | clients (exact) | + at most (reset, failed) | accounted |\n|---|---|---:|---:|---:|---|\n",
        r.connections,
        r.failed,
        r.answered,
        r.handoffs,
        r.ingress_drops
    ));
    for b in &r.bytes {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            b.service,
            b.direction,
            b.relayed,
            b.exact,
            b.bound,
            match (b.ok, b.relayed == b.exact as f64) {
                (true, true) => "exactly",
                (true, false) => "within bounds",
                _ => "NO",
            }
        ));
    }
    md.push_str("\n| ackgate | baseline | peak | after |\n|---|---:|---:|---:|\n");
    let rows: [(&str, Of); 7] = [
        ("sockets", |x| x.sockets as f64),
        ("pipes (splice pool)", |x| x.pipes as f64),
        ("other descriptors", |x| x.other_fds as f64),
        ("RSS MiB", |x| x.rss_kib as f64 / 1024.0),
        ("threads", |x| x.threads as f64),
        ("io_uring workers", |x| x.io_workers as f64),
        ("connections_active", |x| x.active),
    ];
    for (name, f) in rows {
        let d = if name.starts_with("RSS") { 1 } else { 0 };
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            report::fmt_num_digits(f(&r.baseline), d),
            report::fmt_num_digits(f(&r.peak), d),
            report::fmt_num_digits(f(&r.after), d)
        ));
    }
    md.push_str(&format!(
        "\nBack to the baseline {:.1} s after the load stopped. ",
        r.settle_s
    ));
    match r.failures.is_empty() {
        true => md.push_str("Passed: nothing leaked, every byte accounted for.\n"),
        false => md.push_str(&format!("FAILED: {}.\n", r.failures.join("; "))),
    }
    md
}

fn charts(r: &Report) -> Vec<(String, String)> {
    let series = |name: &str, f: Of| {
        (
            name.to_string(),
            r.samples.iter().map(|x| (x.t.max(0.0), f(x))).collect(),
        )
    };
    vec![
        (
            "soak_fds.svg".into(),
            report::lines(
                "ackgate during the soak: descriptors and connections",
                "seconds",
                "count",
                &[
                    series("sockets", |x| x.sockets as f64),
                    series("pipes", |x| x.pipes as f64),
                    series("connections_active", |x| x.active),
                    series("threads + io workers", |x| {
                        (x.threads + x.io_workers) as f64
                    }),
                ],
            ),
        ),
        (
            "soak_rss.svg".into(),
            report::lines(
                "ackgate during the soak: resident memory",
                "seconds",
                "MiB",
                &[series("RSS", |x| x.rss_kib as f64 / 1024.0)],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::{clients::Moved, *};

    #[test]
    fn bytes_are_exact_on_the_clean_service_and_bounded_on_the_reset_one() {
        let mut p = BTreeMap::<Profile, Tally>::new();
        let ok = |sent, received| Ok(Moved { sent, received });
        p.entry(Profile::Short)
            .or_default()
            .add(Profile::Short, ok(18, 230));
        p.entry(Profile::HalfClose)
            .or_default()
            .add(Profile::HalfClose, ok(18, 230));
        p.entry(Profile::AbortRequest)
            .or_default()
            .add(Profile::AbortRequest, ok(18, 0));
        let (bs, br) = Profile::AbortRequest.bound();
        let check = |p: &BTreeMap<Profile, Tally>, after: [f64; 4]| -> Vec<bool> {
            accounts(p, [100.0; 4], after)
                .iter()
                .map(|a| a.ok)
                .collect()
        };
        let good = [136.0, 560.0, 100.0 + bs as f64, 100.0 + br as f64];
        assert_eq!(check(&p, good), [true; 4]);
        // A byte lost or one too many on the clean service, a reset
        // connection that moved more than it could have.
        let mut less = good;
        less[0] -= 1.0;
        assert_eq!(check(&p, less), [false, true, true, true]);
        let mut more = good;
        more[1] += 1.0;
        assert_eq!(check(&p, more), [true, false, true, true]);
        more = good;
        more[3] += 1.0;
        assert_eq!(check(&p, more), [true, true, true, false]);
        // A failed connection on the clean service widens its bound.
        p.entry(Profile::Short)
            .or_default()
            .add(Profile::Short, Err(ErrorKind::TimedOut.into()));
        assert_eq!(check(&p, [140.0, 600.0, 100.0, 100.0]), [true; 4]);
        assert_eq!(p[&Profile::Short].failed, 1);
    }
}
