//! The cookie SYN-ACK, written in place over the SYN: cookie and options,
//! then the IPv4 or IPv6 header and the TCP header, with checksums summed
//! from the values written rather than read back.

use ackgate_common::{
    checksum,
    cookie::{self, FlowV4, FlowV6, Key},
    options::{self, SynAckOptions, SynOptions, NO_WSCALE},
    wire::{Config, Counter},
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    programs::XdpContext,
};

use crate::{
    packet::{
        resize, store, swap_macs, ACK, IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN, SYN, TCP_HLEN, TTL,
    },
    verdict::Verdict,
};

/// What the SYN-ACK is made of, whatever the family.
pub(crate) struct Reply<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) key: Key,
    pub(crate) epoch: u32,
    pub(crate) isn: u32,
    pub(crate) sport: u16,
    pub(crate) syn_opts: SynOptions,
    pub(crate) ecn: bool,
}

impl Reply<'_> {
    /// Cookie and SYN-ACK options for a flow whose family has `table` and
    /// `mss_clamp`; `default_mss` is RFC's value when the SYN carried none.
    #[inline(always)]
    fn cookie<F: cookie::Flow>(
        &self,
        flow: &F,
        mss_clamp: u16,
        default_mss: u16,
    ) -> (u32, SynAckOptions) {
        let o = &self.syn_opts;
        let mut mss = if o.mss == 0 { default_mss } else { o.mss };
        if mss > mss_clamp {
            mss = mss_clamp;
        }
        let idx = cookie::mss_index(&F::MSS_TABLE, mss);
        // The cookie keeps what we may send (the client's MSS, within our
        // clamp); the SYN-ACK states what we receive: our own MSS, as a
        // kernel listener does. Mirroring a small client MSS would make
        // that client upload in small segments too.
        let mss = mss_clamp;
        if o.has_ts {
            let bits = cookie::option_bits(o.wscale, o.sack_ok, self.ecn);
            let m = cookie::mint(flow, &self.key, self.epoch, self.isn, idx, bits);
            let our_ts = cookie::encode_tsval(self.cfg.clock_ms, m.ts_offset, bits);
            let ws = if o.wscale == NO_WSCALE {
                NO_WSCALE
            } else {
                self.cfg.wscale
            };
            (
                m.cookie,
                options::synack(mss, true, our_ts, o.tsval, o.sack_ok, ws),
            )
        } else {
            // The cookie keeps SACK and the client's shift (if encodable);
            // scaling is offered only when it does, so both sides agree.
            let bits = cookie::option_bits_no_ts(o.wscale, o.sack_ok);
            let c = cookie::make(flow, &self.key, self.epoch, self.isn, idx, bits);
            let ws = if cookie::no_ts_keeps_wscale(bits) {
                self.cfg.wscale
            } else {
                NO_WSCALE
            };
            (c, options::synack(mss, false, 0, 0, o.sack_ok, ws))
        }
    }

    /// The IPv4 SYN-ACK; `saddr_be`/`daddr_be` are the SYN's addresses as
    /// it carried them, written back swapped.
    #[inline(always)]
    pub(crate) fn v4(
        &self,
        ctx: &XdpContext,
        l3: usize,
        flow: &FlowV4,
        saddr_be: u32,
        daddr_be: u32,
    ) -> Verdict {
        let (c, opts) = self.cookie(flow, self.cfg.mss4, 536);
        let tcp_len = TCP_HLEN + 4 * opts.len;
        let tot_len = (IPV4_HLEN + tcp_len) as u16;
        if resize(ctx, l3 + tot_len as usize).is_none() || swap_macs(ctx).is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        // IPv4 header: no options, DF, fresh checksum.
        let mut s = 0u64;
        s = checksum::add32(s, 0x4500_0000 | tot_len as u32);
        s = checksum::add32(s, 0x0000_4000);
        s = checksum::add32(s, ((TTL as u32) << 24) | ((IPPROTO_TCP as u32) << 16));
        s = checksum::add32(s, flow.daddr);
        s = checksum::add32(s, flow.saddr);
        let ip_csum = checksum::finish(s);
        let ok = store::<[u32; 5]>(
            ctx,
            l3,
            [
                (0x4500_0000u32 | tot_len as u32).to_be(),
                0x0000_4000u32.to_be(),
                (((TTL as u32) << 24) | ((IPPROTO_TCP as u32) << 16) | ip_csum as u32).to_be(),
                daddr_be,
                saddr_be,
            ],
        );
        if ok.is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let mut ps = 0u64;
        ps = checksum::add32(ps, flow.daddr);
        ps = checksum::add32(ps, flow.saddr);
        ps = checksum::add32(ps, IPPROTO_TCP as u32 + tcp_len as u32);
        self.write_tcp(ctx, l3 + IPV4_HLEN, flow.dport, c, &opts, ps)
    }

    /// The IPv6 SYN-ACK.
    #[inline(always)]
    pub(crate) fn v6(&self, ctx: &XdpContext, l3: usize, flow: &FlowV6) -> Verdict {
        let (c, opts) = self.cookie(flow, self.cfg.mss6, 1220);
        let tcp_len = TCP_HLEN + 4 * opts.len;
        if resize(ctx, l3 + IPV6_HLEN + tcp_len).is_none() || swap_macs(ctx).is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let hdr = [
            0x6000_0000u32.to_be(),
            (((tcp_len as u32) << 16) | ((IPPROTO_TCP as u32) << 8) | TTL as u32).to_be(),
        ];
        let d = flow.daddr;
        let s = flow.saddr;
        let ok = store::<[u32; 2]>(ctx, l3, hdr)
            .and_then(|_| store::<[u64; 2]>(ctx, l3 + 8, [d[0].to_be(), d[1].to_be()]))
            .and_then(|_| store::<[u64; 2]>(ctx, l3 + 24, [s[0].to_be(), s[1].to_be()]));
        if ok.is_none() {
            return (XDP_DROP, Counter::DropResize);
        }
        let mut ps = 0u64;
        ps = checksum::add64(ps, d[0]);
        ps = checksum::add64(ps, d[1]);
        ps = checksum::add64(ps, s[0]);
        ps = checksum::add64(ps, s[1]);
        ps = checksum::add32(ps, tcp_len as u32);
        ps = checksum::add32(ps, IPPROTO_TCP as u32);
        self.write_tcp(ctx, l3 + IPV6_HLEN, flow.dport, c, &opts, ps)
    }

    /// Writes the SYN-ACK's TCP header and options at `l4`; `sum` holds the
    /// pseudo-header.
    #[inline(always)]
    fn write_tcp(
        &self,
        ctx: &XdpContext,
        l4: usize,
        dport: u16,
        cookie: u32,
        o: &SynAckOptions,
        mut sum: u64,
    ) -> Verdict {
        let sport = u16::from_be(self.sport);
        let ports = ((dport as u32) << 16) | sport as u32;
        let ack = self.isn.wrapping_add(1);
        let doff_flags =
            ((((5 + o.len) as u32) << 12) | (SYN | ACK) as u32) << 16 | self.cfg.window as u32;
        sum = checksum::add32(sum, ports);
        sum = checksum::add32(sum, cookie);
        sum = checksum::add32(sum, ack);
        sum = checksum::add32(sum, doff_flags);
        let w = &o.words;
        // Unused option words are zero: summing all five is exact.
        sum = checksum::add32(sum, w[0]);
        sum = checksum::add32(sum, w[1]);
        sum = checksum::add32(sum, w[2]);
        sum = checksum::add32(sum, w[3]);
        sum = checksum::add32(sum, w[4]);
        let csum = checksum::finish(sum);
        let hdr = [
            ports.to_be(),
            cookie.to_be(),
            ack.to_be(),
            doff_flags.to_be(),
            ((csum as u32) << 16).to_be(),
        ];
        let mut ok =
            store::<[u32; 5]>(ctx, l4, hdr).and_then(|_| store::<u32>(ctx, l4 + 20, w[0].to_be()));
        if o.len > 1 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 24, w[1].to_be()));
        }
        if o.len > 2 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 28, w[2].to_be()));
        }
        if o.len > 3 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 32, w[3].to_be()));
        }
        if o.len > 4 {
            ok = ok.and_then(|_| store::<u32>(ctx, l4 + 36, w[4].to_be()));
        }
        match ok {
            Some(()) => (XDP_TX, Counter::SynAnswered),
            None => (XDP_DROP, Counter::DropResize),
        }
    }
}
