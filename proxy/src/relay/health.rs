//! Active health checks: a service's `[service.health_check]` table, and
//! the task that checks one backend every interval.
//!
//! A check is a TCP connect (`kind = "tcp"`), or an HTTP/1.1 `GET` whose
//! status line must match `expect_status` (`kind = "http"`), all within
//! `timeout_ms`. `fall` failed checks in a row mark the backend down and
//! `rise` passed checks in a row mark it up again ([`RiseFall`]); a check
//! that fails for a local reason (see [`super::backends::is_local`]) counts
//! neither way. How the verdict combines with passive marking is described
//! in [`super::backends`].

use std::{io, net::SocketAddr, ops::RangeInclusive, sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::MissedTickBehavior,
};

use super::backends::{is_local, BackendState};

pub const DEFAULT_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// `http_path` when not given (HTTP checks only).
pub const DEFAULT_HTTP_PATH: &str = "/";
/// `expect_status` when not given (HTTP checks only): any 2xx or 3xx.
pub const DEFAULT_EXPECT_STATUS: &str = "2xx-3xx";

pub const INTERVAL_MS: RangeInclusive<u64> = 100..=3_600_000;
pub const TIMEOUT_MS: RangeInclusive<u64> = 10..=60_000;
/// For `rise` and `fall`.
pub const COUNT: RangeInclusive<u32> = 1..=100;
const MAX_PATH: usize = 1024;
const MAX_HOST: usize = 255;
const MAX_STATUS_ITEMS: usize = 16;

/// What a check does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// The backend accepts a TCP connection.
    #[default]
    Tcp,
    /// The backend answers `GET http_path` with a status in `expect_status`.
    Http,
}

impl CheckKind {
    pub fn label(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
        }
    }
}

/// `[service.health_check]`. Every key is optional; the `http_*` keys and
/// `expect_status` only go with `kind = "http"`.
///
/// `expect_status` is a comma-separated list of status codes (`"200"`),
/// classes (`"2xx"`) and inclusive ranges of either (`"200-299"`,
/// `"2xx-3xx"`), e.g. `"200,204,301-302"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// Default [`DEFAULT_HTTP_PATH`].
    pub http_path: Option<String>,
    /// The `Host` header; default the backend's `ADDR:PORT`.
    pub http_host: Option<String>,
    /// Default [`DEFAULT_EXPECT_STATUS`].
    pub expect_status: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            http_path: None,
            http_host: None,
            expect_status: None,
        }
    }
}

impl HealthCheck {
    /// Checks every value; the error names the key (`health_check.KEY`).
    pub fn validate(&self) -> Result<(), String> {
        self.checker().map(drop)
    }

    /// The validated check.
    pub(crate) fn checker(&self) -> Result<Checker, String> {
        in_range("interval_ms", self.interval_ms, INTERVAL_MS)?;
        in_range("timeout_ms", self.timeout_ms, TIMEOUT_MS)?;
        in_range("rise", self.rise, COUNT)?;
        in_range("fall", self.fall, COUNT)?;
        if self.kind == CheckKind::Tcp {
            for (key, set) in [
                ("http_path", self.http_path.is_some()),
                ("http_host", self.http_host.is_some()),
                ("expect_status", self.expect_status.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "health_check.{key}: only for kind = \"http\" (kind is \"tcp\")"
                    ));
                }
            }
        }
        let path = self.http_path.as_deref().unwrap_or(DEFAULT_HTTP_PATH);
        if !path.starts_with('/') || path.len() > MAX_PATH || !visible(path) {
            return Err(format!(
                "health_check.http_path {path:?}: must start with '/' and be at most {MAX_PATH} visible ASCII characters (no spaces)"
            ));
        }
        if let Some(host) = &self.http_host {
            if host.is_empty() || host.len() > MAX_HOST || !visible(host) {
                return Err(format!(
                    "health_check.http_host {host:?}: must be 1-{MAX_HOST} visible ASCII characters (no spaces)"
                ));
            }
        }
        let status = self
            .expect_status
            .as_deref()
            .unwrap_or(DEFAULT_EXPECT_STATUS);
        let expect = StatusSet::parse(status).ok_or_else(|| {
            format!(
                "health_check.expect_status {status:?}: must be up to {MAX_STATUS_ITEMS} comma-separated codes (200), classes (2xx) or ranges (200-299, 2xx-3xx) within 100-599"
            )
        })?;
        Ok(Checker {
            kind: self.kind,
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            rise: self.rise,
            fall: self.fall,
            path: path.to_string(),
            host: self.http_host.clone(),
            expect,
        })
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    range: RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "health_check.{key} {v}: must be {}-{}",
            range.start(),
            range.end()
        ))
    }
}

