//! CUDA graphs: the work a closure queues on the GPU's stream, recorded once and replayed with one
//! launch. The training step records its forward and backward passes this way (opt-in,
//! `--cuda-graphs`), which turns thousands of kernel launches per step into two.
use anyhow::{anyhow, Context as _, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::Gpu;

/// Records everything `queue` puts on `gpu`'s stream into a graph instead of running it: nothing
/// executes until the graph is launched. Kernel arguments (addresses, sizes, scalars) are frozen
/// at their recorded values, so `queue` must queue work whose arguments stay valid for every
/// replay, and must not allocate, synchronise or copy to or from the host. Relaxed mode: other
/// driver calls of this thread (loading a kernel, setting its shared-memory limit) stay allowed.
/// The capture is always ended, also when `queue` fails, so the stream is usable afterwards.
pub fn capture(gpu: &Gpu, queue: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
    let stream = gpu.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .context("starting a CUDA graph capture")?;
    let queued = queue();
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    queued.context("queueing the work to record")?;
    ended
        .context("ending the CUDA graph capture")?
        .ok_or_else(|| anyhow!("the CUDA graph capture recorded nothing"))
}
