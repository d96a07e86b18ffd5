//! The XDP program run on crafted frames through BPF_PROG_TEST_RUN: every
//! verdict, every output byte that matters, and the cookie checked by the
//! host build of `common/`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ackgate::xdp::{secret::Secret, Counters, Responder, Settings};
use ackgate_common::{cookie, wire::Counter};
use ackgate_lab::frame::{
    self as packet, Parsed, Segment, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_RST, TCP_SYN,
};
use ackgate_tests::{
    require_root,
    test_run::{run, CLIENT4, CLIENT6, SETTINGS, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_TX},
};

const EPOCH: u32 = 29_000_123;

struct Fixture {
    r: Responder,
    secret: Secret,
}

fn fixture() -> Fixture {
    require_root();
    let mut r = Responder::load().expect("program loads and verifies");
    r.add_service(SocketAddr::new(VIP4.into(), 80)).unwrap();
    r.add_service(SocketAddr::new(VIP6.into(), 443)).unwrap();
    let secret = Secret([7; 16]);
    r.install_keys(&secret, EPOCH, &SETTINGS).unwrap();
    Fixture { r, secret }
}

impl Fixture {
    /// Runs the program; returns (action, output frame, counter deltas).
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
        run(&self.r, frame)
    }

    /// Sends `seg` and checks everything a correct SYN-ACK must satisfy.
    fn answer(&self, seg: &Segment) -> (Parsed, cookie::Restored) {
        let frame = seg.build();
        let (action, out, d) = self.run(&frame);
        assert_eq!(action, XDP_TX, "SYN must be answered; counters {d}");
        assert_eq!(d.get(Counter::SynAnswered), 1);
        let p = packet::parse(&out).expect("output parses as TCP");
        assert_eq!(p.dst_mac, seg.src_mac, "MACs swapped");
        assert_eq!(p.src_mac, seg.dst_mac, "MACs swapped");
        assert_eq!(p.vlans, seg.vlans, "VLAN tags kept");
        assert_eq!((p.src, p.dst), (seg.dst, seg.src), "addresses swapped");
        assert_eq!((p.sport, p.dport), (seg.dport, seg.sport), "ports swapped");
        assert_eq!(p.flags, TCP_SYN | TCP_ACK);
        assert_eq!(p.ack, seg.seq.wrapping_add(1), "ack = client ISN + 1");
        assert!(p.ip_checksum_ok, "IP checksum");
        assert!(p.tcp_checksum_ok, "TCP checksum");
        assert_eq!(p.ttl, 64);
        assert_eq!(p.window, SETTINGS.window);
        assert_eq!(p.urgent, 0);
        assert_eq!(p.payload_len, 0, "no payload in a SYN-ACK");
        assert_eq!(p.trailing, 0, "frame resized to exactly the reply");
        if seg.src.is_ipv4() {
            assert_eq!(p.ip_header_len, 20, "IP options not echoed");
        }
        let restored =
            packet::verify_synack(&self.secret.0, EPOCH, &p).expect("cookie verifies in userspace");
        (p, restored)
    }
}

fn syn4(opts: &[u8]) -> Segment {
    Segment::syn(CLIENT4.into(), 40_001, VIP4.into(), 80, 0x1234_5678, opts)
}

fn syn6(opts: &[u8]) -> Segment {
    Segment::syn(CLIENT6.into(), 50_001, VIP6.into(), 443, 0xfedc_ba98, opts)
}

/// MSS 1460, SACK_PERM, TS(tsval, 0), NOP, WS 7: what Linux sends.
fn linux_opts(mss: u16, tsval: u32, ws: u8) -> Vec<u8> {
    let m = mss.to_be_bytes();
    let t = tsval.to_be_bytes();
    vec![
        2, 4, m[0], m[1], 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 1, 3, 3, ws,
    ]
}

#[test]
fn no_options_gets_default_mss_only() {
    let f = fixture();
    // The SYN-ACK states what we receive (our own MSS); the cookie keeps
    // what we may send: RFC's default without an MSS option.
    let (p, r) = f.answer(&syn4(&[]));
    assert_eq!(p.options_raw, vec![2, 4, 0x05, 0xb4], "our MSS only");
    assert_eq!((r.mss, r.timestamps), (536, false));
    let (p, r) = f.answer(&syn6(&[]));
    assert_eq!(p.options.mss(), Some(1440));
    assert_eq!(p.options_raw.len(), 4);
    assert_eq!(r.mss, 1220);
}

