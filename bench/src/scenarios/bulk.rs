//! `bulk`: relay throughput through ackgate, HAProxy and direct, one large
//! download from nginx's sendfile at a time, and the CPU each GB costs.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use ackgate_lab::Netns;
use anyhow::{ensure, Result};
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
    /// MiB per download.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    mib: u64,
    gbit_per_s: Vec<RateRow>,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a.common.pick(1, a.runs.max(1));
    let mib = a.common.pick(64, a.mib.max(1));
    let bytes = mib << 20;
    let sc = Scenario::new("bulk", &a.common, bytes)?;
    let rows = side_by_side(&sc.lab, runs, &RELAYS, |t| {
        let (secs, cpu) = cpu_during(|| download(&sc.lab.cli, t.addr, bytes))?;
        let gbit = bytes as f64 * 8.0 / secs / 1e9;
        eprintln!("bulk {:10} {gbit:6.2} Gbit/s", t.target.label());
        Ok(Sample {
            value: gbit,
            // CPU seconds (all cores) per GB moved.
            cpu_per_unit: cpu.busy_s / (bytes as f64 / 1e9),
            failed: 0,
        })
    })?;
    let rep = Report {
        head: sc.header(runs),
        mib,
        gbit_per_s: rows,
    };
    let mut md = sc.heading(&rep.head, "Relay throughput");
    md.push_str(&format!(
        ": one download of {} MiB from nginx (sendfile) per measurement, targets in turn, {} round(s); median (min-max). CPU is all cores (client, proxy and nginx share them).\n\n| target | Gbit/s | CPU s per GB |\n|---|---:|---:|\n",
        mib,
        runs
    ));
    for r in &rep.gbit_per_s {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            r.target.label(),
            r.value.show(2),
            r.cpu_per_unit.show(2)
        ));
    }
    ratios(&mut md, &rep.gbit_per_s, "the throughput");
    let svg = super::bars(
        "Relay throughput, Gbit/s (median, min-max)",
        "Gbit/s",
        rep.gbit_per_s.iter().map(|r| (r.target, &r.value)),
    );
    sc.write(&rep, &md, &[("bulk.svg".into(), svg)])
}

/// One download of `/bulk` through `target`; returns seconds.
pub(super) fn download(cli: &Netns, target: SocketAddr, bytes: u64) -> Result<f64> {
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
