//! The bench lab: attacker, client, switch, proxy and backend network
//! namespaces joined by veth pairs, the components under test, and their
//! removal (namespaces, processes, files) on drop, also when a run fails.
//!
//! ```text
//!  attacker (atk0) ─┐
//!                    ├─ switch (bridge) ── (px0) proxy (px1) ── (be0) backend
//!  client   (cli0) ─┘
//! ```
//!
//! The proxy's `px0` carries ackgate's XDP program, so it sees the flood
//! and the legitimate clients on one interface; the switch's end of that
//! veth has a pass program (veth delivers `XDP_TX` frames only to a peer
//! with XDP). Spoofed flood sources (10.99.0.0/16, fd00:99::/64) are routed
//! back to the attacker, which drops the answers. Nothing leaves the lab.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ackgate_lab::{harness::Attached, ip, unique, workspace_bin, Netns, Process};
use anyhow::{bail, Context as _, Result};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// The service port on the proxy, and the backend's HTTP port.
pub const PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// HAProxy's port: not protected, so it runs beside ackgate (XDP passes it).
pub const HAPROXY_PORT: u16 = 81;
/// Metrics of the ackgate under test, inside the proxy namespace.
pub const METRICS: &str = "127.0.0.1:9469";

pub struct BenchLab {
    pub atk: Netns,
    pub cli: Netns,
    /// The switch: held for its lifetime (the namespace goes with it).
    _sw: Netns,
    pub px: Netns,
    pub be: Netns,
    pub dir: PathBuf,
    _pass: Vec<Attached>,
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Namespaces and directories of live labs, for [`cleanup_on_signal`].
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

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
        if let Ok(mut live) = LIVE.lock() {
            for n in ["atk", "cli", "sw", "px", "be"] {
                live.push(format!("{stem}-{n}"));
            }
            live.push(
                std::env::temp_dir()
                    .join(format!("{stem}-bench"))
                    .display()
                    .to_string(),
            );
        }
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
        // Room for the flood: the kernel baselines keep state per SYN.
        sh(&px, "sysctl -qw net.ipv4.tcp_max_syn_backlog=4096")?;
        sh(&px, "sysctl -qw net.core.somaxconn=4096")?;
        let pass = sw.run(|| Attached::pass("sw-px"))??;
        Ok(BenchLab {
            atk,
            cli,
            _sw: sw,
            px,
            be,
            dir,
            _pass: vec![pass],
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

/// nginx (Debian's) in the backend namespace: `/` is a 2-byte "ok", `/bulk`
/// a sparse file of `bulk_bytes`.
pub fn nginx(lab: &BenchLab, bulk_bytes: u64) -> Result<Process> {
    let d = lab.dir.join("nginx");
    std::fs::create_dir_all(d.join("www"))?;
    std::fs::create_dir_all(d.join("tmp"))?;
    std::fs::write(d.join("www/index.html"), "ok")?;
    std::fs::File::create(d.join("www/bulk"))?.set_len(bulk_bytes)?;
    let ds = d.display();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "worker_processes 1; daemon off; pid {ds}/nginx.pid; error_log {ds}/error.log;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off; sendfile on; keepalive_timeout 0;
  client_body_temp_path {ds}/tmp; proxy_temp_path {ds}/tmp; fastcgi_temp_path {ds}/tmp;
  uwsgi_temp_path {ds}/tmp; scgi_temp_path {ds}/tmp;
  server {{ listen {BACKEND4}:{BACKEND_PORT} backlog=4096; root {ds}/www; }}
}}
"
        ),
    )?;
    let mut cmd = lab.be.command("nginx");
    cmd.args(["-c", &format!("{ds}/nginx.conf"), "-p", &ds.to_string()]);
    let mut p = Process::spawn("nginx", cmd)?;
    wait_listening(&lab.cli, lab.backend(), "nginx", &mut p)?;
    Ok(p)
}

/// What sits on the proxy namespace's service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// ackgate: XDP SYN cookies, verified-ACK handoff, its relay.
    Ackgate,
    /// `tcp_syncookies=2` and a plain listener (`ackgate --xdp-mode off`,
    /// the same relay).
    Syncookies,
    /// nftables synproxy in front of the same plain listener.
    Synproxy,
    /// HAProxy (Debian's) in TCP mode.
    Haproxy,
    /// The client talks to the backend, routed through the proxy namespace.
    Direct,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Ackgate => "ackgate",
            Target::Syncookies => "kernel syncookies",
            Target::Synproxy => "nftables synproxy",
            Target::Haproxy => "haproxy",
            Target::Direct => "direct",
        }
    }
}

