//! Prometheus metrics (the `metrics` facade and its Prometheus exporter's
//! HTTP listener on `--metrics ADDR`).
//!
//! The XDP program's per-CPU counters are read once per [`XDP_POLL`] by the
//! process's own loop and published as absolute counter values, so a scrape
//! never costs a map read per CPU. Userspace events update handles resolved
//! once at start-up. Every series is created at start-up with its zero value:
//! a dashboard sees `0`, not "no data", before the first attack.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use ackgate_common::wire::Counter as Xdp;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use thiserror::Error;

pub use super::exporter::Exporter;
use crate::{relay::Moved, xdp::Counters};

/// Address `ackgate stats` reads when given none, and the one the example
/// config serves on.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9469";

/// How often the XDP counters are read and published.
pub const XDP_POLL: Duration = Duration::from_secs(1);

pub const XDP_SYNS_ANSWERED: &str = "ackgate_xdp_syns_answered_total";
pub const XDP_ACKS_VERIFIED: &str = "ackgate_xdp_acks_verified_total";
pub const XDP_ACKS_REJECTED: &str = "ackgate_xdp_acks_rejected_total";
pub const XDP_DROPPED: &str = "ackgate_xdp_dropped_total";
pub const XDP_PASSED: &str = "ackgate_xdp_passed_total";
pub const HANDOFFS: &str = "ackgate_handoffs_total";
pub const HANDOFF_ERRORS: &str = "ackgate_handoff_errors_total";
pub const HANDOFF_LATENCY: &str = "ackgate_handoff_latency_seconds";
pub const HANDOFF_CALLS: &str = "ackgate_handoff_calls_total";
pub const BACKEND_CONNECTS: &str = "ackgate_backend_connects_total";
pub const BACKEND_CONNECT_CALLS: &str = "ackgate_backend_connect_calls_total";
pub const BACKEND_CONNECT_ERRORS: &str = "ackgate_backend_connect_errors_total";
pub const BACKEND_CONNECT_LATENCY: &str = "ackgate_backend_connect_latency_seconds";
pub const BACKEND_UP: &str = "ackgate_backend_up";
pub const BACKEND_HEALTH_CHECKS: &str = "ackgate_backend_health_checks_total";
pub const RESETS: &str = "ackgate_resets_total";
pub const CONNECTIONS_ACTIVE: &str = "ackgate_connections_active";
pub const CONNECTION_DURATION: &str = "ackgate_connection_duration_seconds";
pub const RELAYED_BYTES: &str = "ackgate_relayed_bytes_total";
pub const BUILD_INFO: &str = "ackgate_build_info";
pub const SYNACK_RETRANSMITS: &str = "ackgate_synack_retransmits_total";
pub const CONFIG_RELOADS: &str = "ackgate_config_reloads_total";
pub const CONFIG_LAST_RELOAD_OK: &str = "ackgate_config_last_reload_successful";

/// Handoff and backend connect latency: 25 us to 10 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Connection duration: 1 ms to 1 h.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A label pair; `None` for a counter that is a metric of its own.
type Label = Option<(&'static str, &'static str)>;

/// XDP counters as (counter, metric, label).
pub const XDP_SERIES: [(Xdp, &str, Label); 17] = [
    (Xdp::SynAnswered, XDP_SYNS_ANSWERED, None),
    (Xdp::AckVerified, XDP_ACKS_VERIFIED, None),
    (Xdp::AckRejected, XDP_ACKS_REJECTED, None),
    (
        Xdp::ProtectedPassed,
        XDP_PASSED,
        Some(("traffic", "protected")),
    ),
    (Xdp::Passed, XDP_PASSED, Some(("traffic", "other"))),
    (
        Xdp::DropMalformed,
        XDP_DROPPED,
        Some(("reason", "malformed")),
    ),
    (Xdp::DropFragment, XDP_DROPPED, Some(("reason", "fragment"))),
    (
        Xdp::DropIpv6Ext,
        XDP_DROPPED,
        Some(("reason", "ipv6_ext_header")),
    ),
    (
        Xdp::DropResize,
        XDP_DROPPED,
        Some(("reason", "resize_failed")),
    ),
    (
        Xdp::DropNotReady,
        XDP_DROPPED,
        Some(("reason", "not_ready")),
    ),
    (
        Xdp::DropRingFull,
        XDP_DROPPED,
        Some(("reason", "ring_full")),
    ),
    (
        Xdp::DropRstNoFlow,
        XDP_DROPPED,
        Some(("reason", "rst_no_flow")),
    ),
    (
        Xdp::DropSynAckNoFlow,
        XDP_DROPPED,
        Some(("reason", "synack_no_flow")),
    ),
    (
        Xdp::DropNotUnicast,
        XDP_DROPPED,
        Some(("reason", "not_unicast")),
    ),
    (Xdp::DropMartian, XDP_DROPPED, Some(("reason", "martian"))),
    (
        Xdp::DropAclGlobal,
        XDP_DROPPED,
        Some(("reason", "acl_global")),
    ),
    (
        Xdp::DropAclService,
        XDP_DROPPED,
        Some(("reason", "acl_service")),
    ),
];

