//! One guard for every process a lab starts (ackgate, nginx, HAProxy):
//! its output is collected line by line, it can be waited on for a line,
//! stopped with SIGTERM, and it is killed on drop, also when a test fails.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use nix::sys::signal::{kill, Signal};

/// A running child process.
pub struct Process {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Output lines taken so far (stdout and stderr interleaved).
    pub output: Vec<String>,
}

impl Process {
    /// Starts `cmd` in a process group of its own, collecting its stdout
    /// and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        unblock_signals(&mut cmd);
        // Dropping kills the whole group: a server's workers (nginx's)
        // would outlive a killed master and keep running.
        cmd.process_group(0);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let (tx, rx) = mpsc::channel();
        let out = child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>);
        for r in [out, err].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Ok(Process {
            name: name.to_string(),
            child,
            lines: rx,
            output: Vec::new(),
        })
    }

    /// [`Process::spawn`], then waits (up to `timeout`) for a line
    /// containing `ready`.
    pub fn start(name: &str, cmd: Command, ready: &str, timeout: Duration) -> Result<Self> {
        let mut p = Self::spawn(name, cmd)?;
        p.wait_for(ready, timeout)?;
        Ok(p)
    }

    /// Waits (up to `timeout`) for an output line containing `text`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(text);
                    self.output.push(l);
                    if hit {
                        return Ok(());
                    }
                }
                Err(_) => bail!(
                    "{}: no '{text}' within {timeout:?}; output: {:?}",
                    self.name,
                    self.output
                ),
            }
        }
    }

    /// Takes the output lines that arrived so far.
    pub fn collect(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.output.push(l);
        }
    }

    /// Fails, with the last lines of output, if the process has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            self.collect();
            let tail = &self.output[self.output.len().saturating_sub(5)..];
            bail!("{} exited ({s}): {}", self.name, tail.join(" | "));
        }
        Ok(())
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Sends SIGTERM, waits for the exit (up to `timeout`) and returns the
    /// status and all output.
    pub fn stop(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        // It may have exited already (after an earlier SIGTERM).
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?} of SIGTERM",
                self.name
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

impl Drop for Process {
    fn drop(&mut self) {
        let _ = kill(
            nix::unistd::Pid::from_raw(-(self.child.id() as i32)),
            Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Children inherit the signal mask through exec; a harness that blocks
/// SIGINT/SIGTERM to take them on a thread must not pass that on, or its
/// children would ignore SIGTERM.
pub fn unblock_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// A binary of this workspace built beside the running one (a test binary
/// runs from `target/<profile>/deps`, the bench and the demo from
/// `target/<profile>`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe.parent().context("no directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let bin = d.join(name);
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "{name} not found beside {}: build it first (cargo build --release --bins), as scripts/test.sh does",
        exe.display()
    )
}
