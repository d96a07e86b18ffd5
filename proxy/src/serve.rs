//! The proxy: consumes verified flows from the XDP program, materializes
//! each as a kernel socket, connects it to a backend and relays.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
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
    metrics::{ResetReason, Stats, XdpMetrics, XDP_POLL},
    proxyproto,
    relay::{reset, Moved, Relay, TokioRelay},
    responder::{cookie_clock_ms, monotonic_ns, Responder, Settings},
    retransmit::Retransmitter,
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
    /// Services whose SYN-ACKs XDP remembers for retransmission.
    pub server_first: Vec<SocketAddr>,
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
            stats: Stats::new(),
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
        })
    }

    /// Waits for running relays, up to the grace period.
    async fn drain(&self, signame: &str) {
        tracing::info!(
            "{signame}, draining {} connections (grace {:?})",
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
                            shared.stats.handoff(None);
                            proxy(&shared, s, peer, addr);
                        }
                        Err(e) => {
                            tracing::debug!(client = %peer, error = %e, "accepted socket unusable");
                            shared.stats.handoff_failed("accept");
                        }
                    },
                    // Out of descriptors and the like: back off, keep serving.
                    Err(e) => {
                        tracing::debug!(service = %addr, error = %e, "accept failed");
                        shared.stats.handoff_failed("accept");
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                }
            }
        });
    }
    tracing::info!(
        "proxy ready (no XDP: kernel SYN cookies); proxying to {} backends",
        shared.cfg.backends.len()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_stats = tokio::time::Instant::now();
    let mut last_poll = tokio::time::Instant::now();
    let signame = loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_poll.elapsed() >= XDP_POLL {
                    last_poll = tokio::time::Instant::now();
                    shared.backends.refresh_health();
                }
                if let Some(every) = shared.cfg.stats_interval {
                    if last_stats.elapsed() >= every {
                        last_stats = tokio::time::Instant::now();
                        tracing::info!("counters: {}", shared.stats);
                    }
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    accepts.abort_all();
    shared.drain(signame).await;
    tracing::info!("counters: {}", shared.stats);
    Ok(())
}

/// Runs until SIGTERM/SIGINT, then drains. `r` must be attached, keyed and
/// have its services; this turns the ACK path on. `opener` is made before
/// attaching, so a missing CAP_NET_RAW fails before any traffic is taken.
pub async fn serve(
    mut r: Responder,
    secret: Secret,
    settings: Settings,
    cfg: ProxyConfig,
    opener: WindowOpener,
) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open for as long as
    // the AsyncFd holds it; nothing else closes it.
    let ring = unsafe {
        AsyncFd::register_with_interest(r.take_handoff_ring()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .context("watching the handoff ring buffer")?;
    let mut retransmit = Retransmitter::new(r.take_recent()?);
    let shared = Shared::new(cfg);
    let iface = r.attached().map(|(i, _)| i.clone()).unwrap_or_default();
    let xdp = XdpMetrics::new(&iface);
    r.set_handoff(true)?;
    tracing::info!(
        "proxy ready: verified flows go to {} backends",
        shared.cfg.backends.len()
    );
    let mut ring = ring;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut tick_n = 0u32;
    let mut epoch = current_epoch(shared.cfg.epoch_secs);
    let mut last_stats = tokio::time::Instant::now();
    let mut last_poll = tokio::time::Instant::now();
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
                    accept(&shared, &e, settings.wscale, &opener, &mut retransmit);
                }
                g.clear_ready();
            }
            _ = tick.tick() => {
                r.tick_clock()?;
                if tick_n.is_multiple_of(RETRANSMIT_TICKS) {
                    let t = retransmit.tick(cookie_clock_ms(), &opener);
                    shared.stats.synack_retransmits(&t);
                }
                tick_n = tick_n.wrapping_add(1);
                let now = current_epoch(shared.cfg.epoch_secs);
                if now != epoch {
                    epoch = now;
                    r.install_keys(&secret, epoch, &settings)?;
                    tracing::debug!(epoch, "cookie keys rotated");
                }
                if last_poll.elapsed() >= XDP_POLL {
                    last_poll = tokio::time::Instant::now();
                    xdp.publish(&r.counters()?);
                    shared.backends.refresh_health();
                }
                if let Some(every) = shared.cfg.stats_interval {
                    if last_stats.elapsed() >= every {
                        last_stats = tokio::time::Instant::now();
                        tracing::info!("counters: {} {}", r.counters()?, shared.stats);
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
    let last = r.counters()?;
    xdp.publish(&last);
    tracing::info!("counters: {last} {}", shared.stats);
    Ok(())
}

/// Remembered SYN-ACKs are checked every this many 100 ms ticks.
const RETRANSMIT_TICKS: u32 = 2;

/// One verified flow: materialize, then connect and relay on a task.
fn accept(
    shared: &Arc<Shared>,
    e: &Handoff,
    wscale: u8,
    opener: &WindowOpener,
    retransmit: &mut Retransmitter,
) {
    let flow = match Flow::from_event(e) {
        Ok(f) => f,
        Err(err) => {
            tracing::debug!(error = %err, "handoff event rejected");
            shared.stats.handoff_failed(err.reason());
            return;
        }
    };
    let client = match materialize(&flow, wscale, opener) {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(client = %flow.client, service = %flow.service, error = %err, "handoff failed");
            shared.stats.handoff_failed(err.reason());
            return;
        }
    };
    // Both stamps are CLOCK_MONOTONIC; an event from before a clock step
    // cannot exist, but a zero stamp (old program) must not record 584 years.
    let latency =
        (e.ktime_ns != 0).then(|| Duration::from_nanos(monotonic_ns().saturating_sub(e.ktime_ns)));
    shared.stats.handoff(latency);
    if shared.cfg.server_first.contains(&flow.service) {
        retransmit.forget(flow.client, flow.service);
    }
    proxy(shared, client, flow.client, flow.service);
}

/// A client connection (materialized, or accepted in `--xdp-mode off`):
/// connect a backend and relay on a task, or reset the client at once.
fn proxy(shared: &Arc<Shared>, client: std::net::TcpStream, peer: SocketAddr, service: SocketAddr) {
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        tracing::debug!(client = %peer, %service, "reset: connection limit");
        shared.stats.reset(ResetReason::Limit);
        reset(client);
        return;
    };
    shared.stats.opened();
    let start = Instant::now();
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut moved = Moved::default();
        match shared.backends.connect().await {
            Ok((mut backend, addr)) => {
                let header = proxyproto::header(shared.cfg.proxy_protocol, peer, service);
                if header.is_empty() || backend.write_all(&header).await.is_ok() {
                    let o = shared
                        .relay
                        .relay(client, backend, shared.cfg.idle_timeout)
                        .await;
                    moved = o.moved;
                    if let Err(e) = o.result {
                        tracing::debug!(client = %peer, backend = %addr, error = %e, "relay failed");
                    }
                }
            }
            Err(_) => {
                tracing::debug!(client = %peer, %service, "reset: no backend accepted");
                shared.stats.reset(ResetReason::NoBackend);
                reset(client);
            }
        }
        shared.stats.closed(start.elapsed(), moved);
    });
}
