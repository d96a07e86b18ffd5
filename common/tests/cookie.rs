//! Host tests of the cookie: the exact code the XDP program runs.

use ackgate_common::cookie::{self, Flow, FlowV4, FlowV6, Key, Reject, Restored};
use ackgate_common::options::NO_WSCALE;
use ackgate_common::siphash::sip24_words;
use core::hash::Hasher as _;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const MASTER: [u8; 16] = *b"0123456789abcdef";

fn v4() -> FlowV4 {
    FlowV4 {
        saddr: 0xc612_0001,
        daddr: 0xc612_0102,
        sport: 40_000,
        dport: 80,
    }
}

fn v6() -> FlowV6 {
    FlowV6 {
        saddr: [0xfd00_0000_0000_0001, 0x0000_0000_0000_0002],
        daddr: [0xfd00_0000_0000_0001, 0x0000_0000_0000_0003],
        sport: 51_000,
        dport: 443,
    }
}

#[test]
fn sip24_words_matches_reference_siphasher() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let (k0, k1): (u64, u64) = (rng.gen(), rng.gen());
        let w3: [u64; 3] = rng.gen();
        let w6: [u64; 6] = rng.gen();
        for words in [&w3[..], &w6[..]] {
            let mut r = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
            for w in words {
                r.write(&w.to_le_bytes());
            }
            let ours = if words.len() == 3 {
                sip24_words(k0, k1, &w3)
            } else {
                sip24_words(k0, k1, &w6)
            };
            assert_eq!(ours, r.finish());
        }
    }
}

#[test]
fn keys_differ_per_epoch_and_secret_but_not_per_instance() {
    let a = cookie::derive_key(&MASTER, 100);
    assert_eq!(
        a,
        cookie::derive_key(&MASTER, 100),
        "same secret+epoch -> same key"
    );
    assert_ne!(a, cookie::derive_key(&MASTER, 101));
    let mut other = MASTER;
    other[15] ^= 1;
    assert_ne!(a, cookie::derive_key(&other, 100));
}

#[test]
fn mss_index_picks_largest_not_above() {
    let t = &cookie::MSS_V4;
    assert_eq!(cookie::mss_index(t, 0), 0);
    assert_eq!(cookie::mss_index(t, 536), 0);
    assert_eq!(cookie::mss_index(t, 1459), 5);
    assert_eq!(cookie::mss_index(t, 1460), 6);
    assert_eq!(cookie::mss_index(t, 9000), 7);
    assert_eq!(cookie::mss_index(t, u16::MAX), 7);
    for (i, &m) in cookie::MSS_V6.iter().enumerate() {
        assert_eq!(cookie::mss_index(&cookie::MSS_V6, m) as usize, i);
    }
}

/// Every option combination the TSval can carry, plus the no-timestamp case.
fn all_option_bytes() -> Vec<(u8, Restored)> {
    let mut v = Vec::new();
    for ws in (0..=14).map(Some).chain([None]) {
        for sack in [false, true] {
            for ecn in [false, true] {
                let bits = cookie::option_bits(ws.unwrap_or(NO_WSCALE), sack, ecn);
                v.push((
                    bits,
                    Restored {
                        mss: 0,
                        wscale: ws,
                        sack,
                        ecn,
                        timestamps: true,
                    },
                ));
            }
        }
    }
    // Without timestamps the cookie keeps SACK and shifts 7, 8, 9.
    for ws in [None, Some(7), Some(8), Some(9)] {
        for sack in [false, true] {
            v.push((
                cookie::option_bits_no_ts(ws.unwrap_or(NO_WSCALE), sack),
                Restored {
                    mss: 0,
                    wscale: ws,
                    sack,
                    ecn: false,
                    timestamps: false,
                },
            ));
        }
    }
    v
}

