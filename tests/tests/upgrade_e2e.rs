//! Upgrading without dropping a connection: a second ackgate takes over
//! from a running one (`--takeover` on its control socket) while clients
//! run connections through it. The XDP links pass atomically, so no SYN
//! reaches the gateway's kernel (which has no listener and would reset
//! it); cookies the old instance issued (with a random secret it hands
//! over) verify in the new one; the old one drains and exits.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use ackgate_tests::{connect_from, counter, last_counters, run_ackgate_until, with_echo_lab};

fn exchange(target: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other(format!(
            "{} bytes back of {}",
            got.len(),
            msg.len()
        )));
    }
    Ok(())
}

#[test]
fn a_new_instance_takes_over_under_load_without_a_failed_connection() {
    with_echo_lab(|lab| {
        let dir = std::env::temp_dir().join(format!("ackgate-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("control.sock");
        let pid_file = dir.join("ackgate.pid");
        let (v4, v6) = (format!("{}:8080", lab.vip4), format!("[{}]:8080", lab.vip6));
        let args = [
            "--listen",
            v4.as_str(),
            "--listen",
            v6.as_str(),
            "--backend",
            "127.0.0.1:9000",
            "--control-socket",
            sock.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--metrics",
            ackgate_tests::METRICS,
            // With nothing to take over, a first start (as the systemd
            // template runs every instance).
            "--takeover",
        ];
        let mut old = run_ackgate_until(lab, &args, "proxy ready");
        assert!(old.output.iter().any(|l| l.contains("starting afresh")));
        let targets = [
            SocketAddr::from((lab.vip4, 8080)),
            SocketAddr::from((lab.vip6, 8080)),
        ];
        // A relay that starts before the takeover and ends after it.
        let mut held = lab
            .client
            .run(|| TcpStream::connect_timeout(&targets[0], Duration::from_secs(3)))
            .unwrap()
            .unwrap();
        held.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        held.write_all(b"before").unwrap();
        let mut b = [0u8; 6];
        held.read_exact(&mut b).unwrap();

        // A handshake answered by the old instance whose ACK is held in
        // the client until after the switch: its cookie must verify in the
        // new one.
        const HELD_PORT: &str = "40123";
        let rule = |op: &str| {
            lab.client
                .exec(&[
                    "iptables", op, "OUTPUT", "-p", "tcp", "--sport", HELD_PORT, "!", "--syn",
                    "-j", "DROP",
                ])
                .unwrap();
        };
        rule("-A");
        let mut straddling = lab
            .client
            .run(|| {
                connect_from(
                    SocketAddr::new(lab.client4.into(), HELD_PORT.parse().unwrap()),
                    targets[0],
                )
            })
            .unwrap()
            .unwrap();

        let done = AtomicBool::new(false);
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let errors = std::sync::Mutex::new(Vec::new());
        let new = std::thread::scope(|sc| {
            for t in 0..4usize {
                let (done, ok, failed, errors) = (&done, &ok, &failed, &errors);
                sc.spawn(move || {
                    lab.client
                        .run(|| {
                            let mut i = 0usize;
                            while !done.load(Relaxed) {
                                let msg = format!("client {t} request {i}\n").repeat(1 + i % 30);
                                match exchange(targets[(t + i) % 2], msg.as_bytes()) {
                                    Ok(()) => ok.fetch_add(1, Relaxed),
                                    Err(e) => {
                                        errors.lock().unwrap().push(e.to_string());
                                        failed.fetch_add(1, Relaxed)
                                    }
                                };
                                i += 1;
                            }
                        })
                        .unwrap();
                });
            }
            std::thread::sleep(Duration::from_millis(700));
            let before = ok.load(Relaxed);
            let new = run_ackgate_until(lab, &args, "proxy ready");
            old.wait_for("takeover, draining", Duration::from_secs(10))
                .unwrap();
            let at_switch = ok.load(Relaxed);
            std::thread::sleep(Duration::from_millis(1000));
            done.store(true, Relaxed);
            eprintln!(
                "{before} connections before the takeover started, {at_switch} at the switch, \
                 {} in all, {} failed",
                ok.load(Relaxed),
                failed.load(Relaxed)
            );
            assert!(before > 50, "clients ran before the switch: {before}");
            assert!(
                ok.load(Relaxed) > at_switch + 50,
                "and after it: {at_switch} then {}",
                ok.load(Relaxed)
            );
            new
        });
        assert_eq!(
            failed.load(Relaxed),
            0,
            "no connection fails across the takeover: {:?}",
            errors.lock().unwrap()
        );
        // Its ACK released now reaches the new instance only.
        rule("-D");
        straddling
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        straddling
            .write_all(b"issued before, verified after")
            .unwrap();
        let mut got = [0u8; 29];
        straddling.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"issued before, verified after");
        // The old instance's relay still works, then the old one exits.
        held.write_all(b"after!").unwrap();
        held.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        held.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"after!");
        let (status, out) = old.stop(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "{out:?}");

        let c = last_counters(&out).expect("old counters");
        assert!(counter(&c, "handoffs") > 50, "{c:?}");
        // The pid file names the new process; the control socket is its.
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, new.pid().as_raw() as u32);
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        let (status, out) = new.stop(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "{out:?}");

        assert!(out.iter().any(|l| l.contains("took over from ackgate")));
        let c = last_counters(&out).expect("new counters");
        assert!(counter(&c, "handoffs") > 50, "the new one served: {c:?}");
        assert_eq!(counter(&c, "ack_rejected"), 0, "{c:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
