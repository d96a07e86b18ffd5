//! The harness XDP programs (their own object, never loaded by the product)
//! and BPF_PROG_TEST_RUN access to a loaded responder.
//!
//! * pass: on the far end of a veth, because veth delivers `XDP_TX` frames
//!   only to a peer that runs XDP itself;
//! * drop: the cheapest possible sink (the bench's generator ceiling);
//! * bench: restores a frame before each run of a target program, so the
//!   responder (which rewrites its input) sees a fresh SYN every time;
//! * count: a sink that counts what it drops; absorb: one that drops and
//!   counts only the answers to spoofed flood sources;
//! * gen: the flood generator, run by BPF_PROG_RUN in live-frame mode;
//! * floor: the minimal SipHash SYN-ACK responder the bench compares with.

use ackgate::xdp::{attach_named, load_program, ring, AttachMode, Responder, ResponderError};
use ackgate_common::wire::{
    BenchFrame, Handoff, BENCH_FRAME_MAX, MAP_BENCH_FRAME, MAP_BENCH_TARGET, MAP_COUNT,
    MAP_FLOOR_KEY, MAP_GEN_FRAME, PROG_ABSORB, PROG_BENCH, PROG_COUNT, PROG_DROP, PROG_FLOOR,
    PROG_GEN, PROG_PASS,
};
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};

/// The harness object built beside the product's (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ACKGATE_HARNESS_OBJECT"));

/// The harness object with `programs` loaded (verified).
fn load(programs: &[&str]) -> Result<Ebpf, ResponderError> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(ResponderError::Object)?;
    for p in programs {
        load_program(&mut ebpf, p)?;
    }
    Ok(ebpf)
}

/// A harness program attached to an interface until dropped.
pub struct Attached {
    ebpf: Ebpf,
}

impl Attached {
    /// XDP_PASS: lets a veth end receive the peer's `XDP_TX` frames.
    pub fn pass(iface: &str) -> Result<Self, ResponderError> {
        Self::program(PROG_PASS, iface)
    }

    /// XDP_DROP: a sink that costs the receiver as little as anything can.
    pub fn drop_all(iface: &str) -> Result<Self, ResponderError> {
        Self::program(PROG_DROP, iface)
    }

    /// XDP_DROP that counts: see [`Attached::count`].
    pub fn counting(iface: &str) -> Result<Self, ResponderError> {
        Self::program(PROG_COUNT, iface)
    }

    /// Counts and drops the answers to a flood's spoofed sources
    /// (10.99.0.0/16, fd00:99::/64), passes the rest: see [`Attached::count`].
    pub fn absorb(iface: &str) -> Result<Self, ResponderError> {
        Self::program(PROG_ABSORB, iface)
    }

    /// The floor responder, hashing with `key`.
    pub fn floor(iface: &str, key: [u64; 2]) -> Result<Self> {
        let mut ebpf = load(&[PROG_FLOOR])?;
        let mut k: Array<_, [u64; 2]> =
            Array::try_from(ebpf.map_mut(MAP_FLOOR_KEY).context(MAP_FLOOR_KEY)?)?;
        k.set(0, key, 0)?;
        let _link = attach_named(&mut ebpf, PROG_FLOOR, iface, AttachMode::Native)?;
        Ok(Attached { ebpf })
    }

    fn program(name: &str, iface: &str) -> Result<Self, ResponderError> {
        let mut ebpf = load(&[name])?;
        let _link = attach_named(&mut ebpf, name, iface, AttachMode::Native)?;
        Ok(Attached { ebpf })
    }

    /// Frames a counting sink has dropped so far, all CPUs.
    pub fn count(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_COUNT).context("not a counting sink")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// The flood generator: an XDP program BPF_PROG_RUN runs in live-frame
/// mode, each run a fresh SYN from the template (next source, port and
/// sequence number) transmitted out of the interface named.
pub struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

/// Frames per BPF_PROG_RUN batch in live mode (the kernel's most is 256).
const GEN_BATCH: u32 = 256;

impl Generator {
    /// Loads the generator with `template`, a SYN of 74..=124 bytes
    /// (Ethernet + IPv4 or IPv6 + TCP, checksums correct).
    pub fn load(template: &[u8]) -> Result<Self> {
        if !(74..=BENCH_FRAME_MAX).contains(&template.len()) {
            bail!("a generator template must be 74..={BENCH_FRAME_MAX} bytes");
        }
        let mut ebpf = load(&[PROG_GEN])?;
        let mut t = BenchFrame {
            len: template.len() as u32,
            bytes: [0; BENCH_FRAME_MAX],
        };
        t.bytes[..template.len()].copy_from_slice(template);
        let mut fm: Array<_, BenchFrame> =
            Array::try_from(ebpf.map_mut(MAP_GEN_FRAME).context(MAP_GEN_FRAME)?)?;
        fm.set(0, t, 0)?;
        Ok(Generator {
            ebpf,
            frame: template.to_vec(),
        })
    }

