//! The engine: one loop runs every mode with one tick, one signal path and
//! one drain.
//!
//! * SYN-only: XDP answers SYNs; ACKs go to the kernel (benchmarks, labs).
//! * Proxy: XDP also verifies ACKs; each verified flow arrives on the ring,
//!   is materialized as a socket and relayed to its service's backend.
//! * Plain (`--xdp-mode off`): kernel listeners (kernel SYN cookies) and the
//!   same relay.
//!
//! The engine threads (`--threads`, [`threads`]) take verified flows off the
//! handoff ring, materialize them and relay them; the loop's thread keeps
//! the clock, keys, signals, reloads and metrics. Two engines drive the
//! same logic: `tokio`
//! materializes each verified flow with one system call per step; `io_uring`
//! submits a batch of flows as linked operations in one call, through a ring
//! per thread ([`crate::handoff::uring`]). Both relay with splice(2).
//!
//! SIGHUP reloads the configuration in place: the protected set, services,
//! backends and limits change for new flows; XDP stays attached, keys stay,
//! running relays keep the service they started with.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

mod threads;

use anyhow::{bail, Context as _, Result};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    task::{AbortHandle, JoinSet},
};

use self::threads::{Ring, Threads};
use crate::{
    config::{EngineArg, Plan, RunArgs},
    handoff::{retransmit::Retransmitter, uring::UringHandoff},
    relay::{
        backends::Backends,
        proxyproto, reset,
        sources::{Refusal, SourceLimits, Sources},
        Moved, Relay, TokioRelay,
    },
    sys::{clock, raw::RawSender, sysctl},
    takeover,
    telemetry::metrics::{Exporter, ResetReason, ServiceStats, Stats, XdpMetrics, XDP_POLL},
    xdp::{
        secret::{current_epoch, Secret},
        AccessList, AttachMode, Responder, Settings,
    },
};

/// The loop's period: the resolution of the cookie clock XDP stamps into
/// TSvals, and of key rotation.
const TICK: Duration = Duration::from_millis(100);
/// Remembered SYN-ACKs are checked every this many ticks.
const RETRANSMIT_TICKS: u64 = 2;
/// Most verified flows one io_uring submission materializes (and most
/// events taken off the ring before they are materialized): measured,
/// batches of 16 made the most flows per second of one thread; 64 made
/// fewer, and a flow waits for its whole batch.
const BATCH: u32 = 16;
/// A recurring local failure is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Runs `plan` until SIGTERM or SIGINT, then drains; SIGHUP re-reads the
/// configuration `args` name.
pub fn run(mut plan: Plan, args: RunArgs) -> Result<()> {
    if plan.mode.is_some() && !nix::unistd::geteuid().is_root() {
        bail!("must run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach XDP)");
    }
    // Bad input first, in one line, before any warning; read once.
    let settings = plan.mode.map(|_| plan.settings()).transpose()?;
    let secret = match &plan.secret_file {
        Some(p) => Some(Secret::from_file(p)?),
        None => None,
    };
    let (engine, rings) = Engine::choose(plan.engine, plan.threads)?;
    plan.fit_descriptors()?;
    let exporter = match plan.metrics {
        Some(addr) => {
            let mode = plan.mode.map_or("off", |m| m.name());
            let e = crate::telemetry::metrics::install(
                addr,
                &crate::telemetry::metrics::BuildInfo::new(mode),
            )?;
            tracing::info!("metrics on http://{addr}/metrics");
            Some(e)
        }
        None => None,
    };
    // The loop's own runtime: the ring, signals, ticks, the control socket,
    // metrics and health checks. Relays run on the engine threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Start {
        engine,
        rings,
        settings,
        secret,
    };
    rt.block_on(serve(plan, args, exporter, start))
}

/// The engine an instance runs, chosen once at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Tokio,
    IoUring,
}

