//! What ackgate reads about its interface: MTU (the default MSS clamp) and
//! MAC (the only destination it answers). Read with ioctls on a socket of
//! the calling thread's network namespace; sysfs would show the namespace
//! it was mounted in instead.

use std::{io, os::fd::AsRawFd as _};

fn ifreq(iface: &str, request: libc::Ioctl) -> io::Result<libc::ifreq> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is valid; the name is copied in below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name too long: {iface}"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the
    // request only fills its union.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// MTU of `iface`.
pub fn mtu(iface: &str) -> anyhow::Result<u32> {
    use anyhow::Context as _;
    let req = ifreq(iface, libc::SIOCGIFMTU).with_context(|| format!("reading MTU of {iface}"))?;
    // SAFETY: SIOCGIFMTU filled `ifru_mtu`.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// MAC address of `iface` (all zero for interfaces without one).
pub fn mac(iface: &str) -> io::Result<[u8; 6]> {
    let req = ifreq(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled `ifru_hwaddr`.
    let a = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut m = [0u8; 6];
    for (d, s) in m.iter_mut().zip(a.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(m)
}
