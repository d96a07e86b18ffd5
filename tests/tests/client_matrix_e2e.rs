//! The client matrix: kernel clients with the TCP profiles real stacks have
//! (Linux defaults, Windows' missing timestamps, no window scaling, no SACK,
//! none of the three, a 536-byte MSS, a 9000-byte MTU link), set with
//! sysctls and route metrics in the client namespace. For each, 16 MiB go
//! up and 16 MiB come down through the real `ackgate run`, over IPv4 and
//! IPv6, checked by SHA-256; the gateway's materialized socket must use the
//! negotiated MSS from its first segment on, and the client must see the
//! options the cookie can carry for it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ackgate_common::cookie;
use ackgate_lab::{
    profile::{self, Profile},
    transfer, Lab,
};
use ackgate_tests::{
    run_ackgate_until,
    tcp_info::{tcp_info, OPT_SACK, OPT_TIMESTAMPS, OPT_WSCALE},
    with_backend_lab,
};

const PORT: u16 = 8080;
const BYTES: usize = 16 << 20;
/// Generous: these transfers take well under a second on veth; the bug this
/// guards against (a mis-scaled receive window) took minutes.
const TRANSFER_BOUND: Duration = Duration::from_secs(60);

/// The gateway socket's `mss:` for the flow from client port `cport`, as
/// `ss -ti` shows it (tcpi_snd_mss); polled until the handoff made it.
fn gateway_mss(lab: &Lab, cport: u16) -> u32 {
    let filter = format!("( sport = :{PORT} and dport = :{cport} )");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab
            .gw
            .exec(&["ss", "-tinH", "state", "established", &filter])
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(v) = text.split_whitespace().find_map(|w| w.strip_prefix("mss:")) {
            return v.parse().expect("mss value");
        }
        assert!(
            Instant::now() < deadline,
            "no gateway socket for client port {cport}: {text}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_profile(name: &str) {
    let p = profile::named(name);
    with_backend_lab(
        |lab| lab.shape_client(&p).unwrap(),
        transfer::serve,
        |lab| {
            let v4 = format!("{}:{PORT}", lab.vip4);
            let v6 = format!("[{}]:{PORT}", lab.vip6);
            let run = run_ackgate_until(
                lab,
                &[
                    "--listen",
                    &v4,
                    "--listen",
                    &v6,
                    "--backend",
                    "127.0.0.1:9000",
                ],
                "proxy ready",
            );
            let data = transfer::pattern(BYTES);
            for target in [
                SocketAddr::from((lab.vip4, PORT)),
                SocketAddr::from((lab.vip6, PORT)),
            ] {
                check_family(lab, &p, target, &data);
            }
            let (status, out) = run.stop(Duration::from_secs(15)).unwrap();
            assert!(status.success(), "{out:?}");
        },
    );
}

fn check_family(lab: &Lab, p: &Profile, target: SocketAddr, data: &[u8]) {
    let v6 = target.is_ipv6();
    let (table, hdr) = if v6 {
        (cookie::MSS_V6, 60)
    } else {
        (cookie::MSS_V4, 40)
    };
    // What the client offers, what ackgate clamps to (interface MTU), and
    // the cookie's table entry at or below the smaller.
    let offered = p.advmss.map_or(p.mtu - hdr, u32::from);
    let clamp = p.mtu - hdr;
    let negotiated = table[cookie::mss_index(&table, offered.min(clamp) as u16) as usize] as u32;
    let ts_len = if p.timestamps { 12 } else { 0 };
    let what = format!("{} {}", p.name, if v6 { "IPv6" } else { "IPv4" });

    // Upload, then download, each on a fresh connection.
    for dir in ["upload", "download"] {
        let (s, info_before) = lab
            .client
            .run(|| {
                let s = transfer::connect(target, TRANSFER_BOUND).unwrap();
                let i = tcp_info(&s);
                (s, i)
            })
            .unwrap();
        let cport = s.local_addr().unwrap().port();
        // The gateway's socket, before any data: the kernel reserves the
        // timestamp option's 12 bytes in the MSS cache of every socket
        // while net.ipv4.tcp_timestamps is on in its namespace (repaired
        // sockets take the namespace's setting, not the flow's; segments
        // of a flow without timestamps are still cut at the full MSS).
        let gw = gateway_mss(lab, cport);
        assert_eq!(
            gw,
            negotiated - 12,
            "{what}: gateway MSS right after the handoff (negotiated {negotiated})"
        );
        let mut expect_opts = 0;
        if p.timestamps {
            expect_opts |= OPT_TIMESTAMPS;
        }
        // With or without timestamps the cookie keeps SACK and the window
        // scale (a Linux client's shift, 7 here, is one a TS-less cookie
        // can name).
        if p.sack {
            expect_opts |= OPT_SACK;
        }
        if p.window_scaling {
            expect_opts |= OPT_WSCALE;
            assert_eq!(
                info_before.snd_wscale, 7,
                "{what}: ackgate's window scale as the client sees it"
            );
        }
        assert_eq!(
            info_before.options & 7,
            expect_opts,
            "{what}: options the client negotiated"
        );
        // The client sends in segments of ackgate's own MSS (the
        // interface's), whatever it receives in: MSS is per direction.
        assert_eq!(
            info_before.snd_mss,
            clamp - ts_len,
            "{what}: the client's MSS towards ackgate"
        );
        let t = lab
            .client
            .run(|| {
                let probe = s.try_clone().unwrap();
                let t = if dir == "upload" {
                    transfer::upload(s, data)
                } else {
                    transfer::download(s, data.len())
                };
                (t, tcp_info(&probe))
            })
            .unwrap();
        let (t, info_after) = (t.0.unwrap_or_else(|e| panic!("{what} {dir}: {e:#}")), t.1);
        eprintln!(
            "{what} {dir}: {} MiB in {:?} ({:.0} Mbit/s)",
            BYTES >> 20,
            t.elapsed,
            t.mbit_per_s()
        );
        assert!(
            t.elapsed < TRANSFER_BOUND,
            "{what} {dir} took {:?}",
            t.elapsed
        );
        if dir == "download" {
            // Full-sized segments reached the client.
            assert_eq!(
                info_after.rcv_mss,
                negotiated - ts_len,
                "{what}: largest segment the client received"
            );
        }
    }
}

#[test]
fn linux_default() {
    run_profile("linux_default");
}

#[test]
fn no_timestamps_like_windows() {
    run_profile("no_timestamps");
}

#[test]
fn timestamps_without_window_scaling() {
    run_profile("no_window_scaling");
}

#[test]
fn no_sack() {
    run_profile("no_sack");
}

#[test]
fn no_timestamps_window_scaling_or_sack() {
    run_profile("bare");
}

#[test]
fn mss_536() {
    run_profile("mss_536");
}

#[test]
fn jumbo_9000_mtu() {
    run_profile("mtu_9000");
}
