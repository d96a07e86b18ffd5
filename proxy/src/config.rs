//! Configuration: command-line flags and an equivalent TOML file
//! (`--config`), merged and validated once into a [`Plan`]. Unknown keys
//! are errors; flags given on the command line override the file; what
//! neither sets takes the default named below (the help texts quote the
//! same constants).
//!
//! A file describes services (`[[service]]`: a name, protected ADDR:PORTs,
//! backends, PROXY protocol, limits); the flags, or a file's top-level
//! `listen`/`backends`, are the shorthand for one service, `default`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    ops::RangeInclusive,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    relay::{health::HealthCheck, proxyproto},
    xdp::{AccessList, AttachMode, Cidr, Settings},
};

/// Cookie epoch, seconds.
pub const EPOCH_SECS: u32 = 60;
pub const EPOCH_SECS_RANGE: RangeInclusive<u32> = 1..=86_400;
/// The MSS clamp's bounds (its default follows the interface's MTU).
pub const MSS_RANGE: RangeInclusive<u16> = 536..=65_495;
pub const STATS_INTERVAL_SECS: u64 = 10;
pub const STATS_INTERVAL_SECS_RANGE: RangeInclusive<u64> = 0..=86_400;
pub const MAX_CONNECTIONS: u64 = 10_000;
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=1_000_000;
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const CONNECT_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=600_000;
pub const BACKEND_BACKOFF_SECS: u64 = 5;
pub const BACKEND_BACKOFF_SECS_RANGE: RangeInclusive<u64> = 0..=86_400;
pub const IDLE_TIMEOUT_SECS: u64 = 300;
/// A week: long-lived relays (SSH, WebSockets) without an overflow.
pub const IDLE_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=604_800;
pub const GRACE_SECS: u64 = 10;
pub const GRACE_SECS_RANGE: RangeInclusive<u64> = 0..=86_400;
/// Concurrent connections one source (address, or IPv6 prefix) may hold
/// per service: one host cannot take every slot.
pub const PER_SOURCE_MAX: u64 = 1_000;
pub const PER_SOURCE_MAX_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// New connections per second one source may open per service (0: no
/// limit, the default: NATs put many users behind one address).
pub const PER_SOURCE_RATE: u64 = 0;
pub const PER_SOURCE_RATE_RANGE: RangeInclusive<u64> = 0..=1_000_000;
/// How long a verified client of a client-first service may stay silent
/// before it is reset; its backend is only connected once it speaks.
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
pub const FIRST_BYTE_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=3_600_000;
/// Sources are counted per address (IPv4) and per /64 (IPv6), as one host
/// typically holds a whole /64.
pub const SOURCE_PREFIX_V4: u8 = 32;
pub const SOURCE_PREFIX_V4_RANGE: RangeInclusive<u8> = 8..=32;
pub const SOURCE_PREFIX_V6: u8 = 64;
pub const SOURCE_PREFIX_V6_RANGE: RangeInclusive<u8> = 16..=128;
/// A backend's share of new connections relative to the others'.
pub const WEIGHT: u32 = 1;
pub const WEIGHT_RANGE: RangeInclusive<u32> = 1..=1_000;
pub const LOG_LEVEL: &str = "info";
/// The name of the service the flags (or a file's top-level keys) describe.
pub const DEFAULT_SERVICE: &str = "default";
/// Interfaces one instance protects at most.
pub const MAX_INTERFACES: usize = 8;
/// Engine threads at most (the default is one per core).
pub const THREADS_RANGE: RangeInclusive<u64> = 1..=256;
/// Pipes the zero-copy relay may pool (0: copy every byte through
/// userspace); the default follows max_connections
/// ([`crate::sys::rlimit::default_pipes`]).
pub const SPLICE_PIPES_RANGE: RangeInclusive<u64> = 0..=65_536;

