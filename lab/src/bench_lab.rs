//! The bench lab: attacker, client, switch, proxy and backend network
//! namespaces joined by veth pairs, and their removal (namespaces,
//! processes, files) on drop, also when a run fails, or on SIGINT/SIGTERM.
//!
//! ```text
//!  attacker (atk0) ─┐
//!                    ├─ switch (bridge) ── (px0) proxy (px1) ── (be0) backend
//!  client   (cli0) ─┘
//! ```
//!
//! The proxy's `px0` carries ackgate's XDP program, so it sees the flood
//! and the legitimate clients on one interface. The switch's end of that
//! veth has an XDP program too (veth delivers `XDP_TX` frames only to a
//! peer with XDP): it drops and counts the answers to the spoofed flood
//! sources (10.99.0.0/16, fd00:99::/64, routed toward the attacker), as the
//! attacker's network absorbs them, so they cost the switch's core no
//! bridging, and passes everything else. Nothing leaves the lab.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{harness::Attached, ip, unique, Netns, Process};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// The service port on the proxy, and the backend's HTTP port.
pub const PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// HAProxy's port: not protected, so it runs beside ackgate (XDP passes it).
pub const HAPROXY_PORT: u16 = 81;
/// The core of px0's receive path in [`BenchLab::isolate_proxy_rx`], and
/// the one the switch (and the generator) get.
pub const PROXY_RX_CPU: usize = 0;
pub const SWITCH_RX_CPU: usize = 1;
/// Where floods enter: the switch's port toward the proxy (in `sw`). An
/// AF_PACKET generator there sends the frames the attacker's would be
/// bridged into, without charging the bridge's forwarding of every flood
/// frame to the generator's core; they share px0's queue with the clients'.
pub const FLOOD_PORT: &str = "sw-px";
/// Metrics of the ackgate under test, inside the proxy namespace.
pub const METRICS: &str = "127.0.0.1:9469";

pub struct BenchLab {
    pub atk: Netns,
    pub cli: Netns,
    /// The switch; floods enter its port toward the proxy, [`FLOOD_PORT`].
    pub sw: Netns,
    pub px: Netns,
    pub be: Netns,
    pub dir: PathBuf,
    /// The switch end's sink for answers to spoofed sources.
    absorb: Attached,
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Namespaces and directories of live labs, for [`cleanup_on_signal`].
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records namespaces (names) and directories (absolute paths) of a lab
/// for [`cleanup_on_signal`].
pub fn register_live(names: &[String]) {
    if let Ok(mut live) = LIVE.lock() {
        live.extend(names.iter().cloned());
    }
}

/// SIGINT/SIGTERM end the bench without unwinding, so drops would not run:
/// a thread takes those signals instead, kills every process in the labs'
/// namespaces, deletes the namespaces and directories, and exits 130. Call
/// before any other thread exists (the signals are blocked for all).
pub fn cleanup_on_signal() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        let sig = set.wait();
        eprintln!("ackgate-bench: {sig:?}, removing the lab");
        for name in LIVE.lock().map(|v| v.clone()).unwrap_or_default() {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &name]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
                    }
                }
            }
            if name.starts_with('/') {
                let _ = std::fs::remove_dir_all(&name);
            } else {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        std::process::exit(130);
    });
    Ok(())
}

