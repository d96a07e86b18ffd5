//! Crash and restart under load. SIGKILL ackgate while clients run through
//! it: the XDP program detaches with the process (its bpf_link dies with
//! it), relayed connections end at once and new ones are refused at once
//! (no client hangs), and an ackgate restarted with the same secret file
//! serves again, including a client whose SYN-ACK the killed instance sent
//! and whose handshake completes only after the restart. The outage window
//! (kill to the first connection served again) is measured and printed.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use ackgate_lab::{Lab, ScratchDir};
use ackgate_tests::{connect_from, run_ackgate_until, with_echo_lab, METRICS};

/// One load client's attempt: when it ended, whether it was served, and
/// how long it took.
struct Attempt {
    end: Instant,
    ok: bool,
    took: Duration,
}

/// The client's source port whose handshake is held across the crash.
const HELD_PORT: u16 = 40999;

#[test]
fn sigkill_under_load_then_restart_with_the_same_secret() {
    with_echo_lab(|lab| {
        let dir = ScratchDir::new("crash").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "00112233445566778899aabbccddeeff").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let v4 = format!("{}:8080", lab.vip4);
        let v6 = format!("[{}]:8080", lab.vip6);
        let args = [
            "--listen",
            &v4,
            "--listen",
            &v6,
            "--backend",
            "127.0.0.1:9000",
            "--metrics",
            METRICS,
            "--secret-file",
            secret.to_str().unwrap(),
        ];
        let first = run_ackgate_until(lab, &args, "proxy ready");
        assert!(xdp_attached(lab), "XDP attached while ackgate runs");
        let target: SocketAddr = (lab.vip4, 8080).into();

        // A relayed connection, mid-conversation.
        let mut held = lab
            .client
            .run(move || {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"before").unwrap();
                let mut b = [0u8; 6];
                s.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"before");
                s
            })
            .unwrap();

        // A handshake the first instance answers but whose ACK (and any
        // later segment) is held back on the client until after the
        // restart: connect() returns, the client's window is zero.
        hold(lab, true);
        let from = SocketAddr::new(lab.client4.into(), HELD_PORT);
        let mut half = lab
            .client
            .run(move || connect_from(from, target).unwrap())
            .unwrap();

        let stop = AtomicBool::new(false);
        let attempts = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            sc.spawn(|| load(lab, target, &stop, &attempts));
            std::thread::sleep(Duration::from_millis(500));

            let killed = Instant::now();
            nix::sys::signal::kill(first.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
            drop(first);
            // The bpf_link went with the process.
            let detach = wait(Duration::from_secs(2), || !xdp_attached(lab))
                .expect("XDP detached within 2 s of SIGKILL");
            // The relayed connection ends at once: EOF or a reset, no hang.
            let t = Instant::now();
            let mut buf = [0u8; 16];
            let r = held.read(&mut buf);
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "the relayed connection still answered: {r:?}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "the relayed connection took {:?} to end",
                t.elapsed()
            );

            std::thread::sleep(Duration::from_millis(500));
            let restarted = Instant::now();
            let second = run_ackgate_until(lab, &args, "proxy ready");
            let startup = restarted.elapsed();
            hold(lab, false);

            // The held handshake completes through the new instance: the
            // client's zero-window probe carries the old cookie.
            let t = Instant::now();
            half.set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            half.write_all(b"across the crash").unwrap();
            half.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            half.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"across the crash");
            let across = t.elapsed();

            // Let the load run on the new instance, then stop it.
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Relaxed);
            let attempts = attempts.lock().unwrap();
            let served_before = attempts.iter().filter(|a| a.ok && a.end < killed).count();
            let first_after = attempts
                .iter()
                .filter(|a| a.ok && a.end > killed)
                .map(|a| a.end)
                .min()
                .expect("served again after the restart");
            let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
            let slowest_failure = failed.iter().map(|a| a.took).max().unwrap_or_default();
            let outage = first_after - killed;
            eprintln!(
                "XDP detached {detach:?} after SIGKILL; restart to proxy ready {startup:?}; \
                 outage (kill to first connection served) {outage:?}; {served_before} served \
                 before, {} failed during the outage (slowest failure {slowest_failure:?}); \
                 the held handshake completed {across:?} after release",
                failed.len()
            );
            assert!(served_before > 0, "load ran before the kill");
            assert!(
                slowest_failure < Duration::from_secs(1),
                "a client waited {slowest_failure:?} to fail: refused connections must fail fast"
            );
            let tail: Vec<bool> = attempts.iter().rev().take(20).map(|a| a.ok).collect();
            assert!(
                tail.len() == 20 && tail.iter().all(|&ok| ok),
                "the restarted instance serves every client: {tail:?}"
            );
            second.stop(Duration::from_secs(15)).unwrap();
        });
    });
}

/// Clients connecting one after another, each echoing a short message,
/// until `stop`.
fn load(lab: &Lab, target: SocketAddr, stop: &AtomicBool, out: &Mutex<Vec<Attempt>>) {
    lab.client
        .run(|| {
            while !stop.load(Relaxed) {
                let t = Instant::now();
                let ok = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(b"ping")?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b)?;
                    Ok(&b == b"ping")
                })()
                .unwrap_or(false);
                out.lock().unwrap().push(Attempt {
                    end: Instant::now(),
                    ok,
                    took: t.elapsed(),
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .unwrap();
}

/// Holds back (or releases) every segment but the SYN from the client's
/// [`HELD_PORT`]: nftables in the client namespace.
fn hold(lab: &Lab, on: bool) {
    let port = HELD_PORT.to_string();
    let commands: Vec<Vec<&str>> = if on {
        vec![
            vec!["add", "table", "inet", "ackgate_hold"],
            vec![
                "add",
                "chain",
                "inet",
                "ackgate_hold",
                "out",
                "{ type filter hook output priority 0; }",
            ],
            vec![
                "add",
                "rule",
                "inet",
                "ackgate_hold",
                "out",
                "tcp",
                "sport",
                &port,
                "tcp",
                "flags",
                "&",
                "syn",
                "==",
                "0",
                "drop",
            ],
        ]
    } else {
        vec![vec!["delete", "table", "inet", "ackgate_hold"]]
    };
    for c in commands {
        let args: Vec<&str> = std::iter::once("nft").chain(c).collect();
        lab.client.exec(&args).unwrap();
    }
}

/// Whether an XDP program is attached to the gateway's interface.
fn xdp_attached(lab: &Lab) -> bool {
    let o = lab
        .gw
        .exec(&["ip", "-d", "link", "show", "dev", lab.gw_if])
        .unwrap();
    String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
}

/// Polls `done` until it holds (the time it took) or `limit` passes.
fn wait(limit: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if done() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}