/// `ackgate run`'s flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML file with the same settings (flags override it), and services.
    /// SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface that receives the protected traffic; repeat for several.
    #[arg(long = "iface", value_name = "IF")]
    pub iface: Vec<String>,
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
    /// Answer SYNs only from this network (CIDR, e.g. 10.0.0.0/8 or
    /// 2001:db8::/32; repeatable): with any --allow, everyone else is
    /// refused in XDP. The longest matching prefix of --allow and --deny
    /// decides. Applies to every service.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Drop SYNs from this network in XDP, before any cookie work
    /// (repeatable). Applies to every service.
    #[arg(long = "deny", value_name = "CIDR")]
    pub deny: Vec<Cidr>,
    /// File with the 128-bit master secret as 32 hex digits (mode 600).
    /// Instances sharing it accept each other's cookies. Random if omitted.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// XDP attach mode [default: native]. There is no silent fallback.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Unix socket (mode 600) a new ackgate uses to take over from this
    /// one (see --takeover); off by default.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Take over from the ackgate running on --control-socket without
    /// dropping a connection (an upgrade): the XDP links pass to this
    /// process atomically, the old one drains and exits. With no instance
    /// on the socket, start as usual. Needs CAP_SYS_ADMIN.
    #[arg(long)]
    pub takeover: bool,
    /// Write the process id here once running (removed at exit), for
    /// `ackgate reload --pid-file`.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// How verified flows become sockets: `io_uring` submits each flow's
    /// materialization (socket, TCP_REPAIR options, bind, connect, window
    /// update) as linked operations, many flows per system call; `tokio`
    /// makes ~15 system calls per flow. `auto` takes io_uring when the
    /// kernel allows it (kernel.io_uring_disabled, seccomp) and says which
    /// runs; an explicit io_uring that the kernel refuses is an error.
    /// Both relay with splice(2) [default: auto].
    #[arg(long, value_enum, env = "ACKGATE_ENGINE")]
    pub engine: Option<EngineArg>,
    #[arg(long, help = format!(
        "Engine threads, {}-{}: relays and handoffs are spread across them \
         [default: one per core]",
        THREADS_RANGE.start(), THREADS_RANGE.end()))]
    pub threads: Option<u64>,
    /// PROXY protocol header sent to backends [default: off].
    #[arg(long, value_enum)]
    pub proxy_protocol: Option<proxyproto::Mode>,
    #[arg(long, help = format!(
        "Cookie epoch length in seconds, {}-{}: a cookie lives one epoch (clients \
         with timestamps) or one to two (without) [default: {EPOCH_SECS}]",
        EPOCH_SECS_RANGE.start(), EPOCH_SECS_RANGE.end()))]
    pub epoch_secs: Option<u32>,
    #[arg(long, help = format!(
        "MSS clamp for IPv4 SYN-ACKs, {}-{} (IPv6 gets 20 less) [default: the \
         smallest interface MTU - 40]",
        MSS_RANGE.start(), MSS_RANGE.end()))]
    pub mss: Option<u16>,
    #[arg(long, help = format!(
        "Print counters every N seconds, 0 for only at exit [default: {STATS_INTERVAL_SECS}]"))]
    pub stats_interval: Option<u64>,
    #[arg(long, help = format!(
        "Most concurrent proxied connections of the whole instance, {}-{}; beyond, \
         clients get a RST [default: {MAX_CONNECTIONS}]",
        MAX_CONNECTIONS_RANGE.start(), MAX_CONNECTIONS_RANGE.end()))]
    pub max_connections: Option<u64>,
    #[arg(long, help = format!(
        "Pipes the relay may pool to move bytes with splice(2), never copying them \
         through userspace, {}-{}; 0 copies every byte. A relay holds one only while \
         bytes move [default: one per {} connections, at most {}]",
        SPLICE_PIPES_RANGE.start(), SPLICE_PIPES_RANGE.end(),
        crate::sys::rlimit::CONNECTIONS_PER_PIPE, crate::sys::rlimit::MAX_DEFAULT_PIPES))]
    pub splice_pipes: Option<u64>,
    #[arg(long, help = format!(
        "Backend connect timeout in milliseconds, {}-{} [default: {CONNECT_TIMEOUT_MS}]",
        CONNECT_TIMEOUT_MS_RANGE.start(), CONNECT_TIMEOUT_MS_RANGE.end()))]
    pub connect_timeout_ms: Option<u64>,
    #[arg(long, help = format!(
        "How long a refusing backend is skipped, seconds, {}-{} [default: {BACKEND_BACKOFF_SECS}]",
        BACKEND_BACKOFF_SECS_RANGE.start(), BACKEND_BACKOFF_SECS_RANGE.end()))]
    pub backend_backoff_secs: Option<u64>,
    #[arg(long, help = format!(
        "Close a relay idle this many seconds, {}-{} [default: {IDLE_TIMEOUT_SECS}]",
        IDLE_TIMEOUT_SECS_RANGE.start(), IDLE_TIMEOUT_SECS_RANGE.end()))]
    pub idle_timeout_secs: Option<u64>,
    #[arg(long, help = format!(
        "Most concurrent connections per source address (IPv6: per --source-prefix-v6) \
         and service, {}-{}; beyond, clients get a RST [default: {PER_SOURCE_MAX}]",
        PER_SOURCE_MAX_RANGE.start(), PER_SOURCE_MAX_RANGE.end()))]
    pub per_source_max: Option<u64>,
    #[arg(long, help = format!(
        "Most new connections per second per source and service, {}-{}, 0 for no \
         limit; beyond, clients get a RST [default: {PER_SOURCE_RATE}]",
        PER_SOURCE_RATE_RANGE.start(), PER_SOURCE_RATE_RANGE.end()))]
    pub per_source_rate: Option<u64>,
    #[arg(long, help = format!(
        "IPv4 prefix length sources are counted by, {}-{} [default: {SOURCE_PREFIX_V4}]",
        SOURCE_PREFIX_V4_RANGE.start(), SOURCE_PREFIX_V4_RANGE.end()))]
    pub source_prefix_v4: Option<u8>,
    #[arg(long, help = format!(
        "IPv6 prefix length sources are counted by, {}-{} [default: {SOURCE_PREFIX_V6}]",
        SOURCE_PREFIX_V6_RANGE.start(), SOURCE_PREFIX_V6_RANGE.end()))]
    pub source_prefix_v6: Option<u8>,
    #[arg(long, help = format!(
        "Reset a verified client that sends nothing for this many milliseconds, {}-{}; \
         the backend is connected only once the client speaks (not for --server-first \
         services, whose backend is connected at once) [default: {FIRST_BYTE_TIMEOUT_MS}]",
        FIRST_BYTE_TIMEOUT_MS_RANGE.start(), FIRST_BYTE_TIMEOUT_MS_RANGE.end()))]
    pub first_byte_timeout_ms: Option<u64>,
    #[arg(long, help = format!(
        "On SIGTERM/SIGINT, how long running relays may finish, seconds, {}-{} \
         [default: {GRACE_SECS}]",
        GRACE_SECS_RANGE.start(), GRACE_SECS_RANGE.end()))]
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

/// `--engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineArg {
    /// epoll readiness, one system call per step.
    Tokio,
    /// io_uring: linked submissions for handoffs (kernel 6.11+).
    #[value(name = "io_uring")]
    #[serde(rename = "io_uring")]
    IoUring,
    /// io_uring when the kernel allows it, else tokio.
    #[default]
    Auto,
}

/// The TOML file. Every key is optional; unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// One interface (`iface`) or several (`interfaces`).
    pub iface: Option<String>,
    pub interfaces: Option<Vec<String>>,
    /// The one-service shorthand (service `default`).
    pub listen: Option<Vec<String>>,
    pub backends: Option<Vec<BackendEntry>>,
    pub server_first: Option<Vec<String>>,
    pub proxy_protocol: Option<proxyproto::Mode>,
    pub syn_only: Option<bool>,
    pub secret_file: Option<PathBuf>,
    pub xdp_mode: Option<XdpModeArg>,
    pub engine: Option<EngineArg>,
    pub threads: Option<u64>,
    pub pid_file: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub epoch_secs: Option<u32>,
    pub mss: Option<u16>,
    pub stats_interval_secs: Option<u64>,
    /// Address for the Prometheus endpoint.
    pub metrics: Option<String>,
    pub log_level: Option<String>,
    pub limits: Option<Limits>,
    /// Access lists for every service (CIDRs).
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    #[serde(rename = "service")]
    pub services: Option<Vec<ServiceFile>>,
}

