//! The engine: one loop runs every mode with one tick, one signal path and
//! one drain.
//!
//! * SYN-only: XDP answers SYNs; ACKs go to the kernel (benchmarks, labs).
//! * Proxy: XDP also verifies ACKs; each verified flow arrives on the ring,
//!   is materialized as a socket and relayed to a backend.
//! * Plain (`--xdp-mode off`): kernel listeners (kernel SYN cookies) and the
//!   same relay.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, AsyncWriteExt as _},
    signal::unix::{signal, Signal, SignalKind},
    sync::Semaphore,
    task::JoinSet,
};

use crate::{
    config::Plan,
    handoff::{materialize, retransmit::Retransmitter},
    relay::{backends::Backends, proxyproto, reset, Moved, Relay, TokioRelay},
    sys::{clock, raw::RawSender, sysctl},
    telemetry::metrics::{ResetReason, Stats, XdpMetrics, XDP_POLL},
    xdp::{
        ring::{self, Flow},
        secret::{current_epoch, Secret},
        AttachMode, Responder, Settings,
    },
};

/// The loop's period: the resolution of the cookie clock XDP stamps into
/// TSvals, and of key rotation.
const TICK: Duration = Duration::from_millis(100);
/// Remembered SYN-ACKs are checked every this many ticks.
const RETRANSMIT_TICKS: u64 = 2;

