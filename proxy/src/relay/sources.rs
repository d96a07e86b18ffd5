//! Per-source limits: how many connections one source (an IPv4 address,
//! or an IPv6 prefix, by default a /64) holds at once, and how many it may
//! open per second (a token bucket). Counted after the handshake, where a
//! source cannot be spoofed; a refusal is a RST.
//!
//! The table holds an entry per source with a connection open or tokens
//! spent in the last second; [`Sources::sweep`] drops the others, so its
//! size follows the live connections, not the traffic's history.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Instant,
};

/// A service's per-source limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    pub max: u32,
    /// New connections per second; 0 for no limit.
    pub rate: u32,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

/// Why a source was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `max` connections already.
    Concurrent,
    /// It opened `rate` in the last second.
    Rate,
}

/// A source: its address masked to the prefix, and the prefix length.
type Key = (IpAddr, u8);

struct Entry {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
pub struct Sources {
    table: Mutex<HashMap<Key, Entry>>,
}

/// One admitted connection; dropping it gives the slot back.
pub struct Admitted {
    sources: Arc<Sources>,
    key: Key,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.sources.table.lock().unwrap();
        if let Some(e) = t.get_mut(&self.key) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

/// `ip` with the bits past `len` cleared.
pub fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl Sources {
    /// Admits a connection from `ip` under `l`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        l: &SourceLimits,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let ip = ip.to_canonical();
        let len = if ip.is_ipv4() {
            l.prefix_v4
        } else {
            l.prefix_v6
        };
        let key = (masked(ip, len), len);
        let mut t = self.table.lock().unwrap();
        let e = t.entry(key).or_insert(Entry {
            active: 0,
            tokens: f64::from(l.rate),
            refilled: now,
        });
        if e.active >= l.max {
            return Err(Refusal::Concurrent);
        }
        if l.rate > 0 {
            let rate = f64::from(l.rate);
            let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + dt * rate).min(rate);
            e.refilled = now;
            if e.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            e.tokens -= 1.0;
        }
        e.active += 1;
        Ok(Admitted {
            sources: self.clone(),
            key,
        })
    }

    /// Forgets sources with nothing open whose bucket has refilled (a
    /// second after their last connection at most).
    pub fn sweep(&self, now: Instant) {
        self.table.lock().unwrap().retain(|_, e| {
            e.active > 0 || now.saturating_duration_since(e.refilled).as_secs_f64() < 1.0
        });
    }

    pub fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const L: SourceLimits = SourceLimits {
        max: 2,
        rate: 0,
        prefix_v4: 32,
        prefix_v6: 64,
    };

    #[test]
    fn concurrent_connections_are_capped_per_source_and_given_back() {
        let s = Arc::new(Sources::default());
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let one = s.admit(a, &L, now).unwrap();
        let _two = s.admit(a, &L, now).unwrap();
        assert_eq!(s.admit(a, &L, now).err(), Some(Refusal::Concurrent));
        // Another address is not affected; an IPv4-mapped one is the same.
        assert!(s.admit("192.0.2.2".parse().unwrap(), &L, now).is_ok());
        assert_eq!(
            s.admit("::ffff:192.0.2.1".parse().unwrap(), &L, now).err(),
            Some(Refusal::Concurrent)
        );
        drop(one);
        assert!(s.admit(a, &L, now).is_ok());
    }

    #[test]
    fn ipv6_sources_share_their_prefix() {
        let s = Arc::new(Sources::default());
        let now = Instant::now();
        let _a = s
            .admit("2001:db8:1:2::1".parse().unwrap(), &L, now)
            .unwrap();
        let _b = s
            .admit("2001:db8:1:2:ffff::9".parse().unwrap(), &L, now)
            .unwrap();
        assert_eq!(
            s.admit("2001:db8:1:2::77".parse().unwrap(), &L, now).err(),
            Some(Refusal::Concurrent)
        );
        assert!(s.admit("2001:db8:1:3::1".parse().unwrap(), &L, now).is_ok());
        let l48 = SourceLimits { prefix_v6: 48, ..L };
        assert_eq!(
            masked("2001:db8:1:3::1".parse().unwrap(), 48),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        let _c = s.admit("2001:db8:1:3::1".parse().unwrap(), &l48, now);
        let _d = s.admit("2001:db8:1:4::1".parse().unwrap(), &l48, now);
        assert_eq!(
            s.admit("2001:db8:1:5::1".parse().unwrap(), &l48, now).err(),
            Some(Refusal::Concurrent)
        );
    }

    #[test]
    fn new_connections_per_second_are_a_token_bucket() {
        let s = Arc::new(Sources::default());
        let l = SourceLimits {
            max: 1_000,
            rate: 10,
            ..L
        };
        let t0 = Instant::now();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(s.admit(a, &l, t0).unwrap());
        }
        assert_eq!(s.admit(a, &l, t0).err(), Some(Refusal::Rate));
        // A tenth of a second buys one more.
        assert!(s.admit(a, &l, t0 + Duration::from_millis(100)).is_ok());
        assert_eq!(
            s.admit(a, &l, t0 + Duration::from_millis(100)).err(),
            Some(Refusal::Rate)
        );
    }

    #[test]
    fn sweep_keeps_only_live_or_recent_sources() {
        let s = Arc::new(Sources::default());
        let t0 = Instant::now();
        let held = s.admit("192.0.2.1".parse().unwrap(), &L, t0).unwrap();
        drop(s.admit("192.0.2.2".parse().unwrap(), &L, t0).unwrap());
        s.sweep(t0 + Duration::from_secs(2));
        assert_eq!(s.len(), 1);
        drop(held);
        s.sweep(t0 + Duration::from_secs(2));
        assert!(s.is_empty());
    }
}
