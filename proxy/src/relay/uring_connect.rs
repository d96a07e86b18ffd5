//! Backend connects through an engine thread's io_uring ring (the io_uring
//! engine): the connect, bounded by a linked timeout, and the PROXY header
//! linked after it, submitted without waiting; completions reach the
//! thread's tokio runtime through an eventfd the ring signals.
//!
//! Each engine thread owns one [`Connector`] (thread-local, so a relay's
//! future, which tokio may move, holds only a receiver). A connect whose
//! waiter went away (a drained relay) still completes within its timeout;
//! its socket is closed then.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    rc::Rc,
    time::Duration,
};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::{io::unix::AsyncFd, sync::oneshot};

use crate::sys::sockopt;

/// Connects in flight per thread before a submission waits for room.
const ENTRIES: u32 = 256;
/// user_data: the connect's id in the high bits, the operation in the low 2.
const OP_CONNECT: u64 = 0;
const OP_TIMEOUT: u64 = 1;
const OP_HEADER: u64 = 2;

thread_local! {
    static CONNECTOR: RefCell<Option<Rc<Connector>>> = const { RefCell::new(None) };
}

/// What a connect came to: `None` when its timeout expired first.
pub type Outcome = Option<Connected>;

/// A connected backend socket, and how its PROXY header fared (an error
/// leaves the socket connected).
pub struct Connected {
    pub stream: io::Result<std::net::TcpStream>,
    pub header: io::Result<()>,
}

/// One thread's ring for backend connects.
pub struct Connector {
    ring: RefCell<IoUring>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next: Cell<u64>,
    ready: AsyncFd<OwnedFd>,
}

/// A connect in flight: what the kernel reads until it completes, and the
/// completions seen so far.
struct Waiting {
    socket: Option<OwnedFd>,
    _addr: Box<(libc::sockaddr_storage, u32)>,
    _timeout: Box<types::Timespec>,
    header: Vec<u8>,
    connect: Option<i32>,
    timeout: Option<i32>,
    sent: Option<i32>,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl Waiting {
    fn done(&self) -> bool {
        self.connect.is_some()
            && self.timeout.is_some()
            && (self.header.is_empty() || self.sent.is_some())
    }

    fn outcome(&mut self) -> Outcome {
        match self.connect? {
            0 => {}
            // Cancelled by its timeout.
            e if -e == libc::ECANCELED => return None,
            e => {
                return Some(Connected {
                    stream: Err(io::Error::from_raw_os_error(-e)),
                    header: Ok(()),
                })
            }
        }
        let header = match self.sent {
            _ if self.header.is_empty() => Ok(()),
            Some(n) if n as usize == self.header.len() => Ok(()),
            Some(n) if n < 0 => Err(io::Error::from_raw_os_error(-n)),
            _ => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "PROXY header sent in part",
            )),
        };
        let socket = self.socket.take()?;
        Some(Connected {
            stream: Ok(std::net::TcpStream::from(socket)),
            header,
        })
    }
}

impl Connector {
    /// Makes this thread's connector (in its tokio runtime) and installs
    /// it for [`connect`].
    pub fn install() -> io::Result<()> {
        let ring = IoUring::new(ENTRIES)?;
        // SAFETY: plain eventfd(2).
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let c = Rc::new(Connector {
            ring: RefCell::new(ring),
            waiting: RefCell::default(),
            next: Cell::new(1),
            // SAFETY: the AsyncFd owns the eventfd, which stays open for as
            // long as it is registered.
            ready: unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
        });
        tokio::task::spawn_local(c.clone().drive());
        CONNECTOR.with(|slot| *slot.borrow_mut() = Some(c));
        Ok(())
    }

    /// Reaps completions whenever the ring signals.
    async fn drive(self: Rc<Self>) {
        loop {
            let Ok(mut g) = self.ready.readable().await else {
                tracing::error!("backend connect ring: eventfd unusable");
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a live 8-byte buffer.
            let _ = unsafe {
                libc::read(
                    self.ready.get_ref().as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    count.len(),
                )
            };
            g.clear_ready();
            self.reap();
        }
    }

    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut waiting = self.waiting.borrow_mut();
        for cqe in ring.completion() {
            let (id, op) = (cqe.user_data() >> 2, cqe.user_data() & 3);
            let Some(w) = waiting.get_mut(&id) else {
                continue;
            };
            match op {
                OP_CONNECT => w.connect = Some(cqe.result()),
                OP_TIMEOUT => w.timeout = Some(cqe.result()),
                _ => w.sent = Some(cqe.result()),
            }
            if w.done() {
                let mut w = waiting.remove(&id).expect("present");
                let outcome = w.outcome();
                if let Some(tx) = w.tx.take() {
                    let _ = tx.send(outcome);
                }
            }
        }
    }

