//! TCP option parsing for SYNs and the SYN-ACK option block.
//!
//! The parser reads through a callback so the XDP program can feed it
//! bounds-checked packet loads and host code a byte slice; both run the same
//! loop, bounded by the 40-byte option space.

pub const MAX_OPTIONS_LEN: usize = 40;

pub const KIND_EOL: u8 = 0;
pub const KIND_NOP: u8 = 1;
pub const KIND_MSS: u8 = 2;
pub const KIND_WSCALE: u8 = 3;
pub const KIND_SACK_PERM: u8 = 4;
pub const KIND_TIMESTAMP: u8 = 8;

/// `SynOptions::wscale` when the SYN offered no window scaling.
pub const NO_WSCALE: u8 = 0xff;

/// What a SYN offered. Plain fields with sentinels rather than `Option`s:
/// in BPF an `Option`'s payload is undefined when `None`, and the verifier
/// rejects programs that copy undefined registers around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynOptions {
    /// MSS, 0 if absent.
    pub mss: u16,
    /// Window shift, [`NO_WSCALE`] if absent.
    pub wscale: u8,
    pub sack_ok: bool,
    /// Whether the timestamp option was present (then `tsval`/`tsecr` hold it).
    pub has_ts: bool,
    pub tsval: u32,
    pub tsecr: u32,
}

impl Default for SynOptions {
    fn default() -> Self {
        SynOptions {
            mss: 0,
            wscale: NO_WSCALE,
            sack_ok: false,
            has_ts: false,
            tsval: 0,
            tsecr: 0,
        }
    }
}

impl SynOptions {
    /// Builds from optional values (host code and tests).
    pub fn new(
        mss: Option<u16>,
        wscale: Option<u8>,
        sack_ok: bool,
        ts: Option<(u32, u32)>,
    ) -> Self {
        SynOptions {
            mss: mss.unwrap_or(0),
            wscale: wscale.unwrap_or(NO_WSCALE),
            sack_ok,
            has_ts: ts.is_some(),
            tsval: ts.map_or(0, |t| t.0),
            tsecr: ts.map_or(0, |t| t.1),
        }
    }

    pub fn mss(&self) -> Option<u16> {
        if self.mss == 0 {
            None
        } else {
            Some(self.mss)
        }
    }

    pub fn wscale(&self) -> Option<u8> {
        if self.wscale == NO_WSCALE {
            None
        } else {
            Some(self.wscale)
        }
    }

    pub fn ts(&self) -> Option<(u32, u32)> {
        if self.has_ts {
            Some((self.tsval, self.tsecr))
        } else {
            None
        }
    }
}

/// The option area as five words, bytes in wire order in memory (what a
/// copy from the packet into a `[u64; 5]` gives). Word alignment lets the
/// fast paths below compare and load whole words.
pub type OptionWords = [u64; 5];

/// Copies up to 40 option bytes into zero-padded words (host code, tests).
pub fn words_from_bytes(b: &[u8]) -> OptionWords {
    let mut bytes = [0u8; 40];
    let n = b.len().min(40);
    bytes[..n].copy_from_slice(&b[..n]);
    let mut w = [0u64; 5];
    for (i, c) in bytes.chunks_exact(8).enumerate() {
        w[i] = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    }
    w
}

#[inline(always)]
fn byte_at(w: &OptionWords, i: usize) -> u8 {
    // SAFETY: callers pass i < 40, inside the 40 bytes of `w`.
    unsafe { *(w.as_ptr() as *const u8).add(i) }
}

/// Big-endian u16 at an even offset below 40.
#[inline(always)]
fn be16_at(w: &OptionWords, off: usize) -> u16 {
    // SAFETY: even offset into 8-aligned storage: aligned and in bounds.
    u16::from_be(unsafe { core::ptr::read((w.as_ptr() as *const u8).add(off) as *const u16) })
}

/// Big-endian u32 at an offset below 40 that is a multiple of 4.
#[inline(always)]
fn be32_at(w: &OptionWords, off: usize) -> u32 {
    // SAFETY: 4-aligned offset into 8-aligned storage: aligned and in bounds.
    u32::from_be(unsafe { core::ptr::read((w.as_ptr() as *const u8).add(off) as *const u32) })
}

/// The first `n <= 8` bytes of `bytes` as the native-endian word that holds
/// them in memory, and the mask selecting them: templates for the fast paths.
const fn template(bytes: [u8; 8]) -> u64 {
    u64::from_ne_bytes(bytes)
}

