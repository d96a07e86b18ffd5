//! Health checks and the single probe after a back-off, against real
//! loopback servers in this process (no root, no namespaces).
//!
//! Each test records its backends' metrics into its own Prometheus
//! recorder and reads the counts from the rendered text.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ackgate::{
    config::Backend,
    relay::{
        backends::Backends,
        health::{CheckKind, HealthCheck},
    },
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

const SERVICE: &str = "health";

fn list(addrs: &[SocketAddr]) -> Vec<Backend> {
    addrs
        .iter()
        .map(|&addr| Backend { addr, weight: 1 })
        .collect()
}

/// Backends whose series go to `rec`; checks start on the test's runtime.
fn backends(
    rec: &PrometheusRecorder,
    addrs: &[SocketAddr],
    connect_timeout: Duration,
    backoff: Duration,
    health: Option<&HealthCheck>,
) -> Backends {
    metrics::with_local_recorder(rec, || {
        Backends::with_health(
            SERVICE,
            &list(addrs),
            connect_timeout,
            backoff,
            None,
            health,
        )
    })
}

/// The value of `name{...labels...}` in `rec`'s rendering.
fn value(rec: &PrometheusRecorder, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = rec.handle().render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

fn checks(rec: &PrometheusRecorder, backend: SocketAddr, result: &str) -> f64 {
    let b = backend.to_string();
    value(
        rec,
        "ackgate_backend_health_checks_total",
        &[("backend", &b), ("result", result)],
    )
}

fn up_gauge(rec: &PrometheusRecorder, backend: SocketAddr) -> f64 {
    let b = backend.to_string();
    value(rec, "ackgate_backend_up", &[("backend", &b)])
}

fn tcp_check(interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        kind: CheckKind::Tcp,
        interval_ms,
        timeout_ms: 200,
        rise,
        fall,
        ..HealthCheck::default()
    }
}

/// Polls `cond` every 5 ms until it holds; panics after `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A server on `l` that accepts, counts and closes connections.
fn counting(l: TcpListener, accepts: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            accepts.fetch_add(1, SeqCst);
            drop(s);
        }
    })
}

#[tokio::test]
async fn tcp_check_marks_down_after_fall_failures_and_up_after_rise_successes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let server = counting(l, accepts.clone());
    let rec = PrometheusBuilder::new().build_recorder();
    let (rise, fall, interval) = (2, 3, Duration::from_millis(100));
    let b = backends(
        &rec,
        &[addr],
        Duration::from_secs(1),
        Duration::from_secs(5),
        Some(&tcp_check(100, rise, fall)),
    );
    // Series exist from the start.
    assert_eq!(checks(&rec, addr, "failed"), 0.0);
    assert_eq!(checks(&rec, addr, "local"), 0.0);

    until("three checks pass", Duration::from_secs(3), || {
        checks(&rec, addr, "ok") >= 3.0
    })
    .await;
    assert_eq!(b.is_up(addr), Some(true));
    assert_eq!(checks(&rec, addr, "failed"), 0.0);
    assert!(accepts.load(SeqCst) >= 2);

    // The listener closes: connects are refused from now on.
    server.abort();
    let _ = server.await;
    assert!(std::net::TcpStream::connect(addr).is_err());
    let closed = Instant::now();
    let ok_before = checks(&rec, addr, "ok");
    let mut seen_up_with_failures = 0.0f64;
    until("down after `fall` failures", Duration::from_secs(3), || {
        // Read the verdict before the count: a verdict of down must have
        // `fall` failures behind it.
        let up = b.is_up(addr).unwrap();
        let failed = checks(&rec, addr, "failed");
        if up {
            seen_up_with_failures = seen_up_with_failures.max(failed);
        } else {
            assert!(failed >= f64::from(fall), "down after {failed} failures");
        }
        !up
    })
    .await;
    assert!(
        closed.elapsed() >= interval * (fall - 1),
        "down after {:?}",
        closed.elapsed()
    );
    // It was seen up with some failures counted already (not at the first).
    assert!(seen_up_with_failures >= 1.0, "{seen_up_with_failures}");
    assert_eq!(up_gauge(&rec, addr), 0.0);
    assert!(checks(&rec, addr, "ok") - ok_before <= 1.0);
    // No real connection goes to it: connect() is a single probe of a
    // refusing backend, then nothing.
    assert!(b.connect().await.is_err());

    // It comes back on the same port.
    let l = TcpListener::bind(addr).await.unwrap();
    let server = counting(l, accepts.clone());
    let ok_back = checks(&rec, addr, "ok");
    until("up after `rise` successes", Duration::from_secs(3), || {
        let up = b.is_up(addr).unwrap();
        if up {
            let ok = checks(&rec, addr, "ok") - ok_back;
            assert!(ok >= f64::from(rise), "up after {ok} passed checks");
        }
        up
    })
    .await;
    assert_eq!(up_gauge(&rec, addr), 1.0);
    let (_stream, to) = b.connect().await.expect("a connection goes to it again");
    assert_eq!(to, addr);
    drop(b);
    server.abort();
}

