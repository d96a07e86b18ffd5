//! Access lists, checked on SYNs before any cookie work: the global list
//! (`ACL4`/`ACL6`, by source prefix), then the SYN's service's list
//! (`SVC_ACL4`/`SVC_ACL6`, by service address:port, then source prefix).
//! Each is one LPM-trie lookup, made only when its `Config::flags` bit is
//! set: with no list configured the SYN path makes none.

use ackgate_common::wire::{
    acl_port_word, ACL_ALLOW, FLAG_ACL_GLOBAL, FLAG_ACL_SERVICE, SVC_ACL4_FIXED_BITS,
    SVC_ACL6_FIXED_BITS,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{ACL4, ACL6, SVC_ACL4, SVC_ACL6};

/// What `acl` found.
pub(crate) const ACL_OK: u32 = 0;
pub(crate) const ACL_REFUSED_GLOBAL: u32 = 1;
pub(crate) const ACL_REFUSED_SERVICE: u32 = 2;

/// An entry refuses unless it says allow; no entry allows.
#[inline(always)]
fn refused(v: Option<&u8>) -> bool {
    matches!(v, Some(v) if *v != ACL_ALLOW)
}

/// IPv4: addresses and port as in the packet (network order).
#[inline(always)]
pub(crate) fn v4(saddr: u32, daddr: u32, dport_be: u16, flags: u32) -> u32 {
    if flags & FLAG_ACL_GLOBAL != 0 && refused(ACL4.get(Key::new(32, saddr))) {
        return ACL_REFUSED_GLOBAL;
    }
    if flags & FLAG_ACL_SERVICE != 0 {
        let k = Key::new(
            SVC_ACL4_FIXED_BITS + 32,
            [acl_port_word(dport_be), daddr, saddr],
        );
        if refused(SVC_ACL4.get(k)) {
            return ACL_REFUSED_SERVICE;
        }
    }
    ACL_OK
}

/// IPv6: addresses and port as in the packet (network-order words).
#[inline(always)]
pub(crate) fn v6(s: &[u32; 4], d: &[u32; 4], dport_be: u16, flags: u32) -> u32 {
    if flags & FLAG_ACL_GLOBAL != 0 && refused(ACL6.get(Key::new(128, *s))) {
        return ACL_REFUSED_GLOBAL;
    }
    if flags & FLAG_ACL_SERVICE != 0 {
        let k = Key::new(
            SVC_ACL6_FIXED_BITS + 128,
            [
                acl_port_word(dport_be),
                d[0],
                d[1],
                d[2],
                d[3],
                s[0],
                s[1],
                s[2],
                s[3],
            ],
        );
        if refused(SVC_ACL6.get(k)) {
            return ACL_REFUSED_SERVICE;
        }
    }
    ACL_OK
}
