//! The targets under test in the bench lab: nginx behind each of ackgate,
//! the kernel's SYN cookies, nftables synproxy and HAProxy, or direct.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

pub use ackgate_lab::bench_lab::*;
use ackgate_lab::{workspace_bin, Netns, Process};
use anyhow::{Context as _, Result};

/// Extra arguments for every ackgate a scenario starts (`--ackgate-arg`).
static EXTRA_ARGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn set_extra_args(args: &[String]) {
    *EXTRA_ARGS.lock().unwrap() = args.to_vec();
}

pub fn extra_args() -> Vec<String> {
    EXTRA_ARGS.lock().unwrap().clone()
}

/// nginx (Debian's) in the backend namespace: `/` is a 2-byte "ok", `/bulk`
/// a sparse file of `bulk_bytes`. Connections stay open for HTTP/1.1
/// requests (the relay scenario's exchanges); HTTP/1.0 ones close.
pub fn nginx(lab: &BenchLab, bulk_bytes: u64) -> Result<Process> {
    let d = lab.dir.join("nginx");
    std::fs::create_dir_all(d.join("www"))?;
    std::fs::create_dir_all(d.join("tmp"))?;
    std::fs::write(d.join("www/index.html"), "ok")?;
    std::fs::File::create(d.join("www/bulk"))?.set_len(bulk_bytes)?;
    // Read once so the page cache holds it: the first read of a sparse file
    // zero-fills every page (perf: a third of the machine in nginx's
    // memset), which charged the first target measured, not the others.
    std::io::copy(
        &mut std::fs::File::open(d.join("www/bulk"))?,
        &mut std::io::sink(),
    )?;
    let ds = d.display();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "worker_processes 1; daemon off; pid {ds}/nginx.pid; error_log {ds}/error.log;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off; sendfile on; keepalive_timeout 60s; keepalive_requests 1000000;
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
    /// ackgate: XDP SYN cookies, verified-ACK handoff, its relay; the
    /// io_uring engine (what `auto` picks on this kernel).
    Ackgate,
    /// The io_uring engine on one engine thread (`--threads 1`).
    AckgateOneThread,
    /// ackgate's tokio engine: one system call per handoff step.
    AckgateTokio,
    /// The tokio engine with `--splice-pipes 0`: every relayed byte copied
    /// through userspace (the relay before splice).
    AckgateCopy,
    /// `tcp_syncookies=2` and a plain listener (`ackgate --xdp-mode off`,
    /// the same relay).
    Syncookies,
    /// nftables synproxy in front of the same plain listener.
    Synproxy,
    /// HAProxy (Debian's) in TCP mode.
    Haproxy,
    /// The client talks to the backend, routed through the proxy namespace.
    Direct,
    /// The bench's bare relay (`ackgate-relay-path`) with one data path, on
    /// a port of its own.
    RelayPath(RelayPath),
}

/// The data paths `ackgate-relay-path` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayPath {
    Copy,
    Splice,
    UringSplice,
    UringRecv,
}

impl RelayPath {
    pub const ALL: [RelayPath; 4] = [
        RelayPath::Copy,
        RelayPath::Splice,
        RelayPath::UringSplice,
        RelayPath::UringRecv,
    ];

