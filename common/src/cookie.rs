//! The SYN cookie: a 32-bit ISN that lets a stateless responder recognise the
//! ACK completing its own handshake. Two layouts, chosen by whether the
//! client's SYN carried timestamps (its ACK says which to check):
//!
//! ```text
//! with timestamps         31                          5 4   3 2   0
//!                         +----------------------------+-----+-----+
//!                         |  MAC (27 bits)             |epoch| MSS |
//!                         +----------------------------+-----+-----+
//! without timestamps      31                 8   7  6 5 4   3 2   0
//!                         +-------------------+----+----+-----+-----+
//!                         |  MAC (24 bits)    |SACK| WS |epoch| MSS |
//!                         +-------------------+----+----+-----+-----+
//! ```
//!
//! * MAC: the top bits of SipHash-2-4, keyed with the epoch's 128-bit key,
//!   over the 4-tuple, the client's ISN, the full epoch number, the MSS index
//!   and the option byte (below).
//! * epoch: the epoch number mod 4. A verifier at epoch `e` accepts `e-1`, `e`
//!   and `e+1` (clock skew inside a fleet); `e-2` is rejected by its bits and
//!   `e±4` aliases only with a key the MAC was not made with.
//! * MSS: index into [`MSS_V4`] or [`MSS_V6`].
//!
//! With timestamps, the SYN-ACK's TSval carries the options (as Linux does):
//! bits 0-3 the client's window scale (15 = none), bit 4 SACK-permitted,
//! bit 5 ECN; the client echoes them in TSecr. TSval's upper bits are a
//! millisecond clock plus a per-flow offset (the low 32 bits of the same
//! SipHash output), so TSval reveals neither the host's uptime nor its
//! clock, and the ACK's TSecr proves when the SYN-ACK was sent: the verifier
//! also requires that age to be under the cookie lifetime ([`fresh`]).
//!
//! Without timestamps the cookie itself keeps SACK-permitted (1 bit) and the
//! client's window scale as a 2-bit code: 0 none, 1-3 the shifts 7, 8, 9
//! ([`NO_TS_WSCALES`]; Linux's default is 7, Windows' 8). A client shift
//! below 7 is not kept, and the SYN-ACK then offers no window scaling, so
//! neither side scales; one above 9 is kept as 9, which under-reads the
//! client's window (never over-reads it). The option byte MAC'd for these
//! flows has bit 6 set ([`OPTS_NO_TIMESTAMPS`]), so a cookie of one layout
//! never verifies as the other.

use crate::siphash::sip24_words;

/// MSS values an IPv4 cookie can express (index = low 3 cookie bits).
pub const MSS_V4: [u16; 8] = [536, 1220, 1300, 1360, 1400, 1440, 1460, 8960];
/// MSS values an IPv6 cookie can express.
pub const MSS_V6: [u16; 8] = [536, 1220, 1280, 1380, 1400, 1420, 1440, 8940];

/// MAC bits of a cookie for a client with timestamps.
pub const MAC_BITS: u32 = 27;
/// MAC bits of a cookie for a client without timestamps.
pub const MAC_BITS_NO_TS: u32 = 24;
pub const EPOCH_BITS: u32 = 2;
pub const MSS_BITS: u32 = 3;
const EPOCH_SHIFT: u32 = MSS_BITS;
const MAC_SHIFT: u32 = MSS_BITS + EPOCH_BITS;
/// Where a no-timestamp cookie keeps its 3 option bits.
const NO_TS_OPTS_SHIFT: u32 = MAC_SHIFT;
const MAC_SHIFT_NO_TS: u32 = MAC_SHIFT + 3;
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;
const MSS_MASK: u32 = (1 << MSS_BITS) - 1;

/// Low TSval bits that carry option bits.
pub const TS_OPT_MASK: u32 = 0x3f;
/// Client window shift, or [`WSCALE_NONE`].
pub const OPT_WSCALE_MASK: u8 = 0x0f;
pub const WSCALE_NONE: u8 = 0x0f;
pub const OPT_SACK: u8 = 0x10;
pub const OPT_ECN: u8 = 0x20;
/// Flag in the option byte of a client that sent no timestamps: outside the
/// 6-bit TSval range, so a TS-less ACK cannot pass for a TS one or vice
/// versa. Alone it means no SACK and no window scaling.
pub const OPTS_NO_TIMESTAMPS: u8 = 0x40;
/// No-timestamp option byte: SACK-permitted.
pub const NO_TS_SACK: u8 = 0x04;
/// No-timestamp option byte: window-scale code (0 none, else an index + 1
/// into [`NO_TS_WSCALES`]).
pub const NO_TS_WS_MASK: u8 = 0x03;
/// Client window shifts a no-timestamp cookie can keep.
pub const NO_TS_WSCALES: [u8; 3] = [7, 8, 9];
/// How far in the future an echoed TSval's clock may lie: clock skew
/// inside a fleet, plus the coarseness of the clock XDP reads.
pub const TS_SKEW_MS: u32 = 10_000;
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
    /// The whole SipHash output: the MAC is its top bits, the TSval offset
    /// its low 32.
    fn hash(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u64;
}

