//! A fleet: two ackgate instances in two gateway namespaces share a secret
//! file. The client's SYNs are policy-routed to the first gateway and
//! everything else to the second, so the handshake answered by one is
//! completed, handed off and proxied by the other.
//!
//! The straddle tests add a key rotation in the middle of such a handshake:
//! with a 2 s epoch, gateway 1 answers the SYN late in epoch `e`, the
//! client's ACKs are held (dropped in the client namespace) until gateway 2
//! has rotated its keys, and only then does the client's next segment reach
//! gateway 2. It must verify and be proxied; held past the cookie's
//! lifetime (one epoch by the echoed timestamp, or past epoch `e+1` by the
//! epoch bits for a client without timestamps) it must be rejected.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ackgate::{
    telemetry::{metrics, stats},
    xdp::secret::{current_epoch, Secret},
};
use ackgate_common::cookie;
use ackgate_lab::{frame, harness::Attached, ip, unique, Capture, Netns};
use ackgate_tests::{
    ackgate_bin, assert_engine, counter, echo_server, last_counters, require_root, Process,
    StopOnDrop,
};

const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const SERVICE: &str = "198.18.0.1:8080";
const METRICS: &str = "127.0.0.1:9469";

/// A client namespace with one veth to each of two gateway namespaces. Both
/// gateways own the service address; the client reaches it through gateway
/// 2, except for its SYNs (marked by iptables), which go to gateway 1.
struct Fleet {
    _pass: Vec<Attached>,
    cli: Netns,
    gw1: Netns,
    gw2: Netns,
    key: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
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
            gw.exec(&["ip", "addr", "add", "198.18.0.1/32", "dev", g])
                .unwrap();
            cli.exec(&["ip", "link", "set", c, "up"]).unwrap();
            gw.exec(&["ip", "link", "set", g, "up"]).unwrap();
        }
        // Default path to the service: gateway 2. SYNs (marked) go to gateway 1.
        for (via, dev, table) in [("198.18.2.1", "c2", "main"), ("198.18.1.1", "c1", "100")] {
            let route = ["route", "add", "198.18.0.1/32", "via", via, "dev", dev];
            cli.exec(&[&["ip"][..], &route, &["table", table]].concat())
                .unwrap();
        }
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
        let pass = ["c1", "c2"]
            .map(|i| cli.run(|| Attached::pass(i)).unwrap().unwrap())
            .into();
        let key = std::env::temp_dir().join(format!("ackgate-fleet-{stem}.key"));
        std::fs::write(&key, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Fleet {
            _pass: pass,
            cli,
            gw1,
            gw2,
            key,
        }
    }

    /// ackgate on both gateways with the shared secret and `extra`
    /// arguments, started together (loading the XDP program takes seconds on
    /// a busy machine), once both are attached. Debug logs say when keys
    /// rotate.
    fn start(&self, extra: &[&str]) -> (Process, Process) {
        let spawn = |gw: &Netns, iface: &str| {
            let mut cmd = gw.command(ackgate_bin().to_str().unwrap());
            cmd.env("ACKGATE_LOG", "debug")
                .args(["run", "--iface", iface, "--listen", SERVICE])
                .args(["--backend", "127.0.0.1:9000", "--stats-interval", "0"])
                .arg("--secret-file")
                .arg(&self.key)
                .args(extra);
            Process::spawn("ackgate", cmd).unwrap()
        };
        let (mut a, mut b) = (spawn(&self.gw1, "g1"), spawn(&self.gw2, "g2"));
        for p in [&mut a, &mut b] {
            p.wait_for("proxy ready", Duration::from_secs(60)).unwrap();
            assert_engine(p);
        }
        (a, b)
    }

    /// An echo backend on gateway 2 (where flows are handed off) for the
    /// duration of `f`.
    fn with_backend<R>(&self, f: impl FnOnce() -> R) -> R {
        let l = self
            .gw2
            .run(|| TcpListener::bind("127.0.0.1:9000"))
            .unwrap()
            .unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| echo_server(l, &stop));
            let _stop = StopOnDrop(&stop);
            f()
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key);
    }
}

