//! Layouts the XDP program and userspace share: sizes without implicit
//! padding (the maps' `Pod` impls rely on it) and the access-list keys.

use core::mem::size_of;

use ackgate_common::wire::{
    acl_port_word, Config, Counter, Iface, SvcAclKey4, SvcAclKey6, COUNTERS, MAX_IFACES,
    SVC_ACL4_FIXED_BITS, SVC_ACL6_FIXED_BITS,
};

#[test]
fn config_has_no_implicit_padding() {
    assert_eq!(size_of::<Iface>(), 16);
    assert_eq!(size_of::<Config>(), 32 + MAX_IFACES * size_of::<Iface>());
}

#[test]
fn iface_mac_word_is_the_frame_bytes_in_memory_order() {
    let i = Iface::new(7, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!(
        i.mac.to_le_bytes(),
        [0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0]
    );
    assert_eq!(i.ifindex, 7);
}

#[test]
fn port_word_is_the_port_in_network_order_then_zeros() {
    // The port as the program loads it from the packet: network order.
    let w = acl_port_word(443u16.to_be());
    assert_eq!(w.to_ne_bytes(), [0x01, 0xbb, 0, 0]);
    // The fixed part is the port word and the service address.
    assert_eq!(
        SVC_ACL4_FIXED_BITS as usize,
        8 * (size_of::<SvcAclKey4>() - 4)
    );
    assert_eq!(
        SVC_ACL6_FIXED_BITS as usize,
        8 * (size_of::<SvcAclKey6>() - 16)
    );
}

#[test]
fn counters_are_listed_once_in_order_with_distinct_names() {
    assert_eq!(Counter::ALL.len(), COUNTERS);
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i);
        assert!(Counter::ALL[..i].iter().all(|d| d.name() != c.name()));
    }
    assert_eq!(Counter::DropAclGlobal.name(), "drop_acl_global");
    assert_eq!(Counter::DropAclService.name(), "drop_acl_service");
}
