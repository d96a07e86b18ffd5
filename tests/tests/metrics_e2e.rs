//! The Prometheus endpoint of a running `ackgate`: exact deltas for SYNs,
//! forged ACKs and real connections; every metric the Grafana dashboard
//! queries is exported; `ackgate stats --json` reads it.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ackgate::telemetry::stats::{scrape, Sample};
use ackgate_lab::{
    frame::{Segment, TCP_ACK},
    Capture, Lab,
};
use ackgate_tests::{ackgate_bin, run_proxy, with_echo_lab, METRICS};
use rand::{Rng as _, SeedableRng as _};

/// A scrape from inside the gateway namespace, where ackgate listens.
fn metrics(lab: &Lab) -> Vec<Sample> {
    lab.gw
        .run(|| scrape(METRICS.parse().unwrap()))
        .unwrap()
        .expect("metrics endpoint answers")
}

/// Sum of `name` over the series whose labels include `filter`.
fn value(s: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    let m: Vec<&Sample> = s
        .iter()
        .filter(|x| {
            x.name == name
                && filter
                    .iter()
                    .all(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .collect();
    assert!(!m.is_empty(), "no series {name}{filter:?} exported");
    m.iter().map(|x| x.value).sum()
}

/// `n` frames with TCP `flags` from random spoofed sources to the protected
/// IPv4 service, raw onto the client's veth.
fn send_raw(lab: &Lab, n: usize, flags: u8, seed: u64) {
    let (cli_mac, gw_mac) = (
        lab.client.mac(lab.client_if).unwrap(),
        lab.gw.mac(lab.gw_if).unwrap(),
    );
    let vip = lab.vip4;
    let cif = lab.client_if;
    lab.client
        .run(move || {
            let tx = Capture::open(cif).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..n {
                // Spoofed sources from TEST-NET-3: the SYN-ACKs reach the
                // client namespace, which has no such address and drops them.
                let src = Ipv4Addr::new(203, 0, 113, rng.gen_range(1..255));
                let mut s = Segment::syn(
                    IpAddr::V4(src),
                    rng.gen_range(1024..65535),
                    vip.into(),
                    8080,
                    rng.gen(),
                    &[2, 4, 0x05, 0xb4],
                );
                s.flags = flags;
                if flags & TCP_ACK != 0 {
                    s.ack = rng.gen();
                    s.tcp_options.clear();
                }
                s.src_mac = cli_mac;
                s.dst_mac = gw_mac;
                tx.send(&s.build()).unwrap();
            }
        })
        .unwrap();
}

#[test]
fn metrics_move_by_exactly_what_was_sent() {
    const SYNS: usize = 500;
    const FORGED: usize = 1000;
    const CONNS: usize = 20;
    const MSG: usize = 100;
    with_echo_lab(|lab| {
        let run = run_proxy(lab, "127.0.0.1:9000");
        let before = metrics(lab);
        let b = |name: &str, f: &[(&str, &str)]| value(&before, name, f);

        send_raw(lab, SYNS, ackgate_lab::frame::TCP_SYN, 1);
        send_raw(lab, FORGED, TCP_ACK, 2);
        let targets: [SocketAddr; 2] = [(lab.vip4, 8080).into(), (lab.vip6, 8080).into()];
        lab.client
            .run(|| {
                for i in 0..CONNS {
                    let mut s = TcpStream::connect_timeout(&targets[i % 2], Duration::from_secs(3))
                        .unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(&[b'x'; MSG]).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    assert_eq!(back.len(), MSG);
                }
            })
            .unwrap();

        // XDP counters are published once a second; wait for every
        // connection to be closed and counted, then for one more poll so
        // that an overshoot would show.
        let deadline = Instant::now() + Duration::from_secs(15);
        let settled = |s: &[Sample]| {
            value(s, "ackgate_connection_duration_seconds_count", &[])
                - value(&before, "ackgate_connection_duration_seconds_count", &[])
                == CONNS as f64
                && value(s, "ackgate_xdp_acks_rejected_total", &[])
                    - b("ackgate_xdp_acks_rejected_total", &[])
                    >= FORGED as f64
                && value(s, "ackgate_xdp_syns_answered_total", &[])
                    - b("ackgate_xdp_syns_answered_total", &[])
                    >= (SYNS + CONNS) as f64
        };
        while !settled(&metrics(lab)) {
            assert!(
                Instant::now() < deadline,
                "metrics never caught up: {:?}",
                metrics(lab)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let after = metrics(lab);
        let d = |name: &str, f: &[(&str, &str)]| value(&after, name, f) - b(name, f);
        let iface = [("interface", lab.gw_if)];

        assert_eq!(
            d("ackgate_xdp_syns_answered_total", &iface),
            (SYNS + CONNS) as f64
        );
        assert_eq!(d("ackgate_xdp_acks_rejected_total", &iface), FORGED as f64);
        assert_eq!(d("ackgate_xdp_acks_verified_total", &iface), CONNS as f64);
        assert_eq!(
            d("ackgate_xdp_dropped_total", &[("reason", "malformed")]),
            0.0
        );
        assert_eq!(
            d("ackgate_xdp_dropped_total", &[("reason", "ring_full")]),
            0.0
        );
        assert_eq!(d("ackgate_handoffs_total", &[]), CONNS as f64);
        assert_eq!(d("ackgate_handoff_errors_total", &[]), 0.0);
        assert_eq!(
            d("ackgate_handoff_latency_seconds_count", &[]),
            CONNS as f64
        );
        let be = [("backend", "127.0.0.1:9000")];
        assert_eq!(d("ackgate_backend_connects_total", &be), CONNS as f64);
        assert_eq!(d("ackgate_backend_connect_errors_total", &be), 0.0);
        assert_eq!(
            d("ackgate_backend_connect_latency_seconds_count", &be),
            CONNS as f64
        );
        assert_eq!(value(&after, "ackgate_backend_up", &be), 1.0);
        assert_eq!(d("ackgate_resets_total", &[]), 0.0);
        assert_eq!(value(&after, "ackgate_connections_active", &[]), 0.0);
        assert_eq!(
            d(
                "ackgate_relayed_bytes_total",
                &[("direction", "to_backend")]
            ),
            (CONNS * MSG) as f64
        );
        assert_eq!(
            d("ackgate_relayed_bytes_total", &[("direction", "to_client")]),
            (CONNS * MSG) as f64
        );
        // Handoff latency is real: positive, and under a second here.
        let sum = d("ackgate_handoff_latency_seconds_sum", &[]);
        assert!(sum > 0.0 && sum / (CONNS as f64) < 1.0, "latency sum {sum}");
        assert_eq!(
            value(&after, "ackgate_build_info", &[("xdp_mode", "native")]),
            1.0
        );

        // `ackgate stats --json` (one snapshot; stdout is a pipe) agrees.
        let out = lab
            .gw
            .command(ackgate_bin().to_str().unwrap())
            .args(["stats", "--json", "--metrics", METRICS, "--interval", "0.2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let total = |p: &serde_json::Value| p["total"].as_u64().unwrap() as f64;
        assert_eq!(
            total(&v["xdp"]["syns_answered"]),
            value(&after, "ackgate_xdp_syns_answered_total", &[])
        );
        assert_eq!(
            total(&v["proxy"]["handoffs"]),
            value(&after, "ackgate_handoffs_total", &[])
        );
        assert_eq!(v["xdp"]["interfaces"][0], lab.gw_if);
        assert_eq!(v["backends"][0]["backend"], "127.0.0.1:9000");
        assert_eq!(v["backends"][0]["up"], true);
        assert_eq!(v["backends"][0]["service"], "default");
        assert_eq!(v["services"][0]["service"], "default");
        assert_eq!(
            total(&v["services"][0]["to_backend_bytes"]),
            value(
                &after,
                "ackgate_relayed_bytes_total",
                &[("direction", "to_backend")]
            )
        );
        assert_eq!(v["xdp_mode"], "native");
        // And the human snapshot when stdout is not a terminal.
        let out = lab
            .gw
            .command(ackgate_bin().to_str().unwrap())
            .args(["stats", "--metrics", METRICS, "--interval", "0.2"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("SYNs answered") && !text.contains('\x1b'),
            "{text}"
        );
        run.stop(Duration::from_secs(15)).unwrap();
    });
}

/// Every `ackgate_*` name a dashboard query uses is exported by a running
/// ackgate (histograms by their `_bucket` series).
#[test]
fn dashboard_queries_only_use_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/ackgate-dashboard.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs.push(
        dash["templating"]["list"][1]["query"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("ackgate_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(used.len() >= 12, "dashboard uses only {used:?}");

    with_echo_lab(|lab| {
        let run = run_proxy(lab, "127.0.0.1:9000");
        let exported: BTreeSet<String> = metrics(lab).into_iter().map(|s| s.name).collect();
        let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "dashboard queries metrics ackgate does not export: {missing:?}; exported: {exported:?}"
        );
        run.stop(Duration::from_secs(15)).unwrap();
    });
}
