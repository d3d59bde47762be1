//! `cephalo eval`: a checkpoint's accuracy on a dataset split — MRE ± SD, SDR at 2/2.5/3/4 mm,
//! the per-landmark table worst first, a per-machine table when machines are known — and an
//! optional JSON report with every prediction in original pixels.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::backend::{cpu, Backend, CpuBackend, CudaBackend};
use crate::checkpoint::{self, Meta};
use crate::data::geometry::ImageSize;
use crate::data::loader::{default_workers, Loader};
use crate::data::{Dataset, DatasetOptions, Split};
use crate::device::{Device, DeviceArg};
use crate::eval::inference::{inference_loader_config, metrics_of, predict_loader, PredictedImage};
use crate::eval::metrics::{radial_errors_mm, ErrorStats, MetricsReport};
use crate::gpu::Gpu;
use crate::graph::exec::Executor;
use crate::graph::plan::{DtypeSizes, Mode, PlanOptions};
use crate::graph::Graph;
use crate::refine::infer::Refiner;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A checkpoint written by `cephalo train` (.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset folder (Aariz, ISBI 2015 or landmark-CSV layout).
    #[arg(long, alias = "dataset_path")]
    pub dataset_path: PathBuf,
    /// Which split to evaluate: test (ISBI Test1, the Aariz test set), valid or train.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Also write the full report, with every prediction, as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, alias = "batch_size", default_value_t = 4, value_parser = crate::cli::positive_count)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// Loader threads [default: cores - 1].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The ground truth where a dataset has two annotators: their mean, or one of them.
    #[arg(long, value_enum, default_value_t)]
    pub annotator: crate::data::Annotator,
    /// A refiner (`cephalo train --stage refine`): also refine the global predictions on patches
    /// of the original images, and report both stages side by side.
    #[arg(long)]
    pub refiner: Option<PathBuf>,
}

/// A loaded model ready for inference, with what its checkpoint says about it.
pub struct LoadedModel {
    pub meta: Meta,
    pub exec: InferenceExecutor,
}

/// The inference graph on the device it runs on: f32 on the CPU, fp16 (BN folded into the
/// convolutions) on the GPU.
pub enum InferenceExecutor {
    Cpu(Box<Executor<CpuBackend>>),
    Cuda(Box<Executor<CudaBackend>>),
}

impl InferenceExecutor {
    pub fn graph(&self) -> &Graph {
        match self {
            Self::Cpu(e) => e.graph(),
            Self::Cuda(e) => e.graph(),
        }
    }

    /// Heatmaps of one input batch.
    pub fn predict(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        match self {
            Self::Cpu(e) => Ok(cpu::in_pool(|| e.predict(input))),
            Self::Cuda(e) => {
                let out = e.predict(input);
                e.backend_mut().take_error().context("inference on the GPU")?;
                Ok(out)
            }
        }
    }

    /// Landmarks of every image of `loader`.
    pub fn predict_loader(&mut self, loader: &Loader, sigma: f64) -> Result<Vec<PredictedImage>> {
        match self {
            Self::Cpu(e) => cpu::in_pool(|| predict_loader(e, loader, sigma)),
            Self::Cuda(e) => {
                let out = predict_loader(e, loader, sigma);
                e.backend_mut().take_error().context("inference on the GPU")?;
                out
            }
        }
    }
}

