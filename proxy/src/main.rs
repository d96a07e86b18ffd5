//! `ackgate`: command-line entry point.

use ackgate::{
    config::{Plan, RunArgs},
    telemetry::{logging, metrics, stats},
};
use anyhow::Result;
use clap::{Parser, Subcommand};

/// Handshake-offloading SYN proxy: an XDP program answers every SYN to a
/// protected service with a SipHash SYN cookie, so a SYN flood costs one
/// XDP_TX per packet and no kernel state; with backends, only connections
/// whose ACK carries a valid cookie reach userspace and are proxied.
#[derive(Parser)]
#[command(name = "ackgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // built once, at startup
enum Cmd {
    /// Attach the XDP SYN-cookie responder to an interface (and, with
    /// backends, proxy verified connections) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Live view of a running ackgate (rates per second, latency
    /// percentiles, backend health) from its metrics endpoint. One snapshot
    /// when stdout is not a terminal; `--json` for machines.
    Stats(stats::StatsArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Stats(a) => stats::run(&a),
    };
    if let Err(e) = r {
        eprintln!("ackgate: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: RunArgs) -> Result<()> {
    let plan = Plan::from_args(&a)?;
    logging::init(&plan.log_level)?;
    if let Some(addr) = plan.metrics {
        let mode = plan.mode.map_or("off", |m| m.name());
        metrics::install(addr, &metrics::BuildInfo::new(mode))?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    ackgate::engine::run(plan)
}
