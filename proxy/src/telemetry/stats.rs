//! `ackgate stats`: a live view of a running ackgate, read from its metrics
//! endpoint. Rates come from two scrapes an interval apart; latency
//! percentiles from the histogram buckets' change over that interval (all
//! time while nothing new was recorded).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use thiserror::Error;

use crate::telemetry::metrics as m;

/// `ackgate stats`'s flags.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// ackgate's metrics address (its `--metrics` / `metrics = ...`).
    #[arg(long, value_name = "ADDR:PORT", default_value = m::DEFAULT_ADDR,
          value_parser = crate::config::parse_metrics)]
    pub metrics: SocketAddr,
    /// Seconds between scrapes; rates are per second over this interval.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Print one snapshot as JSON and exit.
    #[arg(long)]
    pub json: bool,
    /// Print one snapshot and exit (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    pub once: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}': give seconds between 0.1 and 3600")),
    }
}

#[derive(Debug, Error)]
pub enum StatsError {
    #[error("cannot reach ackgate's metrics at {addr}: {err} (is ackgate running with --metrics {addr}, or `metrics = \"{addr}\"` in its config?)")]
    Connect {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("reading metrics from {addr}: {err}")]
    Read { addr: SocketAddr, err: String },
}

/// One sample of the text exposition format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without colons, a label
/// name: what the exposition format allows.
fn is_name(s: &str, colons: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic()
            || c == '_'
            || (colons && c == ':')
            || (!first && c.is_ascii_digit())
    };
    let mut chars = s.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Parses Prometheus text exposition (comments skipped, timestamps ignored).
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line}", n + 1);
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| bad("no value"))?;
        let name = line[..name_end].to_string();
        if !is_name(&name, true) {
            return Err(bad("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or_else(|| bad("label without '='"))?;
                let key = rest[..eq].trim().to_string();
                if !is_name(&key, false) {
                    return Err(bad("bad label name"));
                }
                let r = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| bad("unquoted label value"))?;
                let mut val = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c)) => val.push(c),
                            None => return Err(bad("unterminated label value")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => val.push(c),
                        None => return Err(bad("unterminated label value")),
                    }
                };
                labels.push((key, val));
                rest = &r[end + 1..];
            }
        }
        let v = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("bad value"))?,
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

/// GET / from the metrics endpoint.
pub fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, StatsError> {
    let timeout = Duration::from_secs(5);
    let read_err = |err: String| StatsError::Read { addr, err };
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| StatsError::Connect { addr, err })?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .and_then(|()| {
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
        })
        .map_err(|e| read_err(e.to_string()))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| read_err(e.to_string()))?;
    let resp = String::from_utf8(resp).map_err(|_| read_err("response is not UTF-8".into()))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| read_err("malformed HTTP response".into()))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(read_err(format!("HTTP status '{status}'")));
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).ok_or_else(|| read_err("malformed chunked body".into()))?
    } else {
        body.to_string()
    };
    parse(&body).map_err(read_err)
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// A scrape, indexed.
pub struct Snapshot {
    pub at: Instant,
    pub samples: Vec<Sample>,
}

impl Snapshot {
    /// Scrapes `addr` now.
    pub fn take(addr: SocketAddr) -> Result<Self, StatsError> {
        Ok(Snapshot {
            at: Instant::now(),
            samples: scrape(addr)?,
        })
    }

