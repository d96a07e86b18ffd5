//! Reloading the configuration (SIGHUP) while clients run connections
//! through ackgate: nothing fails, running relays keep going, the change
//! takes effect, and an invalid file is refused with the old one in force.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::servers::echo_tagged;
use ackgate_tests::{
    ackgate_bin, lab::Lab, metric, run_ackgate_until, scrape_gw, with_echo_lab, Process,
    StopOnDrop, METRICS,
};
use nix::sys::signal::{kill, Signal};

/// One connection through ackgate: the backend's tag, and the echo of
/// `msg` checked.
fn exchange(target: SocketAddr, msg: &[u8]) -> std::io::Result<u8> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The client speaks first (the backend is connected on its first
    // byte); the backend's tag comes before the echo.
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    match got.split_first() {
        Some((&tag, echo)) if echo == msg => Ok(tag),
        _ => Err(std::io::Error::other(format!(
            "echo of {} bytes came back as {}",
            msg.len(),
            got.len()
        ))),
    }
}

fn config(lab: &Lab, backends: &str) -> String {
    format!(
        "iface = \"{}\"\n[[service]]\nname = \"web\"\nlisten = [\"{}:8080\", \"[{}]:8080\"]\n\
         backends = [{backends}]\n[service.limits]\nconnect_timeout_ms = 3000\n",
        lab.gw_if, lab.vip4, lab.vip6
    )
}

fn reload(run: &mut Process, file: &Path, text: &str, expect: &str) {
    std::fs::write(file, text).unwrap();
    kill(run.pid(), Signal::SIGHUP).unwrap();
    run.wait_for(expect, Duration::from_secs(10)).unwrap();
}