/// Handoff failure reasons (see `HandoffError::reason`; `accept` is a failed
/// accept in `--xdp-mode off`; `no_service` a flow whose service a reload
/// removed while its ACK was in the ring).
pub const HANDOFF_ERROR_REASONS: [&str; 5] =
    ["bad_event", "duplicate", "socket", "accept", "no_service"];

/// Why a client got a RST from the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// No backend accepted within the connect timeout.
    NoBackend,
    /// The instance's `max_connections` reached.
    Limit,
    /// The service's own `max_connections` reached.
    ServiceLimit,
    /// The source holds `per_source_max` connections already.
    SourceLimit,
    /// The source opened `per_source_rate` connections in the last second.
    SourceRate,
    /// A client of a client-first service sent nothing in time.
    FirstByteTimeout,
    /// The backend accepted, but the PROXY protocol header could not be
    /// written to it.
    ProxyHeader,
    /// The relay failed part-way (a side reset, a write was refused): both
    /// sides are reset, so a client never takes a cut-off response for a
    /// whole one.
    RelayError,
}

impl ResetReason {
    pub const ALL: [ResetReason; RESET_REASONS] = [
        ResetReason::NoBackend,
        ResetReason::Limit,
        ResetReason::ServiceLimit,
        ResetReason::SourceLimit,
        ResetReason::SourceRate,
        ResetReason::FirstByteTimeout,
        ResetReason::ProxyHeader,
        ResetReason::RelayError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ResetReason::NoBackend => "no_backend",
            ResetReason::Limit => "limit",
            ResetReason::ServiceLimit => "service_limit",
            ResetReason::SourceLimit => "source_limit",
            ResetReason::SourceRate => "source_rate",
            ResetReason::FirstByteTimeout => "first_byte_timeout",
            ResetReason::ProxyHeader => "proxy_header",
            ResetReason::RelayError => "relay_error",
        }
    }
}

pub const RESET_REASONS: usize = 8;

/// Backend connect failure reasons; `local` is a failure of ours (out of
/// descriptors, ports, buffers or memory: `relay::backends::is_local`),
/// which marks nothing down.
pub const BACKEND_ERROR_REASONS: [&str; 4] = ["refused", "timeout", "other", "local"];

/// Health check results (`local`: failed for a reason of ours, not
/// counted against the backend).
pub const HEALTH_CHECK_RESULTS: [&str; 3] = ["ok", "failed", "local"];

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("serving metrics on {addr}: {err}")]
    Install { addr: SocketAddr, err: BuildError },
    #[error("serving metrics on {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
}

/// Binds the endpoint and installs the global recorder; the engine serves
/// it ([`Exporter::serve`]). Call before building anything that records
/// metrics: handles resolved before it are no-ops.
pub fn install(addr: SocketAddr, info: &BuildInfo) -> Result<Exporter, MetricsError> {
    let listener = bind_shared(addr).map_err(|err| MetricsError::Bind { addr, err })?;
    let err = |err| MetricsError::Install { addr, err };
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HANDOFF_LATENCY.into()), &LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(BACKEND_CONNECT_LATENCY.into()),
                &LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.into()), &DURATION_BUCKETS)
        })
        .and_then(|b| b.install_recorder())
        .map_err(err)?;
    describe();
    gauge!(BUILD_INFO,
        "version" => info.version, "kernel" => info.kernel.clone(), "xdp_mode" => info.xdp_mode)
    .set(1.0);
    Ok(Exporter {
        listener,
        handle,
        addr,
    })
}

/// A listener with SO_REUSEPORT: during a takeover the new instance
/// serves the same address while the old one drains.
fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    socket::listen(
        &fd,
        socket::Backlog::new(128).map_err(std::io::Error::from)?,
    )?;
    Ok(std::net::TcpListener::from(fd))
}

/// `ackgate_build_info`'s labels.
pub struct BuildInfo {
    pub version: &'static str,
    pub kernel: String,
    pub xdp_mode: &'static str,
}

impl BuildInfo {
    pub fn new(xdp_mode: &'static str) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel,
            xdp_mode,
        }
    }
}