/// `[limits]`: the instance's own, and every service's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: Option<u64>,
    pub splice_pipes: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub backend_backoff_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub grace_secs: Option<u64>,
    pub per_source_max: Option<u64>,
    pub per_source_rate: Option<u64>,
    pub source_prefix_v4: Option<u8>,
    pub source_prefix_v6: Option<u8>,
    pub first_byte_timeout_ms: Option<u64>,
}

/// One `[[service]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Option<String>,
    pub listen: Option<Vec<String>>,
    pub backends: Option<Vec<BackendEntry>>,
    /// The server speaks first (SSH, SMTP): SYN-ACKs are retransmitted.
    pub server_first: Option<bool>,
    pub proxy_protocol: Option<proxyproto::Mode>,
    /// This service's own access lists, after the global ones.
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub limits: Option<ServiceLimits>,
    /// Active checks of the backends (`[service.health_check]`).
    pub health_check: Option<HealthCheck>,
}

/// `[service.limits]`: overrides of `[limits]` for one service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLimits {
    /// This service's share of the instance's connections at most.
    pub max_connections: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub backend_backoff_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub per_source_max: Option<u64>,
    pub per_source_rate: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
}

/// A backend: `"ADDR:PORT"`, or `{ address = "ADDR:PORT", weight = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
    Address(String),
    Weighted(WeightedBackend),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub address: String,
    pub weight: Option<u32>,
}

/// One run, validated: flags over the file over the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<String>,
    pub services: Vec<Service>,
    /// Answer SYNs only (no backends, ACKs go to the kernel).
    pub syn_only: bool,
    pub secret_file: Option<PathBuf>,
    /// `None`: `--xdp-mode off`.
    pub mode: Option<AttachMode>,
    pub engine: EngineArg,
    /// Engine threads.
    pub threads: usize,
    pub pid_file: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// Start by taking over from the instance on `control_socket`.
    pub takeover: bool,
    pub epoch_secs: u32,
    pub mss: Option<u16>,
    pub stats_interval: Option<Duration>,
    pub metrics: Option<SocketAddr>,
    pub log_level: String,
    /// The whole instance's connection limit.
    pub max_connections: usize,
    /// Whether `max_connections` was configured; if not, it may be lowered
    /// to what the file descriptor limit allows.
    pub max_connections_set: bool,
    /// The relay's pipe pool, if configured (else it follows
    /// max_connections: [`Plan::pipes`]).
    pub splice_pipes: Option<usize>,
    pub grace: Duration,
    /// Every service's access list (XDP, before any cookie work).
    pub acl: AccessList,
    /// Prefix lengths sources are counted by.
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
}

/// A service: the ADDR:PORTs it protects and where their flows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    /// Those of `listen` whose server speaks first.
    pub server_first: Vec<SocketAddr>,
    pub backends: Vec<Backend>,
    pub proxy_protocol: proxyproto::Mode,
    /// This service's own cap, under the instance's.
    pub max_connections: Option<usize>,
    pub connect_timeout: Duration,
    pub backend_backoff: Duration,
    pub idle_timeout: Duration,
    pub per_source_max: u32,
    /// New connections per second per source; 0: no limit.
    pub per_source_rate: u32,
    pub first_byte_timeout: Duration,
    /// This service's access list, checked after the global one.
    pub acl: AccessList,
    /// Active backend checks, if configured.
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
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

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
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

/// Where a value came from, for error messages: `service "web": limits.idle_timeout_secs`.
#[derive(Clone, Copy)]
struct Scope<'a>(Option<&'a str>);

impl Scope<'_> {
    fn key(&self, key: &str) -> String {
        match self.0 {
            Some(s) => format!("service \"{s}\": {key}"),
            None => key.to_string(),
        }
    }

    fn parse_all(
        &self,
        key: &str,
        list: &[String],
        parse: fn(&str) -> Result<SocketAddr, String>,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, s)| parse(s).map_err(|e| invalid(format!("{}[{i}]: {e}", self.key(key)))))
            .collect()
    }

    /// An access list from `allow`/`deny` string lists.
    fn acl(
        &self,
        allow: Option<&[String]>,
        deny: Option<&[String]>,
    ) -> Result<AccessList, ConfigError> {
        let parse = |key: &str, list: Option<&[String]>| {
            list.unwrap_or(&[])
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.parse::<Cidr>()
                        .map_err(|e| invalid(format!("{}[{i}]: {e}", self.key(key))))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let acl = AccessList {
            allow: parse("allow", allow)?,
            deny: parse("deny", deny)?,
        };
        acl.validate()
            .map_err(|e| invalid(format!("{}: {e}", self.key("allow/deny"))))?;
        Ok(acl)
    }

    fn backends(&self, list: &[BackendEntry]) -> Result<Vec<Backend>, ConfigError> {
        let mut out: Vec<Backend> = Vec::with_capacity(list.len());
        for (i, b) in list.iter().enumerate() {
            let (addr, weight) = match b {
                BackendEntry::Address(a) => (a, None),
                BackendEntry::Weighted(w) => (&w.address, w.weight),
            };
            let at = self.key(&format!("backends[{i}]"));
            let addr = parse_backend(addr).map_err(|e| invalid(format!("{at}: {e}")))?;
            let weight = checked_key(
                &format!("{at}.weight"),
                None,
                weight.unwrap_or(WEIGHT),
                WEIGHT_RANGE,
            )?;
            if out.iter().any(|o| o.addr == addr) {
                return Err(invalid(format!(
                    "{at}: {addr} is listed twice (give it a weight instead)"
                )));
            }
            out.push(Backend { addr, weight });
        }
        Ok(out)
    }
}

