//! What the BPF_PROG_TEST_RUN tests share: XDP verdicts, the addresses of
//! their crafted frames, the SYN-ACK settings, and one run of the program.

use std::net::{Ipv4Addr, Ipv6Addr};

use ackgate::xdp::{Counters, Responder, Settings};
use ackgate_lab::harness;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 9);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xac6a, 0, 0, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xac6a, 0, 0, 0, 0, 7, 9);
pub const SETTINGS: Settings = Settings {
    mss4: 1460,
    mss6: 1440,
    wscale: 7,
    window: 0,
    ts_max_age_ms: ackgate::xdp::DEFAULT_TS_MAX_AGE_MS,
};

/// Runs the program once on `frame`: (action, output frame, counter
/// deltas). Every packet must count exactly once.
pub fn run(r: &Responder, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
    let before = r.counters().unwrap();
    let mut out = vec![0u8; 512];
    let res = harness::test_run(r, frame, &mut out).expect("test run");
    out.truncate(res.data_size_out as usize);
    let d = r.counters().unwrap().since(&before);
    assert_eq!(
        d.0.iter().sum::<u64>(),
        1,
        "exactly one counter per packet, got {d}"
    );
    (res.return_value, out, d)
}
