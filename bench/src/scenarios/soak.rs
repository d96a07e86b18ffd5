//! `soak`: ackgate in front of nginx for minutes, under a background SYN
//! flood, while closed-loop clients cycle through the ways real clients
//! use and misuse a connection (short, keep-alive, downloads, idle,
//! half-closed, left to the idle timeout, aborted with a reset). The
//! question is what a long run leaves behind: ackgate's descriptors,
//! memory and threads are sampled before, during and after, and must come
//! back to the baseline taken after a warm-up; `connections_active` must
//! return to 0; and the relayed-byte counters must match what the clients
//! sent and received. The resetting clients use a service of their own
//! (ackgate counts bytes per service), so the other's counters must equal
//! the clients' counts exactly, and the resets' stay within bounds (a
//! reset may overtake bytes in flight, so no client knows their count).
//!
//! The scenario writes its report, then fails if any check failed, so a
//! leak fails the command (CI runs `--quick`).

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use ackgate::{
    sys::rlimit,
    telemetry::{metrics as m, stats},
};
use ackgate_lab::{workspace_bin, Process};
use anyhow::{bail, ensure, Context as _, Result};
use nix::unistd::Pid;
use serde::Serialize;

use super::{flood, flood_spec, Scenario};
use crate::{
    lab::{self, BenchLab},
    report::{self, fmt_num, Header},
    Common,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Seconds of mixed load under the flood.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    /// Concurrent closed-loop clients (a thread each), each cycling
    /// through the profiles.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..=2000))]
    clients: u64,
    /// Background SYN flood, spoofed SYNs per second (0: none).
    #[arg(long, default_value_t = 100_000)]
    flood_pps: u64,
    /// ackgate's idle timeout for the run (`--idle-timeout-secs`), which
    /// the `idle_timeout` profile outwaits.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60))]
    idle_timeout: u64,
    /// The engine ackgate runs.
    #[arg(long, value_enum, default_value_t = Engine::IoUring)]
    engine: Engine,
}

#[derive(Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Engine {
    IoUring,
    Tokio,
}

/// The two services, both in front of nginx: every profile but the
/// resets on [`CLEAN`] (the flood's target), the resets on [`RESET`].
const CLEAN: &str = "clean";
const RESET: &str = "reset";
const RESET_PORT: u16 = 8080;

/// Size of nginx's `/bulk`, the download profiles' file.
const BULK: u64 = 256 << 10;
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
/// How long resources may take to come back after the load stops: relays
/// finish their closes and io_uring's idle workers exit (after 5 s).
const SETTLE: Duration = Duration::from_secs(30);
/// Memory a run may keep above its baseline: allocator arenas and caches
/// grown at the peak are not returned to the system, a leak grows with
/// the connection count (1 KiB per connection over a quick run's
/// thousands would pass this, over a full run's hundreds of thousands
/// would not).
const RSS_SLACK_KIB: u64 = 16 << 10;

