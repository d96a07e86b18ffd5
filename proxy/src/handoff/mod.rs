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

const STEP_CONNECT: &str = "connect in repair mode";

/// Names the step a system call failed in.
fn step<T>(step: &'static str, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|err| HandoffError::Sys { step, err })
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RepairOpt {
    code: u32,
    val: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
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
/// Leaves repair mode without the window probe: our own update says more.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;

const TCP: i32 = libc::IPPROTO_TCP;

/// Creates the established socket for `flow` (in the calling thread's
/// network namespace, which must own the service address) and opens the
/// client's window. `our_wscale` is the shift the SYN-ACK advertised.
pub fn materialize(flow: &Flow, our_wscale: u8, sender: &RawSender) -> Result<TcpStream> {
    let fd = repair_socket(flow)?;
    set_sequences(&fd, flow)?;
    // The MSS the handshake negotiated, before connect(): repair-mode
    // connect() syncs the socket's MSS cache from the clamp it finds, and
    // without a user MSS that is the 536-byte default (first flights would
    // go out in 524-byte segments until the client's window grows).
    step(
        "TCP_MAXSEG",
        sockopt::set(&fd, TCP, libc::TCP_MAXSEG, &(flow.mss as i32)),
    )?;
    // In repair mode connect() sends nothing: the socket becomes established.
    step(STEP_CONNECT, sockopt::connect(&fd, &flow.client))?;
    let rcv_wscale = set_options(&fd, flow, our_wscale)?;
    let ts_start = set_timestamp(&fd, flow)?;
    let rcv_wnd = set_windows(&fd, flow)?;
    step(
        "TCP_REPAIR off",
        sockopt::set(&fd, TCP, libc::TCP_REPAIR, &TCP_REPAIR_OFF_NO_WP),
    )?;
    let window = (rcv_wnd >> rcv_wscale).min(65535) as u16;
    let seg = window::update(flow, window, ts_start);
    step(
        "sending the window update",
        sender.send_tcp(flow.service.ip(), flow.client.ip(), &seg),
    )?;
    // SAFETY: hands the established socket's descriptor to std, which now
    // owns it alone.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

/// A TCP socket in repair mode, bound to the service address. Repair mode
/// also lets many flows bind the same address and port: the kernel forces
/// address reuse for a repairing socket (SO_REUSEADDR afterwards would undo
/// that).
fn repair_socket(flow: &Flow) -> Result<OwnedFd> {
    let fd = step(
        "socket",
        sockopt::socket(sockopt::family(&flow.service), libc::SOCK_STREAM, 0),
    )?;
    step(
        "TCP_REPAIR on",
        sockopt::set(&fd, TCP, libc::TCP_REPAIR, &1i32),
    )?;
    step(
        "bind to the service address",
        sockopt::bind(&fd, &flow.service),
    )?;
    Ok(fd)
}

/// Both queues' sequence numbers: ours continues from the cookie, the
/// client's from its ISN.
fn set_sequences(fd: &OwnedFd, flow: &Flow) -> Result<()> {
    for (queue, seq, name) in [
        (TCP_SEND_QUEUE, flow.cookie.wrapping_add(1), "send sequence"),
        (
            TCP_RECV_QUEUE,
            flow.client_isn.wrapping_add(1),
            "receive sequence",
        ),
    ] {
        step(
            "select queue",
            sockopt::set(fd, TCP, libc::TCP_REPAIR_QUEUE, &queue),
        )?;
        step(name, sockopt::set(fd, TCP, libc::TCP_QUEUE_SEQ, &seq))?;
    }
    Ok(())
}

/// The options the handshake negotiated; returns our receive shift.
fn set_options(fd: &OwnedFd, flow: &Flow, our_wscale: u8) -> Result<u8> {
    // Window scaling is always stated, also when it was not negotiated
    // (both shifts 0): repair-mode connect() picked a receive shift of its
    // own, and left in place it would divide every window we advertise
    // while the client reads them unscaled.
    let (snd_wscale, rcv_wscale) = match flow.client_wscale {
        Some(ws) => (ws, our_wscale),
        None => (0, 0),
    };
    let mut opts = vec![
        RepairOpt {
            code: TCPOPT_MSS,
            val: flow.mss as u32,
        },
        RepairOpt {
            code: TCPOPT_WINDOW,
            val: snd_wscale as u32 | ((rcv_wscale as u32) << 16),
        },
    ];
    if flow.sack {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if flow.timestamps {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    step(
        "TCP_REPAIR_OPTIONS",
        sockopt::set_slice(fd, TCP, libc::TCP_REPAIR_OPTIONS, &opts),
    )?;
    Ok(rcv_wscale)
}

/// Our TSval clock continues from the SYN-ACK's, never backwards (PAWS):
/// the SYN-ACK's TSval had its low bits replaced by option bits, so it
/// starts one option field above it. Returns the first TSval (0 without
/// timestamps).
fn set_timestamp(fd: &OwnedFd, flow: &Flow) -> Result<u32> {
    if !flow.timestamps {
        return Ok(0);
    }
    let ts = flow.synack_tsval.wrapping_add(TS_OPT_MASK + 1);
    step(
        "TCP_TIMESTAMP",
        sockopt::set(fd, TCP, libc::TCP_TIMESTAMP, &ts),
    )?;
    Ok(ts)
}

/// The send window the client offered; our receive window as the kernel
/// chose it, which is returned.
fn set_windows(fd: &OwnedFd, flow: &Flow) -> Result<u32> {
    let mut w = step(
        "reading TCP_REPAIR_WINDOW",
        sockopt::get(fd, TCP, libc::TCP_REPAIR_WINDOW, RepairWindow::default()),
    )?;
    let snd_wnd = (flow.client_window as u32) << flow.client_wscale.unwrap_or(0);
    w.snd_wl1 = flow.client_isn.wrapping_add(1);
    w.snd_wnd = snd_wnd;
    w.max_window = w.max_window.max(snd_wnd);
    step(
        "TCP_REPAIR_WINDOW",
        sockopt::set(fd, TCP, libc::TCP_REPAIR_WINDOW, &w),
    )?;
    Ok(w.rcv_wnd)
}
