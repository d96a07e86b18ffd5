//! Configuration: command-line flags and an equivalent TOML file
//! (`--config`), merged and validated once into a [`Plan`]. Unknown keys
//! are errors; flags given on the command line override the file; what
//! neither sets takes the default named below (the help texts quote the
//! same constants).

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    relay::proxyproto,
    xdp::{AttachMode, Settings},
};

/// Cookie epoch, seconds.
pub const EPOCH_SECS: u32 = 60;
pub const EPOCH_SECS_RANGE: RangeInclusive<u32> = 1..=86_400;
/// The MSS clamp's bounds (its default follows the interface's MTU).
pub const MSS_RANGE: RangeInclusive<u16> = 536..=65_495;
pub const STATS_INTERVAL_SECS: u64 = 10;
pub const MAX_CONNECTIONS: u64 = 10_000;
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=1_000_000;
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const CONNECT_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=600_000;
pub const BACKEND_BACKOFF_SECS: u64 = 5;
pub const IDLE_TIMEOUT_SECS: u64 = 300;
pub const IDLE_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=u64::MAX;
pub const GRACE_SECS: u64 = 10;
pub const LOG_LEVEL: &str = "info";

/// `ackgate run`'s flags.
#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// TOML file with the same settings (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface that receives the protected traffic.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Protected service, ADDR:PORT; IPv6 in brackets ([2001:db8::1]:443).
    /// Repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,
    /// Backend ADDR:PORT to proxy verified connections to; repeat for
    /// round-robin. ackgate verifies ACKs in XDP and owns the connections.
    /// Required unless --syn-only.
    #[arg(long = "backend", value_name = "ADDR:PORT", value_parser = parse_backend)]
    pub backends: Vec<SocketAddr>,
    /// Only answer SYNs, with no backends: for benchmarks and labs. No
    /// kernel listener can accept ackgate's cookies, so in front of a real
    /// server this takes the service down; hence it must be asked for.
    #[arg(long, conflicts_with = "backends")]
    pub syn_only: bool,
    /// A protected service (one of --listen) whose server speaks first
    /// (SSH, SMTP): its SYN-ACKs are retransmitted after 1, 3 and 7 s until
    /// the client's ACK arrives, as a kernel listener would; otherwise a
    /// client whose ACK was lost waits for a banner forever. Repeatable.
    #[arg(long = "server-first", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub server_first: Vec<SocketAddr>,
    /// File with the 128-bit master secret as 32 hex digits (mode 600).
    /// Instances sharing it accept each other's cookies. Random if omitted.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// XDP attach mode [default: native]. There is no silent fallback.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// PROXY protocol header sent to backends [default: off].
    #[arg(long, value_enum)]
    pub proxy_protocol: Option<proxyproto::Mode>,
    #[arg(long, help = format!(
        "Cookie epoch length in seconds, {}-{}: a cookie lives one epoch (clients \
         with timestamps) or one to two (without) [default: {EPOCH_SECS}]",
        EPOCH_SECS_RANGE.start(), EPOCH_SECS_RANGE.end()))]
    pub epoch_secs: Option<u32>,
    #[arg(long, help = format!(
        "MSS clamp for IPv4 SYN-ACKs, {}-{} (IPv6 gets 20 less) [default: MTU - 40]",
        MSS_RANGE.start(), MSS_RANGE.end()))]
    pub mss: Option<u16>,
    #[arg(long, help = format!(
        "Print counters every N seconds, 0 for only at exit [default: {STATS_INTERVAL_SECS}]"))]
    pub stats_interval: Option<u64>,
    #[arg(long, help = format!(
        "Most concurrent proxied connections, {}-{}; beyond, clients get a RST \
         [default: {MAX_CONNECTIONS}]",
        MAX_CONNECTIONS_RANGE.start(), MAX_CONNECTIONS_RANGE.end()))]
    pub max_connections: Option<u64>,
    #[arg(long, help = format!(
        "Backend connect timeout in milliseconds, {}-{} [default: {CONNECT_TIMEOUT_MS}]",
        CONNECT_TIMEOUT_MS_RANGE.start(), CONNECT_TIMEOUT_MS_RANGE.end()))]
    pub connect_timeout_ms: Option<u64>,
    #[arg(long, help = format!(
        "How long a refusing backend is skipped, seconds [default: {BACKEND_BACKOFF_SECS}]"))]
    pub backend_backoff_secs: Option<u64>,
    #[arg(long, help = format!(
        "Close a relay idle this many seconds, at least {} [default: {IDLE_TIMEOUT_SECS}]",
        IDLE_TIMEOUT_SECS_RANGE.start()))]
    pub idle_timeout_secs: Option<u64>,
    #[arg(long, help = format!(
        "On SIGTERM/SIGINT, how long running relays may finish, seconds [default: {GRACE_SECS}]"))]
    pub grace_secs: Option<u64>,
    /// Serve Prometheus metrics over HTTP on ADDR:PORT (any path, e.g.
    /// /metrics); `ackgate stats` reads them [default: off; the example
    /// config and `ackgate stats` use 127.0.0.1:9469].
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics)]
    pub metrics: Option<SocketAddr>,
    #[arg(long, value_name = "LEVEL", help = format!(
        "Log level: error, warn, info, debug (one line per refused or failed \
         flow) or trace; a tracing filter such as `ackgate=debug` also works. \
         The {} environment variable overrides it [default: {LOG_LEVEL}]",
        crate::telemetry::logging::ENV))]
    pub log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Driver (native) XDP: fastest; the interface must support it.
    Native,
    /// Generic XDP in the network stack: works on any interface, slower.
    Skb,
    /// No XDP: a plain listener (kernel SYN cookies) and the same proxy.
    /// Needs backends; the fallback for hosts without XDP.
    Off,
}