/// The per-service values `[limits]` and the flags give every service.
struct ServiceDefaults {
    connect_timeout_ms: u64,
    backend_backoff_secs: u64,
    idle_timeout_secs: u64,
    per_source_max: u64,
    per_source_rate: u64,
    first_byte_timeout_ms: u64,
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
        let interfaces = interfaces(a, f)?;
        let syn_only = a.syn_only || f.syn_only.unwrap_or(false);
        let defaults = ServiceDefaults {
            connect_timeout_ms: a
                .connect_timeout_ms
                .or(l.and_then(|l| l.connect_timeout_ms))
                .unwrap_or(CONNECT_TIMEOUT_MS),
            backend_backoff_secs: a
                .backend_backoff_secs
                .or(l.and_then(|l| l.backend_backoff_secs))
                .unwrap_or(BACKEND_BACKOFF_SECS),
            idle_timeout_secs: a
                .idle_timeout_secs
                .or(l.and_then(|l| l.idle_timeout_secs))
                .unwrap_or(IDLE_TIMEOUT_SECS),
            per_source_max: a
                .per_source_max
                .or(l.and_then(|l| l.per_source_max))
                .unwrap_or(PER_SOURCE_MAX),
            per_source_rate: a
                .per_source_rate
                .or(l.and_then(|l| l.per_source_rate))
                .unwrap_or(PER_SOURCE_RATE),
            first_byte_timeout_ms: a
                .first_byte_timeout_ms
                .or(l.and_then(|l| l.first_byte_timeout_ms))
                .unwrap_or(FIRST_BYTE_TIMEOUT_MS),
        };
        let services = services(a, f, syn_only, &defaults)?;
        let metrics = match (a.metrics, &f.metrics) {
            (Some(m), _) => Some(m),
            (None, Some(m)) => {
                Some(parse_metrics(m).map_err(|e| invalid(format!("config metrics: {e}")))?)
            }
            (None, None) => None,
        };
        let log_level = a
            .log_level
            .clone()
            .or_else(|| f.log_level.clone())
            .unwrap_or_else(|| LOG_LEVEL.into());
        if let Err(e) = crate::telemetry::logging::filter(&log_level) {
            return Err(invalid(format!(
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
        let max_set = a.max_connections.or(l.and_then(|l| l.max_connections));
        let max_connections = checked(
            "max_connections",
            max_set.unwrap_or(MAX_CONNECTIONS),
            MAX_CONNECTIONS_RANGE,
        )?;
        let grace = checked(
            "grace_secs",
            a.grace_secs
                .or(l.and_then(|l| l.grace_secs))
                .unwrap_or(GRACE_SECS),
            GRACE_SECS_RANGE,
        )?;
        let stats = checked_key(
            "stats_interval_secs",
            Some("stats-interval"),
            a.stats_interval
                .or(f.stats_interval_secs)
                .unwrap_or(STATS_INTERVAL_SECS),
            STATS_INTERVAL_SECS_RANGE,
        )?;
        let acl = if a.allow.is_empty() && a.deny.is_empty() {
            Scope(None).acl(f.allow.as_deref(), f.deny.as_deref())?
        } else {
            let acl = AccessList {
                allow: a.allow.clone(),
                deny: a.deny.clone(),
            };
            acl.validate()
                .map_err(|e| invalid(format!("--allow/--deny: {e}")))?;
            acl
        };
        let mode = match a.xdp_mode.or(f.xdp_mode).unwrap_or(XdpModeArg::Native) {
            XdpModeArg::Native => Some(AttachMode::Native),
            XdpModeArg::Skb => Some(AttachMode::Skb),
            XdpModeArg::Off if syn_only => {
                return Err(invalid(
                    "--xdp-mode off needs --backend: without XDP, ackgate is only a proxy",
                ))
            }
            XdpModeArg::Off => None,
        };
        let control_socket = a
            .control_socket
            .clone()
            .or_else(|| f.control_socket.clone());
        if a.takeover && (mode.is_none() || control_socket.is_none()) {
            return Err(invalid(
                "--takeover needs XDP and the running instance's control_socket (--control-socket)",
            ));
        }
        if mode.is_none() && (!acl.is_empty() || services.iter().any(|s| !s.acl.is_empty())) {
            return Err(invalid(
                "allow/deny lists are enforced in XDP: not available with xdp_mode = off",
            ));
        }
        let threads = match a.threads.or(f.threads) {
            Some(n) => checked("threads", n, THREADS_RANGE)? as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Plan {
            interfaces,
            services,
            syn_only,
            secret_file: a.secret_file.clone().or_else(|| f.secret_file.clone()),
            mode,
            engine: a.engine.or(f.engine).unwrap_or_default(),
            threads,
            pid_file: a.pid_file.clone().or_else(|| f.pid_file.clone()),
            control_socket: a
                .control_socket
                .clone()
                .or_else(|| f.control_socket.clone()),
            takeover: a.takeover,
            epoch_secs,
            mss,
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            metrics,
            log_level,
            max_connections: max_connections as usize,
            max_connections_set: max_set.is_some(),
            splice_pipes: match a.splice_pipes.or(l.and_then(|l| l.splice_pipes)) {
                Some(n) => Some(checked("splice_pipes", n, SPLICE_PIPES_RANGE)? as usize),
                None => None,
            },
            grace: Duration::from_secs(grace),
            acl,
            source_prefix_v4: checked(
                "source_prefix_v4",
                a.source_prefix_v4
                    .or(l.and_then(|l| l.source_prefix_v4))
                    .unwrap_or(SOURCE_PREFIX_V4),
                SOURCE_PREFIX_V4_RANGE,
            )?,
            source_prefix_v6: checked(
                "source_prefix_v6",
                a.source_prefix_v6
                    .or(l.and_then(|l| l.source_prefix_v6))
                    .unwrap_or(SOURCE_PREFIX_V6),
                SOURCE_PREFIX_V6_RANGE,
            )?,
        })
    }

    /// Every protected ADDR:PORT and whether its server speaks first.
    pub fn protected(&self) -> Vec<(SocketAddr, bool)> {
        self.services
            .iter()
            .flat_map(|s| s.listen.iter().map(|l| (*l, s.server_first.contains(l))))
            .collect()
    }

    /// Fits the connection limit to the file descriptors: raises
    /// RLIMIT_NOFILE to what a configured `max_connections` needs, or
    /// fails saying what to set; an unconfigured one is lowered to what
    /// the limit allows when it cannot be raised.
    pub fn fit_descriptors(&mut self) -> Result<(), crate::sys::rlimit::NofileError> {
        if !self.max_connections_set {
            let fit = crate::sys::rlimit::fitting(self.max_connections, self.splice_pipes);
            if fit < self.max_connections {
                tracing::warn!(
                    "max_connections {fit}: what RLIMIT_NOFILE allows (the default is {}; raise \
                     LimitNOFILE= or set max_connections)",
                    self.max_connections
                );
                self.max_connections = fit;
            }
        }
        crate::sys::rlimit::ensure_nofile(self.max_connections, self.pipes()).map(|_| ())
    }

    /// The relay's pipe pool: as configured, or one per few connections.
    pub fn pipes(&self) -> usize {
        self.splice_pipes
            .unwrap_or_else(|| crate::sys::rlimit::default_pipes(self.max_connections))
    }

    /// How many backends all services have together.
    pub fn backend_count(&self) -> usize {
        self.services.iter().map(|s| s.backends.len()).sum()
    }

    /// What a reload cannot change in place (it needs a restart or an
    /// upgrade): an error naming the first such key, or `Ok` when `new`
    /// may replace `self`.
    pub fn reloadable_as(&self, new: &Plan) -> Result<(), ConfigError> {
        let fixed: [(&str, bool); 12] = [
            ("control_socket", self.control_socket != new.control_socket),
            ("pid_file", self.pid_file != new.pid_file),
            ("interfaces", self.interfaces != new.interfaces),
            ("xdp_mode", self.mode != new.mode),
            ("syn_only", self.syn_only != new.syn_only),
            ("secret_file", self.secret_file != new.secret_file),
            ("epoch_secs", self.epoch_secs != new.epoch_secs),
            ("mss", self.mss != new.mss),
            ("metrics", self.metrics != new.metrics),
            ("splice_pipes", self.splice_pipes != new.splice_pipes),
            ("engine", self.engine != new.engine),
            ("threads", self.threads != new.threads),
        ];
        match fixed.iter().find(|(_, changed)| *changed) {
            Some((key, _)) => Err(invalid(format!(
                "{key} cannot change on reload (restart or upgrade ackgate to change it); \
                 nothing was applied"
            ))),
            None => Ok(()),
        }
    }

    /// The SYN-ACK parameters for the interfaces: the smallest MTU among
    /// them (a clamp that fits every path), the MSS clamp if one was given,
    /// and a timestamp cookie's lifetime of exactly one epoch (the epoch
    /// bits alone would allow one to two).
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut mtu = u32::MAX;
        for iface in &self.interfaces {
            if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
                return Err(invalid(format!("no such interface: {iface}")));
            }
            let m = crate::sys::netdev::mtu(iface)
                .map_err(|e| invalid(format!("interface {iface}: {e:#}")))?;
            mtu = mtu.min(m);
        }
        let mut s = Settings::for_mtu(mtu);
        if let Some(m) = self.mss {
            s.mss4 = m;
            s.mss6 = m.saturating_sub(20).max(1220);
        }
        s.ts_max_age_ms = self.epoch_secs.saturating_mul(1000);
        Ok(s)
    }
}

fn interfaces(a: &RunArgs, f: &FileConfig) -> Result<Vec<String>, ConfigError> {
    let list =
        if !a.iface.is_empty() {
            a.iface.clone()
        } else {
            match (&f.iface, &f.interfaces) {
                (Some(_), Some(_)) => return Err(invalid(
                    "iface and interfaces exclude each other: list every interface in `interfaces`",
                )),
                (Some(i), None) => vec![i.clone()],
                (None, Some(v)) => v.clone(),
                (None, None) => vec![],
            }
        };
    if list.is_empty() {
        return Err(invalid(
            "no interface: give --iface or `iface` (or `interfaces = [...]`) in the config file",
        ));
    }
    if list.len() > MAX_INTERFACES {
        return Err(invalid(format!(
            "interfaces: at most {MAX_INTERFACES}, got {}",
            list.len()
        )));
    }
    let mut seen = HashSet::new();
    for (i, name) in list.iter().enumerate() {
        // IFNAMSIZ is 16 with the NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(invalid(format!(
                "interfaces[{i}]: '{name}' is not an interface name"
            )));
        }
        if !seen.insert(name) {
            return Err(invalid(format!("interfaces[{i}]: {name} is listed twice")));
        }
    }
    Ok(list)
}

