//! Relaying bytes between a client and a backend.
//!
//! [`Relay`] is the seam an io_uring engine will plug into beside the tokio
//! one. Both directions run until each has seen EOF: a FIN from one side is
//! passed on as a write shutdown to the other, which may keep sending
//! (half-close). An idle timeout ends a relay with no traffic either way.

use std::{future::Future, io, net::TcpStream as StdStream, pin::Pin, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{sleep_until, Instant},
};

/// Bytes moved each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
}

pub type RelayFuture = Pin<Box<dyn Future<Output = io::Result<Moved>> + Send>>;

/// A relay engine.
pub trait Relay: Send + Sync {
    fn relay(&self, client: StdStream, backend: TcpStream, idle: Duration) -> RelayFuture;
}

/// The tokio engine.
pub struct TokioRelay;

impl Relay for TokioRelay {
    fn relay(&self, client: StdStream, backend: TcpStream, idle: Duration) -> RelayFuture {
        Box::pin(async move {
            client.set_nonblocking(true)?;
            relay(TcpStream::from_std(client)?, backend, idle).await
        })
    }
}

async fn relay(client: TcpStream, backend: TcpStream, idle: Duration) -> io::Result<Moved> {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = backend.into_split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let (mut client_open, mut backend_open) = (true, true);
    let mut moved = Moved::default();
    let mut deadline = Instant::now() + idle;
    while client_open || backend_open {
        tokio::select! {
            r = cr.read(&mut up), if client_open => match r? {
                0 => {
                    client_open = false;
                    bw.shutdown().await?;
                }
                n => {
                    bw.write_all(&up[..n]).await?;
                    moved.to_backend += n as u64;
                    deadline = Instant::now() + idle;
                }
            },
            r = br.read(&mut down), if backend_open => match r? {
                0 => {
                    backend_open = false;
                    cw.shutdown().await?;
                }
                n => {
                    cw.write_all(&down[..n]).await?;
                    moved.to_client += n as u64;
                    deadline = Instant::now() + idle;
                }
            },
            _ = sleep_until(deadline) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
    Ok(moved)
}

/// Closes `s` with a RST (SO_LINGER 0): the prompt refusal a client gets
/// when no backend takes it or a limit is hit, never a hang.
pub fn reset(s: StdStream) {
    use std::os::fd::AsRawFd as _;
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
    drop(s);
}