#[test]
fn mss_only() {
    let f = fixture();
    let (p, r) = f.answer(&syn4(&[2, 4, 0x05, 0xb4]));
    assert_eq!(p.options_raw, vec![2, 4, 0x05, 0xb4]);
    assert_eq!(r.mss, 1460);
    assert_eq!((r.wscale, r.sack, r.timestamps), (None, false, false));
}

#[test]
fn full_linux_option_set_v4_and_v6() {
    let f = fixture();
    for (seg, mss) in [
        (syn4(&linux_opts(1460, 0xaabb_ccdd, 10)), 1460),
        (syn6(&linux_opts(1440, 0xaabb_ccdd, 10)), 1440),
    ] {
        let (p, r) = f.answer(&seg);
        let o = p.options;
        assert_eq!(o.mss(), Some(mss));
        assert!(o.sack_ok);
        assert_eq!(o.wscale(), Some(SETTINGS.wscale), "our window scale");
        let (tsval, tsecr) = o.ts().expect("timestamps echoed");
        assert_eq!(tsecr, 0xaabb_ccdd, "TSecr = client TSval");
        assert_eq!(
            tsval & cookie::TS_OPT_MASK,
            cookie::option_bits(10, true, false) as u32
        );
        // The clock part is the cookie clock plus the flow's secret offset:
        // not the host's uptime or time (verify_synack checked it dates the
        // SYN-ACK now).
        let now = ackgate::sys::clock::cookie_clock_ms();
        assert!(
            now.wrapping_sub(tsval & !cookie::TS_OPT_MASK) > 120_000
                && (tsval & !cookie::TS_OPT_MASK).wrapping_sub(now) > 120_000,
            "TSval {tsval} is not the clock {now}"
        );
        // Linux layout: MSS, SACK_PERM+TS, NOP+WS.
        assert_eq!(
            &p.options_raw[..6],
            &[2, 4, (mss >> 8) as u8, mss as u8, 4, 2]
        );
        assert_eq!(&p.options_raw[16..], &[1, 3, 3, SETTINGS.wscale]);
        assert_eq!(
            r,
            cookie::Restored {
                mss,
                wscale: Some(10),
                sack: true,
                ecn: false,
                timestamps: true
            }
        );
    }
}

#[test]
fn windows_like_set_without_timestamps_keeps_sack_and_window_scaling() {
    let f = fixture();
    let (p, r) = f.answer(&syn4(&[2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2]));
    assert_eq!(
        p.options_raw,
        vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2, 1, 3, 3, SETTINGS.wscale],
        "no TS: MSS, SACK-permitted and our window scale, in Linux's layout"
    );
    assert_eq!(
        r,
        cookie::Restored {
            mss: 1460,
            wscale: Some(8),
            sack: true,
            ecn: false,
            timestamps: false
        }
    );
    // Window scaling alone, SACK alone.
    let (p, r) = f.answer(&syn4(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]));
    assert_eq!(
        p.options_raw,
        vec![2, 4, 0x05, 0xb4, 1, 3, 3, SETTINGS.wscale]
    );
    assert_eq!((r.wscale, r.sack), (Some(7), false));
    let (p, r) = f.answer(&syn4(&[2, 4, 0x05, 0xb4, 1, 1, 4, 2]));
    assert_eq!(p.options_raw, vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2]);
    assert_eq!((r.wscale, r.sack), (None, true));
    // A shift the cookie cannot keep (6): no window scaling offered at all,
    // so neither side scales. One above 9 is kept as 9.
    let (p, r) = f.answer(&syn6(&[2, 4, 0x05, 0xa0, 1, 3, 3, 6, 1, 1, 4, 2]));
    assert_eq!(p.options_raw, vec![2, 4, 0x05, 0xa0, 1, 1, 4, 2]);
    assert_eq!((r.wscale, r.sack), (None, true));
    let (p, r) = f.answer(&syn6(&[2, 4, 0x05, 0xa0, 1, 3, 3, 12]));
    assert_eq!(p.options.wscale(), Some(SETTINGS.wscale));
    assert_eq!((r.wscale, r.sack), (Some(9), false));
}

