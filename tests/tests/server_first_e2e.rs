//! Server-speaks-first services (SSH, SMTP) and a lost first ACK: the
//! client believes it is connected and waits for a banner, sending nothing
//! that could carry its cookie again. For services marked `--server-first`,
//! ackgate retransmits the SYN-ACK (after 1, 3 and 7 s, as a kernel listener
//! would); the client's answering ACK completes the handoff and the banner
//! arrives. For other services the client keeps waiting (the README says
//! so). A flood of spoofed SYNs cannot make ackgate reflect more than its
//! retransmission budget.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ackgate::{handoff::retransmit::MAX_PER_SEC, telemetry::stats::Sample};
use ackgate_lab::{
    frame::{self as packet, Segment},
    Capture, Lab,
};
use ackgate_tests::{metric, run_ackgate_until, scrape_gw, with_backend_lab};
use rand::{Rng as _, SeedableRng as _};

const METRICS: &str = "127.0.0.1:9469";
const BANNER: &[u8] = b"220 ackgate-test ESMTP\r\n";
const FIRST: u16 = 2222;
const CLIENT_FIRST: u16 = 2223;

/// Banner-first backend: writes the banner on accept, then reads to EOF.
fn banner_server(l: TcpListener, stop: &AtomicBool) {
    l.set_nonblocking(true).unwrap();
    std::thread::scope(|sc| {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    sc.spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let _ = s.write_all(BANNER);
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

fn value(s: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    metric(s, name, Some(label))
}

/// Connects with the client's ACKs to `target` dropped on the way out,
/// lifts the drop, and waits up to `wait` for the banner: the time from
/// connect() to the banner, or `None`.
fn banner_after_lost_ack(lab: &Lab, target: SocketAddr, wait: Duration) -> Option<Duration> {
    let tool = if target.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    };
    let port = target.port().to_string();
    let rule = [
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "--tcp-flags",
        "SYN,ACK,FIN,RST,PSH",
        "ACK",
        "-j",
        "DROP",
    ];
    let mut add = vec![tool, "-A"];
    add.extend_from_slice(&rule);
    let mut del = vec![tool, "-D"];
    del.extend_from_slice(&rule);
    lab.client.exec(&add).unwrap();
    let s = lab
        .client
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))
        .unwrap();
    lab.client.exec(&del).unwrap();
    let mut s = s.expect("the SYN-ACK arrives: connect() succeeds");
    let t0 = Instant::now();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = vec![0u8; BANNER.len()];
    match s.read_exact(&mut got) {
        Ok(()) => {
            assert_eq!(got, BANNER);
            Some(t0.elapsed())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("{target}: {e}"),
    }
}

/// SYN-ACKs for client port `cport` seen on the client's interface within
/// `window` of a normal connect to `target`, and the banner's delay.
fn synacks_of_a_normal_connection(
    lab: &Lab,
    target: SocketAddr,
    window: Duration,
) -> (usize, Duration) {
    let cif = lab.client_if;
    lab.client
        .run(move || {
            let cap = Capture::open(cif).unwrap();
            let t0 = Instant::now();
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
            let cport = s.local_addr().unwrap().port();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut got = vec![0u8; BANNER.len()];
            s.read_exact(&mut got).unwrap();
            let banner = t0.elapsed();
            let mut n = 0;
            let deadline = t0 + window;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if cap
                    .next_matching(left, |f| {
                        packet::parse(f).is_some_and(|p| p.flags & 0x12 == 0x12 && p.dport == cport)
                    })
                    .is_some()
                {
                    n += 1;
                }
            }
            (n, banner)
        })
        .unwrap()
}

