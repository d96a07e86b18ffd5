//! Materializing a verified flow as an established kernel socket.
//!
//! XDP answered the handshake statelessly, so the kernel knows nothing of
//! the connection. TCP_REPAIR lets us create the socket it would have had:
//! both sequence numbers, the negotiated options and a timestamp clock that
//! continues from the SYN-ACK's. The SYN-ACK advertised a zero window, so
//! the client has sent no data yet; once the socket exists we send it a
//! window update (a plain ACK, from a raw socket: leaving repair mode only
//! emits a probe with an old sequence number, which the client discards
//! without reading its window). From then on the client's segments find the
//! socket and XDP passes them to the kernel.

pub mod retransmit;
pub mod uring;
pub mod window;

use std::{
    net::TcpStream,
    os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd},
};

use ackgate_common::cookie::TS_OPT_MASK;
use thiserror::Error;

use crate::{
    sys::{raw::RawSender, sockopt},
    xdp::ring::Flow,
};

#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("malformed handoff event (family {0})")]
    Event(u8),
    #[error("{step}: {err}")]
    Sys {
        step: &'static str,
        err: std::io::Error,
    },
}

impl HandoffError {
    /// Metric label: `bad_event`; `duplicate` when the flow's socket already
    /// exists (an ACK or probe verified again before the first handoff made
    /// the socket); `socket` for any other failed step.
    pub fn reason(&self) -> &'static str {
        match self {
            HandoffError::Event(_) => "bad_event",
            // Binding succeeds (repair mode forces address reuse); it is the
            // repair-mode connect() that finds the 4-tuple taken.
            HandoffError::Sys { step, err }
                if *step == STEP_CONNECT && err.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                "duplicate"
            }
            HandoffError::Sys { .. } => "socket",
        }
    }
}

type Result<T> = std::result::Result<T, HandoffError>;

// Step names, shared by both paths so that an error reads (and is counted)
// the same whichever engine materialized the flow.
const STEP_SOCKET: &str = "socket";
const STEP_REPAIR_ON: &str = "TCP_REPAIR on";
const STEP_BIND: &str = "bind to the service address";
const STEP_SELECT_QUEUE: &str = "select queue";
const STEP_SEND_SEQ: &str = "send sequence";
const STEP_RECV_SEQ: &str = "receive sequence";
const STEP_MAXSEG: &str = "TCP_MAXSEG";
const STEP_CONNECT: &str = "connect in repair mode";
const STEP_OPTIONS: &str = "TCP_REPAIR_OPTIONS";
const STEP_TIMESTAMP: &str = "TCP_TIMESTAMP";
const STEP_READ_WINDOW: &str = "reading TCP_REPAIR_WINDOW";
const STEP_WINDOW: &str = "TCP_REPAIR_WINDOW";
const STEP_REPAIR_OFF: &str = "TCP_REPAIR off";
const STEP_UPDATE: &str = "sending the window update";

/// Names the step a system call failed in.
fn step<T>(step: &'static str, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|err| HandoffError::Sys { step, err })
}

/// One record of TCP_REPAIR_OPTIONS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RepairOpt {
    code: u32,
    val: u32,
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_REPAIR_ON: i32 = 1;
/// Leaves repair mode without the window probe: our own update says more.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;

const TCP: i32 = libc::IPPROTO_TCP;

/// Every value a flow's repair sets that follows from the flow alone
/// (everything but our receive window, which the kernel picks at connect
/// time). Both engines set exactly these, in this order: socket, repair on,
/// bind, the send then the receive sequence, TCP_MAXSEG, connect, options,
/// timestamp, window, repair off, window update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Ours continues from the cookie, the client's from its ISN.
    send_seq: u32,
    recv_seq: u32,
    /// The MSS the handshake negotiated, set before connect(): repair-mode
    /// connect() syncs the socket's MSS cache from the clamp it finds, and
    /// without a user MSS that is the 536-byte default (first flights would
    /// go out in 524-byte segments until the client's window grows).
    mss: i32,
    opts: [RepairOpt; 4],
    n_opts: usize,
    /// Our receive shift as the options state it.
    rcv_wscale: u8,
    /// Our first TSval; `None` without timestamps.
    ts_start: Option<u32>,
}