fn describe() {
    describe_counter!(
        XDP_SYNS_ANSWERED,
        "SYNs to protected services answered with a SYN cookie in XDP."
    );
    describe_counter!(
        XDP_ACKS_VERIFIED,
        "ACKs whose cookie verified; each is handed to the proxy."
    );
    describe_counter!(
        XDP_ACKS_REJECTED,
        "ACKs to protected services with no socket and an invalid cookie, dropped."
    );
    describe_counter!(
        XDP_DROPPED,
        "Packets to protected services dropped in XDP, by reason."
    );
    describe_counter!(XDP_PASSED, "Packets XDP passed to the kernel: protected (an established socket exists) or other traffic.");
    describe_counter!(
        HANDOFFS,
        "Verified flows materialized as sockets (accepted connections with --xdp-mode off)."
    );
    describe_counter!(
        HANDOFF_ERRORS,
        "Verified flows that could not be materialized, by reason."
    );
    describe_counter!(
        HANDOFF_CALLS,
        "Materialization calls, by path: a batch of linked io_uring chains in one submission, or one flow's system calls."
    );
    describe_counter!(
        BACKEND_CONNECT_CALLS,
        "Backend connects attempted, by path: linked io_uring operations (connect, timeout, PROXY header) or tokio's connect and write."
    );
    describe_histogram!(
        HANDOFF_LATENCY,
        Unit::Seconds,
        "From the ACK verifying in XDP to an established socket in the proxy."
    );
    describe_counter!(
        BACKEND_CONNECTS,
        "Successful backend connects, per service and backend."
    );
    describe_counter!(
        BACKEND_CONNECT_ERRORS,
        "Failed backend connects, per backend and reason."
    );
    describe_histogram!(
        BACKEND_CONNECT_LATENCY,
        Unit::Seconds,
        "Backend connect time, per backend."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 if the backend takes connections, 0 while it is in back-off after a failure or its health check says down."
    );
    describe_counter!(
        BACKEND_HEALTH_CHECKS,
        "Active health checks, per service, backend and result (ok, failed, local)."
    );
    describe_counter!(
        RESETS,
        "Clients reset by the proxy, per service and reason."
    );
    describe_counter!(
        SYNACK_RETRANSMITS,
        "SYN-ACKs of server-first services sent again because no ACK came, by result (sent, over_budget, failed)."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Connections being proxied now, per service."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP), by result: ok, or failed (the running configuration stayed)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_OK,
        "1 if the last reload was applied (or none was asked for), 0 if it was refused."
    );
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "Proxied connection lifetime, handoff to close."
    );
    describe_counter!(
        RELAYED_BYTES,
        Unit::Bytes,
        "Bytes relayed, by direction (to_backend, to_client)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Constant 1, labelled with version, kernel and XDP mode."
    );
}

/// Publishes one interface's XDP counters.
pub struct XdpMetrics {
    series: Vec<(Xdp, Counter)>,
}

impl XdpMetrics {
    pub fn new(iface: &str) -> Self {
        let series = XDP_SERIES
            .iter()
            .map(|&(c, name, label)| {
                let h = match label {
                    Some((k, v)) => counter!(name, "interface" => iface.to_string(), k => v),
                    None => counter!(name, "interface" => iface.to_string()),
                };
                h.absolute(0);
                (c, h)
            })
            .collect();
        XdpMetrics { series }
    }

    pub fn publish(&self, c: &Counters) {
        for (x, h) in &self.series {
            h.absolute(c.get(*x));
        }
    }
}

