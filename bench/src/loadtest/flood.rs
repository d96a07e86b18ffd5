//! `ackgate-bench flood`: spoofed SYNs at a target from an interface of
//! this network namespace, at a rate, bounded in time and packets, with
//! the SYN-ACKs seen coming back counted on the same interface.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::{
    frame::{self, TCP_ACK, TCP_SYN},
    Capture,
};
use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{check_seconds, check_target, Rate};
use crate::flood::{self, Spec};

#[derive(clap::Args)]
pub struct Args {
    /// Interface to send from, in this network namespace.
    #[arg(long)]
    iface: String,
    /// The target: IP address and TCP port (a single host; broadcast and
    /// multicast are refused).
    #[arg(long)]
    target: SocketAddr,
    /// SYNs per second, or `max` for as fast as the interface takes them.
    #[arg(long)]
    pps: Rate,
    /// Seconds to flood (required bound; at most 3600).
    #[arg(long)]
    seconds: f64,
    /// Most SYNs to send (required bound).
    #[arg(long)]
    max_packets: u64,
    /// Spoofed source network, e.g. 198.18.0.0/15 (the target's answers go
    /// there: route it to a sink) [default: 10.99.0.0/16 or fd00:99::/64].
    #[arg(long)]
    source: Option<String>,
    /// The next hop's MAC address [default: the kernel's neighbour entry
    /// for the route to the target through --iface].
    #[arg(long)]
    dst_mac: Option<String>,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    iface: String,
    target: SocketAddr,
    source: String,
    pps_asked: Option<u64>,
    seconds: f64,
    sent: u64,
    sent_pps: f64,
    /// SYN-ACKs from the target seen on the interface (those routed back
    /// through it).
    answers_seen: u64,
    answers_per_s: f64,
}

pub fn run(a: Args) -> Result<()> {
    check_target(a.target.ip())?;
    check_seconds(a.seconds)?;
    if a.max_packets == 0 {
        bail!("--max-packets must be at least 1");
    }
    let (net, prefix) = match &a.source {
        Some(s) => parse_cidr(s)?,
        None => match a.target.ip() {
            IpAddr::V4(_) => ("10.99.0.0".parse()?, 16),
            IpAddr::V6(_) => ("fd00:99::".parse()?, 64),
        },
    };
    if net.is_ipv4() != a.target.is_ipv4() {
        bail!(
            "--source {net}/{prefix} and --target {} are of different families",
            a.target
        );
    }
    let src_mac = iface_mac(&a.iface)?;
    let dst_mac = match &a.dst_mac {
        Some(m) => parse_mac(m)?,
        None => neighbour(&a.iface, a.target.ip())?,
    };
    if dst_mac[0] & 1 == 1 {
        bail!(
            "refusing destination MAC {}: a broadcast or multicast address",
            show_mac(&dst_mac)
        );
    }
    let spec = Spec {
        dst: a.target.ip(),
        dport: a.target.port(),
        pps: match a.pps {
            Rate::PerSecond(n) => Some(n),
            Rate::Max => None,
        },
        duration: Duration::from_secs_f64(a.seconds),
        max_packets: a.max_packets,
        src_mac,
        dst_mac,
        seed: rand::random(),
        sources: Some((net, prefix)),
    };
    let capture = Capture::open(&a.iface)?;
    let (sent_now, answers) = (AtomicU64::new(0), AtomicU64::new(0));
    let (done, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let target = a.target;
    let sent = std::thread::scope(|s| {
        s.spawn(|| {
            capture.each_until(&done, |f| {
                if let Some(p) = frame::parse(f) {
                    if p.src == target.ip()
                        && p.sport == target.port()
                        && p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                    {
                        answers.fetch_add(1, Relaxed);
                    }
                }
            })
        });
        s.spawn(|| {
            let t0 = Instant::now();
            while !done.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if t0.elapsed().as_millis() % 1000 < 100 {
                    let secs = t0.elapsed().as_secs_f64();
                    let (n, k) = (sent_now.load(Relaxed), answers.load(Relaxed));
                    eprint!(
                        "\rflood: {secs:5.1} s  sent {n:>11} ({:>9.0} pps)  answers seen {k:>11} ({:>9.0}/s)",
                        n as f64 / secs,
                        k as f64 / secs
                    );
                }
            }
            eprintln!();
        });
        let r = flood::run_counting(&a.iface, &spec, &stop, &sent_now);
        // Answers still on their way.
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, Relaxed);
        r
    })?;
    let answers = answers.load(Relaxed);
    let sum = Summary {
        iface: a.iface.clone(),
        target: a.target,
        source: format!("{net}/{prefix}"),
        pps_asked: spec.pps,
        seconds: sent.seconds,
        sent: sent.packets,
        sent_pps: sent.pps,
        answers_seen: answers,
        answers_per_s: answers as f64 / sent.seconds.max(1e-9),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sum)?);
    } else {
        println!(
            "| interface | target | sources | seconds | SYNs sent | pps | SYN-ACKs seen | per s |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.0} | {} | {:.0} |",
            sum.iface,
            sum.target,
            sum.source,
            sum.seconds,
            sum.sent,
            sum.sent_pps,
            sum.answers_seen,
            sum.answers_per_s
        );
    }
    Ok(())
}

/// `ADDR/LEN`.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, l) = s
        .split_once('/')
        .with_context(|| format!("--source {s}: expected ADDRESS/PREFIX-LENGTH"))?;
    let ip: IpAddr = a
        .parse()
        .with_context(|| format!("--source {s}: bad address"))?;
    let len: u8 = l
        .parse()
        .with_context(|| format!("--source {s}: bad prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        bail!("--source {s}: prefix length over {max}");
    }
    check_target(ip).with_context(|| format!("--source {s}"))?;
    Ok((ip, len))
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address '{s}'"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("MAC address '{s}': six bytes, colon-separated"))
}

fn show_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let t = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .with_context(|| format!("no interface {iface} in this network namespace"))?;
    parse_mac(t.trim())
}

/// The MAC of the next hop towards `ip` through `iface`: from the routing
/// table and the neighbour table, resolved by one UDP datagram to the
/// discard port if the entry is missing.
fn neighbour(iface: &str, ip: IpAddr) -> Result<[u8; 6]> {
    let route = ip_json(&["route", "get", &ip.to_string()])?;
    let r = route.get(0).context("no route to the target")?;
    let dev = r["dev"].as_str().unwrap_or("");
    if dev != iface {
        bail!("the route to {ip} leaves through {dev}, not {iface}: give --dst-mac");
    }
    let hop = r["gateway"].as_str().map_or(ip.to_string(), String::from);
    for attempt in 0..2 {
        let n = ip_json(&["neigh", "show", "to", &hop, "dev", iface])?;
        if let Some(mac) = n
            .as_array()
            .and_then(|a| a.iter().find_map(|e| e["lladdr"].as_str()))
        {
            return parse_mac(mac);
        }
        if attempt == 0 {
            let s = std::net::UdpSocket::bind(if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            let _ = s.send_to(b"", SocketAddr::new(ip, 9));
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    bail!("no neighbour entry for {hop} on {iface}: give --dst-mac")
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let o = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null))
}
