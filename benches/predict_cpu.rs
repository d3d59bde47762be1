//! End-to-end CPU prediction speed: `cephalo predict` with HRNet-W32 at 768x768 on full-resolution
//! ISBI 2015 radiographs (decode, letterbox, forward, DARK decoding, analysis, JSON, overlay PNG).
//! The weights are the initial ones (speed does not depend on their values), saved with AdamW
//! moments as a training checkpoint is. `CEPHALO_BENCH_IMAGES=1` is the one-image case;
//! `CEPHALO_BENCH_ARGS` adds predict flags (e.g. `--no-overlay`).
//!
//! Run: `cargo bench --bench predict_cpu` (CEPHALO_BENCH_IMAGES=N images, default 4; the data
//! is read from ../shared/data/isbi2015/images).
use std::time::Instant;

use anyhow::{Context, Result};
use cephalo::backend::CpuBackend;
use cephalo::checkpoint::{self, Checkpoint, Meta};
use cephalo::data::LandmarkSet;
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::model::ModelConfig;
use cephalo::predict::command::PredictArgs;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    predict: PredictArgs,
}

fn main() -> Result<()> {
    let images_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/isbi2015/images");
    let count: usize = std::env::var("CEPHALO_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut images: Vec<_> = std::fs::read_dir(&images_dir)
        .with_context(|| format!("listing {}", images_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    images.sort();
    images.truncate(count);

    let dir = tempfile::tempdir()?;
    let set = LandmarkSet::isbi19();
    let model = ModelConfig::new("hrnet-w32", 1, set.len(), [768, 768], 1)?;
    let exec = Executor::new(
        model.build()?,
        PlanOptions::new(Mode::Eval, DtypeSizes::F32),
        CpuBackend::new(),
        1,
    );
    let ck_path = dir.path().join("hrnet-w32.safetensors");
    let mut ck = Checkpoint::from_executor(&exec, Meta::new(model, set.symbols.clone(), 4, 2.0));
    // A checkpoint as training writes it, with the AdamW moments (two thirds of its bytes), which
    // prediction must not spend time on.
    let params: Vec<(String, Vec<usize>, usize)> = ck
        .tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone(), t.data.len()))
        .collect();
    for (name, shape, len) in params {
        ck.insert_moments(&name, &shape, vec![0.0; len], vec![0.0; len]);
    }
    checkpoint::save(&ck_path, &ck)?;
    drop(exec);

    let mut argv = vec![
        "predict".to_string(),
        "--checkpoint".into(),
        ck_path.display().to_string(),
        "--out".into(),
        dir.path().join("out").display().to_string(),
        "--pixel-size".into(),
        "0.1".into(),
        "--batch-size".into(),
        "1".into(),
        "--device".into(),
        "cpu".into(),
    ];
    // Extra flags to see what a stage costs, e.g. CEPHALO_BENCH_ARGS=--no-overlay.
    argv.extend(
        std::env::var("CEPHALO_BENCH_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from),
    );
    argv.extend(images.iter().map(|p| p.display().to_string()));
    let cli = Cli::parse_from(argv);
    let started = Instant::now();
    cephalo::predict::command::run(&cli.predict)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "predict_cpu: hrnet-w32 768x768, {} full-resolution images, {:.2} s/image ({:.1} s total, {} threads)",
        images.len(),
        seconds / images.len() as f64,
        seconds,
        rayon::current_num_threads()
    );
    Ok(())
}
