//! A flow verified twice before its socket exists (the ACK, then the
//! client's zero-window probes, queued while ackgate is stopped) is
//! materialized once; the later events fail at the repair-mode connect()
//! with EADDRNOTAVAIL and are counted as `duplicate`, not as a socket error,
//! and the connection itself works.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr},
    time::Duration,
};

use ackgate::telemetry::stats::Sample;
use ackgate_tests::{metric, run_ackgate_until, scrape_gw, with_echo_lab};
use nix::{sys::signal, unistd::Pid};

const METRICS: &str = "127.0.0.1:9469";

fn value(s: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let v = metric(s, name, label);
    assert!(
        s.iter().any(|x| x.name == name),
        "no series {name}{label:?} exported"
    );
    v
}

#[test]
fn a_flow_verified_twice_is_one_connection_and_one_duplicate() {
    with_echo_lab(|lab| {
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
            ],
            "proxy ready",
        );
        let pid = Pid::from_raw(run.child.id() as i32);
        let target = SocketAddr::from((lab.vip4, 8080));
        signal::kill(pid, signal::Signal::SIGSTOP).unwrap();
        let echoed = std::thread::scope(|sc| {
            let client = sc.spawn(|| {
                lab.client
                    .run(|| {
                        let mut s = ackgate_lab::transfer::connect(target, Duration::from_secs(10))
                            .unwrap();
                        // The SYN-ACK's window is zero: the request waits, and
                        // the client probes the window (seq = ISN) meanwhile.
                        s.write_all(b"hello twice\n").unwrap();
                        s.shutdown(Shutdown::Write).unwrap();
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).unwrap();
                        got
                    })
                    .unwrap()
            });
            // ACK plus probes at ~0.2 s and ~0.6 s reach the ring meanwhile.
            std::thread::sleep(Duration::from_millis(1500));
            signal::kill(pid, signal::Signal::SIGCONT).unwrap();
            client.join().unwrap()
        });
        assert_eq!(echoed, b"hello twice\n");
        // XDP's counters are published once a second: wait for the
        // verified ACKs to show, then every event's outcome must match.
        let dup_of = |m: &[Sample]| {
            value(
                m,
                "ackgate_handoff_errors_total",
                Some(("reason", "duplicate")),
            )
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let m = loop {
            let m = scrape_gw(lab, METRICS);
            let v = value(&m, "ackgate_xdp_acks_verified_total", None);
            if (v >= 2.0 && dup_of(&m) == v - 1.0) || std::time::Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let verified = value(&m, "ackgate_xdp_acks_verified_total", None);
        let dup = dup_of(&m);
        assert!(verified >= 2.0, "ACK and probe(s) verified: {verified}");
        assert_eq!(value(&m, "ackgate_handoffs_total", None), 1.0);
        assert_eq!(dup, verified - 1.0, "every later event is a duplicate");
        assert_eq!(
            value(
                &m,
                "ackgate_handoff_errors_total",
                Some(("reason", "socket"))
            ),
            0.0
        );
        assert_eq!(value(&m, "ackgate_backend_connects_total", None), 1.0);
        run.stop(Duration::from_secs(15)).unwrap();
    });
}
