//! The engine threads: one per `--threads`, each a tokio runtime of its own.
//! A thread materializes the verified flows it is sent (through its own
//! io_uring ring in the io_uring engine) and relays them itself, so a flow's
//! handoff and its bytes stay on one core and the threads share only the
//! proxy's tables and counters. The loop's thread reads the handoff ring,
//! decodes and routes, and deals batches out in turn; accepted connections
//! (`--xdp-mode off`) are dealt the same way.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use super::{Proxy, Route};
use crate::{
    handoff::{materialize, uring::UringHandoff},
    sys::{clock, raw::RawSender},
    xdp::ring::Flow,
};

/// Batches queued per thread before the loop waits (and the handoff ring,
/// not this queue, fills).
const QUEUE: usize = 64;
/// Fewest flows the io_uring engine submits as one batch of chains: below
/// that, a batch's chains measured slower than the same flows' system calls
/// (`ackgate-bench handoff`; with wrk's 8 clients, batches of 2-8 cost 0.73x
/// tokio's connection rate).
pub const URING_MIN_BATCH: usize = super::BATCH as usize;

/// A verified flow routed to its service, on its way to a thread.
pub struct Verified {
    pub flow: Flow,
    pub route: Arc<Route>,
    /// When XDP verified it (CLOCK_MONOTONIC; 0 from an old program).
    pub ktime_ns: u64,
}

/// What a thread is sent.
enum Job {
    Verified(Vec<Verified>),
    Accepted {
        client: std::net::TcpStream,
        peer: SocketAddr,
        service: SocketAddr,
        route: Arc<Route>,
    },
}

/// How a thread materializes verified flows: the raw socket for window
/// updates, its ring (the io_uring engine), the scale XDP advertised.
pub struct Handoff {
    pub sender: Arc<RawSender>,
    pub uring: Option<UringHandoff>,
    pub wscale: u8,
}

/// The threads' queues, dealt to in turn.
pub struct Threads {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    /// Jobs sent and not yet taken: a drain waits for them too.
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
            let (p, pending) = (p.clone(), pending.clone());
            std::thread::Builder::new()
                .name(format!("ackgate-{i}"))
                .spawn(move || rt.block_on(run(p, h, rx, pending)))
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
        self.pending.fetch_add(1, Relaxed);
        if self.queues[i].send(job).await.is_err() {
            // Only a panicked thread drops its queue; the job's sockets
            // close with it.
            self.pending.fetch_sub(1, Relaxed);
            tracing::error!("engine thread ackgate-{i} is gone");
        }
    }

    /// A batch of verified flows, to the next thread.
    pub async fn verified(&self, batch: Vec<Verified>) {
        if !batch.is_empty() {
            self.send(Job::Verified(batch)).await
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
        self.send(Job::Accepted {
            client,
            peer,
            service,
            route,
        })
        .await
    }

    /// Waits until every job sent has been taken (its connections are then
    /// counted as active), up to `wait`.
    pub async fn settle(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.pending.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One thread's loop: jobs in, relays spawned on this thread's runtime.
async fn run(
    p: Arc<Proxy>,
    mut handoff: Option<Handoff>,
    mut jobs: mpsc::Receiver<Job>,
    pending: Arc<AtomicUsize>,
) {
    let mut held = None;
    loop {
        let job = match held.take() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        // Jobs this pass takes: counted off once their connections are
        // open (and so counted as active).
        let mut taken = 1;
        match job {
            Job::Verified(mut batch) => {
                // Batches that queued up while this thread was busy go
                // through together: a backlog fills io_uring submissions.
                while batch.len() < URING_MIN_BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Verified(more)) => {
                            taken += 1;
                            batch.extend(more);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                match &mut handoff {
                    Some(h) => h.take(&p, batch),
                    None => tracing::error!("verified flows sent to a thread without a handoff"),
                }
            }
            Job::Accepted {
                client,
                peer,
                service,
                route,
            } => p.open(client, peer, service, route),
        }
        pending.fetch_sub(taken, Relaxed);
    }
}

impl Handoff {
    /// Materializes a batch (one submission with io_uring when it is full),
    /// then opens each connection.
    fn take(&mut self, p: &Arc<Proxy>, batch: Vec<Verified>) {
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
