//! `ackgate`: command-line entry point.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ackgate::{
    lab,
    responder::{AttachMode, Responder, Settings},
    secret::{current_epoch, Secret},
};
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Handshake-offloading SYN proxy: an XDP program answers every SYN to a
/// protected service with a SipHash SYN cookie, so a SYN flood costs one
/// XDP_TX per packet and no kernel state.
#[derive(Parser)]
#[command(name = "ackgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the XDP SYN-cookie responder to an interface and keep its keys
    /// rotating until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Self-contained demo: builds a two-namespace lab, attaches ackgate,
    /// connects real kernel clients over IPv4 and IPv6 and verifies the
    /// cookies they received. Needs root; cleans up after itself.
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Driver (native) XDP: fastest; the interface must support it.
    Native,
    /// Generic XDP in the network stack: works on any interface, slower.
    Skb,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interface that receives the protected traffic.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// Protected service, ADDR:PORT; IPv6 in brackets ([2001:db8::1]:443).
    /// Repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true, value_parser = parse_listen)]
    listen: Vec<SocketAddr>,
    /// File with the 128-bit master secret as 32 hex digits (mode 600).
    /// Instances sharing it accept each other's cookies. Random if omitted.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// XDP attach mode. There is no silent fallback from native to skb.
    #[arg(long, value_enum, default_value = "native")]
    xdp_mode: XdpModeArg,
    /// Cookie epoch length in seconds; cookies are valid for 1-2 epochs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    epoch_secs: u32,
    /// MSS clamp for IPv4 SYN-ACKs (IPv6 gets 20 less). Default: MTU - 40.
    #[arg(long, value_parser = clap::value_parser!(u16).range(536..=65_495))]
    mss: Option<u16>,
    /// Print counters every N seconds (0: only at exit).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
    /// Backend ADDR:PORT to proxy verified connections to; repeat for
    /// round-robin. With backends, ackgate verifies ACKs in XDP and owns the
    /// connections; without, it only answers SYNs.
    #[arg(long = "backend", value_name = "ADDR:PORT", value_parser = parse_backend)]
    backends: Vec<SocketAddr>,
    /// PROXY protocol header sent to backends, so they see the client.
    #[arg(long, value_enum, default_value = "off")]
    proxy_protocol: ackgate::proxyproto::Mode,
    /// Most concurrent proxied connections; beyond it clients get a RST.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Backend connect timeout, milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    connect_timeout_ms: u64,
    /// How long a refusing backend is skipped, seconds.
    #[arg(long, default_value_t = 5)]
    backend_backoff_secs: u64,
    /// Close a relay after this many seconds without traffic either way.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long running relays may finish.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
}

fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT (IPv6 addresses go in brackets: [::1]:8080)")
    })?;
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(format!(
            "'{s}': give the backend's address and a port 1-65535"
        ));
    }
    Ok(a)
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT (IPv6 addresses go in brackets: [::1]:443)")
    })?;
    if a.port() == 0 {
        return Err(format!("'{s}': port must be 1-65535"));
    }
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!(
            "'{s}': give a unicast address the clients connect to"
        ));
    }
    Ok(a)
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
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
    require_root()?;
    let secret = match &a.secret_file {
        Some(p) => Secret::from_file(p)?,
        None => Secret::random(),
    };
    if nix::net::if_::if_nametoindex(a.iface.as_str()).is_err() {
        bail!("no such interface: {}", a.iface);
    }
    let mut settings = Settings::for_mtu(lab::mtu(&a.iface)?);
    if let Some(m) = a.mss {
        settings.mss4 = m;
        settings.mss6 = m.saturating_sub(20).max(1220);
    }
    let mode = match a.xdp_mode {
        XdpModeArg::Native => AttachMode::Native,
        XdpModeArg::Skb => AttachMode::Skb,
    };

    if !a.backends.is_empty() {
        return run_proxy(a, secret, settings, mode);
    }
    // Block the stop signals before any thread exists; we take them
    // synchronously in the loop below.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.add(nix::sys::signal::Signal::SIGTERM);
    stop.thread_block().context("blocking signals")?;

    let mut r = Responder::load()?;
    for l in &a.listen {
        r.add_service(*l)?;
    }
    let mut epoch = current_epoch(a.epoch_secs);
    r.install_keys(&secret, epoch, &settings)?;
    r.attach(&a.iface, mode)?;
    let services: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    println!(
        "ackgate: attached to {} ({mode} XDP); protecting {}; mss {}/{}; epoch {}s",
        a.iface,
        services.join(", "),
        settings.mss4,
        settings.mss6,
        a.epoch_secs
    );

    let mut last_stats = std::time::Instant::now();
    loop {
        if let Some(sig) = wait_signal(&stop, Duration::from_millis(100))? {
            println!("ackgate: {sig}, detaching");
            break;
        }
        r.tick_clock()?;
        let now = current_epoch(a.epoch_secs);
        if now != epoch {
            epoch = now;
            r.install_keys(&secret, epoch, &settings)?;
        }
        if a.stats_interval > 0 && last_stats.elapsed() >= Duration::from_secs(a.stats_interval) {
            last_stats = std::time::Instant::now();
            println!("counters: {}", r.counters()?);
        }
    }
    println!("counters: {}", r.counters()?);
    drop(r);
    Ok(())
}

/// With backends: the proxy on a tokio runtime.
fn run_proxy(a: RunArgs, secret: Secret, settings: Settings, mode: AttachMode) -> Result<()> {
    let mut r = Responder::load()?;
    for l in &a.listen {
        r.add_service(*l)?;
    }
    r.install_keys(&secret, current_epoch(a.epoch_secs), &settings)?;
    // ACKs are ours from the first packet: events wait in the ring until the
    // consumer starts, rather than reaching the kernel and being reset.
    r.set_handoff(true)?;
    r.attach(&a.iface, mode)?;
    let cfg = ackgate::serve::ProxyConfig {
        backends: a.backends.clone(),
        proxy_protocol: a.proxy_protocol,
        connect_timeout: Duration::from_millis(a.connect_timeout_ms),
        backend_backoff: Duration::from_secs(a.backend_backoff_secs),
        idle_timeout: Duration::from_secs(a.idle_timeout_secs),
        max_connections: a.max_connections as usize,
        grace: Duration::from_secs(a.grace_secs),
        stats_interval: (a.stats_interval > 0).then(|| Duration::from_secs(a.stats_interval)),
        epoch_secs: a.epoch_secs,
    };
    let services: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    let backends: Vec<String> = a.backends.iter().map(|b| b.to_string()).collect();
    println!(
        "ackgate: attached to {} ({mode} XDP); proxying {} to {}; proxy protocol {:?}",
        a.iface,
        services.join(", "),
        backends.join(", "),
        a.proxy_protocol
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ackgate::serve::serve(r, secret, settings, cfg))
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
