//! End to end in network namespaces: the real `ackgate run` binary answers a
//! real kernel client's SYNs from XDP, with no listener in the gateway.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use ackgate::xdp::secret::current_epoch;
use ackgate_lab::{frame as packet, harness::Attached, Lab};
use ackgate_tests::{ackgate_bin, counter, last_counters, require_root, Process};

const SECRET_HEX: &str = "00112233445566778899aabbccddeeff";

fn secret_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ackgate-test-{}-{tag}.key", std::process::id()));
    std::fs::write(&p, format!("{SECRET_HEX}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn start(lab: &Lab, mode: &str, key: &std::path::Path, port: u16) -> Process {
    let mut cmd = lab.gw.command(ackgate_bin().to_str().unwrap());
    cmd.args([
        "run",
        "--iface",
        lab.gw_if,
        "--xdp-mode",
        mode,
        "--stats-interval",
        "0",
        "--syn-only",
    ])
    .args(["--listen", &format!("{}:{port}", lab.vip4)])
    .args(["--listen", &format!("[{}]:{port}", lab.vip6)])
    .arg("--secret-file")
    .arg(key);
    Process::start("ackgate", cmd, "attached to", Duration::from_secs(30)).expect("ackgate starts")
}

fn handshakes(mode: &str) {
    require_root();
    let lab = Lab::new().unwrap();
    let key = secret_file(mode);
    let port = 8080;
    lab.drop_acks_at_gateway(port).unwrap();
    let _pass = lab.client.run(|| Attached::pass("cli0")).unwrap().unwrap();

    // No listener anywhere in the gateway: only XDP can complete a handshake.
    let ss = lab.gw.exec(&["ss", "-Hltn"]).unwrap();
    assert!(
        String::from_utf8_lossy(&ss.stdout).trim().is_empty(),
        "gateway must have no listener"
    );
    let refused = lab.connect(SocketAddr::from((lab.vip4, port)), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "without ackgate the gateway kernel refuses the connection"
    );

    let run = start(&lab, mode, &key, port);
    let secret = ackgate::xdp::secret::Secret::parse_hex(SECRET_HEX).unwrap();
    for target in [
        SocketAddr::from((lab.vip4, port)),
        SocketAddr::from((lab.vip6, port)),
    ] {
        let hs = lab
            .connect(target, Duration::from_secs(3))
            .expect("kernel client connects through XDP");
        let p = &hs.synack;
        assert!(
            p.ip_checksum_ok && p.tcp_checksum_ok,
            "checksums as seen by the client"
        );
        let r = packet::verify_synack(&secret.0, current_epoch(60), p).expect("cookie verifies");
        assert!(
            r.timestamps && r.sack,
            "a Linux client offers timestamps and SACK: {r:?}"
        );
        assert!(r.wscale.is_some());
    }
    let (status, out) = run.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "ackgate exits cleanly on SIGTERM: {out:?}"
    );
    let c = last_counters(&out).expect("final counters printed");
    assert_eq!(
        counter(&c, "syn_answered"),
        2,
        "one SYN-ACK per connect: {out:?}"
    );
    assert_eq!(counter(&c, "drop_malformed"), 0);

    // Detached on exit: the kernel is back in charge and refuses again.
    let after = lab.connect(SocketAddr::from((lab.vip4, port)), Duration::from_secs(2));
    assert!(after.is_err(), "XDP detached when ackgate exited");
    std::fs::remove_file(key).ok();
}

#[test]
fn kernel_client_handshake_answered_by_xdp_native() {
    handshakes("native");
}

#[test]
fn kernel_client_handshake_answered_by_xdp_skb_mode() {
    handshakes("skb");
}

fn ackgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(ackgate_bin()).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_input_gives_one_clear_error() {
    require_root();
    let (code, text) = ackgate(&[
        "run",
        "--iface",
        "nosuch0",
        "--listen",
        "198.18.0.1:80",
        "--syn-only",
    ]);
    assert_eq!(code, 1);
    assert_eq!(text.trim(), "ackgate: no such interface: nosuch0");

    let bad = std::env::temp_dir().join(format!("ackgate-bad-{}.key", std::process::id()));
    std::fs::write(&bad, "hello").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = ackgate(&[
        "run",
        "--iface",
        "lo",
        "--listen",
        "127.0.0.1:80",
        "--syn-only",
        "--secret-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        text.contains("must hold exactly 32 hex digits") && text.lines().count() == 1,
        "{text}"
    );
    std::fs::remove_file(bad).ok();

    // Not root: one line saying so (setpriv drops to nobody).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ackgate_bin())
        .args([
            "run",
            "--iface",
            "lo",
            "--listen",
            "127.0.0.1:80",
            "--syn-only",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.trim().starts_with("ackgate: must run as root") && text.lines().count() == 1,
        "{text}"
    );

    // No backend and no --syn-only: refused, with the reason.
    let (code, text) = ackgate(&["run", "--iface", "lo", "--listen", "127.0.0.1:80"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("no backend") && text.contains("--syn-only") && text.lines().count() == 1,
        "{text}"
    );
    let (code, text) = ackgate(&["run", "--iface", "lo", "--listen", "::1:80"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(text.contains("IPv6 addresses go in brackets"), "{text}");
    let (code, text) = ackgate(&["run", "--iface", "lo", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2);
    assert!(text.contains("port must be 1-65535"), "{text}");
    let (code, text) = ackgate(&[
        "run",
        "--iface",
        "lo",
        "--listen",
        "127.0.0.1:80",
        "--xdp-mode",
        "turbo",
    ]);
    assert_eq!(code, 2);
    assert!(text.contains("native") && text.contains("skb"), "{text}");
}