/// The services: the file's `[[service]]`s, or one from the flags and the
/// file's top-level keys.
fn services(
    a: &RunArgs,
    f: &FileConfig,
    syn_only: bool,
    d: &ServiceDefaults,
) -> Result<Vec<Service>, ConfigError> {
    let flags_shape = !a.listen.is_empty()
        || !a.backends.is_empty()
        || !a.server_first.is_empty()
        || a.proxy_protocol.is_some();
    let top_shape = f.listen.is_some()
        || f.backends.is_some()
        || f.server_first.is_some()
        || f.proxy_protocol.is_some();
    let services = match &f.services {
        Some(list) => {
            if flags_shape {
                return Err(invalid(
                    "the config file describes services ([[service]]); --listen, --backend, \
                     --server-first and --proxy-protocol describe one service and cannot be \
                     combined with them",
                ));
            }
            if top_shape {
                return Err(invalid(
                    "top-level listen, backends, server_first and proxy_protocol are the \
                     one-service shorthand: with [[service]] tables, put them in a service",
                ));
            }
            if list.is_empty() {
                return Err(invalid("no protected service: [[service]] is empty"));
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| service_from_file(i, s, syn_only, d))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => vec![default_service(a, f, syn_only, d)?],
    };
    let mut owner: HashMap<SocketAddr, &str> = HashMap::new();
    let mut names = HashSet::new();
    for s in &services {
        if !names.insert(s.name.as_str()) {
            return Err(invalid(format!(
                "service \"{}\": the name is used twice",
                s.name
            )));
        }
        for l in &s.listen {
            if let Some(other) = owner.insert(*l, &s.name) {
                return Err(invalid(format!(
                    "service \"{}\": listen {l} is already protected by service \"{other}\"",
                    s.name
                )));
            }
        }
    }
    Ok(services)
}

fn default_service(
    a: &RunArgs,
    f: &FileConfig,
    syn_only: bool,
    d: &ServiceDefaults,
) -> Result<Service, ConfigError> {
    let top = Scope(None);
    let listen = if a.listen.is_empty() {
        top.parse_all("listen", f.listen.as_deref().unwrap_or(&[]), parse_listen)?
    } else {
        a.listen.clone()
    };
    if listen.is_empty() {
        return Err(invalid(
            "no protected service: give --listen ADDR:PORT, `listen = [...]` or [[service]] \
             tables in the config file",
        ));
    }
    let backends = if a.backends.is_empty() {
        top.backends(f.backends.as_deref().unwrap_or(&[]))?
    } else {
        a.backends
            .iter()
            .map(|&addr| Backend {
                addr,
                weight: WEIGHT,
            })
            .collect()
    };
    check_backends(top, syn_only, &backends)?;
    let server_first = if a.server_first.is_empty() {
        top.parse_all(
            "server_first",
            f.server_first.as_deref().unwrap_or(&[]),
            parse_listen,
        )?
    } else {
        a.server_first.clone()
    };
    if let Some(s) = server_first.iter().find(|s| !listen.contains(s)) {
        return Err(invalid(format!(
            "server_first {s} is not one of the protected services (listen)"
        )));
    }
    Ok(Service {
        name: DEFAULT_SERVICE.into(),
        listen,
        server_first,
        backends,
        proxy_protocol: a.proxy_protocol.or(f.proxy_protocol).unwrap_or_default(),
        max_connections: None,
        connect_timeout: Duration::from_millis(checked(
            "connect_timeout_ms",
            d.connect_timeout_ms,
            CONNECT_TIMEOUT_MS_RANGE,
        )?),
        backend_backoff: Duration::from_secs(checked(
            "backend_backoff_secs",
            d.backend_backoff_secs,
            BACKEND_BACKOFF_SECS_RANGE,
        )?),
        idle_timeout: Duration::from_secs(checked(
            "idle_timeout_secs",
            d.idle_timeout_secs,
            IDLE_TIMEOUT_SECS_RANGE,
        )?),
        per_source_max: checked("per_source_max", d.per_source_max, PER_SOURCE_MAX_RANGE)? as u32,
        per_source_rate: checked("per_source_rate", d.per_source_rate, PER_SOURCE_RATE_RANGE)?
            as u32,
        first_byte_timeout: Duration::from_millis(checked(
            "first_byte_timeout_ms",
            d.first_byte_timeout_ms,
            FIRST_BYTE_TIMEOUT_MS_RANGE,
        )?),
        acl: AccessList::default(),
        health_check: None,
    })
}

fn service_from_file(
    i: usize,
    s: &ServiceFile,
    syn_only: bool,
    d: &ServiceDefaults,
) -> Result<Service, ConfigError> {
    let name = s
        .name
        .clone()
        .ok_or_else(|| invalid(format!("service {}: no name (name = \"web\")", i + 1)))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(format!(
            "service {}: name '{name}': use 1-64 letters, digits, '-', '_' or '.'",
            i + 1
        )));
    }
    let at = Scope(Some(&name));
    let listen = at.parse_all("listen", s.listen.as_deref().unwrap_or(&[]), parse_listen)?;
    if listen.is_empty() {
        return Err(invalid(format!(
            "{}: no protected ADDR:PORT (listen = [\"192.0.2.1:443\"])",
            at.key("listen")
        )));
    }
    let backends = at.backends(s.backends.as_deref().unwrap_or(&[]))?;
    check_backends(at, syn_only, &backends)?;
    let l = s.limits.as_ref();
    let max_connections = match l.and_then(|l| l.max_connections) {
        Some(m) => Some(checked_key(
            &at.key("limits.max_connections"),
            None,
            m,
            MAX_CONNECTIONS_RANGE,
        )? as usize),
        None => None,
    };
    let pick = |v: Option<u64>, default: u64| v.unwrap_or(default);
    Ok(Service {
        server_first: if s.server_first.unwrap_or(false) {
            listen.clone()
        } else {
            vec![]
        },
        listen,
        backends,
        proxy_protocol: s.proxy_protocol.unwrap_or_default(),
        max_connections,
        connect_timeout: Duration::from_millis(checked_key(
            &at.key("limits.connect_timeout_ms"),
            None,
            pick(l.and_then(|l| l.connect_timeout_ms), d.connect_timeout_ms),
            CONNECT_TIMEOUT_MS_RANGE,
        )?),
        backend_backoff: Duration::from_secs(checked_key(
            &at.key("limits.backend_backoff_secs"),
            None,
            pick(
                l.and_then(|l| l.backend_backoff_secs),
                d.backend_backoff_secs,
            ),
            BACKEND_BACKOFF_SECS_RANGE,
        )?),
        idle_timeout: Duration::from_secs(checked_key(
            &at.key("limits.idle_timeout_secs"),
            None,
            pick(l.and_then(|l| l.idle_timeout_secs), d.idle_timeout_secs),
            IDLE_TIMEOUT_SECS_RANGE,
        )?),
        per_source_max: checked_key(
            &at.key("limits.per_source_max"),
            None,
            pick(l.and_then(|l| l.per_source_max), d.per_source_max),
            PER_SOURCE_MAX_RANGE,
        )? as u32,
        per_source_rate: checked_key(
            &at.key("limits.per_source_rate"),
            None,
            pick(l.and_then(|l| l.per_source_rate), d.per_source_rate),
            PER_SOURCE_RATE_RANGE,
        )? as u32,
        first_byte_timeout: Duration::from_millis(checked_key(
            &at.key("limits.first_byte_timeout_ms"),
            None,
            pick(
                l.and_then(|l| l.first_byte_timeout_ms),
                d.first_byte_timeout_ms,
            ),
            FIRST_BYTE_TIMEOUT_MS_RANGE,
        )?),
        acl: at.acl(s.allow.as_deref(), s.deny.as_deref())?,
        health_check: match &s.health_check {
            Some(h) => {
                h.validate()
                    .map_err(|e| invalid(format!("service \"{name}\": {e}")))?;
                Some(h.clone())
            }
            None => None,
        },
        name,
    })
}

