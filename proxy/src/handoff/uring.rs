//! Batched handoffs: many flows materialized per io_uring submission.
//!
//! Each flow is one chain of linked operations doing what
//! [`materialize`](super::materialize) does one system call at a time:
//! IORING_OP_SOCKET into a fixed descriptor slot, the TCP_REPAIR socket
//! options as `SOCKET_URING_OP_SETSOCKOPT` commands, IORING_OP_BIND and
//! IORING_OP_CONNECT, leaving repair, IORING_OP_SENDMSG of the window update
//! on the raw socket, and IORING_OP_FIXED_FD_INSTALL, which turns the slot
//! into an ordinary descriptor for the relay. The later entries name the
//! socket by its slot. A failing entry cancels the rest of its own chain
//! only; its error is reported under the synchronous path's step names, so
//! `reason()` reads the same (`duplicate` is EADDRNOTAVAIL at the repair
//! connect). After every batch all the batch's slots are emptied, whatever
//! happened: an installed descriptor holds its own reference to the
//! socket, and a failed chain's socket is closed with its slot.
//!
//! # Our receive window without TCP_REPAIR_WINDOW's read
//!
//! The synchronous path reads TCP_REPAIR_WINDOW after connect() to learn
//! the receive window the kernel chose, then writes it back with the
//! client's send window. io_uring's getsockopt is SOL_SOCKET only, and a
//! chain's values are fixed when it is submitted, so the chain must know
//! that window in advance. It is learnt: the first flow of each (address
//! family, MSS) goes through the synchronous path, whose read is kept, and
//! later flows of that kind reuse it. This is sound because of what the
//! kernel's value depends on. tcp_connect_init() sets
//! `rcv_wnd` through tcp_select_initial_window() from tcp_full_space() (the
//! namespace's default receive buffer, tcp_rmem[1], for a fresh socket), the
//! route's window, initrwnd and advmss metrics, and the advertised MSS,
//! min(route advmss, TCP_MAXSEG) — which we set to the flow's MSS; the
//! timestamp reservation is subtracted only once a TSval was received,
//! never for a socket made by connect(). None of that is per flow except
//! the MSS (the space is rounded down to a multiple of it) and the family
//! (its own routes). The other fields the window write needs are fixed by
//! tcp_connect_init() too — max_window and snd_wnd 0, rcv_wup = rcv_nxt,
//! the client's ISN + 1 — and the learning read checks them against that
//! model ([`super::after_connect`]): a kind whose read disagrees stays on
//! the synchronous path. Whatever value is written becomes the window the
//! kernel believes it offered, which is what the update segment advertises,
//! so the two never disagree; a stale value (a sysctl or route changed
//! after learning) is still at most the buffer space of that time and only
//! sizes the first window, never the data. A [`UringHandoff`] lives in one
//! namespace: make and use it on a thread of the namespace that owns the
//! service addresses.

use std::{
    collections::HashMap,
    io,
    net::TcpStream,
    os::fd::{AsRawFd as _, FromRawFd as _, RawFd},
};

use io_uring::{
    opcode,
    squeue::{self, Entry},
    types::{DestinationSlot, Fd, Fixed},
    IoUring, Probe,
};
use thiserror::Error;

use super::{
    after_connect, materialize, materialize_reading, HandoffError, Plan, RepairWindow, Result,
    STEP_BIND, STEP_CONNECT, STEP_MAXSEG, STEP_OPTIONS, STEP_RECV_SEQ, STEP_REPAIR_OFF,
    STEP_REPAIR_ON, STEP_SELECT_QUEUE, STEP_SEND_SEQ, STEP_SOCKET, STEP_TIMESTAMP, STEP_UPDATE,
    STEP_WINDOW, TCP, TCP_RECV_QUEUE, TCP_REPAIR_OFF_NO_WP, TCP_REPAIR_ON, TCP_SEND_QUEUE,
};
use crate::{
    sys::{raw::RawSender, sockopt},
    xdp::ring::Flow,
};

