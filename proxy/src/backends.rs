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

pub struct Backends {
    addrs: Vec<SocketAddr>,
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
            addrs,
            next: AtomicUsize::new(0),
            down_until: Mutex::new(vec![None; n]),
            backoff,
            connect_timeout,
        }
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        self.down_until.lock().unwrap()[i].is_none_or(|t| now >= t)
    }

    fn mark_down(&self, i: usize) {
        self.down_until.lock().unwrap()[i] = Some(Instant::now() + self.backoff);
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
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok((s, addr)),
                _ => self.mark_down(i),
            }
        }
        Err(NoBackend)
    }
}
