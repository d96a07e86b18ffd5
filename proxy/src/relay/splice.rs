//! Zero-copy relaying: bytes go from one socket into a pipe and from the
//! pipe into the other socket with splice(2), as page references, never
//! copied through userspace (HAProxy's splice mode does the same).
//!
//! A pipe is leased only while a direction has bytes to move and goes back
//! to a bounded pool once empty, so a thousand idle relays hold no pipes;
//! each pipe costs two descriptors (counted in the descriptor limit, see
//! [`crate::sys::rlimit`]) and 64 KiB of pipe pages charged to the user
//! (`fs.pipe-user-pages-soft`). A direction that finds the pool empty, or
//! cannot create a pipe, copies through a buffer instead.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Mutex,
    },
};

/// A pipe: read end, write end (both non-blocking).
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two fresh descriptors nobody else owns.
        Ok(unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// The pool: at most `max` pipes exist at once, idle ones are kept.
pub struct Pipes {
    idle: Mutex<Vec<Pipe>>,
    made: AtomicUsize,
    max: usize,
}

impl Pipes {
    pub fn new(max: usize) -> Self {
        Pipes {
            idle: Mutex::default(),
            made: AtomicUsize::new(0),
            max,
        }
    }

    /// A pipe for one burst, or `None` when all are leased (or a new one
    /// cannot be made: descriptors, pipe pages).
    pub fn lease(&self) -> Option<Lease<'_>> {
        let pipe = match self.idle.lock().unwrap().pop() {
            Some(p) => p,
            None => {
                if self.made.fetch_add(1, Relaxed) >= self.max {
                    self.made.fetch_sub(1, Relaxed);
                    return None;
                }
                match Pipe::new() {
                    Ok(p) => p,
                    Err(_) => {
                        self.made.fetch_sub(1, Relaxed);
                        return None;
                    }
                }
            }
        };
        Some(Lease {
            pool: self,
            pipe: Some(pipe),
            held: 0,
        })
    }

    /// Pipes in existence (leased or idle).
    pub fn made(&self) -> usize {
        self.made.load(Relaxed)
    }
}

/// A leased pipe and how many bytes it holds. Returned to the pool when
/// dropped empty; a pipe still holding bytes (its relay failed) is closed.
pub struct Lease<'a> {
    pool: &'a Pipes,
    pipe: Option<Pipe>,
    held: usize,
}

/// Most bytes one splice asks for: a default pipe's capacity.
const BURST: usize = 64 * 1024;

impl Lease<'_> {
    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a lease holds its pipe until dropped")
    }

    /// Bytes in the pipe, not yet written out.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Moves what `from` has (up to the pipe's room) into the pipe: 0 at
    /// EOF, `WouldBlock` when `from` has nothing.
    pub fn fill(&mut self, from: &impl AsRawFd) -> io::Result<usize> {
        let n = splice(from.as_raw_fd(), self.pipe().w.as_raw_fd(), BURST)?;
        self.held += n;
        Ok(n)
    }

    /// Moves bytes from the pipe into `to`: how many, or `WouldBlock` when
    /// `to`'s send buffer is full.
    pub fn drain(&mut self, to: &impl AsRawFd) -> io::Result<usize> {
        let n = splice(self.pipe().r.as_raw_fd(), to.as_raw_fd(), self.held)?;
        self.held -= n;
        Ok(n)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let pipe = self.pipe.take().expect("dropped once");
        if self.held == 0 {
            self.pool.idle.lock().unwrap().push(pipe);
        } else {
            drop(pipe);
            self.pool.made.fetch_sub(1, Relaxed);
        }
    }
}

/// splice(2) of up to `len` bytes, never blocking on the pipe (the
/// sockets are non-blocking themselves).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice(2) between descriptors; null offsets (neither
    // side is a file with a position).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn moves_bytes_between_sockets_and_reuses_pipes() {
        let pool = Pipes::new(1);
        let (mut src, src_peer) = pair();
        let (dst, mut dst_peer) = pair();
        src_peer.set_nonblocking(true).unwrap();
        src.write_all(b"hello through a pipe").unwrap();
        src.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = 0;
        {
            let mut lease = pool.lease().unwrap();
            assert!(pool.lease().is_none(), "only one pipe may exist");
            loop {
                match lease.fill(&src_peer) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                }
                while lease.held() > 0 {
                    got += lease.drain(&dst).unwrap();
                }
            }
        }
        assert_eq!(got, 20);
        drop(dst);
        let mut out = String::new();
        dst_peer.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello through a pipe");
        assert_eq!(pool.made(), 1);
        assert!(pool.lease().is_some(), "the empty pipe went back");
    }

    #[test]
    fn a_pipe_still_holding_bytes_is_closed_not_pooled() {
        let pool = Pipes::new(2);
        let (mut src, src_peer) = pair();
        src.write_all(b"stranded").unwrap();
        let mut lease = pool.lease().unwrap();
        while lease.held() == 0 {
            match lease.fill(&src_peer) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => assert_eq!(r.unwrap(), 8),
            }
        }
        drop(lease);
        assert_eq!(pool.made(), 0);
        assert!(pool.idle.lock().unwrap().is_empty());
    }
}
