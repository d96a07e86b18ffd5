//! Access lists and the live service set, run through BPF_PROG_TEST_RUN on
//! crafted SYNs against the production program:
//!
//! * a SYN refused by the global list or by its service's list is dropped,
//!   never answered, and counted by reason; the longest prefix decides; an
//!   allow list refuses every source it does not name; a service's list
//!   applies to its address:port only; the XDP verdicts equal
//!   `AccessList::allows` on random lists;
//! * lists and services are replaced in place, and while a reload runs over
//!   and over, SYNs whose verdict both configurations agree on never get
//!   another one (a second thread runs the program throughout).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ackgate::xdp::{secret::Secret, AccessList, Cidr, Responder, ResponderError};
use ackgate_common::wire::Counter;
use ackgate_lab::frame::{self as packet, Segment};
use ackgate_tests::{
    require_root,
    test_run::{run, SETTINGS, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_TX},
};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

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

fn list(allow: &[&str], deny: &[&str]) -> AccessList {
    let p = |v: &[&str]| v.iter().map(|s| s.parse::<Cidr>().unwrap()).collect();
    AccessList {
        allow: p(allow),
        deny: p(deny),
    }
}

/// Services on VIP4 (80, 8080) and VIP6 (443, 8443), keys installed.
fn responder() -> Responder {
    responder_with(&[
        (sa(VIP4, 80), false),
        (sa(VIP4, 8080), false),
        (sa(VIP6, 443), false),
        (sa(VIP6, 8443), false),
    ])
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
/// answered SYN is a SYN-ACK back to `src`, a refused one dropped.
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
        Counter::DropAclGlobal | Counter::DropAclService => {
            assert_eq!(action, XDP_DROP, "{src} -> {dst}: refused SYNs are dropped")
        }
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

use Counter::{DropAclGlobal as GLOBAL, DropAclService as SERVICE, SynAnswered as OK};

#[test]
fn without_lists_every_syn_is_answered_and_nothing_is_refused() {
    let mut r = responder();
    assert_eq!(r.acl_rules().unwrap(), (0, 0));
    let before = r.counters().unwrap();
    for src in [v4("198.18.7.9"), v4("10.1.2.3"), v4("203.0.113.77")] {
        for port in [80, 8080] {
            expect(&r, &[(src, sa(VIP4, port), OK)]);
        }
    }
    for src in [v6("fd00:ac6a::7:9"), v6("2001:db8:1:2::3")] {
        expect(&r, &[(src, sa(VIP6, 443), OK), (src, sa(VIP6, 8443), OK)]);
    }
    // Empty lists installed explicitly: the same.
    r.set_acl(
        &AccessList::default(),
        &[(sa(VIP4, 80), &AccessList::default())],
    )
    .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (0, 0));
    expect(&r, &[(v4("10.1.2.3"), sa(VIP4, 80), OK)]);
    let d = r.counters().unwrap().since(&before);
    assert_eq!(d.get(GLOBAL) + d.get(SERVICE), 0, "{d}");
    assert_eq!(d.get(OK), 11);
}

#[test]
fn a_global_deny_drops_its_network_and_counts_acl_global() {
    let mut r = responder();
    r.set_acl(&list(&[], &["198.18.7.0/24", "2001:db8:bad::/48"]), &[])
        .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (2, 0));
    let before = r.counters().unwrap();
    expect(
        &r,
        &[
            (v4("198.18.7.9"), sa(VIP4, 80), GLOBAL),
            (v4("198.18.7.255"), sa(VIP4, 8080), GLOBAL),
            (v4("198.18.8.9"), sa(VIP4, 80), OK),
            (v4("198.18.6.255"), sa(VIP4, 80), OK),
            (v6("2001:db8:bad:7::1"), sa(VIP6, 443), GLOBAL),
            (v6("2001:db8:bad0::1"), sa(VIP6, 443), OK),
            (v6("fd00:ac6a::7:9"), sa(VIP6, 443), OK),
        ],
    );
    let d = r.counters().unwrap().since(&before);
    assert_eq!((d.get(GLOBAL), d.get(OK)), (3, 4), "{d}");
    // A port that is not protected is not ours to filter.
    let (action, _, d) = run(&r, &syn(v4("198.18.7.9"), sa(VIP4, 81)));
    assert_eq!((action, d.get(Counter::Passed)), (XDP_PASS, 1));
}

