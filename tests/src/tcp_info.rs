//! The `struct tcp_info` fields the tests read (getsockopt TCP_INFO), as
//! the kernel lays them out.

use std::os::fd::AsRawFd;

pub const OPT_TIMESTAMPS: u8 = 1;
pub const OPT_SACK: u8 = 2;
pub const OPT_WSCALE: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// `OPT_*` bits.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    pub rcv_ssthresh: u32,
    pub advmss: u32,
    /// tcpi_snd_wnd and tcpi_rcv_wnd, when the kernel reports them.
    pub snd_wnd: Option<u32>,
    pub rcv_wnd: Option<u32>,
}

pub fn tcp_info(s: &impl AsRawFd) -> TcpInfo {
    let mut b = [0u8; 256];
    let mut len = b.len() as u32;
    // SAFETY: a valid buffer of the length passed.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let u32_at = |o: usize| {
        (o + 4 <= len as usize).then(|| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
    };
    // Byte 5 tcpi_options, byte 6 snd_wscale:4 | rcv_wscale:4.
    TcpInfo {
        options: b[5],
        snd_wscale: b[6] & 0x0f,
        rcv_wscale: b[6] >> 4,
        snd_mss: u32_at(16).expect("tcpi_snd_mss"),
        rcv_mss: u32_at(20).expect("tcpi_rcv_mss"),
        rcv_ssthresh: u32_at(64).expect("tcpi_rcv_ssthresh"),
        advmss: u32_at(84).expect("tcpi_advmss"),
        snd_wnd: u32_at(228),
        rcv_wnd: u32_at(232),
    }
}
