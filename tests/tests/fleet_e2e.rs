//! A fleet: two ackgate instances in two gateway namespaces share a secret
//! file. The client's SYNs are policy-routed to the first gateway and
//! everything else to the second, so the handshake answered by one is
//! completed, handed off and proxied by the other.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    time::Duration,
};

use ackgate_lab::{harness::Attached, ip, unique, Netns};
use ackgate_tests::{ackgate_bin, counter, last_counters, require_root, Process};

#[test]
fn handshake_answered_by_one_instance_is_accepted_by_the_other() {
    require_root();
    let stem = unique("f");
    let cli = Netns::new(format!("{stem}-cli")).unwrap();
    let gw1 = Netns::new(format!("{stem}-gw1")).unwrap();
    let gw2 = Netns::new(format!("{stem}-gw2")).unwrap();
    for (c, g, gw, net) in [("c1", "g1", &gw1, 1), ("c2", "g2", &gw2, 2)] {
        ip(&[
            "link", "add", c, "netns", &cli.name, "type", "veth", "peer", "name", g, "netns",
            &gw.name,
        ])
        .unwrap();
        cli.exec(&["ip", "addr", "add", &format!("198.18.{net}.2/24"), "dev", c])
            .unwrap();
        gw.exec(&["ip", "addr", "add", &format!("198.18.{net}.1/24"), "dev", g])
            .unwrap();
        // Both gateways own the service address.
        gw.exec(&["ip", "addr", "add", "198.18.0.1/32", "dev", g])
            .unwrap();
        cli.exec(&["ip", "link", "set", c, "up"]).unwrap();
        gw.exec(&["ip", "link", "set", g, "up"]).unwrap();
    }
    // Default path to the service: gateway 2. SYNs (marked) go to gateway 1.
    cli.exec(&[
        "ip",
        "route",
        "add",
        "198.18.0.1/32",
        "via",
        "198.18.2.1",
        "dev",
        "c2",
    ])
    .unwrap();
    cli.exec(&[
        "ip",
        "route",
        "add",
        "198.18.0.1/32",
        "via",
        "198.18.1.1",
        "dev",
        "c1",
        "table",
        "100",
    ])
    .unwrap();
    cli.exec(&["ip", "rule", "add", "fwmark", "1", "table", "100"])
        .unwrap();
    cli.exec(&[
        "iptables",
        "-t",
        "mangle",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--syn",
        "-j",
        "MARK",
        "--set-mark",
        "1",
    ])
    .unwrap();
    for k in ["all", "c1", "c2"] {
        cli.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")])
            .unwrap();
    }
    let _p1 = cli.run(|| Attached::pass("c1")).unwrap().unwrap();
    let _p2 = cli.run(|| Attached::pass("c2")).unwrap().unwrap();

    let key = std::env::temp_dir().join(format!("ackgate-fleet-{stem}.key"));
    std::fs::write(&key, "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let backend = gw2
        .run(|| TcpListener::bind("127.0.0.1:9000"))
        .unwrap()
        .unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let start = |gw: &Netns, iface: &str| {
        let mut cmd = gw.command(ackgate_bin().to_str().unwrap());
        cmd.args([
            "run",
            "--iface",
            iface,
            "--listen",
            "198.18.0.1:8080",
            "--backend",
            "127.0.0.1:9000",
        ])
        .args(["--stats-interval", "0", "--secret-file"])
        .arg(&key);
        Process::start("ackgate", cmd, "attached to", Duration::from_secs(30)).unwrap()
    };
    let (a, b) = (start(&gw1, "g1"), start(&gw2, "g2"));
    let got = cli
        .run(|| {
            let target: SocketAddr = "198.18.0.1:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"one fleet, one secret").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        })
        .unwrap();
    assert_eq!(got, b"one fleet, one secret");
    echo.join().unwrap();
    let (_, out1) = a.stop(Duration::from_secs(15)).unwrap();
    let (_, out2) = b.stop(Duration::from_secs(15)).unwrap();
    std::fs::remove_file(&key).ok();
    let (c1, c2) = (last_counters(&out1).unwrap(), last_counters(&out2).unwrap());
    assert_eq!(
        (counter(&c1, "syn_answered"), counter(&c1, "ack_verified")),
        (1, 0),
        "gateway 1: {out1:?}"
    );
    assert_eq!(
        (counter(&c2, "syn_answered"), counter(&c2, "ack_verified")),
        (0, 1),
        "gateway 2: {out2:?}"
    );
    assert_eq!(counter(&c2, "handoffs"), 1);
}
