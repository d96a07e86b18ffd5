//! The soak's clients: what each profile does on its connection, what it
//! counted, and the threads that cycle through the profiles.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use super::{CLEAN, RESET, RESET_PORT};
use crate::lab::{self, BenchLab};

/// Size of nginx's `/bulk`, the download profiles' file.
pub(super) const BULK: u64 = 256 << 10;
/// How much of `/bulk` an aborted download reads before its reset.
const ABORT_AFTER: usize = 64 << 10;
/// Requests a keep-alive connection makes, and its pause between them.
const KEEPALIVE_REQUESTS: usize = 10;
const KEEPALIVE_PAUSE: Duration = Duration::from_millis(100);
/// How long an `idle` client waits before its request (well under the
/// idle timeout).
const IDLE: Duration = Duration::from_millis(1500);
/// Connect and read timeout of every client: a flood's dropped SYN costs a
/// retransmission (1 s, then 2 s), not a failure.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one response's headers, for the byte accounting of the
/// connections whose exact count the client cannot know.
const HEADERS_MAX: u64 = 1024;
/// What one client connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Profile {
    /// HTTP/1.0 `GET /`, read to the server's close.
    Short,
    /// HTTP/1.1, [`KEEPALIVE_REQUESTS`] requests on one connection, then
    /// the client closes.
    KeepAlive,
    /// HTTP/1.0 `GET /bulk` ([`BULK`] bytes), read to the end.
    Download,
    /// Connect, say nothing for [`IDLE`], then a short request.
    Idle,
    /// Connect, wait, close without a byte either way.
    IdleClose,
    /// The request, then `shutdown(SHUT_WR)`, then the response.
    HalfClose,
    /// One keep-alive request, then silence until ackgate's idle timeout
    /// closes the connection (nginx would wait 60 s).
    IdleTimeout,
    /// The request, then a reset (SO_LINGER 0) before reading anything.
    AbortRequest,
    /// `GET /bulk`, [`ABORT_AFTER`] bytes read, then a reset.
    AbortDownload,
}

/// The mix each client cycles through, from a different place each: short
/// exchanges dominate as they do on the web.
pub(super) const MIX: [Profile; 14] = [
    Profile::Short,
    Profile::KeepAlive,
    Profile::Short,
    Profile::Download,
    Profile::Short,
    Profile::Idle,
    Profile::HalfClose,
    Profile::Short,
    Profile::AbortRequest,
    Profile::IdleClose,
    Profile::Short,
    Profile::AbortDownload,
    Profile::HalfClose,
    Profile::IdleTimeout,
];

const GET_10: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const GET_11: &[u8] = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n";
const BULK_10: &[u8] = b"GET /bulk HTTP/1.0\r\n\r\n";

impl Profile {
    /// Whether the client knows exactly what crossed the relay when the
    /// connection ends as planned (an aborted one does not: its reset may
    /// overtake bytes in flight).
    pub(super) fn exact(self) -> bool {
        !matches!(self, Profile::AbortRequest | Profile::AbortDownload)
    }

    /// The service it connects to.
    pub(super) fn service(self) -> &'static str {
        match self.exact() {
            true => CLEAN,
            false => RESET,
        }
    }

    /// Most bytes the relay can move (to the backend, to the client) on a
    /// connection of this profile, however it ends.
    pub(super) fn bound(self) -> (u64, u64) {
        let page = HEADERS_MAX + 2;
        let bulk = HEADERS_MAX + BULK;
        match self {
            Profile::Short | Profile::Idle | Profile::HalfClose | Profile::AbortRequest => {
                (GET_10.len() as u64, page)
            }
            Profile::KeepAlive => (
                (GET_11.len() * KEEPALIVE_REQUESTS) as u64,
                page * KEEPALIVE_REQUESTS as u64,
            ),
            Profile::Download | Profile::AbortDownload => (BULK_10.len() as u64, bulk),
            Profile::IdleClose => (0, 0),
            Profile::IdleTimeout => (GET_11.len() as u64, page),
        }
    }
}

/// Bytes a connection moved, as its client saw them.
#[derive(Default)]
pub(super) struct Moved {
    pub(super) sent: u64,
    pub(super) received: u64,
}

/// One connection of `p` to `target`; its bytes, or why it failed.
fn one(p: Profile, target: SocketAddr, idle_timeout: Duration) -> std::io::Result<Moved> {
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut mv = Moved::default();
    let mut send = |s: &mut TcpStream, b: &[u8]| -> std::io::Result<()> {
        s.write_all(b)?;
        mv.sent += b.len() as u64;
        Ok(())
    };
    match p {
        Profile::Short | Profile::Download => {
            send(&mut s, if p == Profile::Short { GET_10 } else { BULK_10 })?;
            mv.received = to_end(&mut s)?;
            expect_len(mv.received, if p == Profile::Short { 2 } else { BULK })?;
        }
        Profile::KeepAlive => {
            for i in 0..KEEPALIVE_REQUESTS {
                if i > 0 {
                    std::thread::sleep(KEEPALIVE_PAUSE);
                }
                send(&mut s, GET_11)?;
                mv.received += response(&mut s)?;
            }
        }
        Profile::Idle => {
            std::thread::sleep(IDLE);
            send(&mut s, GET_10)?;
            mv.received = to_end(&mut s)?;
            expect_len(mv.received, 2)?;
        }
        Profile::IdleClose => std::thread::sleep(IDLE),
        Profile::HalfClose => {
            send(&mut s, GET_10)?;
            s.shutdown(Shutdown::Write)?;
            mv.received = to_end(&mut s)?;
            expect_len(mv.received, 2)?;
        }
        Profile::IdleTimeout => {
            send(&mut s, GET_11)?;
            mv.received = response(&mut s)?;
            let quiet = Instant::now();
            s.set_read_timeout(Some(idle_timeout + TIMEOUT))?;
            let extra = to_end(&mut s)?;
            let waited = quiet.elapsed();
            if extra != 0 || waited + Duration::from_millis(100) < idle_timeout {
                return Err(std::io::Error::other(format!(
                    "closed after {waited:?} of silence ({extra} more bytes), before the {idle_timeout:?} idle timeout"
                )));
            }
        }
        Profile::AbortRequest => {
            send(&mut s, GET_10)?;
            reset(s)?;
        }
        Profile::AbortDownload => {
            send(&mut s, BULK_10)?;
            let mut b = vec![0u8; ABORT_AFTER];
            s.read_exact(&mut b)?;
            mv.received = b.len() as u64;
            reset(s)?;
        }
    }
    Ok(mv)
}

