//! `conn`: connections per second through ackgate, HAProxy and direct,
//! from closed-loop clients that connect, fetch a page and close: the
//! bench's own client, and wrk with `Connection: close` (an independent
//! load generator, one new connection per request).

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::Netns;
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;

use super::{cpu_during, ratios, side_by_side, RateRow, Sample, Scenario, RELAYS};
use crate::{report::Header, Common};

#[derive(clap::Args)]
pub struct Args {
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
struct Report {
    #[serde(flatten)]
    head: Header,
    clients: usize,
    seconds: f64,
    connections_per_s: Vec<RateRow>,
    /// wrk's requests per second, each on a new connection.
    wrk_per_s: Vec<RateRow>,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let secs = a.common.pick(1.0, a.seconds);
    let sc = Scenario::new("conn", &a.common, 1)?;
    type Client = fn(&Netns, SocketAddr, usize, f64) -> Result<(f64, u64)>;
    // Each client in its own rounds: connections per second and CPU
    // microseconds (all cores) per connection.
    let measure = |name: &str, client: Client| {
        side_by_side(&sc.lab, runs, &RELAYS, |t| {
            let ((rate, failed), cpu) =
                cpu_during(|| client(&sc.lab.cli, t.addr, a.clients, secs))?;
            eprintln!(
                "{name:4} {:10} {:>8.0} connections/s ({failed} failed)",
                t.target.label(),
                rate
            );
            Ok(Sample {
                value: rate,
                cpu_per_unit: cpu.busy_s * 1e6 / (rate * secs).max(1.0),
                failed,
            })
        })
    };
    let rows = measure("conn", conn_rate)?;
    let wrk_rows = measure("wrk", wrk)?;
    let rep = Report {
        head: sc.header(runs),
        clients: a.clients,
        seconds: secs,
        connections_per_s: rows,
        wrk_per_s: wrk_rows,
    };
    let mut md = sc.heading(&rep.head, "Connections per second");
    md.push_str(&format!(
        ": {} closed-loop clients connect, fetch a 2-byte page from nginx and close, {} s per measurement, targets in turn, {} round(s); median (min-max). CPU is all cores (client, proxy and nginx share them).\n\n| target | connections/s | CPU us per connection | failed (all runs) |\n|---|---:|---:|---:|\n",
        a.clients,
        secs,
        runs
    ));
    rows_md(&mut md, &rep.connections_per_s);
    ratios(&mut md, &rep.connections_per_s, "the connection rate");
    md.push_str(&format!(
        "\nThe same with wrk (`wrk -t2 -c{} -d{}s -H 'Connection: close'`, a new connection per request), targets in turn:\n\n| target | connections/s | CPU us per connection | socket errors (all runs) |\n|---|---:|---:|---:|\n",
        a.clients, secs
    ));
    rows_md(&mut md, &rep.wrk_per_s);
    ratios(&mut md, &rep.wrk_per_s, "wrk's connection rate");
    let svg = super::bars(
        "Connections per second (median, min-max)",
        "conn/s",
        rep.connections_per_s.iter().map(|r| (r.target, &r.value)),
    );
    sc.write(&rep, &md, &[("conn.svg".into(), svg)])
}

/// Closed loop: `clients` threads connect, fetch `/`, close, for `secs`.
/// Returns connections per second and how many failed.
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

/// wrk against `target` from the client namespace for `secs` with
/// `clients` connections, each request on a new one: requests per second
/// and socket errors.
fn wrk(cli: &Netns, target: SocketAddr, clients: usize, secs: f64) -> Result<(f64, u64)> {
    let url = format!("http://{target}/");
    let out = cli
        .command("wrk")
        .args(["-t2", "-c", &clients.to_string()])
        .args(["-d", &format!("{}s", secs.ceil().max(1.0))])
        .args(["-H", "Connection: close", &url])
        .output()
        .context("running wrk (Debian's wrk package)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |l| {
            l.split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        });
    Ok((rate, errors))
}

/// A table row per target: connections/s, CPU per connection, failures.
fn rows_md(md: &mut String, rows: &[RateRow]) {
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.target.label(),
            r.value.show(0),
            r.cpu_per_unit.show(1),
            r.failed
        ));
    }
}