/// Runs `plan` until SIGTERM or SIGINT, then drains.
pub fn run(plan: Plan) -> Result<()> {
    if plan.mode.is_some() && !nix::unistd::geteuid().is_root() {
        bail!("must run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach XDP)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(plan))
}

async fn serve(plan: Plan) -> Result<()> {
    let mut stop = Stop::new()?;
    let proxy = (!plan.backends.is_empty()).then(|| Proxy::new(&plan));
    // The handoff's raw sockets come first, so a missing CAP_NET_RAW fails
    // before any traffic is taken.
    let sender = match (&proxy, plan.mode) {
        (Some(_), Some(_)) => {
            let s = RawSender::new()
                .context("raw IP sockets for window updates (needs CAP_NET_RAW)")?;
            sysctl::allow_time_wait_reuse()?;
            Some(s)
        }
        _ => None,
    };
    let mut gate = match plan.mode {
        Some(mode) => Some(Gate::start(&plan, mode, sender.is_some())?),
        None => None,
    };
    let mut flows = match (&mut gate, sender) {
        (Some(g), Some(sender)) => Some(Flows::new(g, sender, &plan)?),
        _ => None,
    };
    let mut ring = match &mut gate {
        Some(g) if flows.is_some() => Some(watch_ring(&mut g.r)?),
        _ => None,
    };
    let mut accepts = JoinSet::new();
    if let (None, Some(p)) = (&gate, &proxy) {
        for &addr in &plan.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            accepts.spawn(accept_loop(l, addr, p.clone()));
        }
    }
    announce(&plan, &gate, &proxy);

    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    let mut last_stats = Instant::now();
    let mut last_poll = Instant::now();
    let signame = loop {
        tokio::select! {
            g = readable(&mut ring) => {
                let mut g = g?;
                if let (Some(f), Some(p)) = (&mut flows, &proxy) {
                    while let Some(item) = g.get_inner_mut().next() {
                        if let Some(e) = ring::event(&item) {
                            f.take(p, &e);
                        }
                    }
                }
                g.clear_ready();
            }
            _ = tick.tick() => {
                n = n.wrapping_add(1);
                if let Some(g) = &mut gate {
                    g.tick(&plan)?;
                }
                if let (Some(f), Some(p)) = (&mut flows, &proxy) {
                    if n.is_multiple_of(RETRANSMIT_TICKS) {
                        p.stats.synack_retransmits(&f.retransmit.tick(clock::cookie_clock_ms(), &f.sender));
                    }
                }
                if last_poll.elapsed() >= XDP_POLL {
                    last_poll = Instant::now();
                    if let Some(g) = &gate {
                        g.publish()?;
                    }
                    if let Some(p) = &proxy {
                        p.backends.refresh_health();
                    }
                }
                if plan.stats_interval.is_some_and(|every| last_stats.elapsed() >= every) {
                    last_stats = Instant::now();
                    tracing::info!("counters: {}", counters(&gate, &proxy)?);
                }
            }
            s = stop.recv() => break s,
        }
    };

    // Stop taking new flows: verified ACKs are no longer consumed (they go
    // to the kernel, which resets them), listeners close; running relays
    // get the grace period.
    if let (Some(g), Some(_)) = (&mut gate, &flows) {
        g.r.set_handoff(false)?;
    }
    accepts.abort_all();
    match &proxy {
        Some(p) => p.drain(signame, plan.grace).await,
        None => tracing::info!("{signame}, detaching"),
    }
    if let Some(g) = &gate {
        g.publish()?;
    }
    tracing::info!("counters: {}", counters(&gate, &proxy)?);
    Ok(())
}

/// The start-up lines operators (and the tests) look for.
fn announce(plan: &Plan, gate: &Option<Gate>, proxy: &Option<Arc<Proxy>>) {
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (gate, proxy) {
        (Some(g), None) => tracing::info!(
            "attached to {} ({} XDP); protecting {}; mss {}/{}; epoch {}s",
            plan.iface,
            g.mode,
            list(&plan.listen),
            g.settings.mss4,
            g.settings.mss6,
            plan.epoch_secs
        ),
        (Some(g), Some(p)) => {
            tracing::info!(
                "attached to {} ({} XDP); proxying {} to {}; proxy protocol {:?}",
                plan.iface,
                g.mode,
                list(&plan.listen),
                list(&plan.backends),
                plan.proxy_protocol
            );
            if !plan.server_first.is_empty() {
                tracing::info!(
                    "server first (SYN-ACKs retransmitted): {}",
                    list(&plan.server_first)
                );
            }
            tracing::info!(
                "proxy ready: verified flows go to {} backends",
                p.backends.len()
            );
        }
        (None, Some(p)) => tracing::info!(
            "proxy ready (no XDP: kernel SYN cookies); proxying to {} backends",
            p.backends.len()
        ),
        (None, None) => {}
    }
}

/// The counters line: XDP's and the proxy's, as the mode has them.
fn counters(gate: &Option<Gate>, proxy: &Option<Arc<Proxy>>) -> Result<String> {
    let mut parts = Vec::new();
    if let Some(g) = gate {
        parts.push(g.r.counters()?.to_string());
    }
    if let Some(p) = proxy {
        parts.push(p.stats.to_string());
    }
    Ok(parts.join(" "))
}

/// SIGTERM and SIGINT, the only ways to stop.
struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        Ok(Stop {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The XDP side: the attached responder, its keys and its clock.
struct Gate {
    r: Responder,
    mode: AttachMode,
    secret: Secret,
    settings: Settings,
    epoch: u32,
    metrics: XdpMetrics,
}

impl Gate {
    /// Loads, keys and attaches the program; with `handoff` the ACK path is
    /// on from the first packet (events wait in the ring until the loop
    /// takes them, rather than reaching the kernel and being reset).
    fn start(plan: &Plan, mode: AttachMode, handoff: bool) -> Result<Self> {
        let secret = match &plan.secret_file {
            Some(p) => Secret::from_file(p)?,
            None => Secret::random(),
        };
        let settings = plan.settings()?;
        let mut r = Responder::load()?;
        for l in &plan.listen {
            if handoff && plan.server_first.contains(l) {
                r.add_server_first_service(*l)?;
            } else {
                r.add_service(*l)?;
            }
        }
        let epoch = current_epoch(plan.epoch_secs);
        r.install_keys(&secret, epoch, &settings)?;
        r.set_handoff(handoff)?;
        r.attach(&plan.iface, mode)?;
        Ok(Gate {
            r,
            mode,
            secret,
            settings,
            epoch,
            metrics: XdpMetrics::new(&plan.iface),
        })
    }

    /// The TSval clock, and the keys when the epoch turns.
    fn tick(&mut self, plan: &Plan) -> Result<()> {
        self.r.tick_clock()?;
        let now = current_epoch(plan.epoch_secs);
        if now != self.epoch {
            self.epoch = now;
            self.r.install_keys(&self.secret, now, &self.settings)?;
            tracing::debug!(epoch = now, "cookie keys rotated");
        }
        Ok(())
    }

    fn publish(&self) -> Result<()> {
        self.metrics.publish(&self.r.counters()?);
        Ok(())
    }
}

/// The ring as a readiness source.
fn watch_ring(r: &mut Responder) -> Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring buffer owns its fd, which stays open for as long as
    // the AsyncFd holds it; nothing else closes it.
    unsafe {
        AsyncFd::register_with_interest(r.take_handoff_ring()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .context("watching the handoff ring buffer")
}

/// The ring's next readiness, or never without a ring.
async fn readable(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Verified flows: materialized here, then handed to the proxy.
struct Flows {
    sender: RawSender,
    retransmit: Retransmitter,
    server_first: Vec<SocketAddr>,
    wscale: u8,
}

impl Flows {
    fn new(g: &mut Gate, sender: RawSender, plan: &Plan) -> Result<Self> {
        Ok(Flows {
            sender,
            retransmit: Retransmitter::new(g.r.take_recent()?),
            server_first: plan.server_first.clone(),
            wscale: g.settings.wscale,
        })
    }

    /// One ring event: materialize, then connect and relay on a task.
    fn take(&mut self, p: &Arc<Proxy>, e: &ackgate_common::wire::Handoff) {
        let flow = match Flow::from_event(e) {
            Ok(f) => f,
            Err(err) => {
                tracing::debug!(error = %err, "handoff event rejected");
                p.stats.handoff_failed(err.reason());
                return;
            }
        };
        let client = match materialize(&flow, self.wscale, &self.sender) {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(client = %flow.client, service = %flow.service, error = %err, "handoff failed");
                p.stats.handoff_failed(err.reason());
                return;
            }
        };
        // Both stamps are CLOCK_MONOTONIC; a zero stamp (an old program)
        // must not record 584 years.
        let latency = (e.ktime_ns != 0)
            .then(|| Duration::from_nanos(clock::monotonic_ns().saturating_sub(e.ktime_ns)));
        p.stats.handoff(latency);
        if self.server_first.contains(&flow.service) {
            self.retransmit.forget(flow.client, flow.service);
        }
        p.open(client, flow.client, flow.service);
    }
}

/// `--xdp-mode off`: a kernel listener per service.
async fn accept_loop(l: tokio::net::TcpListener, addr: SocketAddr, p: Arc<Proxy>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => match s.into_std() {
                Ok(s) => {
                    p.stats.handoff(None);
                    p.open(s, peer, addr);
                }
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "accepted socket unusable");
                    p.stats.handoff_failed("accept");
                }
            },
            // Out of descriptors and the like: back off, keep serving.
            Err(e) => {
                tracing::debug!(service = %addr, error = %e, "accept failed");
                p.stats.handoff_failed("accept");
                tokio::time::sleep(Duration::from_millis(10)).await
            }
        }
    }
}