/// Why the io_uring engine cannot run here.
#[derive(Debug, Error)]
pub enum UringUnavailable {
    #[error("io_uring is disabled on this host (kernel.io_uring_disabled = 2)")]
    Disabled,
    #[error(
        "io_uring is limited to members of group {gid} (kernel.io_uring_disabled = 1, \
         kernel.io_uring_group = {gid}) and to CAP_SYS_ADMIN, and this process is neither"
    )]
    GroupOnly { gid: i64 },
    #[error("io_uring_setup failed: {err} ({why})")]
    Setup { err: io::Error, why: &'static str },
    #[error("IORING_REGISTER_PROBE failed: {0} (a kernel older than 5.6)")]
    Probe(io::Error),
    #[error("this kernel's io_uring lacks {0}")]
    Opcode(&'static str),
    #[error("registering {slots} fixed descriptor slots failed: {err}")]
    Files { slots: u32, err: io::Error },
    #[error(
        "setsockopt as an io_uring command (SOCKET_URING_OP_SETSOCKOPT, Linux 6.7) failed: {0}"
    )]
    SetSockOpt(io::Error),
}

/// Whether this process can run the io_uring handoff, and if not exactly
/// why: io_uring disabled or limited to a group by sysctl, io_uring_setup
/// refused (seccomp, a kernel without it), a needed operation missing, or
/// setsockopt commands unsupported. Makes a small ring and drops it.
pub fn probe() -> std::result::Result<(), UringUnavailable> {
    UringHandoff::new(1).map(drop)
}

/// The operations a chain uses, named with the kernel that added them.
const NEEDED: [(u8, &str); 6] = [
    (opcode::Socket::CODE, "IORING_OP_SOCKET (Linux 5.19)"),
    (opcode::SetSockOpt::CODE, "IORING_OP_URING_CMD (Linux 5.19)"),
    (opcode::Bind::CODE, "IORING_OP_BIND (Linux 6.11)"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT (Linux 5.5)"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG (Linux 5.3)"),
    (
        opcode::FixedFdInstall::CODE,
        "IORING_OP_FIXED_FD_INSTALL (Linux 6.8)",
    ),
];

/// The most entries one chain has (with timestamps).
const CHAIN_MAX: u32 = 15;

/// Entries of a chain, in order; an entry's index is its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Socket,
    RepairOn,
    Bind,
    SendQueue,
    SendSeq,
    RecvQueue,
    RecvSeq,
    MaxSeg,
    Connect,
    Options,
    Timestamp,
    Window,
    RepairOff,
    Update,
    Install,
}

impl Step {
    const ALL: [Step; CHAIN_MAX as usize] = [
        Step::Socket,
        Step::RepairOn,
        Step::Bind,
        Step::SendQueue,
        Step::SendSeq,
        Step::RecvQueue,
        Step::RecvSeq,
        Step::MaxSeg,
        Step::Connect,
        Step::Options,
        Step::Timestamp,
        Step::Window,
        Step::RepairOff,
        Step::Update,
        Step::Install,
    ];

    /// The synchronous path's name for the same step.
    fn name(self) -> &'static str {
        match self {
            Step::Socket => STEP_SOCKET,
            Step::RepairOn => STEP_REPAIR_ON,
            Step::Bind => STEP_BIND,
            Step::SendQueue | Step::RecvQueue => STEP_SELECT_QUEUE,
            Step::SendSeq => STEP_SEND_SEQ,
            Step::RecvSeq => STEP_RECV_SEQ,
            Step::MaxSeg => STEP_MAXSEG,
            Step::Connect => STEP_CONNECT,
            Step::Options => STEP_OPTIONS,
            Step::Timestamp => STEP_TIMESTAMP,
            Step::Window => STEP_WINDOW,
            Step::RepairOff => STEP_REPAIR_OFF,
            Step::Update => STEP_UPDATE,
            Step::Install => "installing the descriptor",
        }
    }
}

// Option values the kernel reads from our memory: statics, so they outlive
// any submission.
static REPAIR_ON: i32 = TCP_REPAIR_ON;
static REPAIR_OFF: i32 = TCP_REPAIR_OFF_NO_WP;
static SEND_QUEUE: i32 = TCP_SEND_QUEUE;
static RECV_QUEUE: i32 = TCP_RECV_QUEUE;

