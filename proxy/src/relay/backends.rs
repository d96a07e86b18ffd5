//! Backend selection: smooth weighted round-robin over a service's
//! backends, skipping those marked down; a backend that refuses or times
//! out is marked down for a back-off period and the next one is tried.
//! A backend's health and series outlive a reload that keeps it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::{config::Backend, telemetry::metrics::BackendMetrics};

/// One backend's health and series.
pub struct BackendState {
    pub addr: SocketAddr,
    metrics: BackendMetrics,
    down_until: Mutex<Option<Instant>>,
}

impl BackendState {
    fn new(service: &str, addr: SocketAddr) -> Self {
        BackendState {
            addr,
            metrics: BackendMetrics::new(service, addr),
            down_until: Mutex::new(None),
        }
    }

    fn is_up(&self, now: Instant) -> bool {
        self.down_until.lock().unwrap().is_none_or(|t| now >= t)
    }
}

pub struct Backends {
    states: Vec<Arc<BackendState>>,
    /// Indices into `states`, each `weight` times, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    backoff: Duration,
    connect_timeout: Duration,
}

/// Every backend was tried and none accepted.
#[derive(Debug)]
pub struct NoBackend;

impl Backends {
    /// `service`'s backends; the state of any backend `previous` already
    /// had is carried over.
    pub fn new(
        service: &str,
        list: &[Backend],
        connect_timeout: Duration,
        backoff: Duration,
        previous: Option<&Backends>,
    ) -> Self {
        let states = list
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.states.iter().find(|s| s.addr == b.addr).cloned())
                    .unwrap_or_else(|| Arc::new(BackendState::new(service, b.addr)))
            })
            .collect();
        Backends {
            states,
            schedule: schedule(&list.iter().map(|b| b.weight).collect::<Vec<_>>()),
            next: AtomicUsize::new(0),
            backoff,
            connect_timeout,
        }
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.states.iter().map(|s| s.addr)
    }

    fn mark_down(&self, b: &BackendState) {
        let now = Instant::now();
        let was = b.down_until.lock().unwrap().replace(now + self.backoff);
        if was.is_none_or(|t| now >= t) {
            tracing::warn!(backend = %b.addr, backoff = ?self.backoff, "backend down");
        }
        b.metrics.up.set(0.0);
    }

    fn mark_up(&self, b: &BackendState) {
        if b.down_until.lock().unwrap().take().is_some() {
            tracing::info!(backend = %b.addr, "backend up");
        }
        b.metrics.up.set(1.0);
    }

    /// Re-publishes `ackgate_backend_up`: a backend whose back-off ran out
    /// is eligible again.
    pub fn refresh_health(&self) {
        let now = Instant::now();
        for b in &self.states {
            b.metrics.up.set(if b.is_up(now) { 1.0 } else { 0.0 });
        }
    }

    /// The order to try backends in for one connection: the schedule's
    /// next pick, then the others; healthy ones first, and all of them if
    /// none is healthy.
    fn order(&self) -> Vec<usize> {
        let n = self.states.len();
        let first = self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len()];
        let now = Instant::now();
        let all: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        let healthy: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| self.states[i].is_up(now))
            .collect();
        if healthy.is_empty() {
            all
        } else {
            healthy
        }
    }

    /// Connects to the next healthy backend, trying each at most once.
    /// Returns the stream and the backend's address.
    pub async fn connect(&self) -> Result<(TcpStream, SocketAddr), NoBackend> {
        for i in self.order() {
            let b = &self.states[i];
            let m = &b.metrics;
            let t = Instant::now();
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(b.addr)).await {
                Ok(Ok(s)) => {
                    m.connects.increment(1);
                    m.latency.record(t.elapsed().as_secs_f64());
                    self.mark_up(b);
                    return Ok((s, b.addr));
                }
                Ok(Err(e)) => {
                    tracing::debug!(backend = %b.addr, error = %e, "backend connect failed");
                    m.failed(Some(&e));
                    self.mark_down(b);
                }
                Err(_) => {
                    tracing::debug!(backend = %b.addr, timeout = ?self.connect_timeout, "backend connect timed out");
                    m.failed(None);
                    self.mark_down(b);
                }
            }
        }
        Err(NoBackend)
    }
}

/// Smooth weighted round-robin, unrolled: each index appears `weight`
/// times, spread out (weights 5,1,1 give a a b a c a a, not a a a a a b c).
fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("at least one backend");
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::schedule;

    #[test]
    fn weights_are_honoured_and_spread() {
        let s = schedule(&[5, 1, 1]);
        assert_eq!(s, [0, 0, 1, 0, 2, 0, 0]);
        let s = schedule(&[1, 3]);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 3);
        assert_eq!(s.len(), 4);
        assert_eq!(schedule(&[1, 1, 1]), [0, 1, 2]);
    }
}
