//! The PROXY protocol header ackgate writes to backends
//! (`relay::proxyproto`), read back by a reader written here from the
//! specification (haproxy's proxy-protocol.txt): every header of either
//! version parses, is exactly as long as it says, and names the client and
//! the service it was written for (both as IPv6 when their families differ,
//! the v4 one mapped).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ackgate::relay::proxyproto::{header, Mode};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    v2: bool,
    client: Addr,
    service: Addr,
}

#[derive(Arbitrary, Debug)]
enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl Addr {
    fn get(&self) -> SocketAddr {
        match *self {
            Addr::V4(a, p) => SocketAddr::new(Ipv4Addr::from(a).into(), p),
            Addr::V6(a, p) => SocketAddr::new(Ipv6Addr::from(a).into(), p),
        }
    }
}

fuzz_target!(|i: Input| {
    let (c, s) = (i.client.get(), i.service.get());
    let mode = if i.v2 { Mode::V2 } else { Mode::V1 };
    let h = header(mode, c, s);
    let (read, used) = if i.v2 { read_v2(&h) } else { read_v1(&h) }
        .unwrap_or_else(|e| panic!("{mode:?} header for {c} -> {s} rejected: {e}: {h:?}"));
    assert_eq!(used, h.len(), "the header is exactly its own length");
    let want = if c.is_ipv4() == s.is_ipv4() {
        (c, s)
    } else {
        (mapped(c), mapped(s))
    };
    assert_eq!(read, want);
});

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) => SocketAddr::new(v.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    }
}

type Read = Result<((SocketAddr, SocketAddr), usize), String>;

/// "PROXY TCP4|TCP6 src dst sport dport\r\n", at most 107 bytes; addresses
/// of the stated family, ports decimal without leading zeros.
fn read_v1(b: &[u8]) -> Read {
    let end = b
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("no CRLF")?;
    if end + 2 > 107 {
        return Err(format!("{} bytes, over 107", end + 2));
    }
    let line = std::str::from_utf8(&b[..end]).map_err(|e| e.to_string())?;
    let f: Vec<&str> = line.split(' ').collect();
    let [proxy, fam, src, dst, sport, dport] = f[..] else {
        return Err(format!("{} fields", f.len()));
    };
    if proxy != "PROXY" {
        return Err("no PROXY".into());
    }
    let ip = |s: &str| -> Result<IpAddr, String> {
        match fam {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::from),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::from),
            other => return Err(format!("family {other}")),
        }
        .map_err(|e| format!("{s}: {e}"))
    };
    let port = |s: &str| -> Result<u16, String> {
        if s.len() > 1 && s.starts_with('0') {
            return Err(format!("port {s} has a leading zero"));
        }
        s.parse().map_err(|e| format!("port {s}: {e}"))
    };
    Ok((
        (
            SocketAddr::new(ip(src)?, port(sport)?),
            SocketAddr::new(ip(dst)?, port(dport)?),
        ),
        end + 2,
    ))
}

/// The 12-byte signature, version 2 PROXY (0x21), TCP over IPv4 (0x11) or
/// IPv6 (0x21), the address block's length, then the addresses and ports.
fn read_v2(b: &[u8]) -> Read {
    const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    if b.len() < 16 || &b[..12] != SIG {
        return Err("no signature".into());
    }
    if b[12] != 0x21 {
        return Err(format!("version/command {:#x}", b[12]));
    }
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    let body = b.get(16..16 + len).ok_or("short address block")?;
    let (n, v6) = match b[13] {
        0x11 => (4, false),
        0x21 => (16, true),
        f => return Err(format!("family {f:#x}")),
    };
    if len < 2 * n + 4 {
        return Err(format!("address block of {len} bytes"));
    }
    let ip = |o: &[u8]| -> IpAddr {
        if v6 {
            Ipv6Addr::from(<[u8; 16]>::try_from(o).unwrap()).into()
        } else {
            Ipv4Addr::from(<[u8; 4]>::try_from(o).unwrap()).into()
        }
    };
    let port = |k: usize| u16::from_be_bytes([body[k], body[k + 1]]);
    Ok((
        (
            SocketAddr::new(ip(&body[..n]), port(2 * n)),
            SocketAddr::new(ip(&body[n..2 * n]), port(2 * n + 2)),
        ),
        16 + len,
    ))
}
