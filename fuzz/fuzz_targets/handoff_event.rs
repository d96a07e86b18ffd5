//! Decoding the handoff ring's records (`xdp::ring`): any bytes are either
//! too short, an unknown family, or a flow whose fields say what the record
//! did; the window update built for a decoded flow is a well-formed TCP
//! segment between its addresses.
#![no_main]

use ackgate::{
    handoff::window,
    xdp::ring::{event, words, Flow},
};
use ackgate_common::{checksum, cookie::MAX_WSCALE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(e) = event(data) else {
        assert!(data.len() < std::mem::size_of::<ackgate_common::wire::Handoff>());
        return;
    };
    let Ok(f) = Flow::from_event(&e) else {
        assert!(e.family != 4 && e.family != 6, "family {} refused", e.family);
        return;
    };
    // The addresses and ports are the record's, in the record's family.
    let (saddr, fam) = words(f.client.ip());
    assert_eq!(fam, e.family);
    let n = if fam == 4 { 1 } else { 4 };
    assert_eq!(saddr[..n], e.saddr[..n]);
    assert_eq!(words(f.service.ip()).0[..n], e.daddr[..n]);
    assert_eq!(f.client.port(), u16::from_be(e.sport_be));
    assert_eq!(f.service.port(), u16::from_be(e.dport_be));
    assert!(f.client_wscale.is_none_or(|w| w <= MAX_WSCALE));

    let ts = e.tsecr;
    let seg = window::update(&f, e.window, ts);
    assert_eq!(seg.len(), if f.timestamps { 32 } else { 20 });
    assert_eq!(&seg[0..2], &f.service.port().to_be_bytes());
    assert_eq!(&seg[2..4], &f.client.port().to_be_bytes());
    let octets = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    // A segment whose checksum is right sums to zero with its pseudo-header.
    assert_eq!(
        checksum::tcp(&octets(f.service.ip()), &octets(f.client.ip()), &seg),
        0,
        "window update checksum"
    );
});
