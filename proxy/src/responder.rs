//! The XDP responder: the embedded eBPF object, its maps, attachment and
//! BPF_PROG_TEST_RUN access for tests and benchmarks.

use std::{fmt, net::SocketAddr};

use ackgate_common::wire::{
    Addresses, BenchFrame, Config, Counter, Handoff, KeySlot, RecentKey, RecentSynAck,
    BENCH_FRAME_MAX, COUNTERS, FLAG_HANDOFF, KEY_SLOTS, MAP_ADDRS, MAP_BENCH_FRAME,
    MAP_BENCH_TARGET, MAP_CONFIG, MAP_COUNTERS, MAP_HANDOFF, MAP_KEYS, MAP_PORTS, MAP_RECENT,
    PROG_BENCH, PROG_DROP, PROG_PASS, PROG_RESPONDER, SERVER_FIRST_SHIFT, V6_PORT_BIT,
};
use aya::{
    maps::{Array, MapError, PerCpuArray, ProgramArray, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode},
    Ebpf, EbpfError,
};
use thiserror::Error;

use crate::secret::Secret;

/// The XDP object built by build.rs from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ackgate"));

/// How the program is attached. `Native` needs driver support; `Skb` works
/// on any device at a higher cost. There is no silent fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

/// Default cookie lifetime for clients with timestamps: the default epoch.
pub const DEFAULT_TS_MAX_AGE_MS: u32 = 60_000;

/// SYN-ACK parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// MSS clamp for IPv4 SYN-ACKs (interface MTU - 40 by default).
    pub mss4: u16,
    /// MSS clamp for IPv6 SYN-ACKs (interface MTU - 60 by default).
    pub mss6: u16,
    /// Window scale advertised to clients that offer one.
    pub wscale: u8,
    /// SYN-ACK window. Zero keeps clients from sending data before a
    /// connection exists to receive it; the proxy opens the window.
    pub window: u16,
    /// Cookie lifetime for clients with timestamps: an ACK echoing a TSval
    /// older than this is refused (ackgate uses the epoch length).
    pub ts_max_age_ms: u32,
}

impl Settings {
    /// Defaults for an interface MTU.
    pub fn for_mtu(mtu: u32) -> Self {
        let mtu = mtu.clamp(576, 65535) as u16;
        Settings {
            mss4: mtu - 40,
            mss6: mtu.saturating_sub(60).max(1220),
            wscale: 7,
            window: 0,
            ts_max_age_ms: DEFAULT_TS_MAX_AGE_MS,
        }
    }
}