/// What the kernel may read while one flow's chain runs. Built in place in
/// a vector that is not touched again until every completion is in.
struct Buffers {
    plan: Plan,
    window: RepairWindow,
    service: (libc::sockaddr_storage, u32),
    client: (libc::sockaddr_storage, u32),
    /// The raw socket's destination (the client, port 0).
    raw_dst: (libc::sockaddr_storage, u32),
    packet: Vec<u8>,
    iov: libc::iovec,
    msg: libc::msghdr,
}

impl Buffers {
    fn new(flow: &Flow, our_wscale: u8, rcv_wnd: u32) -> Buffers {
        let plan = Plan::new(flow, our_wscale);
        let window = plan.window(flow, after_connect(flow, rcv_wnd));
        let seg = plan.update(flow, window.rcv_wnd);
        let packet = crate::sys::raw::ip_packet(flow.service.ip(), flow.client.ip(), &seg)
            .expect("a flow's addresses share a family");
        Buffers {
            plan,
            window,
            service: sockopt::sockaddr(&flow.service),
            client: sockopt::sockaddr(&flow.client),
            raw_dst: sockopt::sockaddr(&std::net::SocketAddr::new(flow.client.ip(), 0)),
            packet,
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: all-zero bytes are a valid (empty) msghdr.
            msg: unsafe { std::mem::zeroed() },
        }
    }

    /// Points the message at this record's own packet and address: once
    /// the record is at its final place.
    fn aim(&mut self) {
        self.iov.iov_base = self.packet.as_mut_ptr().cast();
        self.iov.iov_len = self.packet.len();
        self.msg.msg_name = (&mut self.raw_dst.0 as *mut libc::sockaddr_storage).cast();
        self.msg.msg_namelen = self.raw_dst.1;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
    }
}

/// A setsockopt(IPPROTO_TCP) command on the socket in `slot`, reading
/// `v` (which must outlive the submission).
fn set_tcp<T: ?Sized>(slot: Fixed, name: i32, v: &T) -> Entry {
    opcode::SetSockOpt::new(
        slot,
        TCP as u32,
        name as u32,
        (v as *const T).cast(),
        std::mem::size_of_val(v) as u32,
    )
    .build()
}

/// The chain for the flow whose buffers are `b`, its socket in `slot`;
/// `raw` sends the window update. Entries come with their step; every
/// entry but the last is linked to the next.
fn chain(flow: &Flow, b: &Buffers, slot: u32, raw: RawFd) -> Vec<(Step, Entry)> {
    let fixed = Fixed(slot);
    let family = sockopt::family(&flow.service);
    let dest = DestinationSlot::try_from_slot_target(slot).expect("slot within the table");
    let mut c = vec![
        (
            Step::Socket,
            opcode::Socket::new(family, libc::SOCK_STREAM, 0)
                .file_index(Some(dest))
                .build(),
        ),
        (Step::RepairOn, set_tcp(fixed, libc::TCP_REPAIR, &REPAIR_ON)),
        (
            Step::Bind,
            opcode::Bind::new(
                fixed,
                (&b.service.0 as *const libc::sockaddr_storage).cast(),
                b.service.1,
            )
            .build(),
        ),
        (
            Step::SendQueue,
            set_tcp(fixed, libc::TCP_REPAIR_QUEUE, &SEND_QUEUE),
        ),
        (
            Step::SendSeq,
            set_tcp(fixed, libc::TCP_QUEUE_SEQ, &b.plan.send_seq),
        ),
        (
            Step::RecvQueue,
            set_tcp(fixed, libc::TCP_REPAIR_QUEUE, &RECV_QUEUE),
        ),
        (
            Step::RecvSeq,
            set_tcp(fixed, libc::TCP_QUEUE_SEQ, &b.plan.recv_seq),
        ),
        (Step::MaxSeg, set_tcp(fixed, libc::TCP_MAXSEG, &b.plan.mss)),
        (
            Step::Connect,
            opcode::Connect::new(
                fixed,
                (&b.client.0 as *const libc::sockaddr_storage).cast(),
                b.client.1,
            )
            .build(),
        ),
        (
            Step::Options,
            set_tcp(fixed, libc::TCP_REPAIR_OPTIONS, b.plan.options()),
        ),
    ];
    if let Some(ts) = &b.plan.ts_start {
        c.push((Step::Timestamp, set_tcp(fixed, libc::TCP_TIMESTAMP, ts)));
    }
    c.extend([
        (
            Step::Window,
            set_tcp(fixed, libc::TCP_REPAIR_WINDOW, &b.window),
        ),
        (
            Step::RepairOff,
            set_tcp(fixed, libc::TCP_REPAIR, &REPAIR_OFF),
        ),
        (Step::Update, opcode::SendMsg::new(Fd(raw), &b.msg).build()),
        (Step::Install, opcode::FixedFdInstall::new(fixed, 0).build()),
    ]);
    let last = c.len() - 1;
    for (k, (_, e)) in c.iter_mut().enumerate() {
        if k < last {
            *e = e.clone().flags(squeue::Flags::IO_LINK);
        }
    }
    c
}

