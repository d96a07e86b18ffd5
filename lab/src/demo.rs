//! The demo (`ackgate-demo`, run by the README's first command). Builds a lab, runs the real
//! `ackgate run` in the gateway namespace in front of a small HTTP backend,
//! and shows the whole job: kernel clients served over IPv4 and IPv6 with
//! cookie SYN-ACKs that verify, a spoofed SYN burst and forged ACKs absorbed
//! in XDP while a client is still served, and the metrics that saw it all.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use rand::{Rng as _, SeedableRng as _};

use ackgate::{
    telemetry::stats::{render, summarize, Snapshot},
    xdp::secret::{current_epoch, Secret},
};

use crate::{
    frame::{self, Segment, TCP_ACK},
    harness::Attached,
    netns::ScratchDir,
    process::{workspace_bin, Process},
    servers::{self, StopOnDrop},
    Capture, Lab,
};

const METRICS: &str = "127.0.0.1:9469";
const BACKEND: &str = "127.0.0.1:8080";
const FLOOD_SYNS: usize = 20_000;
const FORGED_ACKS: usize = 5_000;
const BODY: &str = "hello from the backend, through ackgate\n";

pub fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the demo builds network namespaces and loads XDP: run it as root"
    );
    let lab = Lab::new()?;
    println!(
        "lab: client netns {} ({}, {}) <-veth-> gateway netns {} ({}, {})",
        lab.client.name, lab.client4, lab.client6, lab.gw.name, lab.vip4, lab.vip6
    );

    // The fleet secret, so the demo can check the cookies itself.
    // Removed (the secret with it) however the demo ends.
    let dir = ScratchDir::new("ackgate-demo")?;
    let secret = Secret(rand::random());
    let secret_file = dir.path().join("secret");
    let hex: String = secret.0.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&secret_file, format!("{hex}\n"))?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;

    // The backend: a tiny HTTP server in the gateway namespace that counts
    // the connections it gets.
    let listener = lab.gw.run(|| TcpListener::bind(BACKEND))??;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let backend = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || servers::http(listener, &stop, &accepted, BODY))
    };
    let _stop_backend = StopOnDrop(&stop);

    let cif = lab.client_if;
    let _pass = lab.client.run(move || Attached::pass(cif))??;

    let services: [SocketAddr; 2] = [(lab.vip4, 80).into(), (lab.vip6, 80).into()];
    let exe = workspace_bin("ackgate")?;
    let args = [
        "run".to_string(),
        "--iface".into(),
        lab.gw_if.into(),
        "--listen".into(),
        services[0].to_string(),
        "--listen".into(),
        services[1].to_string(),
        "--backend".into(),
        BACKEND.into(),
        "--secret-file".into(),
        secret_file.display().to_string(),
        "--metrics".into(),
        METRICS.into(),
        "--stats-interval".into(),
        "0".into(),
    ];
    println!("\nin the gateway: ackgate {}", args.join(" "));
    let mut cmd = lab.gw.command(exe.to_str().context("binary path")?);
    cmd.args(&args);
    let mut ag = Process::spawn("ackgate run", cmd)?;
    ag.wait_for("proxy ready", Duration::from_secs(30))?;
    let metrics: SocketAddr = METRICS.parse()?;
    let snap = || -> Result<Snapshot> { Ok(lab.gw.run(|| Snapshot::take(metrics))??) };
    let first = snap()?;
    println!(
        "metrics: http://{METRICS}/metrics inside the gateway namespace; while the demo runs:\n  \
         ip netns exec {ns} curl -s http://{METRICS}/metrics\n  ip netns exec {ns} {exe} stats",
        ns = lab.gw.name,
        exe = exe.display()
    );

    let request = b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";
    for target in services {
        let (hs, response) = lab.request(target, Duration::from_secs(3), Some(request))?;
        let p = &hs.synack;
        let verdict = frame::verify_synack(&secret.0, current_epoch(60), p);
        let response = String::from_utf8_lossy(&response);
        println!(
            "\nGET http://{target}/ from the client: connected in {:.0} us, {}",
            hs.connect_time.as_secs_f64() * 1e6,
            response.lines().next().unwrap_or("no response")
        );
        println!(
            "  SYN-ACK from XDP: seq (cookie) {:#010x}, window {}, checksums {}; mss {:?}, wscale {:?}, sack {}, timestamps {}",
            p.seq,
            p.window,
            if p.ip_checksum_ok && p.tcp_checksum_ok { "valid" } else { "INVALID" },
            p.options.mss(),
            p.options.wscale(),
            p.options.sack_ok,
            p.options.ts().is_some()
        );
        match &verdict {
            Ok(r) => println!(
                "  cookie verifies with the secret and restores the client's mss {}, wscale {:?}, sack {}",
                r.mss, r.wscale, r.sack
            ),
            Err(e) => println!("  cookie does NOT verify: {e:?}"),
        }
        println!(
            "  body: {}",
            response.split("\r\n\r\n").nth(1).unwrap_or("").trim_end()
        );
        ensure!(verdict.is_ok(), "cookie failed to verify");
        ensure!(response.ends_with(BODY), "unexpected response: {response}");
    }

    // The attack: spoofed SYNs and forged ACKs, raw onto the client's veth,
    // then one more real client.
    let (cli_mac, gw_mac) = (lab.client.mac(lab.client_if)?, lab.gw.mac(lab.gw_if)?);
    let vip = lab.vip4;
    let t0 = Instant::now();
    lab.client.run(move || -> Result<()> {
        let tx = Capture::open(cif)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..FLOOD_SYNS + FORGED_ACKS {
            let src = Ipv4Addr::new(203, 0, 113, rng.gen_range(1..255));
            let mut s = Segment::syn(
                src.into(),
                rng.gen_range(1024..65535),
                vip.into(),
                80,
                rng.gen(),
                &[2, 4, 5, 0xb4],
            );
            if i >= FLOOD_SYNS {
                s.flags = TCP_ACK;
                s.ack = rng.gen();
                s.tcp_options.clear();
            }
            s.src_mac = cli_mac;
            s.dst_mac = gw_mac;
            tx.send(&s.build())?;
        }
        Ok(())
    })??;
    let sent_in = t0.elapsed();
    let (hs, response) = lab.request(services[0], Duration::from_secs(3), Some(request))?;
    println!(
        "\nattack: {FLOOD_SYNS} SYNs from spoofed sources and {FORGED_ACKS} forged ACKs in {:.0} ms; \
         a client right after it connected in {:.0} us and got: {}",
        sent_in.as_secs_f64() * 1e3,
        hs.connect_time.as_secs_f64() * 1e6,
        String::from_utf8_lossy(&response).lines().next().unwrap_or("nothing")
    );
    ensure!(
        String::from_utf8_lossy(&response).ends_with(BODY),
        "the client after the attack was not served"
    );

    // XDP counters reach the metrics once a second.
    let real = 3.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let s = snap()?;
        let v = summarize(metrics, &first, &s);
        let answered = v["xdp"]["syns_answered"]["total"].as_f64().unwrap_or(0.0);
        let closed = v["proxy"]["connection_duration_seconds"]["count"].as_f64();
        if answered >= FLOOD_SYNS as f64 + real
            && v["proxy"]["active_connections"] == 0
            && closed.is_some()
        {
            break s;
        }
        ensure!(Instant::now() < deadline, "metrics did not catch up: {v}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let v = summarize(metrics, &first, &last);
    println!(
        "\nackgate stats over the demo (rates are per second over {:.1} s):\n",
        v["interval_secs"].as_f64().unwrap_or(0.0)
    );
    print!("{}", render(&v));
    let total = |p: &serde_json::Value| p["total"].as_f64().unwrap_or(-1.0);
    ensure!(
        total(&v["xdp"]["syns_answered"]) == FLOOD_SYNS as f64 + real,
        "SYNs answered: {}",
        v["xdp"]["syns_answered"]
    );
    ensure!(
        total(&v["xdp"]["acks_rejected"]) == FORGED_ACKS as f64,
        "ACKs rejected: {}",
        v["xdp"]["acks_rejected"]
    );
    ensure!(
        total(&v["proxy"]["handoffs"]) == real,
        "handoffs: {}",
        v["proxy"]["handoffs"]
    );
    let backend_saw = accepted.load(Relaxed);
    println!(
        "\nthe backend accepted {backend_saw} connections: the 3 real clients, none from the {} attack packets",
        FLOOD_SYNS + FORGED_ACKS
    );
    ensure!(
        backend_saw == real as u64,
        "backend saw {backend_saw} connections"
    );

    let (status, log) = ag.stop(Duration::from_secs(15))?;
    ensure!(
        status.success() && log.iter().any(|l| l.contains("counters:")),
        "ackgate exited with {status}: {log:?}"
    );
    drop(_stop_backend);
    let _ = backend.join();
    println!("ackgate stopped (XDP detached); demo finished, lab removed");
    Ok(())
}
