//! Commands that act on a configuration file or a running instance:
//! `ackgate check` (as `nginx -t`) and `ackgate reload` (SIGHUP, with the
//! file checked first and, given the metrics endpoint, the verdict waited
//! for).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    config::{Plan, RunArgs},
    telemetry::{metrics::CONFIG_RELOADS, stats},
};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The TOML file to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("instance").required(true).args(["pid", "pid_file"])))]
pub struct ReloadArgs {
    /// The running instance's process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// The pid file the instance writes (`--pid-file`, `pid_file`).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Check this file first (the one the instance reads); if it is
    /// invalid, nothing is sent and the error is printed.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The instance's metrics endpoint: wait for its verdict and exit 1 if
    /// it refused the new configuration (its log says why).
    #[arg(long, value_name = "ADDR:PORT", value_parser = crate::config::parse_metrics)]
    pub metrics: Option<SocketAddr>,
    /// How long to wait for the verdict, seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

/// Validates a file and says what it describes.
pub fn check(a: &CheckArgs) -> Result<()> {
    let plan = Plan::from_args(&RunArgs {
        config: Some(a.config.clone()),
        ..Default::default()
    })?;
    let mode = plan.mode.map_or("off", |m| m.name());
    println!(
        "{}: ok: {} services, {} protected ADDR:PORTs on {} ({mode} XDP){}",
        a.config.display(),
        plan.services.len(),
        plan.protected().len(),
        plan.interfaces.join(", "),
        if plan.syn_only { ", SYN-only" } else { "" }
    );
    for s in &plan.services {
        let backends: Vec<String> = s
            .backends
            .iter()
            .map(|b| match b.weight {
                1 => b.addr.to_string(),
                w => format!("{} (weight {w})", b.addr),
            })
            .collect();
        let listen: Vec<String> = s.listen.iter().map(|l| l.to_string()).collect();
        println!(
            "  service {}: {} -> {}",
            s.name,
            listen.join(", "),
            if backends.is_empty() {
                "(SYN-only)".to_string()
            } else {
                backends.join(", ")
            }
        );
    }
    Ok(())
}

/// Asks a running instance to reload its configuration.
pub fn reload(a: &ReloadArgs) -> Result<()> {
    if let Some(f) = &a.config {
        check(&CheckArgs { config: f.clone() })
            .with_context(|| format!("{} is invalid: nothing was sent", f.display()))?;
    }
    let pid = match (a.pid, &a.pid_file) {
        (Some(p), _) => p,
        (None, Some(f)) => read_pid(f)?,
        (None, None) => unreachable!("clap requires --pid or --pid-file"),
    };
    // A stale pid file must not signal some other process.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("no process {pid}"))?;
    if comm.trim() != "ackgate" {
        bail!(
            "process {pid} is {}, not ackgate (stale pid file?)",
            comm.trim()
        );
    }
    let before = match a.metrics {
        Some(m) => Some(reloads(m)?),
        None => None,
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("sending SIGHUP to {pid}"))?;
    let (Some(m), Some((ok0, failed0))) = (a.metrics, before) else {
        println!(
            "sent SIGHUP to ackgate {pid}; its log says whether the configuration was applied"
        );
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    loop {
        let (ok, failed) = reloads(m)?;
        if failed > failed0 {
            bail!("ackgate {pid} refused the new configuration and keeps the old one; its log says why");
        }
        if ok > ok0 {
            println!("ackgate {pid} reloaded its configuration");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("ackgate {pid} gave no verdict within {}s", a.timeout_secs);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_pid(f: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(f).with_context(|| format!("reading pid file {}", f.display()))?;
    text.trim().parse().with_context(|| {
        format!(
            "pid file {}: '{}' is not a process id",
            f.display(),
            text.trim()
        )
    })
}

/// (ok, failed) reloads so far, from the metrics endpoint.
fn reloads(m: SocketAddr) -> Result<(f64, f64)> {
    let s = stats::scrape(m)?;
    let get = |r: &str| {
        s.iter()
            .filter(|x| {
                x.name == CONFIG_RELOADS && x.labels.iter().any(|(k, v)| k == "result" && v == r)
            })
            .map(|x| x.value)
            .sum()
    };
    Ok((get("ok"), get("failed")))
}