/// What the window of one kind of flow is known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learned {
    /// connect() leaves this receive window, and the model holds.
    Window(u32),
    /// The kernel's window did not match the model: synchronous only.
    SyncOnly,
}

/// Kind of flow whose receive window connect() chooses alike.
type Kind = (bool, u16);

fn kind(flow: &Flow) -> Kind {
    (flow.service.is_ipv6(), flow.mss)
}

/// A ring that materializes batches of flows, and the receive windows it
/// has learnt.
pub struct UringHandoff {
    ring: IoUring,
    /// Fixed descriptor slots, also the most flows per submission.
    slots: u32,
    /// `-1` for every slot: the table update that empties them.
    empty: Vec<RawFd>,
    learned: HashMap<Kind, Learned>,
}

impl UringHandoff {
    /// A ring for submissions of up to `max_batch` flows (larger batches are
    /// split), in the calling thread's network namespace. Fails as
    /// [`probe`] explains.
    pub fn new(max_batch: u32) -> std::result::Result<Self, UringUnavailable> {
        let slots = max_batch.max(1);
        let entries = (slots * CHAIN_MAX).next_power_of_two();
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(setup_error)?;
        let mut p = Probe::new();
        ring.submitter()
            .register_probe(&mut p)
            .map_err(UringUnavailable::Probe)?;
        if let Some((_, name)) = NEEDED.iter().find(|(code, _)| !p.is_supported(*code)) {
            return Err(UringUnavailable::Opcode(name));
        }
        ring.submitter()
            .register_files_sparse(slots)
            .map_err(|err| UringUnavailable::Files { slots, err })?;
        let mut u = UringHandoff {
            ring,
            slots,
            empty: vec![-1; slots as usize],
            learned: HashMap::new(),
        };
        u.check_setsockopt()?;
        Ok(u)
    }

    /// The largest batch one submission takes.
    pub fn max_batch(&self) -> usize {
        self.slots as usize
    }

    /// Materializes `flows` (see [`materialize`]); results in input order.
    /// One flow's failure fails that flow only. The first flow of a kind
    /// the ring has not seen (family, MSS) is made synchronously to learn
    /// its receive window (see the module's notes).
    pub fn materialize(
        &mut self,
        flows: &[Flow],
        our_wscale: u8,
        sender: &RawSender,
    ) -> Vec<Result<TcpStream>> {
        let mut out: Vec<Option<Result<TcpStream>>> = flows.iter().map(|_| None).collect();
        let mut queued = Vec::with_capacity(flows.len());
        for (i, f) in flows.iter().enumerate() {
            match self.learned.get(&kind(f)) {
                Some(Learned::Window(w)) => queued.push((i, *w)),
                Some(Learned::SyncOnly) => out[i] = Some(materialize(f, our_wscale, sender)),
                None => out[i] = Some(self.learn(f, our_wscale, sender)),
            }
        }
        for batch in queued.chunks(self.slots as usize) {
            self.submit(flows, batch, our_wscale, sender, &mut out);
        }
        out.into_iter()
            .map(|r| r.expect("every flow has its result"))
            .collect()
    }

