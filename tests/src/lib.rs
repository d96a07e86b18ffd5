//! Helpers for ackgate's privileged tests. These tests need root (they load
//! XDP programs and build network namespaces); without it they fail with a
//! clear message rather than skip.

use std::{path::PathBuf, time::Duration};

pub mod tcp_info;
pub mod test_run;

pub use ackgate_lab as lab;
pub use ackgate_lab::{
    process::Process,
    servers::{echo as echo_server, StopOnDrop},
};

/// Panics unless running as root: privileged tests never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads XDP programs and creates network namespaces: run it as root (CI does)"
    );
}

/// Path of the `ackgate` binary built beside this test binary.
pub fn ackgate_bin() -> PathBuf {
    lab::workspace_bin("ackgate").expect("the ackgate binary")
}

/// Parses the last `counters: a=1 b=2` log line into (name, value) pairs.
pub fn last_counters(lines: &[String]) -> Option<Vec<(String, u64)>> {
    let l = lines
        .iter()
        .rev()
        .find_map(|l| l.split_once("counters: "))?
        .1;
    l.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub fn counter(c: &[(String, u64)], name: &str) -> u64 {
    c.iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no counter {name} in {c:?}"))
        .1
}

/// `ackgate run --iface <gateway interface> --stats-interval 0 ARGS...` in
/// the lab's gateway namespace, once it has printed a line containing
/// `ready`; a proxy (backends or a file) must also be running the
/// expected engine.
pub fn run_ackgate_until(lab: &lab::Lab, args: &[&str], ready: &str) -> Process {
    let mut cmd = lab.gw.command(ackgate_bin().to_str().unwrap());
    cmd.args(["run", "--iface", lab.gw_if, "--stats-interval", "0"])
        .args(args);
    let mut p =
        Process::start("ackgate", cmd, ready, Duration::from_secs(30)).expect("ackgate starts");
    if args.iter().any(|a| *a == "--backend" || *a == "--config") {
        if !p.output.iter().any(|l| l.contains("proxy ready")) {
            p.wait_for("proxy ready", Duration::from_secs(30))
                .expect("proxy ready");
        }
        assert_engine(&p);
    }
    p
}

/// Where the end-to-end tests' ackgate serves its metrics (in the gateway).
pub const METRICS: &str = "127.0.0.1:9469";

/// The engine the end-to-end tests' ackgate must run: `ACKGATE_ENGINE`
/// (which ackgate reads too; the test script runs the proxy tests once per
/// engine), else what `auto` picks on this kernel, io_uring.
pub fn expected_engine() -> String {
    std::env::var("ACKGATE_ENGINE").unwrap_or_else(|_| "io_uring".into())
}

/// Panics unless `p` said it runs the expected engine.
pub fn assert_engine(p: &Process) {
    let want = format!("engine {} on", expected_engine());
    assert!(
        p.output.iter().any(|l| l.contains(&want)),
        "ackgate should run {want:?}: {:?}",
        p.output
    );
}

/// ackgate proxying `{vip4,[vip6]}:8080` to `backend`, with metrics on
/// [`METRICS`], once its proxy is ready (running the expected engine).
pub fn run_proxy(lab: &lab::Lab, backend: &str) -> Process {
    let (v4, v6) = (format!("{}:8080", lab.vip4), format!("[{}]:8080", lab.vip6));
    run_ackgate_until(
        lab,
        &[
            "--listen",
            &v4,
            "--listen",
            &v6,
            "--backend",
            backend,
            "--metrics",
            METRICS,
        ],
        "proxy ready",
    )
}

/// [`run_ackgate_until`] the XDP program is attached.
pub fn run_ackgate(lab: &lab::Lab, args: &[&str]) -> Process {
    run_ackgate_until(lab, args, "attached to")
}

/// A lab with the client's pass program attached and an echo backend on
/// 127.0.0.1:9000 in the gateway, for the duration of `f`.
pub fn with_echo_lab<R>(f: impl FnOnce(&lab::Lab) -> R) -> R {
    with_backend_lab(|_| {}, echo_server, f)
}

/// A lab shaped by `setup` (before anything listens), the client's pass
/// program attached, and `server` serving 127.0.0.1:9000 in the gateway
/// until `f` returns (or fails).
pub fn with_backend_lab<R>(
    setup: impl FnOnce(&lab::Lab),
    server: fn(std::net::TcpListener, &std::sync::atomic::AtomicBool),
    f: impl FnOnce(&lab::Lab) -> R,
) -> R {
    require_root();
    let lab = lab::Lab::new().unwrap();
    setup(&lab);
    let _pass = lab
        .client
        .run(|| lab::harness::Attached::pass("cli0"))
        .unwrap()
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let l = lab
        .gw
        .run(|| std::net::TcpListener::bind("127.0.0.1:9000"))
        .unwrap()
        .unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| server(l, &stop));
        let _stop = StopOnDrop(&stop);
        f(&lab)
    })
}

/// A scrape of ackgate's metrics endpoint at `addr` in the lab's gateway.
pub fn scrape_gw(lab: &lab::Lab, addr: &str) -> Vec<ackgate::telemetry::stats::Sample> {
    let a: std::net::SocketAddr = addr.parse().expect("metrics address");
    lab.gw
        .run(|| ackgate::telemetry::stats::scrape(a))
        .unwrap()
        .expect("metrics endpoint answers")
}

/// Scrapes until `done` holds of a scrape or `limit` passes, and returns
/// the last: a connection's counters are updated by its engine thread just
/// after the client has seen its end.
pub fn scrape_gw_until(
    lab: &lab::Lab,
    addr: &str,
    limit: std::time::Duration,
    done: impl Fn(&[ackgate::telemetry::stats::Sample]) -> bool,
) -> Vec<ackgate::telemetry::stats::Sample> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let m = scrape_gw(lab, addr);
        if done(&m) || std::time::Instant::now() >= deadline {
            return m;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sum of `name` over the series carrying `label` (all series if `None`).
pub fn metric(
    s: &[ackgate::telemetry::stats::Sample],
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    s.iter()
        .filter(|x| {
            x.name == name
                && label.is_none_or(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|x| x.value)
        .sum()
}

/// A kernel TCP connection from `local` (an address of the calling
/// thread's namespace; port 0 for any, or a fixed one, reusable at once).
pub fn connect_from(
    local: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _};
    let family = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    // SAFETY: the descriptor is ours; the stream owns it from here.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
    socket::connect(stream.as_raw_fd(), &SockaddrStorage::from(target))?;
    Ok(stream)
}

/// A responder in the lab's gateway protecting `services`, keyed with a
/// random secret, handing verified flows off, attached natively; with the
/// raw sender and the window scale a test's own handoff loop needs.
pub fn gateway_responder(
    lab: &lab::Lab,
    services: &[std::net::SocketAddr],
) -> (ackgate::xdp::Responder, ackgate::sys::raw::RawSender, u8) {
    use ackgate::xdp::{
        secret::{current_epoch, Secret},
        AttachMode, Responder, Settings,
    };
    let gw_if = lab.gw_if;
    lab.gw
        .run(move || -> anyhow::Result<_> {
            let settings = Settings::for_mtu(ackgate::sys::netdev::mtu(gw_if)?);
            let mut r = Responder::load()?;
            for s in services {
                r.add_service(*s)?;
            }
            r.install_keys(&Secret::random(), current_epoch(60), &settings)?;
            r.set_handoff(true)?;
            r.attach(gw_if, AttachMode::Native)?;
            Ok((r, ackgate::sys::raw::RawSender::new()?, settings.wscale))
        })
        .unwrap()
        .unwrap()
}
