//! Backends failing under a relay: a backend process killed mid-download,
//! a backend that accepts and never answers, and one that resets. Each
//! client learns of it at once (or at the idle timeout for the silent
//! one), never hangs, and every connection leaves `connections_active`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use ackgate_lab::{Lab, Process, ScratchDir};
use ackgate_tests::{metric, run_ackgate_until, scrape_gw_until, with_echo_lab, METRICS};

/// The backends, in the gateway: the killed one is a process of its own.
const KILLED: &str = "127.0.0.1:9101";
const SILENT: &str = "127.0.0.1:9102";
const RESETS: &str = "127.0.0.1:9103";
/// The silent service's idle timeout.
const IDLE_SECS: u64 = 2;

#[test]
fn killed_silent_and_resetting_backends() {
    with_echo_lab(|lab| {
        let dir = ScratchDir::new("faults").unwrap();
        let config = dir.path().join("ackgate.toml");
        let vip = lab.vip4;
        std::fs::write(
            &config,
            format!(
                "metrics = \"{METRICS}\"\n\
                 [[service]]\nname = \"killed\"\nlisten = [\"{vip}:8081\"]\nbackends = [\"{KILLED}\"]\n\
                 [[service]]\nname = \"silent\"\nlisten = [\"{vip}:8082\"]\nbackends = [\"{SILENT}\"]\n\
                 [service.limits]\nidle_timeout_secs = {IDLE_SECS}\n\
                 [[service]]\nname = \"resets\"\nlisten = [\"{vip}:8083\"]\nbackends = [\"{RESETS}\"]\n"
            ),
        )
        .unwrap();

        let killed = streaming_backend(lab);
        let silent = lab.gw.run(|| TcpListener::bind(SILENT)).unwrap().unwrap();
        let resets = lab.gw.run(|| TcpListener::bind(RESETS)).unwrap().unwrap();
        std::thread::scope(|sc| {
            // Accepts and holds every connection, never writing.
            sc.spawn(move || {
                let s = accept_within(&silent);
                std::thread::sleep(Duration::from_secs(IDLE_SECS + 2));
                drop(s);
            });
            // Reads the request, then resets (SO_LINGER 0).
            sc.spawn(move || {
                let Some(mut s) = accept_within(&resets) else {
                    return;
                };
                let mut b = [0u8; 5];
                s.read_exact(&mut b).unwrap();
                nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                )
                .unwrap();
            });

            let ackgate =
                run_ackgate_until(lab, &["--config", config.to_str().unwrap()], "proxy ready");
            let pid = killed.pid();
            let target = |port: u16| SocketAddr::from((vip, port));
            let (k, s, r) = lab
                .client
                .run(move || {
                    // Killed mid-download: the client has read part of the
                    // stream when the backend process dies.
                    let mut c =
                        TcpStream::connect_timeout(&target(8081), Duration::from_secs(3)).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c.write_all(b"GET\n").unwrap();
                    let mut got = 0usize;
                    let mut buf = vec![0u8; 65536];
                    while got < 256 * 1024 {
                        let n = c.read(&mut buf).unwrap();
                        assert!(n > 0, "the stream ended early");
                        assert!(buf[..n].iter().all(|&b| b == b'x'), "bytes changed");
                        got += n;
                    }
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
                    let t = Instant::now();
                    let end = drain(&mut c);
                    let k = (end, t.elapsed());

                    let mut c =
                        TcpStream::connect_timeout(&target(8082), Duration::from_secs(3)).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(IDLE_SECS + 8)))
                        .unwrap();
                    c.write_all(b"hello").unwrap();
                    let t = Instant::now();
                    let end = drain(&mut c);
                    let s = (end, t.elapsed());

                    let mut c =
                        TcpStream::connect_timeout(&target(8083), Duration::from_secs(3)).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c.write_all(b"hello").unwrap();
                    let t = Instant::now();
                    let end = drain(&mut c);
                    (k, s, (end, t.elapsed()))
                })
                .unwrap();
            eprintln!("killed backend: {k:?}; silent backend: {s:?}; resetting backend: {r:?}");
            // Killed: the client's stream ends (EOF or reset) within a second.
            assert_ne!(k.0, Err(ErrorKind::WouldBlock), "killed backend: a hang");
            assert!(k.1 < Duration::from_secs(1), "killed backend: {k:?}");
            // Silent: closed by the idle timeout, not before it, not never.
            assert!(
                s.0 != Err(ErrorKind::WouldBlock)
                    && s.1 >= Duration::from_secs(IDLE_SECS) - Duration::from_millis(200)
                    && s.1 < Duration::from_secs(IDLE_SECS + 3),
                "silent backend: {s:?}"
            );
            // Resetting: the reset reaches the client, at once.
            assert_eq!(r.0, Err(ErrorKind::ConnectionReset), "resetting backend");
            assert!(r.1 < Duration::from_secs(1), "resetting backend: {r:?}");

            let m = scrape_gw_until(lab, METRICS, Duration::from_secs(5), |m| {
                metric(m, "ackgate_connections_active", None) == 0.0
            });
            assert_eq!(metric(&m, "ackgate_connections_active", None), 0.0);
            assert!(
                metric(
                    &m,
                    "ackgate_relayed_bytes_total",
                    Some(("service", "killed"))
                ) >= 256.0 * 1024.0
            );
            ackgate.stop(Duration::from_secs(15)).unwrap();
        });
    });
}

/// The first connection within 30 s (a test that failed before connecting
/// must not hang here).
fn accept_within(l: &TcpListener) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return Some(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

/// Reads until the stream ends: `Ok(bytes)` at EOF, or the error's kind
/// (`WouldBlock`/`TimedOut`: the read timeout passed, a hang).
fn drain(c: &mut TcpStream) -> Result<usize, ErrorKind> {
    let mut buf = vec![0u8; 65536];
    let mut total = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(ErrorKind::WouldBlock),
            Err(e) => return Err(e.kind()),
        }
    }
}

/// A backend process in the gateway that streams 'x' to each client
/// until killed.
fn streaming_backend(lab: &Lab) -> Process {
    let mut cmd = lab.gw.command("python3");
    cmd.args([
        "-c",
        &format!(
            "import socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {})); s.listen(8); print('listening', flush=True)\n\
             c, _ = s.accept()\n\
             while True: c.sendall(b'x' * 65536)\n",
            KILLED.rsplit_once(':').unwrap().1
        ),
    ]);
    Process::start(
        "streaming backend",
        cmd,
        "listening",
        Duration::from_secs(10),
    )
    .unwrap()
}
