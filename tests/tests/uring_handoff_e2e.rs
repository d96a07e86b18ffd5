//! Batched handoffs through io_uring: in a namespace lab, XDP answers real
//! kernel clients' handshakes, their ACKs become handoff events, and
//! `UringHandoff` materializes them many per submission as linked chains.
//! Checked: IPv4 and IPv6 flows carry data both ways intact, including a
//! submission of 48 flows at once; a duplicate flow in a batch fails alone
//! with reason `duplicate`; a client without timestamps and window scaling
//! uploads 256 KiB at once (the window-scale pitfall); the socket the
//! io_uring path makes looks, by TCP_INFO, like the one the synchronous
//! path makes for the same client profile; and no descriptor is left over.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use ackgate::{
    handoff::{
        materialize,
        uring::{self, UringHandoff},
    },
    sys::raw::RawSender,
    xdp::{ring::Flow, Responder},
};
use ackgate_lab::{
    harness::{self, Attached},
    profile::{self, Profile},
    Lab,
};
use ackgate_tests::{
    gateway_responder, require_root,
    tcp_info::{tcp_info, TcpInfo, OPT_TIMESTAMPS, OPT_WSCALE},
};

const PORT: u16 = 7000;
/// Flows per submission the ring takes; the concurrent round stays below.
const MAX_BATCH: u32 = 64;
const CONCURRENT_PER_FAMILY: usize = 24;
const UPLOAD: usize = 256 << 10;

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

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What the gateway's handoff loop saw.
#[derive(Default)]
struct Seen {
    /// Flows per call of `UringHandoff::materialize`.
    batches: Vec<usize>,
    uring_ok: usize,
    sync_ok: usize,
    /// Reasons of failed io_uring handoffs.
    failures: Vec<&'static str>,
    /// TCP_INFO of each materialized socket before any data, by path, in
    /// the order they were made.
    infos: Vec<(&'static str, TcpInfo)>,
}

/// Steers the gateway's loop from the client side.
struct Control {
    done: AtomicBool,
    /// Hold events until this many are pending (or 100 ms passed).
    want: AtomicUsize,
    sync: AtomicBool,
    /// Add a copy of one flow to the next io_uring batch.
    duplicate: AtomicBool,
}

/// One client: `msg` up while the echo comes down on another thread,
/// after `pause` (which leaves the gateway time to look at its new socket
/// before data changes it); returns how long the exchange took.
fn exchange(target: SocketAddr, msg: &[u8], pause: Duration) -> Duration {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
    std::thread::sleep(pause);
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = s.try_clone().unwrap();
    let got = std::thread::scope(|sc| {
        let reader = sc.spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        s.write_all(msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        reader.join().unwrap().unwrap()
    });
    assert!(
        got == msg,
        "echo through {target}: {} of {} bytes",
        got.len(),
        msg.len()
    );
    t0.elapsed()
}

fn message(tag: &str, len: usize) -> Vec<u8> {
    tag.bytes().cycle().take(len).collect()
}

#[test]
fn batches_of_flows_materialize_through_io_uring() {
    require_root();
    uring::probe().expect("io_uring handoff available on this kernel");
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

    let fds_before = open_fds();
    let ctl = Control {
        done: AtomicBool::new(false),
        want: AtomicUsize::new(1),
        sync: AtomicBool::new(false),
        duplicate: AtomicBool::new(false),
    };
    let seen = Mutex::new(Seen::default());
    let mut responder = responder;
    std::thread::scope(|sc| {
        let server = sc.spawn(|| {
            lab.gw
                .run(|| serve(&mut responder, &opener, wscale, &ctl, &seen))
                .unwrap()
        });
        let client = sc.spawn(|| {
            lab.client
                .run(|| clients(&lab, services, &ctl, &seen))
                .unwrap()
        });
        let r = client.join();
        ctl.done.store(true, Ordering::Relaxed);
        server.join().unwrap();
        r.unwrap();
    });

    let seen = seen.into_inner().unwrap();
    eprintln!(
        "submissions: {:?}; io_uring ok {}, sync ok {}, failures {:?}",
        seen.batches, seen.uring_ok, seen.sync_ok, seen.failures
    );
    assert_eq!(seen.failures, ["duplicate"], "only the injected copy fails");
    assert!(
        seen.batches.iter().any(|&n| n > 2 * CONCURRENT_PER_FAMILY),
        "one call took the whole concurrent round and its copy: {:?}",
        seen.batches
    );
    assert_eq!(
        open_fds(),
        fds_before,
        "every socket, the ring and its installed descriptors are closed"
    );
}

/// The gateway: handoff events gathered into batches and materialized by
/// io_uring (or synchronously when asked), each socket echoing.
fn serve(
    responder: &mut Responder,
    opener: &RawSender,
    wscale: u8,
    ctl: &Control,
    seen: &Mutex<Seen>,
) {
    let mut u = UringHandoff::new(MAX_BATCH).expect("an io_uring handoff ring");
    let mut tuples = HashSet::new();
    let mut pending: Vec<Flow> = Vec::new();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|conns| {
        while !ctl.done.load(Ordering::Relaxed) && Instant::now() < deadline {
            for e in harness::drain_handoffs(responder).unwrap() {
                let f = Flow::from_event(&e).unwrap();
                // A client probing the zero window before its socket exists
                // is verified again: materialize each 4-tuple once.
                if tuples.insert((f.client, f.service)) {
                    if pending.is_empty() {
                        since = Instant::now();
                    }
                    pending.push(f);
                }
            }
            let ready = !pending.is_empty()
                && (pending.len() >= ctl.want.load(Ordering::Relaxed)
                    || since.elapsed() > Duration::from_millis(100));
            if !ready {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let mut flows = std::mem::take(&mut pending);
            let mut s = seen.lock().unwrap();
            if ctl.sync.load(Ordering::Relaxed) {
                for f in &flows {
                    let c = materialize(f, wscale, opener).expect("materialize");
                    s.infos.push(("sync", tcp_info(&c)));
                    s.sync_ok += 1;
                    conns.spawn(move || echo(c));
                }
                continue;
            }
            if ctl.duplicate.swap(false, Ordering::Relaxed) {
                flows.push(flows[flows.len() / 2]);
            }
            s.batches.push(flows.len());
            for (f, r) in flows.iter().zip(u.materialize(&flows, wscale, opener)) {
                match r {
                    Ok(c) => {
                        s.infos.push(("uring", tcp_info(&c)));
                        s.uring_ok += 1;
                        conns.spawn(move || echo(c));
                    }
                    Err(e) => {
                        eprintln!("handoff of {} failed: {e}", f.client);
                        s.failures.push(e.reason());
                    }
                }
            }
        }
    });
}

/// The client side's rounds.
fn clients(lab: &Lab, services: [SocketAddr; 2], ctl: &Control, seen: &Mutex<Seen>) {
    // Warm-up, one flow at a time: each family's first flow of its MSS is
    // made synchronously to learn the kernel's receive window.
    for target in services {
        for round in 0..3 {
            exchange(
                target,
                &message(&format!("warm {target} {round}\n"), 3000),
                Duration::ZERO,
            );
        }
    }
    // A round of concurrent clients, both families, gathered into one call
    // with a copy of one flow added: the copy (or its original) fails as a
    // duplicate, every client is served.
    ctl.want.store(2 * CONCURRENT_PER_FAMILY, Ordering::Relaxed);
    ctl.duplicate.store(true, Ordering::Relaxed);
    std::thread::scope(|sc| {
        for target in services {
            for k in 0..CONCURRENT_PER_FAMILY {
                sc.spawn(move || {
                    exchange(
                        target,
                        &message(&format!("client {k} of {target}\n"), 20_000),
                        Duration::ZERO,
                    )
                });
            }
        }
    });
    ctl.want.store(1, Ordering::Relaxed);
    // Client profiles: each connects once through the synchronous path and
    // once through io_uring, uploading 256 KiB (echoed back at once); the
    // two gateway sockets must look alike.
    let no_ts_no_ws = Profile {
        name: "no_timestamps_no_window_scaling",
        timestamps: false,
        window_scaling: false,
        ..profile::named("linux_default")
    };
    for p in [profile::named("linux_default"), no_ts_no_ws] {
        lab.shape_client(&p).unwrap();
        for target in services {
            let mut infos = Vec::new();
            for sync in [true, false] {
                ctl.sync.store(sync, Ordering::Relaxed);
                let msg = message(&format!("{} {target}\n", p.name), UPLOAD);
                let t = exchange(target, &msg, Duration::from_millis(50));
                eprintln!(
                    "{} {target} via {}: 256 KiB up and back in {t:?}",
                    p.name,
                    if sync { "sync" } else { "io_uring" }
                );
                assert!(
                    t < Duration::from_secs(3),
                    "{} {target}: 256 KiB took {t:?} (a mis-scaled window?)",
                    p.name
                );
                infos.push(last_info(seen, if sync { "sync" } else { "uring" }));
            }
            let (a, b) = (&infos[0], &infos[1]);
            eprintln!("{} {target}: sync {a:?}, io_uring {b:?}", p.name);
            assert_eq!(
                a, b,
                "{} {target}: TCP_INFO of the two paths' sockets",
                p.name
            );
            // The gateway always states window scaling (shifts 0 when
            // not negotiated): the option bit is set either way.
            assert_ne!(a.options & OPT_WSCALE, 0);
            if !p.window_scaling {
                assert_eq!((a.snd_wscale, a.rcv_wscale), (0, 0), "no window scaling");
            }
            assert_eq!(
                a.options & OPT_TIMESTAMPS != 0,
                p.timestamps,
                "timestamps as negotiated"
            );
        }
    }
    ctl.sync.store(false, Ordering::Relaxed);
}

/// The client port of the last socket `path` made.
/// TCP_INFO of the latest socket `path` made. (Not looked up by client
/// port: an earlier flow of the other family may have had the same one.)
fn last_info(seen: &Mutex<Seen>, path: &str) -> TcpInfo {
    let s = seen.lock().unwrap();
    s.infos
        .iter()
        .rev()
        .find(|(p, _)| *p == path)
        .expect("a socket of that path")
        .1
}