impl Plan {
    fn new(flow: &Flow, our_wscale: u8) -> Plan {
        // Window scaling is always stated, also when it was not negotiated
        // (both shifts 0): repair-mode connect() picked a receive shift of
        // its own, and left in place it would divide every window we
        // advertise while the client reads them unscaled.
        let (snd_wscale, rcv_wscale) = match flow.client_wscale {
            Some(ws) => (ws, our_wscale),
            None => (0, 0),
        };
        let mut opts = [RepairOpt::default(); 4];
        opts[0] = RepairOpt {
            code: TCPOPT_MSS,
            val: flow.mss as u32,
        };
        opts[1] = RepairOpt {
            code: TCPOPT_WINDOW,
            val: snd_wscale as u32 | ((rcv_wscale as u32) << 16),
        };
        let mut n_opts = 2;
        for (on, code) in [
            (flow.sack, TCPOPT_SACK_PERM),
            (flow.timestamps, TCPOPT_TIMESTAMP),
        ] {
            if on {
                opts[n_opts] = RepairOpt { code, val: 0 };
                n_opts += 1;
            }
        }
        Plan {
            send_seq: flow.cookie.wrapping_add(1),
            recv_seq: flow.client_isn.wrapping_add(1),
            mss: flow.mss as i32,
            opts,
            n_opts,
            rcv_wscale,
            // Our TSval clock continues from the SYN-ACK's, never backwards
            // (PAWS): the SYN-ACK's TSval had its low bits replaced by
            // option bits, so it starts one option field above it.
            ts_start: flow
                .timestamps
                .then(|| flow.synack_tsval.wrapping_add(TS_OPT_MASK + 1)),
        }
    }

    /// The TCP_REPAIR_OPTIONS records.
    fn options(&self) -> &[RepairOpt] {
        &self.opts[..self.n_opts]
    }

    /// The window state to set: the send window the client offered, our
    /// receive window as the kernel left it after connect (`kernel`, read
    /// back or modelled by [`after_connect`]).
    fn window(&self, flow: &Flow, kernel: RepairWindow) -> RepairWindow {
        let snd_wnd = (flow.client_window as u32) << flow.client_wscale.unwrap_or(0);
        RepairWindow {
            snd_wl1: self.recv_seq,
            snd_wnd,
            max_window: kernel.max_window.max(snd_wnd),
            rcv_wnd: kernel.rcv_wnd,
            rcv_wup: kernel.rcv_wup,
        }
    }

    /// The window update segment (TCP, checksummed) advertising `rcv_wnd`
    /// scaled by our shift.
    fn update(&self, flow: &Flow, rcv_wnd: u32) -> Vec<u8> {
        let window = (rcv_wnd >> self.rcv_wscale).min(65535) as u16;
        window::update(flow, window, self.ts_start.unwrap_or(0))
    }
}

/// TCP_REPAIR_WINDOW as a repair-mode connect() leaves it, given the
/// receive window it chose: tcp_connect_init() zeroes max_window and
/// snd_wnd, starts snd_wl1 at 0 (tcp_init_wl) and sets rcv_wup to rcv_nxt,
/// which TCP_QUEUE_SEQ made the client's ISN + 1; nothing later in the
/// repair (options, timestamp) touches these. The synchronous path reads
/// the real values and checks them against this before the io_uring path
/// relies on it (see [`uring`]).
fn after_connect(flow: &Flow, rcv_wnd: u32) -> RepairWindow {
    RepairWindow {
        snd_wl1: 0,
        snd_wnd: 0,
        max_window: 0,
        rcv_wnd,
        rcv_wup: flow.client_isn.wrapping_add(1),
    }
}

/// Creates the established socket for `flow` (in the calling thread's
/// network namespace, which must own the service address) and opens the
/// client's window. `our_wscale` is the shift the SYN-ACK advertised.
pub fn materialize(flow: &Flow, our_wscale: u8, sender: &RawSender) -> Result<TcpStream> {
    materialize_reading(flow, our_wscale, sender).map(|(s, _)| s)
}

