//! `relay`: ways of moving bytes between the client's and the backend's
//! sockets, on the same downloads and exchanges: through a userspace
//! buffer, splice(2) through a pipe (ackgate's relay), io_uring splice, and
//! multishot receives into a provided buffer ring. Each runs in the bench's
//! bare relay (`ackgate-relay-path`, one thread per connection, so only the
//! data path differs), beside ackgate itself and a direct connection.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use ackgate_lab::Netns;
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;

use super::{bulk::download, cpu_during, side_by_side, RateRow, Sample, Scenario};
use crate::{
    lab::{RelayPath, Target},
    report::{Header, Stat},
    Common,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Rounds; each measures every target once, in turn.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// MiB per download.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Request/response exchanges per measurement, on one kept-alive
    /// connection.
    #[arg(long, default_value_t = 20_000)]
    exchanges: usize,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    mib: u64,
    exchanges: usize,
    gbit_per_s: Vec<RateRow>,
    /// Small HTTP exchanges per second on [`CONNS`] connections; CPU per
    /// exchange in microseconds.
    exchanges_per_s: Vec<RateRow>,
    /// The median round trip of those exchanges, microseconds.
    exchange_rtt_us: Vec<(Target, Stat)>,
}

/// The targets: ackgate, the bare relay's paths, direct.
fn targets() -> Vec<Target> {
    let mut t = vec![Target::Ackgate];
    t.extend(RelayPath::ALL.map(Target::RelayPath));
    t.push(Target::Direct);
    t
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let mib = a.common.pick(64, a.mib.max(1));
    let exchanges = a.common.pick(500, a.exchanges.max(1));
    let bytes = mib << 20;
    let sc = Scenario::new("relay", &a.common, bytes)?;
    let targets = targets();
    let bulk = side_by_side(&sc.lab, runs, &targets, |t| {
        let (secs, cpu) = cpu_during(|| download(&sc.lab.cli, t.addr, bytes))?;
        let gbit = bytes as f64 * 8.0 / secs / 1e9;
        eprintln!("relay bulk {:36} {gbit:6.2} Gbit/s", t.target.label());
        Ok(Sample {
            value: gbit,
            cpu_per_unit: cpu.busy_s / (bytes as f64 / 1e9),
            failed: 0,
        })
    })?;
    let mut rtt = Vec::new();
    let small = side_by_side(&sc.lab, runs, &targets, |t| {
        let ((rate, median_us), cpu) = cpu_during(|| {
            exchange(&sc.lab.cli, t.addr, exchanges)
                .with_context(|| format!("exchanges through {}", t.target.label()))
        })?;
        eprintln!(
            "relay exchange {:32} {rate:8.0}/s, median {median_us:6.1} us",
            t.target.label()
        );
        rtt.push((t.target, median_us));
        Ok(Sample {
            value: rate,
            cpu_per_unit: cpu.busy_s * 1e6 / exchanges as f64,
            failed: 0,
        })
    })?;
    let exchange_rtt_us = targets
        .iter()
        .map(|&t| {
            let v = rtt.iter().filter(|r| r.0 == t).map(|r| r.1).collect();
            (t, Stat::of(v))
        })
        .collect::<Vec<_>>();
    let rep = Report {
        head: sc.header(runs),
        mib,
        exchanges,
        gbit_per_s: bulk,
        exchanges_per_s: small,
        exchange_rtt_us,
    };
    let mut md = sc.heading(&rep.head, "Relay data paths");
    md.push_str(&format!(
        ": the bare relay (`ackgate-relay-path`: accept, connect, one thread per connection) with each data path, beside ackgate (io_uring engine) and direct; {runs} round(s), targets in turn, median (min-max). Bulk: one download of {mib} MiB from nginx (sendfile). Exchanges: {exchanges} HTTP/1.1 requests for a 2-byte body on {CONNS} kept-alive connections, each one request at a time. CPU is the whole machine's (client, relay and nginx share both cores).\n\n| target | bulk Gbit/s | CPU s per GB | exchanges/s | CPU us per exchange | exchange round trip, us |\n|---|---:|---:|---:|---:|---:|\n"
    ));
    for ((b, s), (_, rtt)) in rep
        .gbit_per_s
        .iter()
        .zip(&rep.exchanges_per_s)
        .zip(&rep.exchange_rtt_us)
    {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            b.target.label(),
            b.value.show(2),
            b.cpu_per_unit.show(2),
            s.value.show(0),
            s.cpu_per_unit.show(1),
            rtt.show(1)
        ));
    }
    // Every path against ackgate's own (splice(2) through a pipe).
    let base = Target::RelayPath(RelayPath::Splice);
    let at =
        |rows: &[RateRow], t: Target| rows.iter().find(|r| r.target == t).map(|r| r.value.median);
    let at_cpu = |rows: &[RateRow], t: Target| {
        rows.iter()
            .find(|r| r.target == t)
            .map(|r| r.cpu_per_unit.median)
    };
    md.push('\n');
    for p in RelayPath::ALL
        .map(Target::RelayPath)
        .into_iter()
        .filter(|&t| t != base)
    {
        let (Some(g), Some(g0)) = (at(&rep.gbit_per_s, p), at(&rep.gbit_per_s, base)) else {
            continue;
        };
        let (c, c0) = (
            at_cpu(&rep.gbit_per_s, p).unwrap_or(0.0),
            at_cpu(&rep.gbit_per_s, base).unwrap_or(0.0),
        );
        let (x, x0) = (
            at(&rep.exchanges_per_s, p).unwrap_or(0.0),
            at(&rep.exchanges_per_s, base).unwrap_or(0.0),
        );
        let (xc, xc0) = (
            at_cpu(&rep.exchanges_per_s, p).unwrap_or(0.0),
            at_cpu(&rep.exchanges_per_s, base).unwrap_or(0.0),
        );
        md.push_str(&format!(
            "\n{} against splice(2): {:.2}x the throughput at {:.2}x the CPU per GB; {:.2}x the exchanges per second at {:.2}x the CPU per exchange.",
            p.label(),
            g / g0.max(1e-9),
            c / c0.max(1e-9),
            x / x0.max(1e-9),
            xc / xc0.max(1e-9)
        ));
    }
    md.push('\n');
    let svg = super::bars(
        "Relay data paths: bulk Gbit/s (median, min-max)",
        "Gbit/s",
        rep.gbit_per_s.iter().map(|r| (r.target, &r.value)),
    );
    sc.write(&rep, &md, &[("relay.svg".into(), svg)])
}

