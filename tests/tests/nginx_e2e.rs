//! curl through ackgate to a real nginx (Debian's), both started by the
//! test inside the lab: static files arrive intact, and with PROXY protocol
//! nginx logs the real client address.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ackgate_lab::{harness::Attached, Lab};
use ackgate_tests::{counter, last_counters, require_root, run_ackgate, Process};

/// nginx in the gateway namespace, killed and its directory removed on drop.
struct Nginx {
    _process: Process,
    dir: PathBuf,
}

impl Nginx {
    fn start(lab: &Lab) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "ackgate-nginx-{}-{}",
            std::process::id(),
            lab.gw.name
        ));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(dir.join("www/index.html"), "hello from nginx\n").unwrap();
        // 4 MiB of deterministic pseudo-random bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let big: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("www/big.bin"), &big).unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
  log_format pp '$proxy_protocol_addr $remote_addr \"$request\" $status';
  access_log {d}/access.log pp;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:8081; root {d}/www; }}
  server {{ listen 127.0.0.1:8082 proxy_protocol; root {d}/www; access_log {d}/pp.log pp; }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = lab.gw.command("nginx");
        cmd.args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()]);
        let n = Nginx {
            _process: Process::spawn("nginx", cmd)
                .expect("start nginx (Debian package nginx-light)"),
            dir,
        };
        // Ready when its port answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab
            .gw
            .exec(&["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:8081/"])
            .is_err()
        {
            assert!(Instant::now() < deadline, "nginx did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn curl(lab: &Lab, url: &str, out: &Path) -> String {
    let o = lab
        .client
        .command("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{time_starttransfer}", url])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ackgate(lab: &Lab, backend: &str, pp: &str) -> Process {
    let (v4, v6) = (format!("{}:80", lab.vip4), format!("[{}]:80", lab.vip6));
    run_ackgate(
        lab,
        &[
            "--proxy-protocol",
            pp,
            "--listen",
            &v4,
            "--listen",
            &v6,
            "--backend",
            backend,
        ],
    )
}

#[test]
fn curl_through_ackgate_to_nginx_with_and_without_proxy_protocol() {
    require_root();
    let lab = Lab::new().unwrap();
    let _pass = lab.client.run(|| Attached::pass("cli0")).unwrap().unwrap();
    let nginx = Nginx::start(&lab);
    let out = nginx.dir.join("got");
    let v4 = format!("http://{}/", SocketAddr::from((lab.vip4, 80)));
    let v6 = format!("http://{}/", SocketAddr::from((lab.vip6, 80)));

    let run = ackgate(&lab, "127.0.0.1:8081", "off");
    for base in [&v4, &v6] {
        let w = curl(&lab, &format!("{base}index.html"), &out);
        assert!(w.starts_with("200 "), "{w}");
        assert_eq!(std::fs::read(&out).unwrap(), b"hello from nginx\n");
        let w = curl(&lab, &format!("{base}big.bin"), &out);
        assert!(w.starts_with("200 "), "{w}");
        assert!(
            std::fs::read(&out).unwrap() == nginx.file("www/big.bin"),
            "4 MiB file intact over {base}"
        );
    }
    let (_, lines) = run.stop(Duration::from_secs(15)).unwrap();
    let c = last_counters(&lines).unwrap();
    assert_eq!(counter(&c, "handoffs"), 4, "{lines:?}");

    let run = ackgate(&lab, "127.0.0.1:8082", "v1");
    let w = curl(&lab, &format!("{v4}index.html"), &out);
    assert!(w.starts_with("200 "), "{w}");
    let w = curl(&lab, &format!("{v6}index.html"), &out);
    assert!(w.starts_with("200 "), "{w}");
    run.stop(Duration::from_secs(15)).unwrap();
    let log = String::from_utf8(nginx.file("pp.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].starts_with(&format!("{} 127.0.0.1 \"GET /index.html", lab.client4)),
        "{log}"
    );
    assert!(
        lines[1].starts_with(&format!("{} 127.0.0.1 \"GET /index.html", lab.client6)),
        "{log}"
    );
}

/// FNV-1a (32-bit): what the browser page computes over the file.
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ x as u32).wrapping_mul(16_777_619)
    })
}

/// The page the browser loads: static text, then a synchronous request for
/// the 10 MiB file whose length and FNV-1a it writes into the DOM before
/// `--dump-dom` prints it.
const PAGE: &str = r#"<!doctype html><html><body><p id="text">served through ackgate</p>
<div id="result">pending</div>
<script>
var x = new XMLHttpRequest();
x.open('GET', '/ten.bin', false);
x.overrideMimeType('text/plain; charset=x-user-defined');
x.send();
var t = x.responseText, h = 0x811c9dc5;
for (var i = 0; i < t.length; i++) { h = Math.imul(h ^ (t.charCodeAt(i) & 0xff), 16777619) >>> 0; }
document.getElementById('result').textContent = 'status=' + x.status + ' len=' + t.length + ' fnv=' + h.toString(16);
</script></body></html>
"#;

/// Headless Chromium (Debian's) in the client namespace: the DOM of `url`
/// after load.
fn chromium_dom(lab: &Lab, url: &str, profile: &Path) -> String {
    let mut cmd = lab.client.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--dump-dom", url]);
    let mut p = Process::spawn("chromium", cmd).expect("start chromium (Debian package chromium)");
    let deadline = Instant::now() + Duration::from_secs(90);
    while p.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "chromium did not finish loading {url} within 90 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, lines) = p.stop(Duration::from_secs(5)).unwrap();
    lines.join("\n")
}

#[test]
fn headless_chromium_loads_a_page_and_10_mb_through_ackgate() {
    require_root();
    let lab = Lab::new().unwrap();
    let _pass = lab.client.run(|| Attached::pass("cli0")).unwrap().unwrap();
    let nginx = Nginx::start(&lab);
    let ten = ackgate_lab::transfer::pattern(10 << 20);
    std::fs::write(nginx.dir.join("www/ten.bin"), &ten).unwrap();
    std::fs::write(nginx.dir.join("www/browser.html"), PAGE).unwrap();
    let want = format!("status=200 len={} fnv={:x}", ten.len(), fnv1a(&ten));
    let run = ackgate(&lab, "127.0.0.1:8081", "off");
    for (i, addr) in [
        SocketAddr::from((lab.vip4, 80)),
        SocketAddr::from((lab.vip6, 80)),
    ]
    .into_iter()
    .enumerate()
    {
        let url = format!("http://{addr}/browser.html");
        let profile = nginx.dir.join(format!("chromium-{i}"));
        let dom = chromium_dom(&lab, &url, &profile);
        assert!(dom.contains("served through ackgate"), "{url}: {dom}");
        assert!(
            dom.contains(&want),
            "{url}: the browser's view of ten.bin differs; want {want}: {dom}"
        );
    }
    let (_, lines) = run.stop(Duration::from_secs(15)).unwrap();
    let c = last_counters(&lines).unwrap();
    assert!(
        counter(&c, "handoffs") >= 4,
        "page and file over v4 and v6: {lines:?}"
    );
}
