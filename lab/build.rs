//! Points `include_bytes_aligned!` at the harness XDP object. proxy/build.rs
//! builds every program of `ebpf/` once and reports where (cargo passes a
//! dependency's `links` metadata to its dependents' build scripts), so the
//! eBPF crate is not compiled twice.
fn main() {
    let dir = std::env::var("DEP_ACKGATE_XDP_OBJECT_DIR")
        .expect("the ackgate crate's build script reports its object directory");
    println!("cargo:rustc-env=ACKGATE_HARNESS_OBJECT={dir}/{}", HARNESS);
    println!("cargo:rerun-if-env-changed=DEP_ACKGATE_XDP_OBJECT_DIR");
}

/// The harness programs' object file.
const HARNESS: &str = "ackgate-harness";
