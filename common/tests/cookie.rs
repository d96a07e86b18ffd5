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
    v.push((
        cookie::OPTS_NO_TIMESTAMPS,
        Restored {
            mss: 0,
            wscale: None,
            sack: false,
            ecn: false,
            timestamps: false,
        },
    ));
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
        8 * 65 * 5,
        "8 MSS x (16 wscale x sack x ecn + no-TS) x 5 ISNs"
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
fn tsval_keeps_clock_high_bits_and_carries_options() {
    let ts = cookie::encode_tsval(0xdead_beef, 0x2a);
    assert_eq!(
        ts & !cookie::TS_OPT_MASK,
        0xdead_beef & !cookie::TS_OPT_MASK
    );
    assert_eq!(ts & cookie::TS_OPT_MASK, 0x2a);
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

/// 10 million random ACKs (random flow, ISN, ack number, option bits) against
/// the XDP decision. The cookie accepts a random guess with probability
/// 3/4 (epoch bits name an accepted epoch) * 2^-27, so ~0.06 forgeries are
/// expected; we allow at most 2 (P(X>=3) ~ 3e-5). The same run counts matches
/// of just the low 12 MAC bits, which must land near 10M/4096 if the MAC is
/// uniform: that shows the estimator works, not only that the MAC is wide.
#[test]
fn forgery_rate_matches_mac_width() {
    const N: u64 = 10_000_000;
    let epoch = 7_000_000u32;
    let keys = [epoch - 1, epoch, epoch + 1].map(|e| (e, cookie::derive_key(&MASTER, e)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xac6a7e);
    let (mut forged, mut low12) = (0u64, 0u64);
    for _ in 0..N {
        let flow = FlowV4 {
            saddr: rng.gen(),
            daddr: rng.gen(),
            sport: rng.gen(),
            dport: rng.gen(),
        };
        let guess: u32 = rng.gen();
        let isn: u32 = rng.gen();
        let opts: u8 = rng.gen::<u8>() & 0x3f;
        let Some(e) = cookie::accepted_epoch(epoch, cookie::epoch_bits(guess)) else {
            continue;
        };
        let key: &Key = &keys.iter().find(|(k, _)| *k == e).unwrap().1;
        if cookie::check(&flow, key, e, guess, isn, opts) {
            forged += 1;
        }
        let mac = flow.mac(key, e, isn, cookie::mss_bits(guess), opts);
        if mac & 0xfff == (guess >> 5) & 0xfff {
            low12 += 1;
        }
    }
    assert!(forged <= 2, "{forged} forged ACKs accepted out of {N}");
    let expect = N as f64 * 0.75 / 4096.0;
    let sigma = expect.sqrt();
    assert!(
        (low12 as f64 - expect).abs() < 5.0 * sigma,
        "12-bit MAC matches {low12}, expected {expect:.0} +- {:.0}",
        5.0 * sigma
    );
    println!("forgery: {forged}/{N} accepted (expected {:.3}); 12-bit matches {low12} (expected {expect:.0})", N as f64 * 0.75 / (1u64 << 27) as f64);
}