/// Printable ASCII without spaces: nothing that could end a request line
/// or a header.
fn visible(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// HTTP status codes a check accepts: inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSet(Vec<RangeInclusive<u16>>);

impl StatusSet {
    /// `"200,204,3xx,400-404"`; `None` if malformed or outside 100-599.
    pub fn parse(s: &str) -> Option<StatusSet> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        if items.len() > MAX_STATUS_ITEMS {
            return None;
        }
        let bound = |b: &str| -> Option<RangeInclusive<u16>> {
            let b = b.trim();
            if let Some(class) = b.strip_suffix("xx").or_else(|| b.strip_suffix("XX")) {
                let d: u16 = match class.as_bytes() {
                    [d @ b'1'..=b'5'] => u16::from(d - b'0'),
                    _ => return None,
                };
                return Some(d * 100..=d * 100 + 99);
            }
            if b.len() != 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let code: u16 = b.parse().ok()?;
            (100..=599).contains(&code).then_some(code..=code)
        };
        items
            .into_iter()
            .map(|item| {
                let (lo, hi) = match item.split_once('-') {
                    Some((lo, hi)) => (bound(lo)?, bound(hi)?),
                    None => (bound(item)?, bound(item)?),
                };
                (lo.start() <= hi.end()).then(|| *lo.start()..=*hi.end())
            })
            .collect::<Option<Vec<_>>>()
            .map(StatusSet)
    }

    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|r| r.contains(&code))
    }
}

/// The status code of an HTTP/1.x response's status line
/// (`HTTP/1.1 200 OK`), from the response's first bytes.
pub fn parse_status_line(b: &[u8]) -> Option<u16> {
    match b {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', v, b' ', d @ ..]
            if v.is_ascii_digit()
                && d.len() >= 3
                && d[..3].iter().all(u8::is_ascii_digit)
                && d.get(3).is_none_or(|&c| c == b' ' || c == b'\r') =>
        {
            let code = d[..3]
                .iter()
                .fold(0u16, |n, &c| n * 10 + u16::from(c - b'0'));
            (100..=599).contains(&code).then_some(code)
        }
        _ => None,
    }
}

/// Rise/fall counting: `fall` failures in a row take an up backend down,
/// `rise` successes in a row bring a down one up; anything else resets the
/// streak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl RiseFall {
    /// Starts `up` or down; counts below 1 count as 1.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check's result; returns the new state when this check
    /// changed it.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// A validated [`HealthCheck`].
#[derive(Clone, Debug)]
pub struct Checker {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    path: String,
    host: Option<String>,
    expect: StatusSet,
}

/// One check's result.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// The backend failed it: why.
    Failed(String),
    /// It failed for a reason of ours (no file descriptors, ports, memory).
    Local(io::Error),
}

impl Outcome {
    /// Label of `ackgate_backend_health_checks_total`'s `result`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Local(_) => "local",
        }
    }
}

/// Why a check attempt failed before the timeout.
enum Failure {
    Io(io::Error),
    Status(u16),
    NoStatusLine,
}

