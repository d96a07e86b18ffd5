//! The address-family abstraction: what the SYN and ACK paths need from a
//! flow, for IPv4 (`V4`) and IPv6 (`V6`), and the kernel socket lookup.

use core::mem::size_of;

use ackgate_common::cookie::{self, FlowV4, FlowV6, Key};
use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS,
    },
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
    EbpfContext as _,
};

use crate::{acl, synack::Reply, verdict::Verdict};

/// Per-family SYN-ACK construction, cookie check and socket lookup.
pub(crate) trait Answer {
    /// The cookie SYN-ACK, written over the SYN whose IP header is at `l3`.
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict;
    /// The kernel's socket for the packet's 4-tuple, as `SOCK_*`.
    fn sock_state(&self, ctx: &XdpContext) -> u32;
    /// Cookie check for this flow: the TSval offset if valid.
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32>;
    /// Whether the source can never open a connection (see `DropMartian`).
    fn martian(&self) -> bool;
    /// The access lists' verdict on this SYN (`acl::ACL_*`), for the lists
    /// `flags` (`Config::flags`) turns on.
    fn acl(&self, flags: u32) -> u32;
    /// 4 or 6.
    fn family(&self) -> u8;
    /// Addresses and family for a handoff event.
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8);
    /// The family's MSS table.
    fn mss(&self, idx: u8) -> u16;
}

/// IPv4 flow plus the raw network-order addresses to write back swapped.
pub(crate) struct V4(pub(crate) FlowV4, pub(crate) u32, pub(crate) u32);

impl Answer for V4 {
    #[inline(always)]
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict {
        r.v4(ctx, l3, &self.0, self.1, self.2)
    }

    #[inline(always)]
    fn sock_state(&self, ctx: &XdpContext) -> u32 {
        let mut t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: self.1,
                    daddr: self.2,
                    sport: self.0.sport.to_be(),
                    dport: self.0.dport.to_be(),
                },
            },
        };
        lookup(
            ctx,
            &mut t,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        )
    }

    #[inline(always)]
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32> {
        cookie::check_offset(&self.0, key, epoch, cookie, isn, opts)
    }

    #[inline(always)]
    fn family(&self) -> u8 {
        4
    }

    #[inline(always)]
    fn martian(&self) -> bool {
        // 0/8, 127/8, multicast 224/4, class E 240/4 and broadcast, or
        // the protected address itself.
        let first = (self.0.saddr >> 24) as u8;
        first == 0 || first == 127 || first >= 224 || self.0.saddr == self.0.daddr
    }

    #[inline(always)]
    fn acl(&self, flags: u32) -> u32 {
        acl::v4(self.1, self.2, self.0.dport.to_be(), flags)
    }

    #[inline(always)]
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8) {
        ([self.1, 0, 0, 0], [self.2, 0, 0, 0], 4)
    }

    #[inline(always)]
    fn mss(&self, idx: u8) -> u16 {
        cookie::MSS_V4[(idx & 7) as usize]
    }
}

/// IPv6 flow (addresses in host order, as the cookie hashes them).
pub(crate) struct V6(pub(crate) FlowV6);

impl Answer for V6 {
    #[inline(always)]
    fn answer(&self, r: &Reply, ctx: &XdpContext, l3: usize) -> Verdict {
        r.v6(ctx, l3, &self.0)
    }

    #[inline(always)]
    fn sock_state(&self, ctx: &XdpContext) -> u32 {
        let (saddr, daddr, _) = self.addrs();
        let mut t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr,
                    daddr,
                    sport: self.0.sport.to_be(),
                    dport: self.0.dport.to_be(),
                },
            },
        };
        lookup(
            ctx,
            &mut t,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        )
    }

    #[inline(always)]
    fn check(&self, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> Option<u32> {
        cookie::check_offset(&self.0, key, epoch, cookie, isn, opts)
    }

    #[inline(always)]
    fn family(&self) -> u8 {
        6
    }

    #[inline(always)]
    fn martian(&self) -> bool {
        let s = &self.0.saddr;
        let d = &self.0.daddr;
        // ::, ::1, multicast ff00::/8, link-local fe80::/10 to a non
        // link-local address, or the protected address itself.
        let unspecified_or_loopback = s[0] == 0 && s[1] <= 1;
        let multicast = (s[0] >> 56) == 0xff;
        let link_local = |a: u64| (a >> 54) == 0x3fa;
        unspecified_or_loopback
            || multicast
            || (link_local(s[0]) && !link_local(d[0]))
            || (s[0] == d[0] && s[1] == d[1])
    }

    #[inline(always)]
    fn acl(&self, flags: u32) -> u32 {
        let (s, d, _) = self.addrs();
        acl::v6(&s, &d, self.0.dport.to_be(), flags)
    }

    #[inline(always)]
    fn addrs(&self) -> ([u32; 4], [u32; 4], u8) {
        let w = |h: &[u64; 2]| {
            [
                ((h[0] >> 32) as u32).to_be(),
                (h[0] as u32).to_be(),
                ((h[1] >> 32) as u32).to_be(),
                (h[1] as u32).to_be(),
            ]
        };
        (w(&self.0.saddr), w(&self.0.daddr), 6)
    }

    #[inline(always)]
    fn mss(&self, idx: u8) -> u16 {
        cookie::MSS_V6[(idx & 7) as usize]
    }
}

/// No kernel socket for the flow.
const SOCK_NONE: u32 = 0;
/// A live socket (established, request, or one of our own connects).
pub(crate) const SOCK_LIVE: u32 = 1;
/// Only a TIME_WAIT socket.
pub(crate) const SOCK_TIME_WAIT: u32 = 2;

/// The kernel's socket for the packet's flow, as `SOCK_*`. Its own BPF
/// function: the lookup tuple gets a frame of its own.
#[inline(never)]
pub(crate) fn sock_state<A: Answer>(ctx: &XdpContext, addrs: &A) -> u32 {
    addrs.sock_state(ctx)
}

/// The SYN's access-list verdict, `acl::ACL_*`, for the lists `flags`
/// turns on. Its own BPF function: the lookup keys get a frame of their own.
#[inline(never)]
pub(crate) fn acl_verdict<A: Answer>(addrs: &A, flags: u32) -> u32 {
    addrs.acl(flags)
}

/// The namespace's TCP socket for this exact flow, as `SOCK_*`: live
/// (established, request, connecting) or only TIME_WAIT. A listener on the
/// port does not count: it would answer the ACK with its own cookie check,
/// not ours.
#[inline(always)]
fn lookup(ctx: &XdpContext, t: &mut bpf_sock_tuple, size: usize) -> u32 {
    // SAFETY: `t` is a valid tuple of `size` bytes; the returned socket is
    // read and released before this function returns, as the verifier
    // requires.
    unsafe {
        let sk = bpf_skc_lookup_tcp(ctx.as_ptr(), t, size as u32, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return SOCK_NONE;
        }
        let state = (*sk).state;
        bpf_sk_release(sk.cast());
        if state == TCP_LISTEN {
            SOCK_NONE
        } else if state == TCP_TIME_WAIT {
            SOCK_TIME_WAIT
        } else {
            SOCK_LIVE
        }
    }
}

/// `BPF_TCP_LISTEN` and `BPF_TCP_TIME_WAIT` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;
const TCP_TIME_WAIT: u32 = 6;
