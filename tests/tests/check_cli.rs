//! `ackgate check --config FILE`: validates a file without root and
//! without touching a running instance.

use std::process::Command;

use ackgate_tests::ackgate_bin;

fn check(file: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(ackgate_bin())
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_checks_and_bad_files_name_their_error() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ackgate.toml");
    let (code, out, err) = check(&example);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("ok: 1 services, 2 protected ADDR:PORTs on eth0 (native XDP)")
            && out.contains("service default: 203.0.113.10:443, [2001:db8::10]:443 -> 10.0.0.11:443, 10.0.0.12:443"),
        "{out}"
    );

    let dir = std::env::temp_dir().join(format!("ackgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, want) in [
        (
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nbackend = [\"10.0.0.1:80\"]\n",
            "unknown field `backend`",
        ),
        (
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\n",
            "no backend",
        ),
        (
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nepoch_secs = 0\n",
            "epoch_secs 0: must be 1-86400",
        ),
        (
            "iface = \"eth0\"\nlisten = [\"::1:80\"]\nsyn_only = true\n",
            "listen[0]",
        ),
        (
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nengine = \"uring\"\n",
            "unknown variant `uring`, expected one of `tokio`, `io_uring`, `auto`",
        ),
        (
            "iface = \"eth0\"\nlisten = [\"192.0.2.1:80\"]\nsyn_only = true\nthreads = 0\n",
            "threads 0: must be 1-256",
        ),
    ] {
        let f = dir.join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let (code, out, err) = check(&f);
        assert_eq!(code, Some(1), "{text}: {out}");
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{text}: want '{want}' on one line: {err}"
        );
    }
    let (code, _, err) = check(&dir.join("missing.toml"));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read config file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