impl Checker {
    /// The request an HTTP check sends to `addr`.
    fn request(&self, addr: SocketAddr) -> Vec<u8> {
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ackgate-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path,
            env!("CARGO_PKG_VERSION"),
        )
        .into_bytes()
    }

    /// Checks `addr` once, within the timeout.
    pub async fn check(&self, addr: SocketAddr) -> Outcome {
        match tokio::time::timeout(self.timeout, self.attempt(addr)).await {
            Err(_) => Outcome::Failed(format!("timed out after {:?}", self.timeout)),
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(Failure::Io(e))) if is_local(&e) => Outcome::Local(e),
            Ok(Err(Failure::Io(e))) => Outcome::Failed(e.to_string()),
            Ok(Err(Failure::Status(s))) => {
                Outcome::Failed(format!("status {s}, expected {:?}", self.expect.0))
            }
            Ok(Err(Failure::NoStatusLine)) => Outcome::Failed("no HTTP status line".into()),
        }
    }

    async fn attempt(&self, addr: SocketAddr) -> Result<(), Failure> {
        let mut s = TcpStream::connect(addr).await.map_err(Failure::Io)?;
        if self.kind == CheckKind::Tcp {
            return Ok(());
        }
        s.write_all(&self.request(addr))
            .await
            .map_err(Failure::Io)?;
        // "HTTP/1.1 200 " is all that is needed.
        let mut buf = [0u8; 13];
        let mut n = 0;
        while n < buf.len() {
            match s.read(&mut buf[n..]).await.map_err(Failure::Io)? {
                0 => break,
                k => n += k,
            }
        }
        let status = parse_status_line(&buf[..n]).ok_or(Failure::NoStatusLine)?;
        if self.expect.contains(status) {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    }
}