impl BenchLab {
    pub fn new() -> Result<Self> {
        let stem = unique("b");
        let mut live: Vec<String> = ["atk", "cli", "sw", "px", "be"]
            .iter()
            .map(|n| format!("{stem}-{n}"))
            .collect();
        live.push(
            std::env::temp_dir()
                .join(format!("{stem}-bench"))
                .display()
                .to_string(),
        );
        register_live(&live);
        let ns = |n: &str| Netns::new(format!("{stem}-{n}"));
        let (atk, cli, sw, px, be) = (ns("atk")?, ns("cli")?, ns("sw")?, ns("px")?, ns("be")?);
        let dir = std::env::temp_dir().join(format!("{stem}-bench"));
        std::fs::create_dir_all(&dir)?;
        let veth = |a: &Netns, an: &str, b: &Netns, bn: &str| {
            ip(&[
                "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn, "netns",
                &b.name,
            ])
        };
        veth(&atk, "atk0", &sw, "sw-atk")?;
        veth(&cli, "cli0", &sw, "sw-cli")?;
        veth(&sw, "sw-px", &px, "px0")?;
        veth(&px, "px1", &be, "be0")?;
        let sh = |n: &Netns, cmd: &str| -> Result<()> {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            n.exec(&args).map(|_| ())
        };
        sh(&sw, "ip link add br0 type bridge")?;
        for p in ["sw-atk", "sw-cli", "sw-px"] {
            sh(&sw, &format!("ip link set {p} master br0"))?;
            sh(&sw, &format!("ip link set {p} up"))?;
        }
        sh(&sw, "ip link set br0 up")?;
        for (n, ifname, a4, a6) in [
            (&atk, "atk0", "10.77.0.3/24", "fd00:77::3/64"),
            (&cli, "cli0", "10.77.0.2/24", "fd00:77::2/64"),
            (&px, "px0", "10.77.0.1/24", "fd00:77::1/64"),
            (&px, "px1", "10.78.0.1/24", "fd00:78::1/64"),
            (&be, "be0", "10.78.0.2/24", "fd00:78::2/64"),
        ] {
            sh(n, &format!("ip addr add {a4} dev {ifname}"))?;
            sh(n, &format!("ip -6 addr add {a6} dev {ifname} nodad"))?;
            sh(n, &format!("ip link set {ifname} up"))?;
        }
        sh(&cli, "ip route add 10.78.0.0/24 via 10.77.0.1")?;
        sh(&cli, "ip -6 route add fd00:78::/64 via fd00:77::1")?;
        sh(&be, "ip route add default via 10.78.0.1")?;
        sh(&be, "ip -6 route add default via fd00:78::1")?;
        sh(&px, "sysctl -qw net.ipv4.ip_forward=1")?;
        sh(&px, "sysctl -qw net.ipv6.conf.all.forwarding=1")?;
        sh(&px, "ip route add 10.99.0.0/16 via 10.77.0.3")?;
        sh(&px, "ip -6 route add fd00:99::/64 via fd00:77::3")?;
        // The clients open thousands of connections a second to one
        // address and often close first; without reuse, each connect()
        // scans their TIME_WAIT ports (measured: wrk's connect() took 40% of
        // the machine and capped every target at ~700 connections/s: the
        // generator's ceiling, not the target's). Load generators reuse.
        sh(&cli, "sysctl -qw net.ipv4.tcp_tw_reuse=1")?;
        // Room for the flood: the kernel baselines keep state per SYN.
        sh(&px, "sysctl -qw net.ipv4.tcp_max_syn_backlog=4096")?;
        sh(&px, "sysctl -qw net.core.somaxconn=4096")?;
        let absorb = sw.run(|| Attached::absorb("sw-px"))??;
        Ok(BenchLab {
            atk,
            cli,
            sw,
            px,
            be,
            dir,
            absorb,
        })
    }

    /// The service address through the proxy, and the backend direct.
    pub fn vip(&self) -> SocketAddr {
        (VIP4, PORT).into()
    }

    pub fn backend(&self) -> SocketAddr {
        (BACKEND4, BACKEND_PORT).into()
    }

    pub fn vip6(&self) -> IpAddr {
        VIP6.into()
    }

    /// Puts the proxy's receive path on a core of its own, as a NIC queue
    /// with its own interrupt core would: px0's NAPI thread on
    /// [`PROXY_RX_CPU`], real-time as a softirq is (its target's XDP
    /// program and every frame's kernel receive work run there; other
    /// tasks get what it leaves, so a flood queues no longer than the
    /// thread needs to take it), and the switch's end
    /// toward it (the answers and the replies, forwarded by the bridge) on
    /// [`SWITCH_RX_CPU`], real-time, beside the generator. Needs an XDP
    /// program on px0 (a target's own, or [`Attached::pass`]) and must be
    /// called again whenever px0's program changes. Returns px0's NAPI
    /// thread ids.
    pub fn isolate_proxy_rx(&self) -> Result<Vec<i32>> {
        crate::napi::threaded(&self.sw, "sw-px", SWITCH_RX_CPU, true)?;
        crate::napi::threaded(&self.px, "px0", PROXY_RX_CPU, true)
    }

    /// Answers to spoofed flood sources absorbed at the switch so far.
    pub fn answers_absorbed(&self) -> Result<u64> {
        self.absorb.count()
    }

    /// Frames lost on their way into the proxy's interface so far: the
    /// switch end's transmit drops (veth drops a frame when the receiving
    /// end's queue is full: the receiver's core cannot keep up) and px0's
    /// receive drops.
    pub fn ingress_drops(&self) -> Result<u64> {
        let stat = |ns: &Netns, path: String| -> Result<u64> {
            // `ip netns exec` remounts /sys: the namespace's own devices.
            let o = ns.exec(&["cat", &path])?;
            Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
        };
        Ok(stat(
            &self.sw,
            "/sys/class/net/sw-px/statistics/tx_dropped".into(),
        )? + stat(&self.px, "/sys/class/net/px0/statistics/rx_dropped".into())?)
    }
}

/// Waits until a TCP connect from `ns` to `addr` succeeds.
pub fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str, p: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = ns.run(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        p.check()?;
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