#[test]
fn an_allow_list_answers_its_networks_and_drops_everyone_else() {
    let mut r = responder();
    r.set_acl(&list(&["198.18.7.0/24"], &[]), &[]).unwrap();
    // The allow entry and a default deny per family.
    assert_eq!(r.acl_rules().unwrap(), (3, 0));
    expect(
        &r,
        &[
            (v4("198.18.7.1"), sa(VIP4, 80), OK),
            (v4("198.18.7.254"), sa(VIP4, 8080), OK),
            (v4("198.18.8.1"), sa(VIP4, 80), GLOBAL),
            (v4("10.0.0.1"), sa(VIP4, 80), GLOBAL),
            // An allow list names the only networks let in, of any family.
            (v6("fd00:ac6a::7:9"), sa(VIP6, 443), GLOBAL),
        ],
    );
}

#[test]
fn the_longest_prefix_wins_either_way() {
    let mut r = responder();
    // Deny a /16, allow a /24 inside it.
    r.set_acl(&list(&["10.1.2.0/24"], &["10.1.0.0/16"]), &[])
        .unwrap();
    expect(
        &r,
        &[
            (v4("10.1.2.3"), sa(VIP4, 80), OK),
            (v4("10.1.3.3"), sa(VIP4, 80), GLOBAL),
            (v4("10.2.0.1"), sa(VIP4, 80), GLOBAL),
        ],
    );
    // Allow a /16, deny a /24 inside it, and a host inside that again.
    r.set_acl(&list(&["10.1.0.0/16", "10.1.2.77"], &["10.1.2.0/24"]), &[])
        .unwrap();
    expect(
        &r,
        &[
            (v4("10.1.3.3"), sa(VIP4, 80), OK),
            (v4("10.1.2.3"), sa(VIP4, 80), GLOBAL),
            (v4("10.1.2.77"), sa(VIP4, 80), OK),
            (v4("10.2.0.1"), sa(VIP4, 80), GLOBAL),
        ],
    );
}

#[test]
fn ipv6_prefixes_a_48_and_a_64() {
    let mut r = responder();
    // Global: deny a /48 but a /64 inside it; everything else allowed by
    // name (no default deny added). Service VIP6:443: allow a /64 only.
    let svc = list(&["2001:db8:1:2::/64"], &[]);
    r.set_acl(
        &list(
            &["2001:db8:1:2::/64", "::/0", "0.0.0.0/0"],
            &["2001:db8:1::/48"],
        ),
        &[(sa(VIP6, 443), &svc)],
    )
    .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (4, 2));
    expect(
        &r,
        &[
            (v6("2001:db8:1:2::9"), sa(VIP6, 443), OK),
            (v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), sa(VIP6, 443), OK),
            (v6("2001:db8:1:3::9"), sa(VIP6, 443), GLOBAL),
            (v6("2001:db8:1:ffff::9"), sa(VIP6, 8443), GLOBAL),
            (v6("2001:db8:2::9"), sa(VIP6, 443), SERVICE),
            (v6("2001:db8:2::9"), sa(VIP6, 8443), OK),
            (v4("198.18.7.9"), sa(VIP4, 80), OK),
        ],
    );
}