#[test]
fn nop_eol_padding_and_unknown_options() {
    let f = fixture();
    // NOP NOP MSS, unknown kind 253 (len 6), NOP NOP TS, EOL + padding.
    let opts = [
        1, 1, 2, 4, 0x05, 0x80, 253, 6, 9, 9, 9, 9, 1, 1, 8, 10, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0,
        0,
    ];
    let (p, r) = f.answer(&syn4(&opts));
    assert_eq!(p.options.mss(), Some(1460), "our own MSS");
    assert_eq!(p.options.ts().map(|t| t.1), Some(42));
    assert!(!p.options.sack_ok);
    assert_eq!(p.options.wscale(), None);
    assert_eq!(r.mss, 1400, "1408 offered -> the table entry below it");
    // Options after EOL are not parsed.
    let (_, r) = f.answer(&syn4(&[0, 0, 0, 0, 2, 4, 0x05, 0xb4]));
    assert_eq!(r.mss, 536);
}

#[test]
fn mss_536_and_9000() {
    let f = fixture();
    // A client with a small MSS gets segments of its size, and is told
    // ours: MSS is per direction (a kernel listener does the same).
    let (p, r) = f.answer(&syn4(&[2, 4, 0x02, 0x18]));
    assert_eq!((p.options.mss(), r.mss), (Some(1460), 536));
    let (p, r) = f.answer(&syn4(&[2, 4, 0x23, 0x28]));
    assert_eq!(
        (p.options.mss(), r.mss),
        (Some(1460), 1460),
        "9000 clamped to the configured 1460"
    );
    // A jumbo-frame interface: the clamp allows the 8960 table entry.
    let mut f = f;
    let jumbo = Settings {
        mss4: 8960,
        mss6: 8940,
        ..SETTINGS
    };
    f.r.install_keys(&f.secret, EPOCH, &jumbo).unwrap();
    let (p, r) = f.answer(&syn4(&[2, 4, 0x23, 0x28]));
    assert_eq!((p.options.mss(), r.mss), (Some(8960), 8960));
    let (p, r) = f.answer(&syn6(&[2, 4, 0x23, 0x28]));
    assert_eq!((p.options.mss(), r.mss), (Some(8940), 8940));
}

#[test]
fn single_and_double_vlan() {
    let f = fixture();
    let mut s = syn4(&linux_opts(1460, 5, 7));
    s.vlans = vec![(0x8100, 42)];
    f.answer(&s);
    s.vlans = vec![(0x88a8, 100), (0x8100, 42)];
    f.answer(&s);
    let mut s6 = syn6(&linux_opts(1440, 5, 7));
    s6.vlans = vec![(0x88a8, 100), (0x8100, 42)];
    f.answer(&s6);
    // Three tags: not parsed, passed untouched.
    s.vlans = vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)];
    let frame = s.build();
    let (action, out, d) = f.run(&frame);
    assert_eq!((action, d.get(Counter::Passed)), (XDP_PASS, 1));
    assert_eq!(out, frame);
}

#[test]
fn ipv4_options_are_parsed_past_and_not_echoed() {
    let f = fixture();
    let mut s = syn4(&linux_opts(1460, 77, 7));
    s.ip_options = vec![0x94, 4, 0, 0, 1, 1, 1, 0]; // router alert, NOPs, EOL
    let (p, _) = f.answer(&s);
    assert_eq!(p.ip_header_len, 20);
}

#[test]
fn ecn_setup_syn_is_recorded_in_the_cookie() {
    let f = fixture();
    let mut s = syn4(&linux_opts(1460, 77, 7));
    s.flags = TCP_SYN | TCP_ECE | TCP_CWR;
    let (p, r) = f.answer(&s);
    assert!(r.ecn);
    assert_eq!(
        p.flags & (TCP_ECE | TCP_CWR),
        0,
        "ECN is not negotiated by the SYN-ACK"
    );
}

#[test]
fn syn_with_payload_is_answered_without_it() {
    let f = fixture();
    let mut s = syn4(&linux_opts(1460, 77, 7));
    s.payload = b"GET / HTTP/1.1\r\n".to_vec();
    let (p, _) = f.answer(&s);
    assert_eq!(p.payload_len, 0);
}

#[test]
fn ethernet_padding_is_trimmed() {
    let f = fixture();
    let mut frame = syn4(&[2, 4, 5, 0xb4]).build();
    frame.extend_from_slice(&[0; 6]); // 58 -> 64 bytes like a padded wire frame
    let (action, out, _) = f.run(&frame);
    assert_eq!(action, XDP_TX);
    let p = packet::parse(&out).unwrap();
    assert!(p.tcp_checksum_ok && p.ip_checksum_ok);
    assert_eq!(p.trailing, 0);
}