/// What one client connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Profile {
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
const MIX: [Profile; 14] = [
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
    fn exact(self) -> bool {
        !matches!(self, Profile::AbortRequest | Profile::AbortDownload)
    }

    /// The service it connects to.
    fn service(self) -> &'static str {
        match self.exact() {
            true => CLEAN,
            false => RESET,
        }
    }

    /// Most bytes the relay can move (to the backend, to the client) on a
    /// connection of this profile, however it ends.
    fn bound(self) -> (u64, u64) {
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
struct Moved {
    sent: u64,
    received: u64,
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

// ---------------------------------------------------------------- clients

/// What the clients did with one profile.
#[derive(Clone, Default, Serialize)]
struct Tally {
    ok: u64,
    failed: u64,
    /// Connections that received bytes from the backend, so were handed
    /// off. The others cannot tell: a client that closes or resets without
    /// a reply never learns whether its handshake's last ACK arrived (a
    /// pure ACK is not retransmitted; lost under the flood, no handoff).
    answered: u64,
    /// Bytes sent and received on connections that ended as planned and
    /// whose count is exact.
    exact_sent: u64,
    exact_received: u64,
    /// Most bytes the other connections (aborted, failed) can account for.
    bound_sent: u64,
    bound_received: u64,
    /// The first few failures' errors.
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, p: Profile, r: std::io::Result<Moved>) {
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

    fn merge(&mut self, o: &Tally) {
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
fn load(
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

// ---------------------------------------------------------------- ackgate's resources

/// ackgate's resources at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
struct Resources {
    /// Seconds since the soak began (negative: the baseline).
    t: f64,
    /// Open descriptors: sockets, pipes (the splice pool: bounded by
    /// `--splice-pipes`, kept for reuse), and the rest (the ring, maps,
    /// eventfds, io_uring, files).
    sockets: u64,
    pipes: u64,
    other_fds: u64,
    rss_kib: u64,
    /// The process's own threads, and io_uring's workers (`iou-wrk-*`),
    /// which the kernel starts on demand and ends after 5 s idle.
    threads: u64,
    io_workers: u64,
    /// `ackgate_connections_active`, all services.
    active: f64,
}

fn sample(lab: &BenchLab, pid: Pid, t: f64) -> Result<Resources> {
    let proc_ = format!("/proc/{pid}");
    let mut r = Resources {
        t,
        ..Default::default()
    };
    for e in std::fs::read_dir(format!("{proc_}/fd")).context("ackgate's descriptors")? {
        let Ok(link) = std::fs::read_link(e?.path()) else {
            continue; // closed meanwhile
        };
        let l = link.to_string_lossy();
        if l.starts_with("socket:") {
            r.sockets += 1;
        } else if l.starts_with("pipe:") {
            r.pipes += 1;
        } else {
            r.other_fds += 1;
        }
    }
    let status = std::fs::read_to_string(format!("{proc_}/status"))?;
    r.rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    for e in std::fs::read_dir(format!("{proc_}/task"))? {
        let comm = std::fs::read_to_string(e?.path().join("comm")).unwrap_or_default();
        if comm.starts_with("iou-wrk") || comm.starts_with("iou-sqp") {
            r.io_workers += 1;
        } else {
            r.threads += 1;
        }
    }
    r.active = metric(lab, m::CONNECTIONS_ACTIVE, &[])?;
    Ok(r)
}

/// The sum of a metric's series that have all of `labels`.
fn metric(lab: &BenchLab, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let all = lab
        .px
        .run(|| stats::scrape(lab::METRICS.parse().unwrap()))??;
    Ok(all
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .sum())
}

/// Bytes relayed so far per (service, direction).
fn relayed(lab: &BenchLab) -> Result<[f64; 4]> {
    let mut v = [0.0; 4];
    for (i, (svc, dir)) in DIRECTIONS.iter().enumerate() {
        v[i] = metric(
            lab,
            m::RELAYED_BYTES,
            &[("service", svc), ("direction", dir)],
        )?;
    }
    Ok(v)
}

const DIRECTIONS: [(&str, &str); 4] = [
    (CLEAN, "to_backend"),
    (CLEAN, "to_client"),
    (RESET, "to_backend"),
    (RESET, "to_client"),
];

/// ackgate in the proxy namespace with the two services, its idle timeout
/// `idle`, on `engine`.
fn start(lab: &BenchLab, engine: Engine, idle: Duration) -> Result<Process> {
    let cfg = lab.dir.join("soak.toml");
    std::fs::write(
        &cfg,
        format!(
            "interfaces = [\"px0\"]
engine = \"{}\"
metrics = \"{}\"
stats_interval_secs = 0

[limits]
idle_timeout_secs = {}

[[service]]
name = \"{CLEAN}\"
listen = [\"{}\"]
backends = [\"{}\"]

[[service]]
name = \"{RESET}\"
listen = [\"{}:{RESET_PORT}\"]
backends = [\"{}\"]
",
            match engine {
                Engine::IoUring => "io_uring",
                Engine::Tokio => "tokio",
            },
            lab::METRICS,
            idle.as_secs(),
            lab.vip(),
            lab.backend(),
            lab::VIP4,
            lab.backend()
        ),
    )?;
    let mut cmd = lab.px.command(workspace_bin("ackgate")?.to_str().unwrap());
    cmd.args(["run", "--config", cfg.to_str().unwrap()]);
    cmd.args(lab::extra_args());
    let mut p = Process::spawn("ackgate", cmd)?;
    lab::wait_listening(&lab.cli, lab.vip(), "ackgate", &mut p)?;
    Ok(p)
}

/// Samples until `stop`, every `every`.
fn sampler(
    lab: &BenchLab,
    pid: Pid,
    t0: Instant,
    every: Duration,
    stop: &AtomicBool,
) -> Result<Vec<Resources>> {
    let mut v = Vec::new();
    while !stop.load(Relaxed) {
        v.push(sample(lab, pid, t0.elapsed().as_secs_f64())?);
        let next = Instant::now() + every;
        while !stop.load(Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(v)
}

/// Samples until nothing [`leaks`] against `base` or [`SETTLE`] has
/// passed; the last sample and how long it took.
fn settle(lab: &BenchLab, pid: Pid, base: &Resources, t0: Instant) -> Result<(Resources, f64)> {
    let start = Instant::now();
    loop {
        let r = sample(lab, pid, t0.elapsed().as_secs_f64())?;
        if leaks(base, &r).is_empty() || start.elapsed() > SETTLE {
            return Ok((r, start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What `after` holds that `base` did not: descriptors, threads and
/// connections exactly; io_uring workers at most as many; memory within
/// [`RSS_SLACK_KIB`]; pipes within the splice pool's bound (it keeps idle
/// pipes for reuse, up to the default's cap whatever the connection
/// limit: not a leak).
fn leaks(base: &Resources, after: &Resources) -> Vec<String> {
    let mut v = Vec::new();
    if after.active != 0.0 {
        v.push(format!("{} connections still active", after.active));
    }
    for (what, b, x) in [
        ("sockets", base.sockets, after.sockets),
        ("other descriptors", base.other_fds, after.other_fds),
        ("threads", base.threads, after.threads),
    ] {
        if x != b {
            v.push(format!("{what}: {x} after, {b} at the baseline"));
        }
    }
    let pipes_max = base
        .pipes
        .max(rlimit::PER_PIPE * rlimit::MAX_DEFAULT_PIPES as u64);
    if after.pipes > pipes_max {
        v.push(format!(
            "pipe descriptors: {} after, more than the pool's bound {pipes_max}",
            after.pipes
        ));
    }
    if after.io_workers > base.io_workers {
        v.push(format!(
            "io_uring workers: {} after, {} at the baseline",
            after.io_workers, base.io_workers
        ));
    }
    if after.rss_kib > base.rss_kib + RSS_SLACK_KIB {
        v.push(format!(
            "memory: {} KiB after, {} KiB at the baseline (slack {RSS_SLACK_KIB} KiB)",
            after.rss_kib, base.rss_kib
        ));
    }
    v
}

/// Each of [`DIRECTIONS`]' counters over the soak (`before` to `after`)
/// against what the clients of that service counted.
fn accounts(
    profiles: &BTreeMap<Profile, Tally>,
    before: [f64; 4],
    after: [f64; 4],
) -> Vec<Account> {
    DIRECTIONS
        .iter()
        .enumerate()
        .map(|(i, &(service, direction))| {
            let mut t = Tally::default();
            for (_, x) in profiles.iter().filter(|(p, _)| p.service() == service) {
                t.merge(x);
            }
            let (exact, bound) = match direction {
                "to_backend" => (t.exact_sent, t.bound_sent),
                _ => (t.exact_received, t.bound_received),
            };
            let relayed = after[i] - before[i];
            Account {
                service,
                direction,
                relayed,
                exact,
                bound,
                ok: relayed >= exact as f64 && relayed <= (exact + bound) as f64,
            }
        })
        .collect()
}

/// Each resource's highest sample.
fn peak(samples: &[Resources]) -> Resources {
    let max = |f: fn(&Resources) -> u64| samples.iter().map(f).max().unwrap_or(0);
    Resources {
        t: 0.0,
        sockets: max(|r| r.sockets),
        pipes: max(|r| r.pipes),
        other_fds: max(|r| r.other_fds),
        rss_kib: max(|r| r.rss_kib),
        threads: max(|r| r.threads),
        io_workers: max(|r| r.io_workers),
        active: samples.iter().map(|r| r.active).fold(0.0, f64::max),
    }
}

// ---------------------------------------------------------------- the run

/// A relayed-byte counter against what the clients saw.
#[derive(Serialize)]
struct Account {
    service: &'static str,
    direction: &'static str,
    /// `ackgate_relayed_bytes_total` over the soak.
    relayed: f64,
    /// Client-side bytes of the connections that ended as planned.
    exact: u64,
    /// Most the reset and failed connections can add.
    bound: u64,
    ok: bool,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: Header,
    seconds: f64,
    clients: usize,
    engine: Engine,
    idle_timeout_s: u64,
    flood_pps_requested: u64,
    flood_pps_sent: f64,
    syns_answered: f64,
    connections: u64,
    failed: u64,
    answered: u64,
    handoffs: f64,
    /// Frames (flood and clients alike) lost entering px0 during the soak.
    ingress_drops: u64,
    profiles: BTreeMap<Profile, Tally>,
    bytes: Vec<Account>,
    baseline: Resources,
    peak: Resources,
    after: Resources,
    settle_s: f64,
    samples: Vec<Resources>,
    /// What failed; empty when the soak passed.
    failures: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        a.seconds.is_finite() && (1.0..=86_400.0).contains(&a.seconds),
        "--seconds {}: must be 1-86400",
        a.seconds
    );
    let secs = a.common.pick(20.0, a.seconds);
    let clients = a.common.pick(a.clients.min(32), a.clients) as usize;
    let flood_pps = a.common.pick(a.flood_pps.min(50_000), a.flood_pps);
    let idle_timeout = Duration::from_secs(a.idle_timeout);
    let sc = Scenario::new("soak", &a.common, BULK)?;
    let lab = &sc.lab;
    let ackgate = start(lab, a.engine, idle_timeout)?;
    let pid = ackgate.pid();

    // Warm-up: every profile but the slow idle timeout, so pools, caches
    // and the allocator reach their working size before the baseline.
    let warm: Vec<Profile> = MIX
        .iter()
        .copied()
        .filter(|&p| p != Profile::IdleTimeout)
        .collect();
    eprintln!("soak: warm-up, {clients} clients for 3 s");
    load(
        lab,
        clients,
        Instant::now() + Duration::from_secs(3),
        &warm,
        idle_timeout,
    )?;
    let t0 = Instant::now();
    // io_uring's workers from the warm-up end after 5 s idle.
    std::thread::sleep(Duration::from_secs(6));
    let mut baseline = sample(lab, pid, -t0.elapsed().as_secs_f64())?;
    baseline.t = 0.0;
    if baseline.active != 0.0 {
        bail!(
            "{} connections still active after the warm-up",
            baseline.active
        );
    }
    let (bytes0, handoffs0, syns0, drops0) = (
        relayed(lab)?,
        metric(lab, m::HANDOFFS, &[])?,
        metric(lab, m::XDP_SYNS_ANSWERED, &[])?,
        lab.ingress_drops()?,
    );
    eprintln!(
        "soak: baseline {} sockets, {} pipes, {} other descriptors, {} MiB, {} threads; {clients} clients for {secs} s under a {} pps flood",
        baseline.sockets,
        baseline.pipes,
        baseline.other_fds,
        baseline.rss_kib >> 10,
        baseline.threads,
        fmt_num(flood_pps as f64)
    );

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let stop_flood = AtomicBool::new(false);
    let stop_samples = AtomicBool::new(false);
    // Bounded by time and packets, with room for the whole soak and the
    // stragglers after it (the flood stops when the clients do).
    let mut spec = flood_spec(lab, lab::VIP4.into(), Some(flood_pps), secs + 30.0, 7)?;
    spec.max_packets = spec
        .max_packets
        .max(((secs + 30.0) * flood_pps as f64) as u64);
    let (profiles, sent, mut samples) = std::thread::scope(|s| -> Result<_> {
        let fl = (flood_pps > 0).then(|| s.spawn(|| flood(lab, &spec, &stop_flood)));
        let sm = s.spawn(|| {
            sampler(
                lab,
                pid,
                t0,
                Duration::from_secs_f64((secs / 60.0).max(1.0)),
                &stop_samples,
            )
        });
        let profiles = load(lab, clients, until, &MIX, idle_timeout);
        stop_flood.store(true, Relaxed);
        stop_samples.store(true, Relaxed);
        let sent = match fl {
            Some(h) => {
                h.join()
                    .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
                    .pps
            }
            None => 0.0,
        };
        let samples = sm
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
        Ok((profiles?, sent, samples))
    })?;
    let (after, settle_s) = settle(lab, pid, &baseline, t0)?;
    samples.push(after);

    let mut total = Tally::default();
    for t in profiles.values() {
        total.merge(t);
    }
    let bytes = accounts(&profiles, bytes0, relayed(lab)?);
    let handoffs = metric(lab, m::HANDOFFS, &[])? - handoffs0;
    let syns_answered = metric(lab, m::XDP_SYNS_ANSWERED, &[])? - syns0;
    let ingress_drops = lab.ingress_drops()? - drops0;
    // A drain with nothing left to drain: a prompt, clean exit.
    let (status, _) = ackgate.stop(Duration::from_secs(20))?;

    let mut failures = Vec::new();
    if !status.success() {
        failures.push(format!("ackgate exited with {status} on SIGTERM"));
    }
    failures.extend(leaks(&baseline, &after));
    for b in bytes.iter().filter(|b| !b.ok) {
        failures.push(format!(
            "{} {}: {} bytes relayed, the clients account for {} exactly plus at most {}",
            b.service, b.direction, b.relayed, b.exact, b.bound
        ));
    }
    let connections = total.ok + total.failed;
    // Every answered connection was a handoff, and no connection two.
    if handoffs < total.answered as f64 || handoffs > connections as f64 {
        failures.push(format!(
            "{handoffs} handoffs for {connections} connections, {} of them answered",
            total.answered
        ));
    }
    if total.failed > 0 {
        failures.push(format!(
            "{} of {connections} connections failed: {}",
            total.failed,
            total.errors.join("; ")
        ));
    }
    let peak = peak(&samples);
    let rep = Report {
        head: sc.header(1),
        seconds: secs,
        clients,
        engine: a.engine,
        idle_timeout_s: idle_timeout.as_secs(),
        flood_pps_requested: flood_pps,
        flood_pps_sent: sent,
        syns_answered,
        connections,
        failed: total.failed,
        answered: total.answered,
        handoffs,
        ingress_drops,
        profiles,
        bytes,
        baseline,
        peak,
        after,
        settle_s,
        samples,
        failures,
    };
    let md = markdown(&sc, &rep);
    sc.write(&rep, &md, &charts(&rep))?;
    if !rep.failures.is_empty() {
        bail!("soak failed: {}", rep.failures.join("; "));
    }
    eprintln!(
        "soak: {connections} connections, resources back to the baseline in {settle_s:.1} s, every byte accounted for"
    );
    Ok(())
}

/// One figure of a [`Resources`] sample.
type Of = fn(&Resources) -> f64;

fn markdown(sc: &Scenario, r: &Report) -> String {
    let mut md = sc.heading(&r.head, "Soak");
    md.push_str(&format!(
        ": {} closed-loop clients for {} s through ackgate ({} engine, idle timeout {} s) to nginx, each cycling through the profiles below, while {} spoofed SYNs/s ({} sent) flood the same service; {} SYNs answered by XDP meanwhile. Resources of the ackgate process from /proc, `connections_active` and the relayed-byte counters from its metrics; the baseline is taken after a 3 s warm-up and 6 s of quiet.\n\n",
        r.clients,
        r.seconds,
        match r.engine {
            Engine::IoUring => "io_uring",
            Engine::Tokio => "tokio",
        },
        r.idle_timeout_s,
        fmt_num(r.flood_pps_requested as f64),
        fmt_num(r.flood_pps_sent),
        fmt_num(r.syns_answered),
    ));
    md.push_str("| profile | connections | failed | answered | bytes sent (exact) | bytes received (exact) |\n|---|---:|---:|---:|---:|---:|\n");
    for (p, t) in &r.profiles {
        let exact = |v: u64| match p.exact() {
            true => v.to_string(),
            false => "reset: bounded".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            serde_json::to_value(p).unwrap().as_str().unwrap_or(""),
            t.ok + t.failed,
            t.failed,
            t.answered,
            exact(t.exact_sent),
            exact(t.exact_received)
        ));
    }
    md.push_str(&format!(
        "\n{} connections, {} failed, {} answered by the backend; {} handoffs ({} frames dropped entering the proxy's interface: a client that never hears back cannot tell whether its handshake's last ACK was one). Relayed bytes per service (`{CLEAN}`: every profile but the resets, whose counts the clients know exactly; `{RESET}`: the resets) against the clients' counts:\n\n| service | direction | ackgate_relayed_bytes_total | clients (exact) | + at most (reset, failed) | accounted |\n|---|---|---:|---:|---:|---|\n",
        r.connections,
        r.failed,
        r.answered,
        r.handoffs,
        r.ingress_drops
    ));
    for b in &r.bytes {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            b.service,
            b.direction,
            b.relayed,
            b.exact,
            b.bound,
            match (b.ok, b.relayed == b.exact as f64) {
                (true, true) => "exactly",
                (true, false) => "within bounds",
                _ => "NO",
            }
        ));
    }
    md.push_str("\n| ackgate | baseline | peak | after |\n|---|---:|---:|---:|\n");
    let rows: [(&str, Of); 7] = [
        ("sockets", |x| x.sockets as f64),
        ("pipes (splice pool)", |x| x.pipes as f64),
        ("other descriptors", |x| x.other_fds as f64),
        ("RSS MiB", |x| x.rss_kib as f64 / 1024.0),
        ("threads", |x| x.threads as f64),
        ("io_uring workers", |x| x.io_workers as f64),
        ("connections_active", |x| x.active),
    ];
    for (name, f) in rows {
        let d = if name.starts_with("RSS") { 1 } else { 0 };
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            report::fmt_num_digits(f(&r.baseline), d),
            report::fmt_num_digits(f(&r.peak), d),
            report::fmt_num_digits(f(&r.after), d)
        ));
    }
    md.push_str(&format!(
        "\nBack to the baseline {:.1} s after the load stopped. ",
        r.settle_s
    ));
    match r.failures.is_empty() {
        true => md.push_str("Passed: nothing leaked, every byte accounted for.\n"),
        false => md.push_str(&format!("FAILED: {}.\n", r.failures.join("; "))),
    }
    md
}

fn charts(r: &Report) -> Vec<(String, String)> {
    let series = |name: &str, f: Of| {
        (
            name.to_string(),
            r.samples.iter().map(|x| (x.t.max(0.0), f(x))).collect(),
        )
    };
    vec![
        (
            "soak_fds.svg".into(),
            report::lines(
                "ackgate during the soak: descriptors and connections",
                "seconds",
                "count",
                &[
                    series("sockets", |x| x.sockets as f64),
                    series("pipes", |x| x.pipes as f64),
                    series("connections_active", |x| x.active),
                    series("threads + io workers", |x| {
                        (x.threads + x.io_workers) as f64
                    }),
                ],
            ),
        ),
        (
            "soak_rss.svg".into(),
            report::lines(
                "ackgate during the soak: resident memory",
                "seconds",
                "MiB",
                &[series("RSS", |x| x.rss_kib as f64 / 1024.0)],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Resources {
        Resources {
            sockets: 8,
            pipes: 6,
            other_fds: 30,
            rss_kib: 25_000,
            threads: 3,
            ..Default::default()
        }
    }

    #[test]
    fn leaks_names_what_did_not_come_back() {
        let b = base();
        assert!(leaks(&b, &b).is_empty());
        // The pool kept pipes, memory stayed within the slack, workers ended.
        let fine = Resources {
            pipes: 40,
            rss_kib: b.rss_kib + RSS_SLACK_KIB,
            ..b
        };
        assert!(leaks(&b, &fine).is_empty(), "{:?}", leaks(&b, &fine));
        for (after, what) in [
            (Resources { sockets: 9, ..b }, "sockets: 9 after, 8"),
            (Resources { other_fds: 31, ..b }, "other descriptors"),
            (Resources { threads: 4, ..b }, "threads"),
            (Resources { active: 1.0, ..b }, "1 connections still active"),
            (Resources { io_workers: 1, ..b }, "io_uring workers"),
            (Resources { pipes: 513, ..b }, "pool's bound 512"),
            (
                Resources {
                    rss_kib: b.rss_kib + RSS_SLACK_KIB + 1,
                    ..b
                },
                "memory",
            ),
        ] {
            let l = leaks(&b, &after);
            assert!(l.len() == 1 && l[0].contains(what), "{l:?} for {what}");
        }
    }

    #[test]
    fn bytes_are_exact_on_the_clean_service_and_bounded_on_the_reset_one() {
        let mut p = BTreeMap::<Profile, Tally>::new();
        let ok = |sent, received| Ok(Moved { sent, received });
        p.entry(Profile::Short)
            .or_default()
            .add(Profile::Short, ok(18, 230));
        p.entry(Profile::HalfClose)
            .or_default()
            .add(Profile::HalfClose, ok(18, 230));
        p.entry(Profile::AbortRequest)
            .or_default()
            .add(Profile::AbortRequest, ok(18, 0));
        let (bs, br) = Profile::AbortRequest.bound();
        let check = |p: &BTreeMap<Profile, Tally>, after: [f64; 4]| -> Vec<bool> {
            accounts(p, [100.0; 4], after)
                .iter()
                .map(|a| a.ok)
                .collect()
        };
        let good = [136.0, 560.0, 100.0 + bs as f64, 100.0 + br as f64];
        assert_eq!(check(&p, good), [true; 4]);
        // A byte lost or one too many on the clean service, a reset
        // connection that moved more than it could have.
        let mut less = good;
        less[0] -= 1.0;
        assert_eq!(check(&p, less), [false, true, true, true]);
        let mut more = good;
        more[1] += 1.0;
        assert_eq!(check(&p, more), [true, false, true, true]);
        more = good;
        more[3] += 1.0;
        assert_eq!(check(&p, more), [true, true, true, false]);
        // A failed connection on the clean service widens its bound.
        p.entry(Profile::Short)
            .or_default()
            .add(Profile::Short, Err(ErrorKind::TimedOut.into()));
        assert_eq!(check(&p, [140.0, 600.0, 100.0, 100.0]), [true; 4]);
        assert_eq!(p[&Profile::Short].failed, 1);
    }
}