fn round_trip<F: Flow>(flow: &F) {
    let epoch = 29_000_000;
    let key = cookie::derive_key(&MASTER, epoch);
    let mut n = 0;
    for mss_idx in 0..8u8 {
        for (opts, want) in all_option_bytes() {
            for isn in [0u32, 1, 0x8000_0000, u32::MAX, 0x1234_5678] {
                let c = cookie::make(flow, &key, epoch, isn, mss_idx, opts);
                let got = cookie::verify(&MASTER, epoch, flow, c, isn, opts).expect("valid cookie");
                assert_eq!(
                    got,
                    Restored {
                        mss: F::MSS_TABLE[mss_idx as usize],
                        ..want
                    }
                );
                n += 1;
            }
        }
    }
    assert_eq!(
        n,
        8 * (64 + 8) * 5,
        "8 MSS x (16 wscale x sack x ecn + 4 no-TS wscale codes x sack) x 5 ISNs"
    );
}

#[test]
fn round_trip_every_mss_and_option_combination_v4() {
    round_trip(&v4());
}

#[test]
fn round_trip_every_mss_and_option_combination_v6() {
    round_trip(&v6());
}

#[test]
fn wscale_above_14_is_clamped() {
    assert_eq!(
        cookie::option_bits(15, false, false) & cookie::OPT_WSCALE_MASK,
        14
    );
    assert_eq!(
        cookie::option_bits(200, false, false) & cookie::OPT_WSCALE_MASK,
        14
    );
}

#[test]
fn no_timestamp_cookies_keep_sack_and_the_common_shifts() {
    let ws =
        |shift: u8| cookie::restore::<FlowV4>(0, cookie::option_bits_no_ts(shift, true)).wscale;
    // Below 7 nothing is kept (and the SYN-ACK offers no scaling); above 9
    // the shift is kept as 9, which under-reads the client's windows.
    assert_eq!(ws(NO_WSCALE), None);
    assert_eq!(ws(0), None);
    assert_eq!(ws(6), None);
    assert_eq!((ws(7), ws(8), ws(9)), (Some(7), Some(8), Some(9)));
    assert_eq!((ws(10), ws(14)), (Some(9), Some(9)));
    assert!(!cookie::no_ts_keeps_wscale(cookie::option_bits_no_ts(
        6, true
    )));
    assert!(cookie::no_ts_keeps_wscale(cookie::option_bits_no_ts(
        8, false
    )));
    let r = cookie::restore::<FlowV4>(0, cookie::option_bits_no_ts(8, true));
    assert!(r.sack && !r.timestamps && !r.ecn);
    // The verifier reads the bits back from the cookie itself.
    let key = cookie::derive_key(&MASTER, 5);
    for opts in [0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47] {
        let c = cookie::make(&v4(), &key, 5, 99, 6, opts);
        assert_eq!(cookie::ack_option_bits(c, None), opts);
        assert!(cookie::check(&v4(), &key, 5, c, 99, opts));
    }
}