    /// Materializes `flow` synchronously and keeps what connect() chose.
    fn learn(&mut self, flow: &Flow, our_wscale: u8, sender: &RawSender) -> Result<TcpStream> {
        let (s, kernel) = materialize_reading(flow, our_wscale, sender)?;
        let l = if kernel == after_connect(flow, kernel.rcv_wnd) {
            Learned::Window(kernel.rcv_wnd)
        } else {
            tracing::warn!(
                ?kernel,
                "TCP_REPAIR_WINDOW after connect is not as modelled; flows of this kind stay synchronous"
            );
            Learned::SyncOnly
        };
        self.learned.insert(kind(flow), l);
        Ok(s)
    }

    /// One submission: the flows `batch` names (index, receive window),
    /// their results written to `out`.
    fn submit(
        &mut self,
        flows: &[Flow],
        batch: &[(usize, u32)],
        our_wscale: u8,
        sender: &RawSender,
        out: &mut [Option<Result<TcpStream>>],
    ) {
        // Built in full before any pointer into them is taken, and never
        // moved or dropped before every completion is in.
        let mut bufs: Vec<Buffers> = batch
            .iter()
            .map(|&(i, w)| Buffers::new(&flows[i], our_wscale, w))
            .collect();
        bufs.iter_mut().for_each(Buffers::aim);
        let mut total = 0;
        {
            let mut sq = self.ring.submission();
            for (k, (b, &(i, _))) in bufs.iter().zip(batch).enumerate() {
                let flow = &flows[i];
                let raw = sender.fd_for(flow.client.ip()).as_raw_fd();
                for (step, e) in chain(flow, b, k as u32, raw) {
                    let e = e.user_data(((k as u64) << 8) | step as u64);
                    // SAFETY: every buffer the entry points at lives in
                    // `bufs` or a static, both kept until its completion;
                    // the ring has room for `slots` chains of CHAIN_MAX.
                    unsafe { sq.push(&e) }.expect("the ring holds a whole batch");
                    total += 1;
                }
            }
        }
        let mut failed: Vec<Option<(Step, i32)>> = vec![None; bufs.len()];
        let mut installed: Vec<Option<RawFd>> = vec![None; bufs.len()];
        let mut seen = 0;
        let mut broken = None;
        while seen < total {
            match self.ring.submit_and_wait(total - seen) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
            for cqe in self.ring.completion() {
                seen += 1;
                let (k, step) = ((cqe.user_data() >> 8) as usize, cqe.user_data() as u8);
                let step = Step::ALL[step as usize];
                let res = cqe.result();
                if step == Step::Install && res >= 0 {
                    installed[k] = Some(res);
                } else if res < 0
                    && (failed[k].is_none() || failed[k].unwrap().1 == -libc::ECANCELED)
                {
                    // The first real error; links after it only say
                    // "cancelled".
                    failed[k] = Some((step, res));
                }
            }
        }
        // Empty every slot of the batch: installed sockets live on in their
        // descriptors, the rest close here.
        if let Err(e) = self
            .ring
            .submitter()
            .register_files_update(0, &self.empty[..bufs.len()])
        {
            tracing::error!("emptying the handoff ring's descriptor slots: {e}");
        }
        if broken.is_some() {
            // Completions are missing: the kernel may still read these.
            std::mem::forget(bufs);
        }
        for (k, &(i, _)) in batch.iter().enumerate() {
            out[i] = Some(match (installed[k], failed[k], &broken) {
                // SAFETY: the descriptor FIXED_FD_INSTALL made for us; the
                // stream is its only owner.
                (Some(fd), _, _) => Ok(unsafe { TcpStream::from_raw_fd(fd) }),
                (None, Some((step, res)), _) => Err(HandoffError::Sys {
                    step: step.name(),
                    err: io::Error::from_raw_os_error(-res),
                }),
                (None, None, Some(e)) => Err(HandoffError::Sys {
                    step: "waiting for the handoff ring",
                    err: io::Error::new(e.kind(), e.to_string()),
                }),
                (None, None, None) => Err(HandoffError::Sys {
                    step: Step::Install.name(),
                    err: io::Error::other("no completion"),
                }),
            });
        }
    }

