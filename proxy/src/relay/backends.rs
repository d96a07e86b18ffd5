//! Backend selection: smooth weighted round-robin over a service's
//! backends, skipping those that are down. A backend is down
//!
//! * passively, for the back-off period after a real connect to it was
//!   refused or timed out. When the back-off runs out, the first connection
//!   that picks the backend is its one probe: while the probe connects,
//!   other connections skip the backend (to the backends that are up, or,
//!   when none is, they wait for the probe's outcome, up to the connect
//!   timeout, instead of connecting too). The probe's success brings the
//!   backend up; its failure starts another back-off.
//! * actively, while its health check says so ([`super::health`]: `fall`
//!   failed checks in a row). `rise` passed checks in a row bring it up and
//!   end a back-off too.
//!
//! A backend takes new connections only when neither says down. A failed
//! connect does not count as a failed check, and a failed check starts no
//! back-off. When every backend is down, connections fail open: they try
//! the down backends anyway, but only through single probes, so at most one
//! connection at a time waits on each dead backend.
//!
//! A local error ([`is_local`]: out of descriptors, ports, buffers or
//! memory) says nothing about the backend: it is counted as
//! `reason="local"` and marks nothing down.
//!
//! A backend's health and series outlive a reload that keeps it. Health
//! checks belong to the [`Backends`] that started them: they stop when it
//! is dropped, when a newer one is built from it, or on
//! [`Backends::stop_checks`].

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::watch, task::AbortHandle};

use super::{
    health::{self, Checker, HealthCheck, Outcome, RiseFall},
    uring_connect,
};
use crate::{config::Backend, telemetry::metrics::BackendMetrics};

/// Whether a failed connect or check is ours rather than the backend's:
/// out of file descriptors (EMFILE, ENFILE), local ports or addresses
/// (EADDRNOTAVAIL), buffers (ENOBUFS) or memory (ENOMEM).
pub fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The probe of a backend whose back-off ran out.
#[derive(Clone, Copy, Debug, Default)]
struct ProbeRound {
    running: bool,
    /// Probes started so far.
    round: u64,
    /// The last finished probe connected.
    ok: bool,
}

/// Where a new connection may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eligible {
    Up,
    /// The back-off ran out: one connection probes it.
    Probe,
    Down,
}

/// One backend's health and series.
pub struct BackendState {
    pub addr: SocketAddr,
    service: String,
    metrics: BackendMetrics,
    /// The back-off after a failed connect.
    down_until: Mutex<Option<Instant>>,
    /// The health check's verdict (false without checks).
    check_down: AtomicBool,
    probe: watch::Sender<ProbeRound>,
}

/// The probe's claim; dropping it publishes its outcome (failure, unless
/// `ok` was set, so a cancelled probe frees the backend too).
struct ProbeGuard<'a> {
    slot: &'a watch::Sender<ProbeRound>,
    ok: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        let ok = self.ok;
        self.slot.send_modify(|p| {
            p.running = false;
            p.ok = ok;
        });
    }
}

impl BackendState {
    fn new(service: &str, addr: SocketAddr) -> Self {
        BackendState {
            addr,
            service: service.to_string(),
            metrics: BackendMetrics::new(service, addr),
            down_until: Mutex::new(None),
            check_down: AtomicBool::new(false),
            probe: watch::channel(ProbeRound::default()).0,
        }
    }

    fn eligible(&self, now: Instant) -> Eligible {
        if self.check_down.load(Ordering::Relaxed) {
            return Eligible::Down;
        }
        match *self.down_until.lock().unwrap() {
            None => Eligible::Up,
            Some(t) if now >= t => Eligible::Probe,
            Some(_) => Eligible::Down,
        }
    }

    fn is_up(&self, now: Instant) -> bool {
        self.eligible(now) != Eligible::Down
    }

    /// Sets `ackgate_backend_up`.
    fn publish(&self) {
        let up = self.is_up(Instant::now());
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Becomes the backend's one probe, unless another connection is.
    fn claim_probe(&self) -> Option<ProbeGuard<'_>> {
        let claimed = self.probe.send_if_modified(|p| {
            if p.running {
                return false;
            }
            p.running = true;
            p.round += 1;
            true
        });
        // Not `then_some`: a guard built and dropped would end the probe.
        if !claimed {
            return None;
        }
        Some(ProbeGuard {
            slot: &self.probe,
            ok: false,
        })
    }

    /// Waits up to `wait` for the running probe's outcome: whether it
    /// connected (false if it is still connecting then).
    async fn probe_outcome(&self, wait: Duration) -> bool {
        let mut rx = self.probe.subscribe();
        let now = *rx.borrow_and_update();
        if !now.running {
            return now.ok;
        }
        let done = rx.wait_for(|p| !p.running || p.round != now.round);
        let ok = match tokio::time::timeout(wait, done).await {
            Ok(Ok(p)) => p.ok,
            _ => false,
        };
        ok
    }

