//! Materializing a verified flow as an established kernel socket.
//!
//! XDP answered the handshake statelessly, so the kernel knows nothing of
//! the connection. TCP_REPAIR lets us create the socket it would have had:
//! both sequence numbers, the negotiated options and a timestamp clock that
//! continues from the SYN-ACK's. The SYN-ACK advertised a zero window, so
//! the client has sent no data yet; once the socket exists we send it a
//! window update (a plain ACK, from a raw socket: leaving repair mode only
//! emits a probe with an old sequence number, which the client discards
//! without reading its window). From then on the client's segments find the
//! socket and XDP passes them to the kernel.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use ackgate_common::{
    cookie::TS_OPT_MASK,
    options::NO_WSCALE,
    wire::{Handoff, HF_PROBE, HF_SACK, HF_TIMESTAMPS},
};
use thiserror::Error;

use crate::packet::Segment;

/// A verified flow, decoded from a [`Handoff`] event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub client_isn: u32,
    pub cookie: u32,
    pub mss: u16,
    pub client_wscale: Option<u8>,
    pub sack: bool,
    pub timestamps: bool,
    /// The client's TSval in its ACK, and our SYN-ACK's TSval it echoed.
    pub client_tsval: u32,
    pub synack_tsval: u32,
    /// The client's window field (unscaled).
    pub client_window: u16,
    pub probe: bool,
}

#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("malformed handoff event (family {0})")]
    Event(u8),
    #[error("{step}: {err}")]
    Sys {
        step: &'static str,
        err: std::io::Error,
    },
}

impl HandoffError {
    /// Metric label: `bad_event`; `duplicate` when the flow's socket already
    /// exists (an ACK or probe verified again before the first handoff made
    /// the socket); `socket` for any other failed step.
    pub fn reason(&self) -> &'static str {
        match self {
            HandoffError::Event(_) => "bad_event",
            // Binding succeeds (repair mode forces address reuse); it is the
            // repair-mode connect() that finds the 4-tuple taken.
            HandoffError::Sys { step, err }
                if *step == STEP_CONNECT && err.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                "duplicate"
            }
            HandoffError::Sys { .. } => "socket",
        }
    }
}

type Result<T> = std::result::Result<T, HandoffError>;

const STEP_CONNECT: &str = "connect in repair mode";

fn sys(step: &'static str) -> impl FnOnce(std::io::Error) -> HandoffError {
    move |source| HandoffError::Sys { step, err: source }
}

impl Flow {
    pub fn from_event(e: &Handoff) -> Result<Self> {
        let (client_ip, service_ip): (IpAddr, IpAddr) = match e.family {
            4 => (
                Ipv4Addr::from(e.saddr[0].to_ne_bytes()).into(),
                Ipv4Addr::from(e.daddr[0].to_ne_bytes()).into(),
            ),
            6 => (v6(&e.saddr).into(), v6(&e.daddr).into()),
            f => return Err(HandoffError::Event(f)),
        };
        Ok(Flow {
            client: SocketAddr::new(client_ip, u16::from_be(e.sport_be)),
            service: SocketAddr::new(service_ip, u16::from_be(e.dport_be)),
            client_isn: e.client_isn,
            cookie: e.cookie,
            mss: e.mss,
            client_wscale: (e.wscale != NO_WSCALE).then_some(e.wscale),
            sack: e.flags & HF_SACK != 0,
            timestamps: e.flags & HF_TIMESTAMPS != 0,
            client_tsval: e.tsval,
            synack_tsval: e.tsecr,
            client_window: e.window,
            probe: e.flags & HF_PROBE != 0,
        })
    }
}