/// The TOML file. Every key is optional; unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub listen: Option<Vec<String>>,
    pub backends: Option<Vec<String>>,
    pub syn_only: Option<bool>,
    pub server_first: Option<Vec<String>>,
    pub secret_file: Option<PathBuf>,
    pub xdp_mode: Option<XdpModeArg>,
    pub proxy_protocol: Option<proxyproto::Mode>,
    pub epoch_secs: Option<u32>,
    pub mss: Option<u16>,
    pub stats_interval_secs: Option<u64>,
    /// Address for the Prometheus endpoint.
    pub metrics: Option<String>,
    pub log_level: Option<String>,
    pub limits: Option<Limits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub backend_backoff_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub grace_secs: Option<u64>,
}

/// One run, validated: flags over the file over the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub iface: String,
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    /// Answer SYNs only (no backends, ACKs go to the kernel).
    pub syn_only: bool,
    /// Services (among `listen`) whose SYN-ACKs are retransmitted.
    pub server_first: Vec<SocketAddr>,
    pub secret_file: Option<PathBuf>,
    /// `None`: `--xdp-mode off`.
    pub mode: Option<AttachMode>,
    pub proxy_protocol: proxyproto::Mode,
    pub epoch_secs: u32,
    pub mss: Option<u16>,
    pub stats_interval: Option<Duration>,
    pub metrics: Option<SocketAddr>,
    pub log_level: String,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub backend_backoff: Duration,
    pub idle_timeout: Duration,
    pub grace: Duration,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT (IPv6 addresses go in brackets: [::1]:443)")
    })?;
    if a.port() == 0 {
        return Err(format!("'{s}': port must be 1-65535"));
    }
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!(
            "'{s}': give a unicast address the clients connect to"
        ));
    }
    Ok(a)
}

pub fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT (IPv6 addresses go in brackets: [::1]:8080)")
    })?;
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(format!(
            "'{s}': give the backend's address and a port 1-65535"
        ));
    }
    Ok(a)
}

pub fn parse_metrics(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not ADDR:PORT (for example 127.0.0.1:9469)"))?;
    if a.port() == 0 {
        return Err(format!("'{s}': port must be 1-65535"));
    }
    Ok(a)
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: p.clone(),
            err,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: p, message })
    }

    /// Parses TOML; errors read "line N: what is wrong".
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {}", e.message())
            }
            None => e.message().to_string(),
        })
    }
}

fn addrs(
    key: &str,
    list: &[String],
    parse: fn(&str) -> Result<SocketAddr, String>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|e| ConfigError::Invalid(format!("config {key}[{i}]: {e}"))))
        .collect()
}

impl Plan {
    /// The plan for `ackgate run`'s flags and the file they name.
    pub fn from_args(a: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &a.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Self::resolve(a, &file)
    }

