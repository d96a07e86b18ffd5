//! `ackgate-bench`: ackgate's benchmarks. Numbers come from repeated runs in
//! one invocation and are reported as medians with their spread.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod clients;
mod flood;
mod handoff;
mod index;
mod lab;
mod loadtest;
mod report;
mod scenarios;
mod xdp;

#[derive(Parser)]
#[command(
    name = "ackgate-bench",
    version,
    about = "Benchmarks for ackgate (run as root): each scenario builds its own namespace lab, runs ackgate beside the baselines, and writes JSON, Markdown and SVG reports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SYN-ACKs answered per second on one core and softirq CPU per SYN:
    /// ackgate vs kernel SYN cookies vs nftables synproxy, under a flood
    /// from the attacker namespace (plus the generator's own ceiling).
    Syn(scenarios::syn::Args),
    /// Legitimate open-loop clients under SYN floods of rising rate: success,
    /// connect and first-byte latency percentiles, SYN retransmissions;
    /// ackgate vs kernel SYN cookies vs nftables synproxy.
    Attack(scenarios::attack::Args),
    /// Connections per second through ackgate vs HAProxy vs direct.
    Conn(scenarios::conn::Args),
    /// Relay throughput and CPU per GB through ackgate vs HAProxy vs direct.
    Bulk(scenarios::bulk::Args),
    /// Ways of moving relayed bytes, on the same downloads and small
    /// exchanges: read/write, splice(2), io_uring splice, multishot
    /// receives into a provided buffer ring (in a bare relay), beside
    /// ackgate and direct.
    Relay(scenarios::relay::Args),
    /// Minutes of mixed client profiles (short, keep-alive, downloads,
    /// idle, half-closed, idle-timed-out, reset) through ackgate under a
    /// SYN flood: descriptors, memory and threads back to their baseline,
    /// no connection left active, every relayed byte accounted for; fails
    /// if not.
    Soak(scenarios::soak::Args),
    /// Per-packet cost of the XDP SYN, verified-ACK, forged-ACK and pass
    /// paths from BPF_PROG_TEST_RUN, against an XDP_DROP program measured
    /// the same way.
    Xdp(xdp::Args),
    /// Connect-to-first-byte through ackgate vs direct (median, p99), and
    /// the rate of completed connections, in a namespace lab.
    Handoff(handoff::Args),
    /// Throughput of each client TCP profile (no timestamps, no window
    /// scaling, no SACK, MSS 536, jumbo MTU...) through ackgate, as a ratio
    /// of the same client's direct rate and of the plain relay's.
    Clients(clients::Args),
    /// Load-test your own defences: spoofed SYNs at a target you name, from
    /// an interface of this network namespace, at a rate, bounded in time
    /// and packets (both required); counts the SYN-ACKs seen coming back.
    Flood(loadtest::flood::Args),
    /// Load-test your own defences: an open-loop legitimate client (a new
    /// connection on schedule, timed from it) against a target you name;
    /// success, SYN retransmissions, connect and first-byte percentiles.
    Probe(loadtest::probe::Args),
    /// One page over every report in a directory (index.md and index.json:
    /// run, machine, tables, charts) with the headline table the README
    /// quotes, computed from the reports.
    Index(index::Args),
    /// Every scenario in turn, then the index: the one command that
    /// regenerates bench/results.
    All(index::AllArgs),
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// Fewer, shorter runs (CI smoke test).
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON and Markdown reports.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// An extra argument for every ackgate the scenario starts (repeat for
    /// several), e.g. `--ackgate-arg=--threads=1`; the report records them.
    #[arg(long = "ackgate-arg", value_name = "ARG", allow_hyphen_values = true)]
    ackgate_args: Vec<String>,
    /// Measure the baselines (HAProxy, direct) with an XDP_PASS program on
    /// the proxy's outside interface, so they pay the lab's cost of XDP on
    /// veth (NAPI queueing, copies, no GSO from the peer) as ackgate does.
    #[arg(long)]
    xdp_pass_baselines: bool,
}

impl Common {
    /// `quick` under `--quick`, else `full`.
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = lab::cleanup_on_signal() {
        eprintln!("ackgate-bench: {e:#}");
        std::process::exit(1);
    }
    let r: Result<()> = match cli.cmd {
        Cmd::Syn(a) => scenarios::syn::run(a),
        Cmd::Attack(a) => scenarios::attack::run(a),
        Cmd::Conn(a) => scenarios::conn::run(a),
        Cmd::Bulk(a) => scenarios::bulk::run(a),
        Cmd::Relay(a) => scenarios::relay::run(a),
        Cmd::Soak(a) => scenarios::soak::run(a),
        Cmd::Xdp(a) => xdp::run(a),
        Cmd::Handoff(a) => handoff::run(a),
        Cmd::Clients(a) => clients::run(a),
        Cmd::Flood(a) => loadtest::flood::run(a),
        Cmd::Probe(a) => loadtest::probe::run(a),
        Cmd::Index(a) => index::run(a),
        Cmd::All(a) => index::all(a),
    };
    if let Err(e) = r {
        eprintln!("ackgate-bench: {e:#}");
        std::process::exit(1);
    }
}
