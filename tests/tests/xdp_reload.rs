//! The live service set, run through BPF_PROG_TEST_RUN on crafted SYNs
//! against the production program: services are replaced in place, kept
//! ones answered, removed ones the kernel's again, new ones answered, and a
//! set larger than the slots refused with the old one left in force.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ackgate::xdp::{secret::Secret, Responder, ResponderError};
use ackgate_common::wire::Counter;
use ackgate_lab::frame::{self as packet, Segment};
use ackgate_tests::{
    require_root,
    test_run::{run, SETTINGS, VIP4, VIP6, XDP_PASS, XDP_TX},
};

const EPOCH: u32 = 33_000_001;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn v4(s: &str) -> IpAddr {
    s.parse::<Ipv4Addr>().unwrap().into()
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

fn responder_with(services: &[(SocketAddr, bool)]) -> Responder {
    require_root();
    let mut r = Responder::load().expect("program loads and verifies");
    r.set_services(services).unwrap();
    r.install_keys(&Secret([3; 16]), EPOCH, &SETTINGS).unwrap();
    r
}

fn syn(src: IpAddr, dst: SocketAddr) -> Vec<u8> {
    let opts = [2, 4, 5, 0xb4, 4, 2, 1, 1, 1, 3, 3, 7];
    Segment::syn(src, 40_123, dst.ip(), dst.port(), 0x0a0b_0c0d, &opts).build()
}

/// The counter a SYN from `src` to `dst` bumps, its action checked: an
/// answered SYN is a SYN-ACK back to `src`.
fn verdict(r: &Responder, src: IpAddr, dst: SocketAddr) -> Counter {
    let (action, out, d) = run(r, &syn(src, dst));
    let c = *Counter::ALL.iter().find(|c| d.get(**c) == 1).unwrap();
    match c {
        Counter::SynAnswered => {
            assert_eq!(action, XDP_TX);
            let p = packet::parse(&out).expect("a SYN-ACK");
            assert_eq!((p.src, p.dst, p.flags), (dst.ip(), src, 0x12));
        }
        Counter::Passed => assert_eq!(action, XDP_PASS),
        c => panic!("{src} -> {dst}: unexpected {}", c.name()),
    }
    c
}

fn expect(r: &Responder, cases: &[(IpAddr, SocketAddr, Counter)]) {
    for &(src, dst, want) in cases {
        assert_eq!(
            verdict(r, src, dst).name(),
            want.name(),
            "SYN {src} -> {dst}"
        );
    }
}

use Counter::SynAnswered as OK;

#[test]
fn set_services_replaces_the_set_in_place() {
    let a2 = Ipv4Addr::new(198, 18, 0, 2);
    let a3 = Ipv4Addr::new(198, 18, 0, 3);
    let b6: Ipv6Addr = "fd00:ac6a::b".parse().unwrap();
    let mut r = responder_with(&[
        (sa(VIP4, 80), false),
        (sa(VIP4, 81), true),
        (sa(a2, 80), false),
        (sa(VIP6, 443), false),
    ]);
    let src = v4("198.18.7.9");
    let src6 = v6("fd00:ac6a::7:9");
    expect(
        &r,
        &[
            (src, sa(VIP4, 80), OK),
            (src, sa(VIP4, 81), OK),
            (src, sa(a2, 80), OK),
            (src, sa(a3, 80), Counter::Passed),
        ],
    );
    // Keep VIP4:80 and VIP6:443; drop VIP4:81 and the whole of a2; add
    // VIP4:82, a3:80 and b6:443.
    let next = [
        (sa(VIP4, 80), false),
        (sa(VIP4, 82), false),
        (sa(a3, 80), false),
        (sa(VIP6, 443), false),
        (sa(b6, 443), false),
    ];
    r.set_services(&next).unwrap();
    let mut now: Vec<_> = r.services().collect();
    let mut want = next.to_vec();
    now.sort();
    want.sort();
    assert_eq!(now, want);
    expect(
        &r,
        &[
            (src, sa(VIP4, 80), OK),
            (src, sa(VIP4, 82), OK),
            (src, sa(a3, 80), OK),
            (src6, sa(VIP6, 443), OK),
            (src6, sa(b6, 443), OK),
            // Removed: the kernel's again.
            (src, sa(VIP4, 81), Counter::Passed),
            (src, sa(a2, 80), Counter::Passed),
            // a3 took no port of the address it may have replaced.
            (src, sa(a3, 81), Counter::Passed),
        ],
    );
    // The old API still adds to the set.
    r.add_service(sa(a2, 8000)).unwrap();
    r.add_server_first_service(sa(a2, 8001)).unwrap();
    expect(
        &r,
        &[
            (src, sa(a2, 8000), OK),
            (src, sa(a2, 8001), OK),
            (src, sa(VIP4, 80), OK),
        ],
    );
    assert_eq!(r.services().count(), 7);
    assert!(r.services().any(|s| s == (sa(a2, 8001), true)));
    // Unprotectable addresses are refused.
    for bad in [
        sa(Ipv4Addr::UNSPECIFIED, 80),
        sa(VIP4, 0),
        sa(Ipv4Addr::BROADCAST, 80),
    ] {
        let e = r.set_services(&[(bad, false)]).unwrap_err();
        assert!(matches!(e, ResponderError::Unprotectable(_)), "{e}");
    }
    assert_eq!(r.services().count(), 7);
}

#[test]
fn a_full_set_is_replaced_and_too_many_addresses_change_nothing() {
    let addr = |i: u8| sa(Ipv4Addr::new(198, 18, 1, i), 80);
    let first: Vec<_> = (1..=16).map(|i| (addr(i), false)).collect();
    let mut r = responder_with(&first);
    let src = v4("198.18.7.9");
    // Half replaced: the new addresses only fit in the slots the removed
    // ones free.
    let second: Vec<_> = (9..=24).map(|i| (addr(i), false)).collect();
    r.set_services(&second).unwrap();
    for i in 1..=24 {
        let want = if i >= 9 { OK } else { Counter::Passed };
        assert_eq!(verdict(&r, src, addr(i)), want, "{}", addr(i));
    }
    // Seventeen addresses: refused, the set as it was.
    let mut third = second.clone();
    third.push((addr(99), false));
    let e = r.set_services(&third).unwrap_err();
    assert!(
        matches!(e, ResponderError::TooManyAddresses { max: 16, .. }),
        "{e}"
    );
    assert_eq!(r.services().count(), 16);
    for i in [1, 9, 24, 99] {
        let want = if (9..=24).contains(&i) {
            OK
        } else {
            Counter::Passed
        };
        assert_eq!(verdict(&r, src, addr(i)), want, "{}", addr(i));
    }
    // More IPv6 addresses than the slots, too.
    let many6: Vec<_> = (1..=17u16)
        .map(|i| {
            (
                sa(Ipv6Addr::new(0xfd00, 0xac6a, 0, 0, 0, 0, 1, i), 443),
                false,
            )
        })
        .collect();
    let e = r.set_services(&many6).unwrap_err();
    assert!(e.to_string().contains("16 protected IPv6"), "{e}");
    assert_eq!(verdict(&r, src, addr(9)), OK);
}