/// Reads to the end of the stream; the bytes read.
fn to_end(s: &mut TcpStream) -> std::io::Result<u64> {
    std::io::copy(s, &mut std::io::sink())
}

/// A whole response was read: `total` bytes of which `body` are the body
/// (nginx's headers are a few hundred bytes).
fn expect_len(total: u64, body: u64) -> std::io::Result<()> {
    if total < body + 100 || total > body + HEADERS_MAX {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("response of {total} bytes for a body of {body}"),
        ));
    }
    Ok(())
}

/// One HTTP/1.1 response read by its Content-Length, leaving the
/// connection open; its size in bytes.
fn response(s: &mut TcpStream) -> std::io::Result<u64> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("a response without Content-Length"))?;
            let want = end + 4 + len;
            while buf.len() < want {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if buf.len() != want {
                return Err(std::io::Error::other("bytes after the response"));
            }
            return Ok(want as u64);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Closes with a reset: SO_LINGER on with a zero timeout.
fn reset(s: TcpStream) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &l)?;
    drop(s);
    Ok(())
}

/// What the clients did with one profile.
#[derive(Clone, Default, Serialize)]
pub(super) struct Tally {
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// Connections that received bytes from the backend, so were handed
    /// off. The others cannot tell: a client that closes or resets without
    /// a reply never learns whether its handshake's last ACK arrived (a
    /// pure ACK is not retransmitted; lost under the flood, no handoff).
    pub(super) answered: u64,
    /// Bytes sent and received on connections that ended as planned and
    /// whose count is exact.
    pub(super) exact_sent: u64,
    pub(super) exact_received: u64,
    /// Most bytes the other connections (aborted, failed) can account for.
    pub(super) bound_sent: u64,
    pub(super) bound_received: u64,
    /// The first few failures' errors.
    pub(super) errors: Vec<String>,
}

impl Tally {
    pub(super) fn add(&mut self, p: Profile, r: std::io::Result<Moved>) {
        match r {
            Ok(mv) if p.exact() => {
                self.ok += 1;
                self.answered += u64::from(mv.received > 0);
                self.exact_sent += mv.sent;
                self.exact_received += mv.received;
            }
            r => {
                match r {
                    Ok(mv) => {
                        self.ok += 1;
                        self.answered += u64::from(mv.received > 0);
                    }
                    Err(e) => {
                        self.failed += 1;
                        if self.errors.len() < 5 {
                            self.errors.push(e.to_string());
                        }
                    }
                }
                let (s, r) = p.bound();
                self.bound_sent += s;
                self.bound_received += r;
            }
        }
    }

    pub(super) fn merge(&mut self, o: &Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.answered += o.answered;
        self.exact_sent += o.exact_sent;
        self.exact_received += o.exact_received;
        self.bound_sent += o.bound_sent;
        self.bound_received += o.bound_received;
        for e in &o.errors {
            if self.errors.len() < 5 {
                self.errors.push(e.clone());
            }
        }
    }
}

/// `clients` threads in the client namespace, each cycling through [`MIX`]
/// from its own offset, until `until`; tallies by profile.
pub(super) fn load(
    lab: &BenchLab,
    clients: usize,
    until: Instant,
    mix: &[Profile],
    idle_timeout: Duration,
) -> Result<BTreeMap<Profile, Tally>> {
    let all = Mutex::new(BTreeMap::<Profile, Tally>::new());
    lab.cli.run(|| {
        std::thread::scope(|sc| {
            for c in 0..clients {
                let all = &all;
                sc.spawn(move || {
                    let mut mine = BTreeMap::<Profile, Tally>::new();
                    let mut i = c * 5;
                    while Instant::now() < until {
                        let p = mix[i % mix.len()];
                        let target = match p.service() {
                            CLEAN => lab.vip(),
                            _ => SocketAddr::new(lab::VIP4.into(), RESET_PORT),
                        };
                        mine.entry(p)
                            .or_default()
                            .add(p, one(p, target, idle_timeout));
                        i += 1;
                    }
                    let mut all = all.lock().unwrap();
                    for (p, t) in mine {
                        all.entry(p).or_default().merge(&t);
                    }
                });
            }
        })
    })?;
    Ok(all.into_inner().unwrap())
}