#[test]
fn a_cookie_of_one_layout_never_verifies_as_the_other() {
    let key = cookie::derive_key(&MASTER, 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..20_000 {
        let isn: u32 = rng.gen();
        let ts_opts = rng.gen::<u8>() & 0x3f;
        let c = cookie::make(&v4(), &key, 5, isn, 2, ts_opts);
        // Read as a TS-less ACK, its bits 5-7 name a no-TS option byte.
        assert!(!cookie::check(
            &v4(),
            &key,
            5,
            c,
            isn,
            cookie::ack_option_bits(c, None)
        ));
        let n = cookie::option_bits_no_ts(rng.gen_range(0..15), rng.gen());
        let c = cookie::make(&v4(), &key, 5, isn, 2, n);
        assert!(!cookie::check(
            &v4(),
            &key,
            5,
            c,
            isn,
            rng.gen::<u8>() & 0x3f
        ));
    }
}

#[test]
fn tsval_hides_the_clock_and_carries_options() {
    let key = cookie::derive_key(&MASTER, 5);
    let m = cookie::mint(&v4(), &key, 5, 1, 3, 0x2a);
    let ts = cookie::encode_tsval(0xdead_beef, m.ts_offset, 0x2a);
    assert_eq!(
        ts & !cookie::TS_OPT_MASK,
        0xdead_beefu32.wrapping_add(m.ts_offset) & !cookie::TS_OPT_MASK
    );
    assert_eq!(ts & cookie::TS_OPT_MASK, 0x2a);
    // Another flow at the same instant gets an unrelated TSval.
    let mut other = v4();
    other.sport += 1;
    let m2 = cookie::mint(&other, &key, 5, 1, 3, 0x2a);
    assert_ne!(m.ts_offset, m2.ts_offset);
    assert_eq!(
        cookie::check_offset(&v4(), &key, 5, m.cookie, 1, 0x2a),
        Some(m.ts_offset),
        "the verifier recovers the offset"
    );
}

#[test]
fn echoed_tsval_must_be_younger_than_the_lifetime() {
    const MAX: u32 = 60_000;
    for clock in [0u32, 1_000, 0x7fff_ffff, u32::MAX - 500] {
        for offset in [0u32, 12_345, 0x8000_0000, u32::MAX] {
            let tsecr = cookie::encode_tsval(clock, offset, 0x15);
            let at = |age: i64| clock.wrapping_add(age as i32 as u32);
            assert!(cookie::fresh(tsecr, offset, at(0), MAX));
            assert!(cookie::fresh(tsecr, offset, at(MAX as i64 - 64), MAX));
            assert!(!cookie::fresh(tsecr, offset, at(MAX as i64 + 64), MAX));
            assert!(!cookie::fresh(tsecr, offset, at(3_600_000), MAX));
            // A verifier whose clock lags (fleet skew) still accepts.
            assert!(cookie::fresh(tsecr, offset, at(-5_000), MAX));
            assert!(!cookie::fresh(
                tsecr,
                offset,
                at(-(cookie::TS_SKEW_MS as i64) - 100),
                MAX
            ));
            // The wrong offset (another flow's) places it anywhere.
            assert!(!cookie::fresh(tsecr, offset ^ 0x4000_0000, at(0), MAX));
        }
    }
}

#[test]
fn accepted_for_previous_current_and_next_epoch_only() {
    let flow = v4();
    let made = 1_000_003u32;
    let key = cookie::derive_key(&MASTER, made);
    let c = cookie::make(&flow, &key, made, 77, 3, 0x15);
    for now in [made - 1, made, made + 1] {
        assert!(
            cookie::verify(&MASTER, now, &flow, c, 77, 0x15).is_ok(),
            "now={now}"
        );
    }
    assert_eq!(
        cookie::verify(&MASTER, made + 2, &flow, c, 77, 0x15),
        Err(Reject::Epoch)
    );
    assert_eq!(
        cookie::verify(&MASTER, made - 2, &flow, c, 77, 0x15),
        Err(Reject::Epoch)
    );
    // Four epochs later the epoch bits alias, but the key is different.
    for now in [made + 3, made + 4, made + 5, made + 100] {
        assert!(
            cookie::verify(&MASTER, now, &flow, c, 77, 0x15).is_err(),
            "now={now}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Flipping any single bit of anything the cookie covers invalidates it.
    #[test]
    fn any_flipped_bit_is_rejected(
        saddr: u32, daddr: u32, sport: u16, dport: u16, isn: u32,
        mss_idx in 0u8..8, ws in prop::option::of(0u8..=14), sack: bool, ecn: bool,
        ts: bool, epoch in 10u32..u32::MAX - 10,
    ) {
        let flow = FlowV4 { saddr, daddr, sport, dport };
        let opts = if ts { cookie::option_bits(ws.unwrap_or(NO_WSCALE), sack, ecn) } else { cookie::OPTS_NO_TIMESTAMPS };
        let key = cookie::derive_key(&MASTER, epoch);
        let c = cookie::make(&flow, &key, epoch, isn, mss_idx, opts);
        prop_assert!(cookie::verify(&MASTER, epoch, &flow, c, isn, opts).is_ok());
        for b in 0..32 {
            prop_assert!(cookie::verify(&MASTER, epoch, &flow, c ^ (1 << b), isn, opts).is_err(), "cookie bit {}", b);
            prop_assert!(cookie::verify(&MASTER, epoch, &flow, c, isn ^ (1 << b), opts).is_err(), "isn bit {}", b);
            let f = FlowV4 { saddr: saddr ^ (1 << b), ..flow };
            prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, opts).is_err(), "saddr bit {}", b);
            let f = FlowV4 { daddr: daddr ^ (1 << b), ..flow };
            prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, opts).is_err(), "daddr bit {}", b);
        }
        for b in 0..16 {
            let f = FlowV4 { sport: sport ^ (1 << b), ..flow };
            prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, opts).is_err(), "sport bit {}", b);
            let f = FlowV4 { dport: dport ^ (1 << b), ..flow };
            prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, opts).is_err(), "dport bit {}", b);
        }
        // The option bits echoed in TSecr (6 bits), and TS presence itself.
        let flips: &[u8] = if ts { &[1, 2, 4, 8, 16, 32, cookie::OPTS_NO_TIMESTAMPS] } else { &[cookie::OPTS_NO_TIMESTAMPS] };
        for &f in flips {
            let o = if f == cookie::OPTS_NO_TIMESTAMPS && ts { cookie::OPTS_NO_TIMESTAMPS } else { opts ^ f };
            prop_assert!(cookie::verify(&MASTER, epoch, &flow, c, isn, o).is_err(), "opts flip {:#x}", f);
        }
        // A different secret (another fleet) never accepts it.
        let mut other = MASTER;
        other[0] ^= 0x80;
        prop_assert!(cookie::verify(&other, epoch, &flow, c, isn, opts).is_err());
    }

    #[test]
    fn any_flipped_bit_is_rejected_v6(
        s: [u64; 2], d: [u64; 2], sport: u16, dport: u16, isn: u32, mss_idx in 0u8..8,
    ) {
        let flow = FlowV6 { saddr: s, daddr: d, sport, dport };
        let epoch = 55_555;
        let key = cookie::derive_key(&MASTER, epoch);
        let c = cookie::make(&flow, &key, epoch, isn, mss_idx, 0x1f);
        prop_assert!(cookie::verify(&MASTER, epoch, &flow, c, isn, 0x1f).is_ok());
        for b in 0..64 {
            for half in 0..2 {
                let mut f = flow;
                f.saddr[half] ^= 1 << b;
                prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, 0x1f).is_err());
                let mut f = flow;
                f.daddr[half] ^= 1 << b;
                prop_assert!(cookie::verify(&MASTER, epoch, &f, c, isn, 0x1f).is_err());
            }
        }
    }
}

