//! Choosing the engine: `auto` runs io_uring where the kernel allows it and
//! falls back to tokio, saying why, where it does not; an explicit
//! `io_uring` that cannot run is a one-line start-up error. The sandbox is
//! a seccomp filter that refuses io_uring_setup, as container runtimes'
//! default profiles do.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::Command,
    time::Duration,
};

use ackgate_tests::{ackgate_bin, lab::Lab, metric, scrape_gw, with_echo_lab, Process, METRICS};
use nix::sys::signal::{kill, Signal};

/// The audit architecture seccomp reports for this build's target.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Makes the child's io_uring_setup fail with EPERM (inherited across
/// exec, so it holds for ackgate behind `ip netns exec`).
fn refuse_io_uring(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec; the
    // filter program lives on this stack until the prctl copies it.
    unsafe {
        cmd.pre_exec(|| {
            let stmt = |code: u32, k: u32| libc::sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            };
            let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt,
                jf,
                k,
            };
            let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
            let ret = libc::BPF_RET | libc::BPF_K;
            // struct seccomp_data: nr at offset 0, arch at 4.
            let prog = [
                stmt(ld, 4),
                jeq(AUDIT_ARCH, 0, 3),
                stmt(ld, 0),
                jeq(libc::SYS_io_uring_setup as u32, 0, 1),
                stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
                stmt(ret, libc::SECCOMP_RET_ALLOW),
            ];
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn ackgate(lab: &Lab, engine: &str, sandboxed: bool) -> Command {
    let mut cmd = lab.gw.command(ackgate_bin().to_str().unwrap());
    cmd.env_remove("ACKGATE_ENGINE")
        .args(["run", "--iface", lab.gw_if, "--stats-interval", "0"])
        .args(["--listen", &format!("{}:8080", lab.vip4)])
        .args(["--backend", "127.0.0.1:9000", "--engine", engine])
        .args(["--metrics", METRICS]);
    if sandboxed {
        refuse_io_uring(&mut cmd);
    }
    cmd
}

fn echo_through(lab: &Lab) {
    let target = SocketAddr::from((lab.vip4, 8080));
    let got = lab
        .client
        .run(|| -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"which engine?")?;
            let mut b = vec![0u8; 13];
            s.read_exact(&mut b)?;
            Ok(b)
        })
        .unwrap()
        .unwrap();
    assert_eq!(got, b"which engine?");
}

#[test]
fn auto_picks_io_uring_or_says_why_not_and_explicit_io_uring_never_falls_back() {
    with_echo_lab(|lab| {
        // Unconfined: auto runs io_uring and serves.
        let p = Process::start(
            "ackgate",
            ackgate(lab, "auto", false),
            "proxy ready",
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(
            p.output.iter().any(|l| l.contains(
                "engine io_uring on 2 threads: handoffs in linked submissions of 16 flows"
            ) || l.contains("engine io_uring on 1 threads")),
            "{:?}",
            p.output
        );
        echo_through(lab);
        // A backlog: with ackgate stopped, XDP still completes 128
        // handshakes and queues them on the ring; on SIGCONT they go through
        // in batches of linked chains, and every one is served intact (the
        // clients' data, dropped meanwhile, is retransmitted).
        let target = SocketAddr::from((lab.vip4, 8080));
        let barrier = std::sync::Barrier::new(128);
        let pid = p.pid();
        kill(pid, Signal::SIGSTOP).unwrap();
        let served = lab
            .client
            .run(|| {
                std::thread::scope(|sc| {
                    sc.spawn(move || {
                        std::thread::sleep(Duration::from_millis(700));
                        kill(pid, Signal::SIGCONT).unwrap();
                    });
                    let hs: Vec<_> = (0..128)
                        .map(|i| {
                            let barrier = &barrier;
                            sc.spawn(move || -> std::io::Result<bool> {
                                barrier.wait();
                                let mut s =
                                    TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                                let msg = format!("burst client {i}");
                                s.write_all(msg.as_bytes())?;
                                let mut b = vec![0u8; msg.len()];
                                s.read_exact(&mut b)?;
                                Ok(b == msg.as_bytes())
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join())
                        .filter(|r| matches!(r, Ok(Ok(true))))
                        .count()
                })
            })
            .unwrap();
        let m = scrape_gw(lab, METRICS);
        let calls = |path| metric(&m, "ackgate_handoff_calls_total", Some(("path", path)));
        eprintln!(
            "burst: {served} of 128 served; handoff calls: {} io_uring, {} syscalls",
            calls("io_uring"),
            calls("syscalls")
        );
        assert_eq!(served, 128);
        assert!(calls("io_uring") >= 1.0, "a burst fills a batch");
        // Backends are connected through the engine threads' rings too.
        let connects = |path| {
            metric(
                &m,
                "ackgate_backend_connect_calls_total",
                Some(("path", path)),
            )
        };
        assert!(connects("io_uring") >= 129.0, "{}", connects("io_uring"));
        assert_eq!(connects("syscalls"), 0.0);
        drop(p);

        // Refused by seccomp: an explicit io_uring is an error, in one line.
        let out = ackgate(lab, "io_uring", true).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("engine io_uring cannot run here (try --engine tokio)")
                && err.contains("io_uring_setup failed")
                && err.contains("Operation not permitted")
                && err.trim().lines().count() == 1,
            "{err}"
        );

        // Refused by seccomp: auto says why and runs tokio, which serves.
        let p = Process::start(
            "ackgate",
            ackgate(lab, "auto", true),
            "proxy ready",
            Duration::from_secs(30),
        )
        .unwrap();
        let said = |t: &str| p.output.iter().any(|l| l.contains(t));
        assert!(
            said("engine auto: io_uring unavailable (io_uring_setup failed")
                && said("using tokio")
                && said("engine tokio on"),
            "{:?}",
            p.output
        );
        echo_through(lab);
    });
}