impl Engine {
    /// `auto` takes io_uring when this kernel and sandbox allow it and says
    /// why not otherwise; an explicit `io_uring` that cannot run is an
    /// error, never a silent fallback. The io_uring engine's rings, one
    /// per engine thread, are made here: making the first is the probe.
    pub fn choose(want: EngineArg, threads: usize) -> Result<(Self, Vec<UringHandoff>)> {
        let rings = || (0..threads).map(|_| UringHandoff::new(BATCH)).collect();
        match want {
            EngineArg::Tokio => Ok((Engine::Tokio, Vec::new())),
            EngineArg::IoUring => {
                let r: Result<Vec<_>, _> = rings();
                let r = r.context("engine io_uring cannot run here (try --engine tokio)")?;
                Ok((Engine::IoUring, r))
            }
            EngineArg::Auto => match rings() {
                Ok(r) => Ok((Engine::IoUring, r)),
                Err(e) => {
                    tracing::info!("engine auto: io_uring unavailable ({e}): using tokio");
                    Ok((Engine::Tokio, Vec::new()))
                }
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Engine::Tokio => "tokio",
            Engine::IoUring => "io_uring",
        }
    }
}

/// What start-up checked and made before the runtime: the engine and its
/// rings, the interfaces' SYN-ACK settings, the secret file's key.
struct Start {
    engine: Engine,
    rings: Vec<UringHandoff>,
    settings: Option<Settings>,
    secret: Option<Secret>,
}

async fn serve(
    mut plan: Plan,
    args: RunArgs,
    exporter: Option<Exporter>,
    start: Start,
) -> Result<()> {
    let Start {
        engine,
        mut rings,
        settings,
        secret,
    } = start;
    let mut signals = Signals::new()?;
    if let Some(e) = exporter {
        tokio::spawn(e.serve());
    }
    let proxy = (!plan.syn_only).then(|| Proxy::new(&plan));
    // The handoff's raw sockets come first, so a missing CAP_NET_RAW fails
    // before any traffic is taken.
    let sender = match (&proxy, plan.mode) {
        (Some(_), Some(_)) => {
            let s = RawSender::new()
                .context("raw IP sockets for window updates (needs CAP_NET_RAW)")?;
            sysctl::allow_time_wait_reuse()?;
            Some(Arc::new(s))
        }
        _ => None,
    };
    // Taking over: the running instance's offer first (its secret, its
    // links), then our program in its place, then its go-ahead to drain.
    let offer = match (&plan.control_socket, plan.takeover) {
        (Some(sock), true) => {
            let o = takeover::request(sock)?;
            if o.is_none() {
                tracing::info!(
                    "--takeover: no ackgate on {}: starting afresh",
                    sock.display()
                );
            }
            o
        }
        _ => None,
    };
    let mut gate = match (plan.mode, settings) {
        (Some(mode), Some(settings)) => Some(Gate::start(
            &plan,
            mode,
            settings,
            secret,
            sender.is_some(),
            offer.as_ref().map(|(o, _)| o),
        )?),
        _ => None,
    };
    if let Some((o, stream)) = offer {
        takeover::confirm(stream)?;
        tracing::info!("took over from ackgate (pid {})", o.pid);
    }
    let (control_tx, mut control) = tokio::sync::mpsc::channel(4);
    if let (Some(sock), Some(_)) = (&plan.control_socket, &gate) {
        // After a takeover the old instance still has the path bound.
        if plan.takeover {
            let _ = std::fs::remove_file(sock);
        }
        tokio::spawn(takeover::serve(takeover::bind(sock)?, control_tx));
    }
    let flows = match (&mut gate, sender) {
        (Some(g), Some(sender)) => Some(Flows::new(g, sender)?),
        _ => None,
    };
    let threads = match &proxy {
        Some(p) => {
            let handoffs = (0..plan.threads)
                .map(|_| {
                    let (f, g) = (flows.as_ref()?, gate.as_ref()?);
                    Some(threads::Handoff {
                        ring: f.ring.clone(),
                        retransmit: f.retransmit.clone(),
                        sender: f.sender.clone(),
                        uring: rings.pop(),
                        wscale: g.settings.wscale,
                    })
                })
                .collect();
            Some(Arc::new(Threads::start(p, handoffs)?))
        }
        None => None,
    };
    let mut listeners = Listeners::default();
    if let (None, Some(p), Some(t)) = (&gate, &proxy, &threads) {
        listeners.apply(&plan, p, t).await?;
    }
    let _pid = PidFile::write(plan.pid_file.as_deref())?;
    announce(&plan, &gate, &proxy, engine);

    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    let mut last_stats = Instant::now();
    let mut last_poll = Instant::now();
    let signame = loop {
        tokio::select! {
            _ = tick.tick() => {
                n = n.wrapping_add(1);
                if let Some(g) = &mut gate {
                    g.tick(&plan)?;
                }
                if let (Some(f), Some(p)) = (&flows, &proxy) {
                    if n.is_multiple_of(RETRANSMIT_TICKS) {
                        let t = f.retransmit.lock().unwrap().tick(clock::cookie_clock_ms(), &f.sender);
                        p.stats.synack_retransmits(&t);
                    }
                }
                if last_poll.elapsed() >= XDP_POLL {
                    last_poll = Instant::now();
                    if let Some(g) = &mut gate {
                        g.publish();
                    }
                    if let Some(p) = &proxy {
                        p.refresh();
                    }
                }
                if plan.stats_interval.is_some_and(|every| last_stats.elapsed() >= every) {
                    last_stats = Instant::now();
                    tracing::info!("counters: {}", counters(&gate, &proxy));
                }
            }
            Some(req) = control.recv() => match (req, &mut gate) {
                (takeover::Request::Offer(reply), Some(g)) => {
                    let offer = g
                        .r
                        .offer_links()
                        .map(|links| takeover::Offer {
                            pid: std::process::id(),
                            secret: g.secret.clone(),
                            epoch_secs: plan.epoch_secs,
                            links,
                        })
                        .map_err(|e| e.to_string());
                    if let Err(e) = &offer {
                        tracing::warn!("takeover refused: {e}");
                    }
                    let _ = reply.send(offer);
                }
                (takeover::Request::Done, Some(_)) => break "takeover",
                (takeover::Request::Abort, Some(g)) => {
                    tracing::warn!("takeover failed on the new side: keeping the links and serving");
                    g.r.reclaim_links()?;
                }
                (_, None) => {}
            },
            s = signals.recv() => match s {
                Some(name) => break name,
                None => {
                    let r = reload(&args, &mut plan, &mut gate, &proxy, &threads, &mut listeners).await;
                    match &r {
                        Ok(()) => tracing::info!(
                            "SIGHUP: configuration reloaded: {} services, {} backends",
                            plan.services.len(),
                            plan.backend_count()
                        ),
                        Err(e) => tracing::error!(
                            "SIGHUP: reload refused, the running configuration stays: {e:#}"
                        ),
                    }
                    if let Some(p) = &proxy {
                        p.stats.reloaded(r.is_ok());
                    }
                }
            },
        }
    };

    // Stop taking new flows: verified ACKs are no longer consumed (they go
    // to the kernel, which resets them), listeners close; running relays
    // get the grace period. Flows verified before that (or, after a
    // takeover, before the new program replaced ours) are still served.
    if let (Some(g), Some(_)) = (&mut gate, &flows) {
        g.r.set_handoff(false)?;
    }
    listeners.close();
    match (&proxy, &threads) {
        (Some(p), Some(t)) => {
            // Flows taken but not yet opened count as well.
            if let Some(f) = &flows {
                t.finish(p, &f.ring, &f.retransmit, plan.grace).await;
            }
            p.drain(signame, plan.grace).await
        }
        _ => tracing::info!("{signame}, detaching"),
    }
    if let Some(g) = &mut gate {
        g.publish();
    }
    tracing::info!("counters: {}", counters(&gate, &proxy));
    Ok(())
}

/// Re-reads the configuration and applies it in place, or changes nothing
/// and says why. New listeners are bound before anything changes; the
/// protected set is replaced in XDP (kept services never stop being
/// answered) and the service table swapped in the same step of the loop,
/// so the next verified flow already follows the new configuration.
async fn reload(
    args: &RunArgs,
    plan: &mut Plan,
    gate: &mut Option<Gate>,
    proxy: &Option<Arc<Proxy>>,
    threads: &Option<Arc<Threads>>,
    listeners: &mut Listeners,
) -> Result<()> {
    let mut new = Plan::from_args(args)?;
    plan.reloadable_as(&new)?;
    new.fit_descriptors()?;
    if let (None, Some(p), Some(t)) = (&gate, proxy, threads) {
        listeners.apply(&new, p, t).await?;
    }
    if let Some(g) = gate {
        g.protect(&new)?;
    }
    if let Some(p) = proxy {
        p.configure(&new);
    }
    *plan = new;
    Ok(())
}

/// The start-up lines operators (and the tests) look for.
fn announce(plan: &Plan, gate: &Option<Gate>, proxy: &Option<Arc<Proxy>>, engine: Engine) {
    let list = |v: &mut dyn Iterator<Item = SocketAddr>| {
        v.map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    };
    let ifaces = plan.interfaces.join(", ");
    if let Some(g) = gate {
        tracing::info!(
            "attached to {ifaces} ({} XDP); protecting {}; mss {}/{}; epoch {}s",
            g.mode,
            list(&mut plan.protected().into_iter().map(|(a, _)| a)),
            g.settings.mss4,
            g.settings.mss6,
            plan.epoch_secs
        );
    }
    let Some(p) = proxy else { return };
    for s in &plan.services {
        tracing::info!(
            "service {}: {} to {}; proxy protocol {:?}{}",
            s.name,
            list(&mut s.listen.iter().copied()),
            list(&mut s.backends.iter().map(|b| b.addr)),
            s.proxy_protocol,
            if s.server_first.is_empty() {
                String::new()
            } else {
                format!(
                    "; server first (SYN-ACKs retransmitted): {}",
                    list(&mut s.server_first.iter().copied())
                )
            }
        );
    }
    let how = if gate.is_some() {
        "verified flows"
    } else {
        "no XDP: kernel SYN cookies;"
    };
    let handoffs = match (gate, engine) {
        (None, _) => String::new(),
        (Some(_), Engine::Tokio) => "handoffs one system call per step, ".into(),
        (Some(_), Engine::IoUring) => {
            format!("handoffs in linked submissions of {BATCH} flows when that many wait, ")
        }
    };
    tracing::info!(
        "engine {} on {} threads: {handoffs}relay by splice(2) through up to {} pipes",
        engine.label(),
        plan.threads,
        plan.pipes()
    );
    tracing::info!(
        "proxy ready: {how} go to {} backends of {} services",
        p.backend_count(),
        plan.services.len()
    );
}

/// The counters line: XDP's and the proxy's, as the mode has them.
fn counters(gate: &Option<Gate>, proxy: &Option<Arc<Proxy>>) -> String {
    let mut parts = Vec::new();
    if let Some(g) = gate {
        match g.r.counters() {
            Ok(c) => parts.push(c.to_string()),
            Err(e) => parts.push(format!("xdp_counters_unreadable=\"{e}\"")),
        }
    }
    if let Some(p) = proxy {
        parts.push(p.line());
    }
    parts.join(" ")
}

/// The pid file, removed when the engine returns.
struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    fn write(path: Option<&std::path::Path>) -> Result<Self> {
        if let Some(p) = path {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pid file {}", p.display()))?;
        }
        Ok(PidFile(path.map(Into::into)))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // After a takeover the file names the new process: leave it.
        if let Some(p) = &self.0 {
            let ours = std::fs::read_to_string(p)
                .is_ok_and(|t| t.trim() == std::process::id().to_string());
            if ours {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// SIGTERM and SIGINT stop; SIGHUP reloads.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// The stopping signal's name, or `None` for SIGHUP.
    async fn recv(&mut self) -> Option<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Some("SIGTERM"),
            _ = self.int.recv() => Some("SIGINT"),
            _ = self.hup.recv() => None,
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
    /// This instance takes verified flows.
    handoff: bool,
    /// The program's counters cover every interface it is attached to:
    /// one set of series, labelled with all of them (`eth0,eth1`).
    metrics: XdpMetrics,
    /// When a failed counter read was last logged.
    warned: Option<Instant>,
}

impl Gate {
    /// Loads, keys and attaches the program; with `handoff` the ACK path is
    /// on from the first packet (events wait in the ring until the loop
    /// takes them, rather than reaching the kernel and being reset).
    fn start(
        plan: &Plan,
        mode: AttachMode,
        settings: Settings,
        own: Option<Secret>,
        handoff: bool,
        takeover: Option<&takeover::Offer>,
    ) -> Result<Self> {
        let secret = match (takeover, own) {
            (Some(o), Some(s)) if s != o.secret => bail!(
                "--takeover: the secret file differs from the running instance's secret, so \
                 cookies it issued would fail here; restart instead, or use its secret"
            ),
            (Some(o), _) => o.secret.clone(),
            (None, Some(s)) => s,
            (None, None) => Secret::random(),
        };
        let r = Responder::load()?;
        let mut g = Gate {
            r,
            mode,
            secret,
            settings,
            epoch: current_epoch(plan.epoch_secs),
            handoff,
            metrics: XdpMetrics::new(&plan.interfaces.join(",")),
            warned: None,
        };
        g.protect(plan)?;
        g.r.install_keys(&g.secret, g.epoch, &g.settings)?;
        g.r.set_handoff(handoff)?;
        match takeover {
            None => {
                for iface in &plan.interfaces {
                    g.r.attach(iface, mode)?;
                }
            }
            Some(o) => {
                let mut theirs: Vec<&String> = o.links.iter().map(|(i, _, _)| i).collect();
                let mut ours: Vec<&String> = plan.interfaces.iter().collect();
                theirs.sort();
                ours.sort();
                if theirs != ours || o.epoch_secs != plan.epoch_secs {
                    bail!(
                        "--takeover: the running instance serves {theirs:?} with epoch {}s; this \
                         configuration has {ours:?} with epoch {}s: they must match",
                        o.epoch_secs,
                        plan.epoch_secs
                    );
                }
                for (iface, m, id) in &o.links {
                    g.r.take_over(iface, *m, *id)?;
                }
            }
        }
        Ok(g)
    }

    /// Protects `plan`'s ADDR:PORTs, replacing the set in place: kept
    /// ones never stop being answered. Server-first SYN-ACKs are only
    /// remembered when this instance takes the flows (handoff).
    fn protect(&mut self, plan: &Plan) -> Result<()> {
        let set: Vec<(SocketAddr, bool)> = plan
            .protected()
            .into_iter()
            .map(|(a, sf)| (a, sf && self.handoff))
            .collect();
        let per_service: Vec<(SocketAddr, &AccessList)> = plan
            .services
            .iter()
            .filter(|s| !s.acl.is_empty())
            .flat_map(|s| s.listen.iter().map(move |l| (*l, &s.acl)))
            .collect();
        self.r.reconfigure(&set, &plan.acl, &per_service)?;
        Ok(())
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

    /// Publishes the XDP counters. A failed read (the map lookup needs a
    /// file descriptor for the CPU list, and descriptors can run out) is
    /// logged once a minute at most and never stops the engine.
    fn publish(&mut self) {
        match self.r.counters() {
            Ok(c) => self.metrics.publish(&c),
            Err(e) => {
                if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    tracing::warn!("reading the XDP counters failed (metrics are stale): {e}");
                }
            }
        }
    }
}

/// One connection: for a client-first service, wait for the client's first
/// byte (or reset it when the timeout passes) before a backend is
/// connected, so a bare handshake never costs a backend connection; then
/// the backend, the PROXY header, and the relay.
async fn serve_one(
    p: &Proxy,
    client: std::net::TcpStream,
    peer: SocketAddr,
    service: SocketAddr,
    route: &Route,
) -> Moved {
    let reset_why = |why, s: tokio::net::TcpStream| route.refuse(why, s, peer, service);
    let client = match client
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(client))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "client socket unusable");
            return Moved::default();
        }
    };
    if !route.server_first.contains(&service) {
        // A silent client is also an idle one.
        let wait = route.first_byte_timeout.min(route.idle_timeout);
        let mut b = [0u8; 1];
        match tokio::time::timeout(wait, client.peek(&mut b)).await {
            Err(_) => {
                reset_why(ResetReason::FirstByteTimeout, client);
                return Moved::default();
            }
            // Closed (or failed) before a byte: nothing to relay.
            Ok(Ok(0)) | Ok(Err(_)) => return Moved::default(),
            Ok(Ok(_)) => {}
        }
    }
    let header = proxyproto::header(route.proxy_protocol, peer, service);
    let Ok((backend, addr, sent)) = route.backends.connect_sending(&header).await else {
        reset_why(ResetReason::NoBackend, client);
        return Moved::default();
    };
    if let Err(e) = sent {
        tracing::debug!(client = %peer, backend = %addr, error = %e, "PROXY header write failed");
        reset(backend);
        reset_why(ResetReason::ProxyHeader, client);
        return Moved::default();
    }
    let o = p.relay.relay(client, backend, route.idle_timeout).await;
    match o.result {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::debug!(client = %peer, backend = %addr, "idle timeout");
        }
        Err(e) => {
            tracing::debug!(client = %peer, backend = %addr, error = %e, "relay failed");
            route.stats.reset(ResetReason::RelayError);
        }
        Ok(()) => {}
    }
    o.moved
}

