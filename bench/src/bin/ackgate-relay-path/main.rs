//! `ackgate-relay-path`: a bare TCP relay with a choice of data path, so
//! `ackgate-bench relay` can compare ways of moving bytes between two
//! kernel sockets on the same connections. A harness, not a product: one
//! thread per connection, no limits, no metrics, no handoff.
//!
//! `copy` and `splice` run ackgate's own relay (tokio readiness, a buffer
//! or splice(2) through a pipe); `uring-splice` and `uring-recv` are the
//! io_uring candidates, written here so the product keeps only what wins.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use ackgate::relay::{reset, Relay as _, TokioRelay};
use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

mod uring_recv;
mod uring_splice;

/// How bytes move between the two sockets.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Path {
    /// read(2)/write(2) through a userspace buffer (ackgate with
    /// `--splice-pipes 0`).
    Copy,
    /// splice(2) through a pipe, small exchanges copied (ackgate's relay).
    Splice,
    /// IORING_OP_SPLICE socket -> pipe -> socket.
    UringSplice,
    /// Multishot IORING_OP_RECV into a provided buffer ring, IORING_OP_SEND
    /// out of the same buffer.
    UringRecv,
}

#[derive(Parser)]
#[command(
    name = "ackgate-relay-path",
    version,
    about = "A bare TCP relay with a chosen data path, for ackgate-bench relay: accepts on --listen, connects --backend per client, relays both ways (half-close passed on, errors reset both sides) on one thread per connection"
)]
struct Args {
    /// The data path.
    #[arg(long, value_enum)]
    path: Path,
    /// Address to accept clients on.
    #[arg(long)]
    listen: SocketAddr,
    /// Backend each client is relayed to.
    #[arg(long)]
    backend: SocketAddr,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let l = TcpListener::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    for c in l.incoming() {
        let client = match c {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ackgate-relay-path: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let (path, backend) = (a.path, a.backend);
        std::thread::spawn(move || {
            if let Err(e) = serve(path, client, backend) {
                eprintln!("ackgate-relay-path: {e:#}");
            }
        });
    }
    Ok(())
}

/// Connects the backend and relays until both directions have ended.
fn serve(path: Path, client: TcpStream, backend: SocketAddr) -> Result<()> {
    let backend = TcpStream::connect_timeout(&backend, Duration::from_secs(3))
        .with_context(|| format!("connecting {backend}"))?;
    relay(path, client, backend)
}

fn relay(path: Path, client: TcpStream, backend: TcpStream) -> Result<()> {
    client.set_nodelay(true)?;
    backend.set_nodelay(true)?;
    let r = match path {
        Path::Copy | Path::Splice => {
            return tokio_relay(matches!(path, Path::Splice), client, backend);
        }
        Path::UringSplice => uring_splice::relay(&client, &backend),
        Path::UringRecv => uring_recv::relay(&client, &backend),
    };
    if r.is_err() {
        // As ackgate does: a failed relay resets both sides.
        reset(client);
        reset(backend);
    }
    r
}

/// ackgate's relay on a runtime of its own (it resets on failure itself).
fn tokio_relay(splice: bool, client: TcpStream, backend: TcpStream) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        client.set_nonblocking(true)?;
        backend.set_nonblocking(true)?;
        let relay = TokioRelay::new(if splice { 2 } else { 0 });
        let o = relay
            .relay(
                tokio::net::TcpStream::from_std(client)?,
                tokio::net::TcpStream::from_std(backend)?,
                Duration::from_secs(60),
            )
            .await;
        Ok(o.result?)
    })
}

/// The shutdown(2) a direction's EOF becomes on the other socket.
fn shutdown_write(s: &TcpStream) -> std::io::Result<()> {
    s.shutdown(std::net::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// 8 MiB up, echoed back by a backend that waits for the client's FIN
    /// (half-close) before it finishes; then a short exchange.
    fn echo_through(path: Path) {
        let (mut client, relay_client) = pair();
        let (relay_backend, backend) = pair();
        let t = std::thread::spawn(move || relay(path, relay_client, relay_backend));
        let echo = std::thread::spawn(move || {
            let mut b = backend;
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            b.write_all(&got).unwrap();
            b.write_all(b"bye").unwrap();
        });
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        client.write_all(&big).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        echo.join().unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(back.len(), big.len() + 3, "{path:?}");
        assert!(back[..big.len()] == big[..], "{path:?}: bytes intact");
        assert_eq!(&back[big.len()..], b"bye");
    }

    #[test]
    fn every_path_relays_bulk_both_ways_with_half_close() {
        for p in [Path::Copy, Path::Splice, Path::UringSplice, Path::UringRecv] {
            echo_through(p);
        }
    }

    #[test]
    fn a_reset_backend_resets_the_client() {
        for p in [Path::UringSplice, Path::UringRecv] {
            let (mut client, relay_client) = pair();
            let (relay_backend, backend) = pair();
            let t = std::thread::spawn(move || relay(p, relay_client, relay_backend));
            client.write_all(b"hello").unwrap();
            let mut b = backend;
            let mut five = [0u8; 5];
            b.read_exact(&mut five).unwrap();
            reset(b);
            assert!(t.join().unwrap().is_err(), "{p:?}");
            let mut buf = [0u8; 16];
            let e = client.read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{p:?}");
        }
    }
}
