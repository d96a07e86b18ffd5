//! The two-namespace lab of the demo and the tests: a client namespace and
//! a gateway namespace joined by one veth pair.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    capture::Capture,
    frame,
    netns::{ip, unique, Netns},
};

/// Client and gateway namespaces joined by one veth pair. The gateway owns
/// the protected addresses (`vip4`, `vip6`) and is where XDP runs.
pub struct Lab {
    pub client: Netns,
    pub gw: Netns,
    pub client_if: &'static str,
    pub gw_if: &'static str,
    pub client4: Ipv4Addr,
    pub vip4: Ipv4Addr,
    pub client6: Ipv6Addr,
    pub vip6: Ipv6Addr,
}

impl Lab {
    /// Builds the lab: namespaces, veth, addresses (RFC 2544 benchmarking
    /// range and a ULA prefix, never routed outside the pair).
    pub fn new() -> Result<Self> {
        let stem = unique("l");
        let client = Netns::new(format!("{stem}-cli"))?;
        let gw = Netns::new(format!("{stem}-gw"))?;
        let lab = Lab {
            client,
            gw,
            client_if: "cli0",
            gw_if: "gw0",
            client4: Ipv4Addr::new(198, 18, 0, 2),
            vip4: Ipv4Addr::new(198, 18, 0, 1),
            client6: "fd00:ac6a::2".parse().unwrap(),
            vip6: "fd00:ac6a::1".parse().unwrap(),
        };
        ip(&[
            "link",
            "add",
            lab.client_if,
            "netns",
            &lab.client.name,
            "type",
            "veth",
            "peer",
            "name",
            lab.gw_if,
            "netns",
            &lab.gw.name,
        ])?;
        for (ns, ifname, a4, a6) in [
            (&lab.client, lab.client_if, lab.client4, lab.client6),
            (&lab.gw, lab.gw_if, lab.vip4, lab.vip6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{a4}/24"), "dev", ifname])?;
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                ifname,
                "nodad",
            ])?;
            ns.exec(&["ip", "link", "set", ifname, "up"])?;
        }
        Ok(lab)
    }
}

impl Lab {
    /// Drops non-SYN TCP to `port` in the gateway's stack. Until a proxy
    /// takes over verified ACKs, the kernel would answer the client's ACK
    /// with a RST (it has no socket), racing the client's connect().
    pub fn drop_acks_at_gateway(&self, port: u16) -> Result<()> {
        let port = port.to_string();
        for tool in ["iptables", "ip6tables"] {
            self.gw.exec(&[
                tool, "-A", "INPUT", "-p", "tcp", "--dport", &port, "!", "--syn", "-j", "DROP",
            ])?;
        }
        Ok(())
    }
}

/// What a kernel client saw when connecting to a protected address.
pub struct Handshake {
    /// Time connect() took.
    pub connect_time: Duration,
    /// The SYN-ACK as captured on the client's interface.
    pub synack: frame::Parsed,
}

impl Lab {
    /// From the client namespace: a kernel `connect()` to `target`, capturing
    /// the SYN-ACK it got. Fails if the connection is refused or times out.
    pub fn connect(&self, target: std::net::SocketAddr, timeout: Duration) -> Result<Handshake> {
        Ok(self.request(target, timeout, None)?.0)
    }

    /// [`Lab::connect`], then (with `request`) sends it, half-closes and
    /// reads the whole response.
    pub fn request(
        &self,
        target: std::net::SocketAddr,
        timeout: Duration,
        request: Option<&[u8]>,
    ) -> Result<(Handshake, Vec<u8>)> {
        use std::io::{Read as _, Write as _};
        let ifname = self.client_if;
        self.client.run(move || -> Result<(Handshake, Vec<u8>)> {
            let cap = Capture::open(ifname)?;
            let t0 = Instant::now();
            let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
                .with_context(|| format!("connect to {target}"))?;
            let connect_time = t0.elapsed();
            let local = stream.local_addr()?.port();
            let frame = cap
                .next_matching(timeout, |f| {
                    frame::parse(f).is_some_and(|p| {
                        p.flags & 0x12 == 0x12 && p.dport == local && p.sport == target.port()
                    })
                })
                .context("connect() succeeded but no SYN-ACK was captured")?;
            let synack = frame::parse(&frame).expect("matched above");
            let mut response = Vec::new();
            if let Some(req) = request {
                stream.set_read_timeout(Some(timeout))?;
                stream.write_all(req)?;
                stream.shutdown(std::net::Shutdown::Write)?;
                stream
                    .read_to_end(&mut response)
                    .with_context(|| format!("reading the response from {target}"))?;
            }
            Ok((
                Handshake {
                    connect_time,
                    synack,
                },
                response,
            ))
        })?
    }
}