#[test]
fn handshake_answered_by_one_instance_is_accepted_by_the_other() {
    let f = Fleet::new();
    let (a, b) = f.start(&[]);
    let got = f.with_backend(|| {
        f.cli
            .run(|| {
                let target: SocketAddr = SERVICE.parse().unwrap();
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"one fleet, one secret").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                got
            })
            .unwrap()
    });
    assert_eq!(got, b"one fleet, one secret");
    let (_, out1) = a.stop(Duration::from_secs(15)).unwrap();
    let (_, out2) = b.stop(Duration::from_secs(15)).unwrap();
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

/// The straddle tests' epoch, seconds: the cookie lifetime with timestamps.
const EPOCH_SECS: u32 = 2;
const EPOCH_MS: u64 = EPOCH_SECS as u64 * 1000;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The epoch at a unix time in ms, as the instances compute it
/// (`current_epoch`: unix seconds / epoch length).
fn epoch_at(ms: u64) -> u32 {
    cookie::epoch_at(ms / 1000, EPOCH_SECS)
}

/// Sleeps until the clock is `from..to` ms into an epoch; that epoch.
fn at_phase(from: u64, to: u64) -> u32 {
    loop {
        let now = unix_ms();
        let phase = now % EPOCH_MS;
        if (from..to).contains(&phase) {
            let e = epoch_at(now);
            assert_eq!(e, current_epoch(EPOCH_SECS), "the instances' epoch");
            return e;
        }
        let wait = if phase < from {
            from - phase
        } else {
            EPOCH_MS - phase + from
        };
        std::thread::sleep(Duration::from_millis(wait));
    }
}

/// Waits until instance `p` has installed the keys of `epoch` (it rotates
/// on its first 100 ms tick in the new epoch and logs it at debug level).
fn rotated(p: &mut Process, epoch: u32) {
    let line = format!("cookie keys rotated epoch={epoch}");
    p.collect();
    if !p.output.iter().any(|l| l.ends_with(&line)) {
        p.wait_for(&line, Duration::from_secs(3 * EPOCH_SECS as u64))
            .unwrap();
    }
}

/// Holds (drops in the client's stack) or releases every non-SYN segment
/// the client sends to the service: its ACK, probes, data, FIN.
fn hold(f: &Fleet, on: bool) {
    f.cli
        .exec(&[
            "iptables",
            if on { "-A" } else { "-D" },
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "!",
            "--syn",
            "-j",
            "DROP",
        ])
        .unwrap();
}

/// A client connection whose ACK was held.
struct Held {
    stream: TcpStream,
    /// Capture on the client's link to gateway 2.
    to_gw2: Capture,
    /// The SYN-ACK gateway 1 sent.
    synack: frame::Parsed,
    /// Clock just before connect().
    syn_ms: u64,
}

/// A kernel client's connect(): answered by gateway 1, its ACK dropped
/// (the caller holds it).
fn connect_held(f: &Fleet) -> Held {
    f.cli
        .run(|| {
            let from_gw1 = Capture::open("c1").unwrap();
            let to_gw2 = Capture::open("c2").unwrap();
            let syn_ms = unix_ms();
            let target: SocketAddr = SERVICE.parse().unwrap();
            let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
            let port = stream.local_addr().unwrap().port();
            let synack = from_gw1
                .next_matching(Duration::from_secs(2), |fr| {
                    frame::parse(fr).is_some_and(|p| {
                        p.flags & 0x12 == 0x12 && p.dport == port && p.sport == 8080
                    })
                })
                .expect("the SYN-ACK came from gateway 1");
            Held {
                stream,
                to_gw2,
                synack: frame::parse(&synack).unwrap(),
                syn_ms,
            }
        })
        .unwrap()
}