/// What a forged segment gets in XDP: its ack number names the cookie, its
/// epoch bits the key; the MAC is checked for ISN = seq - 1 and, for a
/// segment without payload (a possible zero-window probe), again for ISN =
/// seq; with timestamps, the echoed TSval must also date the SYN-ACK within
/// the lifetime. Returns (accepted, MAC matches on the low 12 bits over both
/// checks, TSecr values that would pass the freshness test).
fn forge(ts: bool, n: u64, seed: u64) -> (u64, u64, u64) {
    const MAX_AGE: u32 = 60_000;
    let epoch = 7_000_000u32;
    let now_ms: u32 = 0x1234_5678;
    let keys = [epoch - 1, epoch, epoch + 1].map(|e| (e, cookie::derive_key(&MASTER, e)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut forged, mut low12, mut fresh) = (0u64, 0u64, 0u64);
    let (mac_bits, mac_shift) = if ts {
        (cookie::MAC_BITS, 5)
    } else {
        (cookie::MAC_BITS_NO_TS, 8)
    };
    for _ in 0..n {
        let flow = FlowV4 {
            saddr: rng.gen(),
            daddr: rng.gen(),
            sport: rng.gen(),
            dport: rng.gen(),
        };
        let (seq, ack, tsecr): (u32, u32, u32) = (rng.gen(), rng.gen(), rng.gen());
        let guess = ack.wrapping_sub(1);
        let opts = cookie::ack_option_bits(guess, ts.then_some(tsecr));
        let Some(e) = cookie::accepted_epoch(epoch, cookie::epoch_bits(guess)) else {
            continue;
        };
        let key: &Key = &keys.iter().find(|(k, _)| *k == e).unwrap().1;
        for isn in [seq.wrapping_sub(1), seq] {
            let h = flow.hash(key, e, isn, cookie::mss_bits(guess), opts);
            let mac = (h >> (64 - mac_bits)) as u32;
            if mac & 0xfff == (guess >> mac_shift) & 0xfff {
                low12 += 1;
            }
            if ts && cookie::fresh(tsecr, h as u32, now_ms, MAX_AGE) {
                fresh += 1;
            }
            if let Some(off) = cookie::check_offset(&flow, key, e, guess, isn, opts) {
                if !ts || cookie::fresh(tsecr, off, now_ms, MAX_AGE) {
                    forged += 1;
                    break;
                }
            }
        }
    }
    (forged, low12, fresh)
}

fn within(got: u64, expect: f64, what: &str) {
    let sigma = expect.sqrt().max(1.0);
    assert!(
        (got as f64 - expect).abs() < 5.0 * sigma,
        "{what}: {got}, expected {expect:.1} +- {:.1}",
        5.0 * sigma
    );
}

/// 10 million forged segments per layout against the XDP decision. Without
/// timestamps each MAC check passes with p = 2^-24, and a segment gets up
/// to two (3/4 of epoch-bit values name a key): ~0.9 forgeries expected, at
/// most 6 allowed (P(X>=7) ~ 1e-4). With timestamps p = 2^-27 per check,
/// times the chance that a random TSecr dates a SYN-ACK inside the lifetime
/// ((60,000 + 10,000 ms) / 2^32 ~ 1.6e-5): none expected. The run also
/// counts 12-bit MAC matches and fresh TSecrs, which must land at their
/// expected rates: that shows the estimator works, not only that the MAC is
/// wide.
#[test]
fn forgery_rate_matches_each_layout() {
    const N: u64 = 10_000_000;
    let checks = N as f64 * 0.75 * 2.0;
    for ts in [false, true] {
        let (forged, low12, fresh) = forge(ts, N, 0xac6a7e + ts as u64);
        within(low12, checks / 4096.0, "12-bit MAC matches");
        let mac_bits = if ts {
            cookie::MAC_BITS
        } else {
            cookie::MAC_BITS_NO_TS
        };
        let p_mac = checks / (1u64 << mac_bits) as f64;
        if ts {
            let p_fresh = (60_000.0 + cookie::TS_SKEW_MS as f64 + 64.0) / 4_294_967_296.0;
            within(fresh, checks * p_fresh, "fresh TSecrs");
            assert_eq!(forged, 0, "timestamp layout: {forged} forged of {N}");
            println!(
                "timestamps: {forged}/{N} forged (expected {:.1e}); 12-bit matches {low12}; fresh TSecr {fresh}",
                p_mac * p_fresh
            );
        } else {
            assert!(forged <= 6, "no-timestamp layout: {forged} forged of {N}");
            println!(
                "no timestamps: {forged}/{N} forged (expected {p_mac:.2}); 12-bit matches {low12}"
            );
        }
    }
}