/// `ackgate reload ARGS` in the gateway: (exit code, stdout + stderr).
fn reload_cmd(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let out = lab
        .gw
        .command(ackgate_bin().to_str().unwrap())
        .arg("reload")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn reloads_under_load_fail_no_connection_and_take_effect() {
    with_echo_lab(|lab| {
        let dir = tempdir();
        let file = dir.join("ackgate.toml");
        let pid_file = dir.join("ackgate.pid");
        const A: &str = "\"127.0.0.1:9100\"";
        const B: &str = "\"127.0.0.1:9101\"";
        std::fs::write(&file, config(lab, A)).unwrap();
        let stop = AtomicBool::new(false);
        let listeners = [9100u16, 9101].map(|port| {
            lab.gw
                .run(move || TcpListener::bind(("127.0.0.1", port)))
                .unwrap()
                .unwrap()
        });
        std::thread::scope(|sc| {
            let _stop = StopOnDrop(&stop);
            for (l, tag) in listeners.into_iter().zip([b'A', b'B']) {
                let stop = &stop;
                sc.spawn(move || echo_tagged(l, stop, &AtomicU64::new(0), Some(tag)));
            }
            let mut run = run_ackgate_until(
                lab,
                &[
                    "--config",
                    file.to_str().unwrap(),
                    "--metrics",
                    METRICS,
                    "--pid-file",
                    pid_file.to_str().unwrap(),
                ],
                "proxy ready",
            );
            let targets = [
                SocketAddr::from((lab.vip4, 8080)),
                SocketAddr::from((lab.vip6, 8080)),
            ];
            // A relay that starts before every reload and outlives them.
            let mut held = lab
                .client
                .run(|| TcpStream::connect_timeout(&targets[0], Duration::from_secs(3)))
                .unwrap()
                .unwrap();
            held.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // The client speaks first; its backend is connected then.
            held.write_all(b"hi").unwrap();
            let mut tag = [0u8; 3];
            held.read_exact(&mut tag).unwrap();
            assert_eq!(&tag, b"Ahi");

            let (pid, cfg) = (pid_file.to_str().unwrap(), file.to_str().unwrap());
            let done = AtomicBool::new(false);
            let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
            let seen_b = AtomicU64::new(0);
            let errors = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|cs| {
                for t in 0..4 {
                    let (done, ok, failed, seen_b, errors) =
                        (&done, &ok, &failed, &seen_b, &errors);
                    cs.spawn(move || {
                        lab.client
                            .run(|| {
                                let mut i = 0usize;
                                while !done.load(Relaxed) {
                                    let msg =
                                        format!("client {t} request {i}\n").repeat(1 + i % 40);
                                    match exchange(targets[(t + i) % 2], msg.as_bytes()) {
                                        Ok(tag) => {
                                            ok.fetch_add(1, Relaxed);
                                            if tag == b'B' {
                                                seen_b.fetch_add(1, Relaxed);
                                            }
                                        }
                                        Err(e) => {
                                            failed.fetch_add(1, Relaxed);
                                            errors.lock().unwrap().push(format!("{e}"));
                                        }
                                    }
                                    i += 1;
                                }
                            })
                            .unwrap();
                    });
                }
                // Twenty reloads, alternating A and A+B (B weighted 3),
                // with one invalid file in the middle.
                let t0 = Instant::now();
                for k in 0..20 {
                    std::thread::sleep(Duration::from_millis(150));
                    let backends = if k % 2 == 0 {
                        format!("{A}, {{ address = {B}, weight = 3 }}")
                    } else {
                        A.to_string()
                    };
                    if k % 4 == 0 {
                        // The command: checks the file, signals, waits for
                        // the verdict on the metrics endpoint.
                        std::fs::write(&file, config(lab, &backends)).unwrap();
                        let (code, out) = reload_cmd(
                            lab,
                            &["--pid-file", pid, "--config", cfg, "--metrics", METRICS],
                        );
                        assert_eq!(code, Some(0), "{out}");
                        assert!(out.contains("reloaded its configuration"), "{out}");
                        run.wait_for("configuration reloaded", Duration::from_secs(10))
                            .unwrap();
                    } else {
                        reload(
                            &mut run,
                            &file,
                            &config(lab, &backends),
                            "configuration reloaded",
                        );
                    }
                    if k == 10 {
                        let bad = &format!("iface = \"{}\"\n[[service]]\nname = \"web\"\nlisten = [\"198.18.0.1:8080\"]\n", lab.gw_if);
                        std::fs::write(&file, bad).unwrap();
                        // Checked first: nothing is sent.
                        let (code, out) = reload_cmd(lab, &["--pid-file", pid, "--config", cfg]);
                        assert_eq!(code, Some(1), "{out}");
                        assert!(
                            out.contains("nothing was sent")
                                && out.contains("service \"web\": no backend"),
                            "{out}"
                        );
                        // Sent anyway: the instance refuses and says so.
                        let (code, out) =
                            reload_cmd(lab, &["--pid-file", pid, "--metrics", METRICS]);
                        assert_eq!(code, Some(1), "{out}");
                        assert!(out.contains("refused the new configuration"), "{out}");
                        run.wait_for("reload refused", Duration::from_secs(10))
                            .unwrap();
                        reload(&mut run, &file, bad, "reload refused");
                    }
                }
                // Finally B alone: every new connection goes there.
                reload(&mut run, &file, &config(lab, B), "configuration reloaded");
                let b_before = seen_b.load(Relaxed);
                let ok_before = ok.load(Relaxed);
                std::thread::sleep(Duration::from_millis(1500));
                done.store(true, Relaxed);
                eprintln!(
                    "{} connections in {:?} of reloads, {} failed; {} reached B, {} after the last reload",
                    ok.load(Relaxed),
                    t0.elapsed(),
                    failed.load(Relaxed),
                    seen_b.load(Relaxed),
                    seen_b.load(Relaxed) - b_before,
                );
                assert!(
                    ok_before > 100,
                    "clients ran during the reloads: {ok_before}"
                );
                assert!(b_before > 0, "B received while it was configured");
                // Connections that started before the last reload may still
                // have gone to A; the ones after it must all reach B.
                assert!(
                    seen_b.load(Relaxed) - b_before + 8 >= ok.load(Relaxed) - ok_before,
                    "after the last reload every new connection reaches B"
                );
            });
            assert_eq!(
                failed.load(Relaxed),
                0,
                "no connection fails across reloads: {:?}",
                errors.lock().unwrap()
            );
            // The relay from before the reloads still works (to A).
            held.write_all(b"still here").unwrap();
            held.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            held.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"still here");

            let m = scrape_gw(lab, METRICS);
            let reloads = |r| metric(&m, "ackgate_config_reloads_total", Some(("result", r)));
            assert_eq!((reloads("ok"), reloads("failed")), (21.0, 2.0));
            assert_eq!(
                metric(&m, "ackgate_config_last_reload_successful", None),
                1.0
            );
            let to = |b: &str| {
                m.iter()
                    .filter(|s| {
                        s.name == "ackgate_backend_connects_total"
                            && s.labels.contains(&("backend".into(), b.into()))
                            && s.labels.contains(&("service".into(), "web".into()))
                    })
                    .map(|s| s.value)
                    .sum::<f64>()
            };
            assert!(to("127.0.0.1:9101") > 0.0 && to("127.0.0.1:9100") > 0.0);
            let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
            assert!(status.success(), "{out:?}");
            assert!(!pid_file.exists(), "the pid file is removed at exit");
            let refused = out.iter().find(|l| l.contains("reload refused")).unwrap();
            assert!(
                refused.contains("service \"web\": no backend"),
                "the refusal names the service and the problem: {refused}"
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ackgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A reload changes what XDP protects and whom it answers: a new service
/// is answered and served, a removed one is the kernel's again, and a
/// deny list drops the client's SYNs (counted) until a reload lifts it.
#[test]
fn reloads_change_the_protected_set_and_the_access_lists() {
    with_echo_lab(|lab| {
        let dir = tempdir().join("acl");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ackgate.toml");
        let cfg = |extra: &str, services: &[u16]| {
            let mut t = format!("iface = \"{}\"\n{extra}\n", lab.gw_if);
            for port in services {
                t += &format!(
                    "[[service]]\nname = \"s{port}\"\nlisten = [\"{}:{port}\"]\nbackends = [\"127.0.0.1:9000\"]\n",
                    lab.vip4
                );
            }
            t
        };
        std::fs::write(&file, cfg("", &[8080])).unwrap();
        let mut run = run_ackgate_until(
            lab,
            &["--config", file.to_str().unwrap(), "--metrics", METRICS],
            "proxy ready",
        );
        let at = |port: u16| SocketAddr::from((lab.vip4, port));
        // One echo through `port`, from the client namespace.
        let served = |port: u16| {
            lab.client
                .run(move || {
                    let mut s = TcpStream::connect_timeout(&at(port), Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"ping")?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b)?;
                    Ok::<_, std::io::Error>(&b == b"ping")
                })
                .unwrap()
        };
        assert!(served(8080).unwrap());
        // Nothing protects 8081 yet: the kernel, with no listener, resets.
        assert_eq!(
            served(8081).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );

        reload(
            &mut run,
            &file,
            &cfg("", &[8080, 8081]),
            "configuration reloaded",
        );
        assert!(
            served(8081).unwrap(),
            "a service added by a reload is served"
        );

        let deny = format!("deny = [\"{}/32\"]", lab.client4);
        reload(
            &mut run,
            &file,
            &cfg(&deny, &[8081]),
            "configuration reloaded",
        );
        let e = served(8081).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "a denied client's SYNs are dropped, not answered: {e}"
        );
        assert_eq!(
            served(8080).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a removed service is the kernel's again"
        );
        // The XDP counters are published once a second.
        std::thread::sleep(Duration::from_millis(1200));
        let m = scrape_gw(lab, METRICS);
        let dropped = metric(
            &m,
            "ackgate_xdp_dropped_total",
            Some(("reason", "acl_global")),
        );
        assert!(dropped >= 1.0, "the denied SYNs are counted: {dropped}");

        reload(&mut run, &file, &cfg("", &[8081]), "configuration reloaded");
        assert!(
            served(8081).unwrap(),
            "lifting the deny list lets it in again"
        );
        let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "{out:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
