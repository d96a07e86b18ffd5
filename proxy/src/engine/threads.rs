//! The engine threads: one per `--threads`, each a tokio runtime of its own.
//! Every thread watches the handoff ring; whichever wakes takes the next
//! batch of verified flows off it (under a lock held only while reading),
//! materializes them (through its own io_uring ring in the io_uring engine)
//! and relays them itself. A flow's handoff and its bytes stay on the
//! thread that woke for it, with no hop between threads, and under load the
//! threads take batches side by side. Accepted connections (`--xdp-mode
//! off`) are dealt to the threads in turn.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use ackgate_common::wire;
use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{Proxy, Route, BATCH};
use crate::{
    handoff::{materialize, retransmit::Retransmitter, uring::UringHandoff, HandoffError},
    relay::uring_connect,
    sys::{clock, diag, raw::RawSender},
    xdp::ring::{self, Flow},
};

/// Jobs queued per thread before the sender waits.
const QUEUE: usize = 64;
/// Fewest flows the io_uring engine submits as one batch of chains: below
/// that, a batch's chains measured slower than the same flows' system calls
/// (`ackgate-bench handoff`; with wrk's 8 clients, batches of 2-8 cost 0.73x
/// tokio's connection rate).
const URING_MIN_BATCH: usize = BATCH as usize;

/// The handoff ring, shared by the engine threads.
pub struct Ring {
    ring: Mutex<RingBuf<MapData>>,
    fd: RawFd,
}

impl Ring {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        let fd = ring.as_raw_fd();
        Ring {
            ring: Mutex::new(ring),
            fd,
        }
    }

    /// Up to [`BATCH`] events; a non-empty batch is counted in `pending`
    /// before the lock is let go, so a drain that finds the ring empty
    /// still waits for it.
    fn take(&self, pending: &AtomicUsize) -> Vec<wire::Handoff> {
        let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut events = Vec::new();
        while events.len() < BATCH as usize {
            let Some(item) = r.next() else { break };
            events.extend(ring::event(&item));
        }
        if !events.is_empty() {
            pending.fetch_add(1, Relaxed);
        }
        events
    }
}

/// The ring as one thread's readiness source (each thread registers the
/// ring's descriptor with its own reactor).
struct RingFd(Arc<Ring>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd
    }
}

/// A verified flow routed to its service.
struct Verified {
    flow: Flow,
    route: Arc<Route>,
    /// When XDP verified it (CLOCK_MONOTONIC; 0 from an old program).
    ktime_ns: u64,
}

/// Decodes and routes ring events; a server-first flow's SYN-ACK is no
/// longer retransmitted once its ACK is here.
fn route(p: &Proxy, retransmit: &Mutex<Retransmitter>, events: &[wire::Handoff]) -> Vec<Verified> {
    let mut batch = Vec::with_capacity(events.len());
    for e in events {
        let flow = match Flow::from_event(e) {
            Ok(f) => f,
            Err(err) => {
                tracing::debug!(error = %err, "handoff event rejected");
                p.stats.handoff_failed(err.reason());
                continue;
            }
        };
        // Verified before a reload removed its service: nothing to hand it
        // to. Its next segment reaches the kernel, which resets it.
        let Some(route) = p.route(flow.service) else {
            tracing::debug!(client = %flow.client, service = %flow.service, "handoff for a removed service");
            p.stats.handoff_failed("no_service");
            continue;
        };
        if route.server_first.contains(&flow.service) {
            retransmit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(flow.client, flow.service);
        }
        batch.push(Verified {
            flow,
            route,
            ktime_ns: e.ktime_ns,
        });
    }
    batch
}

/// What a thread is sent.
enum Job {
    /// Taken off the ring by the loop at shutdown.
    Verified(Vec<Verified>),
    Accepted {
        client: std::net::TcpStream,
        peer: SocketAddr,
        service: SocketAddr,
        route: Arc<Route>,
    },
}

