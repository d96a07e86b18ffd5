//! The SYN cookie: a 32-bit ISN that lets a stateless responder recognise the
//! ACK completing its own handshake.
//!
//! ```text
//!  31                                  5 4   3 2   0
//! +-------------------------------------+-----+-----+
//! |  MAC (27 bits)                      |epoch| MSS |
//! +-------------------------------------+-----+-----+
//! ```
//!
//! * MAC: the top 27 bits of SipHash-2-4, keyed with the epoch's 128-bit key,
//!   over the 4-tuple, the client's ISN, the full epoch number, the MSS index
//!   and the option bits (below). A forged ACK guesses it with p = 2^-27.
//! * epoch: the epoch number mod 4. A verifier at epoch `e` accepts `e-1`, `e`
//!   and `e+1` (clock skew inside a fleet); `e-2` is rejected by its bits and
//!   `e±4` aliases only with a key the MAC was not made with.
//! * MSS: index into [`MSS_V4`] or [`MSS_V6`].
//!
//! When the client sent timestamps, the SYN-ACK's TSval carries the options the
//! cookie cannot (as Linux does): bits 0-3 the client's window scale (15 = none),
//! bit 4 SACK-permitted, bit 5 ECN. The client echoes them in TSecr, and they
//! are MAC'd, so tampering with them invalidates the cookie. Without timestamps
//! only the MSS survives and the SYN-ACK offers nothing else.

use crate::siphash::sip24_words;

/// MSS values an IPv4 cookie can express (index = low 3 cookie bits).
pub const MSS_V4: [u16; 8] = [536, 1220, 1300, 1360, 1400, 1440, 1460, 8960];
/// MSS values an IPv6 cookie can express.
pub const MSS_V6: [u16; 8] = [536, 1220, 1280, 1380, 1400, 1420, 1440, 8940];

pub const MAC_BITS: u32 = 27;
pub const EPOCH_BITS: u32 = 2;
pub const MSS_BITS: u32 = 3;
const EPOCH_SHIFT: u32 = MSS_BITS;
const MAC_SHIFT: u32 = MSS_BITS + EPOCH_BITS;
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;
const MSS_MASK: u32 = (1 << MSS_BITS) - 1;

/// Low TSval bits that carry option bits.
pub const TS_OPT_MASK: u32 = 0x3f;
/// Client window shift, or [`WSCALE_NONE`].
pub const OPT_WSCALE_MASK: u8 = 0x0f;
pub const WSCALE_NONE: u8 = 0x0f;
pub const OPT_SACK: u8 = 0x10;
pub const OPT_ECN: u8 = 0x20;
/// Option byte MAC'd for a client that sent no timestamps: outside the 6-bit
/// TSval range, so a TS-less ACK cannot pass for a TS one or vice versa.
pub const OPTS_NO_TIMESTAMPS: u8 = 0x40;
/// Largest window shift RFC 7323 allows.
pub const MAX_WSCALE: u8 = 14;

/// A 128-bit SipHash key for one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub k0: u64,
    pub k1: u64,
}

/// The connection as seen from the client: source = client, destination = the
/// protected service. Ports and addresses in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowV4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// IPv6 flow; each address is two big-endian 64-bit halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowV6 {
    pub saddr: [u64; 2],
    pub daddr: [u64; 2],
    pub sport: u16,
    pub dport: u16,
}

