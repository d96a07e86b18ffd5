//! The XDP responder: the embedded eBPF object, its maps, keys and
//! attachment. Only the product program is loaded; the harness programs
//! the tests and the bench use live in their own object (`ackgate-lab`).

pub mod acl;
pub mod counters;
pub mod ring;
pub mod secret;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
};

use ackgate_common::wire::{
    AclKey4, AclKey6, Addresses, Config, Iface, KeySlot, RecentKey, RecentSynAck, SvcAclKey4,
    SvcAclKey6, COUNTERS, FLAG_ACL_GLOBAL, FLAG_ACL_SERVICE, FLAG_HANDOFF, KEY_SLOTS, MAP_ACL4,
    MAP_ACL6, MAP_ADDRS, MAP_CONFIG, MAP_COUNTERS, MAP_HANDOFF, MAP_KEYS, MAP_PORTS, MAP_RECENT,
    MAP_SVC_ACL4, MAP_SVC_ACL6, MAX_ADDRS_V4, MAX_ADDRS_V6, MAX_IFACES, PROG_RESPONDER,
    SERVER_FIRST_SHIFT, V6_PORT_BIT,
};
use aya::{
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::FdLink,
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, Pod,
};
use thiserror::Error;

pub use self::acl::{AccessList, AclError, Cidr, CidrError};
pub use self::counters::Counters;
use self::{
    acl::{Tables, Trie},
    secret::Secret,
};
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
    #[error("cannot protect {0}: the address must be a unicast address and the port non-zero")]
    Unprotectable(SocketAddr),
    #[error("already attached to {0}")]
    AlreadyAttached(String),
    #[error("attached to {max} interfaces already, the most one responder serves")]
    TooManyInterfaces { max: usize },
    #[error("access lists: {0}")]
    Acl(#[from] AclError),
    #[error("taking over the XDP link on {iface}: {err}")]
    Takeover { iface: String, err: std::io::Error },
    #[error("not an XDP link: {0}")]
    Link(aya::programs::links::LinkError),
    #[error("BPF map {name}: {err}")]
    Map { name: &'static str, err: MapError },
}

type Result<T> = std::result::Result<T, ResponderError>;

/// A loaded (verified) responder program and its maps. Dropping it detaches
/// the program: the attachment is a bpf_link owned by this process, so a
/// crash also hands traffic back to the kernel instead of black-holing it.
pub struct Responder {
    ebpf: Ebpf,
    attached: Vec<(String, AttachMode)>,
    /// The bpf_links this process attached (one per interface, in
    /// `attached`'s order); moved to `pinned` while an upgrade is offered.
    links: Vec<XdpLinkId>,
    /// Links offered to a new instance (an upgrade), held outside the
    /// program until it confirms or fails.
    offered: Vec<FdLink>,
    /// Links taken over from an old instance.
    held: Vec<std::os::fd::OwnedFd>,
    /// What userspace last wrote to `CONFIG`.
    config: Config,
    /// The protected services `ADDRS` and `PORTS` hold (this process is
    /// their only writer), and whether each speaks first.
    services: BTreeMap<SocketAddr, bool>,
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
            attached: Vec::new(),
            links: Vec::new(),
            offered: Vec::new(),
            held: Vec::new(),
            config: Config::default(),
            services: BTreeMap::new(),
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

    /// Protects `addr` (IPv4 or IPv6, port > 0) in addition to the services
    /// already protected. Up to 16 addresses per family, any number of
    /// ports each.
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
        let mut all: Vec<(SocketAddr, bool)> = self.services().collect();
        all.push((addr, server_first));
        self.set_services(&all)
    }

    /// The protected services, and whether each speaks first.
    pub fn services(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.services.iter().map(|(a, f)| (*a, *f))
    }

    /// Makes `services` (address:port, server first) the protected set, in
    /// place, while the program runs (a reload): an address that stays keeps
    /// its slot in `ADDRS`, a new one takes a free slot, a removed one is
    /// cleared. Port bits are added before the addresses change and removed
    /// after, so a service in both sets is protected at every instant, and
    /// a new address never inherits a removed one's ports. A service listed
    /// twice speaks first if either says so. More addresses than the slots
    /// is an error that leaves the old set in force.
    pub fn set_services(&mut self, services: &[(SocketAddr, bool)]) -> Result<()> {
        let want = service_set(services)?;
        self.replace_services(want)
    }

    fn replace_services(&mut self, want: BTreeMap<SocketAddr, bool>) -> Result<()> {
        let ips: BTreeSet<IpAddr> = want.keys().map(|a| a.ip()).collect();
        // New addresses take slots that were free before this update; if
        // the only free ones are those removed addresses leave, a first pass
        // removes those (and adds what fits), a second adds the rest.
        let cur = self.addresses()?;
        let (slots, all_placed) = place(&cur, &ips);
        if !all_placed {
            let placed: BTreeMap<SocketAddr, bool> = want
                .iter()
                .filter(|(a, _)| slot_of(&slots, a.ip()).is_some())
                .map(|(a, f)| (*a, *f))
                .collect();
            self.apply_services(&cur, &slots, placed)?;
            let cur = slots;
            let (slots, all_placed) = place(&cur, &ips);
            debug_assert!(all_placed, "every slot a removed address held is free");
            return self.apply_services(&cur, &slots, want);
        }
        self.apply_services(&cur, &slots, want)
    }

    /// `ADDRS` as the program sees it.
    fn addresses(&self) -> Result<Addresses> {
        let am: Array<_, Addresses> =
            Array::try_from(self.map(MAP_ADDRS)?).map_err(map_err(MAP_ADDRS))?;
        am.get(&0, 0).map_err(map_err(MAP_ADDRS))
    }

    /// From `cur` to `next` slots and from `self.services` to `want` (whose
    /// addresses all have a slot in `next`): port bits added, the address
    /// slots written, port bits removed.
    fn apply_services(
        &mut self,
        cur: &Addresses,
        next: &Addresses,
        want: BTreeMap<SocketAddr, bool>,
    ) -> Result<()> {
        let old = port_bits(cur, &self.services);
        let new = port_bits(next, &want);
        let ports: BTreeSet<u16> = old.keys().chain(new.keys()).copied().collect();
        let bits = |m: &BTreeMap<u16, u64>, p: u16| m.get(&p).copied().unwrap_or(0);
        {
            let mut pm: Array<_, u64> =
                Array::try_from(self.map_mut(MAP_PORTS)?).map_err(map_err(MAP_PORTS))?;
            for &p in &ports {
                let (o, n) = (bits(&old, p), bits(&new, p));
                if o | n != o {
                    pm.set(p as u32, o | n, 0).map_err(map_err(MAP_PORTS))?;
                }
            }
        }
        if next != cur {
            let mut am: Array<_, Addresses> =
                Array::try_from(self.map_mut(MAP_ADDRS)?).map_err(map_err(MAP_ADDRS))?;
            am.set(0, *next, 0).map_err(map_err(MAP_ADDRS))?;
        }
        {
            let mut pm: Array<_, u64> =
                Array::try_from(self.map_mut(MAP_PORTS)?).map_err(map_err(MAP_PORTS))?;
            for &p in &ports {
                let (o, n) = (bits(&old, p), bits(&new, p));
                if o | n != n {
                    pm.set(p as u32, n, 0).map_err(map_err(MAP_PORTS))?;
                }
            }
        }
        self.services = want;
        Ok(())
    }

    /// Installs access lists in place of the ones installed, while the
    /// program runs: `global` for every SYN, then each `(address:port,
    /// list)` for SYNs to that protected service (a service with several
    /// addresses or ports is listed once per address:port; a list's entries
    /// of the other family than the address are ignored). Semantics in
    /// [`acl`]. New and changed entries are written first (longest prefix
    /// first) and a list's lookups turned on once it is complete; lookups
    /// of a list that becomes empty are turned off, then stale entries
    /// deleted (shortest first): a source whose verdict the new lists do
    /// not change is never refused or let in in between. Empty lists cost
    /// the SYN path no lookup. Entries for an address:port that is not
    /// protected (yet) are inert.
    ///
    /// For a reload that also changes services, [`Responder::reconfigure`]
    /// orders both so that no service is ever protected without its list.
    pub fn set_acl(
        &mut self,
        global: &AccessList,
        per_service: &[(SocketAddr, &AccessList)],
    ) -> Result<()> {
        let t = Tables::build(global, per_service)?;
        self.acl_insert(&t)?;
        self.acl_prune(&t)
    }

    /// A reload's XDP side: the services and access lists of a new
    /// configuration, in place. Entries of the new lists are written and
    /// their lookups turned on before the new services are protected;
    /// services are replaced as [`Responder::set_services`] does; then the
    /// lookups of lists that became empty are turned off and stale entries
    /// deleted. A service present before and after is protected throughout,
    /// and never without its list. Invalid lists or too many addresses are
    /// refused before anything changes.
    pub fn reconfigure(
        &mut self,
        services: &[(SocketAddr, bool)],
        global: &AccessList,
        per_service: &[(SocketAddr, &AccessList)],
    ) -> Result<()> {
        let t = Tables::build(global, per_service)?;
        let want = service_set(services)?;
        self.acl_insert(&t)?;
        self.replace_services(want)?;
        self.acl_prune(&t)
    }

    fn trie<K: Pod + Ord>(&mut self, name: &'static str) -> Result<Trie<&mut MapData, K>> {
        let map = LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        Ok(Trie { map })
    }

    fn installed<K: Pod + Ord>(&self, name: &'static str) -> Result<usize> {
        let map = LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        let t: Trie<&MapData, K> = Trie { map };
        Ok(t.installed().map_err(map_err(name))?.len())
    }

    /// Writes new and changed entries, then turns on the lookups of the
    /// lists that have entries.
    fn acl_insert(&mut self, t: &Tables) -> Result<()> {
        self.trie(MAP_ACL4)?
            .insert(&t.global4)
            .map_err(map_err(MAP_ACL4))?;
        self.trie(MAP_ACL6)?
            .insert(&t.global6)
            .map_err(map_err(MAP_ACL6))?;
        self.trie(MAP_SVC_ACL4)?
            .insert(&t.service4)
            .map_err(map_err(MAP_SVC_ACL4))?;
        self.trie(MAP_SVC_ACL6)?
            .insert(&t.service6)
            .map_err(map_err(MAP_SVC_ACL6))?;
        let on = acl_flags(t);
        if self.config.flags & on != on {
            self.config.flags |= on;
            self.write_config()?;
        }
        Ok(())
    }

    /// Turns off the lookups of the lists that are empty, then deletes the
    /// stale entries.
    fn acl_prune(&mut self, t: &Tables) -> Result<()> {
        let off = (FLAG_ACL_GLOBAL | FLAG_ACL_SERVICE) & !acl_flags(t);
        if self.config.flags & off != 0 {
            self.config.flags &= !off;
            self.write_config()?;
        }
        self.trie(MAP_ACL4)?
            .prune(&t.global4)
            .map_err(map_err(MAP_ACL4))?;
        self.trie(MAP_ACL6)?
            .prune(&t.global6)
            .map_err(map_err(MAP_ACL6))?;
        self.trie(MAP_SVC_ACL4)?
            .prune(&t.service4)
            .map_err(map_err(MAP_SVC_ACL4))?;
        self.trie(MAP_SVC_ACL6)?
            .prune(&t.service6)
            .map_err(map_err(MAP_SVC_ACL6))
    }

    /// Entries in the access-list maps, as (global, per service), default
    /// denies included.
    pub fn acl_rules(&self) -> Result<(usize, usize)> {
        let global = self.installed::<AclKey4>(MAP_ACL4)? + self.installed::<AclKey6>(MAP_ACL6)?;
        let service = self.installed::<SvcAclKey4>(MAP_SVC_ACL4)?
            + self.installed::<SvcAclKey6>(MAP_SVC_ACL6)?;
        Ok((global, service))
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
                ..self.config
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

    /// The MAC frames must be addressed to for ackgate to answer them, on
    /// every interface, in place of the attached interfaces' own (`attach`
    /// sets those); all zero checks nothing. For test harnesses.
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let n = usize::from(mac != [0; 6]);
        self.config.ifaces = [Iface::default(); MAX_IFACES];
        self.config.ifaces[0] = Iface::new(0, mac);
        self.config.n_ifaces = n as u32;
        self.write_config()
    }

    /// Attaches to `iface` (in the calling thread's network namespace), and
    /// answers only frames to its MAC on it from then on. Call it once per
    /// interface to protect several (up to 8): one program and one set of
    /// maps serve them all, each interface checked against its own MAC.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        if self.attached.iter().any(|(n, _)| n == iface) {
            return Err(ResponderError::AlreadyAttached(iface.to_string()));
        }
        let (ifindex, mac) = interface(iface)?;
        let before = self.config;
        // Its MAC is in place before the first frame on it: a MAC set for
        // every interface (`set_mac`) gives way to the interfaces' own.
        let mut ifaces: Vec<Iface> = self.config.ifaces[..self.config.n_ifaces as usize]
            .iter()
            .filter(|i| i.ifindex != 0 && i.ifindex != ifindex)
            .copied()
            .collect();
        ifaces.push(Iface::new(ifindex, mac));
        if ifaces.len() > MAX_IFACES {
            return Err(ResponderError::TooManyInterfaces { max: MAX_IFACES });
        }
        self.config.ifaces = [Iface::default(); MAX_IFACES];
        self.config.ifaces[..ifaces.len()].copy_from_slice(&ifaces);
        self.config.n_ifaces = ifaces.len() as u32;
        self.write_config()?;
        match attach_named(&mut self.ebpf, PROG_RESPONDER, iface, mode) {
            Ok(id) => self.links.push(id),
            Err(e) => {
                self.config.ifaces = before.ifaces;
                self.config.n_ifaces = before.n_ifaces;
                self.write_config()?;
                return Err(e);
            }
        }
        self.attached.push((iface.to_string(), mode));
        Ok(())
    }

    /// Upgrade, old side: offers this process's links to a new instance
    /// and returns (interface, mode, kernel link id) per link. Traffic is
    /// unaffected: the links stay attached, now held outside the program.
    pub fn offer_links(&mut self) -> Result<Vec<(String, AttachMode, u32)>> {
        let mut out = Vec::new();
        let ids = std::mem::take(&mut self.links);
        let attached = self.attached.clone();
        for ((iface, mode), id) in attached.iter().zip(ids) {
            let link = self
                .program_mut()?
                .take_link(id)
                .map_err(ResponderError::Load)?;
            let fd: FdLink = link.try_into().map_err(ResponderError::Link)?;
            let kernel_id = fd.info().map_err(ResponderError::Link)?.id();
            self.offered.push(fd);
            out.push((iface.clone(), *mode, kernel_id));
        }
        Ok(out)
    }

    /// Upgrade, old side, when the new instance failed: puts this
    /// program back on every offered link (an atomic replace, whatever the
    /// new instance had put there).
    pub fn reclaim_links(&mut self) -> Result<()> {
        for fd in std::mem::take(&mut self.offered) {
            let link = XdpLink::try_from(fd).map_err(ResponderError::Link)?;
            let id = self
                .program_mut()?
                .attach_to_link(link)
                .map_err(ResponderError::Load)?;
            self.links.push(id);
        }
        Ok(())
    }

    /// Upgrade, new side: atomically replaces the program on the link
    /// with kernel id `link_id` (an old instance's, on `iface`) with this
    /// one, so no packet meets the interface without XDP. The link is
    /// held by this process from now on: it detaches when this process
    /// and the old one are both gone.
    pub fn take_over(&mut self, iface: &str, mode: AttachMode, link_id: u32) -> Result<()> {
        let (ifindex, mac) = interface(iface)?;
        let n = self.config.n_ifaces as usize;
        if n == MAX_IFACES {
            return Err(ResponderError::TooManyInterfaces { max: MAX_IFACES });
        }
        let takeover = |err| ResponderError::Takeover {
            iface: iface.to_string(),
            err,
        };
        let link = crate::sys::bpf_link::fd_by_id(link_id).map_err(takeover)?;
        self.config.ifaces[n] = Iface::new(ifindex, mac);
        self.config.n_ifaces += 1;
        self.write_config()?;
        let prog = self.program_mut()?.fd().map_err(ResponderError::Load)?;
        crate::sys::bpf_link::update(link.as_fd(), prog.as_fd()).map_err(takeover)?;
        self.held.push(link);
        self.attached.push((iface.to_string(), mode));
        Ok(())
    }

    fn program_mut(&mut self) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROG_RESPONDER)
            .ok_or_else(|| {
                ResponderError::Load(ProgramError::InvalidName {
                    name: PROG_RESPONDER.into(),
                })
            })?
            .try_into()
            .map_err(ResponderError::Load)
    }

    /// The interfaces attached to, in order, and how.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
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