    /// Submits a connect to `addr` (then `header`, if any), bounded by
    /// `timeout`.
    fn submit(
        &self,
        addr: SocketAddr,
        header: Vec<u8>,
        timeout: Duration,
    ) -> io::Result<oneshot::Receiver<Outcome>> {
        let socket = sockopt::socket(
            sockopt::family(&addr),
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
            0,
        )?;
        let fd = types::Fd(socket.as_raw_fd());
        let sa = Box::new(sockopt::sockaddr(&addr));
        let ts = Box::new(
            types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos()),
        );
        let id = self.next.get();
        self.next.set(id + 1);
        let ud = |op| (id << 2) | op;
        let mut entries = vec![
            opcode::Connect::new(fd, (&sa.0 as *const libc::sockaddr_storage).cast(), sa.1)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(ud(OP_CONNECT)),
            opcode::LinkTimeout::new(&*ts)
                .build()
                .user_data(ud(OP_TIMEOUT)),
        ];
        if !header.is_empty() {
            entries[1] = entries[1].clone().flags(squeue::Flags::IO_LINK);
            entries.push(
                opcode::Send::new(fd, header.as_ptr(), header.len() as u32)
                    .build()
                    .user_data(ud(OP_HEADER)),
            );
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(
            id,
            Waiting {
                socket: Some(socket),
                _addr: sa,
                _timeout: ts,
                header,
                connect: None,
                timeout: None,
                sent: None,
                tx: Some(tx),
            },
        );
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every buffer the entries point to (the address, the
        // timespec, the header) is owned by the `Waiting` entry, which
        // stays until all of its completions have arrived.
        while unsafe { ring.submission().push_multiple(&entries) }.is_err() {
            ring.submit()?;
        }
        ring.submit()?;
        Ok(rx)
    }
}

/// Whether this thread has a connector (the io_uring engine's threads).
pub fn available() -> bool {
    CONNECTOR.with(|c| c.borrow().is_some())
}

/// Connects to `addr` through this thread's ring and sends `header`;
/// `None` if the connect timed out. Call only where [`available`].
pub async fn connect(addr: SocketAddr, header: Vec<u8>, timeout: Duration) -> io::Result<Outcome> {
    let rx = CONNECTOR.with(|c| match &*c.borrow() {
        Some(c) => c.submit(addr, header, timeout),
        None => Err(io::Error::other("no backend connect ring on this thread")),
    })?;
    rx.await
        .map_err(|_| io::Error::other("backend connect ring stopped"))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// Runs `f` on a current-thread runtime with this thread's connector.
    fn on_ring<F: std::future::Future>(f: impl FnOnce() -> F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            Connector::install().unwrap();
            assert!(available());
            f().await
        })
    }

    #[test]
    fn connects_and_sends_the_header_first() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = on_ring(|| async move {
            let c = connect(
                addr,
                b"PROXY TCP4 hello\r\n".to_vec(),
                Duration::from_secs(2),
            )
            .await
            .unwrap()
            .expect("not timed out");
            c.header.unwrap();
            let _s = tokio::net::TcpStream::from_std(c.stream.unwrap()).unwrap();
            let (mut a, _) = l.accept().unwrap();
            let mut b = [0u8; 18];
            a.read_exact(&mut b).unwrap();
            b
        });
        assert_eq!(&got, b"PROXY TCP4 hello\r\n");
    }

    #[test]
    fn a_refused_connect_is_its_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = on_ring(|| async move {
            connect(addr, b"header".to_vec(), Duration::from_secs(2))
                .await
                .unwrap()
                .expect("not timed out")
        });
        let e = c.stream.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    }

    #[test]
    fn a_silent_backend_times_out() {
        // A listener whose accept queue is full drops further SYNs.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // SAFETY: listen(2) on our own socket, to shrink its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let held: Vec<_> = (0..4)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect();
        assert!(!held.is_empty());
        let t = std::time::Instant::now();
        let c = on_ring(|| async move {
            connect(addr, Vec::new(), Duration::from_millis(300))
                .await
                .unwrap()
        });
        assert!(c.is_none(), "timed out");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
