//! Access lists: CIDR allow and deny lists, global and per service, that
//! the XDP program applies to SYNs before any cookie work.
//!
//! Semantics, per list: the longest prefix among its allow and deny entries
//! that contains the source decides; a source no entry contains is allowed
//! if the list has no allow entries and refused otherwise (an allow list
//! names the only networks let in, of either family). A SYN must pass the
//! global list, then its service's list. Refused SYNs are dropped, never
//! answered, and counted (`drop_acl_global`, `drop_acl_service`).
//!
//! In the maps a list is its entries plus, when it has allow entries, a
//! deny entry with a zero-length source prefix per family (unless the list
//! names that prefix itself): the program only does the longest-prefix
//! lookup.

use std::{
    borrow::{Borrow, BorrowMut},
    cmp::Reverse,
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use ackgate_common::wire::{
    acl_port_word, AclKey4, AclKey6, SvcAclKey4, SvcAclKey6, ACL_ALLOW, ACL_DENY,
    SVC_ACL4_FIXED_BITS, SVC_ACL6_FIXED_BITS,
};
use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData, MapError},
    Pod,
};
use thiserror::Error;

/// An IPv4 or IPv6 network: an address and a prefix length, host bits
/// clear. Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a host
/// prefix: /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CidrError {
    #[error("{0}: not an IP address or network (expected ADDR or ADDR/LEN, e.g. 10.0.0.0/8 or 2001:db8::/32)")]
    Syntax(String),
    #[error("{text}: bad prefix length (expected 0..={max})")]
    PrefixLength { text: String, max: u8 },
    #[error("{text}: host bits set (did you mean {network}?)")]
    HostBits { text: String, network: Cidr },
}