/// Releases the held ACKs and has the client send `msg` and a FIN. The
/// SYN-ACK's window is zero and the client's first ACK was lost, so its
/// next segment is a zero-window probe (seq = ISN, ack = cookie + 1) one
/// RTO (200 ms) after the write. That segment, as it left for gateway 2,
/// and when.
fn release(f: &Fleet, h: &mut Held, msg: &[u8]) -> (frame::Parsed, u64) {
    hold(f, false);
    h.stream.write_all(msg).unwrap();
    h.stream.shutdown(Shutdown::Write).unwrap();
    let port = h.stream.local_addr().unwrap().port();
    let seg = h
        .to_gw2
        .next_matching(Duration::from_secs(2), |fr| {
            frame::parse(fr).is_some_and(|p| {
                p.sport == port && p.dport == 8080 && p.flags & frame::TCP_ACK != 0
            })
        })
        .expect("the client sent a segment to gateway 2 after the release");
    let at = unix_ms();
    let seg = frame::parse(&seg).unwrap();
    assert_eq!(
        seg.ack,
        h.synack.seq.wrapping_add(1),
        "it carries the cookie"
    );
    (seg, at)
}

/// Gateway 2's XDP counters as published in its metrics (every second):
/// (ACKs verified, ACKs rejected), once `until` holds (at most 5 s).
fn gw2_acks(f: &Fleet, until: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = f
            .gw2
            .run(|| stats::scrape(METRICS.parse().unwrap()))
            .unwrap()
            .expect("gateway 2's metrics endpoint answers");
        let get = |name: &str| {
            s.iter()
                .filter(|x| x.name == name)
                .map(|x| x.value)
                .sum::<f64>()
        };
        let v = (
            get(metrics::XDP_ACKS_VERIFIED),
            get(metrics::XDP_ACKS_REJECTED),
        );
        if until(v.0, v.1) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Closes a client that never got through with a RST, so nothing lingers.
fn abort(h: Held) {
    nix::sys::socket::setsockopt(
        &h.stream,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
}

/// The decision XDP makes on the ACK answering `synack`, made host-side
/// with the master secret (`cookie::verify_ack`): at `now_ms` (unix ms),
/// in `epoch`, with the straddle tests' lifetime of one epoch.
fn host_verdict(
    secret: &Secret,
    epoch: u32,
    now_ms: u64,
    synack: &frame::Parsed,
) -> Result<cookie::Restored, cookie::Reject> {
    let (std::net::IpAddr::V4(client), std::net::IpAddr::V4(service)) = (synack.dst, synack.src)
    else {
        panic!("an IPv4 SYN-ACK");
    };
    let flow = cookie::FlowV4 {
        saddr: client.into(),
        daddr: service.into(),
        sport: synack.dport,
        dport: synack.sport,
    };
    // The client echoes the SYN-ACK's TSval in its TSecr.
    let tsecr = synack.options.ts().map(|(tsval, _)| tsval);
    cookie::verify_ack(
        &secret.0,
        epoch,
        now_ms as u32,
        EPOCH_MS as u32,
        &flow,
        synack.seq,
        synack.ack.wrapping_sub(1),
        tsecr,
    )
}

/// SYN answered by gateway 1 in epoch `e`, keys rotated, ACK verified by
/// gateway 2 in epoch `e+1` and proxied; then the same held past the
/// cookie's lifetime, rejected by gateway 2. `timestamps`: the client
/// namespace's net.ipv4.tcp_timestamps.
fn straddle(timestamps: bool) {
    let t0 = Instant::now();
    let f = Fleet::new();
    if !timestamps {
        f.cli
            .exec(&["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
            .unwrap();
    }
    let secret = Secret::parse_hex(SECRET).unwrap();
    let epoch = EPOCH_SECS.to_string();
    let args = ["--epoch-secs", &epoch, "--metrics", METRICS];
    let (a, mut b) = f.start(&args);
    f.with_backend(|| {
        // The straddle: SYN 1.4-1.7 s into epoch e, released once gateway 2
        // is in e+1 (the probe then arrives ~1 s after the SYN-ACK).
        let e = at_phase(1400, 1700);
        hold(&f, true);
        let mut h = connect_held(&f);
        assert_eq!(
            h.synack.options.has_ts, timestamps,
            "the cookie layout under test"
        );
        assert_eq!(
            cookie::epoch_bits(h.synack.seq),
            (e % 4) as u8,
            "gateway 1 minted the cookie in epoch {e}"
        );
        rotated(&mut b, e + 1);
        let (_, at) = release(&f, &mut h, b"rotated mid-handshake");
        assert_eq!(epoch_at(at), e + 1, "gateway 2 got the ACK in epoch e+1");
        assert!(host_verdict(&secret, e + 1, at, &h.synack).is_ok());
        h.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        h.stream.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"rotated mid-handshake", "proxied by gateway 2");
        eprintln!(
            "straddle (timestamps {timestamps}): SYN {} ms into epoch {e}, ACK at {} ms into epoch {}",
            h.syn_ms % EPOCH_MS,
            at % EPOCH_MS,
            e + 1
        );
        assert_eq!(gw2_acks(&f, |v, _| v >= 1.0), (1.0, 0.0));

        // Past the lifetime. With timestamps: the echoed TSval dates the
        // SYN-ACK more than one epoch back, while the epoch bits (e-1..e+1)
        // still accept it. Without: the ACK arrives in e+2, whose key slots
        // no longer hold e's key.
        let (e, release_epoch) = if timestamps {
            let e = at_phase(300, 700);
            (e, e + 1)
        } else {
            let e = at_phase(1400, 1700);
            (e, e + 2)
        };
        hold(&f, true);
        let mut h = connect_held(&f);
        assert_eq!(cookie::epoch_bits(h.synack.seq), (e % 4) as u8);
        rotated(&mut b, release_epoch);
        if timestamps {
            let until = h.syn_ms + EPOCH_MS + 300;
            std::thread::sleep(Duration::from_millis(until.saturating_sub(unix_ms())));
        }
        let (_, at) = release(&f, &mut h, b"too late");
        assert_eq!(epoch_at(at), release_epoch, "when gateway 2 got the ACK");
        // Why it must be refused: with timestamps the SYN-ACK is too old
        // (its epoch bits alone would still pass in e+1), without them the
        // epoch bits name no key slot of e+2.
        let why = if timestamps {
            cookie::Reject::Stale
        } else {
            cookie::Reject::Epoch
        };
        assert_eq!(host_verdict(&secret, release_epoch, at, &h.synack), Err(why));
        assert!(
            at - h.syn_ms > EPOCH_MS,
            "held {} ms, more than one epoch",
            at - h.syn_ms
        );
        let (v, r) = gw2_acks(&f, |_, r| r >= 1.0);
        assert!(r >= 1.0, "gateway 2 rejected the late ACK");
        assert_eq!(v, 1.0, "and verified nothing more");
        h.stream.set_nonblocking(true).unwrap();
        let n = h.stream.read(&mut [0u8; 64]);
        assert!(
            matches!(&n, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "the late client got nothing: {n:?}"
        );
        eprintln!(
            "late (timestamps {timestamps}): SYN {} ms into epoch {e}, ACK after {} ms in epoch {release_epoch}: rejected",
            h.syn_ms % EPOCH_MS,
            at - h.syn_ms
        );
        abort(h);
    });
    let (_, out1) = a.stop(Duration::from_secs(15)).unwrap();
    let (_, out2) = b.stop(Duration::from_secs(15)).unwrap();
    let (c1, c2) = (last_counters(&out1).unwrap(), last_counters(&out2).unwrap());
    assert_eq!(
        ["syn_answered", "ack_verified", "ack_rejected"].map(|k| counter(&c1, k)),
        [2, 0, 0],
        "gateway 1 answered both SYNs and saw no ACK: {out1:?}"
    );
    assert_eq!(
        ["syn_answered", "ack_verified", "handoffs"].map(|k| counter(&c2, k)),
        [0, 1, 1],
        "gateway 2: {out2:?}"
    );
    assert!(counter(&c2, "ack_rejected") >= 1, "{out2:?}");
    eprintln!("took {:?}", t0.elapsed());
}

#[test]
fn key_rotation_mid_handshake_across_instances_with_timestamps() {
    straddle(true);
}

#[test]
fn key_rotation_mid_handshake_across_instances_without_timestamps() {
    straddle(false);
}
