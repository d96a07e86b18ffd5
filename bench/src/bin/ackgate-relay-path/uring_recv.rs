//! Multishot IORING_OP_RECV into a provided buffer ring: one receive per
//! direction stays armed and completes once per burst, in a buffer the
//! kernel took from the ring; the bytes leave with an IORING_OP_SEND from
//! that buffer, which goes back to the ring once sent. Bytes are copied in
//! and out as with read/write, but with no readiness round trip and no
//! submission per read.

use std::{
    alloc::{self, Layout},
    collections::VecDeque,
    io,
    net::TcpStream,
    os::fd::{AsRawFd as _, RawFd},
    sync::atomic::{AtomicU16, Ordering},
};

use anyhow::Result;
use io_uring::{cqueue, opcode, squeue, types::BufRingEntry, types::Fd, IoUring};

/// Buffers in the ring (a power of two) and the size of each.
const BUFS: u16 = 64;
const BUF: usize = 64 * 1024;
/// The ring's buffer group.
const GROUP: u16 = 0;

/// User data: direction in bit 0, the operation above it.
const RECV: u64 = 0;
const SEND: u64 = 2;
const SHUT: u64 = 4;

/// The provided buffers and the ring that hands them to the kernel.
struct Buffers {
    entries: *mut BufRingEntry,
    layout: Layout,
    mem: Vec<u8>,
    tail: u16,
}

