//! The duties of a TCP endpoint, kept in XDP (BPF_PROG_TEST_RUN against the
//! production program; kernel sockets, where a case needs them, are real
//! ones in a namespace of the test's own):
//!
//! * a SYN for a flow the kernel holds goes to the kernel (its challenge
//!   ACK recovers a client that lost its state);
//! * what fails the cookie check on a TIME_WAIT flow goes to the kernel's
//!   time-wait handling, what passes it is a new connection;
//! * SYN-ACKs without a socket are dropped and counted, never answered;
//! * a segment without the ACK flag never completes a handoff;
//! * only unicast frames to the interface's MAC are answered, and SYNs from
//!   martian sources never are;
//! * an ACK whose echoed TSval dates its SYN-ACK beyond the cookie
//!   lifetime is refused, however valid its MAC.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use ackgate::xdp::{secret::Secret, Responder, Settings};
use ackgate_common::wire::Counter;
use ackgate_lab::{
    frame::{self as packet, Parsed, Segment, TCP_ACK, TCP_FIN, TCP_SYN},
    harness, Lab,
};
use ackgate_tests::{
    require_root,
    test_run::{run, CLIENT4, CLIENT6, SETTINGS, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_TX},
};

const EPOCH: u32 = 31_000_007;
const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn responder_for(services: &[SocketAddr], settings: &Settings) -> Responder {
    require_root();
    let mut r = Responder::load().unwrap();
    for s in services {
        r.add_service(*s).unwrap();
    }
    r.install_keys(&Secret([9; 16]), EPOCH, settings).unwrap();
    r.set_handoff(true).unwrap();
    r.set_mac(OUR_MAC).unwrap();
    r
}

fn responder() -> Responder {
    responder_for(
        &[
            SocketAddr::new(VIP4.into(), 80),
            SocketAddr::new(VIP6.into(), 443),
        ],
        &SETTINGS,
    )
}

fn linux_syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Segment {
    let opts = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0x13, 0x88, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    Segment::syn(src, sport, dst, dport, 0x0102_0304, &opts)
}

fn answered(r: &Responder, syn: &Segment) -> Parsed {
    let (action, out, d) = run(r, &syn.build());
    assert_eq!((action, d.get(Counter::SynAnswered)), (XDP_TX, 1), "{d}");
    packet::parse(&out).unwrap()
}

fn ack_for(syn: &Segment, synack: &Parsed) -> Segment {
    let mut a = syn.clone();
    a.flags = TCP_ACK;
    a.seq = syn.seq.wrapping_add(1);
    a.ack = synack.seq.wrapping_add(1);
    a.tcp_options = match synack.options.ts() {
        Some((tsval, _)) => {
            let (v, e) = (5_001u32.to_be_bytes(), tsval.to_be_bytes());
            vec![1, 1, 8, 10, v[0], v[1], v[2], v[3], e[0], e[1], e[2], e[3]]
        }
        None => vec![],
    };
    a
}

fn dropped(r: &Responder, seg: &Segment, c: Counter) {
    let (action, _, d) = run(r, &seg.build());
    assert_eq!((action, d.get(c)), (XDP_DROP, 1), "{:?}: {d}", c.name());
}

#[test]
fn synack_without_a_socket_is_dropped_not_answered() {
    let r = responder();
    for (src, dst, port) in [
        (IpAddr::from(CLIENT4), IpAddr::from(VIP4), 80),
        (CLIENT6.into(), VIP6.into(), 443),
    ] {
        let mut sa = linux_syn(src, 40_000, dst, port);
        sa.flags = TCP_SYN | TCP_ACK;
        sa.ack = 77;
        dropped(&r, &sa, Counter::DropSynAckNoFlow);
    }
}

