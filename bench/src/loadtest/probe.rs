//! The open-loop legitimate client, shared by `ackgate-bench probe` and the
//! `attack` scenario: connections start on a fixed schedule whether or not
//! earlier ones finished, and each is timed from its scheduled start, so a
//! stalled target shows as latency instead of hiding behind a slower
//! client. A connection that needed ~1 s to connect had its SYN
//! retransmitted (Linux's initial RTO).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{check_seconds, check_target, MAX_SECONDS};

/// What one open-loop run sends and expects.
#[derive(Clone, Debug)]
pub struct Load {
    pub target: SocketAddr,
    /// Connections per second.
    pub rate: u64,
    /// Connections in all.
    pub count: u64,
    /// Per connection, to its first byte.
    pub timeout: Duration,
    /// Sent once connected (empty: wait for the server to speak first).
    pub send: Vec<u8>,
    /// The first bytes must start with this, if given.
    pub expect: Option<Vec<u8>>,
}

/// Running counts, for a progress line.
#[derive(Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// What happened to each connection of a run.
pub struct Outcome {
    pub ok: u64,
    pub total: u64,
    /// Successful connections whose connect took >= 1 s.
    pub retrans: u64,
    /// Microseconds from the scheduled start.
    pub connect: Histogram<u64>,
    pub first_byte: Histogram<u64>,
}

/// Runs `load` on a runtime of its own, in the calling thread's namespace.
pub fn open_loop(load: &Load, progress: &Progress) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut set = tokio::task::JoinSet::new();
        let mut results = Vec::with_capacity(load.count as usize);
        for i in 0..load.count {
            let at = start + Duration::from_secs_f64(i as f64 / load.rate as f64);
            let l = load.clone();
            // Spawned on schedule, so the set holds only the connections in
            // flight.
            tokio::time::sleep_until(at).await;
            progress.started.fetch_add(1, Relaxed);
            set.spawn(async move { one(&l, at).await });
            while let Some(r) = set.try_join_next() {
                results.push(note(progress, r?));
            }
        }
        while let Some(r) = set.join_next().await {
            results.push(note(progress, r?));
        }
        let mut o = Outcome {
            ok: 0,
            total: load.count,
            retrans: 0,
            connect: Histogram::new(3)?,
            first_byte: Histogram::new(3)?,
        };
        for (c, f) in results.into_iter().flatten() {
            o.ok += 1;
            o.connect.record(c.as_micros() as u64)?;
            o.first_byte.record(f.as_micros() as u64)?;
            if c >= Duration::from_secs(1) {
                o.retrans += 1;
            }
        }
        anyhow::Ok(o)
    })
}

/// Counts a finished connection in `p` and passes it on.
fn note(p: &Progress, r: Option<(Duration, Duration)>) -> Option<(Duration, Duration)> {
    match r {
        Some(_) => p.ok.fetch_add(1, Relaxed),
        None => p.failed.fetch_add(1, Relaxed),
    };
    r
}

/// One connection: connect, send, first byte; times from `at`.
async fn one(l: &Load, at: tokio::time::Instant) -> Option<(Duration, Duration)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let r = tokio::time::timeout(l.timeout, async {
        let mut s = tokio::net::TcpStream::connect(l.target).await?;
        let connected = at.elapsed();
        if !l.send.is_empty() {
            s.write_all(&l.send).await?;
        }
        let mut buf = [0u8; 512];
        let k = s.read(&mut buf).await?;
        let first = at.elapsed();
        let ok = k > 0 && l.expect.as_ref().is_none_or(|e| buf[..k].starts_with(e));
        // Read the rest, so the server closes first (no RST on close).
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        std::io::Result::Ok((connected, first, ok))
    })
    .await;
    match r {
        Ok(Ok((c, f, true))) => Some((c, f)),
        _ => None,
    }
}

// ------------------------------------------------------------ the command

