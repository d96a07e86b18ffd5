//! Relaying bytes between a client and a backend.
//!
//! [`Relay`] is the seam an io_uring engine will plug into beside the tokio
//! one. Both directions run until each has seen EOF: a FIN from one side is
//! passed on as a write shutdown to the other, which may keep sending
//! (half-close). An idle timeout ends a relay with no traffic either way.
//! A failure on either side (a reset, a refused write) resets both: the
//! client must not mistake a backend that died mid-response for a
//! complete one ending with a FIN.
//!
//! Bulk bytes move by splice(2) through a pooled pipe (zero-copy, see
//! [`super::splice`]); small exchanges, and bursts that find no free pipe,
//! through a buffer. Either is
//! held only while its socket has data to move, so an idle relay costs its
//! two sockets and a task, not 128 KiB.

use std::{future::Future, io, pin::Pin, sync::Arc, time::Duration};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::splice::{Lease, Pipes};
use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    time::{sleep, Instant},
};

/// Bytes moved each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
}

/// How a relay ended: the bytes moved (also when it failed part-way) and
/// the error that ended it, if any.
#[derive(Debug)]
pub struct Outcome {
    pub moved: Moved,
    pub result: io::Result<()>,
}

pub type RelayFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A relay engine.
pub trait Relay: Send + Sync {
    fn relay(&self, client: TcpStream, backend: TcpStream, idle: Duration) -> RelayFuture;
}

/// The tokio engine: readiness from epoll, bytes by splice(2) through
/// pooled pipes (a pool of none copies every byte through userspace).
pub struct TokioRelay {
    pipes: Arc<Pipes>,
}

impl TokioRelay {
    pub fn new(pipes: usize) -> Self {
        TokioRelay {
            pipes: Arc::new(Pipes::new(pipes)),
        }
    }
}

impl Relay for TokioRelay {
    fn relay(&self, client: TcpStream, backend: TcpStream, idle: Duration) -> RelayFuture {
        Box::pin(relay(client, backend, idle, self.pipes.clone()))
    }
}

/// Most bytes one read moves.
const CHUNK: usize = 64 * 1024;
/// The buffer a burst starts with: exchanges that fit are copied.
const SMALL: usize = 16 * 1024;

async fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    pipes: Arc<Pipes>,
) -> Outcome {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    // The two directions run concurrently: a relay that waited on one write
    // while the other side waited on it to read would deadlock once both
    // socket buffers filled (a large echo does exactly that).
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        tokio::try_join!(
            pipe(cr, bw, &pipes, &up, &last, start),
            pipe(br, cw, &pipes, &down, &last, start)
        )
    };
    let result = tokio::select! {
        r = both => r.map(|_| ()),
        _ = watchdog(&last, start, idle) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    };
    Outcome {
        moved: Moved {
            to_backend: up.load(Relaxed),
            to_client: down.load(Relaxed),
        },
        result,
    }
}

/// Moves one direction until EOF, then passes the EOF on as a write
/// shutdown. Adds the bytes written to `moved` as they go (so a relay that
/// fails still reports them) and records activity in `last` (milliseconds
/// since `start`).
async fn pipe(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    pipes: &Pipes,
    moved: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let note = |n: usize| {
        moved.fetch_add(n as u64, Relaxed);
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    };
    let result = async {
        loop {
            // Neither a pipe nor a buffer while there is nothing to read.
            r.readable().await?;
            // Small exchanges are copied (a splice costs them latency);
            // a read that fills the small buffer means bulk: the rest of
            // the burst goes through a pipe, as HAProxy's splice-auto does.
            let burst = match copy_burst(&r, &mut w, &note, SMALL).await? {
                Burst::Full => match pipes.lease() {
                    Some(mut p) => splice_burst(&r, &w, &mut p, &note).await?,
                    None => copy_burst(&r, &mut w, &note, CHUNK).await?,
                },
                b => b,
            };
            if burst == Burst::Eof {
                return w.shutdown().await;
            }
        }
    }
    .await;
    if result.is_err() {
        // Both sockets close with a RST once the other direction is
        // dropped; dropping the write half as usual would first send the
        // FIN a client takes for a complete response.
        set_linger_zero(r.as_ref());
        set_linger_zero(w.as_ref());
        w.forget();
    }
    result
}