    /// Flags over file over defaults; every value is checked here, once.
    pub fn resolve(a: &RunArgs, f: &FileConfig) -> Result<Self, ConfigError> {
        let l = f.limits.as_ref();
        let iface = a.iface.clone().or_else(|| f.iface.clone()).ok_or_else(|| {
            ConfigError::Invalid("no interface: give --iface or `iface` in the config file".into())
        })?;
        let listen = if a.listen.is_empty() {
            addrs("listen", f.listen.as_deref().unwrap_or(&[]), parse_listen)?
        } else {
            a.listen.clone()
        };
        if listen.is_empty() {
            return Err(ConfigError::Invalid(
                "no protected service: give --listen ADDR:PORT or `listen = [...]` in the config file".into(),
            ));
        }
        let backends = if a.backends.is_empty() {
            addrs(
                "backends",
                f.backends.as_deref().unwrap_or(&[]),
                parse_backend,
            )?
        } else {
            a.backends.clone()
        };
        let syn_only = a.syn_only || f.syn_only.unwrap_or(false);
        match (syn_only, backends.is_empty()) {
            (false, true) => return Err(ConfigError::Invalid(
                "no backend: give --backend ADDR:PORT (or `backends = [...]` in the config file). \
                     To only answer SYNs, for a benchmark, give --syn-only: no kernel listener can \
                     accept ackgate's cookies, so without backends it takes a real service down"
                    .into(),
            )),
            (true, false) => return Err(ConfigError::Invalid(
                "syn_only and backends exclude each other: with --syn-only, ACKs go to the kernel"
                    .into(),
            )),
            _ => {}
        }
        let server_first = if a.server_first.is_empty() {
            addrs(
                "server_first",
                f.server_first.as_deref().unwrap_or(&[]),
                parse_listen,
            )?
        } else {
            a.server_first.clone()
        };
        if let Some(s) = server_first.iter().find(|s| !listen.contains(s)) {
            return Err(ConfigError::Invalid(format!(
                "server_first {s} is not one of the protected services (listen)"
            )));
        }
        let metrics = match (a.metrics, &f.metrics) {
            (Some(m), _) => Some(m),
            (None, Some(m)) => Some(
                parse_metrics(m)
                    .map_err(|e| ConfigError::Invalid(format!("config metrics: {e}")))?,
            ),
            (None, None) => None,
        };
        let log_level = a
            .log_level
            .clone()
            .or_else(|| f.log_level.clone())
            .unwrap_or_else(|| LOG_LEVEL.into());
        if let Err(e) = crate::telemetry::logging::filter(&log_level) {
            return Err(ConfigError::Invalid(format!(
                "log level '{log_level}': {e} (use error, warn, info, debug or trace)"
            )));
        }
        let epoch_secs = checked(
            "epoch_secs",
            a.epoch_secs.or(f.epoch_secs).unwrap_or(EPOCH_SECS),
            EPOCH_SECS_RANGE,
        )?;
        let mss = match a.mss.or(f.mss) {
            Some(m) => Some(checked("mss", m, MSS_RANGE)?),
            None => None,
        };
        let max_connections = checked(
            "max_connections",
            a.max_connections
                .or(l.and_then(|l| l.max_connections))
                .unwrap_or(MAX_CONNECTIONS),
            MAX_CONNECTIONS_RANGE,
        )?;
        let connect_ms = checked(
            "connect_timeout_ms",
            a.connect_timeout_ms
                .or(l.and_then(|l| l.connect_timeout_ms))
                .unwrap_or(CONNECT_TIMEOUT_MS),
            CONNECT_TIMEOUT_MS_RANGE,
        )?;
        let idle = checked(
            "idle_timeout_secs",
            a.idle_timeout_secs
                .or(l.and_then(|l| l.idle_timeout_secs))
                .unwrap_or(IDLE_TIMEOUT_SECS),
            IDLE_TIMEOUT_SECS_RANGE,
        )?;
        let backoff = a
            .backend_backoff_secs
            .or(l.and_then(|l| l.backend_backoff_secs))
            .unwrap_or(BACKEND_BACKOFF_SECS);
        let grace = a
            .grace_secs
            .or(l.and_then(|l| l.grace_secs))
            .unwrap_or(GRACE_SECS);
        let stats = a
            .stats_interval
            .or(f.stats_interval_secs)
            .unwrap_or(STATS_INTERVAL_SECS);
        let mode = match a.xdp_mode.or(f.xdp_mode).unwrap_or(XdpModeArg::Native) {
            XdpModeArg::Native => Some(AttachMode::Native),
            XdpModeArg::Skb => Some(AttachMode::Skb),
            XdpModeArg::Off if syn_only => {
                return Err(ConfigError::Invalid(
                    "--xdp-mode off needs --backend: without XDP, ackgate is only a proxy".into(),
                ))
            }
            XdpModeArg::Off => None,
        };
        Ok(Plan {
            iface,
            listen,
            backends,
            syn_only,
            server_first,
            secret_file: a.secret_file.clone().or_else(|| f.secret_file.clone()),
            mode,
            proxy_protocol: a.proxy_protocol.or(f.proxy_protocol).unwrap_or_default(),
            epoch_secs,
            mss,
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            metrics,
            log_level,
            max_connections: max_connections as usize,
            connect_timeout: Duration::from_millis(connect_ms),
            backend_backoff: Duration::from_secs(backoff),
            idle_timeout: Duration::from_secs(idle),
            grace: Duration::from_secs(grace),
        })
    }

