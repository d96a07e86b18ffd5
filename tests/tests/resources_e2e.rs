//! Local resources: what an idle relay costs, and running out of file
//! descriptors neither kills ackgate nor floods its log.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use ackgate_tests::{
    ackgate_bin, counter, last_counters, metric, scrape_gw, with_echo_lab, Process, METRICS,
};

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// One relayed connection, left open and idle after one echoed byte.
fn idle_relay(target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    s
}

#[test]
fn an_idle_relay_costs_a_few_kib() {
    with_echo_lab(|lab| {
        let v4 = format!("{}:8080", lab.vip4);
        let run = ackgate_tests::run_ackgate_until(
            lab,
            &["--listen", &v4, "--backend", "127.0.0.1:9000"],
            "proxy ready",
        );
        let target = SocketAddr::from((lab.vip4, 8080));
        let pid = run.pid().as_raw() as u32;
        // Warm up the runtime, the allocator and the tables.
        let warm: Vec<TcpStream> = lab
            .client
            .run(|| (0..50).map(|_| idle_relay(target)).collect())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(pid);
        const N: u64 = 500;
        let held: Vec<TcpStream> = lab
            .client
            .run(|| (0..N).map(|_| idle_relay(target)).collect())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 / N as f64;
        eprintln!(
            "ackgate RSS {before} KiB with 50 idle relays, {after} KiB with {} (+{per:.1} KiB each)",
            50 + N
        );
        // Two 64 KiB buffers per relay would be 128 KiB each.
        assert!(
            per < 16.0,
            "an idle relay costs {per:.1} KiB of ackgate's memory"
        );
        drop((warm, held));
        run.stop(Duration::from_secs(15)).unwrap();
    });
}

/// `ackgate run ARGS` in the gateway with RLIMIT_NOFILE 256 (soft and
/// hard) and no CAP_SYS_RESOURCE to raise it.
fn limited(lab: &ackgate_tests::lab::Lab, args: &[&str]) -> Command {
    let mut cmd = lab.gw.command("prlimit");
    cmd.args([
        "--nofile=256:256",
        "setpriv",
        "--bounding-set=-sys_resource",
        "--inh-caps=-sys_resource",
        ackgate_bin().to_str().unwrap(),
        "run",
        "--iface",
        lab.gw_if,
        "--stats-interval",
        "0",
    ])
    .args(args);
    cmd
}

#[test]
fn out_of_descriptors_ackgate_neither_dies_nor_floods_its_log() {
    with_echo_lab(|lab| {
        let v4 = format!("{}:8080", lab.vip4);
        let base = [
            "--listen",
            v4.as_str(),
            "--backend",
            "127.0.0.1:9000",
            "--metrics",
            METRICS,
        ];
        // A configured limit the descriptors cannot hold: a clear refusal.
        let mut args = base.to_vec();
        args.extend(["--max-connections", "1000"]);
        let out = limited(lab, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("max_connections 1000 needs 2564 file descriptors")
                && err.contains("LimitNOFILE="),
            "{err}"
        );

        // None configured: the default shrinks to what 256 allow.
        let mut run = Process::start(
            "ackgate",
            limited(lab, &base),
            "proxy ready",
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(
            run.output.iter().any(|l| l.contains("max_connections 77")),
            "{:?}",
            run.output
        );
        let target = SocketAddr::from((lab.vip4, 8080));
        // 200 clients at once, each holding its connection a while.
        let served = lab
            .client
            .run(|| {
                std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..200)
                        .map(|i| {
                            sc.spawn(move || {
                                let mut s =
                                    TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
                                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                                let msg = format!("client {i}");
                                s.write_all(msg.as_bytes())?;
                                let mut b = vec![0u8; msg.len()];
                                s.read_exact(&mut b)?;
                                std::thread::sleep(Duration::from_millis(500));
                                Ok::<_, std::io::Error>(b == msg.as_bytes())
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap())
                        .filter(|r| matches!(r, Ok(true)))
                        .count()
                })
            })
            .unwrap();
        // Scrapes, a reload and the counters all still work.
        let m = scrape_gw(lab, METRICS);
        nix::sys::signal::kill(run.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
        run.wait_for("SIGHUP", Duration::from_secs(10)).unwrap();
        run.check().unwrap();
        let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "{out:?}");
        let c = last_counters(&out).expect("counters");
        eprintln!(
            "{served} of 200 served under RLIMIT_NOFILE 256; {} log lines",
            out.len()
        );
        assert!(served >= 70, "up to the fitted limit are served: {served}");
        // Every handoff was relayed or promptly reset (a reset client's
        // data segment already in flight verifies again: a second handoff,
        // reset in turn).
        assert_eq!(
            counter(&c, "closed") + counter(&c, "resets_limit"),
            counter(&c, "handoffs"),
            "{c:?}"
        );
        assert!(counter(&c, "handoffs") >= 200, "{c:?}");
        assert_eq!(counter(&c, "handoff_errors"), 0, "{c:?}");
        assert!(metric(&m, "ackgate_handoffs_total", None) >= 200.0);
        assert!(out.len() < 30, "no log flood: {out:?}");
    });
}