/// `services` as a set (server first if any entry says so), checked:
/// protectable addresses, within the slots.
fn service_set(services: &[(SocketAddr, bool)]) -> Result<BTreeMap<SocketAddr, bool>> {
    let mut want: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    for &(a, server_first) in services {
        let ip = a.ip();
        let broadcast = matches!(ip, IpAddr::V4(v) if v.is_broadcast());
        if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Err(ResponderError::Unprotectable(a));
        }
        *want.entry(a).or_default() |= server_first;
    }
    let ips: BTreeSet<IpAddr> = want.keys().map(|a| a.ip()).collect();
    let n4 = ips.iter().filter(|a| a.is_ipv4()).count();
    if n4 > MAX_ADDRS_V4 {
        return Err(ResponderError::TooManyAddresses {
            family: "IPv4",
            max: MAX_ADDRS_V4,
        });
    }
    if ips.len() - n4 > MAX_ADDRS_V6 {
        return Err(ResponderError::TooManyAddresses {
            family: "IPv6",
            max: MAX_ADDRS_V6,
        });
    }
    Ok(want)
}

/// The `PORTS` bit index of `ip` in `a`.
fn slot_of(a: &Addresses, ip: IpAddr) -> Option<u32> {
    match ring::words(ip) {
        ([w, ..], 4) => a.v4[..a.n4 as usize]
            .iter()
            .position(|x| *x == w)
            .map(|i| i as u32),
        (w, _) => a.v6[..a.n6 as usize]
            .iter()
            .position(|x| *x == w)
            .map(|i| V6_PORT_BIT + i as u32),
    }
}

