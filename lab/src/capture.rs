//! AF_PACKET capture and injection on one interface.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

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

    /// Hands every frame to `f` (one buffer, reused) until `stop` is set;
    /// checks `stop` at least every 100 ms.
    pub fn each_until(&self, stop: &std::sync::atomic::AtomicBool, mut f: impl FnMut(&[u8])) {
        use std::os::fd::AsRawFd as _;
        let mut buf = vec![0u8; 65536];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            loop {
                // SAFETY: buf is valid for its length.
                let len = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if len <= 0 {
                    break;
                }
                f(&buf[..len as usize]);
            }
        }
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