/// An HTTP server answering every request with the status in `status`,
/// logging each request's head.
fn http_server(
    l: TcpListener,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (status, requests) = (status.clone(), requests.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                requests
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let code = status.load(SeqCst);
                let reply = format!(
                    "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    })
}

#[tokio::test]
async fn http_check_marks_a_503_backend_down_and_a_200_backend_up() {
    let (la, lb) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let (status_a, status_b) = (Arc::new(AtomicU16::new(503)), Arc::new(AtomicU16::new(200)));
    let (req_a, req_b) = (Arc::default(), Arc::default());
    let servers = [
        http_server(la, status_a.clone(), Arc::clone(&req_a)),
        http_server(lb, status_b, Arc::clone(&req_b)),
    ];
    let rec = PrometheusBuilder::new().build_recorder();
    let spec = HealthCheck {
        kind: CheckKind::Http,
        interval_ms: 100,
        timeout_ms: 500,
        rise: 2,
        fall: 2,
        http_path: Some("/healthz".into()),
        http_host: Some("example.test".into()),
        expect_status: None,
    };
    spec.validate().unwrap();
    let b = backends(
        &rec,
        &[a, b_addr],
        Duration::from_secs(1),
        Duration::from_secs(5),
        Some(&spec),
    );

    until("the 503 backend is down", Duration::from_secs(3), || {
        !b.is_up(a).unwrap()
    })
    .await;
    assert!(checks(&rec, a, "failed") >= 2.0);
    assert_eq!(checks(&rec, a, "ok"), 0.0);
    until(
        "the 200 backend passed checks",
        Duration::from_secs(3),
        || checks(&rec, b_addr, "ok") >= 2.0,
    )
    .await;
    assert_eq!(b.is_up(b_addr), Some(true));
    assert_eq!(checks(&rec, b_addr, "failed"), 0.0);
    assert_eq!(up_gauge(&rec, a), 0.0);
    assert_eq!(up_gauge(&rec, b_addr), 1.0);
    for r in req_a
        .lock()
        .unwrap()
        .iter()
        .chain(req_b.lock().unwrap().iter())
    {
        assert!(
            r.starts_with("GET /healthz HTTP/1.1\r\nHost: example.test\r\n"),
            "{r:?}"
        );
    }
    // New connections go only to the backend that is up.
    let mut held = Vec::new();
    for _ in 0..6 {
        let (s, to) = b.connect().await.unwrap();
        assert_eq!(to, b_addr);
        held.push(s);
    }

    // The 503 backend recovers.
    status_a.store(200, SeqCst);
    let ok_before = checks(&rec, a, "ok");
    until(
        "the recovered backend is up",
        Duration::from_secs(3),
        || b.is_up(a).unwrap(),
    )
    .await;
    assert!(checks(&rec, a, "ok") - ok_before >= 2.0);
    assert_eq!(up_gauge(&rec, a), 1.0);
    let to: Vec<SocketAddr> = [b.connect().await, b.connect().await]
        .into_iter()
        .map(|r| r.unwrap().1)
        .collect();
    assert!(to.contains(&a), "{to:?}");

    // A server that does not speak HTTP fails an HTTP check.
    let lc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = lc.local_addr().unwrap();
    let ssh = tokio::spawn(async move {
        while let Ok((mut s, _)) = lc.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        }
    });
    let single = backends(
        &rec,
        &[c],
        Duration::from_secs(1),
        Duration::from_secs(5),
        Some(&HealthCheck {
            rise: 1,
            fall: 1,
            ..spec.clone()
        }),
    );
    until(
        "the non-HTTP backend is down",
        Duration::from_secs(3),
        || !single.is_up(c).unwrap(),
    )
    .await;
    assert_eq!(checks(&rec, c, "ok"), 0.0);
    drop((b, single));
    ssh.abort();
    for s in servers {
        s.abort();
    }
}

#[tokio::test]
async fn checks_stop_when_their_backends_are_dropped_or_replaced() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let server = counting(l, accepts.clone());
    let rec = PrometheusBuilder::new().build_recorder();
    let spec = tcp_check(100, 1, 1);
    let (timeout, backoff) = (Duration::from_secs(1), Duration::from_secs(5));
    let n = || accepts.load(SeqCst);
    // Checks run: accepts keep coming.
    let grows = |what: &'static str| {
        let from = n();
        async move {
            until(what, Duration::from_secs(3), || n() >= from + 2).await;
        }
    };
    // No checks run: after what was in flight, no accept for 5 intervals.
    let still = |what: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let from = n();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(n(), from, "{what}");
    };

    let first = backends(&rec, &[addr], timeout, backoff, Some(&spec));
    grows("checks of the first").await;
    // A reload without a health check: the old checks stop.
    let second = metrics::with_local_recorder(&rec, || {
        Backends::new(SERVICE, &list(&[addr]), timeout, backoff, Some(&first))
    });
    still("the first's checks were stopped by the second").await;
    // A reload with one: checks again, one task per backend.
    let third = metrics::with_local_recorder(&rec, || {
        Backends::with_health(
            SERVICE,
            &list(&[addr]),
            timeout,
            backoff,
            Some(&second),
            Some(&spec),
        )
    });
    grows("checks of the third").await;
    let from = n();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(n() - from <= 6, "one task, not several: {}", n() - from);
    // Dropping the old ones (their relays ended) leaves the new checks.
    drop((first, second));
    grows("checks of the third after the old ones are gone").await;
    drop(third);
    still("the third's checks stopped when it was dropped").await;

    let fourth = backends(&rec, &[addr], timeout, backoff, Some(&spec));
    grows("checks of the fourth").await;
    fourth.stop_checks();
    still("stop_checks").await;
    drop(fourth);
    server.abort();
}