/// `PORTS` contents for `services` placed as in `a`.
fn port_bits(a: &Addresses, services: &BTreeMap<SocketAddr, bool>) -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    for (s, server_first) in services {
        let Some(bit) = slot_of(a, s.ip()) else {
            continue;
        };
        let b = out.entry(s.port()).or_insert(0u64);
        *b |= 1 << bit;
        if *server_first {
            *b |= 1 << (SERVER_FIRST_SHIFT + bit);
        }
    }
    out
}

/// The slots for `ips` after `cur`: an address in `cur` keeps its slot, one
/// not in `ips` is cleared (zero: matches no packet; its port bits are
/// cleared too), a new one takes a slot that is free in `cur`. Whether all
/// of `ips` found one.
fn place(cur: &Addresses, ips: &BTreeSet<IpAddr>) -> (Addresses, bool) {
    let mut a = *cur;
    let v4: Vec<u32> = ips.iter().filter_map(|ip| four(*ip)).collect();
    let v6: Vec<[u32; 4]> = ips.iter().filter_map(|ip| six(*ip)).collect();
    let ok4 = place_family(&mut a.v4, &mut a.n4, &v4, 0);
    let ok6 = place_family(&mut a.v6, &mut a.n6, &v6, [0; 4]);
    (a, ok4 && ok6)
}

