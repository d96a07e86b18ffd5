//! `ackgate`: command-line entry point.

use std::time::Duration;

use ackgate::{
    config::{FileConfig, RunArgs, RunConfig},
    metrics::{BuildInfo, XdpMetrics, XDP_POLL},
    responder::{AttachMode, Responder, Settings},
    secret::{current_epoch, Secret},
};
use anyhow::{bail, Context as _, Result};
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
    Stats(ackgate::stats::StatsArgs),
    /// Self-contained demo: builds a lab of network namespaces, runs ackgate
    /// in front of a small HTTP backend, sends real kernel clients, a
    /// spoofed SYN burst and forged ACKs through it, and prints what its
    /// metrics saw. Needs root; cleans up after itself.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Stats(a) => ackgate::stats::run(&a),
        Cmd::Demo => ackgate::demo::run(),
    };
    if let Err(e) = r {
        eprintln!("ackgate: {e:#}");
        std::process::exit(1);
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach XDP)");
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let c = RunConfig::resolve(&a, &file)?;
    init_logging(&c.log_level)?;
    if let Some(addr) = c.metrics {
        let mode = c.mode.map_or("off", |m| match m {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        });
        ackgate::metrics::install(addr, &BuildInfo::new(mode))?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let Some(mode) = c.mode else {
        return run_plain(c);
    };
    require_root()?;
    let secret = match &c.secret_file {
        Some(p) => Secret::from_file(p)?,
        None => Secret::random(),
    };
    if nix::net::if_::if_nametoindex(c.iface.as_str()).is_err() {
        bail!("no such interface: {}", c.iface);
    }
    let mut settings = Settings::for_mtu(ackgate::netdev::mtu(&c.iface)?);
    if let Some(m) = c.mss {
        settings.mss4 = m;
        settings.mss6 = m.saturating_sub(20).max(1220);
    }
    // Timestamp clients' cookies live exactly one epoch (the epoch bits
    // alone would allow one to two).
    settings.ts_max_age_ms = c.epoch_secs.saturating_mul(1000);
    if !c.backends.is_empty() {
        return run_proxy(c, mode, secret, settings);
    }
    // Block the stop signals before any thread exists; we take them
    // synchronously in the loop below.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.add(nix::sys::signal::Signal::SIGTERM);
    stop.thread_block().context("blocking signals")?;

    let mut r = Responder::load()?;
    for l in &c.listen {
        r.add_service(*l)?;
    }
    let mut epoch = current_epoch(c.epoch_secs);
    r.install_keys(&secret, epoch, &settings)?;
    r.attach(&c.iface, mode)?;
    let services: Vec<String> = c.listen.iter().map(|l| l.to_string()).collect();
    tracing::info!(
        "attached to {} ({mode} XDP); protecting {}; mss {}/{}; epoch {}s",
        c.iface,
        services.join(", "),
        settings.mss4,
        settings.mss6,
        c.epoch_secs
    );

    let xdp = XdpMetrics::new(&c.iface);
    let mut last_stats = std::time::Instant::now();
    let mut last_poll = std::time::Instant::now();
    loop {
        if let Some(sig) = wait_signal(&stop, Duration::from_millis(100))? {
            tracing::info!("{sig}, detaching");
            break;
        }
        r.tick_clock()?;
        let now = current_epoch(c.epoch_secs);
        if now != epoch {
            epoch = now;
            r.install_keys(&secret, epoch, &settings)?;
            tracing::debug!(epoch, "cookie keys rotated");
        }
        if last_poll.elapsed() >= XDP_POLL {
            last_poll = std::time::Instant::now();
            xdp.publish(&r.counters()?);
        }
        if let Some(every) = c.stats_interval {
            if last_stats.elapsed() >= every {
                last_stats = std::time::Instant::now();
                tracing::info!("counters: {}", r.counters()?);
            }
        }
    }
    tracing::info!("counters: {}", r.counters()?);
    drop(r);
    Ok(())
}

