//! One responder attached to two interfaces: one program and one set of
//! maps, each interface answering only frames to its own MAC. In a lab of
//! two namespaces joined by two veth pairs, a kernel client connects
//! through each; the SYN-ACKs come from that interface's MAC, and a SYN
//! that arrives on one interface addressed to the other's MAC is dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ackgate::xdp::{
    secret::{current_epoch, Secret},
    AttachMode, Responder, ResponderError, Settings,
};
use ackgate_common::wire::Counter;
use ackgate_lab::{
    frame::{self, Segment},
    harness::Attached,
    ip, unique, Capture, Netns,
};
use ackgate_tests::require_root;

const PORT: u16 = 8081;

/// Client and gateway namespaces joined by `cla`-`gwa` (198.18.1.0/24) and
/// `clb`-`gwb` (198.18.2.0/24); the gateway holds .1 of each.
struct TwoLinks {
    client: Netns,
    gw: Netns,
}

const LINKS: [(&str, &str, u8); 2] = [("cla", "gwa", 1), ("clb", "gwb", 2)];

fn vip(net: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, net, 1)
}

impl TwoLinks {
    fn new() -> Self {
        let stem = unique("if");
        let client = Netns::new(format!("{stem}-cli")).unwrap();
        let gw = Netns::new(format!("{stem}-gw")).unwrap();
        for (c, g, net) in LINKS {
            ip(&[
                "link",
                "add",
                c,
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                g,
                "netns",
                &gw.name,
            ])
            .unwrap();
            for (ns, ifname, host) in [(&client, c, 2), (&gw, g, 1)] {
                let a = format!("198.18.{net}.{host}/24");
                ns.exec(&["ip", "addr", "add", &a, "dev", ifname]).unwrap();
                ns.exec(&["ip", "link", "set", ifname, "up"]).unwrap();
            }
        }
        // Until a proxy takes verified ACKs over, the gateway's kernel would
        // answer the client's ACK with a RST, racing its connect().
        gw.exec(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8081", "!", "--syn", "-j", "DROP",
        ])
        .unwrap();
        TwoLinks { client, gw }
    }
}

#[test]
fn one_responder_on_two_interfaces_answers_each_from_its_own_mac() {
    require_root();
    let lab = TwoLinks::new();
    let services: Vec<_> = LINKS
        .iter()
        .map(|&(_, _, net)| (SocketAddr::from((vip(net), PORT)), false))
        .collect();
    let mut r = lab
        .gw
        .run(|| -> anyhow::Result<Responder> {
            let mut r = Responder::load()?;
            r.set_services(&services)?;
            let settings = Settings::for_mtu(ackgate::sys::netdev::mtu("gwa")?);
            r.install_keys(&Secret::random(), current_epoch(60), &settings)?;
            for (_, g, _) in LINKS {
                r.attach(g, AttachMode::Native)?;
            }
            // Twice on one interface is refused, and changes nothing.
            match r.attach("gwa", AttachMode::Native) {
                Err(ResponderError::AlreadyAttached(i)) => assert_eq!(i, "gwa"),
                other => panic!("second attach to gwa: {:?}", other.err()),
            }
            Ok(r)
        })
        .unwrap()
        .unwrap();
    let names: Vec<&str> = r.attached().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gwa", "gwb"]);
    // veth delivers XDP_TX frames only to a peer that runs XDP itself.
    let _pass: Vec<Attached> = LINKS
        .iter()
        .map(|&(c, _, _)| lab.client.run(|| Attached::pass(c)).unwrap().unwrap())
        .collect();
    let gw_mac = |g: &str| lab.gw.mac(g).unwrap();
    let cli_mac = |c: &str| lab.client.mac(c).unwrap();

    // A kernel client through each interface: its SYN-ACK comes from that
    // interface's MAC (XDP answered it: the gateway has no listener).
    for (c, g, net) in LINKS {
        let target = SocketAddr::from((vip(net), PORT));
        let synack = lab
            .client
            .run(|| {
                let cap = Capture::open(c).unwrap();
                let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect to {target} through {c}: {e}"));
                let local = s.local_addr().unwrap().port();
                let f = cap
                    .next_matching(Duration::from_secs(3), |f| {
                        frame::parse(f).is_some_and(|p| p.flags == 0x12 && p.dport == local)
                    })
                    .expect("a SYN-ACK on the client's interface");
                frame::parse(&f).unwrap()
            })
            .unwrap();
        assert_eq!(synack.src_mac, gw_mac(g), "SYN-ACK through {g}");
        assert_eq!(synack.dst_mac, cli_mac(c));
        assert_eq!(synack.src, std::net::IpAddr::from(vip(net)));
    }

    // Crafted SYNs on cla: to gwa's MAC answered, to gwb's MAC (the other
    // interface's own, but not this one's) dropped as not ours.
    for (dst_mac, answered) in [(gw_mac("gwa"), true), (gw_mac("gwb"), false)] {
        let mut syn = Segment::syn(
            Ipv4Addr::new(198, 18, 1, 2).into(),
            41_000 + answered as u16,
            vip(1).into(),
            PORT,
            77,
            &[2, 4, 5, 0xb4],
        );
        syn.src_mac = cli_mac("cla");
        syn.dst_mac = dst_mac;
        let before = r.counters().unwrap();
        let got = lab
            .client
            .run(|| {
                let cap = Capture::open("cla").unwrap();
                cap.send(&syn.build()).unwrap();
                cap.next_matching(Duration::from_millis(1500), |f| {
                    frame::parse(f).is_some_and(|p| p.flags == 0x12 && p.dport == syn.sport)
                })
            })
            .unwrap();
        let want = if answered {
            Counter::SynAnswered
        } else {
            Counter::DropNotUnicast
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while r.counters().unwrap().since(&before).get(want) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let d = r.counters().unwrap().since(&before);
        assert_eq!(d.get(want), 1, "SYN to {dst_mac:02x?} on gwa: {d}");
        assert_eq!(got.is_some(), answered, "SYN to {dst_mac:02x?} on gwa");
        if let Some(f) = got {
            assert_eq!(frame::parse(&f).unwrap().src_mac, gw_mac("gwa"));
        }
    }
    // Both interfaces served by the one program: a reload reaches both.
    r.set_services(&services[1..]).unwrap();
    let refused = lab.client.run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((vip(1), PORT)), Duration::from_secs(2))
    });
    assert!(
        refused.unwrap().is_err(),
        "no longer protected: the kernel (no listener) refuses"
    );
    drop(r);
}
