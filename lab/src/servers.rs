//! Servers the labs put behind ackgate: an echo server and a tiny HTTP
//! server, each serving until a flag is set.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Sets the flag when dropped, also while unwinding from a failed assertion,
/// so a server thread watching it ends and its scope can return the failure.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// std's backlog of 128 overflows when hundreds of clients arrive at once,
/// and a dropped backend SYN outlasts the proxy's connect timeout.
fn deep_backlog(l: &TcpListener) {
    // SAFETY: listen(2) again on a listening socket only resizes its backlog.
    let r = unsafe { libc::listen(l.as_raw_fd(), 4096) };
    assert_eq!(r, 0, "resizing the listen backlog");
}

/// Accepts until `stop`, handing each connection to `serve` on its own
/// scoped thread. The listener is waited on with poll(2), so a connection
/// is taken the moment it arrives (a benchmark measures the target, not a
/// sleeping backend) and `stop` is seen within [`STOP_CHECK_MS`].
fn accept_until(l: TcpListener, stop: &AtomicBool, serve: impl Fn(std::net::TcpStream) + Sync) {
    deep_backlog(&l);
    l.set_nonblocking(true).expect("non-blocking listener");
    std::thread::scope(|sc| {
        while !stop.load(Relaxed) {
            let mut pfd = libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, STOP_CHECK_MS) };
            match l.accept() {
                Ok((s, _)) => {
                    let serve = &serve;
                    sc.spawn(move || {
                        let _ = s.set_nonblocking(false);
                        serve(s)
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Out of descriptors and the like: poll would not wait.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

/// How often an idle server looks at its stop flag.
const STOP_CHECK_MS: i32 = 50;

/// Echo: every connection echoes until EOF, then half-closes, until `stop`.
pub fn echo(l: TcpListener, stop: &AtomicBool) {
    echo_tagged(l, stop, &AtomicU64::new(0), None);
}

/// [`echo`], counting the connections in `accepted` and, with a `tag`,
/// first sending that byte: a test with several backends sees which one
/// served it, and how many connections each received.
pub fn echo_tagged(l: TcpListener, stop: &AtomicBool, accepted: &AtomicU64, tag: Option<u8>) {
    accept_until(l, stop, |mut s| {
        accepted.fetch_add(1, Relaxed);
        if let Some(t) = tag {
            if s.write_all(&[t]).is_err() {
                return;
            }
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
}

/// HTTP: answers every request with a 200 carrying `body`, counting the
/// connections in `accepted`, until `stop`.
pub fn http(l: TcpListener, stop: &AtomicBool, accepted: &AtomicU64, body: &str) {
    accept_until(l, stop, |mut s| {
        accepted.fetch_add(1, Relaxed);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
}
