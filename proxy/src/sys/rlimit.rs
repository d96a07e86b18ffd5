//! The file descriptor limit: every relayed connection holds two
//! descriptors (client and backend), so `max_connections` decides what
//! RLIMIT_NOFILE must be. ackgate raises it (root may raise the hard limit
//! up to `fs.nr_open`) or refuses to start, rather than meeting EMFILE
//! under load.

use thiserror::Error;

/// Descriptors per relayed connection: the client's and the backend's.
pub const PER_CONNECTION: u64 = 2;
/// Descriptors beyond the relays: BPF maps and programs, the ring, raw
/// sockets, listeners, scrapes, logs and the runtime.
pub const RESERVE: u64 = 64;

#[derive(Debug, Error)]
#[error(
    "max_connections {max} needs {need} file descriptors ({PER_CONNECTION} per connection + \
     {RESERVE}); RLIMIT_NOFILE is {soft} (hard {hard}) and could not be raised ({err}): raise it \
     (LimitNOFILE= in the systemd unit, `ulimit -Hn` and `ulimit -n`) or lower max_connections"
)]
pub struct NofileError {
    max: usize,
    need: u64,
    soft: u64,
    hard: u64,
    err: std::io::Error,
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn set(r: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: `r` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the soft limit at least what `max_connections` needs (raising
/// the hard limit too if it must) and returns it; never lowers a limit.
pub fn ensure_nofile(max_connections: usize) -> Result<u64, NofileError> {
    let need = need(max_connections);
    let cur = get().map_err(|e| fail(max_connections, &zero(), e))?;
    if cur.rlim_cur >= need {
        return Ok(cur.rlim_cur);
    }
    let want = libc::rlimit {
        rlim_cur: need,
        rlim_max: cur.rlim_max.max(need),
    };
    set(&want).map_err(|e| fail(max_connections, &cur, e))?;
    Ok(need)
}

/// The connection limit when none was configured: `default`, or as many
/// as the descriptors this process can have allow (the soft limit raised
/// to the hard one), as HAProxy derives its maxconn. At least one.
pub fn fitting(default: usize) -> usize {
    if ensure_nofile(default).is_ok() {
        return default;
    }
    let Ok(cur) = get() else { return default };
    let _ = set(&libc::rlimit {
        rlim_cur: cur.rlim_max,
        rlim_max: cur.rlim_max,
    });
    let have = get().map_or(cur.rlim_cur, |r| r.rlim_cur);
    (have.saturating_sub(RESERVE) / PER_CONNECTION).clamp(1, default as u64) as usize
}

fn need(max_connections: usize) -> u64 {
    max_connections as u64 * PER_CONNECTION + RESERVE
}

fn zero() -> libc::rlimit {
    libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    }
}

fn fail(max: usize, r: &libc::rlimit, err: std::io::Error) -> NofileError {
    NofileError {
        max,
        need: need(max),
        soft: r.rlim_cur,
        hard: r.rlim_max,
        err,
    }
}
