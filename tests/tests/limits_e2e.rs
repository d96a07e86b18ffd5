//! Per-source limits, the first-byte timeout and lazy backend connects,
//! with two services from one config file: one address completing many
//! bare handshakes cannot keep clients from other addresses from being
//! served, and the backend never sees the bare handshakes.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::servers::echo_tagged;
use ackgate_tests::{
    connect_from, lab::Lab, metric, run_ackgate_until, scrape_gw, with_echo_lab, StopOnDrop,
    METRICS,
};

/// The attacker's own address, beside the lab's client address.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

fn config(lab: &Lab) -> String {
    format!(
        "iface = \"{gw}\"\n\
         [limits]\nmax_connections = 100\nfirst_byte_timeout_ms = 1000\n\
         [[service]]\nname = \"web\"\nlisten = [\"{v4}:8080\"]\nbackends = [\"127.0.0.1:9100\"]\n\
         [service.limits]\nper_source_max = 20\n\
         [[service]]\nname = \"api\"\nlisten = [\"{v4}:8081\"]\nbackends = [\"127.0.0.1:9101\"]\n\
         [service.limits]\nper_source_rate = 5\n",
        gw = lab.gw_if,
        v4 = lab.vip4
    )
}

#[test]
fn bare_handshakes_from_one_address_cannot_starve_the_others() {
    with_echo_lab(|lab| {
        lab.client
            .exec(&[
                "ip",
                "addr",
                "add",
                &format!("{ATTACKER}/24"),
                "dev",
                lab.client_if,
            ])
            .unwrap();
        let dir = std::env::temp_dir().join(format!("ackgate-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ackgate.toml");
        std::fs::write(&file, config(lab)).unwrap();
        let stop = AtomicBool::new(false);
        let (web_accepted, api_accepted) = (AtomicU64::new(0), AtomicU64::new(0));
        let listeners = [9100u16, 9101].map(|port| {
            lab.gw
                .run(move || TcpListener::bind(("127.0.0.1", port)))
                .unwrap()
                .unwrap()
        });
        std::thread::scope(|sc| {
            let _stop = StopOnDrop(&stop);
            let [web_l, api_l] = listeners;
            sc.spawn(|| echo_tagged(web_l, &stop, &web_accepted, None));
            sc.spawn(|| echo_tagged(api_l, &stop, &api_accepted, None));
            let run = run_ackgate_until(
                lab,
                &["--config", file.to_str().unwrap(), "--metrics", METRICS],
                "proxy ready",
            );
            let web = SocketAddr::from((lab.vip4, 8080));
            let api = SocketAddr::from((lab.vip4, 8081));

            // 60 bare handshakes from one address: 20 are held (until the
            // first-byte timeout resets them), the other 40 reset at once.
            let (bare, t0) = lab
                .client
                .run(|| {
                    let t0 = Instant::now();
                    // A RST that arrives before the connecting thread
                    // wakes fails the connect() itself: a prompt reset too.
                    let v: Vec<std::io::Result<TcpStream>> = (0..60)
                        .map(|_| connect_from(SocketAddr::new(ATTACKER.into(), 0), web))
                        .collect();
                    (v, t0)
                })
                .unwrap();
            // Each bare connection ends: a RST at once (over the limit) or
            // after the timeout; none ever sees data. Watched from now on.
            let watchers: Vec<_> = bare
                .into_iter()
                .map(|s| {
                    std::thread::spawn(move || {
                        let mut s = match s {
                            Ok(s) => s,
                            Err(e) => return (Err(e.kind()), t0.elapsed()),
                        };
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        let mut b = [0u8; 1];
                        let r = s.read(&mut b).map_err(|e| e.kind());
                        (r, t0.elapsed())
                    })
                })
                .collect();
            // Meanwhile another address is served, every time.
            let served = lab
                .client
                .run(|| {
                    (0..50)
                        .filter(|i| {
                            let msg = format!("legit {i}\n").repeat(10);
                            TcpStream::connect_timeout(&web, Duration::from_secs(3))
                                .and_then(|mut s| echo(&mut s, msg.as_bytes()))
                                .is_ok()
                        })
                        .count()
                })
                .unwrap();
            assert_eq!(served, 50, "the other address is served");
            let mut ends = Vec::new();
            for w in watchers {
                let (r, t) = w.join().unwrap();
                assert_eq!(
                    r,
                    Err(std::io::ErrorKind::ConnectionReset),
                    "a bare handshake ends with a RST"
                );
                ends.push(t);
            }
            let late = ends
                .iter()
                .filter(|t| **t >= Duration::from_millis(900))
                .count();
            assert_eq!(late, 20, "20 held until the first-byte timeout: {ends:?}");
            assert!(ends.iter().all(|t| *t < Duration::from_secs(5)), "{ends:?}");
            assert_eq!(
                web_accepted.load(Relaxed),
                50,
                "the backend saw the served clients and no bare handshake"
            );

            // Rate: 20 connections at once from one address to `api`, whose
            // sources may open 5 per second.
            let api_ok = lab
                .client
                .run(|| {
                    (0..20)
                        .filter(|i| {
                            connect_from(SocketAddr::new(ATTACKER.into(), 0), api)
                                .and_then(|mut s| echo(&mut s, format!("api {i}").as_bytes()))
                                .is_ok()
                        })
                        .count()
                })
                .unwrap();
            assert!(
                (5..=7).contains(&api_ok),
                "about 5 per second pass the rate limit: {api_ok}"
            );
            assert_eq!(api_accepted.load(Relaxed), api_ok as u64);

            let m = scrape_gw(lab, METRICS);
            let resets = |svc: &str, r: &str| {
                m.iter()
                    .filter(|s| {
                        s.name == "ackgate_resets_total"
                            && s.labels.contains(&("service".into(), svc.into()))
                            && s.labels.contains(&("reason".into(), r.into()))
                    })
                    .map(|s| s.value)
                    .sum::<f64>()
            };
            assert_eq!(resets("web", "source_limit"), 40.0);
            assert_eq!(resets("web", "first_byte_timeout"), 20.0);
            assert_eq!(resets("api", "source_rate"), (20 - api_ok) as f64);
            assert_eq!(
                metric(&m, "ackgate_connections_active", None),
                0.0,
                "every connection was given back"
            );
            let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
            assert!(status.success(), "{out:?}");
        });
        let _ = std::fs::remove_dir_all(&dir);
    });
}
