//! The handoff ring: what XDP submits for each verified ACK, decoded once
//! into a [`Flow`]. Addresses travel as the program reads them from the
//! packet: 32-bit words in network byte order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ackgate_common::{
    cookie::MAX_WSCALE,
    options::NO_WSCALE,
    wire::{Handoff, HF_PROBE, HF_SACK, HF_TIMESTAMPS},
};

use crate::handoff::HandoffError;

/// A verified flow, decoded from a [`Handoff`] event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub client_isn: u32,
    pub cookie: u32,
    pub mss: u16,
    pub client_wscale: Option<u8>,
    pub sack: bool,
    pub timestamps: bool,
    /// The client's TSval in its ACK, and our SYN-ACK's TSval it echoed.
    pub client_tsval: u32,
    pub synack_tsval: u32,
    /// The client's window field (unscaled).
    pub client_window: u16,
    pub probe: bool,
}

/// One ring record as the program wrote it; `None` for a short record.
pub fn event(item: &[u8]) -> Option<Handoff> {
    if item.len() < std::mem::size_of::<Handoff>() {
        return None;
    }
    // SAFETY: the length is checked above; the program writes whole
    // `Handoff` records of plain integers (valid for any bits), read
    // unaligned because the ring guarantees no alignment to us.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Handoff>()) })
}

impl Flow {
    pub fn from_event(e: &Handoff) -> Result<Self, HandoffError> {
        let (Some(client_ip), Some(service_ip)) =
            (ip_of(&e.saddr, e.family), ip_of(&e.daddr, e.family))
        else {
            return Err(HandoffError::Event(e.family));
        };
        Ok(Flow {
            client: SocketAddr::new(client_ip, u16::from_be(e.sport_be)),
            service: SocketAddr::new(service_ip, u16::from_be(e.dport_be)),
            client_isn: e.client_isn,
            cookie: e.cookie,
            mss: e.mss,
            // RFC 7323 caps the shift at 14 (a larger one is read as 14);
            // the program already does, but a shift past 31 would make
            // the window arithmetic overflow.
            client_wscale: (e.wscale != NO_WSCALE).then_some(e.wscale.min(MAX_WSCALE)),
            sack: e.flags & HF_SACK != 0,
            timestamps: e.flags & HF_TIMESTAMPS != 0,
            client_tsval: e.tsval,
            synack_tsval: e.tsecr,
            client_window: e.window,
            probe: e.flags & HF_PROBE != 0,
        })
    }
}

/// An address as the program's words, and its family (4 or 6).
pub fn words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], 4),
        IpAddr::V6(a) => {
            let o = a.octets();
            (
                [0, 4, 8, 12].map(|k| u32::from_ne_bytes([o[k], o[k + 1], o[k + 2], o[k + 3]])),
                6,
            )
        }
    }
}

/// The address in the program's words; `None` for an unknown family.
pub fn ip_of(w: &[u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        4 => Some(Ipv4Addr::from(w[0].to_ne_bytes()).into()),
        6 => {
            let mut o = [0u8; 16];
            for (i, x) in w.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
            }
            Some(Ipv6Addr::from(o).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_in_network_order() {
        for a in ["198.18.0.2", "fd00:ac6a::1:2"] {
            let ip: IpAddr = a.parse().unwrap();
            let (w, f) = words(ip);
            assert_eq!(ip_of(&w, f), Some(ip));
        }
        let (w, _) = words("198.18.0.2".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(ip_of(&w, 5), None);
        assert!(event(&[0u8; 8]).is_none(), "a short record");
    }

    /// A record's window shift is read as RFC 7323 bounds it: at most 14,
    /// none stays none (a shift past 31 would overflow the window sums).
    #[test]
    fn the_client_shift_is_capped_at_14() {
        let (saddr, family) = words("198.18.0.2".parse().unwrap());
        let e = |wscale| Handoff {
            saddr,
            daddr: saddr,
            family,
            wscale,
            ..Handoff::default()
        };
        let shift = |w| Flow::from_event(&e(w)).unwrap().client_wscale;
        assert_eq!(shift(7), Some(7));
        assert_eq!(shift(14), Some(14));
        assert_eq!(shift(15), Some(14));
        assert_eq!(shift(200), Some(14));
        assert_eq!(shift(NO_WSCALE), None);
    }
}