#[test]
fn a_segment_without_the_ack_flag_never_completes_a_handoff() {
    let mut r = responder();
    let syn = linux_syn(CLIENT4.into(), 40_001, VIP4.into(), 80);
    let synack = answered(&r, &syn);
    let ack = ack_for(&syn, &synack);
    // The right acknowledgment number, but no ACK flag: bare, PSH, FIN.
    for flags in [0u8, 0x08, TCP_FIN] {
        let mut s = ack.clone();
        s.flags = flags;
        s.payload = if flags == 0x08 {
            b"GET /".to_vec()
        } else {
            vec![]
        };
        dropped(&r, &s, Counter::AckRejected);
    }
    assert!(harness::drain_handoffs(&mut r).unwrap().is_empty());
    // The same segment with the flag verifies: the cookie was good.
    let (action, _, d) = run(&r, &ack.build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    assert_eq!(harness::drain_handoffs(&mut r).unwrap().len(), 1);
}

#[test]
fn only_unicast_frames_to_our_mac_are_answered() {
    let mut r = responder();
    let syn = linux_syn(CLIENT4.into(), 40_002, VIP4.into(), 80);
    answered(&r, &syn);
    for (what, src, dst) in [
        ("another host's MAC", syn.src_mac, [0x02, 0, 0, 0, 0, 0x03]),
        ("broadcast", syn.src_mac, [0xff; 6]),
        ("multicast", syn.src_mac, [0x01, 0x00, 0x5e, 0, 0, 1]),
        ("multicast source", [0x01, 0x00, 0x5e, 0, 0, 9], OUR_MAC),
    ] {
        let mut s = syn.clone();
        (s.src_mac, s.dst_mac) = (src, dst);
        let (action, _, d) = run(&r, &s.build());
        assert_eq!(
            (action, d.get(Counter::DropNotUnicast)),
            (XDP_DROP, 1),
            "{what}: {d}"
        );
        // Its ACK is not handed off either.
        let synack = answered(&r, &syn);
        let mut a = ack_for(&syn, &synack);
        (a.src_mac, a.dst_mac) = (src, dst);
        dropped(&r, &a, Counter::DropNotUnicast);
    }
    assert!(harness::drain_handoffs(&mut r).unwrap().is_empty());
    // All zero (no interface yet) checks nothing but the group bits.
    r.set_mac([0; 6]).unwrap();
    let mut s = syn.clone();
    s.dst_mac = [0x02, 0, 0, 0, 0, 0x03];
    answered(&r, &s);
}

#[test]
fn syns_from_martian_sources_are_never_answered() {
    let r = responder();
    let v4: [Ipv4Addr; 8] = [
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 5),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 1, 2, 3),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
        VIP4,
    ];
    for src in v4 {
        let s = linux_syn(src.into(), 40_003, VIP4.into(), 80);
        let (action, _, d) = run(&r, &s.build());
        assert_eq!(
            (action, d.get(Counter::DropMartian)),
            (XDP_DROP, 1),
            "{src}"
        );
    }
    let v6: [Ipv6Addr; 6] = [
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::LOCALHOST,
        "ff02::1".parse().unwrap(),
        "ff0e::5".parse().unwrap(),
        "fe80::1".parse().unwrap(),
        VIP6,
    ];
    for src in v6 {
        let s = linux_syn(src.into(), 40_003, VIP6.into(), 443);
        let (action, _, d) = run(&r, &s.build());
        assert_eq!(
            (action, d.get(Counter::DropMartian)),
            (XDP_DROP, 1),
            "{src}"
        );
    }
    // Neighbours of the martian ranges are ordinary clients.
    for src in [Ipv4Addr::new(1, 0, 0, 1), Ipv4Addr::new(223, 255, 255, 254)] {
        answered(&r, &linux_syn(src.into(), 40_003, VIP4.into(), 80));
    }
    for src in ["fec0::1", "2001:db8::1", "fe00::1"] {
        let src: Ipv6Addr = src.parse().unwrap();
        answered(&r, &linux_syn(src.into(), 40_003, VIP6.into(), 443));
    }
}