#[test]
fn server_first_clients_recover_from_a_lost_ack_and_floods_stay_within_budget() {
    with_backend_lab(
        |_| {},
        banner_server,
        |lab| {
            let (v4, v6) = (
                format!("{}:{FIRST}", lab.vip4),
                format!("[{}]:{FIRST}", lab.vip6),
            );
            let other = format!("{}:{CLIENT_FIRST}", lab.vip4);
            let run = run_ackgate_until(
                lab,
                &[
                    "--listen",
                    &v4,
                    "--listen",
                    &v6,
                    "--listen",
                    &other,
                    "--server-first",
                    &v4,
                    "--server-first",
                    &v6,
                    "--backend",
                    "127.0.0.1:9000",
                    "--metrics",
                    METRICS,
                ],
                "proxy ready",
            );
            let wait = Duration::from_secs(5);
            for target in [v4.parse().unwrap(), v6.parse().unwrap()] {
                let t = banner_after_lost_ack(lab, target, wait).unwrap_or_else(|| {
                    panic!("{target}: no banner within {wait:?} after a lost ACK")
                });
                eprintln!("{target}: banner {t:?} after a lost ACK");
                assert!(
                    t >= Duration::from_millis(700) && t < Duration::from_millis(3_000),
                    "{target}: recovered by the 1 s retransmission, got {t:?}"
                );
            }
            // Not marked server-first: nothing retransmits, the client waits.
            let t = banner_after_lost_ack(lab, other.parse().unwrap(), Duration::from_secs(3));
            assert_eq!(t, None, "a client-first service does not retransmit");
            // A normal connection: one SYN-ACK, the banner at once, and no
            // retransmission after its handoff.
            let (n, banner) = synacks_of_a_normal_connection(
                lab,
                v4.parse().unwrap(),
                Duration::from_millis(2_500),
            );
            assert_eq!(n, 1, "one SYN-ACK for a connection whose ACK arrived");
            assert!(
                banner < Duration::from_millis(500),
                "banner after {banner:?}"
            );
            let m = scrape_gw(lab, METRICS);
            let name = "ackgate_synack_retransmits_total";
            assert_eq!(value(&m, name, ("result", "sent")), 2.0, "one per lost ACK");
            assert_eq!(value(&m, name, ("result", "failed")), 0.0);

            // 20,000 spoofed SYNs: every one is remembered (the map keeps the
            // newest 4,096), none will ever ACK, and their sources have no
            // route back. What ackgate attempts stays within its budget.
            let (cli_mac, gw_mac) = (
                lab.client.mac(lab.client_if).unwrap(),
                lab.gw.mac(lab.gw_if).unwrap(),
            );
            let vip = lab.vip4;
            let cif = lab.client_if;
            let t_flood = Instant::now();
            lab.client
                .run(move || {
                    let tx = Capture::open(cif).unwrap();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                    for _ in 0..20_000 {
                        let src = Ipv4Addr::new(203, 0, 113, rng.gen_range(1..255));
                        let mut s = Segment::syn(
                            IpAddr::V4(src),
                            rng.gen_range(1024..65535),
                            IpAddr::V4(vip),
                            FIRST,
                            rng.gen(),
                            &[2, 4, 5, 0xb4],
                        );
                        (s.src_mac, s.dst_mac) = (cli_mac, gw_mac);
                        tx.send(&s.build()).unwrap();
                    }
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(3_500));
            let elapsed = t_flood.elapsed().as_secs_f64();
            let m = scrape_gw(lab, METRICS);
            let attempted =
                value(&m, name, ("result", "sent")) - 2.0 + value(&m, name, ("result", "failed"));
            let over = value(&m, name, ("result", "over_budget"));
            eprintln!(
            "flood: {attempted} retransmissions attempted, {over} over budget in {elapsed:.1} s"
        );
            assert!(attempted > 0.0, "remembered SYN-ACKs were retried");
            assert!(
                attempted <= MAX_PER_SEC * (1.0 + elapsed) + 10.0,
                "{attempted} retransmissions in {elapsed:.1} s exceed the budget"
            );
            assert!(over > 0.0, "the budget held the rest back");
            let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
            assert!(status.success(), "{out:?}");
        },
    );
}
