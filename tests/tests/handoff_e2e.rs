//! A verified flow becomes a real kernel socket: in a namespace lab, XDP
//! answers the handshake, its ACK becomes a handoff event, TCP_REPAIR
//! materializes the socket and opens the window, and a kernel client's bytes
//! arrive and are echoed back intact.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ackgate::{handoff::materialize, xdp::ring::Flow};
use ackgate_common::wire::Counter;
use ackgate_lab::{
    harness::{self, Attached},
    Lab,
};
use ackgate_tests::{gateway_responder, require_root};

const PORT: u16 = 7000;

fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

#[test]
fn verified_flows_become_sockets_and_carry_data_both_ways() {
    require_root();
    let lab = Lab::new().unwrap();
    let services = [
        SocketAddr::from((lab.vip4, PORT)),
        SocketAddr::from((lab.vip6, PORT)),
    ];
    let (responder, opener, wscale) = gateway_responder(&lab, &services);
    let cif = lab.client_if;
    let _pass = lab
        .client
        .run(move || Attached::pass(cif))
        .unwrap()
        .unwrap();

    let done = AtomicBool::new(false);
    let materialized = AtomicU64::new(0);
    let mut responder = responder;
    std::thread::scope(|sc| {
        let server = sc.spawn(|| {
            lab.gw
                .run(|| {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    std::thread::scope(|conns| {
                        while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                            for e in harness::drain_handoffs(&mut responder).unwrap() {
                                let flow = Flow::from_event(&e).unwrap();
                                let s = materialize(&flow, wscale, &opener).expect("materialize");
                                materialized.fetch_add(1, Ordering::Relaxed);
                                conns.spawn(move || echo(s));
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    });
                })
                .unwrap()
        });
        let client = lab
            .client
            .run(|| {
                let mut firsts = Vec::new();
                for target in services {
                    for round in 0..5 {
                        let msg = format!("hello {target} round {round}\n").repeat(100);
                        let t0 = Instant::now();
                        let mut s =
                            TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        s.write_all(msg.as_bytes()).unwrap();
                        let mut first = [0u8; 1];
                        s.read_exact(&mut first).unwrap();
                        firsts.push(t0.elapsed());
                        s.shutdown(Shutdown::Write).unwrap();
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest).unwrap();
                        let mut got = first.to_vec();
                        got.extend(rest);
                        assert_eq!(
                            got,
                            msg.as_bytes(),
                            "echo through the materialized socket ({target})"
                        );
                    }
                }
                done.store(true, Ordering::Relaxed);
                firsts
            })
            .unwrap();
        server.join().unwrap();
        // No retransmission-timeout stall: the window opened at once.
        let worst = client.iter().max().unwrap();
        eprintln!("connect-to-first-echoed-byte: {client:?}");
        assert!(
            *worst < Duration::from_millis(150),
            "first byte took {worst:?}: {client:?}"
        );
    });
    assert_eq!(materialized.load(Ordering::Relaxed), 10);
    let c = responder.counters().unwrap();
    assert_eq!(c.get(Counter::AckVerified), 10, "{c}");
    assert_eq!(c.get(Counter::AckRejected), 0, "{c}");
}
