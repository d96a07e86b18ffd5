//! Client TCP profiles: the stacks real clients have, applied to a lab's
//! client namespace with sysctls and route metrics (and the link's MTU).
//! Shared by the client-matrix tests and `ackgate-bench clients`.

use anyhow::Result;

use crate::Lab;

/// A client TCP stack.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub timestamps: bool,
    pub window_scaling: bool,
    pub sack: bool,
    /// Route `advmss` in the client namespace.
    pub advmss: Option<u16>,
    /// MTU of the veth pair (both ends: one link).
    pub mtu: u32,
}

const fn linux(name: &'static str) -> Profile {
    Profile {
        name,
        timestamps: true,
        window_scaling: true,
        sack: true,
        advmss: None,
        mtu: 1500,
    }
}

/// Linux defaults; no timestamps (Windows' default); timestamps without
/// window scaling; no SACK; none of the three; an advertised MSS of 536; a
/// 9000-byte MTU link.
pub const PROFILES: [Profile; 7] = [
    linux("linux_default"),
    Profile {
        timestamps: false,
        ..linux("no_timestamps")
    },
    Profile {
        window_scaling: false,
        ..linux("no_window_scaling")
    },
    Profile {
        sack: false,
        ..linux("no_sack")
    },
    Profile {
        timestamps: false,
        window_scaling: false,
        sack: false,
        ..linux("bare")
    },
    Profile {
        advmss: Some(536),
        ..linux("mss_536")
    },
    Profile {
        mtu: 9000,
        ..linux("mtu_9000")
    },
];

/// The profile called `name`.
pub fn named(name: &str) -> Profile {
    *PROFILES
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no client profile {name}"))
}

impl Lab {
    /// Gives the lab's client `p`'s stack: the link's MTU on both ends, the
    /// client namespace's sysctls and route metrics. Before ackgate starts
    /// (it reads the MTU once).
    pub fn shape_client(&self, p: &Profile) -> Result<()> {
        if p.mtu != 1500 {
            let mtu = p.mtu.to_string();
            self.client
                .exec(&["ip", "link", "set", self.client_if, "mtu", &mtu])?;
            self.gw
                .exec(&["ip", "link", "set", self.gw_if, "mtu", &mtu])?;
        }
        for (key, on) in [
            ("net.ipv4.tcp_timestamps", p.timestamps),
            ("net.ipv4.tcp_window_scaling", p.window_scaling),
            ("net.ipv4.tcp_sack", p.sack),
        ] {
            self.client
                .exec(&["sysctl", "-qw", &format!("{key}={}", on as u8)])?;
        }
        if let Some(m) = p.advmss {
            let (m, dev) = (m.to_string(), self.client_if);
            self.client.exec(&[
                "ip",
                "route",
                "replace",
                "198.18.0.0/24",
                "dev",
                dev,
                "advmss",
                &m,
            ])?;
            // Replace the kernel's own prefix route (metric 256), or it
            // keeps winning over a new one.
            self.client.exec(&[
                "ip",
                "-6",
                "route",
                "replace",
                "fd00:ac6a::/64",
                "dev",
                dev,
                "metric",
                "256",
                "proto",
                "kernel",
                "advmss",
                &m,
            ])?;
        }
        Ok(())
    }
}