impl Cidr {
    /// `addr/len`, refused if `len` is too long for the family or `addr`
    /// has bits set past the prefix.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if len > max {
            return Err(CidrError::PrefixLength {
                text: format!("{addr}/{len}"),
                max,
            });
        }
        let network = Cidr {
            addr: mask(addr, len),
            len,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                text: format!("{addr}/{len}"),
                network,
            });
        }
        Ok(network)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in this network (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// `a` with the bits past `len` cleared.
fn mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            Ipv4Addr::from(u32::from(v) & m).into()
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            Ipv6Addr::from(u128::from(v) & m).into()
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let t = s.trim();
        let (a, l) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(t.to_string()))?;
        let max = max_len(addr);
        let len = match l {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(CidrError::PrefixLength {
                        text: t.to_string(),
                        max,
                    })
                }
            },
        };
        Cidr::new(addr, len).map_err(|e| match e {
            CidrError::HostBits { network, .. } => CidrError::HostBits {
                text: t.to_string(),
                network,
            },
            e => e,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One allow and one deny list (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AclError {
    #[error("{0} is in both the allow and the deny list")]
    Conflict(Cidr),
    #[error("{0} has two access lists")]
    DuplicateService(SocketAddr),
}

impl AccessList {
    /// No entries: allows everything, and costs the SYN path nothing.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Refuses a list naming the same network in both lists.
    pub fn validate(&self) -> Result<(), AclError> {
        match self.deny.iter().find(|d| self.allow.contains(d)) {
            Some(c) => Err(AclError::Conflict(*c)),
            None => Ok(()),
        }
    }

    /// Whether `source` passes this list: the reference semantics the XDP
    /// program implements with its tries.
    pub fn allows(&self, source: IpAddr) -> bool {
        let best = |l: &[Cidr]| l.iter().filter(|c| c.contains(source)).map(|c| c.len).max();
        match (best(&self.allow), best(&self.deny)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.allow.is_empty(),
        }
    }

    /// The entries as installed: (network, allow), the default deny
    /// included. Validate first: a network in both lists is listed twice.
    pub fn entries(&self) -> Vec<(Cidr, bool)> {
        let mut out: Vec<(Cidr, bool)> = self.allow.iter().map(|c| (*c, true)).collect();
        out.extend(self.deny.iter().map(|c| (*c, false)));
        if !self.allow.is_empty() {
            for any in [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()] {
                let c = Cidr { addr: any, len: 0 };
                if !out.iter().any(|(x, _)| *x == c) {
                    out.push((c, false));
                }
            }
        }
        out
    }
}

/// A trie key: prefix length and data, as the program looks it up.
type Entries<K> = BTreeMap<(u32, K), u8>;

/// What the four access-list maps should hold.
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) global4: Entries<AclKey4>,
    pub(crate) global6: Entries<AclKey6>,
    pub(crate) service4: Entries<SvcAclKey4>,
    pub(crate) service6: Entries<SvcAclKey6>,
}

/// An address's network-order words, as the packet (and so the key) holds
/// them.
fn words4(a: Ipv4Addr) -> u32 {
    super::ring::words(a.into()).0[0]
}

fn words6(a: Ipv6Addr) -> [u32; 4] {
    super::ring::words(a.into()).0
}

fn value(allow: bool) -> u8 {
    if allow {
        ACL_ALLOW
    } else {
        ACL_DENY
    }
}

impl Tables {
    /// The tables for a global list and per-service lists (each keyed by
    /// one protected address:port; a service's entries of the other family
    /// can never match it and are left out).
    pub(crate) fn build(
        global: &AccessList,
        per_service: &[(SocketAddr, &AccessList)],
    ) -> Result<Self, AclError> {
        global.validate()?;
        let mut t = Tables::default();
        for (c, allow) in global.entries() {
            let v = value(allow);
            match c.addr {
                IpAddr::V4(a) => t.global4.insert((c.len as u32, words4(a)), v),
                IpAddr::V6(a) => t.global6.insert((c.len as u32, words6(a)), v),
            };
        }
        for (i, (svc, list)) in per_service.iter().enumerate() {
            list.validate()?;
            if per_service[..i].iter().any(|(s, _)| s == svc) {
                return Err(AclError::DuplicateService(*svc));
            }
            let port = acl_port_word(svc.port().to_be());
            for (c, allow) in list.entries() {
                let v = value(allow);
                match (svc.ip(), c.addr) {
                    (IpAddr::V4(d), IpAddr::V4(s)) => {
                        let k = [port, words4(d), words4(s)];
                        t.service4
                            .insert((SVC_ACL4_FIXED_BITS + c.len as u32, k), v);
                    }
                    (IpAddr::V6(d), IpAddr::V6(s)) => {
                        let (d, s) = (words6(d), words6(s));
                        let k = [port, d[0], d[1], d[2], d[3], s[0], s[1], s[2], s[3]];
                        t.service6
                            .insert((SVC_ACL6_FIXED_BITS + c.len as u32, k), v);
                    }
                    _ => {}
                }
            }
        }
        Ok(t)
    }
}

/// One access-list map, brought to `want` in two steps: [`Trie::insert`]
/// adds and updates entries, longest prefix first, so until a network's own
/// entry exists a longer one already decides for its subnets; then
/// [`Trie::prune`] deletes the stale ones, shortest prefix first, so the
/// entry that decided a source is never removed while a shorter stale one
/// could decide it instead. A source whose verdict the update does not
/// change is never refused or let in by mistake in between.
pub(crate) struct Trie<T, K: Pod + Ord> {
    pub(crate) map: LpmTrie<T, K, u8>,
}

impl<T: Borrow<MapData>, K: Pod + Ord> Trie<T, K> {
    /// What the map holds now.
    pub(crate) fn installed(&self) -> Result<Entries<K>, MapError> {
        let mut out = BTreeMap::new();
        for kv in self.map.iter() {
            let (k, v) = kv?;
            out.insert((k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }
}

impl<T: BorrowMut<MapData>, K: Pod + Ord> Trie<T, K> {
    pub(crate) fn insert(&mut self, want: &Entries<K>) -> Result<(), MapError> {
        let have = self.installed()?;
        let mut todo: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .collect();
        todo.sort_by_key(|((len, _), _)| Reverse(*len));
        for ((len, data), v) in todo {
            self.map.insert(&Key::new(*len, *data), v, 0)?;
        }
        Ok(())
    }

    pub(crate) fn prune(&mut self, want: &Entries<K>) -> Result<(), MapError> {
        let mut stale: Vec<_> = self
            .installed()?
            .into_keys()
            .filter(|k| !want.contains_key(k))
            .collect();
        stale.sort_by_key(|(len, _)| *len);
        for (len, data) in stale {
            self.map.remove(&Key::new(len, data))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_bare_addresses() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(c("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(c("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(c("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(c(" 10.1.0.0/16 ").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let e = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            e("10.0.0.1/8"),
            "10.0.0.1/8: host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            e("2001:db8::1/32"),
            "2001:db8::1/32: host bits set (did you mean 2001:db8::/32?)"
        );
        assert_eq!(
            e("10.0.0.0/33"),
            "10.0.0.0/33: bad prefix length (expected 0..=32)"
        );
        assert_eq!(
            e("2001:db8::/129"),
            "2001:db8::/129: bad prefix length (expected 0..=128)"
        );
        for bad in ["10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/x"] {
            assert!(e(bad).contains("bad prefix length"), "{bad}: {}", e(bad));
        }
        for bad in ["", "10.0.0/8", "example.com", "10.0.0.0.0/8", "/8"] {
            assert!(e(bad).contains("not an IP address"), "{bad}: {}", e(bad));
        }
        assert!(Cidr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 8).is_err());
    }

    #[test]
    fn contains_never_crosses_families() {
        assert!(c("10.0.0.0/8").contains("10.255.1.2".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(!c("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(c("::/0").contains("::1".parse().unwrap()));
        assert!(c("2001:db8:1::/48").contains("2001:db8:1:ffff::1".parse().unwrap()));
    }

    #[test]
    fn longest_prefix_decides_and_allow_lists_deny_the_rest() {
        let l = AccessList {
            allow: vec![c("10.1.2.0/24")],
            deny: vec![c("10.1.0.0/16")],
        };
        let ok = |l: &AccessList, a: &str| l.allows(a.parse().unwrap());
        assert!(ok(&l, "10.1.2.3"));
        assert!(!ok(&l, "10.1.3.3"));
        assert!(!ok(&l, "192.0.2.1"), "not allowed: an allow list refuses");
        assert!(!ok(&l, "2001:db8::1"), "of either family");
        let l = AccessList {
            allow: vec![c("10.1.0.0/16")],
            deny: vec![c("10.1.2.0/24")],
        };
        assert!(ok(&l, "10.1.3.3"));
        assert!(!ok(&l, "10.1.2.3"));
        let deny_only = AccessList {
            allow: vec![],
            deny: vec![c("10.1.0.0/16")],
        };
        assert!(ok(&deny_only, "192.0.2.1"));
        assert!(!ok(&deny_only, "10.1.0.1"));
        assert!(ok(&AccessList::default(), "10.1.0.1"));
    }

    #[test]
    fn the_same_network_in_both_lists_is_refused() {
        let l = AccessList {
            allow: vec![c("10.0.0.0/8")],
            deny: vec![c("192.0.2.0/24"), c("10.0.0.0/8")],
        };
        assert_eq!(
            l.validate().unwrap_err().to_string(),
            "10.0.0.0/8 is in both the allow and the deny list"
        );
        assert!(Tables::build(&l, &[]).is_err());
        let ok = AccessList::default();
        let svc: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let e = Tables::build(&ok, &[(svc, &ok), (svc, &ok)]).err().unwrap();
        assert_eq!(e.to_string(), "192.0.2.1:80 has two access lists");
    }

    #[test]
    fn entries_add_the_default_deny_unless_named() {
        let l = AccessList {
            allow: vec![c("10.0.0.0/8")],
            deny: vec![],
        };
        let e = l.entries();
        assert_eq!(e.len(), 3);
        assert!(e.contains(&(c("0.0.0.0/0"), false)));
        assert!(e.contains(&(c("::/0"), false)));
        let l = AccessList {
            allow: vec![c("10.0.0.0/8"), c("::/0")],
            deny: vec![],
        };
        assert_eq!(l.entries().len(), 3, "::/0 allowed as the user wrote");
        assert!(l.entries().contains(&(c("::/0"), true)));
        let deny_only = AccessList {
            allow: vec![],
            deny: vec![c("10.0.0.0/8")],
        };
        assert_eq!(deny_only.entries(), vec![(c("10.0.0.0/8"), false)]);
    }

    #[test]
    fn service_keys_are_port_service_then_source() {
        let l = AccessList {
            allow: vec![],
            deny: vec![c("10.1.0.0/16"), c("2001:db8::/32")],
        };
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::80]:443".parse().unwrap();
        let t = Tables::build(&AccessList::default(), &[(v4, &l), (v6, &l)]).unwrap();
        assert!(t.global4.is_empty() && t.global6.is_empty());
        let ((len, k), v) = t.service4.iter().next().unwrap();
        assert_eq!((*len, *v), (64 + 16, ACL_DENY));
        let bytes: Vec<u8> = k.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, [1, 187, 0, 0, 192, 0, 2, 1, 10, 1, 0, 0]);
        assert_eq!(
            t.service6.len(),
            1,
            "each service gets its family's entries"
        );
        let ((len, k), _) = t.service6.iter().next().unwrap();
        assert_eq!(*len, 160 + 32);
        assert_eq!(k[5].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
    }
}