// Linux: MSS, SACK_PERM, TS, NOP, WS (20 bytes).
const LINUX_W0: u64 = template([KIND_MSS, 4, 0, 0, KIND_SACK_PERM, 2, KIND_TIMESTAMP, 10]);
const LINUX_W0_MASK: u64 = template([0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff]);
const LINUX_W2: u64 = template([KIND_NOP, KIND_WSCALE, 3, 0, 0, 0, 0, 0]);
const LINUX_W2_MASK: u64 = template([0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
// macOS/iOS: MSS, NOP, WS, NOP, NOP, TS, SACK_PERM, EOL, EOL (24 bytes).
const APPLE_W0: u64 = template([KIND_MSS, 4, 0, 0, KIND_NOP, KIND_WSCALE, 3, 0]);
const APPLE_W0_MASK: u64 = template([0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0]);
const APPLE_W1_LOW: u64 = template([KIND_NOP, KIND_NOP, KIND_TIMESTAMP, 10, 0, 0, 0, 0]);
const APPLE_W2_HIGH: u64 = template([0, 0, 0, 0, KIND_SACK_PERM, 2, 0, 0]);
const LOW4: u64 = template([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
const HIGH4: u64 = template([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
// NOP, NOP, TS (12 bytes), in ACKs.
const ACK_TS_W0: u64 = template([KIND_NOP, KIND_NOP, KIND_TIMESTAMP, 10, 0, 0, 0, 0]);
// MSS alone (4 bytes).
const MSS_ONLY: u64 = template([KIND_MSS, 4, 0, 0, 0, 0, 0, 0]);
const MSS_ONLY_MASK: u64 = template([0xff, 0xff, 0, 0, 0, 0, 0, 0]);
// Windows: MSS, NOP, WS, NOP, NOP, SACK_PERM (12 bytes).
const WIN_W1_LOW: u64 = template([KIND_NOP, KIND_NOP, KIND_SACK_PERM, 2, 0, 0, 0, 0]);

/// Parses the first `len` bytes of `w` (zero-padded past them). A malformed
/// option (length < 2 or running past the end) stops parsing and keeps what
/// came before it, as Linux does; options with a wrong length are ignored.
///
/// The layouts Linux, Apple and Windows stacks send are matched as whole
/// words first; anything else takes the general scan, which is unrolled over
/// the 40 possible start positions so every read is at a constant offset: the
/// verifier then tracks one scalar (`next`) instead of a variable offset it
/// must explore path by path.
#[inline(always)]
pub fn parse(w: &OptionWords, len: usize) -> SynOptions {
    match parse_fast(w, len) {
        Some(o) => o,
        None => parse_scan(w, len),
    }
}

/// Just the whole-word matches of the common layouts; `None` means the
/// general scan must decide.
#[inline(always)]
pub fn parse_fast(w: &OptionWords, len: usize) -> Option<SynOptions> {
    // No options, or MSS only: what flood tools (and some stacks) send.
    if len == 0 {
        return Some(SynOptions::default());
    }
    if len == 4 && w[0] & MSS_ONLY_MASK == MSS_ONLY {
        return Some(SynOptions {
            mss: be16_at(w, 2),
            ..SynOptions::default()
        });
    }
    if len == 20 && w[0] & LINUX_W0_MASK == LINUX_W0 && w[2] & LINUX_W2_MASK == LINUX_W2 {
        return Some(SynOptions {
            mss: be16_at(w, 2),
            wscale: byte_at(w, 19),
            sack_ok: true,
            has_ts: true,
            tsval: be32_at(w, 8),
            tsecr: be32_at(w, 12),
        });
    }
    if len == 24
        && w[0] & APPLE_W0_MASK == APPLE_W0
        && w[1] & LOW4 == APPLE_W1_LOW
        && w[2] & HIGH4 == APPLE_W2_HIGH
    {
        return Some(SynOptions {
            mss: be16_at(w, 2),
            wscale: byte_at(w, 7),
            sack_ok: true,
            has_ts: true,
            tsval: be32_at(w, 12),
            tsecr: be32_at(w, 16),
        });
    }
    // NOP, NOP, TS: what Linux and Apple put in every segment after the SYN.
    if len == 12 && w[0] & LOW4 == ACK_TS_W0 {
        return Some(SynOptions {
            has_ts: true,
            tsval: be32_at(w, 4),
            tsecr: be32_at(w, 8),
            ..SynOptions::default()
        });
    }
    if len == 12 && w[0] & APPLE_W0_MASK == APPLE_W0 && w[1] & LOW4 == WIN_W1_LOW {
        return Some(SynOptions {
            mss: be16_at(w, 2),
            wscale: byte_at(w, 7),
            sack_ok: true,
            ..SynOptions::default()
        });
    }
    None
}

/// The general scan on its own (the fast paths must agree with it).
#[inline(always)]
pub fn parse_scan(w: &OptionWords, len: usize) -> SynOptions {
    let mut st = Scan {
        next: 0,
        len: if len > MAX_OPTIONS_LEN {
            MAX_OPTIONS_LEN
        } else {
            len
        },
        out: SynOptions::default(),
    };
    let mut read = |i: usize| {
        if i < MAX_OPTIONS_LEN {
            Some(byte_at(w, i))
        } else {
            None
        }
    };
    macro_rules! at {
        ($($p:literal)*) => { $( st.step($p, &mut read); )* };
    }
    at!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
        20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39);
    st.out
}

/// Scanner state: `next` is where the next option starts (past the end once
/// parsing stops).
struct Scan {
    next: usize,
    len: usize,
    out: SynOptions,
}

const STOP: usize = usize::MAX;

impl Scan {
    #[inline(always)]
    fn stop(&mut self) {
        self.next = STOP;
    }

    #[inline(always)]
    fn step<R: FnMut(usize) -> Option<u8>>(&mut self, p: usize, read: &mut R) {
        if p != self.next || p >= self.len {
            return;
        }
        let Some(kind) = read(p) else {
            self.next = STOP;
            return;
        };
        if kind == KIND_EOL {
            self.next = STOP;
            return;
        }
        if kind == KIND_NOP {
            self.next = p + 1;
            return;
        }
        let Some(olen) = read(p + 1) else {
            self.next = STOP;
            return;
        };
        let olen = olen as usize;
        if olen < 2 || p + olen > self.len {
            self.next = STOP;
            return;
        }
        // Each read is checked before its value is used: no value from a
        // failed read may flow anywhere (the BPF verifier rejects the merged
        // garbage the optimiser would otherwise produce).
        match (kind, olen) {
            (KIND_MSS, 4) => {
                let Some(a) = read(p + 2) else {
                    return self.stop();
                };
                let Some(b) = read(p + 3) else {
                    return self.stop();
                };
                self.out.mss = u16::from_be_bytes([a, b]);
            }
            (KIND_WSCALE, 3) => {
                let Some(s) = read(p + 2) else {
                    return self.stop();
                };
                self.out.wscale = s;
            }
            (KIND_SACK_PERM, 2) => self.out.sack_ok = true,
            (KIND_TIMESTAMP, 10) => {
                let Some(v) = read_u32(read, p + 2) else {
                    return self.stop();
                };
                let Some(e) = read_u32(read, p + 6) else {
                    return self.stop();
                };
                self.out.has_ts = true;
                self.out.tsval = v;
                self.out.tsecr = e;
            }
            _ => {}
        }
        self.next = p + olen;
    }
}

#[inline(always)]
fn read_u32<R: FnMut(usize) -> Option<u8>>(read: &mut R, at: usize) -> Option<u32> {
    let a = read(at)?;
    let b = read(at + 1)?;
    let c = read(at + 2)?;
    let d = read(at + 3)?;
    Some(u32::from_be_bytes([a, b, c, d]))
}

/// The SYN-ACK's option block as big-endian 32-bit words (host order values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynAckOptions {
    pub words: [u32; 5],
    /// Number of words used (1-5); the unused ones are zero.
    pub len: usize,
}

impl SynAckOptions {
    /// Option bytes as they go on the wire (host tests).
    pub fn bytes(&self) -> ([u8; 20], usize) {
        let mut b = [0u8; 20];
        let mut i = 0;
        while i < self.len {
            let w = self.words[i].to_be_bytes();
            b[4 * i] = w[0];
            b[4 * i + 1] = w[1];
            b[4 * i + 2] = w[2];
            b[4 * i + 3] = w[3];
            i += 1;
        }
        (b, 4 * self.len)
    }
}

/// Builds the SYN-ACK options in Linux's order and padding: MSS; then, if the
/// client sent timestamps (`ts`), SACK-permitted (or two NOPs) + timestamps,
/// and our window scale `wscale` unless it is [`NO_WSCALE`]. Without
/// timestamps the cookie keeps only the MSS, so nothing else is offered.
#[inline(always)]
pub fn synack(mss: u16, ts: bool, tsval: u32, tsecr: u32, sack: bool, wscale: u8) -> SynAckOptions {
    let mut o = SynAckOptions {
        words: [0; 5],
        len: 1,
    };
    o.words[0] = ((KIND_MSS as u32) << 24) | (4 << 16) | mss as u32;
    if ts {
        o.words[1] = if sack {
            ((KIND_SACK_PERM as u32) << 24) | (2 << 16) | ((KIND_TIMESTAMP as u32) << 8) | 10
        } else {
            ((KIND_NOP as u32) << 24)
                | ((KIND_NOP as u32) << 16)
                | ((KIND_TIMESTAMP as u32) << 8)
                | 10
        };
        o.words[2] = tsval;
        o.words[3] = tsecr;
        o.len = 4;
        if wscale != NO_WSCALE {
            o.words[4] =
                ((KIND_NOP as u32) << 24) | ((KIND_WSCALE as u32) << 16) | (3 << 8) | wscale as u32;
            o.len = 5;
        }
    } else {
        // Linux's layout without timestamps: NOP NOP SACK-permitted, then
        // NOP window-scale.
        let sack_w = ((KIND_NOP as u32) << 24)
            | ((KIND_NOP as u32) << 16)
            | ((KIND_SACK_PERM as u32) << 8)
            | 2;
        let ws_w =
            ((KIND_NOP as u32) << 24) | ((KIND_WSCALE as u32) << 16) | (3 << 8) | wscale as u32;
        if sack {
            o.words[1] = sack_w;
            o.len = 2;
            if wscale != NO_WSCALE {
                o.words[2] = ws_w;
                o.len = 3;
            }
        } else if wscale != NO_WSCALE {
            o.words[1] = ws_w;
            o.len = 2;
        }
    }
    o
}