    /// Sum of `name` over series whose labels include all of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
            .sum()
    }

    /// Distinct values of label `key` on `name`.
    fn label_values(&self, name: &str, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.label(key).map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Cumulative buckets of histogram `name` (series matching `filter`).
    fn buckets(&self, name: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket = format!("{name}_bucket");
        for s in &self.samples {
            if s.name != bucket || !filter.iter().all(|(k, v)| s.label(k) == Some(v)) {
                continue;
            }
            let Some(le) = s.label("le").and_then(|l| match l {
                "+Inf" => Some(f64::INFINITY),
                l => l.parse::<f64>().ok(),
            }) else {
                continue;
            };
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The `q` quantile of cumulative buckets, interpolated within the bucket
/// as Prometheus' `histogram_quantile` does. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = c - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, c);
    }
    Some(prev.0)
}

/// Two scrapes reduced to what an operator reads.
pub fn summarize(addr: SocketAddr, a: &Snapshot, b: &Snapshot) -> Value {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let counter = |name: &str, filter: &[(&str, &str)]| {
        let total = b.sum(name, filter);
        let rate = ((total - a.sum(name, filter)) / secs).max(0.0);
        json!({ "total": total as u64, "per_sec": round(rate) })
    };
    let by_label = |name: &str, key: &str| {
        let mut o = serde_json::Map::new();
        for v in b.label_values(name, key) {
            o.insert(v.clone(), counter(name, &[(key, v.as_str())]));
        }
        Value::Object(o)
    };
    let latency = |name: &str, filter: &[(&str, &str)]| {
        let now = b.buckets(name, filter);
        let before = a.buckets(name, filter);
        // The interval's observations when there are any, else all time.
        let delta: Vec<(f64, f64)> = now
            .iter()
            .map(|&(le, c)| {
                let old = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
                (le, c - old)
            })
            .collect();
        let use_delta = delta.last().is_some_and(|x| x.1 > 0.0);
        let src = if use_delta { &delta } else { &now };
        json!({
            "window": if use_delta { "interval" } else { "all_time" },
            "count": src.last().map_or(0, |x| x.1 as u64),
            "p50": quantile(0.5, src),
            "p99": quantile(0.99, src),
        })
    };
    let services: Vec<Value> = b
        .label_values(m::CONNECTIONS_ACTIVE, "service")
        .into_iter()
        .map(|svc| {
            let f = [("service", svc.as_str())];
            let resets = {
                let mut o = serde_json::Map::new();
                for r in b.label_values(m::RESETS, "reason") {
                    o.insert(
                        r.clone(),
                        counter(m::RESETS, &[f[0], ("reason", r.as_str())]),
                    );
                }
                Value::Object(o)
            };
            json!({
                "service": svc,
                "active_connections": b.sum(m::CONNECTIONS_ACTIVE, &f) as u64,
                "to_backend_bytes": counter(m::RELAYED_BYTES, &[f[0], ("direction", "to_backend")]),
                "to_client_bytes": counter(m::RELAYED_BYTES, &[f[0], ("direction", "to_client")]),
                "resets": resets,
            })
        })
        .collect();
    // A backend is one of a service's: the same address in two services
    // is two entries.
    let mut pairs: Vec<(String, String)> = b
        .samples
        .iter()
        .filter(|s| s.name == m::BACKEND_UP)
        .filter_map(|s| {
            Some((
                s.label("service").unwrap_or("").to_string(),
                s.label("backend")?.to_string(),
            ))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    let backends: Vec<Value> = pairs
        .into_iter()
        .map(|(svc, be)| {
            let f = [("service", svc.as_str()), ("backend", be.as_str())];
            json!({
                "service": svc,
                "backend": be,
                "up": b.sum(m::BACKEND_UP, &f) > 0.0,
                "connects": counter(m::BACKEND_CONNECTS, &f),
                "connect_errors": counter(m::BACKEND_CONNECT_ERRORS, &f),
                "connect_latency_seconds": latency(m::BACKEND_CONNECT_LATENCY, &f),
            })
        })
        .collect();
    let info = b.samples.iter().find(|s| s.name == m::BUILD_INFO);
    json!({
        "endpoint": format!("http://{addr}/metrics"),
        "interval_secs": round(secs),
        "version": info.and_then(|s| s.label("version")),
        "kernel": info.and_then(|s| s.label("kernel")),
        "xdp_mode": info.and_then(|s| s.label("xdp_mode")),
        "xdp": {
            "interfaces": b.label_values(m::XDP_SYNS_ANSWERED, "interface"),
            "syns_answered": counter(m::XDP_SYNS_ANSWERED, &[]),
            "acks_verified": counter(m::XDP_ACKS_VERIFIED, &[]),
            "acks_rejected": counter(m::XDP_ACKS_REJECTED, &[]),
            "dropped": by_label(m::XDP_DROPPED, "reason"),
            "passed": by_label(m::XDP_PASSED, "traffic"),
        },
        "proxy": {
            "handoffs": counter(m::HANDOFFS, &[]),
            "handoff_errors": by_label(m::HANDOFF_ERRORS, "reason"),
            "resets": by_label(m::RESETS, "reason"),
            "active_connections": b.sum(m::CONNECTIONS_ACTIVE, &[]) as u64,
            "relayed_bytes": by_label(m::RELAYED_BYTES, "direction"),
            "handoff_latency_seconds": latency(m::HANDOFF_LATENCY, &[]),
            "connection_duration_seconds": latency(m::CONNECTION_DURATION, &[]),
        },
        "services": services,
        "backends": backends,
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The human view of [`summarize`]'s output.
pub fn render(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let row = |o: &mut String, name: &str, c: &Value| {
        let _ = writeln!(
            o,
            "  {name:<28} {:>14} {:>12}/s",
            c["total"].as_u64().unwrap_or(0),
            fmt_rate(c["per_sec"].as_f64().unwrap_or(0.0))
        );
    };
    // A total row, then only the reasons that happened.
    let breakdown = |o: &mut String, name: &str, by: &Value| {
        let items: Vec<(&String, &Value)> = by.as_object().into_iter().flatten().collect();
        let sum = |k: &str| {
            items
                .iter()
                .map(|(_, c)| c[k].as_f64().unwrap_or(0.0))
                .sum::<f64>()
        };
        row(
            o,
            name,
            &json!({ "total": sum("total") as u64, "per_sec": sum("per_sec") }),
        );
        for (k, c) in items {
            if c["total"].as_u64().unwrap_or(0) > 0 {
                row(o, &format!("  {k}"), c);
            }
        }
    };
    let _ = writeln!(
        o,
        "ackgate {} on {} ({} XDP, kernel {}), every {}s",
        v["version"].as_str().unwrap_or("?"),
        v["endpoint"].as_str().unwrap_or("?"),
        v["xdp_mode"].as_str().unwrap_or("?"),
        v["kernel"].as_str().unwrap_or("?"),
        v["interval_secs"]
    );
    let ifs: Vec<&str> = v["xdp"]["interfaces"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if ifs.is_empty() {
        let _ = writeln!(
            o,
            "\nXDP: not attached (--xdp-mode off: kernel SYN cookies)"
        );
    } else {
        let _ = writeln!(
            o,
            "\n{:<30} {:>14} {:>14}",
            format!("XDP ({})", ifs.join(", ")),
            "total",
            "rate"
        );
        row(&mut o, "SYNs answered", &v["xdp"]["syns_answered"]);
        row(&mut o, "ACKs verified", &v["xdp"]["acks_verified"]);
        row(&mut o, "ACKs rejected", &v["xdp"]["acks_rejected"]);
        breakdown(&mut o, "dropped", &v["xdp"]["dropped"]);
        for (k, c) in v["xdp"]["passed"].as_object().into_iter().flatten() {
            row(&mut o, &format!("passed: {k}"), c);
        }
    }
    let p = &v["proxy"];
    let _ = writeln!(o, "\nproxy");
    row(&mut o, "handoffs", &p["handoffs"]);
    breakdown(&mut o, "handoff errors", &p["handoff_errors"]);
    breakdown(&mut o, "resets", &p["resets"]);
    for (k, c) in p["relayed_bytes"].as_object().into_iter().flatten() {
        row(&mut o, &format!("bytes {k}"), c);
    }
    let _ = writeln!(
        o,
        "  {:<28} {:>14}",
        "active connections", p["active_connections"]
    );
    let lat = |o: &mut String, name: &str, l: &Value| {
        let _ = writeln!(
            o,
            "  {name:<28} p50 {:>9}  p99 {:>9}  ({} obs, {})",
            fmt_secs(l["p50"].as_f64()),
            fmt_secs(l["p99"].as_f64()),
            l["count"],
            l["window"].as_str().unwrap_or("")
        );
    };
    lat(&mut o, "handoff latency", &p["handoff_latency_seconds"]);
    lat(
        &mut o,
        "connection duration",
        &p["connection_duration_seconds"],
    );
    if let Some(ss) = v["services"].as_array().filter(|s| !s.is_empty()) {
        let _ = writeln!(o, "\nservices");
        for s in ss {
            let resets: u64 = s["resets"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, c)| c["total"].as_u64().unwrap_or(0))
                .sum();
            let _ = writeln!(
                o,
                "  {:<16} active {:>6}  to backend {:>9}/s  to client {:>9}/s  resets {}",
                s["service"].as_str().unwrap_or("?"),
                s["active_connections"],
                fmt_rate(s["to_backend_bytes"]["per_sec"].as_f64().unwrap_or(0.0)),
                fmt_rate(s["to_client_bytes"]["per_sec"].as_f64().unwrap_or(0.0)),
                resets
            );
        }
    }
    if let Some(bs) = v["backends"].as_array().filter(|b| !b.is_empty()) {
        let _ = writeln!(o, "\nbackends");
        for b in bs {
            let _ = writeln!(
                o,
                "  {:<28} {:<4} connects {} ({}/s), errors {}, connect p50 {} p99 {}",
                format!(
                    "{} {}",
                    b["service"].as_str().unwrap_or("?"),
                    b["backend"].as_str().unwrap_or("?")
                ),
                if b["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "DOWN"
                },
                b["connects"]["total"],
                fmt_rate(b["connects"]["per_sec"].as_f64().unwrap_or(0.0)),
                b["connect_errors"]["total"],
                fmt_secs(b["connect_latency_seconds"]["p50"].as_f64()),
                fmt_secs(b["connect_latency_seconds"]["p99"].as_f64()),
            );
        }
    }
    o
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.1}")
    }
}

fn fmt_secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Runs `ackgate stats`.
pub fn run(a: &StatsArgs) -> anyhow::Result<()> {
    let every = Duration::from_secs_f64(a.interval);
    let live = !a.json && !a.once && std::io::stdout().is_terminal();
    let mut prev = Snapshot::take(a.metrics)?;
    loop {
        std::thread::sleep(every);
        let now = Snapshot::take(a.metrics)?;
        let v = summarize(a.metrics, &prev, &now);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        if !live {
            print!("{}", render(&v));
            return Ok(());
        }
        // Clear the screen and redraw from the top.
        print!("\x1b[H\x1b[2J{}\n(Ctrl-C to quit)\n", render(&v));
        std::io::stdout().flush()?;
        prev = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing too: a line without a metric name ("{}1") was a
    /// sample named "".
    #[test]
    fn names_are_checked() {
        for bad in ["{}1", "9x 1", "a-b 1", "m{9=\"v\"} 1", "m{a:b=\"v\"} 1"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("a:b_c9{l_2=\"v\"} 1").is_ok());
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/exposition.rs`): with a tab
    /// before a label's comma, the comma became part of the next key.
    #[test]
    fn whitespace_of_any_kind_separates_labels() {
        let s = parse("m{a=\"1\"\t,\tb=\"2\" , c=\"3\"} 4\n").unwrap();
        let keys: Vec<&str> = s[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(s[0].value, 4.0);
    }

    #[test]
    fn parses_exposition_with_labels_escapes_and_comments() {
        let t = "# HELP x y\n# TYPE a counter\na_total 5\nb{k=\"v\",q=\"a\\\"b\\\\c\"} 1.5\nc_bucket{le=\"+Inf\"} 3 1700000000\n";
        let s = parse(t).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].value, 5.0);
        assert_eq!(s[1].label("q"), Some("a\"b\\c"));
        assert_eq!(s[1].value, 1.5);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(parse("x{k=v} 1").is_err());
        assert!(parse("x{k=\"v} 1").is_err());
        assert!(parse("x notanumber").is_err());
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let b = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b).unwrap() - 0.1).abs() < 1e-12);
        assert!((quantile(0.75, &b).unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        // Everything above the top finite bucket reports that bucket's bound.
        assert_eq!(
            quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 4.0)]),
            Some(1.0)
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
        assert!(dechunk("zz\r\n").is_none());
    }
}