impl Buffers {
    /// Registers a ring of [`BUFS`] buffers with `ring` and provides all.
    fn new(ring: &IoUring) -> io::Result<Self> {
        let layout = Layout::from_size_align(usize::from(BUFS) * size_of::<BufRingEntry>(), 4096)
            .expect("a valid layout");
        // SAFETY: a non-zero size; the zeroed memory is a valid empty ring.
        let entries = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            alloc::handle_alloc_error(layout);
        }
        let mut b = Buffers {
            entries,
            layout,
            mem: vec![0; usize::from(BUFS) * BUF],
            tail: 0,
        };
        // SAFETY: a page-aligned ring of BUFS entries; `relay` unregisters
        // it before `b` frees it.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, BUFS, GROUP, 0)?
        };
        for bid in 0..BUFS {
            b.provide(bid);
        }
        Ok(b)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let addr = self.mem[usize::from(bid) * BUF..].as_ptr() as u64;
        // SAFETY: the slot index is masked into the ring; the kernel reads a
        // slot only once the tail below has passed it.
        unsafe {
            let e = &mut *self.entries.add(usize::from(self.tail & (BUFS - 1)));
            e.set_addr(addr);
            e.set_len(BUF as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the first entry's reserved field, a u16 the
        // kernel reads concurrently; the release store publishes the slot.
        unsafe {
            let tail = BufRingEntry::tail(self.entries)
                .cast_mut()
                .cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, bid: u16) -> *const u8 {
        self.mem[usize::from(bid) * BUF..].as_ptr()
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; no longer registered
        // (or never was).
        unsafe { alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

/// One direction: what was received and is waiting to be sent.
struct Dir {
    from: RawFd,
    to: RawFd,
    /// (buffer, bytes sent, bytes received), oldest first.
    queue: VecDeque<(u16, u32, u32)>,
    /// A send is in flight (one at a time keeps the stream in order).
    sending: bool,
    /// The multishot receive is armed.
    armed: bool,
    eof: bool,
    /// The write shutdown was submitted, and has completed.
    shutting: bool,
    shut: bool,
}

impl Dir {
    fn new(from: &TcpStream, to: &TcpStream) -> Self {
        Dir {
            from: from.as_raw_fd(),
            to: to.as_raw_fd(),
            queue: VecDeque::new(),
            sending: false,
            armed: false,
            eof: false,
            shutting: false,
            shut: false,
        }
    }
}

/// Relays until both directions have seen EOF (each passed on as a write
/// shutdown); the first error ends it.
pub fn relay(client: &TcpStream, backend: &TcpStream) -> Result<()> {
    let mut ring = IoUring::new(16)?;
    let mut bufs = Buffers::new(&ring)?;
    let mut dirs = [Dir::new(client, backend), Dir::new(backend, client)];
    let r = run(&mut ring, &mut bufs, &mut dirs);
    if r.is_err() {
        // The buffers must outlive every receive and send that names them:
        // cancel what is in flight and wait for it before they go.
        // SAFETY: as in `push`.
        let cancel = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        let _ = unsafe { ring.submission().push(&cancel) };
        let _ = ring.submit();
        while in_flight(&dirs) > 0 {
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            for c in ring.completion() {
                settle(&mut dirs, c.user_data(), c.flags());
            }
        }
    }
    // Nothing in flight names a buffer any more.
    let _ = ring.submitter().unregister_buf_ring(GROUP);
    drop(bufs);
    r
}

/// Operations still in flight after an error.
fn in_flight(dirs: &[Dir; 2]) -> usize {
    dirs.iter()
        .map(|d| usize::from(d.armed) + usize::from(d.sending))
        .sum()
}

/// Marks what a completion ended, when draining after an error.
fn settle(dirs: &mut [Dir; 2], ud: u64, flags: u32) {
    if ud == u64::MAX {
        return;
    }
    let d = &mut dirs[(ud & 1) as usize];
    match ud & !1 {
        RECV if !cqueue::more(flags) => d.armed = false,
        SEND => d.sending = false,
        _ => {}
    }
}

fn run(ring: &mut IoUring, bufs: &mut Buffers, dirs: &mut [Dir; 2]) -> Result<()> {
    for (i, d) in dirs.iter_mut().enumerate() {
        arm(ring, d, i)?;
    }
    while !dirs.iter().all(|d| d.shut) {
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32, u32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            let i = (ud & 1) as usize;
            let d = &mut dirs[i];
            match ud & !1 {
                RECV => {
                    if !cqueue::more(flags) {
                        d.armed = false;
                    }
                    if res == -libc::ENOBUFS {
                        // Every buffer waits to be sent: re-armed when one
                        // comes back.
                        continue;
                    }
                    if res < 0 {
                        return Err(io::Error::from_raw_os_error(-res).into());
                    }
                    if res == 0 {
                        d.eof = true;
                    } else {
                        let bid = cqueue::buffer_select(flags)
                            .ok_or_else(|| io::Error::other("a receive without a buffer"))?;
                        d.queue.push_back((bid, 0, res as u32));
                        if !d.armed {
                            arm(ring, d, i)?;
                        }
                    }
                }
                SEND => {
                    d.sending = false;
                    if res < 0 {
                        return Err(io::Error::from_raw_os_error(-res).into());
                    }
                    let head = d.queue.front_mut().expect("a send has its buffer");
                    head.1 += res as u32;
                    if head.1 == head.2 {
                        let bid = head.0;
                        d.queue.pop_front();
                        bufs.provide(bid);
                        // A receive that ran out of buffers goes on.
                        for (j, other) in dirs.iter_mut().enumerate() {
                            if !other.armed && !other.eof {
                                arm(ring, other, j)?;
                            }
                        }
                    }
                }
                SHUT => {
                    if res < 0 {
                        return Err(io::Error::from_raw_os_error(-res).into());
                    }
                    d.shut = true;
                    continue;
                }
                _ => unreachable!("user data {ud}"),
            }
            let d = &mut dirs[i];
            if !d.sending {
                if let Some(&(bid, sent, len)) = d.queue.front() {
                    // SAFETY: as in `push`; the buffer stays out of the
                    // ring until this send completes.
                    let e = opcode::Send::new(
                        Fd(d.to),
                        unsafe { bufs.bytes(bid).add(sent as usize) },
                        len - sent,
                    )
                    .build()
                    .user_data(SEND | i as u64);
                    push(ring, e)?;
                    d.sending = true;
                } else if d.eof && !d.shutting {
                    push(
                        ring,
                        opcode::Shutdown::new(Fd(d.to), libc::SHUT_WR)
                            .build()
                            .user_data(SHUT | i as u64),
                    )?;
                    d.shutting = true;
                }
            }
        }
    }
    Ok(())
}

/// Arms direction `i`'s multishot receive.
fn arm(ring: &mut IoUring, d: &mut Dir, i: usize) -> io::Result<()> {
    push(
        ring,
        opcode::RecvMulti::new(Fd(d.from), GROUP)
            .build()
            .user_data(RECV | i as u64),
    )?;
    d.armed = true;
    Ok(())
}

/// Queues one entry.
fn push(ring: &mut IoUring, e: squeue::Entry) -> io::Result<()> {
    // SAFETY: every buffer an entry names is in `Buffers`, which is freed
    // only after no operation is in flight (see `relay`).
    unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))
}
