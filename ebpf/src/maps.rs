//! The product's maps, shared with userspace by name (`proxy/src/xdp`).
//! Layouts live in `ackgate_common::wire`.

use ackgate_common::wire::{
    AclKey4, AclKey6, Addresses, Config, KeySlot, RecentKey, RecentSynAck, SvcAclKey4, SvcAclKey6,
    ACL_ENTRIES, COUNTERS as N_COUNTERS, HANDOFF_RING_BYTES, KEY_SLOTS, PORTS_ENTRIES,
    RECENT_ENTRIES,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// The protected addresses.
#[map]
pub(crate) static ADDRS: Array<Addresses> = Array::with_max_entries(1, 0);
/// Per port: a bit per protected address, and its server-first bit.
#[map]
pub(crate) static PORTS: Array<u64> = Array::with_max_entries(PORTS_ENTRIES, 0);
/// SYN-ACKs sent to server-first clients, for userspace to retransmit.
#[map]
pub(crate) static RECENT: LruHashMap<RecentKey, RecentSynAck> =
    LruHashMap::with_max_entries(RECENT_ENTRIES, 0);
/// Cookie keys, slot `epoch % KEY_SLOTS`.
#[map]
pub(crate) static KEYS: Array<KeySlot> = Array::with_max_entries(KEY_SLOTS, 0);
#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// One per `Counter`, per CPU.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS as u32, 0);
/// Verified ACKs for userspace to take over.
#[map]
pub(crate) static HANDOFF: RingBuf = RingBuf::with_byte_size(HANDOFF_RING_BYTES, 0);
/// The global access list, by source prefix (see `wire::MAP_ACL4`).
#[map]
pub(crate) static ACL4: LpmTrie<AclKey4, u8> = LpmTrie::with_max_entries(ACL_ENTRIES, 0);
#[map]
pub(crate) static ACL6: LpmTrie<AclKey6, u8> = LpmTrie::with_max_entries(ACL_ENTRIES, 0);
/// Per-service access lists, by service address:port then source prefix.
#[map]
pub(crate) static SVC_ACL4: LpmTrie<SvcAclKey4, u8> = LpmTrie::with_max_entries(ACL_ENTRIES, 0);
#[map]
pub(crate) static SVC_ACL6: LpmTrie<SvcAclKey6, u8> = LpmTrie::with_max_entries(ACL_ENTRIES, 0);
