//! `cephalo bench`: the speed and memory of one training step (or one inference batch) of a
//! model on the GPU or the CPU, measured the way `benches/pytorch_reference.py` measures PyTorch,
//! so the JSON reports compare line by line: synthetic inputs and Gaussian targets, warm-up steps,
//! then the timed steps, median and spread. On the GPU CUDA events time each step and NVML reads
//! the device memory; on the CPU, whose ops are synchronous, the wall clock times it.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::{cpu, Backend, CpuBackend, CudaBackend, OpTimes};
use crate::data::geometry::Affine;
use crate::data::heatmap::heatmap_to_image;
use crate::data::loader::Batch;
use crate::device::{Device, DeviceArg};
use crate::gpu::memory::human_bytes;
use crate::gpu::timer::{summarize, Timing};
use crate::gpu::{vram, Gpu, GpuTimer};
use crate::graph::exec::Executor;
use crate::graph::plan::{DtypeSizes, Mode, PlanOptions};
use crate::model::ModelConfig;
use crate::train::cuda_engine::{check_fits, record_pass, CudaEngine, Pass};
use crate::train::engine::{CpuEngine, Engine};
use crate::train::landmark_weights::LandmarkWeightsArg;
use crate::train::loss::{HeatmapLoss, LossArgs, LossKind};
use crate::train::step::StepParams;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum BenchMode {
    /// Forward, loss, backward and AdamW: one training step.
    Train,
    /// Eval-mode forward (BN folded into the convolutions).
    Infer,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// hrnet (= hrnet-w32), hrnet-w18, hrnet-w48, resnet50, ...
    #[arg(long, default_value = "hrnet-w32")]
    pub model: String,
    #[arg(long, alias = "image_size", num_args = 2, value_names = ["H", "W"], default_values_t = [768, 768])]
    pub image_size: Vec<usize>,
    #[arg(long, alias = "batch_size", default_value_t = 4)]
    pub batch_size: usize,
    /// Heatmap channels (29: the Aariz landmarks).
    #[arg(long, default_value_t = 29)]
    pub landmarks: usize,
    #[arg(long, value_enum, default_value_t = BenchMode::Train)]
    pub mode: BenchMode,
    /// Untimed steps first [default: 10 on the GPU, 1 on the CPU].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Timed steps [default: 30 on the GPU, 5 on the CPU].
    #[arg(long)]
    pub steps: Option<usize>,
    /// cuda, cuda:N or cpu (f32, all cores: set RAYON_NUM_THREADS to use fewer).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceArg,
    /// Also time every op kind (one extra profiled step: CUDA events on the GPU, the wall clock
    /// on the CPU) and print the table.
    #[arg(long, alias = "profile")]
    pub profile_ops: bool,
    /// Same as `--mode infer`.
    #[arg(long, conflicts_with = "mode")]
    pub inference: bool,
    /// Replay forward (and in training backward) from CUDA graphs recorded after the first step
    /// (experimental; as `cephalo train --cuda-graphs`).
    #[arg(long, alias = "cuda_graphs")]
    pub cuda_graphs: bool,
    /// Write the report as JSON here (stdout gets the human summary).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    /// `cuda` or `cpu`.
    device: &'static str,
    /// The GPU's name, or the CPU's model with the thread count.
    gpu: String,
    model: String,
    mode: BenchMode,
    image_size: [usize; 2],
    batch_size: usize,
    landmarks: usize,
    parameters: usize,
    warmup: usize,
    steps: usize,
    /// Time per step: CUDA events around the whole step on the GPU, the wall clock on the CPU.
    step_ms: Timing,
    /// Wall-clock per step (includes the host's share, e.g. the upload and the flag read).
    wall_ms: Timing,
    images_per_s: f64,
    /// Convolution FLOPs of one step (2 per multiply-accumulate; x3 in training) over the median
    /// step time.
    conv_tflops: f64,
    /// Bytes this process holds on the device (NVML), and device-wide used bytes (GPU only).
    process_vram_bytes: Option<u64>,
    device_used_bytes: Option<u64>,
    /// What the memory plan allocates (arenas, parameters, optimizer, scratch estimate; on the
    /// CPU the arena, the parameters and in training their gradients and AdamW moments).
    planned_bytes: usize,
    /// With `--cuda-graphs`: whether the timed passes were replayed from graphs (a recording that
    /// failed leaves this false, with a warning on stderr). The `--profile-ops` pass runs op by op.
    cuda_graphs: bool,
    /// With `--profile-ops`: per op kind (kind, launches, ms) and the slowest ops one by one
    /// (kind, graph node with its output shape, ms), both slowest first.
    op_times_ms: Vec<(String, usize, f64)>,
    slowest_ops_ms: Vec<(String, String, f64)>,
}

