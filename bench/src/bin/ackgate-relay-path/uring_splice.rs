//! IORING_OP_SPLICE: each direction alternates two splices, its socket into
//! its pipe and the pipe into the other socket. The kernel cannot issue a
//! splice without blocking, so every one runs in an io-wq worker thread (a
//! worker waits in each direction that has nothing to read, holding its
//! pipe's lock), and a short splice breaks a link, so the two cannot be
//! chained in one submission.

use std::{
    io,
    net::TcpStream,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use io_uring::{opcode, squeue, types::Fd, IoUring};

/// Most bytes one splice asks for: a default pipe's capacity.
const BURST: u32 = 64 * 1024;

/// One direction: bytes from `from` through the pipe into `to`.
struct Dir {
    from: RawFd,
    to: RawFd,
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe.
    held: u32,
}

impl Dir {
    fn new(from: &TcpStream, to: &TcpStream) -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two fresh descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Dir {
            from: from.as_raw_fd(),
            to: to.as_raw_fd(),
            r,
            w,
            held: 0,
        })
    }

    /// Socket into the pipe (user data: direction, low bit 0).
    fn fill(&self, d: usize) -> squeue::Entry {
        opcode::Splice::new(Fd(self.from), -1, Fd(self.w.as_raw_fd()), -1, BURST)
            .build()
            .user_data((d << 1) as u64)
    }

    /// The pipe into the other socket (low bit 1).
    fn drain(&self, d: usize) -> squeue::Entry {
        opcode::Splice::new(Fd(self.r.as_raw_fd()), -1, Fd(self.to), -1, self.held)
            .build()
            .user_data((d << 1 | 1) as u64)
    }
}

/// Relays until both directions have seen EOF (each passed on as a write
/// shutdown); the first error ends it.
pub fn relay(client: &TcpStream, backend: &TcpStream) -> anyhow::Result<()> {
    let mut dirs = [Dir::new(client, backend)?, Dir::new(backend, client)?];
    // Declared after the pipes, so dropped before them: a worker waiting
    // in a socket -> pipe splice holds that pipe's lock, and closing the
    // pipe would wait for it forever; closing the ring first cancels it.
    let mut ring = IoUring::new(8)?;
    let sockets = [backend, client];
    for (d, dir) in dirs.iter().enumerate() {
        push(&mut ring, dir.fill(d))?;
    }
    let mut open = 2;
    while open > 0 {
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            let d = (ud >> 1) as usize;
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res).into());
            }
            let dir = &mut dirs[d];
            let next = if ud & 1 == 0 {
                if res == 0 {
                    super::shutdown_write(sockets[d])?;
                    open -= 1;
                    continue;
                }
                dir.held = res as u32;
                dir.drain(d)
            } else {
                dir.held -= res as u32;
                if dir.held > 0 {
                    dir.drain(d)
                } else {
                    dir.fill(d)
                }
            };
            push(&mut ring, next)?;
        }
    }
    Ok(())
}

/// Queues one entry (the ring never holds more than the two directions').
fn push(ring: &mut IoUring, e: squeue::Entry) -> io::Result<()> {
    // SAFETY: a splice names only descriptors, no memory; the kernel holds
    // its own reference to each file while the operation is in flight.
    unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))
}