/// What the engine threads share to take verified flows: the ring, the
/// raw socket for window updates, and the server-first SYN-ACKs the loop
/// retransmits until their ACK arrives.
struct Flows {
    ring: Arc<Ring>,
    sender: Arc<RawSender>,
    retransmit: Arc<Mutex<Retransmitter>>,
}

impl Flows {
    fn new(g: &mut Gate, sender: Arc<RawSender>) -> Result<Self> {
        Ok(Flows {
            ring: Arc::new(Ring::new(g.r.take_handoff_ring()?)),
            sender,
            retransmit: Arc::new(Mutex::new(Retransmitter::new(g.r.take_recent()?))),
        })
    }
}

/// `--xdp-mode off`: a kernel listener per protected ADDR:PORT.
#[derive(Default)]
struct Listeners {
    tasks: JoinSet<()>,
    running: HashMap<SocketAddr, AbortHandle>,
}

impl Listeners {
    /// Listens on `plan`'s addresses: new ones are bound first (if one
    /// fails, nothing changes), then removed ones close.
    async fn apply(&mut self, plan: &Plan, p: &Arc<Proxy>, t: &Arc<Threads>) -> Result<()> {
        let wanted: Vec<SocketAddr> = plan.protected().into_iter().map(|(a, _)| a).collect();
        let mut bound = Vec::new();
        for &addr in wanted.iter().filter(|a| !self.running.contains_key(a)) {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            bound.push((addr, l));
        }
        self.running.retain(|addr, h| {
            let keep = wanted.contains(addr);
            if !keep {
                h.abort();
            }
            keep
        });
        for (addr, l) in bound {
            let h = self.tasks.spawn(accept_loop(l, addr, p.clone(), t.clone()));
            self.running.insert(addr, h);
        }
        Ok(())
    }