/// A flow the cookie can be computed over.
pub trait Flow {
    /// MSS table for this address family.
    const MSS_TABLE: [u16; 8];
    /// The MAC (low [`MAC_BITS`] bits significant).
    fn mac(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u32;
}

#[inline(always)]
fn tail_word(epoch: u32, mss_idx: u8, opts: u8) -> u64 {
    ((epoch as u64) << 32) | ((mss_idx as u64) << 8) | opts as u64
}

#[inline(always)]
fn ports_isn(sport: u16, dport: u16, isn: u32) -> u64 {
    ((sport as u64) << 48) | ((dport as u64) << 32) | isn as u64
}

#[inline(always)]
fn top_bits(h: u64) -> u32 {
    (h >> (64 - MAC_BITS)) as u32
}

impl Flow for FlowV4 {
    const MSS_TABLE: [u16; 8] = MSS_V4;
    #[inline(always)]
    fn mac(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u32 {
        let m = [
            ((self.saddr as u64) << 32) | self.daddr as u64,
            ports_isn(self.sport, self.dport, isn),
            tail_word(epoch, mss_idx, opts),
        ];
        top_bits(sip24_words(key.k0, key.k1, &m))
    }
}

impl Flow for FlowV6 {
    const MSS_TABLE: [u16; 8] = MSS_V6;
    #[inline(always)]
    fn mac(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u32 {
        let m = [
            self.saddr[0],
            self.saddr[1],
            self.daddr[0],
            self.daddr[1],
            ports_isn(self.sport, self.dport, isn),
            tail_word(epoch, mss_idx, opts),
        ];
        top_bits(sip24_words(key.k0, key.k1, &m))
    }
}

/// Index of the largest table entry not above `mss` (0 if all are above).
#[inline(always)]
pub fn mss_index(table: &[u16; 8], mss: u16) -> u8 {
    let mut idx = 0u8;
    let mut i = 1;
    while i < 8 {
        if table[i] <= mss {
            idx = i as u8;
        }
        i += 1;
    }
    idx
}

/// The option bits for a SYN: what the SYN-ACK's TSval carries. `wscale`
/// is the client's shift, or `options::NO_WSCALE`.
#[inline(always)]
pub fn option_bits(wscale: u8, sack: bool, ecn: bool) -> u8 {
    let ws = if wscale == crate::options::NO_WSCALE {
        WSCALE_NONE
    } else if wscale > MAX_WSCALE {
        MAX_WSCALE
    } else {
        wscale
    };
    ws | if sack { OPT_SACK } else { 0 } | if ecn { OPT_ECN } else { 0 }
}

/// TSval for a cookie SYN-ACK: the millisecond clock with its low bits
/// replaced by the option bits.
#[inline(always)]
pub fn encode_tsval(now_ms: u32, bits: u8) -> u32 {
    (now_ms & !TS_OPT_MASK) | (bits as u32 & TS_OPT_MASK)
}

/// Mints the cookie for a SYN.
#[inline(always)]
pub fn make<F: Flow>(flow: &F, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u32 {
    let mss_idx = mss_idx & MSS_MASK as u8;
    let mac = flow.mac(key, epoch, isn, mss_idx, opts);
    (mac << MAC_SHIFT) | ((epoch & EPOCH_MASK) << EPOCH_SHIFT) | mss_idx as u32
}

/// The epoch bits of a cookie, to pick the key slot.
#[inline(always)]
pub fn epoch_bits(cookie: u32) -> u8 {
    ((cookie >> EPOCH_SHIFT) & EPOCH_MASK) as u8
}

/// The MSS index of a cookie.
#[inline(always)]
pub fn mss_bits(cookie: u32) -> u8 {
    (cookie & MSS_MASK) as u8
}

/// Checks `cookie` (the ACK's ack number minus one) against the key of
/// `epoch`. `opts` is TSecr's low bits, or [`OPTS_NO_TIMESTAMPS`].
#[inline(always)]
pub fn check<F: Flow>(flow: &F, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> bool {
    if epoch_bits(cookie) != (epoch & EPOCH_MASK) as u8 {
        return false;
    }
    flow.mac(key, epoch, isn, mss_bits(cookie), opts) == cookie >> MAC_SHIFT
}

/// Options a verified cookie restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    pub mss: u16,
    pub wscale: Option<u8>,
    pub sack: bool,
    pub ecn: bool,
    pub timestamps: bool,
}

/// Decodes the MSS from a cookie and the other options from the option bits.
#[inline(always)]
pub fn restore<F: Flow>(cookie: u32, opts: u8) -> Restored {
    let mss = F::MSS_TABLE[mss_bits(cookie) as usize];
    if opts == OPTS_NO_TIMESTAMPS {
        return Restored {
            mss,
            wscale: None,
            sack: false,
            ecn: false,
            timestamps: false,
        };
    }
    let ws = opts & OPT_WSCALE_MASK;
    Restored {
        mss,
        wscale: if ws == WSCALE_NONE { None } else { Some(ws) },
        sack: opts & OPT_SACK != 0,
        ecn: opts & OPT_ECN != 0,
        timestamps: true,
    }
}

/// The options an ACK's option byte restores (window scale as the client's
/// shift or `options::NO_WSCALE`): `restore` without the MSS, in
/// BPF-friendly form (no `Option`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoredBits {
    pub wscale: u8,
    pub sack: bool,
    pub ecn: bool,
    pub timestamps: bool,
}

#[inline(always)]
pub fn restore_bits(opts: u8) -> RestoredBits {
    if opts == OPTS_NO_TIMESTAMPS {
        return RestoredBits {
            wscale: crate::options::NO_WSCALE,
            sack: false,
            ecn: false,
            timestamps: false,
        };
    }
    let ws = opts & OPT_WSCALE_MASK;
    RestoredBits {
        wscale: if ws == WSCALE_NONE {
            crate::options::NO_WSCALE
        } else {
            ws
        },
        sack: opts & OPT_SACK != 0,
        ecn: opts & OPT_ECN != 0,
        timestamps: true,
    }
}

/// Epoch number for a unix time.
#[inline(always)]
pub fn epoch_at(unix_secs: u64, period_secs: u32) -> u32 {
    (unix_secs / period_secs.max(1) as u64) as u32
}

/// The epoch among `now-1`, `now`, `now+1` whose low bits are `bits`.
#[inline(always)]
pub fn accepted_epoch(now: u32, bits: u8) -> Option<u32> {
    let mut d = 0u32;
    while d < 3 {
        let e = now.wrapping_add(d).wrapping_sub(1);
        if (e & EPOCH_MASK) as u8 == bits {
            return Some(e);
        }
        d += 1;
    }
    None
}

/// Derives the key of `epoch` from the fleet's master secret, so instances
/// sharing the secret agree on every epoch's key without talking.
pub fn derive_key(master: &[u8; 16], epoch: u32) -> Key {
    use core::hash::Hasher as _;
    use siphasher::sip128::{Hasher128 as _, SipHasher24};
    let mut h = SipHasher24::new_with_key(master);
    h.write(b"ackgate/epoch-key/v1");
    h.write_u32(epoch);
    let out = h.finish128();
    Key {
        k0: out.h1,
        k1: out.h2,
    }
}

/// Why a host-side verification failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The epoch bits name no epoch accepted now (expired or from the future).
    Epoch,
    /// The MAC does not match.
    Mac,
}

/// Host-side verification with the master secret (tests, tools): the same
/// decision the XDP program makes from its key slots.
pub fn verify<F: Flow>(
    master: &[u8; 16],
    now_epoch: u32,
    flow: &F,
    cookie: u32,
    isn: u32,
    opts: u8,
) -> Result<Restored, Reject> {
    let epoch = accepted_epoch(now_epoch, epoch_bits(cookie)).ok_or(Reject::Epoch)?;
    let key = derive_key(master, epoch);
    if check(flow, &key, epoch, cookie, isn, opts) {
        Ok(restore::<F>(cookie, opts))
    } else {
        Err(Reject::Mac)
    }
}
