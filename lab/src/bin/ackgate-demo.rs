//! `ackgate-demo`: the self-contained demo (README: `scripts/demo.sh`).
//! Builds a lab of network namespaces, runs ackgate in front of a small
//! HTTP backend, sends real kernel clients, a spoofed SYN burst and forged
//! ACKs through it, and prints what its metrics saw. Needs root; cleans up
//! after itself.

fn main() {
    if let Err(e) = ackgate_lab::demo::run() {
        eprintln!("ackgate-demo: {e:#}");
        std::process::exit(1);
    }
}