    /// Its `--path` value.
    fn arg(self) -> &'static str {
        match self {
            RelayPath::Copy => "copy",
            RelayPath::Splice => "splice",
            RelayPath::UringSplice => "uring-splice",
            RelayPath::UringRecv => "uring-recv",
        }
    }

    /// Ports 82-85 on the service address (XDP passes them).
    fn port(self) -> u16 {
        HAPROXY_PORT + 1 + self as u16
    }
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Ackgate => "ackgate",
            Target::AckgateOneThread => "ackgate 1 thread",
            Target::AckgateTokio => "ackgate tokio",
            Target::AckgateCopy => "ackgate tokio copy",
            Target::Syncookies => "kernel syncookies",
            Target::Synproxy => "nftables synproxy",
            Target::Haproxy => "haproxy",
            Target::Direct => "direct",
            Target::RelayPath(RelayPath::Copy) => "bare relay: read/write",
            Target::RelayPath(RelayPath::Splice) => "bare relay: splice(2)",
            Target::RelayPath(RelayPath::UringSplice) => "bare relay: io_uring splice",
            Target::RelayPath(RelayPath::UringRecv) => "bare relay: io_uring multishot recv",
        }
    }

    /// Whether the target attaches XDP to the proxy's interface, so only
    /// one such target can run at a time.
    pub fn attaches_xdp(self) -> bool {
        matches!(
            self,
            Target::Ackgate | Target::AckgateOneThread | Target::AckgateTokio | Target::AckgateCopy
        )
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

/// nftables synproxy for `addr:port` in `ns`, as the nftables wiki sets it
/// up: untracked SYNs, synproxy for the invalid/untracked ACKs, loose
/// pickup off (`nft delete table inet benchsynproxy` removes it).
pub fn synproxy(ns: &Netns, dir: &std::path::Path, addr: Ipv4Addr, port: u16) -> Result<()> {
    let sysctl = |kv: &str| ns.exec(&["sysctl", "-qw", kv]).map(|_| ());
    sysctl("net.ipv4.tcp_syncookies=1")?;
    sysctl("net.ipv4.tcp_timestamps=1")?;
    let rules = format!(
        "table inet benchsynproxy {{
  chain pre {{ type filter hook prerouting priority raw; policy accept;
    ip daddr {addr} tcp dport {port} tcp flags syn notrack
  }}
  chain in {{ type filter hook input priority filter; policy accept;
    ip daddr {addr} tcp dport {port} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    ip daddr {addr} tcp dport {port} ct state invalid drop
  }}
}}
"
    );
    let f = dir.join("synproxy.nft");
    std::fs::write(&f, rules)?;
    ns.exec(&["nft", "-f", f.to_str().unwrap()])
        .context("loading the nftables synproxy ruleset (nf_synproxy in the kernel?)")?;
    // Set after the ruleset: conntrack's sysctls exist once it is loaded.
    let _ = sysctl("net.netfilter.nf_conntrack_tcp_loose=0");
    Ok(())
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
        Target::Ackgate | Target::AckgateOneThread | Target::AckgateTokio | Target::AckgateCopy => {
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
                "--metrics",
                METRICS,
            ]);
            cmd.args(extra_args());
            match target {
                Target::Ackgate => cmd.args(["--engine", "io_uring"]),
                Target::AckgateOneThread => cmd.args(["--engine", "io_uring", "--threads", "1"]),
                Target::AckgateTokio => cmd.args(["--engine", "tokio"]),
                _ => cmd.args(["--engine", "tokio", "--splice-pipes", "0"]),
            };
            let mut p = Process::spawn("ackgate", cmd)?;
            wait_listening(&lab.cli, vip, "ackgate", &mut p)?;
            vec![p]
        }
        Target::RelayPath(path) => {
            let addr = SocketAddr::new(VIP4.into(), path.port());
            let mut cmd = lab
                .px
                .command(workspace_bin("ackgate-relay-path")?.to_str().unwrap());
            cmd.args([
                "--path",
                path.arg(),
                "--listen",
                &addr.to_string(),
                "--backend",
                &lab.backend().to_string(),
            ]);
            let mut p = Process::spawn("ackgate-relay-path", cmd)?;
            wait_listening(&lab.cli, addr, "ackgate-relay-path", &mut p)?;
            vec![p]
        }
        Target::Syncookies => {
            sysctl("net.ipv4.tcp_syncookies=2")?;
            vec![plain(lab)?]
        }
        Target::Synproxy => {
            synproxy(&lab.px, &lab.dir, VIP4, PORT)?;
            nft = true;
            vec![plain(lab)?]
        }
        Target::Haproxy => {
            let vip = SocketAddr::new(VIP4.into(), HAPROXY_PORT);
            let cfg = lab.dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global
  maxconn 7000
defaults
  mode tcp
  option splice-auto
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
        Target::RelayPath(p) => SocketAddr::new(VIP4.into(), p.port()),
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