    /// A socket in slot 0 given one TCP option by command, then emptied:
    /// IORING_OP_URING_CMD exists since 5.19 but its setsockopt since 6.7.
    fn check_setsockopt(&mut self) -> std::result::Result<(), UringUnavailable> {
        let dest = DestinationSlot::try_from_slot_target(0).expect("slot 0");
        let entries = [
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(dest))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(0),
            set_tcp(Fixed(0), libc::TCP_NODELAY, &REPAIR_ON).user_data(1),
        ];
        let mut results = [None; 2];
        {
            let mut sq = self.ring.submission();
            for e in &entries {
                // SAFETY: the option value is a static.
                unsafe { sq.push(e) }.expect("an empty ring");
            }
        }
        let mut seen = 0;
        while seen < 2 {
            match self.ring.submit_and_wait(2 - seen) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => {
                    return Err(UringUnavailable::Setup {
                        err,
                        why: "submitting",
                    })
                }
            }
            for cqe in self.ring.completion() {
                results[cqe.user_data() as usize & 1] = Some(cqe.result());
                seen += 1;
            }
        }
        let _ = self
            .ring
            .submitter()
            .register_files_update(0, &self.empty[..1]);
        match results {
            [Some(r), _] if r < 0 => Err(UringUnavailable::Opcode(
                "IORING_OP_SOCKET into a fixed slot (Linux 5.19)",
            )),
            [_, Some(r)] if r < 0 => Err(UringUnavailable::SetSockOpt(
                io::Error::from_raw_os_error(-r),
            )),
            _ => Ok(()),
        }
    }
}

/// io_uring_setup's error, explained with kernel.io_uring_disabled.
fn setup_error(err: io::Error) -> UringUnavailable {
    let sysctl = |name: &str| -> Option<i64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (err.raw_os_error(), sysctl("io_uring_disabled")) {
        (Some(libc::EPERM), Some(2)) => UringUnavailable::Disabled,
        (Some(libc::EPERM), Some(1)) => UringUnavailable::GroupOnly {
            gid: sysctl("io_uring_group").unwrap_or(-1),
        },
        (Some(libc::EPERM), _) => UringUnavailable::Setup {
            err,
            why: "refused although kernel.io_uring_disabled allows it: a seccomp filter or LSM",
        },
        (Some(libc::ENOSYS), _) => UringUnavailable::Setup {
            err,
            why: "no io_uring in this kernel, or a seccomp filter hides it",
        },
        _ => UringUnavailable::Setup {
            err,
            why: "see io_uring_setup(2)",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_user_data_and_keep_the_sync_names() {
        for (k, s) in Step::ALL.iter().enumerate() {
            assert_eq!(*s as usize, k);
        }
        assert_eq!(Step::Connect.name(), STEP_CONNECT);
        let e = HandoffError::Sys {
            step: Step::Connect.name(),
            err: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        };
        assert_eq!(e.reason(), "duplicate");
    }

    #[test]
    fn a_chain_links_all_but_its_last_entry() {
        let flow = Flow {
            client: "198.18.0.2:40000".parse().unwrap(),
            service: "198.18.0.1:80".parse().unwrap(),
            client_isn: 1,
            cookie: 2,
            mss: 1460,
            client_wscale: Some(7),
            sack: true,
            timestamps: true,
            client_tsval: 3,
            synack_tsval: 4,
            client_window: 502,
            probe: false,
        };
        let mut b = Buffers::new(&flow, 7, 65483);
        b.aim();
        let c = chain(&flow, &b, 3, 99);
        assert_eq!(c.len(), CHAIN_MAX as usize);
        let steps: Vec<Step> = c.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, Step::ALL);
        let no_ts = Flow {
            timestamps: false,
            ..flow
        };
        let b = Buffers::new(&no_ts, 7, 65483);
        assert!(chain(&no_ts, &b, 0, 99)
            .iter()
            .all(|(s, _)| *s != Step::Timestamp));
        assert_eq!(b.window.snd_wnd, 502 << 7);
    }
}