/// Loads a checkpoint into an eval-mode executor for `batch_size` images on `device`.
pub fn load_model(path: &Path, batch_size: usize, device: Device) -> Result<LoadedModel> {
    let started = std::time::Instant::now();
    let ck = checkpoint::load_for_inference(path)?;
    let mut model = ck.meta.model.clone();
    model.batch_size = batch_size.max(1);
    let graph = model.build()?;
    // The executor starts from the checkpoint's weights; load_into then checks every name and
    // shape (and writes them again, which is cheap).
    let weights = |name: &str| ck.tensors.get(name).map(|t| t.data.as_slice());
    let exec = match device {
        Device::Cpu => {
            let mut exec = Executor::with_params(
                graph,
                PlanOptions::new(Mode::Eval, DtypeSizes::F32),
                CpuBackend::new(),
                0,
                weights,
            );
            ck.load_into(&mut exec)
                .with_context(|| format!("loading {}", path.display()))?;
            InferenceExecutor::Cpu(Box::new(exec))
        }
        Device::Cuda(n) => {
            let gpu = Arc::new(Gpu::open(n)?);
            let mut exec = Executor::with_params(
                graph,
                PlanOptions::new(Mode::Eval, DtypeSizes::F16),
                CudaBackend::new(gpu),
                0,
                weights,
            );
            exec.backend_mut().take_error().context("preparing GPU inference")?;
            ck.load_into(&mut exec)
                .with_context(|| format!("loading {}", path.display()))?;
            exec.backend_mut().take_error().context("uploading the weights")?;
            InferenceExecutor::Cuda(Box::new(exec))
        }
    };
    // Start-up reported on its own, so that per-image times read as such.
    eprintln!(
        "start-up: {} loaded and planned for batch {} in {:.2} s",
        path.display(),
        model.batch_size,
        started.elapsed().as_secs_f64()
    );
    Ok(LoadedModel { meta: ck.meta, exec })
}

/// Resolves `--device` for inference: `auto` takes the GPU when there is one.
pub fn inference_device(arg: DeviceArg) -> Result<Device> {
    arg.resolve()
}

#[derive(Serialize)]
struct Report<'a> {
    checkpoint: String,
    model: &'a str,
    dataset: String,
    split: String,
    metrics: &'a MetricsReport,
    /// With --refiner: the two stages' figures (`metrics` stays the global model's alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    refined: Option<RefinedReport<'a>>,
    predictions: Vec<ImageReport<'a>>,
}

#[derive(Serialize)]
struct RefinedReport<'a> {
    refiner: String,
    metrics: &'a MetricsReport,
}

#[derive(Serialize)]
struct ImageReport<'a> {
    id: &'a str,
    image: String,
    pixel_size_mm: f64,
    machine: Option<&'a str>,
    landmarks: Vec<LandmarkReport<'a>>,
}

#[derive(Serialize)]
struct LandmarkReport<'a> {
    symbol: &'a str,
    predicted: [f64; 2],
    truth: [f64; 2],
    error_mm: f64,
    confidence: f32,
    /// With --refiner: the refined point (the global one is `predicted`), its error and its
    /// heatmap peak.
    #[serde(skip_serializing_if = "Option::is_none")]
    refined: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refined_error_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refined_confidence: Option<f32>,
}

pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let device = inference_device(args.device)?;
    let mut model = load_model(&args.checkpoint, args.batch_size, device)?;
    crate::refine::infer::require_global(&model.meta, &args.checkpoint, "--checkpoint")?;
    let mut refiner = match &args.refiner {
        Some(path) => Some(Refiner::load(
            path,
            &model.meta,
            &args.checkpoint,
            args.batch_size,
            device,
        )?),
        None => None,
    };
    let dataset = Dataset::open(
        &args.dataset_path,
        &DatasetOptions {
            annotator: args.annotator,
        },
    )?;
    let symbols = &dataset.landmarks().symbols;
    if *symbols != model.meta.landmarks {
        bail!(
            "{} predicts landmarks [{}], but {} has [{}]: evaluate on a dataset with the same landmark set",
            args.checkpoint.display(),
            model.meta.landmarks.join(" "),
            args.dataset_path.display(),
            symbols.join(" ")
        );
    }
    let samples = dataset.require_split(args.split)?.to_vec();
    let size = ImageSize {
        height: model.meta.model.image_size[0],
        width: model.meta.model.image_size[1],
    };
    let workers = args.workers.unwrap_or_else(default_workers);
    let cfg = inference_loader_config(&model.meta, size, args.batch_size, workers);
    let loader = Loader::new(samples, cfg)?;
    let predictions = model.exec.predict_loader(&loader, model.meta.heatmap_sigma as f64)?;
    let report = metrics_of(loader.samples(), &predictions, symbols);
    let refined = match &mut refiner {
        Some(r) => {
            let refined = r.refine(loader.samples(), &predictions, workers)?;
            let metrics = metrics_of(loader.samples(), &refined, symbols);
            Some((refined, metrics))
        }
        None => None,
    };

    print_report(&report, args, loader.samples().len());
    if let Some((_, metrics)) = &refined {
        crate::refine::report::print_comparison(&report, metrics);
    }
    if let Some(path) = &args.report {
        let json = Report {
            checkpoint: args.checkpoint.display().to_string(),
            model: &model.meta.model.model,
            dataset: args.dataset_path.display().to_string(),
            split: args.split.to_string(),
            metrics: &report,
            refined: refined
                .as_ref()
                .zip(args.refiner.as_ref())
                .map(|((_, m), path)| RefinedReport {
                    refiner: path.display().to_string(),
                    metrics: m,
                }),
            predictions: image_reports(
                &loader,
                &predictions,
                refined.as_ref().map(|(p, _)| p.as_slice()),
                symbols,
            ),
        };
        write_json_atomic(path, &json)?;
        println!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn image_reports<'a>(
    loader: &'a Loader,
    predictions: &'a [PredictedImage],
    refined: Option<&'a [PredictedImage]>,
    symbols: &'a [String],
) -> Vec<ImageReport<'a>> {
    predictions
        .iter()
        .map(|p| {
            let s = &loader.samples()[p.index];
            let errors = radial_errors_mm(&p.points, &s.landmarks, s.pixel_size_mm);
            let r = refined.and_then(|all| all.iter().find(|r| r.index == p.index));
            let refined_errors = r.map(|r| radial_errors_mm(&r.points, &s.landmarks, s.pixel_size_mm));
            ImageReport {
                id: &s.id,
                image: s.image_path.display().to_string(),
                pixel_size_mm: s.pixel_size_mm,
                machine: s.machine.as_deref(),
                landmarks: (0..symbols.len())
                    .map(|k| LandmarkReport {
                        symbol: &symbols[k],
                        predicted: p.points[k],
                        truth: s.landmarks[k],
                        error_mm: errors[k],
                        confidence: p.confidence[k],
                        refined: r.map(|r| r.points[k]),
                        refined_error_mm: refined_errors.as_ref().map(|e| e[k]),
                        refined_confidence: r.map(|r| r.confidence[k]),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn stats_row(name: &str, s: &ErrorStats) -> String {
    format!(
        "{name:<10} {:>7.3} {:>7.3} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>6}",
        s.mre_mm, s.sd_mm, s.sdr_percent[0], s.sdr_percent[1], s.sdr_percent[2], s.sdr_percent[3], s.count
    )
}

fn print_report(r: &MetricsReport, args: &EvalArgs, images: usize) {
    let header = format!(
        "{:<10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "", "MRE mm", "SD mm", "SDR2%", "SDR2.5%", "SDR3%", "SDR4%", "pairs"
    );
    println!(
        "{} on {} split {} ({images} images)",
        args.checkpoint.display(),
        args.dataset_path.display(),
        args.split
    );
    println!("{header}");
    println!("{}", stats_row("overall", &r.overall));
    println!("\nper landmark, worst first:\n{header}");
    for (symbol, s) in r.worst_first() {
        println!("{}", stats_row(symbol, s));
    }
    if !r.per_machine.is_empty() {
        println!("\nper machine:\n{header}");
        for (machine, s) in &r.per_machine {
            println!("{}", stats_row(machine, s));
        }
    }
}

/// Writes JSON through a temporary file and a rename, so a reader never sees half a report.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The checkpoint writer's atomic write: same folder, renamed when complete, the user's umask.
    crate::checkpoint::write_atomically(path, |f| {
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), value)?;
        Ok(())
    })
}
