//! `ackgate-bench handoff`: what the handoff costs a real connection.
//!
//! In a namespace lab, a kernel client talks to an echo backend in the
//! gateway twice over: through ackgate (XDP SYN cookie, verified ACK,
//! TCP_REPAIR handoff, relay) and directly (a port ackgate does not protect).
//! Rounds alternate between the two, so both see the same machine. Reported:
//! connect-to-first-byte percentiles for each and the difference, and the
//! rate of completed connections with several clients at once. The
//! connect-to-first-byte time is split in stages: the handshake (connect()
//! returning), and ackgate's own handoff latency (verified ACK in XDP to
//! socket made, from its metrics over the sequential connections); the rest
//! is the window update's trip to the client, its request's to the relay,
//! and the relay and backend.
//!
//! Then the materialization alone, on one thread: synthetic flows (client
//! addresses routed into an ARP-less veth of the gateway, so the window
//! updates go nowhere and no client is needed) made into sockets by the
//! synchronous path and by io_uring batches of several sizes, interleaved
//! in rounds; reported as handoffs per second and the latency of one call
//! (a flow's socket exists when its batch's call returns). Sockets are
//! closed with SO_LINGER 0 after each timed call, outside the timing.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ackgate::{
    handoff::{materialize, uring::UringHandoff},
    sys::raw::RawSender,
    xdp::ring::Flow,
};
use ackgate_lab::{harness::Attached, servers::StopOnDrop, Lab, Process};
use anyhow::{ensure, Result};
use serde::Serialize;

use crate::{report, Common};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Sequential connections per path for the latency figures.
    #[arg(long, default_value_t = 3000)]
    connections: usize,
    /// Concurrent clients for the rate figures.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per rate measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

#[derive(Serialize)]
struct Percentiles {
    median_us: f64,
    p99_us: f64,
    p999_us: f64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    unix_time: u64,
    kernel: String,
    connections: usize,
    clients: usize,
    seconds: u64,
    ttfb_ackgate: Percentiles,
    /// Through ackgate on a port marked server-first: the backend is
    /// connected at the handoff, not on the client's first byte.
    ttfb_ackgate_eager: Percentiles,
    ttfb_direct: Percentiles,
    /// The handshake alone: connect() returning.
    connect_ackgate: Percentiles,
    connect_direct: Percentiles,
    /// ackgate's mean handoff latency over the sequential connections
    /// (verified ACK in XDP to socket made: the ring's wake-up, the deal to
    /// an engine thread, the materialization).
    handoff_mean_us: f64,
    added_median_us: f64,
    added_p99_us: f64,
    rate_ackgate_per_s: f64,
    rate_direct_per_s: f64,
    /// One thread materializing synthetic flows, by path.
    materialize: Vec<Materialize>,
}

#[derive(Serialize)]
struct Materialize {
    /// `sync`, or `io_uring` with `batch` flows per call.
    path: &'static str,
    batch: usize,
    /// Per round: flows materialized per second of calls.
    handoffs_per_s: report::Stat,
    /// Median over all calls of one call's duration: a flow's latency.
    call_median_us: f64,
    call_p99_us: f64,
}

fn pct(v: &[Duration]) -> Percentiles {
    let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    Percentiles {
        median_us: report::quantile(&us, 0.5),
        p99_us: report::quantile(&us, 0.99),
        p999_us: report::quantile(&us, 0.999),
    }
}

/// Per path: (connect, connect-to-first-byte) of each sequential connection.
struct Sequential {
    ag: Vec<(Duration, Duration)>,
    ag_eager: Vec<(Duration, Duration)>,
    direct: Vec<(Duration, Duration)>,
}

/// One connection: connect, send 64 bytes; the time connect() took and the
/// time to the first echoed byte.
fn one(target: SocketAddr) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    let connected = t0.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[b'x'; 64])?;
    let mut b = [0u8; 64];
    s.read_exact(&mut b[..1])?;
    let t = t0.elapsed();
    s.read_exact(&mut b[1..])?;
    Ok((connected, t))
}

