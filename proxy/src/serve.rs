//! The proxy: consumes verified flows from the XDP program, materializes
//! each as a kernel socket, connects it to a backend and relays.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use ackgate_common::wire::Handoff;
use anyhow::{Context as _, Result};
use tokio::{
    io::{unix::AsyncFd, AsyncWriteExt as _},
    signal::unix::{signal, SignalKind},
    sync::Semaphore,
};

use crate::{
    backends::Backends,
    handoff::{materialize, Flow, WindowOpener},
    proxyproto,
    relay::{reset, Relay, TokioRelay},
    responder::{Responder, Settings},
    secret::{current_epoch, Secret},
};

/// How the proxy treats flows.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub backends: Vec<SocketAddr>,
    pub proxy_protocol: proxyproto::Mode,
    pub connect_timeout: Duration,
    pub backend_backoff: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// On SIGTERM/SIGINT, how long running relays may finish.
    pub grace: Duration,
    pub stats_interval: Option<Duration>,
    pub epoch_secs: u32,
}

/// Userspace counters (the XDP ones live in the maps).
#[derive(Default)]
pub struct Stats {
    pub handoffs: AtomicU64,
    pub handoff_errors: AtomicU64,
    pub backend_errors: AtomicU64,
    pub resets_no_backend: AtomicU64,
    pub resets_limit: AtomicU64,
    pub active: AtomicU64,
    pub closed: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handoffs={} handoff_errors={} backend_errors={} resets_no_backend={} resets_limit={} active={} closed={} bytes_to_backend={} bytes_to_client={}",
            self.handoffs.load(Relaxed),
            self.handoff_errors.load(Relaxed),
            self.backend_errors.load(Relaxed),
            self.resets_no_backend.load(Relaxed),
            self.resets_limit.load(Relaxed),
            self.active.load(Relaxed),
            self.closed.load(Relaxed),
            self.bytes_to_backend.load(Relaxed),
            self.bytes_to_client.load(Relaxed),
        )
    }
}

struct Shared {
    cfg: ProxyConfig,
    backends: Backends,
    relay: Box<dyn Relay>,
    stats: Stats,
    slots: Arc<Semaphore>,
}

impl Shared {
    fn new(cfg: ProxyConfig) -> Arc<Self> {
        Arc::new(Shared {
            backends: Backends::new(
                cfg.backends.clone(),
                cfg.connect_timeout,
                cfg.backend_backoff,
            ),
            relay: Box::new(TokioRelay),
            stats: Stats::default(),
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
        })
    }

