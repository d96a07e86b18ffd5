//! `ackgate-bench flood` and `probe`, the commands users load-test their
//! own defences with, run as a user would (the binary, in a namespace of
//! the test's own lab): they keep their bounds exactly, see the target's
//! answers, measure a real server, and refuse what they must.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Command, Output},
    sync::atomic::{AtomicBool, AtomicU64},
};

use ackgate_tests::{
    lab::{self, servers, Lab},
    require_root, StopOnDrop,
};

fn bench(lab: &Lab, args: &[&str]) -> Output {
    let bin = lab::workspace_bin("ackgate-bench").expect("the ackgate-bench binary");
    Command::new("ip")
        .args(["netns", "exec", &lab.client.name])
        .arg(bin)
        .args(args)
        .output()
        .expect("running ackgate-bench")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("a JSON summary on stdout")
}

/// The gateway answers SYNs to `port` with SYN cookies (a listener that
/// never accepts) and routes the flood's spoofed sources back to the
/// client's interface, where `flood` counts the SYN-ACKs.
fn cookie_target(lab: &Lab, port: u16) -> (TcpListener, TcpListener) {
    let gw = |a: &[&str]| lab.gw.exec(a).unwrap();
    gw(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
    gw(&[
        "ip",
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        &lab.client4.to_string(),
    ]);
    gw(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:99::/64",
        "via",
        &lab.client6.to_string(),
    ]);
    let (v4, v6) = (lab.vip4, lab.vip6);
    lab.gw
        .run(move || {
            (
                TcpListener::bind(SocketAddr::new(v4.into(), port)).unwrap(),
                TcpListener::bind(SocketAddr::new(v6.into(), port)).unwrap(),
            )
        })
        .unwrap()
}

#[test]
fn flood_sends_exactly_its_bound_and_counts_the_answers() {
    require_root();
    let lab = Lab::new().unwrap();
    let _listeners = cookie_target(&lab, 80);
    for target in [
        SocketAddr::new(lab.vip4.into(), 80),
        SocketAddr::new(lab.vip6.into(), 80),
    ] {
        let t = target.to_string();
        // The packet bound ends it (1,500 at 5,000 pps: 0.3 s of the 2).
        let s = json(&bench(
            &lab,
            &[
                "flood",
                "--iface",
                "cli0",
                "--target",
                &t,
                "--pps",
                "5000",
                "--seconds",
                "2",
                "--max-packets",
                "1500",
                "--json",
            ],
        ));
        assert_eq!(s["sent"], 1500, "{s}");
        assert!(s["seconds"].as_f64().unwrap() < 1.5, "{s}");
        let seen = s["answers_seen"].as_u64().unwrap();
        assert!(
            (1400..=1500).contains(&seen),
            "SYN cookies answer every SYN: {s}"
        );
        // The time bound ends it.
        let s = json(&bench(
            &lab,
            &[
                "flood",
                "--iface",
                "cli0",
                "--target",
                &t,
                "--pps",
                "1000",
                "--seconds",
                "0.5",
                "--max-packets",
                "100000",
                "--json",
            ],
        ));
        let sent = s["sent"].as_u64().unwrap();
        assert!((400..=600).contains(&sent), "0.5 s at 1,000 pps: {s}");
    }
}

#[test]
fn flood_and_probe_refuse_what_they_must() {
    require_root();
    let lab = Lab::new().unwrap();
    for (args, why) in [
        (
            vec![
                "flood",
                "--iface",
                "cli0",
                "--target",
                "198.18.0.1:80",
                "--pps",
                "10",
                "--seconds",
                "1",
            ],
            "--max-packets",
        ),
        (
            vec![
                "flood",
                "--iface",
                "cli0",
                "--target",
                "198.18.0.1:80",
                "--pps",
                "10",
                "--max-packets",
                "5",
            ],
            "--seconds",
        ),
        (
            vec![
                "flood",
                "--iface",
                "cli0",
                "--target",
                "255.255.255.255:80",
                "--pps",
                "10",
                "--seconds",
                "1",
                "--max-packets",
                "5",
            ],
            "refusing target 255.255.255.255",
        ),
        (
            vec![
                "flood",
                "--iface",
                "cli0",
                "--target",
                "198.18.0.1:80",
                "--pps",
                "10",
                "--seconds",
                "1",
                "--max-packets",
                "5",
                "--dst-mac",
                "ff:ff:ff:ff:ff:ff",
            ],
            "refusing destination MAC ff:ff:ff:ff:ff:ff",
        ),
        (
            vec![
                "flood",
                "--iface",
                "cli0",
                "--target",
                "198.18.0.1:80",
                "--pps",
                "10",
                "--seconds",
                "7200",
                "--max-packets",
                "5",
            ],
            "--seconds 7200",
        ),
        (
            vec![
                "probe",
                "--target",
                "[ff02::1]:80",
                "--rate",
                "10",
                "--seconds",
                "1",
                "--max-connections",
                "5",
            ],
            "refusing target ff02::1",
        ),
        (
            vec![
                "probe",
                "--target",
                "198.18.0.1:80",
                "--rate",
                "10",
                "--max-connections",
                "5",
            ],
            "--seconds",
        ),
    ] {
        let o = bench(&lab, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(why), "{args:?}: expected '{why}' in: {err}");
        assert!(o.stdout.is_empty(), "nothing sent, no summary: {args:?}");
    }
}

#[test]
fn probe_measures_a_real_server_and_counts_refusals() {
    require_root();
    let lab = Lab::new().unwrap();
    let stop = AtomicBool::new(false);
    let accepted = AtomicU64::new(0);
    let vip = lab.vip4;
    let l = lab
        .gw
        .run(move || TcpListener::bind(SocketAddr::new(vip.into(), 8080)).unwrap())
        .unwrap();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| servers::http(l, &stop, &accepted, "ok"));
        let t = format!("{vip}:8080");
        let p = json(&bench(
            &lab,
            &[
                "probe",
                "--target",
                &t,
                "--rate",
                "200",
                "--seconds",
                "1",
                "--max-connections",
                "100",
                "--expect",
                "HTTP/1.1 200",
                "--json",
            ],
        ));
        assert_eq!(p["connections"], 100, "{p}");
        assert_eq!(p["served"], 100, "{p}");
        assert_eq!(p["syn_retransmitted"], 0, "{p}");
        let p50 = p["first_byte_ms"]["p50"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 1000.0, "{p}");
        // A port nobody listens on: every connection refused, counted as
        // failed, and the command still ends with its summary.
        let closed = format!("{vip}:8081");
        let p = json(&bench(
            &lab,
            &[
                "probe",
                "--target",
                &closed,
                "--rate",
                "100",
                "--seconds",
                "0.2",
                "--max-connections",
                "20",
                "--timeout",
                "1",
                "--json",
            ],
        ));
        assert_eq!(p["connections"], 20, "{p}");
        assert_eq!(p["served"], 0, "{p}");
        assert!(p["first_byte_ms"]["p50"].is_null(), "{p}");
    });
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 100);
}