/// How a burst of moving bytes ended.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    /// The reader would block: wait for more.
    Drained,
    /// The reader reached EOF.
    Eof,
    /// A read filled the buffer: more is likely waiting (bulk).
    Full,
}

/// Moves what `r` has through the pipe into `w`, until `r` would block
/// or reaches EOF. The pipe is empty on success.
async fn splice_burst(
    r: &OwnedReadHalf,
    w: &OwnedWriteHalf,
    p: &mut Lease<'_>,
    note: &impl Fn(usize),
) -> io::Result<Burst> {
    let (r, w) = (r.as_ref(), w.as_ref());
    loop {
        // try_io clears the read readiness when the socket is drained.
        match r.try_io(Interest::READABLE, || p.fill(r)) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        }
        while p.held() > 0 {
            match w.try_io(Interest::WRITABLE, || p.drain(w)) {
                Ok(n) => note(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => w.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Moves what `r` has through a buffer of `size` bytes into `w`, until
/// `r` would block or reaches EOF; with the small buffer, also stops after
/// a read that fills it.
async fn copy_burst(
    r: &OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    note: &impl Fn(usize),
    size: usize,
) -> io::Result<Burst> {
    let mut buf = vec![0u8; size];
    loop {
        let n = match r.try_read(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n]).await?;
        note(n);
        if size == SMALL && n == size {
            return Ok(Burst::Full);
        }
    }
}

/// Resolves once neither direction has moved a byte for `idle`.
async fn watchdog(last: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let quiet = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Relaxed)));
        if quiet >= idle {
            return;
        }
        sleep(idle - quiet).await;
    }
}

/// Closes `s` with a RST (SO_LINGER 0): the prompt refusal a client gets
/// when no backend takes it or a limit is hit, never a hang.
pub fn reset(s: impl std::os::fd::AsRawFd) {
    set_linger_zero(&s);
    drop(s);
}

/// Makes the socket's close send a RST rather than a FIN.
fn set_linger_zero(s: &impl std::os::fd::AsRawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a live linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A connected loopback pair: (ours, the peer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Relays `up` from a client to an echoing backend and returns what
    /// came back, the relay's outcome and the pipes the pool made.
    async fn echo_through(up: Vec<u8>) -> (Vec<u8>, Outcome, usize) {
        let engine = TokioRelay::new(4);
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let relay = tokio::spawn(engine.relay(proxy_client, proxy_backend, Duration::from_secs(5)));
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = backend.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let (mut cr, mut cw) = client.split();
        let send = async {
            cw.write_all(&up).await.unwrap();
            cw.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, n) = tokio::join!(send, cr.read_to_end(&mut got));
        n.unwrap();
        echo.await.unwrap();
        let o = relay.await.unwrap();
        (got, o, engine.pipes.made())
    }

    #[tokio::test]
    async fn bulk_goes_through_pipes_and_small_exchanges_are_copied() {
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let (got, o, pipes) = echo_through(big.clone()).await;
        assert!(got == big, "8 MiB echoed intact");
        o.result.unwrap();
        assert_eq!(o.moved.to_backend, big.len() as u64);
        assert_eq!(o.moved.to_client, big.len() as u64);
        assert!(pipes >= 1, "bulk took a pipe");

        let (got, o, pipes) = echo_through(b"GET / HTTP/1.0\r\n\r\n".to_vec()).await;
        assert_eq!(got, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(o.moved.to_client, 18);
        assert_eq!(pipes, 0, "a small exchange is copied");
    }
}