/// A loopback listener that black-holes new connections: its accept queue
/// (backlog 0: one connection) is full and never drained, so SYNs are
/// dropped and connects hang until their timeout. Returns the listener and
/// the connection filling its queue; keep both.
fn black_hole() -> (std::net::TcpListener, std::net::TcpStream, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    let e = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .expect_err("the black hole accepts nothing more");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    (l, filler, addr)
}

fn connect_errors(rec: &PrometheusRecorder, backend: SocketAddr, reason: &str) -> f64 {
    let b = backend.to_string();
    value(
        rec,
        "ackgate_backend_connect_errors_total",
        &[("backend", &b), ("reason", reason)],
    )
}

fn connects(rec: &PrometheusRecorder, backend: SocketAddr) -> f64 {
    let b = backend.to_string();
    value(rec, "ackgate_backend_connects_total", &[("backend", &b)])
}

#[tokio::test]
async fn after_a_back_off_a_single_probe_tries_a_dead_backend() {
    let (_hole, _filler, dead) = black_hole();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = l.local_addr().unwrap();
    let server = counting(l, Arc::default());
    let rec = PrometheusBuilder::new().build_recorder();
    let (timeout, backoff) = (Duration::from_millis(600), Duration::from_millis(200));
    let b = Arc::new(backends(&rec, &[dead, live], timeout, backoff, None));
    assert_eq!(connect_errors(&rec, dead, "local"), 0.0);

    // The schedule picks the dead one first: it times out, then the live
    // one takes the connection, and the dead one backs off.
    let (_s, to) = b.connect().await.unwrap();
    assert_eq!(to, live);
    assert_eq!(connect_errors(&rec, dead, "timeout"), 1.0);
    assert_eq!(b.is_up(dead), Some(false));

    // The back-off runs out while the backend is still dead; then a burst.
    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    assert_eq!(b.is_up(dead), Some(true));
    const N: usize = 16;
    let burst: Vec<_> = (0..N)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = b.connect().await;
                (r, t.elapsed())
            })
        })
        .collect();
    let mut slow = 0;
    for task in burst {
        let (r, took) = task.await.unwrap();
        let (_s, to) = r.expect("every client is served");
        assert_eq!(to, live);
        if took >= timeout - Duration::from_millis(100) {
            slow += 1;
        }
    }
    // One probe (the one slow client), not half the burst.
    assert_eq!(connect_errors(&rec, dead, "timeout"), 2.0);
    assert_eq!(slow, 1, "clients that waited on the dead backend");
    assert_eq!(connects(&rec, live), (N + 1) as f64);
    assert_eq!(connects(&rec, dead), 0.0);
    assert_eq!(
        b.is_up(dead),
        Some(false),
        "the failed probe backs off again"
    );
    server.abort();
}

#[tokio::test]
async fn with_no_backend_up_a_burst_waits_for_one_probe_instead_of_connecting() {
    let (_hole, _filler, dead) = black_hole();
    let rec = PrometheusBuilder::new().build_recorder();
    let (timeout, backoff) = (Duration::from_millis(400), Duration::from_millis(100));
    let b = Arc::new(backends(&rec, &[dead], timeout, backoff, None));
    assert!(b.connect().await.is_err());
    assert_eq!(connect_errors(&rec, dead, "timeout"), 1.0);

    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    const N: usize = 8;
    let t = Instant::now();
    let burst: Vec<_> = (0..N)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.connect().await.is_err() })
        })
        .collect();
    for task in burst {
        assert!(task.await.unwrap(), "no backend for anyone");
    }
    // All of them waited for the one probe, and no longer.
    assert!(t.elapsed() < timeout * 2, "{:?}", t.elapsed());
    assert_eq!(connect_errors(&rec, dead, "timeout"), 2.0);
    assert_eq!(connect_errors(&rec, dead, "refused"), 0.0);
}
