//! Loader throughput on the real ISBI images at 768x768 (batch 4, augmentation on): full
//! resolution (1935x2400 JPEG) versus a `prepare`d copy, for 1 and 2 worker threads, plus a
//! per-stage breakdown for one thread.
//!
//! `cargo bench --bench loader` (dataset: $CEPHALO_ISBI or ../shared/data/isbi2015; the prepared
//! copy is cached under $CARGO_TARGET_DIR/bench-data). $BENCH_WORKERS sets the worker counts
//! to try (default "1 2").
use std::path::{Path, PathBuf};
use std::time::Instant;

use cephalo::data::augment::{transform_sample, AugmentConfig};
use cephalo::data::geometry::ImageSize;
use cephalo::data::heatmap::{encode, image_to_heatmap};
use cephalo::data::image_io::load_gray;
use cephalo::data::loader::{Loader, LoaderConfig};
use cephalo::data::prepare::prepare_dataset;
use cephalo::data::{Dataset, DatasetOptions, Sample, Split};
use rand::SeedableRng;

const NET: ImageSize = ImageSize {
    height: 768,
    width: 768,
};

/// The whole process's CPU time in seconds (user + system, all threads; 10 ms ticks).
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the ") state" prefix.
    if f.len() > 13 {
        (f[10] + f[11]) / 100.0
    } else {
        f64::NAN
    }
}

/// The fastest of several runs: on a shared machine the other processes only ever add time,
/// so the minimum is the best estimate of the code's own cost.
fn fastest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Fastest milliseconds of each stage over `n` samples, one thread: decode, letterbox warp
/// alone, augmented warp + photometric, heatmaps (drawn by the training engine since the loader
/// hands over landmarks only: on the CPU by this encoder, on the GPU by `heatmap_encode_f32`).
fn stages(samples: &[Sample], n: usize) -> [f64; 4] {
    let mut times: [Vec<f64>; 4] = Default::default();
    let cfg = AugmentConfig::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for s in samples.iter().take(n) {
        let t = Instant::now();
        let img = load_gray(&s.image_path).expect("decode");
        times[0].push(ms_since(t));
        let t = Instant::now();
        std::hint::black_box(transform_sample::<rand_chacha::ChaCha8Rng>(
            &img,
            &s.landmarks,
            NET,
            None,
        ));
        times[1].push(ms_since(t));
        let t = Instant::now();
        let out = transform_sample(&img, &s.landmarks, NET, Some((&cfg, &mut rng)));
        times[2].push(ms_since(t));
        let t = Instant::now();
        let pts: Vec<[f64; 2]> = out.points.iter().map(|&p| image_to_heatmap(p, 4)).collect();
        std::hint::black_box(encode(&pts, 192, 192, 2.0));
        times[3].push(ms_since(t));
    }
    [
        fastest(&times[0]),
        fastest(&times[1]),
        fastest(&times[2]),
        fastest(&times[3]),
    ]
}

/// Images per second of wall time, and CPU seconds per image (all threads), over `batches`
/// batches of epoch 0 (after one warm-up batch of epoch 1).
fn throughput(samples: &[Sample], workers: usize, batches: usize) -> (f64, f64) {
    let cfg = LoaderConfig {
        workers,
        prefetch: 2 * workers.max(1),
        ..LoaderConfig::new(NET)
    };
    let loader = Loader::new(samples.to_vec(), cfg).expect("loader");
    loader.epoch(1).next().expect("a batch").expect("warm-up batch");
    let (start, cpu) = (Instant::now(), process_cpu_s());
    let mut images = 0;
    for batch in loader.epoch(0).take(batches) {
        images += batch.expect("batch").len();
    }
    let n = images as f64;
    (n / start.elapsed().as_secs_f64(), (process_cpu_s() - cpu) / n)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let isbi = std::env::var_os("CEPHALO_ISBI")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data/isbi2015"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let prepared = target.join("bench-data/isbi2015-1024");
    let workers: Vec<usize> = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "1 2".into())
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();

    let full = Dataset::open(&isbi, &DatasetOptions::default()).expect("ISBI dataset");
    let t = Instant::now();
    let summary = prepare_dataset(&full, &prepared, 1024, "jpg", false).expect("prepare");
    println!(
        "prepare --max-side 1024: {} written, {} cached, {:.1} s",
        summary.written,
        summary.skipped,
        t.elapsed().as_secs_f64()
    );
    let small = Dataset::open(&prepared, &DatasetOptions::default()).expect("prepared copy");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loader at 768x768, batch 4, augmentation on; {cores} cores visible; load average {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    for (name, ds, batches) in [
        ("full-resolution 1935x2400", &full, 10),
        ("prepared 826x1024", &small, 25),
    ] {
        let train = ds.split(Split::Train).expect("train split");
        let [d, p, w, h] = stages(train, 15);
        println!(
            "{name}: ms per image (fastest of 15, one thread): decode {d:.1}, letterbox warp {p:.1}, \
             augmented warp+photometric {w:.1}, heatmaps {h:.2}"
        );
        for &n in &workers {
            let (rate, cpu) = throughput(train, n, batches);
            println!(
                "{name}: {n} worker(s): {rate:.1} images/s wall; {:.1} ms CPU per image \
                 -> {:.0} images/s per fully used core",
                cpu * 1e3,
                1.0 / cpu
            );
        }
    }
}
