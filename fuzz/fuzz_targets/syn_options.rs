//! The TCP option parser XDP runs on every SYN and ACK (`common::options`),
//! three ways on the same bytes: the whole-word fast paths, the unrolled
//! general scan, and a plain reading of RFC 9293's rules written here. The
//! bytes past `len` are left as the fuzzer gave them, as a packet's payload
//! follows its options.
#![no_main]

use ackgate_common::options::{
    parse, parse_fast, parse_scan, words_from_bytes, SynOptions, KIND_EOL, KIND_MSS, KIND_NOP,
    KIND_SACK_PERM, KIND_TIMESTAMP, KIND_WSCALE, MAX_OPTIONS_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&len, bytes)) = data.split_first() else {
        return;
    };
    // Lengths past the 40-byte option space happen only in malformed
    // headers; the parser must clamp them.
    let len = len as usize % 48;
    let w = words_from_bytes(bytes);
    let scan = parse_scan(&w, len);
    if let Some(fast) = parse_fast(&w, len) {
        assert_eq!(fast, scan, "a fast path disagrees with the scan");
    }
    assert_eq!(parse(&w, len), scan);
    let mut padded = [0u8; MAX_OPTIONS_LEN];
    let n = bytes.len().min(MAX_OPTIONS_LEN);
    padded[..n].copy_from_slice(&bytes[..n]);
    assert_eq!(scan, reference(&padded[..len.min(MAX_OPTIONS_LEN)]));
});

/// Options in order; EOL ends them; NOP is one byte; any other option
/// needs a length of at least 2 that stays inside the area, or parsing
/// stops and keeps what came before (as Linux's tcp_parse_options does);
/// a known kind with the wrong length is skipped.
fn reference(opts: &[u8]) -> SynOptions {
    let mut out = SynOptions::default();
    let mut i = 0;
    while i < opts.len() {
        let kind = opts[i];
        if kind == KIND_EOL {
            break;
        }
        if kind == KIND_NOP {
            i += 1;
            continue;
        }
        let Some(&olen) = opts.get(i + 1) else {
            break;
        };
        let olen = olen as usize;
        if olen < 2 || i + olen > opts.len() {
            break;
        }
        let body = &opts[i + 2..i + olen];
        match (kind, olen) {
            (KIND_MSS, 4) => out.mss = u16::from_be_bytes([body[0], body[1]]),
            (KIND_WSCALE, 3) => out.wscale = body[0],
            (KIND_SACK_PERM, 2) => out.sack_ok = true,
            (KIND_TIMESTAMP, 10) => {
                out.has_ts = true;
                out.tsval = u32::from_be_bytes(body[..4].try_into().unwrap());
                out.tsecr = u32::from_be_bytes(body[4..8].try_into().unwrap());
            }
            _ => {}
        }
        i += olen;
    }
    out
}
