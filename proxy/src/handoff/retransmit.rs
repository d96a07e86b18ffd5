//! SYN-ACK retransmission for server-first services (SSH, SMTP: the server
//! speaks first).
//!
//! A client whose ACK was lost (or dropped because the ring was full, or
//! whose handoff failed) believes it is connected; if the protocol has the
//! server speak first, it waits for a banner and sends nothing, so no
//! zero-window probe ever carries its cookie again. A kernel listener would
//! retransmit its SYN-ACK after a second; a cookie responder has no state
//! to do that with. For services marked server-first, XDP remembers each
//! SYN-ACK in a bounded LRU map (`RECENT`), and this module, on the engine's
//! tick, retransmits those still there after 1, 3 and 7 seconds, as Linux
//! does. The client answers a retransmitted SYN-ACK with an ACK (a
//! challenge ACK: same sequence numbers, same echoed TSval), which XDP
//! verifies like the first. A handoff removes the flow's entry.
//!
//! Under a flood the map turns over faster than a second, so nothing lives
//! long enough to be retransmitted: it degrades to stateless. A token bucket
//! caps what a slower flood of spoofed SYNs could make us reflect.

use std::{
    collections::{HashMap as Seen, HashSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use ackgate_common::wire::{RecentKey, RecentSynAck};
use aya::maps::{HashMap, MapData, MapError};

use crate::{
    sys::raw::RawSender,
    xdp::ring::{ip_of, words},
};

/// Ages (ms since the SYN-ACK) at which it is sent again: Linux's first
/// three SYN-ACK retransmissions.
pub const SCHEDULE_MS: [u32; 3] = [1_000, 3_000, 7_000];
/// Entries older than this are removed (the last retransmission went out).
pub const FORGET_AFTER_MS: u32 = 15_000;
/// Most retransmissions per second, and the burst allowed.
pub const MAX_PER_SEC: f64 = 1_000.0;

/// What a tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub sent: u64,
    /// Due, but over the rate budget.
    pub over_budget: u64,
    /// The raw send failed (no route to a spoofed source, say).
    pub failed: u64,
}

pub struct Retransmitter {
    map: HashMap<MapData, RecentKey, RecentSynAck>,
    /// Retransmissions sent per remembered SYN-ACK.
    sent: Seen<RecentKey, usize>,
    tokens: f64,
    refilled: Instant,
}

/// The `RECENT` key of a flow (client and service as the client sees them).
pub fn key(client: SocketAddr, service: SocketAddr) -> RecentKey {
    let (c, family) = words(client.ip());
    let (s, _) = words(service.ip());
    RecentKey {
        client: c,
        service: s,
        client_port_be: client.port().to_be(),
        service_port_be: service.port().to_be(),
        family,
        _pad: [0; 3],
    }
}

/// A remembered SYN-ACK's source, destination and TCP bytes as XDP sent
/// them (their checksum covers the same addresses; a fresh IP header goes
/// around them).
fn packet<'a>(k: &RecentKey, v: &'a RecentSynAck) -> Option<(IpAddr, IpAddr, &'a [u8])> {
    let tcp = v.tcp.get(..v.tcp_len as usize)?;
    let service = ip_of(&k.service, k.family)?;
    let client = ip_of(&k.client, k.family)?;
    Some((service, client, tcp))
}

impl Retransmitter {
    pub fn new(map: HashMap<MapData, RecentKey, RecentSynAck>) -> Self {
        Retransmitter {
            map,
            sent: Seen::new(),
            tokens: MAX_PER_SEC,
            refilled: Instant::now(),
        }
    }

    /// The flow was handed off: its SYN-ACK needs no retransmission.
    pub fn forget(&mut self, client: SocketAddr, service: SocketAddr) {
        let k = key(client, service);
        match self.map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => tracing::debug!(error = %e, "removing a remembered SYN-ACK"),
        }
        self.sent.remove(&k);
    }

    /// Sends the SYN-ACKs that are due at `now_ms` (the cookie clock).
    pub fn tick(&mut self, now_ms: u32, sender: &RawSender) -> Tick {
        let mut t = Tick::default();
        let elapsed = self.refilled.elapsed().as_secs_f64();
        self.refilled = Instant::now();
        self.tokens = (self.tokens + elapsed * MAX_PER_SEC).min(MAX_PER_SEC);
        let keys: Vec<RecentKey> = self.map.keys().filter_map(Result::ok).collect();
        let mut live = HashSet::with_capacity(keys.len());
        for k in keys {
            let Ok(v) = self.map.get(&k, 0) else {
                continue;
            };
            let age = now_ms.wrapping_sub(v.sent_ms);
            let n = self.sent.get(&k).copied().unwrap_or(0);
            if age > FORGET_AFTER_MS || n >= SCHEDULE_MS.len() {
                let _ = self.map.remove(&k);
                self.sent.remove(&k);
                continue;
            }
            live.insert(k);
            if age < SCHEDULE_MS[n] {
                continue;
            }
            if self.tokens < 1.0 {
                t.over_budget += 1;
                continue;
            }
            self.tokens -= 1.0;
            self.sent.insert(k, n + 1);
            match packet(&k, &v).map(|(src, dst, tcp)| sender.send_tcp(src, dst, tcp)) {
                Some(Ok(())) => t.sent += 1,
                _ => t.failed += 1,
            }
        }
        self.sent.retain(|k, _| live.contains(k));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_packets_carry_the_flow_in_network_order() {
        let c: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let s: SocketAddr = "198.18.0.1:22".parse().unwrap();
        let k = key(c, s);
        assert_eq!(k.client[0].to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(k.client_port_be.to_ne_bytes(), 40000u16.to_be_bytes());
        let mut v = RecentSynAck {
            tcp: [0; 40],
            tcp_len: 24,
            sent_ms: 0,
        };
        v.tcp[0] = 0xab;
        let (src, dst, tcp) = packet(&k, &v).unwrap();
        assert_eq!((src, dst), (s.ip(), c.ip()));
        assert_eq!((tcp.len(), tcp[0]), (24, 0xab));
        let p = crate::sys::raw::ip_packet(src, dst, tcp).unwrap();
        assert_eq!(p.len(), 44);
        assert_eq!(&p[12..20], &[198, 18, 0, 1, 198, 18, 0, 2]);
        assert_eq!(p[20], 0xab);
        let k6 = key(
            "[fd00::2]:5".parse().unwrap(),
            "[fd00::1]:22".parse().unwrap(),
        );
        let (src, dst, tcp) = packet(&k6, &v).unwrap();
        assert_eq!(dst, "fd00::2".parse::<IpAddr>().unwrap());
        let p = crate::sys::raw::ip_packet(src, dst, tcp).unwrap();
        assert_eq!((p.len(), p[6], p[40]), (64, 6, 0xab));
        v.tcp_len = 41;
        assert!(packet(&k6, &v).is_none(), "a length past the buffer");
    }
}
