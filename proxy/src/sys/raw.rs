//! Raw IP sockets: whole packets for segments that no socket of ours would
//! send (a handed-off flow's window update, a remembered SYN-ACK again).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use super::sockopt;

/// IPV6_HDRINCL (not in the libc crate for every target).
const IPV6_HDRINCL: i32 = 36;
const TTL: u8 = 64;

/// One raw socket per family, opened once (needs CAP_NET_RAW).
pub struct RawSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl RawSender {
    /// Opens the sockets in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let open = |family| sockopt::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW);
        let v6 = open(libc::AF_INET6)?;
        // IPPROTO_RAW implies header inclusion for IPv4; IPv6 needs asking.
        sockopt::set(&v6, libc::IPPROTO_IPV6, IPV6_HDRINCL, &1i32)?;
        Ok(RawSender {
            v4: open(libc::AF_INET)?,
            v6,
        })
    }

    /// Sends the TCP segment `tcp` (checksum already in place) from `src`
    /// to `dst` in an IP header of our own.
    pub fn send_tcp(&self, src: IpAddr, dst: IpAddr, tcp: &[u8]) -> io::Result<()> {
        let p = ip_packet(src, dst, tcp)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mixed address families"))?;
        let fd = if dst.is_ipv4() { &self.v4 } else { &self.v6 };
        sockopt::send_to(fd, &p, &SocketAddr::new(dst, 0))
    }

    /// The socket that sends packets to `dst` (for senders of their own,
    /// such as an io_uring submission; the destination address is `dst`
    /// with port 0).
    pub fn fd_for(&self, dst: IpAddr) -> BorrowedFd<'_> {
        if dst.is_ipv4() {
            self.v4.as_fd()
        } else {
            self.v6.as_fd()
        }
    }
}

/// `tcp` behind an IPv4 or IPv6 header. IPv4's identification and header
/// checksum are left zero: the kernel fills both for raw sockets.
pub fn ip_packet(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(40 + tcp.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let tot = (20 + tcp.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&tot.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, TTL, libc::IPPROTO_TCP as u8, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[libc::IPPROTO_TCP as u8, TTL]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => return None,
    }
    p.extend_from_slice(tcp);
    Some(p)
}