/// A running target; dropping it undoes its set-up.
pub struct Running {
    pub target: Target,
    pub addr: SocketAddr,
    _procs: Vec<Process>,
    px: String,
    nft: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Processes go first (their fields drop after this body), so put the
        // namespace back to defaults for the next target here.
        if self.nft {
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.px,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "benchsynproxy",
                ])
                .output();
        }
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.px,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_syncookies=1",
            ])
            .output();
    }
}

/// Starts `target` in the proxy namespace, in front of nginx.
pub fn start(lab: &BenchLab, target: Target) -> Result<Running> {
    let px = lab.px.name.clone();
    let vip = lab.vip();
    let sysctl = |kv: &str| lab.px.exec(&["sysctl", "-qw", kv]).map(|_| ());
    let plain = |lab: &BenchLab| -> Result<Process> {
        let mut cmd = lab.px.command(workspace_bin("ackgate")?.to_str().unwrap());
        cmd.args([
            "run",
            "--iface",
            "px0",
            "--xdp-mode",
            "off",
            "--listen",
            &vip.to_string(),
            "--backend",
            &lab.backend().to_string(),
            "--stats-interval",
            "0",
            "--max-connections",
            "100000",
            "--metrics",
            METRICS,
        ]);
        let mut p = Process::spawn("ackgate --xdp-mode off", cmd)?;
        wait_listening(&lab.cli, vip, "ackgate --xdp-mode off", &mut p)?;
        Ok(p)
    };
    let mut nft = false;
    let procs = match target {
        Target::Direct => vec![],
        Target::Ackgate => {
            let mut cmd = lab.px.command(workspace_bin("ackgate")?.to_str().unwrap());
            cmd.args([
                "run",
                "--iface",
                "px0",
                "--listen",
                &vip.to_string(),
                "--listen",
                &SocketAddr::new(lab.vip6(), PORT).to_string(),
                "--backend",
                &lab.backend().to_string(),
                "--stats-interval",
                "0",
                "--max-connections",
                "100000",
                "--metrics",
                METRICS,
            ]);
            let mut p = Process::spawn("ackgate", cmd)?;
            wait_listening(&lab.cli, vip, "ackgate", &mut p)?;
            vec![p]
        }
        Target::Syncookies => {
            sysctl("net.ipv4.tcp_syncookies=2")?;
            vec![plain(lab)?]
        }
        Target::Synproxy => {
            // As the nftables wiki sets it up: untracked SYNs, synproxy for
            // the invalid/untracked ACKs, loose pickup off.
            sysctl("net.ipv4.tcp_syncookies=1")?;
            sysctl("net.ipv4.tcp_timestamps=1")?;
            sysctl("net.netfilter.nf_conntrack_tcp_loose=0").ok();
            let rules = format!(
                "table inet benchsynproxy {{
  chain pre {{ type filter hook prerouting priority raw; policy accept;
    ip daddr {VIP4} tcp dport {PORT} tcp flags syn notrack
  }}
  chain in {{ type filter hook input priority filter; policy accept;
    ip daddr {VIP4} tcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    ip daddr {VIP4} tcp dport {PORT} ct state invalid drop
  }}
}}
"
            );
            let f = lab.dir.join("synproxy.nft");
            std::fs::write(&f, rules)?;
            lab.px
                .exec(&["nft", "-f", f.to_str().unwrap()])
                .context("loading the nftables synproxy ruleset (nf_synproxy in the kernel?)")?;
            nft = true;
            let _ = lab
                .px
                .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
            vec![plain(lab)?]
        }
        Target::Haproxy => {
            let vip = SocketAddr::new(VIP4.into(), HAPROXY_PORT);
            let cfg = lab.dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global
  maxconn 8000
defaults
  mode tcp
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend f
  bind {vip} backlog 4096
  default_backend b
backend b
  server s1 {} 
",
                    lab.backend()
                ),
            )?;
            let mut cmd = lab.px.command("haproxy");
            cmd.args(["-db", "-f", cfg.to_str().unwrap()]);
            let mut p = Process::spawn("haproxy", cmd)?;
            wait_listening(&lab.cli, vip, "haproxy", &mut p)?;
            vec![p]
        }
    };
    let addr = match target {
        Target::Haproxy => SocketAddr::new(VIP4.into(), HAPROXY_PORT),
        Target::Direct => lab.backend(),
        _ => vip,
    };
    Ok(Running {
        target,
        addr,
        _procs: procs,
        px,
        nft,
    })
}
