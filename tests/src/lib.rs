//! Helpers for ackgate's privileged tests. These tests need root (they load
//! XDP programs and build network namespaces); without it they fail with a
//! clear message rather than skip.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub use ackgate::lab;

/// Panics unless running as root: privileged tests never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads XDP programs and creates network namespaces: run it as root (CI does)"
    );
}

/// Path of the `ackgate` binary built next to this test binary.
pub fn ackgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("ackgate");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release --bins), as scripts/test.sh does",
        bin.display()
    );
    bin
}

/// A running `ackgate` process; killed on drop so a failing test cleans up.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub output: Vec<String>,
}

impl Running {
    /// Starts `cmd` and waits (up to `timeout`) for a stdout line containing
    /// `ready`.
    pub fn start(mut cmd: Command, ready: &str, timeout: Duration) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let mut run = Running {
            child,
            lines: rx,
            output: Vec::new(),
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match run.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(ready);
                    run.output.push(l);
                    if hit {
                        return Ok(run);
                    }
                }
                Err(_) => {
                    anyhow::bail!("no '{ready}' within {timeout:?}; output: {:?}", run.output)
                }
            }
        }
    }

    /// Sends SIGTERM, waits for exit (up to `timeout`) and returns all output.
    /// Waits (up to `timeout`) for an output line containing `text`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(text);
                    self.output.push(l);
                    if hit {
                        return Ok(());
                    }
                }
                Err(_) => {
                    anyhow::bail!("no '{text}' within {timeout:?}; output: {:?}", self.output)
                }
            }
        }
    }

    pub fn stop(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // It may have exited already (after an earlier SIGTERM).
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "ackgate did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Drain what the reader threads still hold.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.output.push(l);
        }
        Ok((status, std::mem::take(&mut self.output)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
/// `ready`.
pub fn run_ackgate_until(lab: &lab::Lab, args: &[&str], ready: &str) -> Running {
    let mut cmd = lab.gw.command(ackgate_bin().to_str().unwrap());
    cmd.args(["run", "--iface", lab.gw_if, "--stats-interval", "0"])
        .args(args);
    Running::start(cmd, ready, Duration::from_secs(30)).expect("ackgate starts")
}

/// [`run_ackgate_until`] the XDP program is attached.
pub fn run_ackgate(lab: &lab::Lab, args: &[&str]) -> Running {
    run_ackgate_until(lab, args, "attached to")
}

/// Sets the flag when dropped, also while unwinding from a failed assertion,
/// so a backend thread watching it ends and its scope can return the failure.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Echo backend: every accepted connection echoes until EOF, on its own
/// thread, until `stop` is set.
pub fn echo_server(l: std::net::TcpListener, stop: &std::sync::atomic::AtomicBool) {
    use std::{
        io::{Read as _, Write as _},
        os::fd::AsRawFd as _,
        sync::atomic::Ordering,
    };
    // std's backlog of 128 overflows when 200 clients arrive at once, and a
    // dropped backend SYN outlasts the proxy's connect timeout.
    // SAFETY: listen(2) again on a listening socket only resizes its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 4096) }, 0);
    l.set_nonblocking(true).unwrap();
    std::thread::scope(|sc| {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    sc.spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                        let mut buf = vec![0u8; 256 * 1024];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
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
        .run(|| ackgate::responder::PassProgram::attach("cli0"))
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
pub fn scrape_gw(lab: &lab::Lab, addr: &str) -> Vec<ackgate::stats::Sample> {
    let a: std::net::SocketAddr = addr.parse().expect("metrics address");
    lab.gw
        .run(|| ackgate::stats::scrape(a))
        .unwrap()
        .expect("metrics endpoint answers")
}

/// Sum of `name` over the series carrying `label` (all series if `None`).
pub fn metric(s: &[ackgate::stats::Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    s.iter()
        .filter(|x| {
            x.name == name
                && label.is_none_or(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|x| x.value)
        .sum()
}
