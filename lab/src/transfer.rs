//! A bulk-transfer backend and its client, for the client-matrix tests and
//! the per-profile throughput bench: the client's first byte picks the
//! direction, and the receiving side proves the bytes with SHA-256.
//!
//! * `U`, then the payload, then a half-close: the server answers with the
//!   payload's SHA-256 (32 bytes) and closes.
//! * `D` and a big-endian u64 length: the server sends [`pattern`] of that
//!   length and closes.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use sha2::{Digest as _, Sha256};

const UPLOAD: u8 = b'U';
const DOWNLOAD: u8 = b'D';

/// `len` deterministic pseudo-random bytes (xorshift64*), so a lost,
/// duplicated or reordered segment changes the digest.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Serves connections from `l`, each on its own thread, until `stop` is set.
pub fn serve(l: TcpListener, stop: &AtomicBool) {
    l.set_nonblocking(true).expect("nonblocking listener");
    std::thread::scope(|sc| {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    sc.spawn(move || {
                        // A failed transfer shows at the client.
                        let _ = serve_one(s);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

fn serve_one(mut s: TcpStream) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut cmd = [0u8; 1];
    s.read_exact(&mut cmd)?;
    match cmd[0] {
        UPLOAD => {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            s.write_all(&h.finalize())?;
        }
        DOWNLOAD => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            s.write_all(&pattern(u64::from_be_bytes(len) as usize))?;
        }
        c => anyhow::bail!("unknown transfer command {c:#x}"),
    }
    s.shutdown(Shutdown::Write)?;
    Ok(())
}

/// One finished transfer.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// First payload byte sent (upload) or command sent (download) until the
    /// receiver's proof arrived.
    pub elapsed: Duration,
    pub bytes: usize,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Connects to `target` (in the calling thread's namespace) and returns the
/// stream, with `timeout` on every read and write.
pub fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connect to {target}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Uploads `data` on `s` and checks the server's SHA-256 of what it got.
pub fn upload(mut s: TcpStream, data: &[u8]) -> Result<Transfer> {
    let t0 = Instant::now();
    s.write_all(&[UPLOAD])?;
    s.write_all(data).context("uploading")?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .context("reading the upload's digest")?;
    let elapsed = t0.elapsed();
    ensure!(
        got.as_slice() == Sha256::digest(data).as_slice(),
        "the backend's SHA-256 of the {} bytes uploaded differs ({} bytes answered)",
        data.len(),
        got.len()
    );
    Ok(Transfer {
        elapsed,
        bytes: data.len(),
    })
}

/// Downloads `len` bytes on `s` and checks them against [`pattern`].
pub fn download(mut s: TcpStream, len: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut req = vec![DOWNLOAD];
    req.extend_from_slice(&(len as u64).to_be_bytes());
    s.write_all(&req)?;
    let mut h = Sha256::new();
    let mut n = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = s.read(&mut buf).context("downloading")?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k;
    }
    let elapsed = t0.elapsed();
    ensure!(n == len, "downloaded {n} bytes, expected {len}");
    ensure!(
        h.finalize() == Sha256::digest(pattern(len)),
        "downloaded bytes differ from the pattern (SHA-256)"
    );
    Ok(Transfer {
        elapsed,
        bytes: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_and_download_round_trip_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| serve(l, &stop));
            let data = pattern(3 << 20);
            let t = Duration::from_secs(10);
            assert_eq!(
                upload(connect(addr, t).unwrap(), &data).unwrap().bytes,
                3 << 20
            );
            assert_eq!(
                download(connect(addr, t).unwrap(), 1 << 20).unwrap().bytes,
                1 << 20
            );
            stop.store(true, Ordering::Relaxed);
        });
        assert_ne!(pattern(64)[..32], pattern(64)[32..]);
    }
}
