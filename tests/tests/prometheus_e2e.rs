//! A real Prometheus (Debian's package) scrapes a running ackgate: every
//! query of the Grafana dashboard, evaluated by Prometheus after traffic,
//! returns data; the alert rules shipped beside the dashboard load into it,
//! evaluate healthy while ackgate runs, and `AckgateDown` goes pending
//! when it stops. promtool checks the rules and runs their unit tests.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ackgate_lab::{Lab, Process, ScratchDir};
use ackgate_tests::{run_proxy, with_echo_lab, METRICS};
use serde_json::Value;

/// Prometheus's listener, inside the gateway namespace beside ackgate.
const PROMETHEUS: &str = "127.0.0.1:9090";
const CONNECTIONS: usize = 20;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let run = |args: &[&str]| {
        let o = Command::new("promtool")
            .args(args)
            .output()
            .expect("promtool (Debian's prometheus package; scripts/bootstrap.sh installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let rules = deploy("prometheus/ackgate-alerts.yml");
    let out = run(&["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let tests = deploy("prometheus/ackgate-alerts.test.yml");
    let out = run(&["test", "rules", tests.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn prometheus_answers_every_dashboard_query_after_traffic() {
    with_echo_lab(|lab| {
        let ackgate = run_proxy(lab, "127.0.0.1:9000");
        let dir = ScratchDir::new("prometheus").unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{rules}]\n\
                 scrape_configs:\n  - job_name: ackgate\n    static_configs:\n      - targets: ['{METRICS}']\n",
                rules = deploy("prometheus/ackgate-alerts.yml").display()
            ),
        )
        .unwrap();
        let mut cmd = lab.gw.command("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"));
        let _prometheus = Process::start(
            "prometheus",
            cmd,
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        )
        .unwrap();

        // Scraped once before the traffic and again after it (XDP's
        // counters are published once a second), so every rate window
        // holds two samples that differ.
        wait_for(lab, "a first scrape", |p| {
            scalar(p, "sum(up{job=\"ackgate\"})") == 1.0
        });
        traffic(lab);
        wait_for(lab, "the traffic scraped", |p| {
            scalar(p, "sum(ackgate_handoffs_total)") >= CONNECTIONS as f64
                && scalar(p, "sum(ackgate_xdp_syns_answered_total)") >= CONNECTIONS as f64
        });
        std::thread::sleep(Duration::from_secs(3));

        let queries = dashboard_queries();
        assert!(queries.len() >= 20, "{queries:?}");
        let mut empty = Vec::new();
        for q in &queries {
            let r = query(lab, q);
            if r.as_array().is_none_or(|a| a.is_empty()) {
                empty.push(q.clone());
            }
        }
        assert!(
            empty.is_empty(),
            "dashboard queries without data: {empty:#?}"
        );
        // The panels a reader checks first show this traffic, not zeros.
        for q in [
            "sum(rate(ackgate_xdp_syns_answered_total[30s]))",
            "sum(rate(ackgate_handoffs_total[30s]))",
            "sum(rate(ackgate_relayed_bytes_total[30s]))",
        ] {
            assert!(scalar(lab, q) > 0.0, "{q} is 0 after the traffic");
        }
        for label in ["instance", "service"] {
            let v = get(lab, &format!("/api/v1/label/{label}/values"));
            assert!(
                v["data"].as_array().is_some_and(|a| !a.is_empty()),
                "no values of {label}: {v}"
            );
        }

        // The rules loaded, evaluate without error, and none fires while
        // ackgate serves.
        wait_for(lab, "every rule evaluated", |p| {
            let rules = rules(p);
            rules.len() == 7 && rules.iter().all(|r| r["health"] == "ok")
        });
        let alerts = get(lab, "/api/v1/alerts");
        assert_eq!(alerts["data"]["alerts"], Value::Array(vec![]), "{alerts}");

        // Stopped, ackgate stops answering scrapes: AckgateDown goes
        // pending (it fires after a minute).
        ackgate.stop(Duration::from_secs(15)).unwrap();
        wait_for(lab, "AckgateDown pending", |p| {
            get(p, "/api/v1/alerts")["data"]["alerts"]
                .as_array()
                .is_some_and(|a| {
                    a.iter().any(|x| {
                        x["labels"]["alertname"] == "AckgateDown" && x["state"] == "pending"
                    })
                })
        });
    });
}

/// Connections through ackgate over IPv4 and IPv6, each echoing 1 KiB.
fn traffic(lab: &Lab) {
    let targets: [SocketAddr; 2] = [(lab.vip4, 8080).into(), (lab.vip6, 8080).into()];
    lab.client
        .run(|| {
            for i in 0..CONNECTIONS {
                let mut s =
                    TcpStream::connect_timeout(&targets[i % 2], Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(&[b'x'; 1024]).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                assert_eq!(back.len(), 1024);
            }
        })
        .unwrap();
}

/// Every panel's query and the variables' sources, with Grafana's
/// variables as a dashboard showing everything would set them.
fn dashboard_queries() -> Vec<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/ackgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    // `label_values(metric, label)` (Grafana's) lists the metric's series.
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
        {
            out.push(q.split(',').next().unwrap().trim().to_string());
        }
    }
    out.iter()
        .map(|e| {
            e.replace("$__rate_interval", "30s")
                .replace("$instance", ".*")
                .replace("$service", ".*")
        })
        .collect()
}

/// An instant query's result vector.
fn query(lab: &Lab, q: &str) -> Value {
    let v = get(lab, &format!("/api/v1/query?query={}", encode(q)));
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].clone()
}

/// A query's single value (0 if it has none).
fn scalar(lab: &Lab, q: &str) -> f64 {
    query(lab, q)[0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

fn rules(lab: &Lab) -> Vec<Value> {
    let v = get(lab, "/api/v1/rules");
    v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["name"] == "ackgate")
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Polls `done` for up to 30 s.
fn wait_for(lab: &Lab, what: &str, done: impl Fn(&Lab) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(lab) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// GET `path` from Prometheus's HTTP API, in the gateway namespace.
fn get(lab: &Lab, path: &str) -> Value {
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    let body = lab
        .gw
        .run(move || {
            let mut s =
                TcpStream::connect_timeout(&PROMETHEUS.parse().unwrap(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            let mut r = Vec::new();
            s.read_to_end(&mut r)?;
            Ok::<_, std::io::Error>(r)
        })
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    let (_, json) = text.split_once("\r\n\r\n").expect("an HTTP response");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