    /// What the health check says (up without checks).
    pub(crate) fn checks_up(&self) -> bool {
        !self.check_down.load(Ordering::Relaxed)
    }

    /// One health check's outcome, fed to the backend's rise/fall counts.
    pub(crate) fn health_checked(&self, c: &Checker, machine: &mut RiseFall, o: &Outcome) {
        self.metrics.health_check(o.label());
        let ok = match o {
            Outcome::Ok => true,
            Outcome::Failed(why) => {
                tracing::debug!(service = %self.service, backend = %self.addr, error = %why, "health check failed");
                false
            }
            Outcome::Local(e) => {
                tracing::debug!(service = %self.service, backend = %self.addr, error = %e, "health check failed locally; not counted");
                return;
            }
        };
        match machine.record(ok) {
            None => return,
            Some(true) => {
                self.check_down.store(false, Ordering::Relaxed);
                self.down_until.lock().unwrap().take();
                tracing::info!(service = %self.service, backend = %self.addr, check = c.kind.label(), passed = c.rise, "backend up: health check passed");
            }
            Some(false) => {
                self.check_down.store(true, Ordering::Relaxed);
                let why = match o {
                    Outcome::Failed(why) => why.as_str(),
                    _ => "",
                };
                tracing::warn!(service = %self.service, backend = %self.addr, check = c.kind.label(), failed = c.fall, error = %why, "backend down: health check failed");
            }
        }
        self.publish();
    }

    /// No health check any more: its verdict goes with it.
    fn unchecked(&self) {
        if self.check_down.swap(false, Ordering::Relaxed) {
            tracing::info!(service = %self.service, backend = %self.addr, "backend up: no health check any more");
            self.publish();
        }
    }
}

pub struct Backends {
    states: Vec<Arc<BackendState>>,
    /// Indices into `states`, each `weight` times, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    backoff: Duration,
    connect_timeout: Duration,
    /// The health check tasks this started.
    checks: Mutex<Vec<AbortHandle>>,
}

/// Every backend was tried and none accepted.
#[derive(Debug)]
pub struct NoBackend;

impl Backends {
    /// `service`'s backends, without health checks; the state of any
    /// backend `previous` already had is carried over, and `previous`'s
    /// health checks stop.
    pub fn new(
        service: &str,
        list: &[Backend],
        connect_timeout: Duration,
        backoff: Duration,
        previous: Option<&Backends>,
    ) -> Self {
        Self::with_health(service, list, connect_timeout, backoff, previous, None)
    }

