//! The bench's own XDP programs, run through BPF_PROG_TEST_RUN: the flood
//! generator must send valid, varied SYNs (a bad checksum would make every
//! kernel target drop them unanswered and flatter it), and the floor
//! responder must answer with a correct SYN-ACK carrying the SipHash of
//! the flow (else it would be a floor for less work than it claims); the
//! switch's absorbing sink must drop only the answers to spoofed sources.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ackgate_common::siphash::sip24_words;
use ackgate_lab::{
    frame::{self, Segment, TCP_ACK, TCP_SYN},
    harness::{absorb_test, floor_test_once, Generator},
};
use ackgate_tests::{
    require_root,
    test_run::{XDP_DROP, XDP_PASS, XDP_TX},
};

fn syn(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let opts = [
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    Segment::syn(src, 40_000, dst, 80, 0x1234_5678, &opts).build()
}

#[test]
fn the_generator_sends_valid_syns_from_ever_new_sources() {
    require_root();
    for (src, dst) in [
        (
            IpAddr::from(Ipv4Addr::new(10, 99, 1, 2)),
            IpAddr::from(Ipv4Addr::new(10, 76, 0, 1)),
        ),
        (
            IpAddr::from(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 5)),
            IpAddr::from(Ipv6Addr::new(0xfd00, 0x76, 0, 0, 0, 0, 0, 1)),
        ),
    ] {
        let template = syn(src, dst);
        let g = Generator::load(&template).expect("generator loads and verifies");
        let mut flows = HashSet::new();
        for _ in 0..64 {
            let (verdict, out) = g.test_once().unwrap();
            assert_eq!(verdict, XDP_TX);
            assert_eq!(out.len(), template.len());
            let p = frame::parse(&out).expect("a TCP frame");
            assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");
            assert_eq!((p.dst, p.dport), (dst, 80));
            assert_eq!(p.flags, TCP_SYN);
            assert_eq!(p.options_raw, template[template.len() - 20..]);
            // Only the source's last 16 bits change: still in the range
            // the lab routes back to the attacker.
            match (p.src, src) {
                (IpAddr::V4(a), IpAddr::V4(b)) => assert_eq!(a.octets()[..2], b.octets()[..2]),
                (IpAddr::V6(a), IpAddr::V6(b)) => assert_eq!(a.octets()[..14], b.octets()[..14]),
                _ => panic!("family changed"),
            }
            flows.insert((p.src, p.sport, p.seq));
        }
        assert_eq!(flows.len(), 64, "every run a new source, port and ISN");
    }
}

#[test]
fn the_floor_answers_a_syn_with_its_siphash_and_passes_the_rest() {
    require_root();
    let key = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    let (src, dst) = (Ipv4Addr::new(10, 99, 1, 2), Ipv4Addr::new(10, 76, 0, 1));
    let mut seg = Segment::syn(
        src.into(),
        40_000,
        dst.into(),
        80,
        0x1234_5678,
        &[2, 4, 5, 180],
    );
    seg.src_mac = [2, 0, 0, 0, 0, 1];
    seg.dst_mac = [2, 0, 0, 0, 0, 2];
    let (verdict, out) = floor_test_once(key, &seg.build()).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), 54, "no TCP options");
    let p = frame::parse(&out).expect("a TCP frame");
    assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");
    assert_eq!(
        (p.src_mac, p.dst_mac),
        ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
    );
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (dst.into(), 80, src.into(), 40_000)
    );
    assert_eq!(p.flags, TCP_SYN | TCP_ACK);
    assert_eq!(p.ack, 0x1234_5679);
    // The words the program hashes, as they sit in the packet (network
    // order read as little-endian words).
    let le32 = |b: [u8; 4]| u32::from_le_bytes(b);
    let le16 = |v: u16| u16::from_le_bytes(v.to_be_bytes());
    let words = [
        (u64::from(le32(src.octets())) << 32) | u64::from(le32(dst.octets())),
        (u64::from(le16(40_000)) << 48)
            | (u64::from(le16(80)) << 32)
            | u64::from(le32(0x1234_5678u32.to_be_bytes())),
    ];
    assert_eq!(p.seq, sip24_words(key[0], key[1], &words) as u32);
    // Not a SYN: passed untouched.
    let mut ack = seg.clone();
    ack.flags = TCP_ACK;
    let (verdict, _) = floor_test_once(key, &ack.build()).unwrap();
    assert_eq!(verdict, XDP_PASS);
}

#[test]
fn the_absorbing_sink_drops_only_answers_to_spoofed_sources() {
    require_root();
    let answer = |src: IpAddr, dst: IpAddr| {
        let mut s = Segment::syn(src, 80, dst, 40_000, 7, &[2, 4, 5, 180]);
        s.flags = TCP_SYN | TCP_ACK;
        s.build()
    };
    let vip4 = IpAddr::from(Ipv4Addr::new(10, 77, 0, 1));
    let vip6 = IpAddr::from(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1));
    let cases = [
        (answer(vip4, Ipv4Addr::new(10, 99, 3, 4).into()), XDP_DROP),
        (answer(vip4, Ipv4Addr::new(10, 77, 0, 2).into()), XDP_PASS),
        (answer(vip4, Ipv4Addr::new(10, 98, 3, 4).into()), XDP_PASS),
        (
            answer(vip6, Ipv6Addr::new(0xfd00, 0x99, 0, 0, 1, 2, 3, 4).into()),
            XDP_DROP,
        ),
        (
            answer(vip6, Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2).into()),
            XDP_PASS,
        ),
        (
            answer(vip6, Ipv6Addr::new(0xfd00, 0x99, 0, 1, 0, 0, 0, 4).into()),
            XDP_PASS,
        ),
        // Shorter than any TCP frame (ARP's size): passed untouched.
        (vec![0xff; 42], XDP_PASS),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
    let (verdicts, counted) = absorb_test(&frames).unwrap();
    let want: Vec<u32> = cases.iter().map(|c| c.1).collect();
    assert_eq!(verdicts, want);
    assert_eq!(counted, 2, "it counts what it drops");
}
