//! `ackgate-bench clients`: throughput of each client TCP profile through
//! ackgate, against the same client's direct rate, in the same run.
//!
//! The profiles are those of the client-matrix tests (Linux defaults, no
//! timestamps as Windows, no window scaling, no SACK, none of the three, an
//! advertised MSS of 536, a 9000-byte MTU link), set with sysctls and route
//! metrics in the client namespace of a fresh two-namespace lab each. Three
//! paths to one bulk-transfer server in the gateway, alternated run by run:
//!
//! * `ackgate`: XDP cookie handshake, TCP_REPAIR handoff, relay;
//! * `relay`: `ackgate --xdp-mode off` (a kernel listener's handshake, the
//!   same relay), so `ackgate / relay` is what the handoff itself costs;
//! * `direct`: the server's own port, no proxy.
//!
//! Client, proxy and server share the machine's cores, so the absolute rates
//! are bounded by the lab; the ratios are the figures.

use std::{
    net::{SocketAddr, TcpListener},
    sync::atomic::AtomicBool,
    time::Duration,
};

use ackgate_lab::{
    harness::Attached,
    profile::{Profile, PROFILES},
    servers::StopOnDrop,
    transfer, Lab, Process,
};
use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    lab::wait_listening,
    report::{self, Machine, Stat},
    Common,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// MiB per transfer.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Transfers per path, direction and family.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these profiles (repeatable; default: all).
    #[arg(long = "profile", value_name = "NAME")]
    profiles: Vec<String>,
}

const VIA_ACKGATE: u16 = 8080;
const VIA_RELAY: u16 = 8081;
const SERVER: u16 = 9000;

#[derive(Serialize)]
struct Row {
    profile: &'static str,
    family: &'static str,
    direction: &'static str,
    ackgate_mbit_s: Stat,
    relay_mbit_s: Stat,
    direct_mbit_s: Stat,
    /// Medians: ackgate / direct (the goal is at least 0.8).
    ratio_direct: f64,
    /// ackgate / relay: what the handoff costs beside the relay.
    ratio_relay: f64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    machine: Machine,
    mib: usize,
    runs: usize,
    rows: Vec<Row>,
}

fn ackgate(lab: &Lab, xdp: bool) -> Result<Process> {
    let bin = std::env::current_exe()?.with_file_name("ackgate");
    let port = if xdp { VIA_ACKGATE } else { VIA_RELAY };
    let (v4, v6) = (
        format!("{}:{port}", lab.vip4),
        format!("[{}]:{port}", lab.vip6),
    );
    let mut cmd = lab.gw.command(bin.to_str().context("binary path")?);
    cmd.args(["run", "--iface", lab.gw_if, "--stats-interval", "0"])
        .args(["--listen", &v4, "--listen", &v6])
        .args(["--backend", &format!("127.0.0.1:{SERVER}")])
        .args([
            "--metrics",
            if xdp {
                "127.0.0.1:9469"
            } else {
                "127.0.0.1:9470"
            },
        ]);
    if !xdp {
        cmd.args(["--xdp-mode", "off"]);
    }
    let name = if xdp {
        "ackgate"
    } else {
        "ackgate --xdp-mode off"
    };
    let mut p = Process::spawn(name, cmd)?;
    wait_listening(
        &lab.client,
        SocketAddr::new(lab.vip4.into(), port),
        name,
        &mut p,
    )?;
    Ok(p)
}

fn measure(lab: &Lab, p: &Profile, mib: usize, runs: usize) -> Result<Vec<Row>> {
    lab.shape_client(p)?;
    let stop = AtomicBool::new(false);
    let l = lab
        .gw
        .run(|| TcpListener::bind(format!("[::]:{SERVER}")))??;
    let data = transfer::pattern(mib << 20);
    std::thread::scope(|sc| -> Result<Vec<Row>> {
        sc.spawn(|| transfer::serve(l, &stop));
        let _stop = StopOnDrop(&stop);
        let _ag = ackgate(lab, true)?;
        let _relay = ackgate(lab, false)?;
        let mut rows = Vec::new();
        for (family, ip) in [("IPv4", lab.vip4.into()), ("IPv6", lab.vip6.into())] {
            let ip: std::net::IpAddr = ip;
            for direction in ["upload", "download"] {
                let mut rates: [Vec<f64>; 3] = Default::default();
                for _ in 0..runs {
                    for (i, port) in [VIA_ACKGATE, VIA_RELAY, SERVER].into_iter().enumerate() {
                        let target = SocketAddr::new(ip, port);
                        let t = lab.client.run(|| -> Result<transfer::Transfer> {
                            let s = transfer::connect(target, Duration::from_secs(120))?;
                            if direction == "upload" {
                                transfer::upload(s, &data)
                            } else {
                                transfer::download(s, data.len())
                            }
                        })??;
                        rates[i].push(t.mbit_per_s());
                    }
                }
                let [ag, relay, direct] = rates.map(Stat::of);
                rows.push(Row {
                    profile: p.name,
                    family,
                    direction,
                    ratio_direct: ag.median / direct.median,
                    ratio_relay: ag.median / relay.median,
                    ackgate_mbit_s: ag,
                    relay_mbit_s: relay,
                    direct_mbit_s: direct,
                });
            }
        }
        Ok(rows)
    })
}

pub fn run(a: Args) -> Result<()> {
    let mib = a.common.pick(4, a.mib.max(1));
    let runs = a.common.pick(1, a.runs.max(1));
    let mut rows = Vec::new();
    for p in PROFILES
        .iter()
        .filter(|p| a.profiles.is_empty() || a.profiles.iter().any(|n| n == p.name))
    {
        let lab = Lab::new()?;
        let _pass = lab.client.run(|| Attached::pass("cli0"))??;
        rows.extend(measure(&lab, p, mib, runs).with_context(|| p.name)?);
    }
    let machine = Machine::probe();
    let mut md = format!(
        "### Client profiles: throughput through ackgate vs the same client direct\n\n{} MiB per transfer, median of {runs} run(s) per path, paths alternated; {}.\n\
         `relay` is `ackgate --xdp-mode off` (kernel handshake, same relay): ackgate/relay is what the handoff costs.\n\n\
         | profile | family | direction | ackgate Mbit/s | relay Mbit/s | direct Mbit/s | ackgate/direct | ackgate/relay |\n|---|---|---|---|---|---|---|---|\n",
        mib,
        machine.line()
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
            r.profile,
            r.family,
            r.direction,
            r.ackgate_mbit_s.show(0),
            r.relay_mbit_s.show(0),
            r.direct_mbit_s.show(0),
            r.ratio_direct,
            r.ratio_relay
        ));
    }
    let rep = Report {
        benchmark: "clients",
        machine,
        mib,
        runs,
        rows,
    };
    report::write(&a.common.out, "clients", &rep, &md, &[])
}
