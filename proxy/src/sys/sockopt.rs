//! Socket calls the handoff makes that std does not offer: options by
//! value, and addresses as the kernel reads them.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// socket(2), owned at once (close-on-exec).
pub fn socket(family: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The address family of `a`.
pub fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// setsockopt(2) with a plain value; arrays of `repr(C)` records go
/// through [`set_slice`].
pub fn set<T: Copy>(fd: &OwnedFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    set_slice(fd, level, name, std::slice::from_ref(v))
}

/// setsockopt(2) with an array of plain values.
pub fn set_slice<T: Copy>(fd: &OwnedFd, level: i32, name: i32, v: &[T]) -> io::Result<()> {
    // SAFETY: `v` is a live slice of `size_of_val(v)` bytes.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v.as_ptr().cast(),
            std::mem::size_of_val(v) as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// getsockopt(2) into a plain value.
pub fn get<T: Copy>(fd: &OwnedFd, level: i32, name: i32, mut v: T) -> io::Result<T> {
    let mut len = std::mem::size_of::<T>() as u32;
    // SAFETY: `v` is a live `T` and `len` its size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// bind(2).
pub fn bind(fd: &OwnedFd, a: &SocketAddr) -> io::Result<()> {
    // SAFETY: a valid descriptor and address of the length passed.
    with_sockaddr(a, |sa, len| unsafe { libc::bind(fd.as_raw_fd(), sa, len) })
}

/// connect(2), blocking (for repair mode, where it sends nothing).
pub fn connect(fd: &OwnedFd, a: &SocketAddr) -> io::Result<()> {
    // SAFETY: a valid descriptor and address of the length passed.
    with_sockaddr(a, |sa, len| unsafe {
        libc::connect(fd.as_raw_fd(), sa, len)
    })
}

/// Calls `f` with `a` as the kernel reads it; a non-zero return is the
/// error in errno.
fn with_sockaddr(
    a: &SocketAddr,
    f: impl FnOnce(*const libc::sockaddr, u32) -> i32,
) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    if f((&ss as *const libc::sockaddr_storage).cast(), len) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// sendto(2) of one datagram or raw packet.
pub fn send_to(fd: &OwnedFd, buf: &[u8], a: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: a valid buffer and address of the lengths passed.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `a` as a `sockaddr_in`/`sockaddr_in6` inside a `sockaddr_storage`, and
/// the length the kernel reads.
pub fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<u8>();
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
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { p.cast::<libc::sockaddr_in>().write(sin) };
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
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { p.cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}