    /// Waits for running relays, up to the grace period.
    async fn drain(&self, signame: &str) {
        println!(
            "ackgate: {signame}, draining {} connections (grace {:?})",
            self.stats.active.load(Relaxed),
            self.cfg.grace
        );
        let deadline = tokio::time::Instant::now() + self.cfg.grace;
        while self.stats.active.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `--xdp-mode off`: no XDP at all. A plain listener per service (the
/// kernel's own SYN cookies defend it), the same backends and relay: the
/// fallback for hosts without XDP and the benchmark's baseline.
pub async fn serve_plain(listen: Vec<SocketAddr>, cfg: ProxyConfig) -> Result<()> {
    let shared = Shared::new(cfg);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut accepts = tokio::task::JoinSet::new();
    for addr in listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let shared = shared.clone();
        accepts.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => match s.into_std() {
                        Ok(s) => {
                            shared.stats.handoffs.fetch_add(1, Relaxed);
                            proxy(&shared, s, peer, addr);
                        }
                        Err(_) => {
                            shared.stats.handoff_errors.fetch_add(1, Relaxed);
                        }
                    },
                    // Out of descriptors and the like: back off, keep serving.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }
    println!(
        "ackgate: listening (no XDP); proxying to {} backends",
        shared.cfg.backends.len()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_stats = tokio::time::Instant::now();
    let signame = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(every) = shared.cfg.stats_interval {
                    if last_stats.elapsed() >= every {
                        last_stats = tokio::time::Instant::now();
                        println!("counters: {}", shared.stats);
                    }
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    accepts.abort_all();
    shared.drain(signame).await;
    println!("counters: {}", shared.stats);
    Ok(())
}

/// Runs until SIGTERM/SIGINT, then drains. `r` must be attached, keyed and
/// have its services; this turns the ACK path on.
pub async fn serve(
    mut r: Responder,
    secret: Secret,
    settings: Settings,
    cfg: ProxyConfig,
) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open for as long as
    // the AsyncFd holds it; nothing else closes it.
    let ring = unsafe {
        AsyncFd::register_with_interest(r.take_handoff_ring()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .context("watching the handoff ring buffer")?;
    let opener = WindowOpener::new()?;
    let shared = Shared::new(cfg);
    r.set_handoff(true)?;
    let mut ring = ring;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut epoch = current_epoch(shared.cfg.epoch_secs);
    let mut last_stats = tokio::time::Instant::now();
    let signame = loop {
        tokio::select! {
            g = ring.readable_mut() => {
                let mut g = g?;
                while let Some(item) = g.get_inner_mut().next() {
                    if item.len() < std::mem::size_of::<Handoff>() {
                        continue;
                    }
                    // SAFETY: the XDP program submits whole `Handoff` records
                    // of plain integers.
                    let e: Handoff = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    accept(&shared, &e, settings.wscale, &opener);
                }
                g.clear_ready();
            }
            _ = tick.tick() => {
                r.tick_clock()?;
                let now = current_epoch(shared.cfg.epoch_secs);
                if now != epoch {
                    epoch = now;
                    r.install_keys(&secret, epoch, &settings)?;
                }
                if let Some(every) = shared.cfg.stats_interval {
                    if last_stats.elapsed() >= every {
                        last_stats = tokio::time::Instant::now();
                        println!("counters: {} {}", r.counters()?, shared.stats);
                    }
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    // Stop taking new flows: verified ACKs are no longer consumed (they go
    // to the kernel, which resets them); running relays get the grace period.
    r.set_handoff(false)?;
    shared.drain(signame).await;
    println!("counters: {} {}", r.counters()?, shared.stats);
    Ok(())
}

/// One verified flow: materialize, then connect and relay on a task.
fn accept(shared: &Arc<Shared>, e: &Handoff, wscale: u8, opener: &WindowOpener) {
    let flow = match Flow::from_event(e) {
        Ok(f) => f,
        Err(_) => {
            shared.stats.handoff_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    let client = match materialize(&flow, wscale, opener) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ackgate: handoff of {} failed: {e}", flow.client);
            shared.stats.handoff_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    shared.stats.handoffs.fetch_add(1, Relaxed);
    proxy(shared, client, flow.client, flow.service);
}

/// A client connection (materialized, or accepted in `--xdp-mode off`):
/// connect a backend and relay on a task, or reset the client at once.
fn proxy(shared: &Arc<Shared>, client: std::net::TcpStream, peer: SocketAddr, service: SocketAddr) {
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        shared.stats.resets_limit.fetch_add(1, Relaxed);
        reset(client);
        return;
    };
    shared.stats.active.fetch_add(1, Relaxed);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        match shared.backends.connect().await {
            Ok((mut backend, _addr)) => {
                let header = proxyproto::header(shared.cfg.proxy_protocol, peer, service);
                if header.is_empty() || backend.write_all(&header).await.is_ok() {
                    if let Ok(m) = shared
                        .relay
                        .relay(client, backend, shared.cfg.idle_timeout)
                        .await
                    {
                        shared
                            .stats
                            .bytes_to_backend
                            .fetch_add(m.to_backend, Relaxed);
                        shared.stats.bytes_to_client.fetch_add(m.to_client, Relaxed);
                    }
                }
            }
            Err(_) => {
                shared.stats.backend_errors.fetch_add(1, Relaxed);
                shared.stats.resets_no_backend.fetch_add(1, Relaxed);
                reset(client);
            }
        }
        shared.stats.active.fetch_sub(1, Relaxed);
        shared.stats.closed.fetch_add(1, Relaxed);
    });
}
