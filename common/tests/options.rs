use ackgate_common::options::{self, SynOptions};

fn parse(b: &[u8]) -> SynOptions {
    options::parse(&options::words_from_bytes(b), b.len())
}

#[test]
fn linux_syn_options() {
    // MSS 1460, SACK_PERM, TS, NOP, WS 7
    let b = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let o = parse(&b);
    assert_eq!(o, SynOptions::new(Some(1460), Some(7), true, Some((9, 0))));
}

#[test]
fn windows_syn_options() {
    // MSS, NOP, WS 8, NOP, NOP, SACK_PERM
    let b = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
    assert_eq!(parse(&b), SynOptions::new(Some(1460), Some(8), true, None));
}

#[test]
fn eol_stops_and_unknown_options_are_skipped() {
    let b = [30, 6, 1, 2, 3, 4, 2, 4, 2, 0, 0, 2, 4, 9, 9];
    assert_eq!(parse(&b).mss(), Some(512));
    let b = [1, 1, 1, 253, 4, 0xaa, 0xbb, 3, 3, 2];
    assert_eq!(parse(&b).wscale(), Some(2));
}

#[test]
fn malformed_length_stops_parsing_keeping_earlier_options() {
    let b = [2, 4, 1, 0, 4, 0, 3, 3, 9];
    let o = parse(&b);
    assert_eq!(o.mss(), Some(256));
    assert!(!o.sack_ok);
    assert_eq!(o.wscale(), None);
    // An option that runs past the end is ignored.
    let b = [1, 8, 10, 0, 0];
    assert_eq!(parse(&b).ts(), None);
    // Wrong length for a known kind: skipped, not misread.
    let b = [2, 6, 5, 0xb4, 0, 0, 3, 3, 4];
    let o = parse(&b);
    assert_eq!((o.mss(), o.wscale()), (None, Some(4)));
}

#[test]
fn forty_nops_terminate() {
    assert_eq!(parse(&[1u8; 40]), SynOptions::default());
    assert_eq!(parse(&[]), SynOptions::default());
}

#[test]
fn synack_layouts() {
    let o = options::synack(1460, false, 0, 0, false, options::NO_WSCALE);
    assert_eq!(o.bytes().0[..o.bytes().1], [2, 4, 5, 0xb4]);
    // Without timestamps, Linux's layout: NOP NOP SACK-permitted, NOP WS.
    let o = options::synack(1460, false, 0, 0, true, 7);
    assert_eq!(
        o.bytes().0[..o.bytes().1],
        [2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7]
    );
    let o = options::synack(1460, false, 0, 0, false, 9);
    assert_eq!(o.bytes().0[..o.bytes().1], [2, 4, 5, 0xb4, 1, 3, 3, 9]);
    assert_eq!(
        (o.words[2], o.words[3], o.words[4]),
        (0, 0, 0),
        "unused words zero"
    );
    let o = options::synack(1460, true, 0x01020304, 0x05060708, true, 7);
    let (b, n) = o.bytes();
    assert_eq!(
        &b[..n],
        &[2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7]
    );
    let o = options::synack(536, true, 1, 2, false, options::NO_WSCALE);
    let (b, n) = o.bytes();
    assert_eq!(
        &b[..n],
        &[2, 4, 2, 0x18, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
    );
    // Round trip through the parser.
    let o = options::synack(8960, true, 9, 10, true, 14);
    let (b, n) = o.bytes();
    assert_eq!(
        parse(&b[..n]),
        SynOptions::new(Some(8960), Some(14), true, Some((9, 10)))
    );
}

#[test]
fn apple_syn_options() {
    // MSS, NOP, WS 6, NOP, NOP, TS, SACK_PERM, EOL, EOL
    let b = [
        2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 0, 0, 4, 2, 0, 0,
    ];
    assert_eq!(
        parse(&b),
        SynOptions::new(Some(1460), Some(6), true, Some((256, 0)))
    );
}

/// The word fast paths and the general scan must agree on every layout:
/// mutate each fast-path layout byte by byte and compare.
#[test]
fn fast_paths_agree_with_the_general_scan() {
    let layouts: [&[u8]; 6] = [
        &[],
        &[2, 4, 5, 0xb4],
        &[1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8],
        &[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7,
        ],
        &[
            2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 4, 2, 0, 0,
        ],
        &[2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2],
    ];
    let mut fast_hits = 0;
    for l in layouts {
        for i in 0..l.len() {
            for v in [0u8, 1, 2, 3, 4, 8, 10, 0xff] {
                let mut b = l.to_vec();
                b[i] = v;
                let w = options::words_from_bytes(&b);
                let (fast, scan) = (
                    options::parse(&w, b.len()),
                    options::parse_scan(&w, b.len()),
                );
                assert_eq!(fast, scan, "layout {l:?} byte {i} = {v}");
                fast_hits += (b == l) as usize;
            }
        }
    }
    assert!(fast_hits > 0);
}
