//! Network-namespace labs: a client namespace and a gateway namespace joined
//! by a veth pair, created for one demo or test and deleted on drop (also
//! when the test fails). Names carry the process id and a counter, so
//! parallel tests never collide.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub mod profile;
pub mod transfer;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name stem for this process: `ag<pid>x<n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "ag{}{}{}",
        std::process::id(),
        tag,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name]).context("creating a network namespace (are you root?)")?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let o = self.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
        let text = String::from_utf8_lossy(&o.stdout);
        let v: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("MAC of {ifname}: '{}'", text.trim()))?;
        v.try_into()
            .map_err(|_| anyhow::anyhow!("MAC of {ifname}: '{}'", text.trim()))
    }

    /// Runs `f` on a thread that has entered the namespace, so sockets and
    /// netlink calls it makes live there; the caller's thread is untouched.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into the lab namespace")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

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

pub use crate::netdev::mtu;

/// An AF_PACKET socket seeing every frame on one interface.
pub struct Capture {
    fd: std::os::fd::OwnedFd,
}

impl Capture {
    /// Opens the capture in the calling thread's namespace.
    pub fn open(iface: &str) -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        let idx = nix::net::if_::if_nametoindex(iface)
            .with_context(|| format!("no such interface: {iface}"))?;
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain syscalls; the fd is owned immediately.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = idx as i32;
        use std::os::fd::AsRawFd as _;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("binding AF_PACKET socket");
        }
        Ok(Capture { fd })
    }

    /// Sends one frame out of the interface, as is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: valid buffer of the length passed; the socket is bound.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET send");
        }
        Ok(())
    }

    /// Next frame matching `pred`, or `None` after `timeout`.
    pub fn next_matching(
        &self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if n <= 0 {
                continue;
            }
            // SAFETY: buf is valid for its length.
            let len = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if len > 0 && pred(&buf[..len as usize]) {
                return Some(buf[..len as usize].to_vec());
            }
        }
    }
}

/// What a kernel client saw when connecting to a protected address.
pub struct Handshake {
    /// Time connect() took.
    pub connect_time: Duration,
    /// The SYN-ACK as captured on the client's interface.
    pub synack: crate::packet::Parsed,
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
                    crate::packet::parse(f).is_some_and(|p| {
                        p.flags & 0x12 == 0x12 && p.dport == local && p.sport == target.port()
                    })
                })
                .context("connect() succeeded but no SYN-ACK was captured")?;
            let synack = crate::packet::parse(&frame).expect("matched above");
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
