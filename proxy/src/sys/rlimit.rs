//! The file descriptor limit: every relayed connection holds two
//! descriptors (client and backend) and the relay's pooled pipes two each,
//! so `max_connections` and the pipe pool decide what RLIMIT_NOFILE must be. ackgate raises it (root may raise the hard limit
//! up to `fs.nr_open`) or refuses to start, rather than meeting EMFILE
//! under load.

use thiserror::Error;

/// Descriptors per relayed connection: the client's and the backend's.
pub const PER_CONNECTION: u64 = 2;
/// Descriptors per pooled pipe (its two ends).
pub const PER_PIPE: u64 = 2;
/// Pooled pipes by default: one per this many connections (only relays
/// moving data at that moment hold one)...
pub const CONNECTIONS_PER_PIPE: usize = 4;
/// ...and at most this many: 64 KiB of pipe pages each, well inside the
/// 64 MiB `fs.pipe-user-pages-soft` gives a user by default.
pub const MAX_DEFAULT_PIPES: usize = 256;
/// Descriptors beyond the relays: BPF maps and programs, the ring, raw
/// sockets, listeners, scrapes, logs and the runtime.
pub const RESERVE: u64 = 64;

#[derive(Debug, Error)]
#[error(
    "max_connections {max} needs {need} file descriptors ({PER_CONNECTION} per connection, \
     {PER_PIPE} per pipe of {pipes}, {RESERVE} more); RLIMIT_NOFILE is {soft} (hard {hard}) and could not be raised ({err}): raise it \
     (LimitNOFILE= in the systemd unit, `ulimit -Hn` and `ulimit -n`) or lower max_connections"
)]
pub struct NofileError {
    max: usize,
    pipes: usize,
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

/// The pipe pool's default size for `max_connections`.
pub fn default_pipes(max_connections: usize) -> usize {
    (max_connections / CONNECTIONS_PER_PIPE).min(MAX_DEFAULT_PIPES)
}

/// Makes the soft limit at least what `max_connections` relays and
/// `pipes` pooled pipes need (raising the hard limit too if it must) and
/// returns it; never lowers a limit.
pub fn ensure_nofile(max_connections: usize, pipes: usize) -> Result<u64, NofileError> {
    let need = need(max_connections, pipes);
    let cur = get().map_err(|e| fail(max_connections, pipes, &zero(), e))?;
    if cur.rlim_cur >= need {
        return Ok(cur.rlim_cur);
    }
    let want = libc::rlimit {
        rlim_cur: need,
        rlim_max: cur.rlim_max.max(need),
    };
    set(&want).map_err(|e| fail(max_connections, pipes, &cur, e))?;
    Ok(need)
}

/// The connection limit when none was configured: `default`, or as many
/// as the descriptors this process can have allow (the soft limit raised
/// to the hard one), as HAProxy derives its maxconn. At least one.
/// `pipes` is the configured pool, or `None` for [`default_pipes`].
pub fn fitting(default: usize, pipes: Option<usize>) -> usize {
    let pool = |max| pipes.unwrap_or_else(|| default_pipes(max));
    if ensure_nofile(default, pool(default)).is_ok() {
        return default;
    }
    let Ok(cur) = get() else { return default };
    let _ = set(&libc::rlimit {
        rlim_cur: cur.rlim_max,
        rlim_max: cur.rlim_max,
    });
    let have = get().map_or(cur.rlim_cur, |r| r.rlim_cur);
    let mut fit = (have.saturating_sub(RESERVE) / PER_CONNECTION).clamp(1, default as u64) as usize;
    while fit > 1 && need(fit, pool(fit)) > have {
        fit -= 1;
    }
    fit
}

fn need(max_connections: usize, pipes: usize) -> u64 {
    max_connections as u64 * PER_CONNECTION + pipes as u64 * PER_PIPE + RESERVE
}

fn zero() -> libc::rlimit {
    libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    }
}

fn fail(max: usize, pipes: usize, r: &libc::rlimit, err: std::io::Error) -> NofileError {
    NofileError {
        max,
        pipes,
        need: need(max, pipes),
        soft: r.rlim_cur,
        hard: r.rlim_max,
        err,
    }
}
