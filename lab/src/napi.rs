//! Threaded NAPI on veth ends: a device's receive processing in its own
//! kernel threads (`napi/<dev>-<id>`), pinned to a chosen core, so a lab can
//! charge one core's time to one receiver and keep a flood's receive path
//! off the core of the generator (or of the clients).

use anyhow::{bail, Context as _, Result};

use crate::Netns;

/// Threaded NAPI on `ifname` (in `ns`), its threads pinned to `cpu`, and
/// their pids; `realtime` makes them SCHED_FIFO, so they preempt a
/// generator on their shared core: what they receive is absorbed as it
/// comes, never dropped because the generator kept the core. veth has NAPI
/// only while an XDP program is attached, and a re-attach makes new
/// threads: call after attaching. Threads are found by name, so only one
/// device of that name may exist on the machine at a time.
pub fn threaded(ns: &Netns, ifname: &str, cpu: usize, realtime: bool) -> Result<Vec<i32>> {
    ns.exec(&[
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{ifname}/threaded"),
    ])
    .with_context(|| format!("threaded NAPI on {ifname} (an XDP program attached?)"))?;
    let pids = napi_threads(ifname)?;
    if pids.is_empty() {
        bail!("no napi/{ifname} thread: threaded NAPI did not take on the veth");
    }
    for &pid in &pids {
        pin(pid, cpu).with_context(|| format!("pinning napi/{ifname} ({pid})"))?;
        if realtime {
            let p = libc::sched_param { sched_priority: 50 };
            // SAFETY: plain syscall on a pid with a valid parameter.
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &p) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("SCHED_FIFO for napi/{ifname} ({pid})"));
            }
        }
    }
    Ok(pids)
}

/// CPU time a thread has used, user and system, in clock ticks
/// (/proc/PID/stat fields 14 and 15).
pub fn thread_ticks(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command may hold spaces: fields resume after its ')'.
    let rest = s
        .rsplit_once(')')
        .map(|x| x.1)
        .context("unexpected /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, k): (u64, u64) = (f[11].parse()?, f[12].parse()?);
    Ok(u + k)
}

/// CPU time of several threads together, in clock ticks.
pub fn threads_ticks(pids: &[i32]) -> Result<u64> {
    pids.iter().map(|&p| thread_ticks(p)).sum()
}

/// Kernel threads named `napi/<ifname>-<id>`.
fn napi_threads(ifname: &str) -> Result<Vec<i32>> {
    let prefix = format!("napi/{ifname}-");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            if comm.trim_end().starts_with(&prefix) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)?;
    Ok(())
}
