//! `ackgate`: command-line entry point.

use ackgate::{
    config::{Plan, RunArgs},
    control,
    telemetry::{logging, stats},
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
    Check(control::CheckArgs),
    /// Apply a changed config file to a running instance without dropping
    /// a connection: sends it SIGHUP (as `systemctl reload ackgate` does).
    /// Services, backends, weights, limits and access lists change for new
    /// flows; interfaces, the XDP mode, the secret, the epoch, the MSS and
    /// the metrics address need a restart or an upgrade. An invalid file is
    /// refused and the running configuration stays.
    Reload(control::ReloadArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Stats(a) => stats::run(&a),
        Cmd::Check(a) => control::check(&a),
        Cmd::Reload(a) => control::reload(&a),
    };
    if let Err(e) = r {
        eprintln!("ackgate: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: RunArgs) -> Result<()> {
    let plan = Plan::from_args(&a)?;
    logging::init(&plan.log_level)?;
    ackgate::engine::run(plan, a)
}
