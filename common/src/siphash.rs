//! SipHash-2-4 over whole 64-bit words.
//!
//! The cookie MAC hashes a fixed number of words, so this variant skips the
//! byte-tail buffering of a general `Hasher`: the XDP program gets straight-line
//! code with no data-dependent branches. Host tests check it against the
//! `siphasher` crate bit for bit.

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `N` little-endian 64-bit words (a message of `8 * N` bytes).
#[inline(always)]
pub fn sip24_words<const N: usize>(k0: u64, k1: u64, m: &[u64; N]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        v[3] ^= m[i];
        round(&mut v);
        round(&mut v);
        v[0] ^= m[i];
        i += 1;
    }
    // Final block: no tail bytes, only the message length in the top byte.
    let b = ((8 * N) as u64 & 0xff) << 56;
    v[3] ^= b;
    round(&mut v);
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}