/// ackgate's handoff latency histogram: (sum of seconds, count).
fn handoff_latency(lab: &Lab) -> Result<(f64, f64)> {
    let m = lab
        .gw
        .run(|| ackgate::telemetry::stats::scrape(METRICS.parse().unwrap()))??;
    let get = |name: &str| {
        m.iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    Ok((
        get("ackgate_handoff_latency_seconds_sum"),
        get("ackgate_handoff_latency_seconds_count"),
    ))
}

/// ackgate's metrics endpoint in the gateway namespace.
const METRICS: &str = "127.0.0.1:9464";

pub fn run(a: Args) -> Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "the lab needs root");
    crate::lab::set_extra_args(&a.common.ackgate_args);
    let n = a.common.pick(200, a.connections.max(10));
    let secs = a.common.pick(1, a.seconds.max(1));
    let bin = ackgate_lab::workspace_bin("ackgate")?;
    let lab = Lab::new()?;
    let _pass = lab.client.run(|| Attached::pass("cli0"))??;
    let backend: SocketAddr = (lab.vip4, 9000).into();
    let l = lab.gw.run(move || TcpListener::bind(backend))??;
    let stop = AtomicBool::new(false);
    let rep = std::thread::scope(|sc| -> Result<Report> {
        sc.spawn(|| ackgate_lab::servers::echo(l, &stop));
        let _stop = StopOnDrop(&stop);
        let mut cmd = lab.gw.command(bin.to_str().unwrap());
        cmd.args([
            "run",
            "--iface",
            lab.gw_if,
            "--stats-interval",
            "0",
            "--metrics",
            METRICS,
            "--listen",
            &format!("{}:8080", lab.vip4),
            "--listen",
            &format!("{}:8081", lab.vip4),
            "--server-first",
            &format!("{}:8081", lab.vip4),
        ])
        .args(["--backend", &backend.to_string()])
        .args(crate::lab::extra_args());
        let ackgate = Process::start("ackgate", cmd, "proxy ready", Duration::from_secs(30))?;
        let via: SocketAddr = (lab.vip4, 8080).into();
        let eager: SocketAddr = (lab.vip4, 8081).into();
        // Warm the paths.
        lab.client.run(|| -> Result<()> {
            for _ in 0..20 {
                one(via)?;
                one(eager)?;
                one(backend)?;
            }
            Ok(())
        })??;
        // Sequential connections, the paths alternating in rounds of 50.
        let before = handoff_latency(&lab)?;
        let seq = lab.client.run(|| -> Result<Sequential> {
            let mut ag = Vec::with_capacity(n);
            let mut ag_eager = Vec::with_capacity(n);
            let mut direct = Vec::with_capacity(n);
            while ag.len() < n {
                for _ in 0..50 {
                    ag.push(one(via)?);
                }
                for _ in 0..50 {
                    ag_eager.push(one(eager)?);
                }
                for _ in 0..50 {
                    direct.push(one(backend)?);
                }
            }
            Ok(Sequential {
                ag,
                ag_eager,
                direct,
            })
        })??;
        let after = handoff_latency(&lab)?;
        let handoffs = after.1 - before.1;
        ensure!(handoffs > 0.0, "ackgate counted no handoffs");
        let handoff_mean_us = (after.0 - before.0) / handoffs * 1e6;
        let (ra, rd) = lab.client.run(|| {
            let rate = |target: SocketAddr| -> f64 {
                let done = AtomicU64::new(0);
                let t0 = Instant::now();
                std::thread::scope(|cs| {
                    for _ in 0..a.clients.max(1) {
                        cs.spawn(|| {
                            while t0.elapsed() < Duration::from_secs(secs) {
                                if one(target).is_ok() {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    }
                });
                done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
            };
            (rate(via), rate(backend))
        })?;
        drop(ackgate);
        let rounds = a.common.pick(3, 7);
        let per_round = a.common.pick(256, 2048);
        let materialize = lab
            .gw
            .run(|| materialize_rates(&lab, rounds, per_round))??;
        let ttfb = |v: &[(Duration, Duration)]| pct(&v.iter().map(|x| x.1).collect::<Vec<_>>());
        let connect = |v: &[(Duration, Duration)]| pct(&v.iter().map(|x| x.0).collect::<Vec<_>>());
        let (pa, pe, pd) = (ttfb(&seq.ag), ttfb(&seq.ag_eager), ttfb(&seq.direct));
        Ok(Report {
            benchmark: "handoff",
            unix_time: report::unix_time(),
            kernel: report::kernel(),
            connections: n,
            clients: a.clients,
            seconds: secs,
            added_median_us: pa.median_us - pd.median_us,
            added_p99_us: pa.p99_us - pd.p99_us,
            ttfb_ackgate: pa,
            ttfb_ackgate_eager: pe,
            ttfb_direct: pd,
            connect_ackgate: connect(&seq.ag),
            connect_direct: connect(&seq.direct),
            handoff_mean_us,
            rate_ackgate_per_s: ra,
            rate_direct_per_s: rd,
            materialize,
        })
    })?;
    let md = format!(
        "### Handoff: connect-to-first-byte and connection rate (namespace lab, veth)\n\nkernel {}; {} sequential connections per path, alternating in rounds; rate with {} clients for {} s\n\n| path | median | p99 | p99.9 | connections/s |\n|---|---:|---:|---:|---:|\n| through ackgate | {:.0} us | {:.0} us | {:.0} us | {:.0} |\n| through ackgate, backend connected at the handoff (server-first port) | {:.0} us | {:.0} us | {:.0} us | |\n| direct to the backend | {:.0} us | {:.0} us | {:.0} us | {:.0} |\n\nackgate adds {:.0} us at the median and {:.0} us at p99; it completes {:.2}x the direct connection rate.\n\nStages (medians): connect() returns after {:.0} us through ackgate (XDP's SYN-ACK) and {:.0} us direct; ackgate's handoff, verified ACK to socket made, takes {:.0} us on average; the rest is the window update's trip to the client, the request's to the relay, the relay and the backend.\n",
        rep.kernel,
        rep.connections,
        rep.clients,
        rep.seconds,
        rep.ttfb_ackgate.median_us,
        rep.ttfb_ackgate.p99_us,
        rep.ttfb_ackgate.p999_us,
        rep.rate_ackgate_per_s,
        rep.ttfb_ackgate_eager.median_us,
        rep.ttfb_ackgate_eager.p99_us,
        rep.ttfb_ackgate_eager.p999_us,
        rep.ttfb_direct.median_us,
        rep.ttfb_direct.p99_us,
        rep.ttfb_direct.p999_us,
        rep.rate_direct_per_s,
        rep.added_median_us,
        rep.added_p99_us,
        rep.rate_ackgate_per_s / rep.rate_direct_per_s,
        rep.connect_ackgate.median_us,
        rep.connect_direct.median_us,
        rep.handoff_mean_us,
    ) + &materialize_md(&rep.materialize);
    report::write(&a.common.out, "handoff", &rep, &md, &[])
}

/// Batch sizes of the io_uring path; 0 stands for the synchronous path.
const PATHS: [usize; 4] = [0, 1, 16, 64];
/// Where synthetic clients live: routed into a veth that drops it all.
const FAKE_CLIENTS: &str = "203.0.113.0/24";

/// Synthetic flow `n` to `service`: a distinct client address and port,
/// the options a Linux client negotiates.
fn fake_flow(service: SocketAddr, n: u32) -> Flow {
    Flow {
        client: SocketAddr::from((
            [203, 0, 113, 1 + (n % 250) as u8],
            10_000 + (n / 250 % 50_000) as u16,
        )),
        service,
        client_isn: n.wrapping_mul(2_654_435_761),
        cookie: n.wrapping_mul(40_503),
        mss: 1460,
        client_wscale: Some(7),
        sack: true,
        timestamps: true,
        client_tsval: n,
        synack_tsval: n << 8,
        client_window: 502,
        probe: false,
    }
}

/// Closes `s` at once (RST into the void, no TIME_WAIT), so the
/// next round can reuse its 4-tuple.
fn close_now(s: std::net::TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// In the gateway namespace: `rounds` rounds of `per_round` flows for each
/// path, the paths interleaved within a round.
fn materialize_rates(lab: &Lab, rounds: usize, per_round: usize) -> Result<Vec<Materialize>> {
    // A veth pair of the gateway's own (no dummy driver everywhere): with
    // ARP off, bh0 sends to its own MAC and bh1 drops what it receives.
    lab.gw.exec(&[
        "ip", "link", "add", "bh0", "type", "veth", "peer", "name", "bh1",
    ])?;
    lab.gw.exec(&["ip", "link", "set", "bh1", "up"])?;
    lab.gw
        .exec(&["ip", "link", "set", "bh0", "arp", "off", "up"])?;
    lab.gw
        .exec(&["ip", "route", "add", FAKE_CLIENTS, "dev", "bh0"])?;
    let service: SocketAddr = (lab.vip4, 7100).into();
    let sender = RawSender::new()?;
    let mut u = UringHandoff::new(64)?;
    let wscale = 7;
    let mut n = 0u32;
    let mut next = |k: usize| -> Vec<Flow> {
        (0..k)
            .map(|_| {
                n = n.wrapping_add(1);
                fake_flow(service, n)
            })
            .collect()
    };
    // Learn the receive window (the first flow of a kind is synchronous).
    for r in u.materialize(&next(1), wscale, &sender) {
        close_now(r?);
    }
    let mut rates = vec![Vec::new(); PATHS.len()];
    let mut calls = vec![Vec::new(); PATHS.len()];
    for _ in 0..rounds {
        for (p, &batch) in PATHS.iter().enumerate() {
            let mut busy = Duration::ZERO;
            let mut done = 0;
            while done < per_round {
                let flows = next(batch.max(1));
                let t0 = Instant::now();
                let socks: Vec<_> = if batch == 0 {
                    vec![materialize(&flows[0], wscale, &sender)]
                } else {
                    u.materialize(&flows, wscale, &sender)
                };
                let t = t0.elapsed();
                busy += t;
                calls[p].push(t.as_secs_f64() * 1e6);
                for s in socks {
                    close_now(s?);
                }
                done += flows.len();
            }
            rates[p].push(done as f64 / busy.as_secs_f64());
        }
    }
    Ok(PATHS
        .iter()
        .zip(rates.into_iter().zip(calls))
        .map(|(&batch, (r, mut c))| {
            c.sort_by(f64::total_cmp);
            Materialize {
                path: if batch == 0 { "sync" } else { "io_uring" },
                batch: batch.max(1),
                handoffs_per_s: report::Stat::of(r),
                call_median_us: report::quantile(&c, 0.5),
                call_p99_us: report::quantile(&c, 0.99),
            }
        })
        .collect())
}

fn materialize_md(m: &[Materialize]) -> String {
    let mut s = String::from(
        "\n### Handoff: materializations per second of one thread (synthetic flows)\n\n\
         | path | flows per call | handoffs/s median (min-max) | call median | call p99 | per flow |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for x in m {
        s += &format!(
            "| {} | {} | {} | {:.1} us | {:.1} us | {:.2} us |\n",
            x.path,
            x.batch,
            x.handoffs_per_s.show(0),
            x.call_median_us,
            x.call_p99_us,
            1e6 / x.handoffs_per_s.median,
        );
    }
    s
}