    /// Sends `frames` SYNs out of interface `ifindex` (in the calling
    /// thread's namespace) on the calling CPU; returns when all have been
    /// handed to the interface (a full peer drops the excess).
    pub fn send(&self, ifindex: u32, frames: u32) -> Result<()> {
        let prog: &Xdp = self
            .ebpf
            .program(PROG_GEN)
            .context("no generator program")?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, self.frame.len() as u32, 0, ifindex, 0, 0];
        // SAFETY: six u32s viewed as their 24 bytes.
        let ctx = unsafe { std::slice::from_raw_parts(md.as_ptr().cast::<u8>(), 24) };
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(GEN_BATCH),
            ..Default::default()
        };
        prog.test_run(opts)
            .context("BPF_PROG_RUN of the generator in live-frame mode")?;
        Ok(())
    }

    /// One run without transmitting (BPF_PROG_TEST_RUN): the verdict and
    /// the frame the generator would send.
    pub fn test_once(&self) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self
            .ebpf
            .program(PROG_GEN)
            .context("no generator program")?
            .try_into()?;
        test_once(prog, &self.frame)
    }
}

/// The floor responder run once on `frame` (BPF_PROG_TEST_RUN), hashing
/// with `key`: the verdict and the output frame.
pub fn floor_test_once(key: [u64; 2], frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut ebpf = load(&[PROG_FLOOR])?;
    let mut k: Array<_, [u64; 2]> =
        Array::try_from(ebpf.map_mut(MAP_FLOOR_KEY).context(MAP_FLOOR_KEY)?)?;
    k.set(0, key, 0)?;
    let prog: &Xdp = ebpf
        .program(PROG_FLOOR)
        .context("no floor program")?
        .try_into()?;
    test_once(prog, frame)
}

/// The absorbing sink run once on each of `frames` (BPF_PROG_TEST_RUN):
/// each verdict, and how many it counted.
pub fn absorb_test(frames: &[Vec<u8>]) -> Result<(Vec<u32>, u64)> {
    let ebpf = load(&[PROG_ABSORB])?;
    let prog: &Xdp = ebpf
        .program(PROG_ABSORB)
        .context("no absorb program")?
        .try_into()?;
    let verdicts = frames
        .iter()
        .map(|f| test_once(prog, f).map(|r| r.0))
        .collect::<Result<Vec<_>>>()?;
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(MAP_COUNT).context(MAP_COUNT)?)?;
    Ok((verdicts, m.get(&0, 0)?.iter().sum()))
}

fn test_once(prog: &Xdp, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Runs the responder once on `frame` (BPF_PROG_TEST_RUN); the output
/// frame is written to `out`.
pub fn test_run(r: &Responder, frame: &[u8], out: &mut [u8]) -> Result<TestRunResult> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ..Default::default()
    };
    r.program()?
        .test_run(opts)
        .context("BPF_PROG_TEST_RUN of the responder")
}

/// Every handoff event waiting in the responder's ring.
pub fn drain_handoffs(r: &mut Responder) -> Result<Vec<Handoff>> {
    let mut ring = r.handoff_ring()?;
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.extend(ring::event(&item));
    }
    Ok(out)
}

/// The bench harness: times a target program on one frame in
/// BPF_PROG_TEST_RUN's in-kernel loop.
pub struct Bench {
    ebpf: Ebpf,
}

/// What [`Bench::run`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The responder under test.
    Responder,
    /// The XDP_DROP program: the harness's own cost, to subtract.
    Drop,
}

impl Bench {
    pub fn load() -> Result<Self> {
        Ok(Bench {
            ebpf: load(&[PROG_BENCH, PROG_DROP])?,
        })
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name} in the harness object"))?
            .try_into()?)
    }

    /// Times `repeat` runs of `target` on `frame`, each after the harness
    /// restored the frame. Returns the kernel's mean duration per run
    /// (harness included: subtract a [`Target::Drop`] run).
    pub fn run(
        &mut self,
        r: &Responder,
        target: Target,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunResult> {
        if frame.len() > BENCH_FRAME_MAX || frame.len() < 14 {
            bail!("a bench frame must be 14..={BENCH_FRAME_MAX} bytes");
        }
        let mut t = BenchFrame {
            len: frame.len() as u32,
            bytes: [0; BENCH_FRAME_MAX],
        };
        t.bytes[..frame.len()].copy_from_slice(frame);
        let mut fm: Array<_, BenchFrame> = Array::try_from(
            self.ebpf
                .map_mut(MAP_BENCH_FRAME)
                .context(MAP_BENCH_FRAME)?,
        )?;
        fm.set(0, t, 0)?;
        let fd = match target {
            Target::Responder => r.program()?.fd()?.try_clone()?,
            Target::Drop => self.program(PROG_DROP)?.fd()?.try_clone()?,
        };
        let mut pa: ProgramArray<_> = ProgramArray::try_from(
            self.ebpf
                .map_mut(MAP_BENCH_TARGET)
                .context(MAP_BENCH_TARGET)?,
        )?;
        pa.set(0, &fd, 0)?;
        let mut out = [0u8; 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        self.program(PROG_BENCH)?
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of the bench harness")
    }
}
