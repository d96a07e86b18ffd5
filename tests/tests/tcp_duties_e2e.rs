//! The XDP program's TCP-endpoint duties, end to end: the real `ackgate run`
//! in a namespace lab, real kernel clients where a kernel client can produce
//! the case, and segments crafted onto the client's veth where none can.
//! What the client's interface sees (or never sees) and the gateway's
//! counters are the observable results. (xdp_duties covers the same rules
//! packet by packet through BPF_PROG_TEST_RUN.)

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ackgate::telemetry::stats::Sample;
use ackgate_lab::{
    frame::{self as packet, Segment, TCP_ACK, TCP_SYN},
    Capture, Lab,
};
use ackgate_tests::{
    connect_from, metric, run_ackgate_until, run_proxy, scrape_gw, with_backend_lab, with_echo_lab,
    METRICS,
};

fn metrics(lab: &Lab) -> Vec<Sample> {
    scrape_gw(lab, METRICS)
}

fn value(s: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    metric(s, name, label)
}

/// Waits for the XDP counters' next publication (once a second) to show
/// `want` more `name{label}` than `before`.
fn wait_for(lab: &Lab, before: &[Sample], name: &str, label: Option<(&str, &str)>, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = value(&metrics(lab), name, label) - value(before, name, label);
        if now >= want {
            assert_eq!(now, want, "{name}{label:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{label:?}: {now} of {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `seg` raw onto the client's veth, and returns the gateway's
/// answers to its source port seen on that veth within `wait`.
fn send_and_watch(lab: &Lab, seg: &Segment, wait: Duration) -> Vec<packet::Parsed> {
    let cif = lab.client_if;
    let (src, sport) = (seg.src, seg.sport);
    let frame = seg.build();
    lab.client
        .run(move || {
            let cap = Capture::open(cif).unwrap();
            cap.send(&frame).unwrap();
            let mut seen = Vec::new();
            let deadline = Instant::now() + wait;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if let Some(f) = cap.next_matching(left, |f| {
                    packet::parse(f).is_some_and(|p| p.dst == src && p.dport == sport)
                }) {
                    seen.push(packet::parse(&f).unwrap());
                }
            }
            seen
        })
        .unwrap()
}

fn macs(lab: &Lab) -> ([u8; 6], [u8; 6]) {
    (
        lab.client.mac(lab.client_if).unwrap(),
        lab.gw.mac(lab.gw_if).unwrap(),
    )
}

#[test]
fn crafted_segments_that_must_never_be_answered() {
    with_echo_lab(|lab| {
        let run = run_proxy(lab, "127.0.0.1:9000");
        let (cli_mac, gw_mac) = macs(lab);
        let before = metrics(lab);
        // An address of the client's subnet that no host owns: answers are
        // seen on the veth, and no client stack reacts to them.
        let nobody: IpAddr = Ipv4Addr::new(198, 18, 0, 77).into();
        let syn = |src: IpAddr, sport: u16| {
            let mut s = Segment::syn(src, sport, lab.vip4.into(), 8080, 1000, &[2, 4, 5, 0xb4]);
            (s.src_mac, s.dst_mac) = (cli_mac, gw_mac);
            s
        };
        let wait = Duration::from_millis(400);
        // Control: a SYN to our MAC is answered.
        let seen = send_and_watch(lab, &syn(nobody, 41_000), wait);
        assert_eq!(seen.len(), 1, "the control SYN gets its SYN-ACK");
        assert_eq!(seen[0].flags, 0x12);
        // A SYN-ACK with no socket behind it: no RST, nothing.
        let mut sa = syn(nobody, 41_001);
        (sa.flags, sa.ack) = (TCP_SYN | TCP_ACK, 0x5555);
        assert!(
            send_and_watch(lab, &sa, wait).is_empty(),
            "SYN-ACK answered"
        );
        // Not to our MAC, or from a multicast MAC.
        for (i, (src_mac, dst_mac)) in [
            (cli_mac, [0xff; 6]),
            (cli_mac, [0x02, 0, 0, 0, 0, 0x99]),
            ([0x01, 0, 0x5e, 0, 0, 1], gw_mac),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = syn(nobody, 41_010 + i as u16);
            (s.src_mac, s.dst_mac) = (src_mac, dst_mac);
            assert!(
                send_and_watch(lab, &s, wait).is_empty(),
                "case {i} answered"
            );
        }
        // Martian sources.
        for (i, src) in ["127.0.0.1", "0.0.0.7", "224.0.0.9", "198.18.0.1"]
            .iter()
            .enumerate()
        {
            let s = syn(src.parse().unwrap(), 41_020 + i as u16);
            assert!(send_and_watch(lab, &s, wait).is_empty(), "{src} answered");
        }
        let d = "ackgate_xdp_dropped_total";
        wait_for(lab, &before, d, Some(("reason", "synack_no_flow")), 1.0);
        wait_for(lab, &before, d, Some(("reason", "not_unicast")), 3.0);
        wait_for(lab, &before, d, Some(("reason", "martian")), 4.0);
        wait_for(lab, &before, "ackgate_xdp_syns_answered_total", None, 1.0);
        run.stop(Duration::from_secs(15)).unwrap();
    });
}

#[test]
fn a_segment_without_the_ack_flag_is_no_handshake() {
    with_echo_lab(|lab| {
        let run = run_proxy(lab, "127.0.0.1:9000");
        let (cli_mac, gw_mac) = macs(lab);
        let nobody: IpAddr = Ipv4Addr::new(198, 18, 0, 78).into();
        let mut syn = Segment::syn(
            nobody,
            42_000,
            lab.vip4.into(),
            8080,
            7777,
            &[2, 4, 5, 0xb4],
        );
        (syn.src_mac, syn.dst_mac) = (cli_mac, gw_mac);
        let seen = send_and_watch(lab, &syn, Duration::from_millis(400));
        assert_eq!(seen.len(), 1);
        let cookie = seen[0].seq;
        let before = metrics(lab);
        // The right acknowledgment number and a request, but only PSH.
        let mut seg = syn.clone();
        (seg.flags, seg.seq, seg.ack) = (0x08, 7778, cookie.wrapping_add(1));
        seg.tcp_options.clear();
        seg.payload = b"GET / HTTP/1.0\r\n\r\n".to_vec();
        assert!(send_and_watch(lab, &seg, Duration::from_millis(400)).is_empty());
        wait_for(lab, &before, "ackgate_xdp_acks_rejected_total", None, 1.0);
        assert_eq!(
            value(&metrics(lab), "ackgate_handoffs_total", None),
            value(&before, "ackgate_handoffs_total", None),
            "no handoff"
        );
        // With the ACK flag the same numbers complete the handshake.
        seg.flags = TCP_ACK;
        seg.payload.clear();
        send_and_watch(lab, &seg, Duration::from_millis(300));
        wait_for(lab, &before, "ackgate_xdp_acks_verified_total", None, 1.0);
        run.stop(Duration::from_secs(15)).unwrap();
    });
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn a_client_that_lost_its_state_is_recovered_by_the_kernels_challenge_ack() {
    with_echo_lab(|lab| {
        let run = run_proxy(lab, "127.0.0.1:9000");
        let target = SocketAddr::from((lab.vip4, 8080));
        let local = SocketAddr::from((lab.client4, 40_123));
        let t = lab
            .client
            .run(|| {
                let mut s = connect_from(local, target).unwrap();
                echo_once(&mut s, b"first life\n");
                // The client forgets the connection without a word: a socket
                // closed in repair mode sends neither FIN nor RST.
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::TcpRepair, &1).unwrap();
                drop(s);
                // Same port again: the gateway still holds the old
                // connection. Its challenge ACK draws the client's RST, which
                // ends it; the client's SYN retransmission is then answered.
                let t0 = Instant::now();
                let mut s = connect_from(local, target).unwrap();
                echo_once(&mut s, b"second life\n");
                s.shutdown(Shutdown::Both).unwrap();
                t0.elapsed()
            })
            .unwrap();
        eprintln!("reconnected from the same port and served in {t:?}");
        assert!(
            t < Duration::from_secs(4),
            "recovered within one SYN retransmission: {t:?}"
        );
        let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
        assert!(status.success());
        let c = ackgate_tests::last_counters(&out).expect("counters");
        assert_eq!(ackgate_tests::counter(&c, "handoffs"), 2, "{out:?}");
    });
}

/// Says goodbye and closes first: the gateway's side of the client
/// connection then ends in TIME_WAIT.
fn bye_server(l: TcpListener, stop: &AtomicBool) {
    l.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.write_all(b"bye\n");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

#[test]
fn a_time_wait_socket_answers_for_its_flow() {
    with_backend_lab(
        |_| {},
        bye_server,
        |lab| {
            // The backend speaks first: its backend is connected at once.
            let v4 = format!("{}:8080", lab.vip4);
            let run = run_ackgate_until(
                lab,
                &[
                    "--listen",
                    &v4,
                    "--server-first",
                    &v4,
                    "--backend",
                    "127.0.0.1:9000",
                ],
                "proxy ready",
            );
            let target = SocketAddr::from((lab.vip4, 8080));
            let cport = lab
                .client
                .run(|| {
                    let mut s =
                        TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    assert_eq!(got, b"bye\n");
                    s.local_addr().unwrap().port()
                })
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let o = lab.gw.exec(&["ss", "-tanH", "state", "time-wait"]).unwrap();
                if String::from_utf8_lossy(&o.stdout).contains(&format!(":{cport}")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no TIME_WAIT socket for port {cport}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // A late segment of the old connection (not a cookie ACK): the
            // time-wait socket answers it (an ACK), XDP does not drop it.
            let (cli_mac, gw_mac) = macs(lab);
            let mut a = Segment::syn(lab.client4.into(), cport, lab.vip4.into(), 8080, 12345, &[]);
            (a.flags, a.ack, a.src_mac, a.dst_mac) = (TCP_ACK, 999, cli_mac, gw_mac);
            let seen = send_and_watch(lab, &a, Duration::from_millis(600));
            assert!(
                seen.iter()
                    .any(|p| p.flags & TCP_ACK != 0 && p.src == IpAddr::from(lab.vip4)),
                "the time-wait socket's ACK: {:?}",
                seen.iter().map(|p| p.flags).collect::<Vec<_>>()
            );
            run.stop(Duration::from_secs(15)).unwrap();
        },
    );
}

#[test]
fn an_ack_replayed_after_the_cookie_lifetime_is_refused() {
    with_echo_lab(|lab| {
        // A 10 s epoch: cookies with timestamps live 10 s by their echoed
        // TSval, while the epoch bits alone would accept them for 10-20 s.
        let v4 = format!("{}:8080", lab.vip4);
        let run = run_ackgate_until(
            lab,
            &[
                "--listen",
                &v4,
                "--backend",
                "127.0.0.1:9000",
                "--metrics",
                METRICS,
                "--epoch-secs",
                "10",
            ],
            "proxy ready",
        );
        let (cli_mac, gw_mac) = macs(lab);
        let nobody: IpAddr = Ipv4Addr::new(198, 18, 0, 79).into();
        let ts = |tsval: u32, tsecr: u32| {
            let (v, e) = (tsval.to_be_bytes(), tsecr.to_be_bytes());
            vec![1, 1, 8, 10, v[0], v[1], v[2], v[3], e[0], e[1], e[2], e[3]]
        };
        let handshake = |sport: u16| {
            let mut opts = vec![2, 4, 5, 0xb4, 4, 2];
            opts.extend_from_slice(&ts(100, 0)[2..]);
            let mut syn = Segment::syn(nobody, sport, lab.vip4.into(), 8080, 5000, &opts);
            (syn.src_mac, syn.dst_mac) = (cli_mac, gw_mac);
            let seen = send_and_watch(lab, &syn, Duration::from_millis(300));
            assert_eq!(seen.len(), 1, "SYN-ACK");
            let mut ack = syn.clone();
            (ack.flags, ack.seq, ack.ack) = (TCP_ACK, 5001, seen[0].seq.wrapping_add(1));
            ack.tcp_options = ts(101, seen[0].options.ts().expect("timestamps").0);
            ack
        };
        // Start just after an epoch boundary, so that 10.7 s later the
        // epoch bits still accept the cookie (e+1) and only its age, as the
        // echoed TSval tells it, can refuse it.
        let phase = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                % 10_000
        };
        while !(100..1_000).contains(&phase()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = handshake(43_000);
        let fresh = handshake(43_001);
        let t0 = Instant::now();
        let before = metrics(lab);
        send_and_watch(lab, &fresh, Duration::from_millis(100));
        wait_for(lab, &before, "ackgate_xdp_acks_verified_total", None, 1.0);
        std::thread::sleep(Duration::from_millis(10_700).saturating_sub(t0.elapsed()));
        let before = metrics(lab);
        send_and_watch(lab, &old, Duration::from_millis(100));
        wait_for(lab, &before, "ackgate_xdp_acks_rejected_total", None, 1.0);
        assert_eq!(
            value(&metrics(lab), "ackgate_xdp_acks_verified_total", None),
            value(&before, "ackgate_xdp_acks_verified_total", None),
            "the replay is not handed off"
        );
        run.stop(Duration::from_secs(15)).unwrap();
    });
}