#[test]
fn a_service_list_applies_to_its_address_and_port_only() {
    let other4 = Ipv4Addr::new(198, 18, 0, 7);
    let mut r = responder_with(&[
        (sa(VIP4, 80), false),
        (sa(VIP4, 8080), false),
        (sa(other4, 80), false),
        (sa(VIP6, 443), false),
    ]);
    let deny = list(&[], &["198.18.7.0/24"]);
    let allow = list(&["203.0.113.0/24"], &[]);
    r.set_acl(
        &list(&[], &["192.0.2.0/24"]),
        &[(sa(VIP4, 80), &deny), (sa(VIP4, 8080), &allow)],
    )
    .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (1, 1 + 2));
    let before = r.counters().unwrap();
    expect(
        &r,
        &[
            (v4("198.18.7.9"), sa(VIP4, 80), SERVICE),
            (v4("198.18.7.9"), sa(other4, 80), OK),
            (v4("198.18.7.9"), sa(VIP4, 8080), SERVICE),
            (v4("203.0.113.9"), sa(VIP4, 8080), OK),
            (v4("203.0.113.9"), sa(VIP4, 80), OK),
            // The global list comes first.
            (v4("192.0.2.1"), sa(VIP4, 8080), GLOBAL),
            (v4("192.0.2.1"), sa(other4, 80), GLOBAL),
            // An IPv4 list never touches an IPv6 service.
            (v6("fd00:ac6a::7:9"), sa(VIP6, 443), OK),
        ],
    );
    let d = r.counters().unwrap().since(&before);
    assert_eq!((d.get(GLOBAL), d.get(SERVICE), d.get(OK)), (2, 2, 4));
}

#[test]
fn replacing_the_lists_removes_the_old_entries() {
    let mut r = responder();
    let svc = list(&[], &["203.0.113.0/24"]);
    r.set_acl(
        &list(&["10.0.0.0/8"], &["10.9.0.0/16"]),
        &[(sa(VIP4, 80), &svc)],
    )
    .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (4, 1));
    expect(
        &r,
        &[
            (v4("10.1.1.1"), sa(VIP4, 80), OK),
            (v4("10.9.1.1"), sa(VIP4, 80), GLOBAL),
            (v4("198.18.7.9"), sa(VIP4, 80), GLOBAL),
        ],
    );
    // The new lists share nothing with the old.
    let svc = list(&[], &["10.1.0.0/16"]);
    r.set_acl(&list(&[], &["198.51.100.0/24"]), &[(sa(VIP4, 8080), &svc)])
        .unwrap();
    assert_eq!(r.acl_rules().unwrap(), (1, 1));
    expect(
        &r,
        &[
            (v4("10.9.1.1"), sa(VIP4, 80), OK),
            (v4("198.18.7.9"), sa(VIP4, 80), OK),
            (v4("203.0.113.1"), sa(VIP4, 80), OK),
            (v6("fd00:ac6a::7:9"), sa(VIP6, 443), OK),
            (v4("198.51.100.1"), sa(VIP4, 80), GLOBAL),
            (v4("10.1.1.1"), sa(VIP4, 80), OK),
            (v4("10.1.1.1"), sa(VIP4, 8080), SERVICE),
        ],
    );
    // None at all: nothing installed, nothing refused.
    r.set_acl(&AccessList::default(), &[]).unwrap();
    assert_eq!(r.acl_rules().unwrap(), (0, 0));
    expect(
        &r,
        &[
            (v4("198.51.100.1"), sa(VIP4, 80), OK),
            (v4("10.1.1.1"), sa(VIP4, 8080), OK),
        ],
    );
}

#[test]
fn invalid_lists_are_refused_and_change_nothing() {
    let mut r = responder();
    r.set_acl(&list(&[], &["10.0.0.0/8"]), &[]).unwrap();
    let both = list(&["10.1.0.0/16"], &["10.1.0.0/16"]);
    let e = r.set_acl(&both, &[]).unwrap_err();
    assert!(matches!(e, ResponderError::Acl(_)), "{e}");
    assert!(e.to_string().contains("10.1.0.0/16 is in both"), "{e}");
    let ok = AccessList::default();
    let e = r
        .set_acl(&ok, &[(sa(VIP4, 80), &ok), (sa(VIP4, 80), &ok)])
        .unwrap_err();
    assert!(e.to_string().contains("has two access lists"), "{e}");
    assert_eq!(r.acl_rules().unwrap(), (1, 0));
    expect(&r, &[(v4("10.1.1.1"), sa(VIP4, 80), GLOBAL)]);
}

