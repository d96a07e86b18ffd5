//! Frame building and parsing for the demo, tests and bench: crafted
//! SYNs with any L2/L3/option shape, and a strict parser that checks the
//! SYN-ACKs the XDP program sends (checksums recomputed from the bytes).

use std::net::IpAddr;

use ackgate_common::{checksum, options};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// A TCP segment to wrap in Ethernet (+VLAN) and IP.
#[derive(Clone, Debug)]
pub struct Segment {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN tags outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Raw IPv4 options (padded by the caller to a multiple of 4).
    pub ip_options: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw TCP options (padded by the caller to a multiple of 4).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Segment {
    /// A plain SYN between two addresses of the same family.
    pub fn syn(
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        isn: u32,
        tcp_options: &[u8],
    ) -> Self {
        Segment {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            src,
            dst,
            ip_options: Vec::new(),
            sport,
            dport,
            seq: isn,
            ack: 0,
            flags: TCP_SYN,
            window: 64240,
            tcp_options: tcp_options.to_vec(),
            payload: Vec::new(),
        }
    }

    /// The frame bytes, with correct IP and TCP checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for &(tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let tcp = self.tcp_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 20 + self.ip_options.len();
                let tot = (ihl + tcp.len()) as u16;
                let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
                ip.extend_from_slice(&tot.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_options);
                let c = checksum::finish(checksum::add_bytes(0, &ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        let mut tcp = tcp;
        let c = tcp_checksum(self.src, self.dst, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&tcp);
        f
    }

    fn tcp_bytes(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(60);
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        let doff = ((20 + self.tcp_options.len()) / 4) as u8;
        t.extend_from_slice(&[doff << 4, self.flags]);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&self.tcp_options);
        t.extend_from_slice(&self.payload);
        t
    }
}

/// TCP checksum over the pseudo-header and `tcp` (checksum field included:
/// a correct segment sums to zero, a zeroed field yields the value to store).
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> u16 {
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => checksum::tcp(&a.octets(), &b.octets(), tcp),
        (IpAddr::V6(a), IpAddr::V6(b)) => checksum::tcp(&a.octets(), &b.octets(), tcp),
        _ => panic!("mixed address families"),
    }
}

/// A TCP segment parsed from a frame, with its checksums checked.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// IPv4 header length (bytes); 40 for IPv6.
    pub ip_header_len: usize,
    pub ip_checksum_ok: bool,
    pub tcp_checksum_ok: bool,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub options_raw: Vec<u8>,
    pub options: options::SynOptions,
    pub payload_len: usize,
    /// Frame bytes past the IP packet (Ethernet padding).
    pub trailing: usize,
}

/// Parses Ethernet / VLAN / IPv4|IPv6 / TCP. `None` for anything else or any
/// inconsistency in lengths.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    let mut off = 12;
    let mut proto = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
    let mut vlans = Vec::new();
    while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tci = u16::from_be_bytes(frame.get(off + 2..off + 4)?.try_into().ok()?);
        vlans.push((proto, tci));
        off += 4;
        proto = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
    }
    let l3 = off + 2;
    let (src, dst, ttl, ihl, ip_ok, l4, end) = match proto {
        ETH_P_IP => {
            let h = frame.get(l3..l3 + 20)?;
            if h[0] >> 4 != 4 || h[9] != 6 {
                return None;
            }
            let ihl = (h[0] & 0xf) as usize * 4;
            let tot = u16::from_be_bytes([h[2], h[3]]) as usize;
            let hdr = frame.get(l3..l3 + ihl)?;
            let ok = checksum::finish(checksum::add_bytes(0, hdr)) == 0;
            let s: [u8; 4] = h[12..16].try_into().ok()?;
            let d: [u8; 4] = h[16..20].try_into().ok()?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                h[8],
                ihl,
                ok,
                l3 + ihl,
                l3 + tot,
            )
        }
        ETH_P_IPV6 => {
            let h = frame.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 || h[6] != 6 {
                return None;
            }
            let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                h[7],
                40,
                true,
                l3 + 40,
                l3 + 40 + plen,
            )
        }
        _ => return None,
    };
    let tcp = frame.get(l4..end)?;
    if tcp.len() < 20 {
        return None;
    }
    let thlen = (tcp[12] >> 4) as usize * 4;
    let opts = tcp.get(20..thlen)?.to_vec();
    let parsed_opts = options::parse(&options::words_from_bytes(&opts), opts.len());
    Some(Parsed {
        dst_mac: frame[0..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        vlans,
        src,
        dst,
        ttl,
        ip_header_len: ihl,
        ip_checksum_ok: ip_ok,
        tcp_checksum_ok: tcp_checksum(src, dst, tcp) == 0,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
        ack: u32::from_be_bytes(tcp[8..12].try_into().ok()?),
        flags: tcp[13],
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        urgent: u16::from_be_bytes([tcp[18], tcp[19]]),
        options_raw: opts,
        options: parsed_opts,
        payload_len: tcp.len() - thlen,
        trailing: frame.len() - end,
    })
}

/// Host-side cookie check of a SYN-ACK answering `syn`: the same decision
/// the XDP program will make for the client's ACK. Returns the restored
/// options.
pub fn verify_synack(
    secret: &[u8; 16],
    now_epoch: u32,
    synack: &Parsed,
) -> Result<ackgate_common::cookie::Restored, ackgate_common::cookie::Reject> {
    use ackgate_common::cookie::{self, FlowV4, FlowV6};
    let cookie_v = synack.seq;
    let isn = synack.ack.wrapping_sub(1);
    // The TSecr the client will echo is our TSval; it must date the SYN-ACK
    // now (within the default lifetime).
    let tsecr = synack.options.ts().map(|(tsval, _)| tsval);
    let now_ms = ackgate::sys::clock::cookie_clock_ms();
    let max_age = ackgate::xdp::DEFAULT_TS_MAX_AGE_MS;
    // The flow from the client's side: the SYN-ACK's destination is the client.
    match (synack.dst, synack.src) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            let f = FlowV4 {
                saddr: c.into(),
                daddr: s.into(),
                sport: synack.dport,
                dport: synack.sport,
            };
            cookie::verify_ack(secret, now_epoch, now_ms, max_age, &f, cookie_v, isn, tsecr)
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => {
            let (c, s) = (u128::from(c), u128::from(s));
            let f = FlowV6 {
                saddr: [(c >> 64) as u64, c as u64],
                daddr: [(s >> 64) as u64, s as u64],
                sport: synack.dport,
                dport: synack.sport,
            };
            cookie::verify_ack(secret, now_epoch, now_ms, max_age, &f, cookie_v, isn, tsecr)
        }
        _ => Err(cookie::Reject::Mac),
    }
}