/// The proxy: backends, the relay, its limits and statistics.
struct Proxy {
    backends: Backends,
    relay: Box<dyn Relay>,
    stats: Stats,
    slots: Arc<Semaphore>,
    proxy_protocol: proxyproto::Mode,
    idle_timeout: Duration,
}

impl Proxy {
    fn new(plan: &Plan) -> Arc<Self> {
        Arc::new(Proxy {
            backends: Backends::new(
                plan.backends.clone(),
                plan.connect_timeout,
                plan.backend_backoff,
            ),
            relay: Box::new(TokioRelay),
            stats: Stats::new(),
            slots: Arc::new(Semaphore::new(plan.max_connections)),
            proxy_protocol: plan.proxy_protocol,
            idle_timeout: plan.idle_timeout,
        })
    }

    /// A client connection (materialized, or accepted): connect a backend
    /// and relay on a task, or reset the client at once.
    fn open(self: &Arc<Self>, client: std::net::TcpStream, peer: SocketAddr, service: SocketAddr) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer, %service, "reset: connection limit");
            self.stats.reset(ResetReason::Limit);
            reset(client);
            return;
        };
        self.stats.opened();
        let start = Instant::now();
        let p = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut moved = Moved::default();
            match p.backends.connect().await {
                Ok((mut backend, addr)) => {
                    let header = proxyproto::header(p.proxy_protocol, peer, service);
                    if header.is_empty() || backend.write_all(&header).await.is_ok() {
                        let o = p.relay.relay(client, backend, p.idle_timeout).await;
                        moved = o.moved;
                        if let Err(e) = o.result {
                            tracing::debug!(client = %peer, backend = %addr, error = %e, "relay failed");
                        }
                    }
                }
                Err(_) => {
                    tracing::debug!(client = %peer, %service, "reset: no backend accepted");
                    p.stats.reset(ResetReason::NoBackend);
                    reset(client);
                }
            }
            p.stats.closed(start.elapsed(), moved);
        });
    }

    /// Waits for running relays, up to the grace period.
    async fn drain(&self, signame: &str, grace: Duration) {
        tracing::info!(
            "{signame}, draining {} connections (grace {grace:?})",
            self.stats.active.load(Relaxed),
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats.active.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