/// A random network in a small space (so that networks nest and overlap).
fn random_cidr(rng: &mut StdRng, six: bool) -> Cidr {
    let len = [0u8, 4, 8, 12, 14, 15, 16, 20, 23, 24, 31, 32][rng.gen_range(0..12)];
    let a = random_source(rng, six);
    let len = if six { len * 4 } else { len };
    let masked = match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            IpAddr::from(Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            IpAddr::from(Ipv6Addr::from(u128::from(v) & m))
        }
    };
    Cidr::new(masked, len).unwrap()
}

fn random_source(rng: &mut StdRng, six: bool) -> IpAddr {
    if six {
        let hi = 0x2001_0db8_u128 << 96;
        let bits = |rng: &mut StdRng| rng.gen_range(0..4u128);
        let a = hi
            | bits(rng) << 94
            | bits(rng) << 80
            | bits(rng) << 64
            | bits(rng) << 62
            | rng.gen_range(1..4u128);
        Ipv6Addr::from(a).into()
    } else {
        Ipv4Addr::new(
            10,
            rng.gen_range(0..4) << 6,
            rng.gen_range(0..4),
            rng.gen_range(1..4),
        )
        .into()
    }
}

fn random_list(rng: &mut StdRng) -> AccessList {
    let mut l = AccessList::default();
    for _ in 0..rng.gen_range(0..6) {
        let six = rng.gen_bool(0.3);
        let c = random_cidr(rng, six);
        if l.allow.contains(&c) || l.deny.contains(&c) {
            continue;
        }
        if rng.gen_bool(0.4) {
            l.allow.push(c);
        } else {
            l.deny.push(c);
        }
    }
    l
}

#[test]
fn xdp_verdicts_equal_the_reference_semantics_on_random_lists() {
    let mut r = responder();
    let mut rng = StdRng::seed_from_u64(0x0ac1);
    let (mut refused_g, mut refused_s, mut answered) = (0, 0, 0);
    for _ in 0..60 {
        let (g, s4, s6) = (
            random_list(&mut rng),
            random_list(&mut rng),
            random_list(&mut rng),
        );
        r.set_acl(&g, &[(sa(VIP4, 80), &s4), (sa(VIP6, 443), &s6)])
            .unwrap();
        for _ in 0..16 {
            let six = rng.gen_bool(0.4);
            let src = random_source(&mut rng, six);
            let (dst, svc) = if six {
                (sa(VIP6, 443), &s6)
            } else {
                (sa(VIP4, 80), &s4)
            };
            let want = if !g.allows(src) {
                refused_g += 1;
                GLOBAL
            } else if !svc.allows(src) {
                refused_s += 1;
                SERVICE
            } else {
                answered += 1;
                OK
            };
            assert_eq!(
                verdict(&r, src, dst),
                want,
                "{src} -> {dst}, global {g:?}, service {svc:?}"
            );
            // The other port on the same address has no list of its own.
            let other = sa(dst.ip(), if six { 8443 } else { 8080 });
            let want = if want == GLOBAL { GLOBAL } else { OK };
            assert_eq!(verdict(&r, src, other), want, "{src} -> {other}");
        }
    }
    // The lists were random, not trivial.
    assert!(refused_g > 50 && refused_s > 50 && answered > 50);
}

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

/// One BPF_PROG_TEST_RUN of the program `fd` on `frame`: its action. (Raw:
/// aya's runs borrow the `Responder` that the reloading thread needs.)
fn test_run_fd(fd: i32, frame: &[u8], out: &mut [u8]) -> u32 {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut a = Attr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: `a` is a valid bpf_attr prefix for this command, its buffers
    // live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut a as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    a.retval
}