/// With backends: the proxy on a tokio runtime.
fn run_proxy(c: RunConfig, mode: AttachMode, secret: Secret, settings: Settings) -> Result<()> {
    let opener = ackgate::handoff::WindowOpener::new()?;
    allow_time_wait_reuse()?;
    let mut r = Responder::load()?;
    for l in &c.listen {
        if c.server_first.contains(l) {
            r.add_server_first_service(*l)?;
        } else {
            r.add_service(*l)?;
        }
    }
    r.install_keys(&secret, current_epoch(c.epoch_secs), &settings)?;
    // ACKs are ours from the first packet: events wait in the ring until the
    // consumer starts, rather than reaching the kernel and being reset.
    r.set_handoff(true)?;
    r.attach(&c.iface, mode)?;
    let services: Vec<String> = c.listen.iter().map(|l| l.to_string()).collect();
    let backends: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
    tracing::info!(
        "attached to {} ({mode} XDP); proxying {} to {}; proxy protocol {:?}",
        c.iface,
        services.join(", "),
        backends.join(", "),
        c.proxy_protocol
    );
    if !c.server_first.is_empty() {
        let s: Vec<String> = c.server_first.iter().map(|l| l.to_string()).collect();
        tracing::info!("server first (SYN-ACKs retransmitted): {}", s.join(", "));
    }
    let cfg = proxy_config(&c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ackgate::serve::serve(r, secret, settings, cfg, opener))
}

/// A client may reuse its source port while our side of its previous
/// connection is in TIME_WAIT (we close first when the backend does). The
/// kernel lets a listener take such a SYN; for a handed-off flow, the
/// repair-mode connect may replace the time-wait socket only with
/// `tcp_tw_reuse=1` (the default, 2, allows it on loopback alone).
fn allow_time_wait_reuse() -> Result<()> {
    const P: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
    let now = std::fs::read_to_string(P).with_context(|| format!("reading {P}"))?;
    if now.trim() != "1" {
        std::fs::write(P, "1").with_context(|| format!("setting {P} to 1"))?;
        tracing::info!(
            "net.ipv4.tcp_tw_reuse {} -> 1 (handed-off flows may replace time-wait sockets)",
            now.trim()
        );
    }
    Ok(())
}

/// `--xdp-mode off`: plain listeners (kernel SYN cookies), the same proxy.
fn run_plain(c: RunConfig) -> Result<()> {
    let cfg = proxy_config(&c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ackgate::serve::serve_plain(c.listen, cfg))
}

fn proxy_config(c: &RunConfig) -> ackgate::serve::ProxyConfig {
    ackgate::serve::ProxyConfig {
        backends: c.backends.clone(),
        proxy_protocol: c.proxy_protocol,
        connect_timeout: c.connect_timeout,
        backend_backoff: c.backend_backoff,
        idle_timeout: c.idle_timeout,
        max_connections: c.max_connections,
        grace: c.grace,
        stats_interval: c.stats_interval,
        epoch_secs: c.epoch_secs,
        server_first: c.server_first.clone(),
    }
}

/// Logs go to stderr (journald takes them under systemd): ACKGATE_LOG if
/// set, else the configured level. A bare level applies to ackgate's own
/// logs; libraries (aya's loader is chatty at debug) stay at warn.
fn init_logging(level: &str) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let directive = |l: &str| {
        if ["error", "warn", "info", "debug", "trace"].contains(&l.to_ascii_lowercase().as_str()) {
            format!("warn,ackgate={l}")
        } else {
            l.to_string()
        }
    };
    let filter = match std::env::var("ACKGATE_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(directive(&v)).with_context(|| format!("ACKGATE_LOG='{v}'"))?
        }
        _ => {
            EnvFilter::try_new(directive(level)).with_context(|| format!("log level '{level}'"))?
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

/// Waits up to `timeout` for one of `set`'s (blocked) signals.
fn wait_signal(
    set: &nix::sys::signal::SigSet,
    timeout: Duration,
) -> Result<Option<nix::sys::signal::Signal>> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    // SAFETY: valid sigset and timespec; a null siginfo is allowed.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e).context("sigtimedwait"),
        };
    }
    Ok(nix::sys::signal::Signal::try_from(r).ok())
}
