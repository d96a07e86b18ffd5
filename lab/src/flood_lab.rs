//! The flood lab: one veth pair, attacker to target, nothing between them.
//!
//! ```text
//!  attacker (atk0) ───── (tgt0) target
//!   generator: CPU 1       receive path: CPU 0 (its own NAPI thread)
//! ```
//!
//! Both veth ends get threaded NAPI, so a frame's receive processing runs
//! in the receiving end's `napi/<dev>-<id>` kernel thread instead of the
//! sender's softirq: the target's thread is pinned to [`TARGET_CPU`], and
//! the attacker's (where the answers are absorbed by a counting XDP_DROP,
//! as a real network absorbs them) to [`GEN_CPU`] beside the generator.
//! That core's time is then the target's alone: its cost per SYN is its
//! CPU time over the SYN-ACKs counted at the attacker. Spoofed sources
//! (10.99.0.0/16, fd00:99::/64) are routed back to the attacker through a
//! permanent neighbour entry, so no ARP or ND crosses the flood.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use crate::{harness::Attached, ip, napi::threaded, unique, Netns};

pub const TGT4: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 1);
pub const ATK4: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 2);
pub const TGT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x76, 0, 0, 0, 0, 0, 1);
pub const ATK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x76, 0, 0, 0, 0, 0, 2);
/// The CPU the target's receive path runs on, and the generator's.
pub const TARGET_CPU: usize = 0;
pub const GEN_CPU: usize = 1;
/// The interfaces, one per namespace.
pub const ATK_IF: &str = "atk0";
pub const TGT_IF: &str = "tgt0";

pub struct FloodLab {
    /// The counting sink on the attacker's end (dropped before the
    /// namespaces, as fields drop in order).
    pub answers: Attached,
    pub atk: Netns,
    pub tgt: Netns,
    pub dir: PathBuf,
}

impl Drop for FloodLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl FloodLab {
    pub fn new() -> Result<Self> {
        let stem = unique("f");
        crate::bench_lab::register_live(&[format!("{stem}-atk"), format!("{stem}-tgt")]);
        let atk = Netns::new(format!("{stem}-atk"))?;
        let tgt = Netns::new(format!("{stem}-tgt"))?;
        let dir = std::env::temp_dir().join(format!("{stem}-flood"));
        crate::bench_lab::register_live(&[dir.display().to_string()]);
        std::fs::create_dir_all(&dir)?;
        ip(&[
            "link", "add", ATK_IF, "netns", &atk.name, "type", "veth", "peer", "name", TGT_IF,
            "netns", &tgt.name,
        ])?;
        let sh = |n: &Netns, cmd: &str| -> Result<()> {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            n.exec(&args).map(|_| ())
        };
        for (n, ifname, a4, a6) in [(&atk, ATK_IF, ATK4, ATK6), (&tgt, TGT_IF, TGT4, TGT6)] {
            sh(n, &format!("ip addr add {a4}/24 dev {ifname}"))?;
            sh(n, &format!("ip -6 addr add {a6}/64 dev {ifname} nodad"))?;
            sh(n, &format!("ip link set {ifname} up"))?;
        }
        let atk_mac = mac_string(&atk.mac(ATK_IF)?);
        sh(&tgt, "ip route add 10.99.0.0/16 via 10.76.0.2")?;
        sh(&tgt, "ip -6 route add fd00:99::/64 via fd00:76::2")?;
        sh(
            &tgt,
            &format!("ip neigh replace {ATK4} lladdr {atk_mac} dev {TGT_IF} nud permanent"),
        )?;
        sh(
            &tgt,
            &format!("ip -6 neigh replace {ATK6} lladdr {atk_mac} dev {TGT_IF} nud permanent"),
        )?;
        // The kernel baselines keep state per SYN (synproxy) or check
        // their backlog (cookies): room for the flood.
        sh(&tgt, "sysctl -qw net.ipv4.tcp_max_syn_backlog=4096")?;
        sh(&tgt, "sysctl -qw net.core.somaxconn=4096")?;
        let answers = atk.run(|| Attached::counting(ATK_IF))??;
        let lab = FloodLab {
            answers,
            atk,
            tgt,
            dir,
        };
        threaded(&lab.atk, ATK_IF, GEN_CPU, true)?;
        Ok(lab)
    }

    /// Gives the target's veth end its NAPI thread on [`TARGET_CPU`] and
    /// returns its pid(s): the target's whole receive path runs there. veth
    /// has NAPI only while an XDP program is attached: call after
    /// attaching one to [`TGT_IF`].
    pub fn target_napi(&self) -> Result<Vec<i32>> {
        threaded(&self.tgt, TGT_IF, TARGET_CPU, false)
    }

    /// The attacker's interface index: the generator's runs transmit out
    /// of it.
    pub fn atk_ifindex(&self) -> Result<u32> {
        self.atk
            .run(|| nix::net::if_::if_nametoindex(ATK_IF))?
            .context("no attacker interface")
    }
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