/// Ops listed one by one with `--profile-ops` (the JSON keeps this many too).
const SLOWEST_OPS: usize = 30;

/// What one device's benchmark measured.
struct Measured {
    device: &'static str,
    name: String,
    step_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    planned_bytes: usize,
    process_vram_bytes: Option<u64>,
    device_used_bytes: Option<u64>,
    cuda_graphs: bool,
    op_times: OpTimes,
}

/// The settings every device's benchmark shares.
struct Setup<'a> {
    args: &'a BenchArgs,
    mode: BenchMode,
    warmup: usize,
    steps: usize,
    batch: Batch,
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let mode = if args.inference { BenchMode::Infer } else { args.mode };
    let cpu = args.device == DeviceArg::Cpu;
    if !cpu {
        // Say what is missing, and that the CPU is measured only when asked for.
        match crate::gpu::probe() {
            crate::gpu::Probe::NoDriver => bail!(
                "`cephalo bench` measures a CUDA GPU by default: no NVIDIA driver on this machine (--device cpu \
                 times the CPU)"
            ),
            crate::gpu::Probe::NoDevice(why) => {
                bail!("`cephalo bench` measures a CUDA GPU by default: {why} (--device cpu times the CPU)")
            }
            crate::gpu::Probe::Devices { .. } => {}
        }
    }
    let [h, w]: [usize; 2] = args
        .image_size
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("--image-size takes H W"))?;
    let warmup = args.warmup.unwrap_or(if cpu { 1 } else { 10 });
    let steps = args.steps.unwrap_or(if cpu { 5 } else { 30 });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let model = ModelConfig::new(&args.model, 1, args.landmarks, [h, w], args.batch_size)?;
    let graph = model.build()?;
    let parameters = graph.param_count();
    // Convolution FLOPs of one step: forward, and in training both gradients (the first
    // convolution's input gradient is skipped, a few percent on these networks).
    let conv_macs: u64 = crate::model::conv_shapes::conv_shapes(&graph)
        .iter()
        .map(|c| c.macs * c.count as u64)
        .sum();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let setup = Setup {
        args,
        mode,
        warmup,
        steps,
        batch: synthetic_batch(&graph, &mut rng),
    };
    let mut m = match args.device.resolve()? {
        Device::Cpu => bench_cpu(&setup, graph)?,
        Device::Cuda(ordinal) => bench_gpu(&setup, graph, ordinal, [h, w])?,
    };
    let step_ms = summarize(&mut m.step_ms);
    let report = Report {
        tool: "cephalo",
        device: m.device,
        gpu: m.name,
        model: model.model.clone(),
        mode,
        image_size: [h, w],
        batch_size: args.batch_size,
        landmarks: args.landmarks,
        parameters,
        warmup,
        steps,
        images_per_s: args.batch_size as f64 / (step_ms.median_ms / 1e3),
        conv_tflops: 2.0 * conv_macs as f64 * if mode == BenchMode::Train { 3.0 } else { 1.0 }
            / (step_ms.median_ms * 1e-3)
            / 1e12,
        step_ms,
        wall_ms: summarize(&mut m.wall_ms),
        process_vram_bytes: m.process_vram_bytes,
        device_used_bytes: m.device_used_bytes,
        planned_bytes: m.planned_bytes,
        cuda_graphs: m.cuda_graphs,
        op_times_ms: m
            .op_times
            .by_kind
            .iter()
            .map(|(k, n, ms)| (k.to_string(), *n, *ms))
            .collect(),
        slowest_ops_ms: m
            .op_times
            .ops
            .iter()
            .take(SLOWEST_OPS)
            .map(|o| (o.kind.to_string(), o.node.clone(), o.ms))
            .collect(),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        crate::eval::command::write_json_atomic(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The loss `cephalo train` uses by default (Adaptive Wing with its weight map).
fn default_loss(landmarks: usize) -> Result<HeatmapLoss> {
    HeatmapLoss::from_args(
        &LossArgs {
            loss: LossKind::AdaptiveWing,
            weight_map: true,
            landmark_weights: LandmarkWeightsArg::None,
        },
        &(0..landmarks).map(|i| format!("L{i}")).collect::<Vec<_>>(),
    )
}

/// The optimizer settings of benchmark step `i` (0-based).
fn step_params(i: usize) -> StepParams {
    StepParams {
        lr: 1e-4,
        weight_decay: 1e-4,
        t: i as u64 + 1,
    }
}

/// The CPU in f32: the training step of `cephalo train --device cpu`, or the eval-mode forward
/// of `predict`/`eval` (BN folded), timed with the wall clock.
fn bench_cpu(s: &Setup, graph: crate::graph::Graph) -> Result<Measured> {
    let (mut times, mut op_times) = (Vec::new(), OpTimes::default());
    let planned_bytes;
    match s.mode {
        BenchMode::Train => {
            let loss = default_loss(s.args.landmarks)?;
            let params = graph.param_count();
            let mut engine = Engine::Cpu(Box::new(CpuEngine::new(graph, 1)));
            for i in 0..s.warmup + s.steps {
                let started = Instant::now();
                engine.step(&s.batch, None, &loss, step_params(i))?;
                if i >= s.warmup {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            let Engine::Cpu(cpu) = &mut engine else {
                unreachable!("built as a CPU engine")
            };
            // Values, gradients and the two AdamW moments of every trainable parameter.
            planned_bytes = cpu.exec.plan().arena_bytes + 16 * params;
            if s.args.profile_ops {
                cpu.exec.backend_mut().enable_op_profile();
                engine.step(&s.batch, None, &loss, step_params(s.warmup + s.steps))?;
                let Engine::Cpu(cpu) = &mut engine else {
                    unreachable!("built as a CPU engine")
                };
                op_times = cpu.exec.backend_mut().take_op_times();
            }
        }
        BenchMode::Infer => {
            let options = PlanOptions::new(Mode::Eval, DtypeSizes::F32);
            let mut exec = Executor::new(graph, options, CpuBackend::new(), 1);
            planned_bytes = exec.plan().arena_bytes + 4 * exec.graph().params.iter().map(|p| p.len()).sum::<usize>();
            let input = exec.input_view();
            exec.backend_mut().write(input, &s.batch.images);
            for i in 0..s.warmup + s.steps {
                let started = Instant::now();
                cpu::in_pool(|| exec.forward());
                if i >= s.warmup {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            if s.args.profile_ops {
                exec.backend_mut().enable_op_profile();
                cpu::in_pool(|| exec.forward());
                op_times = exec.backend_mut().take_op_times();
            }
        }
    }
    Ok(Measured {
        device: "cpu",
        name: format!("{} ({} threads)", cpu_model_name(), rayon::current_num_threads()),
        wall_ms: times.clone(),
        step_ms: times,
        planned_bytes,
        process_vram_bytes: None,
        device_used_bytes: None,
        cuda_graphs: false,
        op_times,
    })
}

/// The CPU's model name (Linux's /proc/cpuinfo), or a generic name elsewhere.
fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}

/// The GPU in fp16: CUDA events around each step, memory from the plan and NVML.
fn bench_gpu(s: &Setup, graph: crate::graph::Graph, ordinal: usize, hw: [usize; 2]) -> Result<Measured> {
    let args = s.args;
    let batch = &s.batch;
    let gpu = Arc::new(Gpu::open(ordinal)?);
    let timer = GpuTimer::new(&gpu)?;
    let (mut gpu_ms, mut wall_ms) = (Vec::new(), Vec::new());
    let (planned, op_times, replayed_graphs) = match s.mode {
        BenchMode::Train => {
            let plan = check_fits(&gpu, &graph, args.batch_size, hw)?;
            let loss = default_loss(args.landmarks)?;
            let mut engine = CudaEngine::new(gpu.clone(), graph, 1, &loss)?;
            engine.use_cuda_graphs(args.cuda_graphs);
            for i in 0..s.warmup + s.steps {
                let started = Instant::now();
                let ms = timer.time_ms(&gpu, || {
                    engine.step(batch, Some(batch), &loss, step_params(i)).map(|_| ())
                })?;
                if i >= s.warmup {
                    gpu_ms.push(ms as f64);
                    wall_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            // Read before the profiled step, which runs op by op: the flag describes the timed steps.
            let replayed = engine.replaying_cuda_graphs();
            let mut op_times = OpTimes::default();
            if args.profile_ops {
                engine.backend_mut().enable_op_profile();
                engine.step(batch, Some(batch), &loss, step_params(s.warmup + s.steps))?;
                op_times = engine.backend_mut().take_op_times()?;
            }
            (plan.total(), op_times, replayed)
        }
        BenchMode::Infer => {
            let options = PlanOptions::new(Mode::Eval, DtypeSizes::F16);
            let mut exec = Executor::new(graph, options, CudaBackend::new(gpu.clone()), 1);
            exec.backend_mut().take_error().context("preparing the executor")?;
            let input = exec.input_view();
            exec.backend_mut().write(input, &batch.images);
            let mut recorded = None;
            for i in 0..s.warmup + s.steps {
                // With --cuda-graphs, the forward pass is recorded after the first one ran op by op.
                if args.cuda_graphs && i == 1 {
                    match record_pass(&mut exec, Pass::Forward) {
                        Ok(graph) => recorded = Some(graph),
                        Err(e) => eprintln!("warning: CUDA graphs turned off, inference runs op by op: {e:#}"),
                    }
                }
                let started = Instant::now();
                let ms = timer.time_ms(&gpu, || match &recorded {
                    Some(graph) => graph.launch().context("launching the recorded forward pass"),
                    None => {
                        exec.forward();
                        exec.backend_mut().take_error()
                    }
                })?;
                if i >= s.warmup {
                    gpu_ms.push(ms as f64);
                    wall_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            let mut op_times = OpTimes::default();
            if args.profile_ops {
                exec.backend_mut().enable_op_profile();
                exec.forward();
                op_times = exec.backend_mut().take_op_times()?;
            }
            (
                exec.plan().arena_bytes + exec.backend().layout().bytes(),
                op_times,
                recorded.is_some(),
            )
        }
    };
    let vram = vram::read(&gpu)?;
    Ok(Measured {
        device: "cuda",
        name: gpu.info().name.clone(),
        step_ms: gpu_ms,
        wall_ms,
        planned_bytes: planned,
        process_vram_bytes: vram.process_bytes,
        device_used_bytes: Some(vram.used_bytes),
        cuda_graphs: replayed_graphs,
        op_times,
    })
}

/// Random images in the normalised range and random landmarks, from which the engine draws
/// training's own targets (sigma 2, as `cephalo train` by default): the loss then behaves as in
/// training, most pixels near 0.
pub fn synthetic_batch(graph: &crate::graph::Graph, rng: &mut ChaCha8Rng) -> Batch {
    let input = graph.input_shape();
    let out = graph.output_shape();
    let images: Vec<f32> = (0..input.len()).map(|_| rng.random_range(-2.0..2.0)).collect();
    let heatmap_points: Vec<[f64; 2]> = (0..out.n * out.c)
        .map(|_| [rng.random_range(0.0..out.w as f64), rng.random_range(0.0..out.h as f64)])
        .collect();
    // The batch also records the landmarks in network pixels.
    let stride = input.h / out.h;
    let points = heatmap_points
        .chunks(out.c)
        .map(|pts| pts.iter().map(|&p| heatmap_to_image(p, stride)).collect())
        .collect();
    Batch {
        images,
        heatmap_points,
        heatmap_size: [out.h, out.w],
        sigma: 2.0,
        points,
        affines: vec![Affine::IDENTITY; input.n],
        indices: (0..input.n).collect(),
    }
}

fn print_report(r: &Report) {
    println!(
        "{} {:?} {} at {}x{} batch {} on {}: {:.2} ms/step (median of {}, min {:.2}, max {:.2}; wall {:.2}), \
         {:.1} images/s",
        r.tool,
        r.mode,
        r.model,
        r.image_size[0],
        r.image_size[1],
        r.batch_size,
        r.gpu,
        r.step_ms.median_ms,
        r.steps,
        r.step_ms.min_ms,
        r.step_ms.max_ms,
        r.wall_ms.median_ms,
        r.images_per_s
    );
    if r.cuda_graphs {
        println!("replayed from CUDA graphs (--cuda-graphs)");
    }
    if r.device == "cpu" {
        println!(
            "convolutions: {:.1} GFLOP/s over the whole step (compare with the cores' FMA peak, e.g. \
             `cargo bench --bench cpu_inference`)",
            r.conv_tflops * 1e3
        );
        println!("memory: planned {}", human_bytes(r.planned_bytes as u64));
    } else {
        println!(
            "convolutions: {:.1} TFLOP/s over the whole step (compare with the GPU's fp16 peak, e.g. from \
             benches/device_peaks.py)",
            r.conv_tflops
        );
        println!(
            "memory: planned {}, this process {} (NVML), device used {}",
            human_bytes(r.planned_bytes as u64),
            r.process_vram_bytes.map(human_bytes).unwrap_or_else(|| "n/a".into()),
            r.device_used_bytes.map(human_bytes).unwrap_or_else(|| "n/a".into())
        );
    }
    if !r.op_times_ms.is_empty() {
        let total: f64 = r.op_times_ms.iter().map(|t| t.2).sum();
        println!("{:<26} {:>8} {:>10} {:>7}", "op", "calls", "ms", "share");
        for (kind, n, ms) in &r.op_times_ms {
            println!("{kind:<26} {n:>8} {ms:>10.3} {:>6.1}%", 100.0 * ms / total);
        }
        println!("{:<26} {:>8} {total:>10.3}", "total (profiled step)", "");
        println!("the {} slowest ops:", r.slowest_ops_ms.len());
        println!("{:<26} {:<48} {:>9} {:>7}", "op", "node (output shape)", "ms", "share");
        for (kind, node, ms) in &r.slowest_ops_ms {
            println!("{kind:<26} {node:<48} {ms:>9.4} {:>6.2}%", 100.0 * ms / total);
        }
    }
}