fn check_backends(at: Scope, syn_only: bool, backends: &[Backend]) -> Result<(), ConfigError> {
    match (syn_only, backends.is_empty()) {
        (false, true) => Err(invalid(format!(
            "{}no backend: give --backend ADDR:PORT (or `backends = [...]` in the config \
             file). To only answer SYNs, for a benchmark, give --syn-only: no kernel listener \
             can accept ackgate's cookies, so without backends it takes a real service down",
            at.0.map(|s| format!("service \"{s}\": "))
                .unwrap_or_default()
        ))),
        (true, false) => Err(invalid(format!(
            "{}syn_only and backends exclude each other: with --syn-only, ACKs go to the kernel",
            at.0.map(|s| format!("service \"{s}\": "))
                .unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// `v` if `range` holds it; else an error naming the key and its flag.
fn checked<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    checked_key(key, Some(&key.replace('_', "-")), v, range)
}

fn checked_key<T: PartialOrd + std::fmt::Display>(
    key: &str,
    flag: Option<&str>,
    v: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        return Ok(v);
    }
    let flag = flag.map(|f| format!(" (--{f})")).unwrap_or_default();
    Err(invalid(format!(
        "{key} {v}: must be {}-{}{flag}",
        range.start(),
        range.end(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/ackgate.toml");
    const SERVICES: &str = include_str!("../../examples/services.toml");

    fn resolve(text: &str) -> Result<Plan, String> {
        let f = FileConfig::parse(text)?;
        Plan::resolve(&RunArgs::default(), &f).map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_parses_and_resolves() {
        let c = resolve(EXAMPLE).unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        let s = &c.services[0];
        assert_eq!((c.services.len(), s.name.as_str()), (1, DEFAULT_SERVICE));
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.proxy_protocol, proxyproto::Mode::V2);
        assert_eq!(c.max_connections, 20_000);
        assert_eq!(s.connect_timeout, Duration::from_millis(2000));
        assert_eq!(c.metrics, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn services_example_resolves_with_per_service_values() {
        let c = resolve(SERVICES).unwrap();
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["http", "https", "ssh"]);
        let https = &c.services[1];
        assert_eq!(https.proxy_protocol, proxyproto::Mode::V2);
        assert_eq!(https.backends[1].weight, 3);
        assert_eq!(https.backends[0].weight, WEIGHT);
        assert_eq!(https.max_connections, Some(15_000));
        assert_eq!(https.idle_timeout, Duration::from_secs(600));
        // Unset service limits come from [limits].
        assert_eq!(c.services[0].connect_timeout, Duration::from_millis(2000));
        let ssh = &c.services[2];
        assert_eq!(ssh.server_first, ssh.listen);
        assert_eq!(c.protected().iter().filter(|(_, sf)| *sf).count(), 1);
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let f = FileConfig::parse(
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\n[limits]\ngrace_secs = 3\n",
        )
        .unwrap();
        let a = RunArgs {
            iface: vec!["eth1".into()],
            max_connections: Some(7),
            ..Default::default()
        };
        let c = Plan::resolve(&a, &f).unwrap();
        assert_eq!((c.interfaces[0].as_str(), c.max_connections), ("eth1", 7));
        assert_eq!(c.grace, Duration::from_secs(3));
        assert_eq!(c.services[0].idle_timeout, Duration::from_secs(300));
        assert_eq!(c.mode, Some(AttachMode::Native));
        assert_eq!(c.services[0].proxy_protocol, proxyproto::Mode::Off);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = FileConfig::parse("iface = \"eth0\"\nlisten_addr = 1\n").unwrap_err();
        assert!(e.contains("unknown field `listen_addr`"), "{e}");
        let e = FileConfig::parse("[limits]\nmax_conns = 5\n").unwrap_err();
        assert!(e.contains("unknown field `max_conns`"), "{e}");
        let e = FileConfig::parse("xdp_mode = \"turbo\"\n").unwrap_err();
        assert!(e.contains("turbo"), "{e}");
        let e = FileConfig::parse("[[service]]\nname = \"a\"\nlisen = []\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("unknown field `lisen`"),
            "{e}"
        );
        let e =
            resolve("iface = \"eth0\"\nlisten = [\"192.0.2.1:80\", \"::1:80\"]\nsyn_only = true\n")
                .unwrap_err();
        assert!(e.contains("listen[1]") && e.contains("brackets"), "{e}");
        let e = resolve("listen = [\"192.0.2.1:80\"]\nsyn_only = true\n").unwrap_err();
        assert!(e.contains("no interface"), "{e}");
        let e = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nxdp_mode = \"off\"\n",
        )
        .unwrap_err();
        assert!(e.contains("needs --backend"), "{e}");
        let e = resolve("iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nmss = 100\n")
            .unwrap_err();
        assert!(e.contains("mss 100"), "{e}");
        let e = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nmetrics = \"localhost\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("config metrics") && e.contains("ADDR:PORT"),
            "{e}"
        );
        let e = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nlog_level = \"loud[\"\n",
        )
        .unwrap_err();
        assert!(e.contains("log level 'loud['"), "{e}");
    }

    #[test]
    fn every_duration_is_range_checked() {
        let base = "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n";
        for (key, v) in [
            ("idle_timeout_secs", "9223372036854775807"),
            ("backend_backoff_secs", "9223372036854775807"),
            ("grace_secs", "9223372036854775807"),
            ("connect_timeout_ms", "0"),
            ("max_connections", "0"),
        ] {
            let e = resolve(&format!("{base}[limits]\n{key} = {v}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains("must be"), "{key}: {e}");
        }
        let e = resolve(&format!("{base}stats_interval_secs = 100000000\n")).unwrap_err();
        assert!(e.contains("stats_interval_secs"), "{e}");
    }

    #[test]
    fn service_errors_name_the_service_and_the_key() {
        let svc = |body: &str| format!("iface = \"x\"\n[[service]]\n{body}\n");
        let e = resolve(&svc(
            "listen = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]",
        ))
        .unwrap_err();
        assert!(e.contains("service 1: no name"), "{e}");
        let e = resolve(&svc("name = \"web\"\nlisten = [\"192.0.2.1:80\"]")).unwrap_err();
        assert!(e.contains("service \"web\": no backend"), "{e}");
        let e = resolve(&svc(
            "name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [{ address = \"10.0.0.1:80\", weight = 0 }]",
        ))
        .unwrap_err();
        assert!(
            e.contains("service \"web\": backends[0].weight 0: must be 1-1000"),
            "{e}"
        );
        let e = resolve(&svc(
            "name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n[service.limits]\nidle_timeout_secs = 0",
        ))
        .unwrap_err();
        assert!(
            e.contains("service \"web\": limits.idle_timeout_secs 0"),
            "{e}"
        );
        let e = resolve(&svc(
            "name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n\
             [[service]]\nname = \"api\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.2:80\"]",
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "service \"api\": listen 192.0.2.1:80 is already protected by service \"web\""
            ),
            "{e}"
        );
        let e = resolve(&svc(
            "name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n\
             [[service]]\nname = \"web\"\nlisten = [\"192.0.2.1:81\"]\nbackends = [\"10.0.0.2:80\"]",
        ))
        .unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = resolve(&svc(
            "name = \"we b\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]",
        ))
        .unwrap_err();
        assert!(e.contains("name 'we b'"), "{e}");
        let e = resolve(&format!(
            "listen = [\"192.0.2.1:1\"]\n{}",
            svc("name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]")
        ))
        .unwrap_err();
        assert!(e.contains("one-service shorthand"), "{e}");
        let f = FileConfig::parse(&svc(
            "name = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]",
        ))
        .unwrap();
        let a = RunArgs {
            listen: vec!["192.0.2.9:80".parse().unwrap()],
            ..Default::default()
        };
        let e = Plan::resolve(&a, &f).unwrap_err().to_string();
        assert!(e.contains("cannot be combined"), "{e}");
    }

    #[test]
    fn access_lists_are_parsed_and_checked_with_their_key() {
        let c = resolve(SERVICES).unwrap();
        assert_eq!(c.acl.deny.len(), 2);
        assert_eq!(c.services[2].acl.allow.len(), 2);
        let base = "iface = \"x\"\nxdp_mode = \"skb\"\n";
        let svc = "[[service]]\nname = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n";
        let e = resolve(&format!("{base}deny = [\"10.0.0.1/8\"]\n{svc}")).unwrap_err();
        assert!(e.contains("deny[0]: 10.0.0.1/8: host bits set"), "{e}");
        let e = resolve(&format!("{base}{svc}allow = [\"10.0.0.0/8\", \"bogus\"]\n")).unwrap_err();
        assert!(e.contains("service \"web\": allow[1]: bogus"), "{e}");
        let e = resolve(&format!(
            "{base}{svc}allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("service \"web\": allow/deny: 10.0.0.0/8 is in both"),
            "{e}"
        );
        let e = resolve(
            "iface = \"x\"\nxdp_mode = \"off\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\ndeny = [\"10.0.0.0/8\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("enforced in XDP"), "{e}");
    }

    #[test]
    fn health_checks_are_validated_per_service() {
        let c = resolve(SERVICES).unwrap();
        let h = c.services[1]
            .health_check
            .as_ref()
            .expect("https has a check");
        assert_eq!(h.kind, crate::relay::health::CheckKind::Http);
        let svc = "iface = \"x\"\n[[service]]\nname = \"web\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"10.0.0.1:80\"]\n[service.health_check]\n";
        let e = resolve(&format!("{svc}interval_ms = 0\n")).unwrap_err();
        assert!(
            e.contains("service \"web\": health_check.interval_ms 0"),
            "{e}"
        );
        let e = resolve(&format!("{svc}rise = 1\nintervall = 5\n")).unwrap_err();
        assert!(e.contains("unknown field `intervall`"), "{e}");
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
        let e = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nsyn_only = true\n",
        )
        .unwrap_err();
        assert!(e.contains("exclude each other"), "{e}");
    }

    #[test]
    fn server_first_services_must_be_protected_ones() {
        let c = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:22\", \"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nserver_first = [\"192.0.2.1:22\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.services[0].server_first,
            vec!["192.0.2.1:22".parse().unwrap()]
        );
        let e = resolve(
            "iface = \"x\"\nlisten = [\"192.0.2.1:80\"]\nbackends = [\"127.0.0.1:9\"]\nserver_first = [\"192.0.2.1:25\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("192.0.2.1:25") && e.contains("not one of"),
            "{e}"
        );
    }

    #[test]
    fn reload_refuses_what_needs_a_restart() {
        let a = resolve(SERVICES).unwrap();
        let mut b = a.clone();
        b.services[0].backends.pop();
        b.max_connections = 5;
        assert!(a.reloadable_as(&b).is_ok());
        b.epoch_secs += 1;
        let e = a.reloadable_as(&b).unwrap_err().to_string();
        assert!(e.contains("epoch_secs cannot change on reload"), "{e}");
    }
}