#[test]
fn cookies_follow_the_installed_epoch() {
    let mut f = fixture();
    f.r.install_keys(&f.secret, EPOCH + 5, &SETTINGS).unwrap();
    let (_, out, _) = f.run(&syn4(&linux_opts(1460, 1, 7)).build());
    let p = packet::parse(&out).unwrap();
    assert!(packet::verify_synack(&f.secret.0, EPOCH + 5, &p).is_ok());
    assert!(
        packet::verify_synack(&f.secret.0, EPOCH + 6, &p).is_ok(),
        "previous epoch still accepted"
    );
    assert_eq!(
        packet::verify_synack(&f.secret.0, EPOCH + 7, &p),
        Err(cookie::Reject::Epoch),
        "two epochs later"
    );
    assert!(packet::verify_synack(&f.secret.0, EPOCH, &p).is_err());
    assert!(
        packet::verify_synack(&[8; 16], EPOCH + 5, &p).is_err(),
        "another secret"
    );
}

/// Frames to a protected service that must be dropped, with the counter.
#[test]
fn malformed_frames_to_a_protected_service_are_dropped_and_counted() {
    let f = fixture();
    let base = syn4(&linux_opts(1460, 1, 7));
    let mut cases: Vec<(&str, Vec<u8>, Counter)> = Vec::new();

    let mut fr = base.build();
    fr[14 + 20 + 12] = 0x40; // doff 4
    cases.push(("doff < 5", fr, Counter::DropMalformed));
    let mut fr = base.build();
    fr[14 + 20 + 12] = 0xf0; // doff 15: 60 bytes, segment has 40
    cases.push(("doff past the segment", fr, Counter::DropMalformed));
    let mut fr = base.build();
    fr[14 + 2] = 0x05; // total length 1300 > frame
    cases.push(("IP total length past the frame", fr, Counter::DropMalformed));
    let fr = base.build();
    let mut short = fr[..14 + 20 + 10].to_vec();
    short[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    cases.push(("truncated TCP header", short, Counter::DropMalformed));
    let mut s = base.clone();
    s.flags = TCP_SYN | TCP_FIN;
    cases.push(("SYN+FIN", s.build(), Counter::DropMalformed));
    s.flags = TCP_SYN | TCP_RST;
    cases.push(("SYN+RST", s.build(), Counter::DropMalformed));
    let mut fr = base.build();
    fr[14 + 6] = 0x20; // more fragments
    cases.push(("first fragment", fr, Counter::DropFragment));
    let mut fr = base.build();
    fr[14 + 6] = 0x00;
    fr[14 + 7] = 0x10; // offset 128
    cases.push(("later fragment", fr, Counter::DropFragment));
    // IPv6 with a hop-by-hop extension header to the protected address.
    let mut fr = syn6(&[]).build();
    fr[14 + 6] = 0; // next header: hop-by-hop
    cases.push(("IPv6 extension header", fr, Counter::DropIpv6Ext));
    let mut fr = syn6(&[]).build();
    fr[14 + 4..14 + 6].copy_from_slice(&10u16.to_be_bytes());
    cases.push((
        "IPv6 payload shorter than a TCP header",
        fr,
        Counter::DropMalformed,
    ));

    for (what, frame, counter) in cases {
        let (action, _, d) = f.run(&frame);
        assert_eq!(action, XDP_DROP, "{what}");
        assert_eq!(d.get(counter), 1, "{what}: {d}");
    }
}

/// Traffic that is not a SYN to a protected service passes byte for byte.
#[test]
fn everything_else_passes_untouched() {
    let f = fixture();
    let mut cases: Vec<(&str, Vec<u8>, Counter)> = Vec::new();
    let mut s = syn4(&[]);
    s.dport = 81;
    cases.push((
        "other port on a protected address",
        s.build(),
        Counter::Passed,
    ));
    let mut s = syn4(&[]);
    s.dst = Ipv4Addr::new(198, 18, 0, 99).into();
    cases.push(("other address", s.build(), Counter::Passed));
    let mut s = syn6(&[]);
    s.dport = 80;
    cases.push(("v4 port on the v6 address", s.build(), Counter::Passed));
    let mut s = syn4(&[]);
    s.flags = TCP_ACK;
    cases.push(("ACK to the service", s.build(), Counter::ProtectedPassed));
    // (A SYN-ACK to the service with no socket is dropped: xdp_duties.)

    s.flags = TCP_RST;
    cases.push(("RST to the service", s.build(), Counter::ProtectedPassed));
    let mut fr = syn4(&[]).build();
    fr[14 + 9] = 17; // UDP
    cases.push(("UDP to the protected address", fr, Counter::Passed));
    let mut fr = syn4(&[]).build();
    fr[14 + 6] = 0x20;
    fr[14 + 16] = 10; // fragment to another address
    cases.push(("fragment to an unprotected address", fr, Counter::Passed));
    let mut fr = syn6(&[]).build();
    fr[14 + 6] = 0;
    fr[14 + 39] = 0x99; // extension header, other address
    cases.push((
        "IPv6 extension header to an unprotected address",
        fr,
        Counter::Passed,
    ));
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    cases.push(("ARP", arp, Counter::Passed));
    let fr = syn4(&[]).build();
    cases.push((
        "truncated IP header",
        fr[..14 + 12].to_vec(),
        Counter::Passed,
    ));

    for (what, frame, counter) in cases {
        let (action, out, d) = f.run(&frame);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(d.get(counter), 1, "{what}: {d}");
        assert_eq!(out, frame, "{what}: frame modified");
    }
}

#[test]
fn randomized_syns_always_get_valid_synacks() {
    use rand::{Rng, SeedableRng};
    let f = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for i in 0..300 {
        let v6 = i % 2 == 1;
        let mss: u16 = rng.gen_range(1..=9500);
        let ws: u8 = rng.gen_range(0..=16);
        let tsval: u32 = rng.gen();
        let opts = match i % 3 {
            0 => linux_opts(mss, tsval, ws),
            1 => vec![2, 4, (mss >> 8) as u8, mss as u8],
            _ => vec![
                1,
                3,
                3,
                ws,
                2,
                4,
                (mss >> 8) as u8,
                mss as u8,
                1,
                1,
                8,
                10,
                1,
                2,
                3,
                4,
                0,
                0,
                0,
                0,
            ],
        };
        // Random unicast sources; martians are never answered (xdp_duties).
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            let a = rng.gen::<u128>() & !(0xff << 120) | (0x20 << 120);
            (Ipv6Addr::from(a).into(), VIP6.into())
        } else {
            let a = rng.gen::<u32>() % (223 << 24) + (1 << 24);
            let a = if a >> 24 == 127 { a + (1 << 24) } else { a };
            (Ipv4Addr::from(a).into(), VIP4.into())
        };
        let mut s = Segment::syn(
            src,
            rng.gen(),
            dst,
            if v6 { 443 } else { 80 },
            rng.gen(),
            &opts,
        );
        s.src_mac = rng.gen();
        s.src_mac[0] &= 0xfe; // unicast
        let (p, r) = f.answer(&s);
        let table = if v6 { cookie::MSS_V6 } else { cookie::MSS_V4 };
        let clamp = if v6 { SETTINGS.mss6 } else { SETTINGS.mss4 };
        let want = table[cookie::mss_index(&table, mss.min(clamp)) as usize];
        assert_eq!(
            (p.options.mss(), r.mss),
            (Some(clamp), want),
            "offered {mss}"
        );
        if i % 3 != 1 {
            assert_eq!(r.wscale, Some(ws.min(14)));
        }
    }
}