/// The instance's userspace counters (handoffs come before a flow has a
/// service): atomics for the `counters:` log line, and Prometheus series.
pub struct Stats {
    pub handoffs: AtomicU64,
    pub handoff_errors: AtomicU64,
    m_handoffs: Counter,
    m_handoff_errors: Vec<(&'static str, Counter)>,
    m_handoff_latency: Histogram,
    /// syscalls, io_uring.
    m_handoff_calls: [Counter; 2],
    pub synack_retransmits: AtomicU64,
    /// sent, over_budget, failed.
    m_retransmits: [Counter; 3],
    m_reloads: [Counter; 2],
    m_reload_ok: Gauge,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

fn zero(c: Counter) -> Counter {
    c.absolute(0);
    c
}

impl Stats {
    pub fn new() -> Self {
        let m_reload_ok = gauge!(CONFIG_LAST_RELOAD_OK);
        m_reload_ok.set(1.0);
        Stats {
            handoffs: AtomicU64::new(0),
            handoff_errors: AtomicU64::new(0),
            m_handoffs: zero(counter!(HANDOFFS)),
            m_handoff_errors: HANDOFF_ERROR_REASONS
                .iter()
                .map(|&r| (r, zero(counter!(HANDOFF_ERRORS, "reason" => r))))
                .collect(),
            m_handoff_latency: histogram!(HANDOFF_LATENCY),
            m_handoff_calls: ["syscalls", "io_uring"]
                .map(|p| zero(counter!(HANDOFF_CALLS, "path" => p))),
            synack_retransmits: AtomicU64::new(0),
            m_retransmits: ["sent", "over_budget", "failed"]
                .map(|r| zero(counter!(SYNACK_RETRANSMITS, "result" => r))),
            m_reloads: ["ok", "failed"].map(|r| zero(counter!(CONFIG_RELOADS, "result" => r))),
            m_reload_ok,
        }
    }

    /// What a retransmission tick did (server-first services).
    pub fn synack_retransmits(&self, t: &crate::handoff::retransmit::Tick) {
        self.synack_retransmits.fetch_add(t.sent, Relaxed);
        for (c, n) in self
            .m_retransmits
            .iter()
            .zip([t.sent, t.over_budget, t.failed])
        {
            c.increment(n);
        }
    }

    /// One materialization call: `io_uring` for a submitted batch.
    pub fn handoff_call(&self, io_uring: bool) {
        self.m_handoff_calls[io_uring as usize].increment(1);
    }

    /// A flow became a socket; `latency` from the ACK's verification, when
    /// known.
    pub fn handoff(&self, latency: Option<Duration>) {
        self.handoffs.fetch_add(1, Relaxed);
        self.m_handoffs.increment(1);
        if let Some(l) = latency {
            self.m_handoff_latency.record(l.as_secs_f64());
        }
    }

    pub fn handoff_failed(&self, reason: &str) {
        self.handoff_errors.fetch_add(1, Relaxed);
        if let Some((_, c)) = self.m_handoff_errors.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        self.m_reloads[usize::from(!ok)].increment(1);
        self.m_reload_ok.set(if ok { 1.0 } else { 0.0 });
    }

    /// The `counters:` line: these and every service's, summed.
    pub fn line(&self, services: &[std::sync::Arc<ServiceStats>]) -> String {
        let sum = |f: fn(&ServiceStats) -> &AtomicU64| {
            services.iter().map(|s| f(s).load(Relaxed)).sum::<u64>()
        };
        let resets = |r: &[ResetReason]| {
            r.iter()
                .map(|&r| {
                    services
                        .iter()
                        .map(|s| s.resets[r as usize].load(Relaxed))
                        .sum::<u64>()
                })
                .sum::<u64>()
        };
        let no_backend = resets(&[ResetReason::NoBackend]);
        format!(
            "handoffs={} handoff_errors={} backend_errors={no_backend} resets_no_backend={no_backend} resets_limit={} resets_source={} resets_first_byte={} resets_backend_failed={} active={} closed={} bytes_to_backend={} bytes_to_client={} synack_retransmits={}",
            self.handoffs.load(Relaxed),
            self.handoff_errors.load(Relaxed),
            resets(&[ResetReason::Limit, ResetReason::ServiceLimit]),
            resets(&[ResetReason::SourceLimit, ResetReason::SourceRate]),
            resets(&[ResetReason::FirstByteTimeout]),
            resets(&[ResetReason::ProxyHeader, ResetReason::RelayError]),
            sum(|s| &s.active),
            sum(|s| &s.closed),
            sum(|s| &s.bytes_to_backend),
            sum(|s| &s.bytes_to_client),
            self.synack_retransmits.load(Relaxed),
        )
    }
}

/// One service's counters and series (label `service`). Kept by name
/// across reloads, so its counters never go back.
pub struct ServiceStats {
    pub name: String,
    pub active: AtomicU64,
    pub closed: AtomicU64,
    /// By `ResetReason` index.
    pub resets: [AtomicU64; RESET_REASONS],
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    m_resets: [Counter; RESET_REASONS],
    m_active: Gauge,
    m_duration: Histogram,
    m_to_backend: Counter,
    m_to_client: Counter,
}

impl ServiceStats {
    pub fn new(name: &str) -> Self {
        let s = name.to_string();
        let m_active = gauge!(CONNECTIONS_ACTIVE, "service" => s.clone());
        m_active.set(0.0);
        ServiceStats {
            name: s.clone(),
            active: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            resets: Default::default(),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            m_resets: ResetReason::ALL
                .map(|r| zero(counter!(RESETS, "service" => s.clone(), "reason" => r.label()))),
            m_active,
            m_duration: histogram!(CONNECTION_DURATION, "service" => s.clone()),
            m_to_backend: zero(
                counter!(RELAYED_BYTES, "service" => s.clone(), "direction" => "to_backend"),
            ),
            m_to_client: zero(counter!(RELAYED_BYTES, "service" => s, "direction" => "to_client")),
        }
    }

    pub fn reset(&self, why: ResetReason) {
        self.resets[why as usize].fetch_add(1, Relaxed);
        self.m_resets[why as usize].increment(1);
    }

    pub fn opened(&self) {
        let n = self.active.fetch_add(1, Relaxed) + 1;
        self.m_active.set(n as f64);
    }

    pub fn closed(&self, lifetime: Duration, moved: Moved) {
        let n = self.active.fetch_sub(1, Relaxed) - 1;
        self.m_active.set(n as f64);
        self.closed.fetch_add(1, Relaxed);
        self.m_duration.record(lifetime.as_secs_f64());
        self.bytes_to_backend.fetch_add(moved.to_backend, Relaxed);
        self.bytes_to_client.fetch_add(moved.to_client, Relaxed);
        self.m_to_backend.increment(moved.to_backend);
        self.m_to_client.increment(moved.to_client);
    }
}

/// One backend's series.
pub struct BackendMetrics {
    pub connects: Counter,
    /// Attempts by path: system calls, io_uring.
    calls: [Counter; 2],
    errors: [Counter; 4],
    pub latency: Histogram,
    pub up: Gauge,
    checks: [Counter; 3],
}

impl BackendMetrics {
    /// One connect attempt, through io_uring or not.
    pub fn attempted(&self, io_uring: bool) {
        self.calls[io_uring as usize].increment(1);
    }

    pub fn new(service: &str, addr: SocketAddr) -> Self {
        let (s, b) = (service.to_string(), addr.to_string());
        let connects =
            zero(counter!(BACKEND_CONNECTS, "service" => s.clone(), "backend" => b.clone()));
        let errors = BACKEND_ERROR_REASONS.map(|r| {
            zero(counter!(BACKEND_CONNECT_ERRORS,
                "service" => s.clone(), "backend" => b.clone(), "reason" => r))
        });
        let checks = HEALTH_CHECK_RESULTS.map(|r| {
            zero(counter!(BACKEND_HEALTH_CHECKS,
                "service" => s.clone(), "backend" => b.clone(), "result" => r))
        });
        let calls = ["syscalls", "io_uring"].map(|p| {
            zero(counter!(BACKEND_CONNECT_CALLS,
                "service" => s.clone(), "backend" => b.clone(), "path" => p))
        });
        let up = gauge!(BACKEND_UP, "service" => s.clone(), "backend" => b.clone());
        up.set(1.0);
        BackendMetrics {
            connects,
            calls,
            errors,
            latency: histogram!(BACKEND_CONNECT_LATENCY, "service" => s, "backend" => b),
            up,
            checks,
        }
    }

    /// Counts a failed connect; `None` error means the connect timed out.
    pub fn failed(&self, err: Option<&std::io::Error>) {
        self.errors[error_reason(err)].increment(1);
    }

    /// Counts a health check by its result (one of [`HEALTH_CHECK_RESULTS`]).
    pub fn health_check(&self, result: &str) {
        if let Some(i) = HEALTH_CHECK_RESULTS.iter().position(|&r| r == result) {
            self.checks[i].increment(1);
        }
    }
}

/// Index in [`BACKEND_ERROR_REASONS`] of a failed connect's reason.
fn error_reason(err: Option<&std::io::Error>) -> usize {
    match err {
        None => 1,
        Some(e) if crate::relay::backends::is_local(e) => 3,
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => 0,
        Some(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::{error_reason, BACKEND_ERROR_REASONS};

    #[test]
    fn connect_errors_are_counted_by_reason() {
        let reason = |e: Option<&Error>| BACKEND_ERROR_REASONS[error_reason(e)];
        assert_eq!(reason(None), "timeout");
        assert_eq!(
            reason(Some(&ErrorKind::ConnectionRefused.into())),
            "refused"
        );
        assert_eq!(
            reason(Some(&Error::from_raw_os_error(libc::ECONNREFUSED))),
            "refused"
        );
        assert_eq!(
            reason(Some(&Error::from_raw_os_error(libc::EHOSTUNREACH))),
            "other"
        );
        for local in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::ENOBUFS,
            libc::ENOMEM,
        ] {
            assert_eq!(reason(Some(&Error::from_raw_os_error(local))), "local");
        }
    }
}