fn four(ip: IpAddr) -> Option<u32> {
    match ring::words(ip) {
        ([w, ..], 4) => Some(w),
        _ => None,
    }
}

fn six(ip: IpAddr) -> Option<[u32; 4]> {
    match ring::words(ip) {
        (w, 6) => Some(w),
        _ => None,
    }
}

fn place_family<T: PartialEq + Copy>(slots: &mut [T], n: &mut u32, want: &[T], free: T) -> bool {
    let used = *n as usize;
    // Free before this update: past the used ones, or cleared earlier.
    let was_free: Vec<bool> = (0..slots.len())
        .map(|i| i >= used || slots[i] == free)
        .collect();
    for s in slots[..used].iter_mut() {
        if !want.contains(s) {
            *s = free;
        }
    }
    let mut all = true;
    for w in want {
        if slots[..used].contains(w) {
            continue;
        }
        match (0..slots.len()).find(|&i| was_free[i] && slots[i] == free) {
            Some(i) => slots[i] = *w,
            None => all = false,
        }
    }
    *n = slots
        .iter()
        .rposition(|s| *s != free)
        .map_or(0, |i| i as u32 + 1);
    all
}

/// The `Config::flags` bits turning on the lookups `t` needs.
fn acl_flags(t: &Tables) -> u32 {
    let mut f = 0;
    if !t.global4.is_empty() || !t.global6.is_empty() {
        f |= FLAG_ACL_GLOBAL;
    }
    if !t.service4.is_empty() || !t.service6.is_empty() {
        f |= FLAG_ACL_SERVICE;
    }
    f
}

pub fn attach_named(
    ebpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    mode: AttachMode,
) -> Result<XdpLinkId> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(ResponderError::NoInterface(iface.to_string()));
    }
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or_else(|| ResponderError::Load(ProgramError::InvalidName { name: prog.into() }))?
        .try_into()
        .map_err(ResponderError::Load)?;
    p.attach(iface, mode.aya())
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

/// `iface`'s index and MAC: what the program checks frames against.
fn interface(iface: &str) -> Result<(u32, [u8; 6])> {
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .map_err(|_| ResponderError::NoInterface(iface.to_string()))?;
    let mac = crate::sys::netdev::mac(iface).map_err(|err| ResponderError::Interface {
        iface: iface.to_string(),
        err,
    })?;
    Ok((ifindex, mac))
}
