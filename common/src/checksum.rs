//! Internet checksum (RFC 1071) accumulated from values, not packet memory:
//! the XDP program sums the fields it writes, so what it sends is checksummed
//! from scratch without reading back the frame.

/// Adds a 16-bit word.
#[inline(always)]
pub fn add16(sum: u64, w: u16) -> u64 {
    sum + w as u64
}

/// Adds a 32-bit value as two 16-bit words.
#[inline(always)]
pub fn add32(sum: u64, w: u32) -> u64 {
    sum + (w >> 16) as u64 + (w & 0xffff) as u64
}

/// Adds a 64-bit value as four 16-bit words.
#[inline(always)]
pub fn add64(sum: u64, w: u64) -> u64 {
    add32(add32(sum, (w >> 32) as u32), w as u32)
}

/// Folds the sum and complements it: the value for the checksum field.
#[inline(always)]
pub fn finish(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Sums bytes as big-endian 16-bit words (odd tail padded with zero).
pub fn add_bytes(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u64) << 8;
    }
    sum
}

/// TCP checksum over the pseudo-header (`src` and `dst` are both 4 or both
/// 16 bytes) and `tcp`, checksum field included: a correct segment sums to
/// zero, and one with a zeroed field yields the value to store.
pub fn tcp(src: &[u8], dst: &[u8], tcp: &[u8]) -> u16 {
    let mut s = add_bytes(add_bytes(0, src), dst);
    s = add32(s, 6);
    s = add32(s, tcp.len() as u32);
    finish(add_bytes(s, tcp))
}