#[test]
fn ports_belong_to_their_address_and_address_slots_are_bounded() {
    let mut f = fixture();
    let other = Ipv4Addr::new(198, 18, 0, 2);
    f.r.add_service(SocketAddr::new(other.into(), 443)).unwrap();
    // 443 is protected on `other`, not on VIP4 (which has 80).
    let mut s = syn4(&[]);
    s.dport = 443;
    let (action, _, d) = f.run(&s.build());
    assert_eq!((action, d.get(Counter::Passed)), (XDP_PASS, 1));
    s.dst = other.into();
    f.answer(&s);
    // Adding an existing service again is a no-op, not a new slot.
    f.r.add_service(SocketAddr::new(other.into(), 443)).unwrap();
    for i in 3..=16u8 {
        f.r.add_service(SocketAddr::new(Ipv4Addr::new(198, 18, 0, i).into(), 80))
            .unwrap();
    }
    let err =
        f.r.add_service(SocketAddr::new(Ipv4Addr::new(198, 18, 0, 17).into(), 80))
            .unwrap_err();
    assert_eq!(err.to_string(), "at most 16 protected IPv4 addresses");
    // The last slot works.
    let mut s = syn4(&[]);
    s.dst = Ipv4Addr::new(198, 18, 0, 16).into();
    f.answer(&s);
}