fn v6(w: &[u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, x) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

fn setopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T, step: &'static str) -> Result<()> {
    // SAFETY: `v` points to a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r != 0 {
        return Err(sys(step)(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
struct RepairOpt {
    code: u32,
    val: u32,
}

#[repr(C)]
#[derive(Default)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zeroed storage is a valid sockaddr_storage; we fill the family
    // specific struct inside it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v.ip().octets(),
                },
                sin6_scope_id: v.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

/// Sends the window updates: raw sockets that write whole IP packets.
pub struct WindowOpener {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl WindowOpener {
    /// Opens the raw sockets in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let open = |family: i32, step| -> Result<OwnedFd> {
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            if fd < 0 {
                return Err(sys(step)(std::io::Error::last_os_error()));
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let v6 = open(libc::AF_INET6, "raw IPv6 socket (needs CAP_NET_RAW)")?;
        // IPPROTO_RAW implies header inclusion for IPv4; IPv6 needs asking.
        setopt(
            &v6,
            libc::IPPROTO_IPV6,
            36, /* IPV6_HDRINCL */
            &1i32,
            "IPV6_HDRINCL",
        )?;
        Ok(WindowOpener {
            v4: open(libc::AF_INET, "raw IPv4 socket (needs CAP_NET_RAW)")?,
            v6,
        })
    }

    fn send(&self, seg: &Segment) -> Result<()> {
        let frame = seg.build();
        self.send_packet(seg.dst, &frame[14..])
    }

    /// Sends a whole IP packet (header included) to `dst`.
    pub fn send_packet(&self, dst: IpAddr, packet: &[u8]) -> Result<()> {
        let fd = if dst.is_ipv4() { &self.v4 } else { &self.v6 };
        let (ss, len) = sockaddr(&SocketAddr::new(dst, 0));
        // SAFETY: valid buffer and address of the lengths passed.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if r < 0 {
            return Err(sys("sending a raw packet")(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Creates the established socket for `flow` (in the calling thread's
/// network namespace, which must own the service address) and opens the
/// client's window. `our_wscale` is the shift the SYN-ACK advertised.
pub fn materialize(flow: &Flow, our_wscale: u8, opener: &WindowOpener) -> Result<TcpStream> {
    let family = if flow.service.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(sys("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Repair mode also lets many flows bind the same service address and
    // port: the kernel forces address reuse for a repairing socket (setting
    // SO_REUSEADDR afterwards would undo that).
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        &1i32,
        "TCP_REPAIR on",
    )?;
    let (ss, len) = sockaddr(&flow.service);
    // SAFETY: valid address of the length passed.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    } != 0
    {
        return Err(sys("bind to the service address")(
            std::io::Error::last_os_error(),
        ));
    }
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        &TCP_SEND_QUEUE,
        "select send queue",
    )?;
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_QUEUE_SEQ,
        &flow.cookie.wrapping_add(1),
        "send sequence",
    )?;
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        &TCP_RECV_QUEUE,
        "select receive queue",
    )?;
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_QUEUE_SEQ,
        &flow.client_isn.wrapping_add(1),
        "receive sequence",
    )?;
    // The MSS the handshake negotiated, before connect(): repair-mode
    // connect() syncs the socket's MSS cache from the clamp it finds, and
    // without a user MSS that is the 536-byte default (first flights would
    // go out in 524-byte segments until the client's window grows).
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_MAXSEG,
        &(flow.mss as i32),
        "TCP_MAXSEG",
    )?;
    let (cs, clen) = sockaddr(&flow.client);
    // SAFETY: valid address of the length passed. In repair mode connect()
    // sends nothing: the socket becomes established.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&cs as *const libc::sockaddr_storage).cast(),
            clen,
        )
    } != 0
    {
        return Err(sys(STEP_CONNECT)(std::io::Error::last_os_error()));
    }
    let mut opts = vec![RepairOpt {
        code: TCPOPT_MSS,
        val: flow.mss as u32,
    }];
    // Window scaling is always stated, also when it was not negotiated
    // (both shifts 0): repair-mode connect() picked a receive shift of its
    // own, and left in place it would divide every window we advertise
    // while the client reads them unscaled.
    let (snd_wscale, rcv_wscale) = match flow.client_wscale {
        Some(ws) => (ws, our_wscale),
        None => (0, 0),
    };
    opts.push(RepairOpt {
        code: TCPOPT_WINDOW,
        val: snd_wscale as u32 | ((rcv_wscale as u32) << 16),
    });
    if flow.sack {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if flow.timestamps {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    // SAFETY: `opts` is a live array of repr(C) option records.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_OPTIONS,
            opts.as_ptr().cast(),
            (opts.len() * std::mem::size_of::<RepairOpt>()) as u32,
        )
    };
    if r != 0 {
        return Err(sys("TCP_REPAIR_OPTIONS")(std::io::Error::last_os_error()));
    }
    // Our TSval clock continues from the SYN-ACK's, never backwards (PAWS):
    // the SYN-ACK's TSval had its low bits replaced by option bits, so start
    // one option field above it.
    let ts_start = if flow.timestamps {
        let ts = flow.synack_tsval.wrapping_add(TS_OPT_MASK + 1);
        setopt(
            &fd,
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            &ts,
            "TCP_TIMESTAMP",
        )?;
        ts
    } else {
        0
    };
    // Windows: what the client offered, and ours as the kernel chose it.
    let mut w = RepairWindow::default();
    let mut wlen = std::mem::size_of::<RepairWindow>() as u32;
    // SAFETY: `w` is a live RepairWindow and `wlen` its size.
    if unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_WINDOW,
            (&mut w as *mut RepairWindow).cast(),
            &mut wlen,
        )
    } != 0
    {
        return Err(sys("reading TCP_REPAIR_WINDOW")(
            std::io::Error::last_os_error(),
        ));
    }
    let snd_wnd = (flow.client_window as u32) << flow.client_wscale.unwrap_or(0);
    w.snd_wl1 = flow.client_isn.wrapping_add(1);
    w.snd_wnd = snd_wnd;
    w.max_window = w.max_window.max(snd_wnd);
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_WINDOW,
        &w,
        "TCP_REPAIR_WINDOW",
    )?;
    // Leave repair mode without the probe (TCP_REPAIR_OFF_NO_WP = -1): our
    // own window update below says more.
    setopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        &-1i32,
        "TCP_REPAIR off",
    )?;

    let window = (w.rcv_wnd >> rcv_wscale).min(65535) as u16;
    let mut upd = Segment::syn(
        flow.service.ip(),
        flow.service.port(),
        flow.client.ip(),
        flow.client.port(),
        0,
        &[],
    );
    upd.flags = crate::packet::TCP_ACK;
    upd.seq = flow.cookie.wrapping_add(1);
    upd.ack = flow.client_isn.wrapping_add(1);
    upd.window = window;
    if flow.timestamps {
        let (v, e) = (ts_start.to_be_bytes(), flow.client_tsval.to_be_bytes());
        upd.tcp_options = vec![1, 1, 8, 10, v[0], v[1], v[2], v[3], e[0], e[1], e[2], e[3]];
    }
    opener.send(&upd)?;
    Ok(TcpStream::from(fd))
}
