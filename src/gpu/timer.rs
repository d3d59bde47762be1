//! Timing GPU work with CUDA events: the only honest clock for asynchronous launches.
use anyhow::{Context as _, Result};
use cudarc::driver::{sys::CUevent_flags, CudaEvent};

use super::Gpu;

/// A pair of events around work queued on the GPU's stream.
pub struct GpuTimer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl GpuTimer {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        Ok(GpuTimer {
            start: gpu.context().new_event(flags).context("creating a CUDA event")?,
            stop: gpu.context().new_event(flags).context("creating a CUDA event")?,
        })
    }

    /// Milliseconds the GPU spent on the work `f` queues (waits for it to finish).
    pub fn time_ms(&self, gpu: &Gpu, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        self.start.record(gpu.stream())?;
        f()?;
        self.stop.record(gpu.stream())?;
        self.stop.synchronize()?;
        Ok(self.start.elapsed_ms(&self.stop)?)
    }
}

/// Summary of repeated timings.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
}

/// Runs `f` `warmup` times untimed, then `runs` times each between events: the median is the
/// figure to report (robust to the odd slow run), min and max show the spread.
pub fn measure(gpu: &Gpu, warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    let timer = GpuTimer::new(gpu)?;
    for _ in 0..warmup {
        f()?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        times.push(timer.time_ms(gpu, &mut f)? as f64);
    }
    Ok(summarize(&mut times))
}

/// Median (mean of the two middle values for an even count), min and max.
pub fn summarize(times: &mut [f64]) -> Timing {
    assert!(!times.is_empty(), "summarize needs at least one time");
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    Timing {
        median_ms: median,
        min_ms: times[0],
        max_ms: times[n - 1],
        runs: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_middle_value() {
        let t = summarize(&mut [5.0, 1.0, 3.0]);
        assert_eq!((t.median_ms, t.min_ms, t.max_ms, t.runs), (3.0, 1.0, 5.0, 3));
        assert_eq!(summarize(&mut [4.0, 1.0, 2.0, 100.0]).median_ms, 3.0);
    }
}