/// Checks `state`'s backend every interval, after `first` (spreading a
/// service's checks over the interval), until aborted.
pub(crate) async fn run(checker: Arc<Checker>, state: Arc<BackendState>, first: Duration) {
    tokio::time::sleep(first).await;
    let mut tick = tokio::time::interval(checker.interval);
    // A check that overran its interval delays the next; checks never
    // come closer together than the interval.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut machine = RiseFall::new(checker.rise, checker.fall, state.checks_up());
    loop {
        tick.tick().await;
        let outcome = checker.check(state.addr).await;
        state.health_checked(&checker, &mut machine, &outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HealthCheck, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_named_constants_and_valid() {
        let h = parse("").unwrap();
        assert_eq!(h, HealthCheck::default());
        assert_eq!(h.kind, CheckKind::Tcp);
        assert_eq!(h.interval_ms, DEFAULT_INTERVAL_MS);
        assert_eq!(h.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!((h.rise, h.fall), (DEFAULT_RISE, DEFAULT_FALL));
        let c = h.checker().unwrap();
        assert_eq!(c.interval, Duration::from_millis(2000));
        assert_eq!(c.path, "/");
        assert!(c.expect.contains(200) && c.expect.contains(399));
        assert!(!c.expect.contains(199) && !c.expect.contains(400));
    }

    #[test]
    fn a_full_http_table_parses() {
        let h = parse(
            "kind = \"http\"\ninterval_ms = 500\ntimeout_ms = 200\nrise = 1\nfall = 5\n\
             http_path = \"/healthz?full=1\"\nhttp_host = \"www.example.com\"\nexpect_status = \"200,204\"\n",
        )
        .unwrap();
        let c = h.checker().unwrap();
        assert_eq!(c.kind, CheckKind::Http);
        assert_eq!((c.rise, c.fall), (1, 5));
        let addr: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        let req = String::from_utf8(c.request(addr)).unwrap();
        assert!(
            req.starts_with("GET /healthz?full=1 HTTP/1.1\r\nHost: www.example.com\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
        let plain = parse("kind = \"http\"").unwrap().checker().unwrap();
        let req = String::from_utf8(plain.request(addr)).unwrap();
        assert!(
            req.starts_with("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n"),
            "{req}"
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        assert!(parse("interval = 5").unwrap_err().contains("unknown field"));
        assert!(parse("kind = \"icmp\"")
            .unwrap_err()
            .contains("unknown variant"));
        assert!(parse("rise = -1").is_err());
    }

    #[test]
    fn every_value_is_range_checked_and_the_error_names_the_key() {
        let http = || HealthCheck {
            kind: CheckKind::Http,
            ..HealthCheck::default()
        };
        let cases: Vec<(HealthCheck, &str)> = vec![
            (
                HealthCheck {
                    interval_ms: 0,
                    ..HealthCheck::default()
                },
                "health_check.interval_ms 0: must be 100-3600000",
            ),
            (
                HealthCheck {
                    interval_ms: 3_600_001,
                    ..HealthCheck::default()
                },
                "health_check.interval_ms 3600001: must be 100-3600000",
            ),
            (
                HealthCheck {
                    timeout_ms: 9,
                    ..HealthCheck::default()
                },
                "health_check.timeout_ms 9: must be 10-60000",
            ),
            (
                HealthCheck {
                    timeout_ms: u64::MAX,
                    ..HealthCheck::default()
                },
                "health_check.timeout_ms 18446744073709551615: must be 10-60000",
            ),
            (
                HealthCheck {
                    rise: 0,
                    ..HealthCheck::default()
                },
                "health_check.rise 0: must be 1-100",
            ),
            (
                HealthCheck {
                    fall: 101,
                    ..HealthCheck::default()
                },
                "health_check.fall 101: must be 1-100",
            ),
            (
                HealthCheck {
                    http_path: Some("/x".into()),
                    ..HealthCheck::default()
                },
                "health_check.http_path: only for kind = \"http\"",
            ),
            (
                HealthCheck {
                    expect_status: Some("200".into()),
                    ..HealthCheck::default()
                },
                "health_check.expect_status: only for kind = \"http\"",
            ),
            (
                HealthCheck {
                    http_path: Some("healthz".into()),
                    ..http()
                },
                "health_check.http_path \"healthz\": must start with '/'",
            ),
            (
                HealthCheck {
                    http_path: Some("/a b".into()),
                    ..http()
                },
                "health_check.http_path \"/a b\"",
            ),
            (
                HealthCheck {
                    http_path: Some(format!("/{}", "a".repeat(MAX_PATH))),
                    ..http()
                },
                "health_check.http_path",
            ),
            (
                HealthCheck {
                    http_host: Some("a\r\nX-Injected: 1".into()),
                    ..http()
                },
                "health_check.http_host \"a\\r\\nX-Injected: 1\": must be 1-255",
            ),
            (
                HealthCheck {
                    http_host: Some(String::new()),
                    ..http()
                },
                "health_check.http_host \"\"",
            ),
            (
                HealthCheck {
                    expect_status: Some("600".into()),
                    ..http()
                },
                "health_check.expect_status \"600\": must be",
            ),
        ];
        for (h, want) in cases {
            let e = h.validate().unwrap_err();
            assert!(e.starts_with(want), "{h:?}: {e}");
        }
    }

    #[test]
    fn expect_status_forms() {
        let s = |t: &str| StatusSet::parse(t);
        let set = s("200,204, 3xx ,400-404").unwrap();
        for code in [200, 204, 300, 350, 399, 400, 402, 404] {
            assert!(set.contains(code), "{code}");
        }
        for code in [201, 203, 299, 405, 500] {
            assert!(!set.contains(code), "{code}");
        }
        let classes = s("2xx-3xx").unwrap();
        assert!(classes.contains(200) && classes.contains(399) && !classes.contains(400));
        assert_eq!(s("5XX"), Some(StatusSet(vec![500..=599])));
        for bad in [
            "", "2xx-", "-200", "200-199", "4xx-3xx", "6xx", "0xx", "099", "600", "20", "2000",
            "abc", "200,,204", "+200", "1,2",
        ] {
            assert_eq!(s(bad), None, "{bad:?}");
        }
        let many = vec!["200"; MAX_STATUS_ITEMS + 1].join(",");
        assert_eq!(s(&many), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Some(204));
        for bad in [
            &b""[..],
            b"HTTP/1.1 20",
            b"HTTP/2 200 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 099 x",
            b"HTTP/1.1 abc",
            b"SSH-2.0-OpenSSH",
            b"http/1.1 200 OK",
        ] {
            assert_eq!(parse_status_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rise_and_fall_need_that_many_in_a_row() {
        let mut m = RiseFall::new(2, 3, true);
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(false), None);
        // A success in between starts the count again.
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(false), None);
        assert!(m.is_up());
        assert_eq!(m.record(false), Some(false));
        assert!(!m.is_up());
        // Further failures change nothing.
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(true), Some(true));
        assert!(m.is_up());
        assert_eq!(m.record(true), None);

        let mut once = RiseFall::new(1, 1, false);
        assert_eq!(once.record(false), None);
        assert_eq!(once.record(true), Some(true));
        assert_eq!(once.record(false), Some(false));
        // Counts of 0 behave as 1, never as "never".
        let mut zero = RiseFall::new(0, 0, true);
        assert_eq!(zero.record(false), Some(false));
        assert_eq!(zero.record(true), Some(true));
    }
}
