//! The XDP responder: the embedded eBPF object, its maps, keys and
//! attachment. Only the product program is loaded; the harness programs
//! the tests and the bench use live in their own object (`ackgate-lab`).

pub mod counters;
pub mod ring;
pub mod secret;

use std::{fmt, net::SocketAddr};

use ackgate_common::wire::{
    Addresses, Config, KeySlot, RecentKey, RecentSynAck, COUNTERS, FLAG_HANDOFF, KEY_SLOTS,
    MAP_ADDRS, MAP_CONFIG, MAP_COUNTERS, MAP_HANDOFF, MAP_KEYS, MAP_PORTS, MAP_RECENT,
    PROG_RESPONDER, SERVER_FIRST_SHIFT, V6_PORT_BIT,
};
use aya::{
    maps::{Array, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError,
};
use thiserror::Error;

pub use self::counters::Counters;
use self::secret::Secret;
use crate::sys::clock::cookie_clock_ms;

/// The XDP object built by build.rs from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ackgate-xdp"));

/// How the program is attached. `Native` needs driver support; `Skb` works
/// on any device at a higher cost. There is no silent fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl AttachMode {
    pub fn aya(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

impl AttachMode {
    /// As the command line and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
}

type Result<T> = std::result::Result<T, ResponderError>;

/// A loaded (verified) responder program and its maps. Dropping it detaches
/// the program: the attachment is a bpf_link owned by this process, so a
/// crash also hands traffic back to the kernel instead of black-holing it.
pub struct Responder {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode)>,
    /// What userspace last wrote to `CONFIG`.
    config: Config,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ResponderError {
    move |source| ResponderError::Map { name, err: source }
}

pub fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
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
        let bit = match ring::words(addr.ip()) {
            ([w, ..], 4) => slot_for(&mut a.v4, &mut a.n4, w, "IPv4")?,
            (w, _) => V6_PORT_BIT + slot_for(&mut a.v6, &mut a.n6, w, "IPv6")?,
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
            self.write_config()?;
        }
        let mut keys: Array<_, KeySlot> =
            Array::try_from(self.map_mut(MAP_KEYS)?).map_err(map_err(MAP_KEYS))?;
        keys.set(epoch.wrapping_add(2) % KEY_SLOTS, KeySlot::default(), 0)
            .map_err(map_err(MAP_KEYS))?;
        Ok(())
    }

    /// Turns the ACK path on or off: on, ACKs for flows the kernel has no
    /// socket for must carry a valid cookie, and valid ones become `Handoff`
    /// events in the ring (see [`ring`]) instead of reaching the kernel.
    pub fn set_handoff(&mut self, on: bool) -> Result<()> {
        if on {
            self.config.flags |= FLAG_HANDOFF;
        } else {
            self.config.flags &= !FLAG_HANDOFF;
        }
        self.write_config()
    }

    /// The handoff ring, left in place (for a consumer that polls it).
    pub fn handoff_ring(&mut self) -> Result<RingBuf<&mut aya::maps::MapData>> {
        RingBuf::try_from(self.map_mut(MAP_HANDOFF)?).map_err(map_err(MAP_HANDOFF))
    }

    /// Takes the handoff ring buffer out (for an async consumer that polls
    /// its fd); [`Responder::handoff_ring`] cannot be used afterwards.
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
        let mac = crate::sys::netdev::mac(iface).map_err(|err| ResponderError::Interface {
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

    /// The loaded responder program (for BPF_PROG_TEST_RUN in tests and
    /// benchmarks).
    pub fn program(&self) -> Result<&Xdp> {
        let name = PROG_RESPONDER;
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

pub fn attach_named(ebpf: &mut Ebpf, prog: &str, iface: &str, mode: AttachMode) -> Result<()> {
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
