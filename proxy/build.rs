//! Builds the XDP programs (`../ebpf`) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker, and leaves the objects in OUT_DIR for
//! `include_bytes_aligned!`. `scripts/bootstrap.sh` installs what this needs.
//! The product embeds only `ackgate-xdp`; the directory is reported to
//! dependents (`links` metadata) for the lab's harness object.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    // aya-build watches the eBPF crate; its shared code lives in common/.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../common")
    );
    let pkg = aya_build::Package {
        name: "ackgate-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())?;
    println!("cargo:object_dir={}", std::env::var("OUT_DIR")?);
    Ok(())
}