#[derive(clap::Args)]
pub struct Args {
    /// The target: IP address and TCP port (a single host; broadcast and
    /// multicast are refused).
    #[arg(long)]
    target: SocketAddr,
    /// New connections per second, started on schedule whether or not
    /// earlier ones have finished.
    #[arg(long)]
    rate: u64,
    /// Seconds to run (required bound; at most 3600).
    #[arg(long)]
    seconds: f64,
    /// Most connections to open (required bound).
    #[arg(long)]
    max_connections: u64,
    /// Bytes each connection sends once connected, with \r and \n escapes;
    /// "" sends nothing and waits for the server to speak first (SSH, SMTP)
    /// [default: "GET / HTTP/1.0\r\n\r\n"].
    #[arg(long)]
    send: Option<String>,
    /// Count a connection as served only if its first bytes start with
    /// this (escapes as for --send), e.g. "HTTP/1.1 200".
    #[arg(long)]
    expect: Option<String>,
    /// Seconds each connection may take to its first byte.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    target: SocketAddr,
    rate: u64,
    connections: u64,
    served: u64,
    success_rate: f64,
    syn_retransmitted: u64,
    connect_ms: Quantiles,
    first_byte_ms: Quantiles,
}

#[derive(Serialize)]
struct Quantiles {
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3);
        Quantiles {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
        }
    }
}

/// `\r`, `\n`, `\t` and `\\` in a command-line string.
fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\\\", "\\")
        .into_bytes()
}

pub fn run(a: Args) -> Result<()> {
    check_target(a.target.ip())?;
    check_seconds(a.seconds)?;
    if a.rate == 0 || a.rate > 100_000 {
        bail!("--rate {}: must be 1-100000 connections per second", a.rate);
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if !(a.timeout > 0.0 && a.timeout <= MAX_SECONDS) {
        bail!(
            "--timeout {}: must be more than 0 and at most {MAX_SECONDS}",
            a.timeout
        );
    }
    let count = ((a.rate as f64 * a.seconds) as u64).clamp(1, a.max_connections);
    let load = Load {
        target: a.target,
        rate: a.rate,
        count,
        timeout: Duration::from_secs_f64(a.timeout),
        send: unescape(a.send.as_deref().unwrap_or("GET / HTTP/1.0\\r\\n\\r\\n")),
        expect: a.expect.as_deref().map(unescape),
    };
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let o = std::thread::scope(|s| {
        s.spawn(|| {
            let t0 = Instant::now();
            while !done.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if t0.elapsed().as_millis() % 1000 < 100 {
                    eprint!(
                        "\rprobe: {:5.1} s  started {:>8}  served {:>8}  failed {:>6}",
                        t0.elapsed().as_secs_f64(),
                        progress.started.load(Relaxed),
                        progress.ok.load(Relaxed),
                        progress.failed.load(Relaxed)
                    );
                }
            }
            eprintln!();
        });
        let o = open_loop(&load, &progress);
        done.store(true, Relaxed);
        o
    })?;
    let sum = Summary {
        target: a.target,
        rate: a.rate,
        connections: o.total,
        served: o.ok,
        success_rate: o.ok as f64 / o.total.max(1) as f64,
        syn_retransmitted: o.retrans,
        connect_ms: Quantiles::of(&o.connect),
        first_byte_ms: Quantiles::of(&o.first_byte),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sum)?);
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!("| target | connections | served | SYN retransmitted | connect p50 / p99 / p99.9 ms | first byte p50 / p99 / p99.9 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} ({:.2}%) | {} | {} / {} / {} | {} / {} / {} |",
            sum.target,
            sum.connections,
            sum.served,
            100.0 * sum.success_rate,
            sum.syn_retransmitted,
            ms(sum.connect_ms.p50),
            ms(sum.connect_ms.p99),
            ms(sum.connect_ms.p999),
            ms(sum.first_byte_ms.p50),
            ms(sum.first_byte_ms.p99),
            ms(sum.first_byte_ms.p999)
        );
    }
    Ok(())
}
