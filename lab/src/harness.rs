//! The harness XDP programs (their own object, never loaded by the product)
//! and BPF_PROG_TEST_RUN access to a loaded responder.
//!
//! * pass: on the far end of a veth, because veth delivers `XDP_TX` frames
//!   only to a peer that runs XDP itself;
//! * drop: the cheapest possible sink (the bench's generator ceiling);
//! * bench: restores a frame before each run of a target program, so the
//!   responder (which rewrites its input) sees a fresh SYN every time.

use ackgate::xdp::{attach_named, load_program, ring, AttachMode, Responder, ResponderError};
use ackgate_common::wire::{
    BenchFrame, Handoff, BENCH_FRAME_MAX, MAP_BENCH_FRAME, MAP_BENCH_TARGET, PROG_BENCH, PROG_DROP,
    PROG_PASS,
};
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, ProgramArray},
    programs::{TestRun, TestRunOptions, TestRunResult, Xdp},
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
    _ebpf: Ebpf,
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

    fn program(name: &str, iface: &str) -> Result<Self, ResponderError> {
        let mut ebpf = load(&[name])?;
        let _link = attach_named(&mut ebpf, name, iface, AttachMode::Native)?;
        Ok(Attached { _ebpf: ebpf })
    }
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
