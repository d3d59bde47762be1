//! Shared by the CPU op benches (`benches/cpu_conv.rs`, `benches/cpu_batchnorm.rs`, each
//! `#[path]`-includes it): the settings they read from the environment, and their timing.
use std::time::Instant;

use cephalo::model::ModelConfig;

/// An environment variable, where it is set.
pub fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// What to time: `CEPHALO_BENCH_MODEL` [hrnet-w8] at `CEPHALO_BENCH_SIZE` [`256x224`], batch
/// `CEPHALO_BENCH_BATCH` [4], the median of `CEPHALO_BENCH_RUNS` runs.
pub struct Settings {
    pub model: String,
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub runs: usize,
}

impl Settings {
    /// The settings from the environment, with `runs` runs unless it says otherwise.
    pub fn from_env(runs: usize) -> Settings {
        let model = env("CEPHALO_BENCH_MODEL").unwrap_or_else(|| "hrnet-w8".into());
        let size = env("CEPHALO_BENCH_SIZE").unwrap_or_else(|| "256x224".into());
        let (h, w) = size
            .split_once('x')
            .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
            .expect("CEPHALO_BENCH_SIZE is HxW, e.g. 256x224");
        let batch: usize = env("CEPHALO_BENCH_BATCH").and_then(|s| s.parse().ok()).unwrap_or(4);
        let runs: usize = env("CEPHALO_BENCH_RUNS").and_then(|s| s.parse().ok()).unwrap_or(runs);
        Settings {
            model,
            h,
            w,
            batch,
            runs,
        }
    }

    /// `MODEL HxW batch N`, for the first line of a report.
    pub fn describe(&self) -> String {
        format!("{} {}x{} batch {}", self.model, self.h, self.w, self.batch)
    }

    /// The model to take the shapes from: one input channel, 19 landmarks.
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig::new(&self.model, 1, 19, [self.h, self.w], self.batch).expect("valid benchmark config")
    }
}

/// Milliseconds of one call of `f`: the median of `runs` runs after one warm-up call.
pub fn time_ms(runs: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