/// [`materialize`], also returning TCP_REPAIR_WINDOW as connect() left it.
fn materialize_reading(
    flow: &Flow,
    our_wscale: u8,
    sender: &RawSender,
) -> Result<(TcpStream, RepairWindow)> {
    let plan = Plan::new(flow, our_wscale);
    let fd = repair_socket(flow)?;
    step(
        STEP_SELECT_QUEUE,
        sockopt::set(&fd, TCP, libc::TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE),
    )?;
    step(
        STEP_SEND_SEQ,
        sockopt::set(&fd, TCP, libc::TCP_QUEUE_SEQ, &plan.send_seq),
    )?;
    step(
        STEP_SELECT_QUEUE,
        sockopt::set(&fd, TCP, libc::TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE),
    )?;
    step(
        STEP_RECV_SEQ,
        sockopt::set(&fd, TCP, libc::TCP_QUEUE_SEQ, &plan.recv_seq),
    )?;
    step(
        STEP_MAXSEG,
        sockopt::set(&fd, TCP, libc::TCP_MAXSEG, &plan.mss),
    )?;
    // In repair mode connect() sends nothing: the socket becomes established.
    step(STEP_CONNECT, sockopt::connect(&fd, &flow.client))?;
    step(
        STEP_OPTIONS,
        sockopt::set_slice(&fd, TCP, libc::TCP_REPAIR_OPTIONS, plan.options()),
    )?;
    if let Some(ts) = plan.ts_start {
        step(
            STEP_TIMESTAMP,
            sockopt::set(&fd, TCP, libc::TCP_TIMESTAMP, &ts),
        )?;
    }
    let kernel = step(
        STEP_READ_WINDOW,
        sockopt::get(&fd, TCP, libc::TCP_REPAIR_WINDOW, RepairWindow::default()),
    )?;
    let w = plan.window(flow, kernel);
    step(
        STEP_WINDOW,
        sockopt::set(&fd, TCP, libc::TCP_REPAIR_WINDOW, &w),
    )?;
    step(
        STEP_REPAIR_OFF,
        sockopt::set(&fd, TCP, libc::TCP_REPAIR, &TCP_REPAIR_OFF_NO_WP),
    )?;
    let seg = plan.update(flow, w.rcv_wnd);
    step(
        STEP_UPDATE,
        sender.send_tcp(flow.service.ip(), flow.client.ip(), &seg),
    )?;
    // SAFETY: hands the established socket's descriptor to std, which now
    // owns it alone.
    let s = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    Ok((s, kernel))
}

/// A TCP socket in repair mode, bound to the service address. Repair mode
/// also lets many flows bind the same address and port: the kernel forces
/// address reuse for a repairing socket (SO_REUSEADDR afterwards would undo
/// that).
fn repair_socket(flow: &Flow) -> Result<OwnedFd> {
    let fd = step(
        STEP_SOCKET,
        sockopt::socket(sockopt::family(&flow.service), libc::SOCK_STREAM, 0),
    )?;
    step(
        STEP_REPAIR_ON,
        sockopt::set(&fd, TCP, libc::TCP_REPAIR, &TCP_REPAIR_ON),
    )?;
    step(STEP_BIND, sockopt::bind(&fd, &flow.service))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(ts: bool, wscale: Option<u8>, sack: bool) -> Flow {
        Flow {
            client: "198.18.0.2:40000".parse().unwrap(),
            service: "198.18.0.1:80".parse().unwrap(),
            client_isn: u32::MAX,
            cookie: 7,
            mss: 1460,
            client_wscale: wscale,
            sack,
            timestamps: ts,
            client_tsval: 1,
            synack_tsval: 0x100,
            client_window: 502,
            probe: false,
        }
    }

    #[test]
    fn the_plan_states_sequences_options_and_the_timestamp_start() {
        let p = Plan::new(&flow(true, Some(7), true), 9);
        assert_eq!((p.send_seq, p.recv_seq, p.mss), (8, 0, 1460));
        assert_eq!(
            p.options(),
            &[
                RepairOpt {
                    code: TCPOPT_MSS,
                    val: 1460
                },
                RepairOpt {
                    code: TCPOPT_WINDOW,
                    val: 7 | 9 << 16
                },
                RepairOpt {
                    code: TCPOPT_SACK_PERM,
                    val: 0
                },
                RepairOpt {
                    code: TCPOPT_TIMESTAMP,
                    val: 0
                },
            ]
        );
        assert_eq!(p.rcv_wscale, 9);
        assert_eq!(p.ts_start, Some(0x100 + TS_OPT_MASK + 1));
        // No window scaling: both shifts stated as 0; no SACK, no TS.
        let bare = Plan::new(&flow(false, None, false), 9);
        assert_eq!(bare.options().len(), 2);
        assert_eq!(bare.options()[1].val, 0);
        assert_eq!((bare.rcv_wscale, bare.ts_start), (0, None));
    }

    #[test]
    fn the_window_takes_the_clients_offer_and_the_kernels_receive_side() {
        let f = flow(true, Some(7), true);
        let p = Plan::new(&f, 7);
        let w = p.window(&f, after_connect(&f, 65483));
        assert_eq!(
            w,
            RepairWindow {
                snd_wl1: 0,
                snd_wnd: 502 << 7,
                max_window: 502 << 7,
                rcv_wnd: 65483,
                rcv_wup: 0,
            }
        );
        let seg = p.update(&f, w.rcv_wnd);
        assert_eq!(u16::from_be_bytes([seg[14], seg[15]]), (65483 >> 7) as u16);
        // Unscaled: the window saturates at 65535.
        let bare = flow(false, None, false);
        let seg = Plan::new(&bare, 7).update(&bare, 1 << 20);
        assert_eq!(u16::from_be_bytes([seg[14], seg[15]]), 65535);
    }
}