    fn close(&mut self) {
        self.tasks.abort_all();
        self.running.clear();
    }
}

async fn accept_loop(l: tokio::net::TcpListener, addr: SocketAddr, p: Arc<Proxy>, t: Arc<Threads>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => match s.into_std() {
                Ok(s) => match p.route(addr) {
                    Some(route) => {
                        p.stats.handoff(None);
                        t.accepted(s, peer, addr, route).await;
                    }
                    None => {
                        p.stats.handoff_failed("no_service");
                        reset(s);
                    }
                },
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

/// What a new flow to one service follows: its backends, PROXY protocol,
/// limits and counters. Replaced as a whole by a reload; a running relay
/// keeps the one it started with.
struct Route {
    backends: Backends,
    proxy_protocol: proxyproto::Mode,
    idle_timeout: Duration,
    max_connections: Option<usize>,
    first_byte_timeout: Duration,
    /// Listen addresses whose server speaks first: their backend is
    /// connected at once, not on the client's first byte.
    server_first: Vec<SocketAddr>,
    source_limits: SourceLimits,
    sources: Arc<Sources>,
    stats: Arc<ServiceStats>,
}

impl Route {
    /// Resets a client of this route, counted under `why`.
    fn refuse(
        &self,
        why: ResetReason,
        client: impl std::os::fd::AsRawFd,
        peer: SocketAddr,
        service: SocketAddr,
    ) {
        tracing::debug!(client = %peer, %service, reason = why.label(), "reset");
        self.stats.reset(why);
        reset(client);
    }
}

/// The services by protected ADDR:PORT, and by name.
#[derive(Default)]
struct Table {
    by_listen: HashMap<SocketAddr, Arc<Route>>,
    by_name: HashMap<String, Arc<Route>>,
}

/// What a service keeps across reloads: its counters and its sources.
type Kept = (Arc<ServiceStats>, Arc<Sources>);

/// The proxy: the service table, the relay, the instance's limit and
/// statistics.
struct Proxy {
    table: RwLock<Arc<Table>>,
    /// Every service's counters and sources by name, also of services a
    /// reload removed (their relays may still run).
    services: Mutex<HashMap<String, Kept>>,
    relay: Box<dyn Relay>,
    stats: Stats,
    active: AtomicUsize,
    limit: AtomicUsize,
}

/// A connection's share of the instance's limit, given back on drop.
struct Slot(Arc<Proxy>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl Proxy {
    fn new(plan: &Plan) -> Arc<Self> {
        let p = Arc::new(Proxy {
            table: RwLock::default(),
            services: Mutex::default(),
            relay: Box::new(TokioRelay::new(plan.pipes())),
            stats: Stats::new(),
            active: AtomicUsize::new(0),
            limit: AtomicUsize::new(plan.max_connections),
        });
        p.configure(plan);
        p
    }

    /// Builds the service table for `plan` and swaps it in; backends that
    /// stay keep their health.
    fn configure(&self, plan: &Plan) {
        let old = self.table.read().unwrap().clone();
        let mut table = Table::default();
        let mut registry = self.services.lock().unwrap();
        for s in &plan.services {
            let (stats, sources) = registry
                .entry(s.name.clone())
                .or_insert_with(|| (Arc::new(ServiceStats::new(&s.name)), Arc::default()))
                .clone();
            let route = Arc::new(Route {
                backends: Backends::with_health(
                    &s.name,
                    &s.backends,
                    s.connect_timeout,
                    s.backend_backoff,
                    old.by_name.get(&s.name).map(|r| &r.backends),
                    s.health_check.as_ref(),
                ),
                proxy_protocol: s.proxy_protocol,
                idle_timeout: s.idle_timeout,
                max_connections: s.max_connections,
                first_byte_timeout: s.first_byte_timeout,
                server_first: s.server_first.clone(),
                source_limits: SourceLimits {
                    max: s.per_source_max,
                    rate: s.per_source_rate,
                    prefix_v4: plan.source_prefix_v4,
                    prefix_v6: plan.source_prefix_v6,
                },
                sources,
                stats,
            });
            for l in &s.listen {
                table.by_listen.insert(*l, route.clone());
            }
            table.by_name.insert(s.name.clone(), route);
        }
        // A removed service's checks stop now, not when its last relay
        // (which keeps the old route) ends.
        for (name, r) in &old.by_name {
            if !table.by_name.contains_key(name) {
                r.backends.stop_checks();
            }
        }
        self.limit.store(plan.max_connections, Relaxed);
        *self.table.write().unwrap() = Arc::new(table);
    }

    fn route(&self, service: SocketAddr) -> Option<Arc<Route>> {
        self.table.read().unwrap().by_listen.get(&service).cloned()
    }

    fn backend_count(&self) -> usize {
        let t = self.table.read().unwrap().clone();
        t.by_name.values().map(|r| r.backends.len()).sum()
    }

    /// Once per poll: backend health, and sources with nothing open.
    fn refresh(&self) {
        let t = self.table.read().unwrap().clone();
        for r in t.by_name.values() {
            r.backends.refresh_health();
        }
        let now = Instant::now();
        for (_, sources) in self.services.lock().unwrap().values() {
            sources.sweep(now);
        }
    }

    fn line(&self) -> String {
        let all: Vec<_> = self
            .services
            .lock()
            .unwrap()
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        self.stats.line(&all)
    }

    /// A client connection (materialized, or accepted) within the limits:
    /// relayed on a task, or reset at once.
    fn open(
        self: &Arc<Self>,
        client: std::net::TcpStream,
        peer: SocketAddr,
        service: SocketAddr,
        route: Arc<Route>,
    ) {
        let refuse = |why, client: std::net::TcpStream| route.refuse(why, client, peer, service);
        if self.active.fetch_add(1, Relaxed) >= self.limit.load(Relaxed) {
            self.active.fetch_sub(1, Relaxed);
            return refuse(ResetReason::Limit, client);
        }
        let slot = Slot(self.clone());
        if route
            .max_connections
            .is_some_and(|m| route.stats.active.load(Relaxed) as usize >= m)
        {
            return refuse(ResetReason::ServiceLimit, client);
        }
        let admitted = match route
            .sources
            .admit(peer.ip(), &route.source_limits, Instant::now())
        {
            Ok(a) => a,
            Err(Refusal::Concurrent) => return refuse(ResetReason::SourceLimit, client),
            Err(Refusal::Rate) => return refuse(ResetReason::SourceRate, client),
        };
        route.stats.opened();
        let start = Instant::now();
        let relay = self.clone();
        tokio::spawn(async move {
            let moved = serve_one(&relay, client, peer, service, &route).await;
            route.stats.closed(start.elapsed(), moved);
            drop((admitted, slot));
        });
    }

    /// Waits for running relays, up to the grace period.
    async fn drain(&self, signame: &str, grace: Duration) {
        tracing::info!(
            "{signame}, draining {} connections (grace {grace:?})",
            self.active.load(Relaxed),
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.active.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