#[inline(always)]
fn tail_word(epoch: u32, mss_idx: u8, opts: u8) -> u64 {
    ((epoch as u64) << 32) | ((mss_idx as u64) << 8) | opts as u64
}

#[inline(always)]
fn ports_isn(sport: u16, dport: u16, isn: u32) -> u64 {
    ((sport as u64) << 48) | ((dport as u64) << 32) | isn as u64
}

impl Flow for FlowV4 {
    const MSS_TABLE: [u16; 8] = MSS_V4;
    #[inline(always)]
    fn hash(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u64 {
        let m = [
            ((self.saddr as u64) << 32) | self.daddr as u64,
            ports_isn(self.sport, self.dport, isn),
            tail_word(epoch, mss_idx, opts),
        ];
        sip24_words(key.k0, key.k1, &m)
    }
}

impl Flow for FlowV6 {
    const MSS_TABLE: [u16; 8] = MSS_V6;
    #[inline(always)]
    fn hash(&self, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u64 {
        hash_v6(self, key, isn, tail_word(epoch, mss_idx, opts))
    }
}

/// The IPv6 hash as a function of its own: in BPF, its six message words
/// and SipHash state get their own stack frame instead of weighing on the
/// ACK path's (the verifier allows 512 bytes along a call chain).
#[inline(never)]
fn hash_v6(f: &FlowV6, key: &Key, isn: u32, tail: u64) -> u64 {
    let m = [
        f.saddr[0],
        f.saddr[1],
        f.daddr[0],
        f.daddr[1],
        ports_isn(f.sport, f.dport, isn),
        tail,
    ];
    sip24_words(key.k0, key.k1, &m)
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

/// The option byte for a SYN without timestamps: what the cookie keeps.
#[inline(always)]
pub fn option_bits_no_ts(wscale: u8, sack: bool) -> u8 {
    let code = if wscale == crate::options::NO_WSCALE || wscale < NO_TS_WSCALES[0] {
        0
    } else if wscale == NO_TS_WSCALES[0] {
        1
    } else if wscale == NO_TS_WSCALES[1] {
        2
    } else {
        3
    };
    OPTS_NO_TIMESTAMPS | if sack { NO_TS_SACK } else { 0 } | code
}

/// Whether a no-timestamp option byte keeps a window scale (the SYN-ACK
/// offers scaling exactly then).
#[inline(always)]
pub fn no_ts_keeps_wscale(opts: u8) -> bool {
    opts & NO_TS_WS_MASK != 0
}

/// The option byte an ACK is verified with: TSecr's low bits when it
/// carries timestamps, else the bits the cookie itself holds.
#[inline(always)]
pub fn ack_option_bits(cookie: u32, tsecr: Option<u32>) -> u8 {
    match tsecr {
        Some(t) => (t & TS_OPT_MASK) as u8,
        None => OPTS_NO_TIMESTAMPS | ((cookie >> NO_TS_OPTS_SHIFT) & 0x07) as u8,
    }
}

/// TSval for a cookie SYN-ACK: the millisecond clock plus the flow's offset,
/// with its low bits replaced by the option bits.
#[inline(always)]
pub fn encode_tsval(now_ms: u32, ts_offset: u32, bits: u8) -> u32 {
    (now_ms.wrapping_add(ts_offset) & !TS_OPT_MASK) | (bits as u32 & TS_OPT_MASK)
}

/// Whether the SYN-ACK whose TSval an ACK echoes (`tsecr`) was sent at most
/// `max_age_ms` before `now_ms` (and not more than [`TS_SKEW_MS`] after).
/// `ts_offset` comes from the verified cookie's hash, so a blind forger
/// must also guess a TSecr inside this window.
#[inline(always)]
pub fn fresh(tsecr: u32, ts_offset: u32, now_ms: u32, max_age_ms: u32) -> bool {
    let sent = (tsecr & !TS_OPT_MASK).wrapping_sub(ts_offset);
    let age = now_ms.wrapping_sub(sent);
    age <= max_age_ms || age.wrapping_neg() <= TS_SKEW_MS
}

/// A minted cookie and the flow's TSval offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minted {
    pub cookie: u32,
    pub ts_offset: u32,
}

/// Mints the cookie for a SYN. `opts` is the TSval option byte
/// ([`option_bits`]) or, without timestamps, [`option_bits_no_ts`].
#[inline(always)]
pub fn mint<F: Flow>(flow: &F, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> Minted {
    let mss_idx = mss_idx & MSS_MASK as u8;
    let h = flow.hash(key, epoch, isn, mss_idx, opts);
    let low = ((epoch & EPOCH_MASK) << EPOCH_SHIFT) | mss_idx as u32;
    let cookie = if opts & OPTS_NO_TIMESTAMPS != 0 {
        let mac = (h >> (64 - MAC_BITS_NO_TS)) as u32;
        (mac << MAC_SHIFT_NO_TS) | (((opts & 0x07) as u32) << NO_TS_OPTS_SHIFT) | low
    } else {
        let mac = (h >> (64 - MAC_BITS)) as u32;
        (mac << MAC_SHIFT) | low
    };
    Minted {
        cookie,
        ts_offset: h as u32,
    }
}

/// [`mint`], the cookie alone.
#[inline(always)]
pub fn make<F: Flow>(flow: &F, key: &Key, epoch: u32, isn: u32, mss_idx: u8, opts: u8) -> u32 {
    mint(flow, key, epoch, isn, mss_idx, opts).cookie
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
/// `epoch`; the flow's TSval offset if it is valid. `opts` is
/// [`ack_option_bits`].
#[inline(always)]
pub fn check_offset<F: Flow>(
    flow: &F,
    key: &Key,
    epoch: u32,
    cookie: u32,
    isn: u32,
    opts: u8,
) -> Option<u32> {
    if epoch_bits(cookie) != (epoch & EPOCH_MASK) as u8 {
        return None;
    }
    let m = mint(flow, key, epoch, isn, mss_bits(cookie), opts);
    if m.cookie == cookie {
        Some(m.ts_offset)
    } else {
        None
    }
}

/// [`check_offset`] as a yes or no.
#[inline(always)]
pub fn check<F: Flow>(flow: &F, key: &Key, epoch: u32, cookie: u32, isn: u32, opts: u8) -> bool {
    check_offset(flow, key, epoch, cookie, isn, opts).is_some()
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
    let r = restore_bits(opts);
    Restored {
        mss,
        wscale: (r.wscale != crate::options::NO_WSCALE).then_some(r.wscale),
        sack: r.sack,
        ecn: r.ecn,
        timestamps: r.timestamps,
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
    if opts & OPTS_NO_TIMESTAMPS != 0 {
        let code = opts & NO_TS_WS_MASK;
        return RestoredBits {
            wscale: if code == 0 {
                crate::options::NO_WSCALE
            } else {
                NO_TS_WSCALES[(code - 1) as usize % NO_TS_WSCALES.len()]
            },
            sack: opts & NO_TS_SACK != 0,
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
    /// The echoed TSval dates the SYN-ACK outside the lifetime.
    Stale,
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

/// Host-side verification of an ACK as XDP does it: the option byte from
/// the echoed TSval (or the cookie), the MAC, and with timestamps the
/// SYN-ACK's age at `now_ms` against `max_age_ms`.
#[allow(clippy::too_many_arguments)]
pub fn verify_ack<F: Flow>(
    master: &[u8; 16],
    now_epoch: u32,
    now_ms: u32,
    max_age_ms: u32,
    flow: &F,
    cookie: u32,
    isn: u32,
    tsecr: Option<u32>,
) -> Result<Restored, Reject> {
    let opts = ack_option_bits(cookie, tsecr);
    let epoch = accepted_epoch(now_epoch, epoch_bits(cookie)).ok_or(Reject::Epoch)?;
    let key = derive_key(master, epoch);
    let off = check_offset(flow, &key, epoch, cookie, isn, opts).ok_or(Reject::Mac)?;
    if let Some(t) = tsecr {
        if !fresh(t, off, now_ms, max_age_ms) {
            return Err(Reject::Stale);
        }
    }
    Ok(restore::<F>(cookie, opts))
}
