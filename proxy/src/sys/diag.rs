//! Ending a TIME_WAIT socket that holds a verified flow's 4-tuple, through
//! the kernel's socket diagnostics (NETLINK_SOCK_DIAG, as `ss -K` does).
//!
//! When ackgate's side of a connection closes first, its socket lingers in
//! TIME_WAIT for 60 s. A client that opens a new connection from the same
//! port (busy clients and NATs reuse ports within seconds) sends a SYN the
//! kernel would take over the TIME_WAIT socket for (RFC 6191), but XDP
//! answers that SYN, and the handoff's repair-mode connect() then finds the
//! 4-tuple taken: the kernel only lets connect() reuse a TIME_WAIT tuple a
//! second after its last timestamp, and never without timestamps. So the
//! handoff does what the kernel does for a SYN: it ends that TIME_WAIT
//! socket, found by its exact 4-tuple and state and destroyed by its cookie,
//! so a live connection with the same tuple (a duplicate event) is never
//! touched.

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use super::sockopt;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const TCP_TIME_WAIT: u8 = 6;
/// Header (16 bytes) and `inet_diag_req_v2` (56).
const REQUEST_LEN: usize = 72;
/// Offsets in a reply: `inet_diag_msg` after the header.
const REPLY_STATE: usize = 17;
const REPLY_COOKIE: std::ops::Range<usize> = 60..68;

/// Ends the TIME_WAIT socket of `local` (the service) and `remote` (the
/// client), if there is one: `Ok(true)` when one was ended.
pub fn end_time_wait(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let fd = sockopt::socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_SOCK_DIAG)?;
    let find = request(SOCK_DIAG_BY_FAMILY, local, remote, [0xff; 8]);
    let reply = exchange(&fd, &find)?;
    let ty = u16::from_ne_bytes([reply[4], reply[5]]);
    if ty == NLMSG_ERROR {
        return match errno(&reply) {
            libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if reply.len() < REPLY_COOKIE.end || reply[REPLY_STATE] != TCP_TIME_WAIT {
        return Ok(false);
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&reply[REPLY_COOKIE]);
    let reply = exchange(&fd, &request(SOCK_DESTROY, local, remote, cookie))?;
    match errno(&reply) {
        0 => Ok(true),
        // Gone meanwhile (expired): the tuple is free either way.
        libc::ENOENT => Ok(true),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// A request for the socket of exactly this 4-tuple (and `cookie`, all ones
/// for any).
fn request(ty: u16, local: SocketAddr, remote: SocketAddr, cookie: [u8; 8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_LEN);
    m.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST as u16
        | if ty == SOCK_DESTROY {
            libc::NLM_F_ACK as u16
        } else {
            0
        };
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.push(sockopt::family(&local) as u8);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // no extensions
    m.push(0);
    m.extend_from_slice(&(1u32 << TCP_TIME_WAIT).to_ne_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&address(local));
    m.extend_from_slice(&address(remote));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&cookie);
    m
}

/// An address as `inet_diag_sockid` holds it: 16 bytes, IPv4 in the first 4.
fn address(a: SocketAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        SocketAddr::V4(v4) => b[..4].copy_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => b.copy_from_slice(&v6.ip().octets()),
    }
    b
}

/// Sends `msg` to the kernel and returns its first reply message.
fn exchange(fd: &std::os::fd::OwnedFd, msg: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: `msg` is a live buffer of `msg.len()` bytes; a null address
    // with a netlink socket sends to the kernel.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if buf.len() < 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short sock_diag reply",
        ));
    }
    Ok(buf)
}

/// The (positive) errno of an NLMSG_ERROR reply; 0 for an acknowledgement.
fn errno(reply: &[u8]) -> i32 {
    let ty = u16::from_ne_bytes([reply[4], reply[5]]);
    if ty != NLMSG_ERROR {
        return 0;
    }
    -i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_the_tuple_in_network_order() {
        let local: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let remote: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let m = request(SOCK_DESTROY, local, remote, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(m.len(), REQUEST_LEN);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 72);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(&m[24..26], &8080u16.to_be_bytes());
        assert_eq!(&m[26..28], &40000u16.to_be_bytes());
        assert_eq!(&m[28..32], &[192, 0, 2, 1]);
        assert_eq!(&m[44..48], &[198, 51, 100, 7]);
        assert_eq!(&m[64..72], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn no_time_wait_socket_is_nothing_to_end() {
        // Loopback in this namespace: a tuple nobody uses.
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(!end_time_wait(local, remote).unwrap());
    }
}
