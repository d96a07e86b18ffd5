//! `ackgate-bench`: ackgate's benchmarks. Numbers come from repeated runs in
//! one invocation and are reported as medians with their spread.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod handoff;
mod xdp;

#[derive(Parser)]
#[command(
    name = "ackgate-bench",
    version,
    about = "Benchmarks for ackgate (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-packet cost of the XDP SYN path from BPF_PROG_TEST_RUN (live
    /// frames, so every run answers a fresh SYN), against an XDP_DROP
    /// program measured the same way.
    Xdp(xdp::Args),
    /// Connect-to-first-byte through ackgate vs direct (median, p99), and
    /// the rate of completed connections, in a namespace lab.
    Handoff(handoff::Args),
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// Fewer, shorter runs (CI smoke test).
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON and Markdown reports.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let r: Result<()> = match cli.cmd {
        Cmd::Xdp(a) => xdp::run(a),
        Cmd::Handoff(a) => handoff::run(a),
    };
    if let Err(e) = r {
        eprintln!("ackgate-bench: {e:#}");
        std::process::exit(1);
    }
}