/// One configuration a reload applies: services, global list, per-service
/// lists.
type Conf<'a> = (
    &'a [(SocketAddr, bool)],
    &'a AccessList,
    &'a [(SocketAddr, &'a AccessList)],
);

/// Reloads `confs` round-robin for `secs` seconds while another thread
/// runs `probes` (frame, expected action) through the program; every run
/// must get its expected action. Returns (reloads, runs).
fn reload_under_probes(
    r: &mut Responder,
    confs: &[Conf],
    probes: &[(Vec<u8>, u32)],
    secs: u64,
) -> (u64, u64) {
    let fd = r.program().unwrap().fd().unwrap().try_clone().unwrap();
    let stop = AtomicBool::new(false);
    let (runs, wrong) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut reloads = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                for (frame, want) in probes {
                    let got = test_run_fd(fd.as_fd().as_raw_fd(), frame, &mut out);
                    runs.fetch_add(1, Ordering::Relaxed);
                    if got != *want {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            for (services, global, per_service) in confs {
                r.reconfigure(services, global, per_service).unwrap();
                reloads += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (runs, wrong) = (runs.into_inner(), wrong.into_inner());
    eprintln!("{reloads} reloads, {runs} SYNs run meanwhile");
    assert!(
        reloads > 100 && runs > 10_000,
        "{reloads} reloads, {runs} runs"
    );
    assert_eq!(wrong, 0, "{wrong} of {runs} SYNs got another verdict");
    (reloads, runs)
}

#[test]
fn a_reload_never_changes_a_verdict_both_configurations_agree_on() {
    let kept4 = sa(VIP4, 80);
    let kept6 = sa(VIP6, 443);
    let (x4, y4) = (
        sa(Ipv4Addr::new(198, 18, 0, 5), 80),
        sa(Ipv4Addr::new(198, 18, 0, 6), 80),
    );
    let mut r = responder_with(&[(kept4, false), (kept6, false)]);
    // X allows 10/8 but 10.1/16 (and the rest by default deny); Y denies
    // 10.1/16 only. Both answer 10.3.0.1 and refuse 10.1.0.1, through
    // different entries: the order entries are written and deleted in is
    // what keeps them from flickering. Service lists and services change
    // too (x4 leaves, y4 comes; kept4 becomes server-first and back).
    let (gx, gy) = (
        list(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]),
        list(&[], &["10.1.0.0/16"]),
    );
    let (sx, sy) = (
        list(&["10.3.0.0/16"], &[]),
        list(&[], &["10.4.0.0/16", "2001:db8:bad::/48"]),
    );
    let services_x = [(kept4, false), (kept6, false), (x4, false)];
    let services_y = [(kept4, true), (kept6, false), (y4, false)];
    let per_x = [(kept4, &sx), (x4, &sx)];
    let per_y = [(kept4, &sy), (kept6, &sy)];
    let x: Conf = (&services_x, &gx, &per_x);
    let y: Conf = (&services_y, &gy, &per_y);
    let answered = [
        (syn(v4("10.3.0.1"), kept4), XDP_TX),
        (syn(v6("2001:db8:1::1"), kept6), XDP_TX),
    ];
    let mut probes = answered.to_vec();
    probes.push((syn(v4("10.1.0.1"), kept4), XDP_DROP));
    reload_under_probes(&mut r, &[x, y], &probes, 2);
    // Lists appearing and going away: the lookups are turned on only once
    // a list is complete, and off before its entries go.
    let none = AccessList::default();
    let z: Conf = (&services_y, &none, &[]);
    reload_under_probes(&mut r, &[x, z], &answered, 2);
    r.reconfigure(&services_y, &none, &[]).unwrap();
    assert_eq!(r.acl_rules().unwrap(), (0, 0));
    expect(
        &r,
        &[
            (v4("10.1.0.1"), kept4, OK),
            (v4("10.1.0.1"), y4, OK),
            (v4("10.1.0.1"), x4, Counter::Passed),
        ],
    );
}