#[test]
fn an_ack_echoing_a_stale_tsval_is_refused() {
    let short = Settings {
        ts_max_age_ms: 200,
        ..SETTINGS
    };
    let services = [SocketAddr::new(VIP4.into(), 80)];
    let mut r = responder_for(&services, &short);
    let syn = linux_syn(CLIENT4.into(), 40_004, VIP4.into(), 80);
    let synack = answered(&r, &syn);
    let ack = ack_for(&syn, &synack);
    // Another TSecr with the same option bits: the MAC does not cover the
    // clock bits, the freshness check does.
    let mut forged_ts = ack.clone();
    let tsval = synack.options.ts().unwrap().0;
    let e = (tsval ^ 0x0100_0000).to_be_bytes();
    forged_ts.tcp_options[8..12].copy_from_slice(&e);
    dropped(&r, &forged_ts, Counter::AckRejected);
    std::thread::sleep(Duration::from_millis(400));
    r.tick_clock().unwrap();
    dropped(&r, &ack, Counter::AckRejected);
    assert!(harness::drain_handoffs(&mut r).unwrap().is_empty());
    // The same ACK within a 60 s lifetime: accepted.
    r.install_keys(&Secret([9; 16]), EPOCH, &SETTINGS).unwrap();
    let (action, _, d) = run(&r, &ack.build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    assert_eq!(harness::drain_handoffs(&mut r).unwrap().len(), 1);
}

/// In a namespace of its own, so its real sockets and the TestRun frames
/// meet in one socket table: the service on `VIP4:port`, clients on
/// `CLIENT4` (both local there).
fn in_lab<R: Send>(f: impl FnOnce(u16) -> R + Send) -> R {
    require_root();
    let lab = Lab::new().unwrap();
    lab.gw
        .exec(&["ip", "addr", "add", &format!("{CLIENT4}/32"), "dev", "lo"])
        .unwrap();
    lab.gw.run(|| f(8088)).unwrap()
}

fn connect_from(port: u16) -> (TcpStream, u16) {
    let sock = connect_bound(port);
    let p = sock.local_addr().unwrap().port();
    (sock, p)
}

/// A client socket bound to CLIENT4 and connected to VIP4:port.
fn connect_bound(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket/bind/connect with valid sockaddr_in values; the
    // fd is owned by the TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let s = TcpStream::from_raw_fd(fd);
        let sin = |a: Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let b = sin(CLIENT4, 0);
        assert_eq!(
            libc::bind(fd, (&b as *const libc::sockaddr_in).cast(), len),
            0
        );
        let c = sin(VIP4, port);
        assert_eq!(
            libc::connect(fd, (&c as *const libc::sockaddr_in).cast(), len),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        s
    }
}

#[test]
fn a_syn_for_a_flow_the_kernel_holds_goes_to_the_kernel() {
    in_lab(|port| {
        let l = TcpListener::bind((VIP4, port)).unwrap();
        let (c, cport) = connect_from(port);
        let _server = l.accept().unwrap();
        let r = responder_for(&[SocketAddr::new(VIP4.into(), port)], &SETTINGS);
        // A client that lost its state reuses the port: the kernel's
        // socket answers it (challenge ACK), not a cookie.
        let syn = linux_syn(CLIENT4.into(), cport, VIP4.into(), port);
        let (action, out, d) = run(&r, &syn.build());
        assert_eq!(
            (action, d.get(Counter::ProtectedPassed)),
            (XDP_PASS, 1),
            "{d}"
        );
        assert_eq!(out, syn.build(), "passed untouched");
        // Any other port gets a cookie.
        answered(&r, &linux_syn(CLIENT4.into(), cport ^ 1, VIP4.into(), port));
        drop(c);
    });
}

#[test]
fn time_wait_flows_get_the_kernels_time_wait_handling_unless_the_cookie_verifies() {
    in_lab(|port| {
        let l = TcpListener::bind((VIP4, port)).unwrap();
        let (mut c, cport) = connect_from(port);
        let (mut s, _) = l.accept().unwrap();
        // The service closes first: its socket ends in TIME_WAIT.
        s.write_all(b"bye").unwrap();
        drop(s);
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        drop(c);
        let out = std::process::Command::new("ss")
            .args(["-tanH", "state", "time-wait"])
            .output()
            .unwrap();
        let tw = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            tw.contains(&format!("{VIP4}:{port}")) && tw.contains(&format!(":{cport}")),
            "service socket in TIME_WAIT: {tw}"
        );
        let mut r = responder_for(&[SocketAddr::new(VIP4.into(), port)], &SETTINGS);
        // A retransmitted FIN and a late ACK of the old connection: the
        // time-wait socket's (it re-ACKs the FIN), not forged ACKs.
        let mut fin = Segment::syn(CLIENT4.into(), cport, VIP4.into(), port, 5, &[]);
        fin.flags = TCP_FIN | TCP_ACK;
        fin.ack = 1234;
        for seg in [fin.clone(), {
            let mut a = fin.clone();
            a.flags = TCP_ACK;
            a
        }] {
            let (action, out, d) = run(&r, &seg.build());
            assert_eq!(
                (action, d.get(Counter::ProtectedPassed)),
                (XDP_PASS, 1),
                "{d}"
            );
            assert_eq!(out, seg.build());
        }
        // A new SYN on the same port is answered, and its ACK, whose cookie
        // verifies, is a new connection.
        let syn = linux_syn(CLIENT4.into(), cport, VIP4.into(), port);
        let synack = answered(&r, &syn);
        let (action, _, d) = run(&r, &ack_for(&syn, &synack).build());
        assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1), "{d}");
        assert_eq!(harness::drain_handoffs(&mut r).unwrap().len(), 1);
    });
}
