//! Every report's parts: the machine, statistics over runs, the JSON and
//! Markdown files, and SVG charts.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Where the numbers come from.
#[derive(Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub nproc: usize,
    pub mem_gib: f64,
    pub ackgate: &'static str,
    pub nginx: String,
    pub haproxy: String,
    pub nft: String,
    pub unix_time: u64,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let t = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&t)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not installed".into())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn kernel() -> String {
    read("/proc/sys/kernel/osrelease").trim().into()
}

pub fn cpu_model() -> String {
    read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string()
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Machine {
    pub fn probe() -> Self {
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: kernel(),
            cpu: cpu_model(),
            nproc: nproc(),
            mem_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            ackgate: env!("CARGO_PKG_VERSION"),
            nginx: first_line("nginx", &["-v"]),
            haproxy: first_line("haproxy", &["-v"]),
            nft: first_line("nft", &["--version"]),
            unix_time: unix_time(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "kernel {}, {} ({} CPUs, {} GiB); {}; {}; {}",
            self.kernel, self.cpu, self.nproc, self.mem_gib, self.nginx, self.haproxy, self.nft
        )
    }
}

/// The start of a lab scenario's report: what ran, where, how often.
/// Flattened into the report, so these stay top-level JSON fields.
#[derive(Serialize)]
pub struct Header {
    pub benchmark: &'static str,
    pub machine: Machine,
    pub runs: usize,
    /// `--ackgate-arg`s every ackgate of the run was given.
    pub ackgate_args: Vec<String>,
}

impl Header {
    pub fn probe(benchmark: &'static str, runs: usize) -> Self {
        Header {
            benchmark,
            machine: Machine::probe(),
            runs,
            ackgate_args: crate::lab::extra_args(),
        }
    }

    /// Title, machine, and the command line that made the numbers.
    pub fn markdown(&self, title: &str, quick: bool) -> String {
        format!(
            "### {title}\n\n{}\n\n`ackgate-bench {}{}{}`",
            self.machine.line(),
            self.benchmark,
            if quick { " --quick" } else { "" },
            self.ackgate_args
                .iter()
                .map(|a| format!(" --ackgate-arg={a}"))
                .collect::<String>()
        )
    }
}

/// Median and spread of repeated runs.
#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub runs: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(runs: Vec<f64>) -> Self {
        let mut v = runs.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            runs,
        }
    }

    /// "median (min-max)".
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// Nearest rank, rounding down, of `sorted` (ascending): for latency
/// percentiles over many samples, where a mean of two ranks adds nothing.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n as f64 * q) as usize).min(n - 1)],
    }
}

/// Writes `<name>.json`, `<name>.md` and the SVGs given.
pub fn write(
    dir: &Path,
    name: &str,
    json: &impl Serialize,
    md: &str,
    svgs: &[(String, String)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    for (file, svg) in svgs {
        std::fs::write(dir.join(file), svg)?;
    }
    println!("{md}");
    eprintln!("wrote {}/{name}.json, {name}.md", dir.display());
    Ok(())
}

const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars, each a median with its min-max whisker.
pub fn bars(title: &str, unit: &str, items: &[(&str, &Stat)]) -> String {
    let (w, row, left, top) = (640.0, 34.0, 170.0, 40.0);
    let h = top + row * items.len() as f64 + 30.0;
    let max = items
        .iter()
        .map(|i| i.1.max.max(i.1.median))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let scale = (w - left - 90.0) / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    for (i, (label, st)) in items.iter().enumerate() {
        let (med, lo, hi) = (st.median, st.min, st.max);
        let y = top + row * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{:.1}\" y=\"{}\">{} {}</text>",
            left - 8.0,
            y + 17.0,
            esc(label),
            y + 4.0,
            med * scale,
            row - 10.0,
            COLORS[i % COLORS.len()],
            left + lo * scale,
            left + hi * scale,
            y + 14.0,
            y + 14.0,
            left + hi.max(med) * scale + 6.0,
            y + 18.0,
            fmt_num(med),
            esc(unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Lines over a shared x axis: (series name, points).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h, l, r, t, b) = (640.0, 360.0, 70.0, 160.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmax = pts.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1e-12);
    let ymax = pts.map(|p| p.1).fold(0.0f64, f64::max).max(1e-12);
    let x = |v: f64| l + v / xmax * (w - l - r);
    let y = |v: f64| h - b - v / ymax * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>\n",
        esc(title),
        h - b,
        w - r,
        h - b,
        h - b,
        (l + w - r) / 2.0,
        h - 12.0,
        esc(x_label),
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(y_label)
    );
    for k in 0..=4 {
        let (xv, yv) = (xmax * k as f64 / 4.0, ymax * k as f64 / 4.0);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x(xv),
            h - b + 16.0,
            fmt_num(xv),
            l - 6.0,
            y(yv) + 4.0,
            fmt_num(yv)
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|&(a, v)| format!("{:.1},{:.1}", x(a), y(v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(a, v) in p {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                x(a),
                y(v)
            );
        }
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - r + 12.0,
            t + 20.0 * i as f64,
            w - r + 30.0,
            t + 20.0 * i as f64 + 11.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `v` with `digits` decimals and thousands separated by commas
/// (1,285,351; 5.13).
pub fn fmt_num_digits(v: f64, digits: usize) -> String {
    let s = format!("{:.*}", digits, v.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(fmt_num_digits(1_285_351.4, 0), "1,285,351");
        assert_eq!(fmt_num_digits(5.128, 2), "5.13");
        assert_eq!(fmt_num_digits(999.0, 0), "999");
        assert_eq!(fmt_num_digits(-1234.5, 1), "-1,234.5");
    }

    #[test]
    fn median_and_spread() {
        let s = Stat::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Stat::of(vec![5.0, 1.0, 3.0]).median, 3.0);
    }

    #[test]
    fn quantile_is_nearest_rank_down() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 501.0);
        assert_eq!(quantile(&v, 0.99), 991.0);
        assert_eq!(quantile(&v, 1.0), 1000.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn svgs_are_well_formed_enough() {
        let (a, b) = (Stat::of(vec![0.5, 1.0, 1.5]), Stat::of(vec![2.0]));
        let b = bars("t<x>", "Gbit/s", &[("a", &a), ("b", &b)]);
        assert!(
            b.starts_with("<svg") && b.trim_end().ends_with("</svg>") && b.contains("t&lt;x&gt;")
        );
        assert_eq!(b.matches("<rect").count(), 3);
        let l = lines("t", "x", "y", &[("s".into(), vec![(0.0, 1.0), (1.0, 2.0)])]);
        assert_eq!(l.matches("<circle").count(), 2);
    }
}