/// Kept-alive connections the exchanges run on, side by side.
const CONNS: usize = 8;

/// `n` small HTTP/1.1 exchanges on [`CONNS`] kept-alive connections to
/// `target`, each connection one exchange at a time: exchanges per second
/// and the median round trip in microseconds.
fn exchange(cli: &Netns, target: SocketAddr, n: usize) -> Result<(f64, f64)> {
    cli.run(move || -> Result<(f64, f64)> {
        let per = n.div_ceil(CONNS);
        let t0 = Instant::now();
        // Threads made here share this thread's namespace.
        let rtts = std::thread::scope(|s| {
            let hs: Vec<_> = (0..CONNS)
                .map(|_| s.spawn(move || exchanges(target, per)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("exchange thread panicked"))
                .collect::<Result<Vec<_>>>()
        })?;
        let secs = t0.elapsed().as_secs_f64();
        let mut rtt: Vec<f64> = rtts.into_iter().flatten().collect();
        rtt.sort_by(f64::total_cmp);
        Ok((rtt.len() as f64 / secs, rtt[rtt.len() / 2]))
    })?
}

/// One connection's `n` exchanges: their round trips in microseconds.
fn exchanges(target: SocketAddr, n: usize) -> Result<Vec<f64>> {
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut buf = [0u8; 4096];
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        s.write_all(req)?;
        let mut got = 0;
        while !complete(&buf[..got]) {
            ensure!(got < buf.len(), "response over {} bytes", buf.len());
            let k = s.read(&mut buf[got..]).with_context(|| {
                format!("exchange {i} of {n}: no complete response after {got} bytes")
            })?;
            ensure!(k > 0, "connection closed after {i} of {n} exchanges");
            got += k;
        }
        rtt.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtt)
}

/// Whether `b` holds a whole response: headers and Content-Length bytes.
fn complete(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    b.len() >= end + 4 + len
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn a_response_is_complete_with_its_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(complete(r));
        assert!(!complete(&r[..r.len() - 1]));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Len"));
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }
}
