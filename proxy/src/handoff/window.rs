//! The window update that opens a handed-off client's window: the SYN-ACK
//! advertised zero, so the client waits for this ACK before sending data.

use std::net::IpAddr;

use ackgate_common::checksum;

use crate::xdp::ring::Flow;

const TCP_ACK: u8 = 0x10;
/// NOP, NOP, then the 10-byte timestamp option: Linux's layout.
const TS_PREFIX: [u8; 4] = [1, 1, 8, 10];

/// The TCP segment (checksummed) from the service to the client: our next
/// sequence number, the client's, our `window` (already scaled down), and
/// with timestamps our first TSval `ts` and the client's last.
pub fn update(flow: &Flow, window: u16, ts: u32) -> Vec<u8> {
    let opts = if flow.timestamps { 12 } else { 0 };
    let mut t = Vec::with_capacity(20 + opts);
    t.extend_from_slice(&flow.service.port().to_be_bytes());
    t.extend_from_slice(&flow.client.port().to_be_bytes());
    t.extend_from_slice(&flow.cookie.wrapping_add(1).to_be_bytes());
    t.extend_from_slice(&flow.client_isn.wrapping_add(1).to_be_bytes());
    t.extend_from_slice(&[((20 + opts) as u8 / 4) << 4, TCP_ACK]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    if flow.timestamps {
        t.extend_from_slice(&TS_PREFIX);
        t.extend_from_slice(&ts.to_be_bytes());
        t.extend_from_slice(&flow.client_tsval.to_be_bytes());
    }
    let c = checksum::tcp(&octets(flow.service.ip()), &octets(flow.client.ip()), &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(ts: bool) -> Flow {
        Flow {
            client: "198.18.0.2:40000".parse().unwrap(),
            service: "198.18.0.1:80".parse().unwrap(),
            client_isn: 100,
            cookie: 7,
            mss: 1460,
            client_wscale: Some(7),
            sack: true,
            timestamps: ts,
            client_tsval: 0xaabbccdd,
            synack_tsval: 0,
            client_window: 502,
            probe: false,
        }
    }

    #[test]
    fn an_ack_with_both_sequences_our_window_and_a_valid_checksum() {
        let f = flow(true);
        let t = update(&f, 1234, 0x01020304);
        assert_eq!(t.len(), 32);
        assert_eq!(&t[0..4], &[0, 80, 0x9c, 0x40]);
        assert_eq!(u32::from_be_bytes(t[4..8].try_into().unwrap()), 8);
        assert_eq!(u32::from_be_bytes(t[8..12].try_into().unwrap()), 101);
        assert_eq!((t[12] >> 4, t[13]), (8, TCP_ACK));
        assert_eq!(u16::from_be_bytes([t[14], t[15]]), 1234);
        assert_eq!(
            &t[20..32],
            &[1, 1, 8, 10, 1, 2, 3, 4, 0xaa, 0xbb, 0xcc, 0xdd]
        );
        let sum = checksum::tcp(&[198, 18, 0, 1], &[198, 18, 0, 2], &t);
        assert_eq!(sum, 0, "a correct segment sums to zero");
        let plain = update(&flow(false), 9, 0);
        assert_eq!((plain.len(), plain[12] >> 4), (20, 5));
    }
}
