//! Backend selection: round-robin over the configured backends, skipping
//! those marked down; a backend that refuses or times out is marked down for
//! a back-off period and the next one is tried.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::telemetry::metrics::BackendMetrics;

pub struct Backends {
    addrs: Vec<SocketAddr>,
    metrics: Vec<BackendMetrics>,
    next: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
    backoff: Duration,
    connect_timeout: Duration,
}

/// Every backend was tried and none accepted.
#[derive(Debug)]
pub struct NoBackend;

impl Backends {
    pub fn new(addrs: Vec<SocketAddr>, connect_timeout: Duration, backoff: Duration) -> Self {
        let n = addrs.len();
        Backends {
            metrics: addrs.iter().map(|&a| BackendMetrics::new(a)).collect(),
            addrs,
            next: AtomicUsize::new(0),
            down_until: Mutex::new(vec![None; n]),
            backoff,
            connect_timeout,
        }
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        self.down_until.lock().unwrap()[i].is_none_or(|t| now >= t)
    }

    fn mark_down(&self, i: usize) {
        let now = Instant::now();
        let was = self.down_until.lock().unwrap()[i].replace(now + self.backoff);
        if was.is_none_or(|t| now >= t) {
            tracing::warn!(backend = %self.addrs[i], backoff = ?self.backoff, "backend down");
        }
        self.metrics[i].up.set(0.0);
    }

    fn mark_up(&self, i: usize) {
        if self.down_until.lock().unwrap()[i].take().is_some() {
            tracing::info!(backend = %self.addrs[i], "backend up");
        }
        self.metrics[i].up.set(1.0);
    }

    /// Re-publishes `ackgate_backend_up`: a backend whose back-off ran out
    /// is eligible again.
    pub fn refresh_health(&self) {
        let now = Instant::now();
        for i in 0..self.addrs.len() {
            self.metrics[i]
                .up
                .set(if self.is_up(i, now) { 1.0 } else { 0.0 });
        }
    }

    /// Connects to the next healthy backend, trying each at most once.
    /// Returns the stream and the backend's address.
    pub async fn connect(&self) -> Result<(TcpStream, SocketAddr), NoBackend> {
        let n = self.addrs.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Healthy backends first; if all are down, try them anyway.
        let order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        let healthy: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| self.is_up(i, now))
            .collect();
        let candidates = if healthy.is_empty() { order } else { healthy };
        for i in candidates {
            let addr = self.addrs[i];
            let m = &self.metrics[i];
            let t = Instant::now();
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    m.connects.increment(1);
                    m.latency.record(t.elapsed().as_secs_f64());
                    self.mark_up(i);
                    return Ok((s, addr));
                }
                Ok(Err(e)) => {
                    tracing::debug!(backend = %addr, error = %e, "backend connect failed");
                    m.failed(Some(&e));
                    self.mark_down(i);
                }
                Err(_) => {
                    tracing::debug!(backend = %addr, timeout = ?self.connect_timeout, "backend connect timed out");
                    m.failed(None);
                    self.mark_down(i);
                }
            }
        }
        Err(NoBackend)
    }
}