#[derive(Debug, Error)]
pub enum ResponderError {
    #[error("cannot parse the embedded XDP object: {0}")]
    Object(EbpfError),
    #[error(
        "XDP program rejected by the verifier: {error}\n--- verifier log (last lines) ---\n{log}"
    )]
    Verifier { error: std::io::Error, log: String },
    #[error("loading the XDP program failed: {0}")]
    Load(ProgramError),
    #[error("no such interface: {0}")]
    NoInterface(String),
    #[error("reading the MAC address of {iface}: {err}")]
    Interface { iface: String, err: std::io::Error },
    #[error("attaching XDP to {iface} in {mode} mode failed: {err}{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        err: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("at most {max} protected {family} addresses")]
    TooManyAddresses { family: &'static str, max: usize },
    #[error("BPF map {name}: {err}")]
    Map { name: &'static str, err: MapError },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(ProgramError),
}

type Result<T> = std::result::Result<T, ResponderError>;

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTERS]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Element-wise `self - earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = [0; COUNTERS];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        Counters(d)
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for c in Counter::ALL {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={}", c.name(), self.get(c))?;
        }
        Ok(())
    }
}

/// A loaded (verified) responder program and its maps. Dropping it detaches
/// the program: the attachment is a bpf_link owned by this process, so a
/// crash also hands traffic back to the kernel instead of black-holing it.
pub struct Responder {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode)>,
    /// What userspace last wrote to `CONFIG`.
    config: Config,
}

/// Unix time in milliseconds (wrapping): the clock of SYN-ACK TSvals. A
/// fleet's instances agree on it (NTP), unlike on uptime; each flow adds a
/// secret offset, so TSvals reveal neither.
pub fn cookie_clock_ms() -> u32 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as u32
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ResponderError {
    move |source| ResponderError::Map { name, err: source }
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| {
            ResponderError::Load(ProgramError::InvalidName {
                name: name.to_string(),
            })
        })?
        .try_into()
        .map_err(ResponderError::Load)?;
    prog.load().map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The verdict is at the end of the log; the whole log can run to
            // megabytes.
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            ResponderError::Verifier {
                error: io_error,
                log: tail,
            }
        }
        e => ResponderError::Load(e),
    })
}

impl Responder {
    /// Loads the object and the responder program (the verifier runs here).
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(ResponderError::Object)?;
        load_program(&mut ebpf, PROG_RESPONDER)?;
        load_program(&mut ebpf, PROG_DROP)?;
        load_program(&mut ebpf, PROG_BENCH)?;
        Ok(Responder {
            ebpf,
            attached: None,
            config: Config::default(),
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or(ResponderError::Map {
            name,
            err: MapError::InvalidName { name: name.into() },
        })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(ResponderError::Map {
            name,
            err: MapError::InvalidName { name: name.into() },
        })
    }

    /// Protects `addr` (IPv4 or IPv6, port > 0). Up to 16 addresses per
    /// family, any number of ports each.
    pub fn add_service(&mut self, addr: SocketAddr) -> Result<()> {
        self.add_service_with(addr, false)
    }

    /// [`Responder::add_service`] for a service whose server speaks first
    /// (SSH, SMTP): XDP also remembers its SYN-ACKs in `RECENT`, for
    /// [`crate::retransmit`].
    pub fn add_server_first_service(&mut self, addr: SocketAddr) -> Result<()> {
        self.add_service_with(addr, true)
    }

    fn add_service_with(&mut self, addr: SocketAddr, server_first: bool) -> Result<()> {
        let am: Array<_, Addresses> =
            Array::try_from(self.map_mut(MAP_ADDRS)?).map_err(map_err(MAP_ADDRS))?;
        let mut a = am.get(&0, 0).map_err(map_err(MAP_ADDRS))?;
        let bit = match addr {
            SocketAddr::V4(v) => {
                let w = u32::from_ne_bytes(v.ip().octets());
                slot_for(&mut a.v4, &mut a.n4, w, "IPv4")?
            }
            SocketAddr::V6(v) => {
                let o = v.ip().octets();
                let w =
                    [0, 4, 8, 12].map(|k| u32::from_ne_bytes([o[k], o[k + 1], o[k + 2], o[k + 3]]));
                V6_PORT_BIT + slot_for(&mut a.v6, &mut a.n6, w, "IPv6")?
            }
        };
        // Port bit first, then the address that makes it reachable.
        {
            let mut pm: Array<_, u64> =
                Array::try_from(self.map_mut(MAP_PORTS)?).map_err(map_err(MAP_PORTS))?;
            let mut bits = pm
                .get(&(addr.port() as u32), 0)
                .map_err(map_err(MAP_PORTS))?
                | (1 << bit);
            if server_first {
                bits |= 1 << (SERVER_FIRST_SHIFT + bit);
            }
            pm.set(addr.port() as u32, bits, 0)
                .map_err(map_err(MAP_PORTS))?;
        }
        let mut am: Array<_, Addresses> =
            Array::try_from(self.map_mut(MAP_ADDRS)?).map_err(map_err(MAP_ADDRS))?;
        am.set(0, a, 0).map_err(map_err(MAP_ADDRS))?;
        Ok(())
    }

    /// Writes the key slots for `epoch - 1 ..= epoch + 1`, makes `epoch` the
    /// minting epoch, then retires `epoch - 2`. Safe to call on every tick:
    /// slots in use are rewritten with identical bytes, and the only slot that
    /// changes content was invalid, so a concurrent reader at worst rejects.
    pub fn install_keys(&mut self, secret: &Secret, epoch: u32, settings: &Settings) -> Result<()> {
        {
            let mut keys: Array<_, KeySlot> =
                Array::try_from(self.map_mut(MAP_KEYS)?).map_err(map_err(MAP_KEYS))?;
            for e in [epoch.wrapping_add(1), epoch, epoch.wrapping_sub(1)] {
                let k = secret.key(e);
                let slot = KeySlot {
                    k0: k.k0,
                    k1: k.k1,
                    epoch: e,
                    valid: 1,
                };
                keys.set(e % KEY_SLOTS, slot, 0)
                    .map_err(map_err(MAP_KEYS))?;
            }
        }
        {
            self.config = Config {
                epoch,
                mss4: settings.mss4,
                mss6: settings.mss6,
                wscale: settings.wscale,
                ready: 1,
                window: settings.window,
                clock_ms: cookie_clock_ms(),
                flags: self.config.flags,
                ts_max_age_ms: settings.ts_max_age_ms,
                mac: self.config.mac,
                _pad: [0; 2],
            };
            let c = self.config;
            let mut cfg: Array<_, Config> =
                Array::try_from(self.map_mut(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
            cfg.set(0, c, 0).map_err(map_err(MAP_CONFIG))?;
        }
        let mut keys: Array<_, KeySlot> =
            Array::try_from(self.map_mut(MAP_KEYS)?).map_err(map_err(MAP_KEYS))?;
        keys.set(epoch.wrapping_add(2) % KEY_SLOTS, KeySlot::default(), 0)
            .map_err(map_err(MAP_KEYS))?;
        Ok(())
    }

    /// Turns the ACK path on or off: on, ACKs for flows the kernel has no
    /// socket for must carry a valid cookie, and valid ones become `Handoff`
    /// events (see [`Responder::drain_handoffs`]) instead of reaching the
    /// kernel.
    pub fn set_handoff(&mut self, on: bool) -> Result<()> {
        if on {
            self.config.flags |= FLAG_HANDOFF;
        } else {
            self.config.flags &= !FLAG_HANDOFF;
        }
        let c = self.config;
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        cfg.set(0, c, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Takes the handoff ring buffer out (for an async consumer that polls
    /// its fd); [`Responder::drain_handoffs`] cannot be used afterwards.
    pub fn take_handoff_ring(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let m = self.ebpf.take_map(MAP_HANDOFF).ok_or(ResponderError::Map {
            name: MAP_HANDOFF,
            err: MapError::InvalidName {
                name: MAP_HANDOFF.into(),
            },
        })?;
        RingBuf::try_from(m).map_err(map_err(MAP_HANDOFF))
    }

    /// Takes the map of recent server-first SYN-ACKs out (for
    /// [`crate::retransmit::Retransmitter`]).
    pub fn take_recent(
        &mut self,
    ) -> Result<aya::maps::HashMap<aya::maps::MapData, RecentKey, RecentSynAck>> {
        let m = self.ebpf.take_map(MAP_RECENT).ok_or(ResponderError::Map {
            name: MAP_RECENT,
            err: MapError::InvalidName {
                name: MAP_RECENT.into(),
            },
        })?;
        aya::maps::HashMap::try_from(m).map_err(map_err(MAP_RECENT))
    }

    /// Takes every handoff event waiting in the ring buffer.
    pub fn drain_handoffs(&mut self) -> Result<Vec<Handoff>> {
        let mut ring: RingBuf<_> =
            RingBuf::try_from(self.map_mut(MAP_HANDOFF)?).map_err(map_err(MAP_HANDOFF))?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<Handoff>() {
                // SAFETY: the program writes whole `Handoff` records (plain
                // integers, valid for any bits); read unaligned to be safe.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Handoff>()) });
            }
        }
        Ok(out)
    }

    /// Refreshes the millisecond clock the SYN-ACK TSvals carry; call it
    /// every tick (ackgate does, every 100 ms).
    pub fn tick_clock(&mut self) -> Result<()> {
        self.config.clock_ms = cookie_clock_ms();
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        let c = self.config;
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        cfg.set(0, c, 0).map_err(map_err(MAP_CONFIG))
    }

    /// The MAC frames must be addressed to for ackgate to answer them
    /// (`attach` sets the interface's own); all zero checks nothing.
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        self.config.mac = mac;
        self.write_config()
    }

    /// Attaches to `iface` (in the calling thread's network namespace), and
    /// answers only frames to its MAC from then on.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let mac = crate::netdev::mac(iface).map_err(|err| ResponderError::Interface {
            iface: iface.to_string(),
            err,
        })?;
        self.set_mac(mac)?;
        attach_named(&mut self.ebpf, PROG_RESPONDER, iface, mode)?;
        self.attached = Some((iface.to_string(), mode));
        Ok(())
    }

    pub fn attached(&self) -> Option<&(String, AttachMode)> {
        self.attached.as_ref()
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(MAP_COUNTERS)?).map_err(map_err(MAP_COUNTERS))?;
        let mut out = [0u64; COUNTERS];
        for (i, v) in out.iter_mut().enumerate() {
            *v = m
                .get(&(i as u32), 0)
                .map_err(map_err(MAP_COUNTERS))?
                .iter()
                .sum();
        }
        Ok(Counters(out))
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN); the output frame
    /// is written to `out`.
    pub fn test_run(&self, frame: &[u8], out: &mut [u8]) -> Result<TestRunResult> {
        let prog: &Xdp = self.program(PROG_RESPONDER)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ..Default::default()
        };
        prog.test_run(opts).map_err(ResponderError::TestRun)
    }

    /// Times `repeat` runs of the responder (or, with `baseline`, of the
    /// XDP_DROP program) on `frame`, in BPF_PROG_TEST_RUN's in-kernel loop.
    /// Each run goes through the `ackgate_bench` harness, which restores the
    /// frame first: the responder rewrites its input, and must see a fresh
    /// SYN every time. Returns the kernel's mean duration per run (harness
    /// included; subtract a baseline run).
    pub fn bench_run(
        &mut self,
        baseline: bool,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunResult> {
        if frame.len() > BENCH_FRAME_MAX || frame.len() < 14 {
            return Err(ResponderError::TestRun(ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "bench frame",
                    io_error: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "frame must be 14..=124 bytes",
                    ),
                },
            )));
        }
        let mut t = BenchFrame {
            len: frame.len() as u32,
            bytes: [0; BENCH_FRAME_MAX],
        };
        t.bytes[..frame.len()].copy_from_slice(frame);
        let mut fm: Array<_, BenchFrame> =
            Array::try_from(self.map_mut(MAP_BENCH_FRAME)?).map_err(map_err(MAP_BENCH_FRAME))?;
        fm.set(0, t, 0).map_err(map_err(MAP_BENCH_FRAME))?;
        let target = self.program(if baseline { PROG_DROP } else { PROG_RESPONDER })?;
        let fd = target
            .fd()
            .map_err(ResponderError::Load)?
            .try_clone()
            .map_err(|e| {
                ResponderError::TestRun(ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error: e,
                }))
            })?;
        let mut pa: ProgramArray<_> = ProgramArray::try_from(self.map_mut(MAP_BENCH_TARGET)?)
            .map_err(map_err(MAP_BENCH_TARGET))?;
        pa.set(0, &fd, 0).map_err(map_err(MAP_BENCH_TARGET))?;
        let harness = self.program(PROG_BENCH)?;
        let mut out = [0u8; 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        harness.test_run(opts).map_err(ResponderError::TestRun)
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| ResponderError::Load(ProgramError::InvalidName { name: name.into() }))?
            .try_into()
            .map_err(ResponderError::Load)
    }
}

/// The slot holding `w` among the `n` used ones, or a new one after them.
fn slot_for<T: PartialEq + Copy>(
    slots: &mut [T],
    n: &mut u32,
    w: T,
    family: &'static str,
) -> Result<u32> {
    let used = *n as usize;
    let i = slots[..used].iter().position(|x| *x == w).unwrap_or(used);
    if i == slots.len() {
        return Err(ResponderError::TooManyAddresses {
            family,
            max: slots.len(),
        });
    }
    slots[i] = w;
    *n = (*n).max(i as u32 + 1);
    Ok(i as u32)
}

fn attach_named(ebpf: &mut Ebpf, prog: &str, iface: &str, mode: AttachMode) -> Result<()> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(ResponderError::NoInterface(iface.to_string()));
    }
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or_else(|| ResponderError::Load(ProgramError::InvalidName { name: prog.into() }))?
        .try_into()
        .map_err(ResponderError::Load)?;
    p.attach(iface, mode.aya())
        .map(|_| ())
        .map_err(|source| ResponderError::Attach {
            iface: iface.to_string(),
            mode,
            err: Box::new(source),
            hint: match mode {
                AttachMode::Native => " (the driver may lack native XDP: try --xdp-mode skb)",
                AttachMode::Skb => "",
            },
        })
}

/// The pass-through program attached to the far end of a veth: veth only
/// delivers `XDP_TX` frames to a peer that runs XDP itself.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(iface: &str) -> Result<Self> {
        Self::attach_program(PROG_PASS, iface)
    }

    /// The `XDP_DROP` program instead: a sink that costs the receiver as
    /// little as anything can (the bench's generator ceiling).
    pub fn attach_drop(iface: &str) -> Result<Self> {
        Self::attach_program(PROG_DROP, iface)
    }

    fn attach_program(name: &str, iface: &str) -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(ResponderError::Object)?;
        load_program(&mut ebpf, name)?;
        attach_named(&mut ebpf, name, iface, AttachMode::Native)?;
        Ok(PassProgram { _ebpf: ebpf })
    }
}