    /// As [`Backends::new`], and with `health` (validated by
    /// [`HealthCheck::validate`]) one check task per backend, started at
    /// once on the current Tokio runtime (call this within one), spread
    /// over the interval. They run until this is dropped, a newer
    /// `Backends` is built from it, or [`Backends::stop_checks`]. The check
    /// verdict of a backend `previous` had carries over; without `health`
    /// it is dropped (the backend is up unless in back-off).
    pub fn with_health(
        service: &str,
        list: &[Backend],
        connect_timeout: Duration,
        backoff: Duration,
        previous: Option<&Backends>,
        health: Option<&HealthCheck>,
    ) -> Self {
        let states = list
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.states.iter().find(|s| s.addr == b.addr).cloned())
                    .unwrap_or_else(|| Arc::new(BackendState::new(service, b.addr)))
            })
            .collect();
        if let Some(p) = previous {
            p.stop_checks();
        }
        let backends = Backends {
            states,
            schedule: schedule(&list.iter().map(|b| b.weight).collect::<Vec<_>>()),
            next: AtomicUsize::new(0),
            backoff,
            connect_timeout,
            checks: Mutex::default(),
        };
        let checker = match health.map(HealthCheck::checker) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                tracing::error!(service, error = %e, "health checks not started");
                None
            }
        };
        match (checker, tokio::runtime::Handle::try_current()) {
            (Some(c), Ok(rt)) => backends.start_checks(&rt, Arc::new(c)),
            (Some(_), Err(_)) => {
                tracing::error!(service, "health checks not started: no Tokio runtime");
                backends.states.iter().for_each(|s| s.unchecked());
            }
            (None, _) => backends.states.iter().for_each(|s| s.unchecked()),
        }
        backends
    }

    fn start_checks(&self, rt: &tokio::runtime::Handle, c: Arc<Checker>) {
        let n = u32::try_from(self.states.len()).unwrap_or(u32::MAX).max(1);
        let tasks = self
            .states
            .iter()
            .zip(0u32..)
            .map(|(s, i)| {
                let first = c.interval / n * i;
                rt.spawn(health::run(c.clone(), s.clone(), first))
                    .abort_handle()
            })
            .collect();
        *self.checks.lock().unwrap() = tasks;
    }

    /// Stops the health checks this started (a reload that removes the
    /// service calls it on the old one).
    pub fn stop_checks(&self) {
        for t in self.checks.lock().unwrap().drain(..) {
            t.abort();
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

    /// Whether new connections go to `addr` now (it is not in back-off,
    /// and its health check, if any, says up); `None` if it is not one of
    /// these backends.
    pub fn is_up(&self, addr: SocketAddr) -> Option<bool> {
        let now = Instant::now();
        self.states
            .iter()
            .find(|s| s.addr == addr)
            .map(|s| s.is_up(now))
    }

    fn mark_down(&self, b: &BackendState) {
        let now = Instant::now();
        let was = b.down_until.lock().unwrap().replace(now + self.backoff);
        // Once per transition: not again for a failed probe, nor for a
        // backend the health check has down already.
        if was.is_none() && b.checks_up() {
            tracing::warn!(service = %b.service, backend = %b.addr, backoff = ?self.backoff, "backend down");
        }
        b.metrics.up.set(0.0);
    }

    fn mark_up(&self, b: &BackendState) {
        if b.down_until.lock().unwrap().take().is_some() && b.checks_up() {
            tracing::info!(service = %b.service, backend = %b.addr, "backend up");
        }
        b.publish();
    }

    /// Re-publishes `ackgate_backend_up`: a backend whose back-off ran out
    /// is eligible again.
    pub fn refresh_health(&self) {
        for b in &self.states {
            b.publish();
        }
    }

    /// Every backend once, from the schedule's next pick on.
    fn rotation(&self) -> Vec<usize> {
        let n = self.states.len();
        let first = self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len()];
        (0..n).map(|k| (first + k) % n).collect()
    }

    /// Connects to the next backend that is up, trying each at most once;
    /// when none takes it, to the down ones through their single probes
    /// (see the module's documentation). Returns the stream and the
    /// backend's address.
    pub async fn connect(&self) -> Result<(TcpStream, SocketAddr), NoBackend> {
        self.connect_sending(&[]).await.map(|(s, a, _)| (s, a))
    }

    /// [`connect`](Self::connect), then `header` sent first: on an io_uring
    /// engine thread both go through its ring as linked operations. The
    /// header's failure leaves the backend connected (and counted up).
    pub async fn connect_sending(
        &self,
        header: &[u8],
    ) -> Result<(TcpStream, SocketAddr, io::Result<()>), NoBackend> {
        if self.states.is_empty() {
            return Err(NoBackend);
        }
        let order = self.rotation();
        let mut tried = vec![false; order.len()];
        for &i in &order {
            let b = &*self.states[i];
            let probe = match b.eligible(Instant::now()) {
                Eligible::Up => None,
                Eligible::Probe => match b.claim_probe() {
                    Some(p) => Some(p),
                    // Another connection is probing it.
                    None => continue,
                },
                Eligible::Down => continue,
            };
            tried[i] = true;
            if let Some((s, sent)) = self.attempt(b, probe, header).await {
                return Ok((s, b.addr, sent));
            }
        }
        // No backend that was up took it: fail open, one probe at a time.
        for &i in &order {
            if tried[i] {
                continue;
            }
            let b = &*self.states[i];
            let probe = if b.eligible(Instant::now()) == Eligible::Up {
                None
            } else if let Some(p) = b.claim_probe() {
                Some(p)
            } else if b.probe_outcome(self.connect_timeout).await {
                None
            } else {
                continue;
            };
            if let Some((s, sent)) = self.attempt(b, probe, header).await {
                return Ok((s, b.addr, sent));
            }
        }
        Err(NoBackend)
    }

    /// One connect to `b`, counted; marks `b` up or down (not for a local
    /// error) and, as its probe, publishes the outcome.
    async fn attempt(
        &self,
        b: &BackendState,
        probe: Option<ProbeGuard<'_>>,
        header: &[u8],
    ) -> Option<(TcpStream, io::Result<()>)> {
        let t = Instant::now();
        let ring = uring_connect::available();
        b.metrics.attempted(ring);
        let (r, sent) = if ring {
            match uring_connect::connect(b.addr, header.to_vec(), self.connect_timeout).await {
                Ok(Some(c)) => (Some(c.stream.and_then(TcpStream::from_std)), Some(c.header)),
                Ok(None) => (None, None),
                Err(e) => (Some(Err(e)), None),
            }
        } else {
            let r = tokio::time::timeout(self.connect_timeout, TcpStream::connect(b.addr)).await;
            (r.ok(), None)
        };
        let stream = self.settle(b, r, t);
        if let Some(mut p) = probe {
            p.ok = stream.is_some();
        }
        let mut stream = stream?;
        let sent = match sent {
            Some(sent) => sent,
            None if header.is_empty() => Ok(()),
            None => stream.write_all(header).await,
        };
        Some((stream, sent))
    }

    /// Counts a connect to `b` started at `t` (`None`: it timed out) and
    /// marks `b` up or down by it.
    fn settle(
        &self,
        b: &BackendState,
        r: Option<io::Result<TcpStream>>,
        t: Instant,
    ) -> Option<TcpStream> {
        let m = &b.metrics;
        match r {
            Some(Ok(s)) => {
                m.connects.increment(1);
                m.latency.record(t.elapsed().as_secs_f64());
                self.mark_up(b);
                Some(s)
            }
            Some(Err(e)) if is_local(&e) => {
                tracing::debug!(service = %b.service, backend = %b.addr, error = %e, "backend connect failed locally; the backend stays up");
                m.failed(Some(&e));
                None
            }
            Some(Err(e)) => {
                tracing::debug!(service = %b.service, backend = %b.addr, error = %e, "backend connect failed");
                m.failed(Some(&e));
                self.mark_down(b);
                None
            }
            None => {
                tracing::debug!(service = %b.service, backend = %b.addr, timeout = ?self.connect_timeout, "backend connect timed out");
                m.failed(None);
                self.mark_down(b);
                None
            }
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop_checks();
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
    use std::{io, net::SocketAddr, time::Duration};

    use super::{is_local, schedule, Backends, Eligible, Instant};
    use crate::config::Backend;

    fn backends(addrs: &[SocketAddr], backoff: Duration) -> Backends {
        let list: Vec<Backend> = addrs
            .iter()
            .map(|&addr| Backend { addr, weight: 1 })
            .collect();
        Backends::new("test", &list, Duration::from_millis(500), backoff, None)
    }

    /// A loopback address nothing listens on: connects are refused.
    fn refusing() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn local_errors_are_ours() {
        for e in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::ENOBUFS,
            libc::ENOMEM,
        ] {
            assert!(is_local(&io::Error::from_raw_os_error(e)), "{e}");
        }
        for e in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ] {
            assert!(!is_local(&io::Error::from_raw_os_error(e)), "{e}");
        }
        assert!(!is_local(&io::ErrorKind::TimedOut.into()));
        assert!(!is_local(&io::Error::other("EMFILE")));
    }

    #[test]
    fn a_local_error_marks_nothing_down_a_refusal_does() {
        let addr = refusing();
        let b = backends(&[addr], Duration::from_secs(60));
        let s = &b.states[0];
        for e in [libc::EMFILE, libc::EADDRNOTAVAIL, libc::ENOBUFS] {
            let r = b.settle(
                s,
                Some(Err(io::Error::from_raw_os_error(e))),
                Instant::now(),
            );
            assert!(r.is_none());
            assert_eq!(b.is_up(addr), Some(true), "{e}");
        }
        b.settle(
            s,
            Some(Err(io::ErrorKind::ConnectionRefused.into())),
            Instant::now(),
        );
        assert_eq!(b.is_up(addr), Some(false));
        assert_eq!(b.is_up(refusing()), None);
    }

    #[tokio::test]
    async fn after_the_back_off_one_connection_probes() {
        let addr = refusing();
        let b = backends(&[addr], Duration::from_millis(100));
        assert!(b.connect().await.is_err());
        let s = &b.states[0];
        assert_eq!(s.eligible(Instant::now()), Eligible::Down);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.eligible(Instant::now()), Eligible::Probe);
        assert_eq!(b.is_up(addr), Some(true));
        let probe = s.claim_probe().expect("the first claims the probe");
        assert!(s.claim_probe().is_none(), "a second probe while one runs");
        // A failed claim leaves the running probe alone.
        assert!(s.claim_probe().is_none(), "a third probe while one runs");
        // A waiter learns the outcome when the probe ends (dropped: failed).
        let (outcome, ()) = tokio::join!(s.probe_outcome(Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(probe);
        });
        assert!(!outcome);
        let mut again = s.claim_probe().expect("free again once it ended");
        again.ok = true;
        let waiter = s.probe_outcome(Duration::from_secs(5));
        drop(again);
        assert!(waiter.await, "a finished probe's outcome is kept");
        // A waiter gives up after its wait.
        let _stuck = s.claim_probe().unwrap();
        let t = Instant::now();
        assert!(!s.probe_outcome(Duration::from_millis(50)).await);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn no_backends_is_no_backend() {
        let b = backends(&[], Duration::from_secs(1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(rt.block_on(b.connect()).is_err());
    }

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