/// How a thread takes verified flows: the shared ring and SYN-ACK
/// memory, the raw socket for window updates, its own io_uring ring (the
/// io_uring engine), the scale XDP advertised.
pub struct Handoff {
    pub ring: Arc<Ring>,
    pub retransmit: Arc<Mutex<Retransmitter>>,
    pub sender: Arc<RawSender>,
    pub uring: Option<UringHandoff>,
    pub wscale: u8,
}

/// The engine threads' queues, dealt to in turn.
pub struct Threads {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    /// Batches and connections taken and not yet opened (so not yet counted
    /// as active): a drain waits for them too.
    pending: Arc<AtomicUsize>,
}

impl Threads {
    /// Starts one thread per `handoffs` entry (`None`: the thread only
    /// relays accepted connections).
    pub fn start(p: &Arc<Proxy>, handoffs: Vec<Option<Handoff>>) -> Result<Self> {
        let pending = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::with_capacity(handoffs.len());
        for (i, h) in handoffs.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(QUEUE);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("engine thread runtime")?;
            // The ring is watched from this thread's own reactor.
            let watch = match &h {
                Some(h) => Some(
                    {
                        let _rt = rt.enter();
                        // SAFETY: the descriptor belongs to the ring, which
                        // the RingFd keeps alive as long as it is
                        // registered; nothing closes it before.
                        unsafe {
                            AsyncFd::register_with_interest(
                                RingFd(h.ring.clone()),
                                tokio::io::Interest::READABLE,
                            )
                        }
                    }
                    .map_err(|e| e.into_parts().1)
                    .context("watching the handoff ring buffer")?,
                ),
                None => None,
            };
            let (p, pending) = (p.clone(), pending.clone());
            std::thread::Builder::new()
                .name(format!("ackgate-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        // The io_uring engine connects backends through a
                        // ring of this thread's as well.
                        if h.as_ref().is_some_and(|h| h.uring.is_some()) {
                            if let Err(e) = uring_connect::Connector::install() {
                                tracing::warn!("backend connects by system call on ackgate-{i}: io_uring ring: {e}");
                            }
                        }
                        run(p, h, watch, rx, pending).await
                    })
                })
                .context("starting an engine thread")?;
            queues.push(tx);
        }
        Ok(Threads {
            queues,
            next: AtomicUsize::new(0),
            pending,
        })
    }

    async fn send(&self, job: Job) {
        let i = self.next.fetch_add(1, Relaxed) % self.queues.len();
        if self.queues[i].send(job).await.is_err() {
            // Only a panicked thread drops its queue; the job's sockets
            // close with it.
            self.pending.fetch_sub(1, Relaxed);
            tracing::error!("engine thread ackgate-{i} is gone");
        }
    }

    /// An accepted connection, to the next thread.
    pub async fn accepted(
        &self,
        client: std::net::TcpStream,
        peer: SocketAddr,
        service: SocketAddr,
        route: Arc<Route>,
    ) {
        self.pending.fetch_add(1, Relaxed);
        self.send(Job::Accepted {
            client,
            peer,
            service,
            route,
        })
        .await
    }

    /// At shutdown, once XDP has stopped handing off: what is left on the
    /// ring goes to the threads, then this waits (up to `wait`) until every
    /// flow taken is open, and so counted as active.
    pub async fn finish(
        &self,
        p: &Proxy,
        ring: &Ring,
        retransmit: &Mutex<Retransmitter>,
        wait: Duration,
    ) {
        loop {
            let events = ring.take(&self.pending);
            if events.is_empty() {
                break;
            }
            self.send(Job::Verified(route(p, retransmit, &events)))
                .await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.pending.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One thread's loop: the ring's readiness and jobs in, relays spawned on
/// this thread's runtime.
async fn run(
    p: Arc<Proxy>,
    mut handoff: Option<Handoff>,
    mut watch: Option<AsyncFd<RingFd>>,
    mut jobs: mpsc::Receiver<Job>,
    pending: Arc<AtomicUsize>,
) {
    loop {
        tokio::select! {
            job = jobs.recv() => {
                match job {
                    Some(Job::Verified(batch)) => match &mut handoff {
                        Some(h) => h.open(&p, batch),
                        None => tracing::error!("verified flows sent to a thread without a handoff"),
                    },
                    Some(Job::Accepted { client, peer, service, route }) => {
                        p.open(client, peer, service, route)
                    }
                    None => return,
                }
                pending.fetch_sub(1, Relaxed);
            }
            g = readable(&watch) => {
                let mut g = match g {
                    Ok(g) => g,
                    Err(e) => {
                        // Only a broken reactor gets here. This thread
                        // keeps its relays and dealt jobs; the other
                        // threads go on taking flows off the ring.
                        tracing::error!("an engine thread stops taking verified flows off the ring: {e}");
                        watch = None;
                        continue;
                    }
                };
                if let Some(h) = &mut handoff {
                    // Until the ring is empty. Every thread is woken for a
                    // new event; one that finds the ring empty sleeps again,
                    // and a wake-up after this guard keeps it ready.
                    loop {
                        let events = h.ring.take(&pending);
                        if events.is_empty() {
                            break;
                        }
                        let batch = route(&p, &h.retransmit, &events);
                        h.open(&p, batch);
                        pending.fetch_sub(1, Relaxed);
                        // This thread's relays run between batches.
                        tokio::task::yield_now().await;
                    }
                }
                g.clear_ready();
            }
        }
    }
}

/// The ring's next readiness, or never without one.
async fn readable(
    watch: &Option<AsyncFd<RingFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, RingFd>> {
    match watch {
        Some(w) => w.readable().await,
        None => std::future::pending().await,
    }
}

impl Handoff {
    /// A flow whose 4-tuple is taken: if by a TIME_WAIT socket of an
    /// earlier connection (the client reused its port), that socket is
    /// ended, as the kernel would for a new SYN, and the flow materialized;
    /// `None` if the tuple is held by a live socket (a duplicate event).
    fn after_time_wait(&self, f: &Flow) -> Option<Result<std::net::TcpStream, HandoffError>> {
        match diag::end_time_wait(f.service, f.client) {
            Ok(true) => {
                tracing::debug!(client = %f.client, service = %f.service, "ended the TIME_WAIT socket of a reused client port");
                Some(materialize(f, self.wscale, &self.sender))
            }
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(client = %f.client, service = %f.service, error = %e, "TIME_WAIT lookup failed");
                None
            }
        }
    }

    /// Materializes a batch (one submission with io_uring when it is full),
    /// then opens each connection on this thread.
    fn open(&mut self, p: &Arc<Proxy>, batch: Vec<Verified>) {
        let flows: Vec<Flow> = batch.iter().map(|v| v.flow).collect();
        let made = match &mut self.uring {
            Some(u) if flows.len() >= URING_MIN_BATCH => {
                p.stats.handoff_call(true);
                u.materialize(&flows, self.wscale, &self.sender)
            }
            _ => flows
                .iter()
                .map(|f| {
                    p.stats.handoff_call(false);
                    materialize(f, self.wscale, &self.sender)
                })
                .collect(),
        };
        for (v, made) in batch.into_iter().zip(made) {
            let made = match made {
                Err(e) if e.reason() == "duplicate" => {
                    self.after_time_wait(&v.flow).unwrap_or(Err(e))
                }
                m => m,
            };
            let client = match made {
                Ok(s) => s,
                Err(err) => {
                    tracing::debug!(client = %v.flow.client, service = %v.flow.service, error = %err, "handoff failed");
                    p.stats.handoff_failed(err.reason());
                    continue;
                }
            };
            // Both stamps are CLOCK_MONOTONIC; a zero stamp (an old
            // program) must not record 584 years.
            let latency = (v.ktime_ns != 0)
                .then(|| Duration::from_nanos(clock::monotonic_ns().saturating_sub(v.ktime_ns)));
            p.stats.handoff(latency);
            p.open(client, v.flow.client, v.flow.service, v.route);
        }
    }
}
