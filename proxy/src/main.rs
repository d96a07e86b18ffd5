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
    /// Validate a config file (syntax, values, how keys combine) without
    /// touching a running instance, as `nginx -t` and `haproxy -c` do.
    /// Exits 0 and says what the file describes, or 1 with the error. The
    /// interface and the secret file are checked when `run` starts.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The TOML file to check.
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Stats(a) => stats::run(&a),
        Cmd::Check(a) => check(&a),
    };
    if let Err(e) = r {
        eprintln!("ackgate: {e:#}");
        std::process::exit(1);
    }
}

fn check(a: &CheckArgs) -> Result<()> {
    let plan = Plan::from_args(&RunArgs {
        config: Some(a.config.clone()),
        ..Default::default()
    })?;
    let mode = plan.mode.map_or("off", |m| m.name());
    let what = if plan.syn_only {
        "SYN-only".to_string()
    } else {
        format!("{} backends", plan.backends.len())
    };
    println!(
        "{}: ok: {} protected services on {} ({mode} XDP), {what}",
        a.config.display(),
        plan.listen.len(),
        plan.iface
    );
    Ok(())
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
