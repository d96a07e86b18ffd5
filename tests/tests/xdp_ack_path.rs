//! The XDP ACK path through BPF_PROG_TEST_RUN: with handoff on, an ACK for a
//! flow the kernel has no socket for must carry a valid cookie; valid ones
//! become `Handoff` events, everything else is dropped without an answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};

use ackgate::xdp::{secret::Secret, Responder};
use ackgate_common::{
    options::NO_WSCALE,
    wire::{Counter, Handoff, HF_FIN, HF_PROBE, HF_SACK, HF_TIMESTAMPS},
};
use ackgate_lab::{
    frame::{self as packet, Parsed, Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    harness,
};
use ackgate_tests::{
    require_root,
    test_run::{run, CLIENT4, CLIENT6, SETTINGS, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_TX},
};

const EPOCH: u32 = 31_000_007;

fn responder() -> Responder {
    require_root();
    let mut r = Responder::load().unwrap();
    r.add_service(SocketAddr::new(VIP4.into(), 80)).unwrap();
    r.add_service(SocketAddr::new(VIP6.into(), 443)).unwrap();
    r.install_keys(&Secret([9; 16]), EPOCH, &SETTINGS).unwrap();
    r.set_handoff(true).unwrap();
    r
}

fn linux_syn_opts(tsval: u32) -> Vec<u8> {
    let t = tsval.to_be_bytes();
    vec![
        2, 4, 5, 0xb4, 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 1, 3, 3, 10,
    ]
}

fn ts_opts(tsval: u32, tsecr: u32) -> Vec<u8> {
    let (v, e) = (tsval.to_be_bytes(), tsecr.to_be_bytes());
    vec![1, 1, 8, 10, v[0], v[1], v[2], v[3], e[0], e[1], e[2], e[3]]
}

/// Handshake up to the SYN-ACK; returns the SYN sent and the SYN-ACK.
fn handshake(r: &Responder, src: IpAddr, dst: IpAddr, dport: u16) -> (Segment, Parsed) {
    let syn = Segment::syn(src, 41_000, dst, dport, 0x0102_0304, &linux_syn_opts(5_000));
    let (action, out, _) = run(r, &syn.build());
    assert_eq!(action, XDP_TX);
    (syn, packet::parse(&out).unwrap())
}

/// The client's ACK completing the handshake.
fn ack_for(syn: &Segment, synack: &Parsed) -> Segment {
    let mut a = syn.clone();
    a.flags = TCP_ACK;
    a.seq = syn.seq.wrapping_add(1);
    a.ack = synack.seq.wrapping_add(1);
    a.window = 502;
    a.tcp_options = ts_opts(5_001, synack.options.tsval);
    a
}

fn one_event(r: &mut Responder) -> Handoff {
    let ev = harness::drain_handoffs(r).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    ev[0]
}

#[test]
fn valid_ack_becomes_a_handoff_event_v4() {
    let mut r = responder();
    let (syn, synack) = handshake(&r, CLIENT4.into(), VIP4.into(), 80);
    let ack = ack_for(&syn, &synack);
    let (action, _, d) = run(&r, &ack.build());
    assert_eq!(
        (action, d.get(Counter::AckVerified)),
        (XDP_DROP, 1),
        "consumed, not passed to the kernel"
    );
    let e = one_event(&mut r);
    assert_eq!(e.family, 4);
    assert_eq!(e.saddr[0], u32::from_ne_bytes(CLIENT4.octets()));
    assert_eq!(e.daddr[0], u32::from_ne_bytes(VIP4.octets()));
    assert_eq!(
        (u16::from_be(e.sport_be), u16::from_be(e.dport_be)),
        (41_000, 80)
    );
    assert_eq!(e.client_isn, syn.seq);
    assert_eq!(e.cookie, synack.seq);
    assert_eq!(e.mss, 1460);
    assert_eq!(e.wscale, 10, "the client's window shift");
    assert_eq!(e.flags, HF_SACK | HF_TIMESTAMPS);
    assert_eq!(e.window, 502);
    assert_eq!((e.tsval, e.tsecr), (5_001, synack.options.tsval));
    assert_eq!(e.payload_len, 0);
}

#[test]
fn valid_ack_becomes_a_handoff_event_v6() {
    let mut r = responder();
    let (syn, synack) = handshake(&r, CLIENT6.into(), VIP6.into(), 443);
    let (action, _, d) = run(&r, &ack_for(&syn, &synack).build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    let e = one_event(&mut r);
    assert_eq!(e.family, 6);
    let w = |a: Ipv6Addr| {
        let o = a.octets();
        [0, 4, 8, 12].map(|k| u32::from_ne_bytes([o[k], o[k + 1], o[k + 2], o[k + 3]]))
    };
    assert_eq!((e.saddr, e.daddr), (w(CLIENT6), w(VIP6)));
    assert_eq!(e.mss, 1440);
}

#[test]
fn forged_and_tampered_acks_are_dropped_without_events() {
    let mut r = responder();
    let (syn, synack) = handshake(&r, CLIENT4.into(), VIP4.into(), 80);
    let good = ack_for(&syn, &synack);
    let mut cases: Vec<(&str, Segment)> = Vec::new();
    let mut a = good.clone();
    a.ack ^= 0x100;
    cases.push(("wrong ack number", a));
    let mut a = good.clone();
    a.seq = a.seq.wrapping_add(7);
    cases.push(("wrong sequence number", a));
    let mut a = good.clone();
    a.tcp_options = ts_opts(5_001, synack.options.tsval ^ 1);
    cases.push(("TSecr option bits changed", a));
    let mut a = good.clone();
    a.tcp_options = vec![];
    cases.push(("timestamps dropped", a));
    let mut a = good.clone();
    a.sport ^= 1;
    cases.push(("other source port", a));
    let mut a = good.clone();
    a.seq = syn.seq;
    a.payload = b"x".to_vec();
    cases.push(("data at seq = ISN", a));
    for (what, seg) in cases {
        let (action, _, d) = run(&r, &seg.build());
        assert_eq!(
            (action, d.get(Counter::AckRejected)),
            (XDP_DROP, 1),
            "{what}: {d}"
        );
    }
    assert!(
        harness::drain_handoffs(&mut r).unwrap().is_empty(),
        "no event for a rejected ACK"
    );
    // 1,000 random ACKs from random sources: no event, all counted.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let before = r.counters().unwrap();
    for _ in 0..1000 {
        let mut a = Segment::syn(
            Ipv4Addr::from(rng.gen::<u32>()).into(),
            rng.gen(),
            VIP4.into(),
            80,
            rng.gen(),
            &[],
        );
        a.flags = TCP_ACK;
        a.ack = rng.gen();
        let mut out = [0u8; 256];
        let res = harness::test_run(&r, &a.build(), &mut out).unwrap();
        assert_eq!(res.return_value, XDP_DROP);
    }
    let d = r.counters().unwrap().since(&before);
    assert_eq!(d.get(Counter::AckRejected), 1000, "{d}");
    assert!(harness::drain_handoffs(&mut r).unwrap().is_empty());
}

#[test]
fn zero_window_probe_after_a_lost_ack_is_accepted() {
    let mut r = responder();
    let (syn, synack) = handshake(&r, CLIENT4.into(), VIP4.into(), 80);
    let mut probe = ack_for(&syn, &synack);
    probe.seq = syn.seq; // snd_una - 1
    let (action, _, d) = run(&r, &probe.build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    let e = one_event(&mut r);
    assert_eq!(e.client_isn, syn.seq);
    assert_eq!(e.flags & HF_PROBE, HF_PROBE);
}

#[test]
fn data_and_fin_on_a_valid_ack_are_reported() {
    let mut r = responder();
    let (syn, synack) = handshake(&r, CLIENT4.into(), VIP4.into(), 80);
    let mut a = ack_for(&syn, &synack);
    a.flags = TCP_ACK | TCP_FIN;
    a.payload = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    let (action, _, d) = run(&r, &a.build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    let e = one_event(&mut r);
    assert_eq!(e.payload_len, 18);
    assert_eq!(e.flags & HF_FIN, HF_FIN);
}

#[test]
fn ack_without_timestamps_verifies_when_the_syn_had_none() {
    let mut r = responder();
    let syn = Segment::syn(
        CLIENT4.into(),
        41_001,
        VIP4.into(),
        80,
        77,
        &[2, 4, 5, 0xb4],
    );
    let (_, out, _) = run(&r, &syn.build());
    let synack = packet::parse(&out).unwrap();
    let mut a = syn.clone();
    a.flags = TCP_ACK;
    a.seq = 78;
    a.ack = synack.seq.wrapping_add(1);
    a.tcp_options = vec![];
    let (action, _, d) = run(&r, &a.build());
    assert_eq!((action, d.get(Counter::AckVerified)), (XDP_DROP, 1));
    let e = one_event(&mut r);
    assert_eq!((e.flags, e.wscale, e.mss), (0, NO_WSCALE, 1460));
}

#[test]
fn rst_without_a_flow_is_dropped_and_handoff_off_passes() {
    let mut r = responder();
    let mut rst = Segment::syn(CLIENT4.into(), 41_002, VIP4.into(), 80, 1, &[]);
    rst.flags = TCP_RST;
    let (action, _, d) = run(&r, &rst.build());
    assert_eq!((action, d.get(Counter::DropRstNoFlow)), (XDP_DROP, 1));
    r.set_handoff(false).unwrap();
    let (syn, synack) = handshake(&r, CLIENT4.into(), VIP4.into(), 80);
    let (action, _, d) = run(&r, &ack_for(&syn, &synack).build());
    assert_eq!((action, d.get(Counter::ProtectedPassed)), (XDP_PASS, 1));
    assert_eq!(harness::drain_handoffs(&mut r).unwrap().len(), 0);
    // A SYN-ACK to the service with no socket: dropped, never answered.
    let mut sa = syn.clone();
    sa.flags = TCP_SYN | TCP_ACK;
    r.set_handoff(true).unwrap();
    let (action, _, d) = run(&r, &sa.build());
    assert_eq!((action, d.get(Counter::DropSynAckNoFlow)), (XDP_DROP, 1));
}

/// Segments of a flow the kernel has a socket for pass untouched, whatever
/// their ack number; a mere listener on the port does not count.
#[test]
fn segments_of_kernel_sockets_pass() {
    require_root();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cport = c.local_addr().unwrap().port();
    let _s = l.accept().unwrap();
    let mut r = responder();
    r.add_service(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
    let mut a = Segment::syn(lo, cport, lo, port, 12345, &[]);
    a.flags = TCP_ACK;
    a.ack = 999;
    let (action, out, d) = run(&r, &a.build());
    assert_eq!(
        (action, d.get(Counter::ProtectedPassed)),
        (XDP_PASS, 1),
        "established socket found"
    );
    assert_eq!(out, a.build());
    // Another client port: only the listener matches, so the cookie decides.
    a.sport = cport.wrapping_add(1);
    let (action, _, d) = run(&r, &a.build());
    assert_eq!((action, d.get(Counter::AckRejected)), (XDP_DROP, 1));
}

/// Key rotation: a cookie minted in epoch e verifies after rotating to e+1,
/// not after rotating to e+2. Fleet: an instance that only shares the secret
/// (its own program, maps and key slots) accepts another's cookies.
#[test]
fn rotation_window_and_fleet_instances_sharing_the_secret() {
    let mut a = responder();
    let (syn, synack) = handshake(&a, CLIENT4.into(), VIP4.into(), 80);
    let ack = ack_for(&syn, &synack).build();

    let mut b = Responder::load().unwrap();
    b.add_service(SocketAddr::new(VIP4.into(), 80)).unwrap();
    b.install_keys(&Secret([9; 16]), EPOCH, &SETTINGS).unwrap();
    b.set_handoff(true).unwrap();
    let (action, _, d) = run(&b, &ack);
    assert_eq!(
        (action, d.get(Counter::AckVerified)),
        (XDP_DROP, 1),
        "instance B accepts A's cookie"
    );
    assert_eq!(one_event(&mut b).cookie, synack.seq);

    let mut other = Responder::load().unwrap();
    other.add_service(SocketAddr::new(VIP4.into(), 80)).unwrap();
    other
        .install_keys(&Secret([10; 16]), EPOCH, &SETTINGS)
        .unwrap();
    other.set_handoff(true).unwrap();
    let (_, _, d) = run(&other, &ack);
    assert_eq!(
        d.get(Counter::AckRejected),
        1,
        "another fleet's secret rejects it"
    );

    a.install_keys(&Secret([9; 16]), EPOCH + 1, &SETTINGS)
        .unwrap();
    let (_, _, d) = run(&a, &ack);
    assert_eq!(
        d.get(Counter::AckVerified),
        1,
        "previous epoch still accepted"
    );
    harness::drain_handoffs(&mut a).unwrap();
    a.install_keys(&Secret([9; 16]), EPOCH + 2, &SETTINGS)
        .unwrap();
    let (_, _, d) = run(&a, &ack);
    assert_eq!(d.get(Counter::AckRejected), 1, "two epochs later: rejected");
    assert!(harness::drain_handoffs(&mut a).unwrap().is_empty());
}
