//! PROXY protocol headers (v1 text, v2 binary), so the backend sees the real
//! client address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Which header to send to backends, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Off,
    V1,
    V2,
}

const V2_SIG: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// The header for a connection from `client` to `service` (empty for Off).
pub fn header(mode: Mode, client: SocketAddr, service: SocketAddr) -> Vec<u8> {
    match mode {
        Mode::Off => Vec::new(),
        Mode::V1 => {
            // One family for both addresses: mixed ones both as IPv6.
            let (c, s, fam) = match (client.ip(), service.ip()) {
                (c @ IpAddr::V4(_), s @ IpAddr::V4(_)) => (c, s, "TCP4"),
                (c, s) => (v6(c).into(), v6(s).into(), "TCP6"),
            };
            format!(
                "PROXY {fam} {c} {s} {} {}\r\n",
                client.port(),
                service.port()
            )
            .into_bytes()
        }
        Mode::V2 => {
            let mut h = V2_SIG.to_vec();
            h.push(0x21); // version 2, PROXY command
            match (client, service) {
                (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                    h.push(0x11); // AF_INET, STREAM
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&c.ip().octets());
                    h.extend_from_slice(&s.ip().octets());
                }
                (c, s) => {
                    h.push(0x21); // AF_INET6, STREAM
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&v6(c.ip()).octets());
                    h.extend_from_slice(&v6(s.ip()).octets());
                }
            }
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&service.port().to_be_bytes());
            h
        }
    }
}

/// An address as IPv6, an IPv4 one mapped (::ffff:a.b.c.d).
fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped(),
        IpAddr::V6(v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_layouts() {
        let c: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let s: SocketAddr = "198.18.0.1:80".parse().unwrap();
        assert_eq!(
            header(Mode::V1, c, s),
            b"PROXY TCP4 198.18.0.2 198.18.0.1 40000 80\r\n"
        );
        let h = header(Mode::V2, c, s);
        assert_eq!(&h[..12], &V2_SIG);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..24], &[198, 18, 0, 2, 198, 18, 0, 1]);
        assert_eq!(&h[24..], &[0x9c, 0x40, 0, 80]);
        let c6: SocketAddr = "[fd00::2]:1".parse().unwrap();
        let s6: SocketAddr = "[fd00::1]:2".parse().unwrap();
        assert_eq!(
            header(Mode::V1, c6, s6),
            b"PROXY TCP6 fd00::2 fd00::1 1 2\r\n"
        );
        let h = header(Mode::V2, c6, s6);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x21);
        assert!(header(Mode::Off, c, s).is_empty());
    }

    /// Found writing the fuzz round trip: a v1 header named its family after the client
    /// alone, so an IPv4 client and an IPv6 service gave "TCP4" with an
    /// IPv6 address, which readers refuse.
    #[test]
    fn mixed_families_are_both_ipv6() {
        let c: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let s6: SocketAddr = "[fd00::1]:2".parse().unwrap();
        assert_eq!(
            header(Mode::V1, c, s6),
            b"PROXY TCP6 ::ffff:198.18.0.2 fd00::1 40000 2\r\n"
        );
        let h = header(Mode::V2, c, s6);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&h[16..32], &Ipv6Addr::from(0xffff_c612_0002u128).octets());
    }
}
