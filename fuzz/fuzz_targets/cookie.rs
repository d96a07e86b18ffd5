//! Cookie minting, verification and option restore (`common::cookie`), as
//! the XDP program uses them: a SYN's cookie and TSval minted the way the
//! responder does must verify for its ACK, restore exactly the options the
//! cookie can carry, and fail when any MAC bit changes, when the epoch is
//! two away, or (with timestamps) when the SYN-ACK is older than the
//! lifetime. Any cookie and echo at all must verify or fail without
//! panicking, restoring only MSS values of the table and legal shifts.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use ackgate_common::{
    cookie::{
        derive_key, encode_tsval, mint, mss_index, option_bits, option_bits_no_ts, verify_ack,
        Flow, FlowV4, FlowV6, Reject, Restored, MAC_BITS, MAC_BITS_NO_TS, MAX_WSCALE,
        NO_TS_WSCALES, TS_SKEW_MS,
    },
    options::NO_WSCALE,
};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Syn {
    master: [u8; 16],
    v6: bool,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    isn: u32,
    /// What the SYN offered, raw: MSS 0 is none, wscale any byte.
    mss: u16,
    wscale: Option<u8>,
    sack: bool,
    ecn: bool,
    timestamps: bool,
    epoch: u32,
    /// The verifier's epoch: -1, 0 or +1 from the minter's.
    skew: i8,
    now_ms: u32,
    age_ms: u32,
    max_age_ms: u32,
    /// A MAC bit to flip, and any cookie and echo at all.
    flip: u8,
    any_cookie: u32,
    any_tsecr: Option<u32>,
}

fuzz_target!(|s: Syn| {
    if s.v6 {
        let w = |b: [u8; 16]| {
            let a = u128::from(Ipv6Addr::from(b));
            [(a >> 64) as u64, a as u64]
        };
        let f = FlowV6 {
            saddr: w(s.saddr),
            daddr: w(s.daddr),
            sport: s.sport,
            dport: s.dport,
        };
        check(&s, &f);
    } else {
        let w = |b: [u8; 16]| u32::from(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        let f = FlowV4 {
            saddr: w(s.saddr),
            daddr: w(s.daddr),
            sport: s.sport,
            dport: s.dport,
        };
        check(&s, &f);
    }
});

fn check<F: Flow>(s: &Syn, flow: &F) {
    let ws = s.wscale.unwrap_or(NO_WSCALE);
    let mss_idx = mss_index(&F::MSS_TABLE, s.mss);
    let opts = if s.timestamps {
        option_bits(ws, s.sack, s.ecn)
    } else {
        option_bits_no_ts(ws, s.sack)
    };
    let key = derive_key(&s.master, s.epoch);
    let m = mint(flow, &key, s.epoch, s.isn, mss_idx, opts);
    let tsecr = s
        .timestamps
        .then(|| encode_tsval(s.now_ms, m.ts_offset, opts));
    // TSval keeps the option bits in its low 6 bits, so the age the
    // verifier reads is up to 63 ms more than the time since minting.
    let max_age = s.max_age_ms.clamp(64, 1 << 30);
    let age = s.age_ms % (max_age - 63);
    let verify = |epoch: u32, age: u32, cookie: u32, tsecr: Option<u32>| {
        verify_ack(
            &s.master,
            epoch,
            s.now_ms.wrapping_add(age),
            max_age,
            flow,
            cookie,
            s.isn,
            tsecr,
        )
    };
    let now_epoch = s.epoch.wrapping_add_signed(i32::from(s.skew % 2));

    // Its own ACK verifies and restores what the cookie can carry.
    let r = verify(now_epoch, age, m.cookie, tsecr).expect("a fresh cookie verifies");
    assert_eq!(r, expected::<F>(s, ws, mss_idx));

    // Any MAC bit flipped: the MAC is recomputed over the same inputs, so
    // the changed cookie can never match it.
    let mac_bits = if s.timestamps { MAC_BITS } else { MAC_BITS_NO_TS };
    let bit = 31 - u32::from(s.flip) % mac_bits;
    assert_eq!(
        verify(now_epoch, age, m.cookie ^ (1 << bit), tsecr),
        Err(Reject::Mac),
        "MAC bit {bit} flipped"
    );

    // Two epochs away is outside the accepted window either way.
    for far in [s.epoch.wrapping_add(2), s.epoch.wrapping_sub(2)] {
        assert_eq!(verify(far, age, m.cookie, tsecr), Err(Reject::Epoch));
    }

    // Older than the lifetime (and not a clock within the skew ahead).
    if s.timestamps {
        let old = (max_age + 1).max(s.age_ms);
        if old < 1 << 31 && old.wrapping_neg() > TS_SKEW_MS {
            assert_eq!(verify(now_epoch, old, m.cookie, tsecr), Err(Reject::Stale));
        }
    }

    // Anything at all: a decision, never a panic, never an impossible option.
    if let Ok(r) = verify(now_epoch, age, s.any_cookie, s.any_tsecr) {
        assert!(F::MSS_TABLE.contains(&r.mss));
        assert!(r.wscale.is_none_or(|w| w <= MAX_WSCALE));
        assert_eq!(r.timestamps, s.any_tsecr.is_some());
    }
}

/// The options a cookie of this SYN restores: the table's MSS at or below
/// the offer (the smallest entry if below them all); with timestamps the
/// shift (at most 14), SACK and ECN; without, SACK and the shift only if
/// it is 7, 8 or 9 (above 9 kept as 9, below 7 dropped), no ECN.
fn expected<F: Flow>(s: &Syn, ws: u8, mss_idx: u8) -> Restored {
    let table = F::MSS_TABLE;
    assert!(table[mss_idx as usize] <= s.mss.max(table[0]));
    let wscale = match (s.timestamps, ws) {
        (_, NO_WSCALE) => None,
        (true, w) => Some(w.min(MAX_WSCALE)),
        (false, w) if w < NO_TS_WSCALES[0] => None,
        (false, w) => Some(w.min(NO_TS_WSCALES[2])),
    };
    Restored {
        mss: table[mss_idx as usize],
        wscale,
        sack: s.sack,
        ecn: s.timestamps && s.ecn,
        timestamps: s.timestamps,
    }
}