    /// The SYN-ACK parameters for the interface: its MTU, the MSS clamp if
    /// one was given, and a timestamp cookie's lifetime of exactly one
    /// epoch (the epoch bits alone would allow one to two).
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        if nix::net::if_::if_nametoindex(self.iface.as_str()).is_err() {
            return Err(ConfigError::Invalid(format!(
                "no such interface: {}",
                self.iface
            )));
        }
        let mtu = crate::sys::netdev::mtu(&self.iface)
            .map_err(|e| ConfigError::Invalid(format!("interface {}: {e:#}", self.iface)))?;
        let mut s = Settings::for_mtu(mtu);
        if let Some(m) = self.mss {
            s.mss4 = m;
            s.mss6 = m.saturating_sub(20).max(1220);
        }
        s.ts_max_age_ms = self.epoch_secs.saturating_mul(1000);
        Ok(s)
    }
}

/// `v` if `range` holds it; else an error naming the key.
fn checked<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        return Ok(v);
    }
    Err(ConfigError::Invalid(format!(
        "{key} {v}: must be {}-{} (--{})",
        range.start(),
        range.end(),
        key.replace('_', "-")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/ackgate.toml");

    #[test]
    fn example_config_parses_and_resolves() {
        let f = FileConfig::parse(EXAMPLE).unwrap();
        let c = Plan::resolve(&RunArgs::default(), &f).unwrap();
        assert_eq!(c.iface, "eth0");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.proxy_protocol, proxyproto::Mode::V2);
        assert_eq!(c.max_connections, 20_000);
        assert_eq!(c.connect_timeout, Duration::from_millis(2000));
        assert_eq!(c.metrics, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let f = FileConfig::parse(
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\n[limits]\ngrace_secs = 3\n",
        )
        .unwrap();
        let a = RunArgs {
            iface: Some("eth1".into()),
            max_connections: Some(7),
            ..Default::default()
        };
        let c = Plan::resolve(&a, &f).unwrap();
        assert_eq!((c.iface.as_str(), c.max_connections), ("eth1", 7));
        assert_eq!(c.grace, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.mode, Some(AttachMode::Native));
        assert_eq!(c.proxy_protocol, proxyproto::Mode::Off);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = FileConfig::parse("iface = \"eth0\"\nlisten_addr = 1\n").unwrap_err();
        assert!(e.contains("unknown field `listen_addr`"), "{e}");
        let e = FileConfig::parse("[limits]\nmax_conns = 5\n").unwrap_err();
        assert!(e.contains("unknown field `max_conns`"), "{e}");
        let e = FileConfig::parse("xdp_mode = \"turbo\"\n").unwrap_err();
        assert!(e.contains("turbo"), "{e}");
        let f = FileConfig::parse(
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\", \"::1:80\"]\nsyn_only = true\n",
        )
        .unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen[1]") && e.contains("brackets"), "{e}");
        let f = FileConfig::parse("listen = [\"192.0.2.1:80\"]\nsyn_only = true\n").unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no interface"), "{e}");
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nxdp_mode = \"off\"\n",
        )
        .unwrap();
        assert!(Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string()
            .contains("needs --backend"));
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nmss = 100\n",
        )
        .unwrap();
        assert!(Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string()
            .contains("mss 100"));
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nmetrics = \"localhost\"\n",
        )
        .unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config metrics") && e.contains("ADDR:PORT"),
            "{e}"
        );
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nlog_level = \"loud[\"\n",
        )
        .unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("log level 'loud['"), "{e}");
    }

    #[test]
    fn syn_only_is_an_explicit_choice() {
        let f = FileConfig::parse("iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\n").unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no backend") && e.contains("--syn-only"), "{e}");
        let a = RunArgs {
            syn_only: true,
            ..Default::default()
        };
        assert!(Plan::resolve(&a, &f).unwrap().syn_only);
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nsyn_only = true\n",
        )
        .unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exclude each other"), "{e}");
    }

    #[test]
    fn server_first_services_must_be_protected_ones() {
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:22\", \"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nserver_first = [\"192.0.2.1:22\"]\n",
        )
        .unwrap();
        let c = Plan::resolve(&RunArgs::default(), &f).unwrap();
        assert_eq!(c.server_first, vec!["192.0.2.1:22".parse().unwrap()]);
        let f = FileConfig::parse(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nserver_first = [\"192.0.2.1:25\"]\n",
        )
        .unwrap();
        let e = Plan::resolve(&RunArgs::default(), &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("192.0.2.1:25") && e.contains("not one of"),
            "{e}"
        );
    }
}
