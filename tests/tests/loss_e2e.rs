//! Through ackgate under loss: 100 MB each way, SHA-256 checked, with 1%
//! random packet loss on the client's link; and a handshake whose first ACK
//! is dropped, completed by the client's zero-window probe.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ackgate_lab::Lab;
use ackgate_tests::{counter, last_counters, run_ackgate, with_echo_lab, Process};
use sha2::{Digest, Sha256};

fn start(lab: &Lab) -> Process {
    let v4 = format!("{}:8080", lab.vip4);
    run_ackgate(lab, &["--listen", &v4, "--backend", "127.0.0.1:9000"])
}

/// Deterministic pseudo-random bytes.
fn block(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn hundred_megabytes_each_way_with_one_percent_loss() {
    with_echo_lab(|lab| {
        for chain in ["INPUT", "OUTPUT"] {
            lab.client
                .exec(&[
                    "iptables",
                    "-A",
                    chain,
                    "-p",
                    "tcp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    "0.01",
                    "-j",
                    "DROP",
                ])
                .unwrap();
        }
        let run = start(lab);
        let target = SocketAddr::from((lab.vip4, 8080));
        const TOTAL: usize = 100 << 20;
        let (sent, got, took) = lab
            .client
            .run(move || {
                let t0 = Instant::now();
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let mut h = Sha256::new();
                    for i in 0..TOTAL / (1 << 20) {
                        let b = block(i as u64 + 1, 1 << 20);
                        h.update(&b);
                        w.write_all(&b).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                    h.finalize()
                });
                let mut h = Sha256::new();
                let mut n = 0usize;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let k = s.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k;
                }
                assert_eq!(n, TOTAL, "every byte came back");
                (writer.join().unwrap(), h.finalize(), t0.elapsed())
            })
            .unwrap();
        assert_eq!(sent, got, "SHA-256 of what came back equals what was sent");
        eprintln!("100 MB each way through ackgate with 1% loss: {took:?}");
        let (_, out) = run.stop(Duration::from_secs(15)).unwrap();
        let c = last_counters(&out).unwrap();
        assert_eq!(counter(&c, "handoffs"), 1, "{out:?}");
        assert_eq!(counter(&c, "bytes_to_backend"), TOTAL as u64);
        assert_eq!(counter(&c, "bytes_to_client"), TOTAL as u64);
    });
}
#[test]
fn lost_first_ack_is_completed_by_the_zero_window_probe() {
    with_echo_lab(|lab| {
        // The second packet of each connection from the client (its first ACK).
        lab.client
            .exec(&[
                "iptables",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--dport",
                "8080",
                "-m",
                "connbytes",
                "--connbytes",
                "2:2",
                "--connbytes-dir",
                "original",
                "--connbytes-mode",
                "packets",
                "-j",
                "DROP",
            ])
            .unwrap();
        let run = start(lab);
        let target = SocketAddr::from((lab.vip4, 8080));
        let got = lab
            .client
            .run(move || {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"GET / after a lost ACK\r\n").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                got
            })
            .unwrap();
        assert_eq!(got, b"GET / after a lost ACK\r\n");
        let (_, out) = run.stop(Duration::from_secs(15)).unwrap();
        let c = last_counters(&out).unwrap();
        assert_eq!(counter(&c, "handoffs"), 1, "{out:?}");
        assert_eq!(
            counter(&c, "ack_verified"),
            1,
            "the probe, not the dropped ACK: {out:?}"
        );
    });
}
