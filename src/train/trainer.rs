//! `cephalo train`: the training loop.
//!
//! One step: load a batch (worker threads prepare the next ones meanwhile), forward, the heatmap
//! loss and its gradient in one pass, backward, then AdamW on every trainable tensor with the
//! learning rate of the warmup + cosine-restarts schedule. Each epoch ends with validation (DARK
//! decoding, landmarks mapped back to original pixels, MRE/SD/SDR), logs (progress bar, console,
//! TensorBoard, CSV), `checkpoint_last` and, on a better validation MRE, `checkpoint_best`.
//!
//! The step runs on the GPU (fp16 with fp32 master weights and dynamic loss scaling) or on the
//! CPU (f32), see [`Engine`]; everything around it is shared.
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, Meta};
use crate::data::geometry::ImageSize;
use crate::data::loader::{default_workers, Batch, Loader, LoaderConfig};
use crate::data::{Dataset, DatasetOptions, Sample, Split};
use crate::device::Device;
use crate::eval::inference::metrics_of;
use crate::eval::metrics::{ErrorStats, MetricsReport};
use crate::gpu::memory::human_bytes;
use crate::gpu::Gpu;
use crate::model::ModelConfig;
use crate::refine::training::RefineTraining;
use crate::refine::PatchSpec;
use crate::train::args::{TrainArgs, DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR};
use crate::train::cuda_engine::{check_fits, CudaEngine};
use crate::train::engine::{CpuEngine, Engine};
use crate::train::loss::HeatmapLoss;
use crate::train::schedule::WarmupCosineRestarts;
use crate::train::step::StepParams;
use crate::train::tensorboard::EventWriter;

/// Heatmaps are 1/4 of the input for every model.
pub const HEATMAP_STRIDE: usize = 4;

/// What a checkpoint records besides tensors: enough to rebuild the model, decode its heatmaps,
/// and continue the run exactly where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub model: ModelConfig,
    pub landmarks: Vec<String>,
    pub heatmap_stride: usize,
    pub sigma: f64,
    /// Epochs finished (the next epoch to run), and batches done in the current one (non-zero
    /// only after an interrupted epoch).
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Optimizer steps taken: AdamW's t and the schedule's iteration.
    pub step: u64,
    pub epochs: usize,
    pub schedule: WarmupCosineRestarts,
    pub weight_decay: f32,
    pub seed: u64,
    /// Best validation MRE (mm) so far; the training loss when the dataset has no valid split.
    pub best_metric: Option<f64>,
    /// A hash of the training samples and landmark symbols: resuming on other data is allowed
    /// (fine-tuning) but is reported.
    pub dataset_fingerprint: String,
    /// The patches of a refinement-stage model; `None` for a global model.
    pub patch: Option<PatchSpec>,
    /// The running totals of an interrupted epoch, so that once resumed its logged loss and speed
    /// cover all its batches, not only those after the resume.
    pub partial: PartialEpoch,
}

/// What the batches of an epoch trained so far added up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub loss_sum: f64,
    pub images: usize,
    pub seconds: f64,
    pub waiting_s: f64,
    pub steps_s: f64,
}

impl TrainState {
    /// The checkpoint metadata: the model part in `Meta`'s own fields, the schedule's position
    /// in `scheduler`, the seed in `rng`. (The CPU trains in f32: no loss scaler to store.)
    pub fn to_meta(&self) -> Meta {
        let mut meta = Meta::new(
            self.model.clone(),
            self.landmarks.clone(),
            self.heatmap_stride,
            self.sigma as f32,
        );
        meta.epoch = self.epoch as u64;
        meta.step = self.step;
        meta.scheduler = serde_json::json!({
            "schedule": self.schedule,
            "epochs": self.epochs,
            "batch_in_epoch": self.batch_in_epoch,
            "weight_decay": self.weight_decay,
            "partial_epoch": self.partial,
        });
        meta.rng = serde_json::json!({ "seed": self.seed });
        meta.best_metric = self.best_metric;
        meta.dataset_fingerprint = Some(self.dataset_fingerprint.clone());
        meta.refiner = self.patch;
        meta
    }

    pub fn from_meta(meta: &Meta, path: &Path) -> Result<TrainState> {
        let bad = || {
            format!(
                "{}: the checkpoint holds no training state to resume from",
                path.display()
            )
        };
        let sched = &meta.scheduler;
        Ok(TrainState {
            model: meta.model.clone(),
            landmarks: meta.landmarks.clone(),
            heatmap_stride: meta.heatmap_stride,
            sigma: meta.heatmap_sigma as f64,
            epoch: meta.epoch as usize,
            batch_in_epoch: sched["batch_in_epoch"].as_u64().with_context(bad)? as usize,
            step: meta.step,
            epochs: sched["epochs"].as_u64().with_context(bad)? as usize,
            schedule: serde_json::from_value(sched["schedule"].clone()).with_context(bad)?,
            weight_decay: sched["weight_decay"].as_f64().with_context(bad)? as f32,
            seed: meta.rng["seed"].as_u64().with_context(bad)?,
            best_metric: meta.best_metric,
            dataset_fingerprint: meta.dataset_fingerprint.clone().unwrap_or_default(),
            patch: meta.refiner,
            // Absent in checkpoints written before it was recorded, and after a whole epoch.
            partial: serde_json::from_value(sched["partial_epoch"].clone()).unwrap_or_default(),
        })
    }
}

pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let device = args.device.resolve()?;
    match device {
        Device::Cpu if args.mixed_precision == Some(true) => {
            eprintln!("note: --mixed-precision applies to GPU training; the CPU trains in f32")
        }
        Device::Cpu if args.cuda_graphs => {
            eprintln!("note: --cuda-graphs applies to GPU training; the CPU runs op by op")
        }
        Device::Cuda(_) if args.mixed_precision == Some(false) => bail!(
            "--mixed-precision false: GPU training runs in fp16 with fp32 master weights only; use --device cpu for \
             f32 training"
        ),
        _ => {}
    }
    let mut args = args.clone();
    if args.demo {
        // Kept beside the checkpoints, so the demo model can be evaluated and used for predict.
        let demo_dir = args.checkpoint_dir.join("demo-phantoms");
        apply_demo_settings(&mut args, &demo_dir)?;
    }
    let dataset_path = args
        .dataset_path
        .clone()
        .context("--dataset-path is required (or use --demo)")?;
    let dataset = Dataset::open(
        &dataset_path,
        &DatasetOptions {
            annotator: args.annotator,
        },
    )?;
    let code = Trainer::new(&args, &dataset, device)?.train()?;
    if args.demo && code == ExitCode::SUCCESS {
        print_demo_next_steps(&args, &dataset_path);
    }
    Ok(code)
}

/// After `train --demo`: the commands that use the model just trained.
fn print_demo_next_steps(args: &TrainArgs, data: &Path) {
    let best = args.checkpoint_dir.join("checkpoint_best.safetensors");
    println!("next: measure the demo model on the phantoms it has not seen, then predict on some of them:");
    println!(
        "  cephalo eval --checkpoint {} --dataset-path {} --split test",
        best.display(),
        data.display()
    );
    println!(
        "  cephalo predict --checkpoint {} --out demo-predictions {}",
        best.display(),
        data.join("images").display()
    );
    println!("then train on real data: cephalo train --dataset-path <folder> (see `cephalo data check`)");
}

/// `--demo`: phantom radiographs, a narrow HRNet at 128x128, a higher learning rate and short
/// warmup, so loss and MRE visibly fall within minutes on two CPU cores.
fn apply_demo_settings(args: &mut TrainArgs, dir: &Path) -> Result<()> {
    eprintln!("demo: drawing 96 phantom radiographs (256x256) into {}", dir.display());
    crate::data::phantom::write_dataset(dir, 96, args.seed, 256, 256)?;
    args.dataset_path = Some(dir.to_path_buf());
    args.model = "hrnet-w8".into();
    args.image_size = vec![128, 128];
    args.batch_size.get_or_insert(4);
    let epochs = *args.epochs.get_or_insert(12);
    args.lr.get_or_insert(2e-3);
    // One warmup epoch, or a fifth of a shorter demo (`--demo --epochs 1` must just work).
    args.schedule
        .warmup_epochs
        .get_or_insert((epochs as f64 / 5.0).min(1.0));
    Ok(())
}

/// What one epoch of training did, and where its time went: blocked on the data loader, or in
/// the training steps (which on the GPU include waiting for the device).
struct EpochRun {
    loss: f64,
    /// Over the whole epoch, the part before an interrupt included.
    totals: PartialEpoch,
}

/// The share of an epoch spent waiting for batches above which training is called loader-bound.
const LOADER_BOUND: f64 = 0.2;

struct Trainer {
    state: TrainState,
    engine: Engine,
    train_loader: Loader,
    valid_loader: Option<Loader>,
    loss: HeatmapLoss,
    checkpoint_dir: PathBuf,
    events: EventWriter,
    csv_path: PathBuf,
    stop: Arc<AtomicBool>,
    stop_after: Option<usize>,
    /// The refinement stage's patches and validation centres; `None` for a global model.
    refine: Option<RefineTraining>,
    interrupt_after_step: Option<u64>,
}

impl Trainer {
    fn new(args: &TrainArgs, dataset: &Dataset, device: Device) -> Result<Trainer> {
        let symbols = dataset.landmarks().symbols.clone();
        let train_samples = dataset.require_split(Split::Train)?.to_vec();
        let valid_samples = dataset
            .split(Split::Valid)
            .filter(|s| !s.is_empty())
            .map(<[Sample]>::to_vec);
        if valid_samples.is_none() {
            eprintln!(
                "warning: {} has no valid split: no validation, checkpoint_best follows the training loss",
                dataset.root.display()
            );
        }
        let fingerprint = fingerprint(&train_samples, &symbols);
        let resumed = match &args.resume {
            Some(path) => Some((path.clone(), checkpoint::load(path)?)),
            None => None,
        };
        let stored: Option<TrainState> = match &resumed {
            Some((path, ck)) => Some(TrainState::from_meta(&ck.meta, path)?),
            None => None,
        };
        let fine_tune =
            stored.is_some() && (args.lr.is_some() || args.epochs.is_some() || args.schedule.warmup_epochs.is_some());

        // A resumed run keeps its batch size (the schedule's steps per epoch depend on it).
        let batch_size = args
            .batch_size
            .or(stored.as_ref().map(|s| s.model.batch_size))
            .unwrap_or(DEFAULT_BATCH_SIZE);
        let refine = RefineTraining::from_args(
            &args.refine,
            stored
                .as_ref()
                .zip(resumed.as_ref())
                .map(|(s, (path, _))| (s.patch, path.as_path())),
            &train_samples,
            valid_samples.as_deref(),
            &symbols,
            device,
            args.workers.unwrap_or_else(default_workers),
        )?;
        let [h, w]: [usize; 2] = match &refine {
            Some(r) => [r.spec.size; 2],
            None => args
                .image_size
                .clone()
                .try_into()
                .map_err(|_| anyhow::anyhow!("--image-size takes H W"))?,
        };
        let model = match &stored {
            Some(s) => {
                let wanted = crate::model::resolve(&args.model).map(|(name, _)| name).unwrap_or("");
                if args.model != "hrnet" && wanted != s.model.model {
                    bail!(
                        "the checkpoint holds a {} but --model says {}",
                        s.model.model,
                        args.model
                    );
                }
                if [h, w] != [768, 768] && [h, w] != s.model.image_size {
                    bail!(
                        "the checkpoint was trained at {}x{} but --image-size says {h}x{w}",
                        s.model.image_size[0],
                        s.model.image_size[1]
                    );
                }
                if s.landmarks != symbols {
                    bail!(
                        "the checkpoint predicts landmarks [{}] but the dataset has [{}]",
                        s.landmarks.join(" "),
                        symbols.join(" ")
                    );
                }
                if let Some(c) = args.in_channels.filter(|&c| c as usize != s.model.in_channels) {
                    bail!(
                        "--in-channels {c}: the checkpoint's network reads {} channel(s); a resumed run keeps it",
                        s.model.in_channels
                    );
                }
                ModelConfig {
                    batch_size,
                    ..s.model.clone()
                }
            }
            None => {
                let channels = args.in_channels.unwrap_or(1) as usize;
                ModelConfig::new(&args.model, channels, symbols.len(), [h, w], batch_size)?
            }
        };
        let image_size = ImageSize {
            height: model.image_size[0],
            width: model.image_size[1],
        };
        let sigma = stored.as_ref().map_or(args.sigma, |s| s.sigma);
        let seed = match (&stored, fine_tune) {
            (Some(s), false) => s.seed,
            _ => args.seed,
        };

        let workers = args.workers.unwrap_or_else(default_workers);
        let mut train_cfg = LoaderConfig::new(image_size);
        train_cfg.channels = model.in_channels;
        train_cfg.stride = HEATMAP_STRIDE;
        train_cfg.sigma = sigma;
        train_cfg.batch_size = batch_size;
        train_cfg.seed = seed;
        train_cfg.workers = workers;
        train_cfg.prefetch = 2 * workers.max(1);
        train_cfg.augment = args.augment.to_config()?;
        if train_samples.len() < batch_size {
            bail!(
                "the train split has {} images, fewer than --batch-size {batch_size}",
                train_samples.len(),
            );
        }
        let train_loader = match &refine {
            Some(r) => r.train_loader(train_samples, train_cfg.clone())?,
            None => Loader::new(train_samples, train_cfg.clone())?,
        };
        let valid_loader = match valid_samples {
            Some(samples) => {
                let cfg = LoaderConfig {
                    augment: None,
                    shuffle: false,
                    drop_last: false,
                    ..train_cfg
                };
                Some(match &refine {
                    Some(r) => r.valid_loader(samples, cfg)?,
                    None => Loader::new(samples, cfg)?,
                })
            }
            None => None,
        };
        if let Some(r) = &refine {
            eprintln!("{}", r.describe());
        }

        let graph = model.build()?;
        let loss = HeatmapLoss::from_args(&args.loss, &symbols)?;
        let mut engine = match device {
            Device::Cpu => Engine::Cpu(Box::new(CpuEngine::new(graph, seed))),
            Device::Cuda(n) => {
                let gpu = Arc::new(Gpu::open(n)?);
                let plan = check_fits(&gpu, &graph, model.batch_size, model.image_size)?;
                eprintln!(
                    "training on {} (fp16, fp32 master weights): about {} of GPU memory planned",
                    gpu.info().name,
                    human_bytes(plan.total() as u64)
                );
                let mut engine = CudaEngine::new(gpu, graph, seed, &loss)?;
                engine.use_cuda_graphs(args.cuda_graphs);
                Engine::Cuda(Box::new(engine))
            }
        };

        if let Some(path) = &args.pretrained {
            let (ck, report) = crate::pretrained::starting_checkpoint(path, engine.graph(), &model, seed)?;
            eprintln!("starting from {} ({}):\n{report}", path.display(), report.file_kind);
            engine
                .load_weights(&ck)
                .with_context(|| format!("loading --pretrained {}", path.display()))?;
        }

        let iters = train_loader.batches_per_epoch() as u64;
        let epochs = args
            .epochs
            .or(stored.as_ref().filter(|_| !fine_tune).map(|s| s.epochs))
            .unwrap_or(DEFAULT_EPOCHS);
        let lr = args.lr.unwrap_or(DEFAULT_LR);
        let mut state = TrainState {
            model,
            landmarks: symbols,
            heatmap_stride: HEATMAP_STRIDE,
            sigma,
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            epochs,
            schedule: match (&stored, fine_tune) {
                // Continuing: the stored schedule is used as is (replaced below).
                (Some(s), false) => s.schedule.clone(),
                _ => args.schedule.build(lr, epochs as f64, iters)?,
            },
            weight_decay: args.weight_decay,
            seed,
            best_metric: None,
            dataset_fingerprint: fingerprint.clone(),
            patch: refine.as_ref().map(|r| r.spec),
            partial: PartialEpoch::default(),
        };

        if let (Some((path, ck)), Some(stored)) = (&resumed, stored) {
            engine
                .load_weights(ck)
                .with_context(|| format!("resuming from {}", path.display()))?;
            if fine_tune {
                eprintln!(
                    "fine-tuning from {}: its weights, a new schedule (lr {lr:e}, {} warmup epochs, {}) and fresh \
                     optimizer state",
                    path.display(),
                    state.schedule.warmup_epochs,
                    count(epochs, "epoch")
                );
            } else {
                for (i, (id, _)) in engine.trainable().to_vec().into_iter().enumerate() {
                    let p = &engine.graph().params[id.0];
                    let (name, len) = (p.name.clone(), p.len());
                    let m = moment(ck, path, &format!("{}{name}", checkpoint::MOMENT1_PREFIX), len)?;
                    let v = moment(ck, path, &format!("{}{name}", checkpoint::MOMENT2_PREFIX), len)?;
                    engine.set_moments(i, m, v)?;
                }
                engine.restore_loss_scaler(&ck.meta.loss_scaler)?;
                if stored.epoch >= stored.epochs {
                    eprintln!(
                        "{} is a finished run ({}); nothing is left to train. To train it further, fine-tune \
                         with --epochs N (a new schedule)",
                        path.display(),
                        count(stored.epochs, "epoch")
                    );
                } else {
                    eprintln!(
                        "resuming {} at epoch {} of {} (step {}, batch size {batch_size})",
                        path.display(),
                        stored.epoch + 1,
                        stored.epochs,
                        stored.step,
                    );
                }
                state = stored;
                state.model.batch_size = batch_size;
                if state.schedule.iters_per_epoch != iters {
                    bail!(
                        "the checkpoint's schedule has {} steps per epoch, this run {iters} (another batch size or \
                         dataset?): give --lr/--epochs to fine-tune with a new schedule instead",
                        state.schedule.iters_per_epoch
                    );
                }
            }
            if state.dataset_fingerprint != fingerprint {
                eprintln!(
                    "note: the checkpoint was trained on other data than {}",
                    train_loader_root(&train_loader)
                );
                state.dataset_fingerprint = fingerprint;
            }
        }

        // Fail now, not after the first epoch, if checkpoints cannot be written.
        std::fs::create_dir_all(&args.checkpoint_dir)
            .with_context(|| format!("creating --checkpoint-dir {}", args.checkpoint_dir.display()))?;
        checkpoint::remove_stale_temporaries(&args.checkpoint_dir);
        let csv_path = args.log_dir.join("train_log.csv");
        if resumed.is_some() && !fine_tune {
            // Epochs (and steps) logged after the checkpoint was written run again now: drop
            // their first, lost, records so the logs read as one run.
            truncate_csv_log(&csv_path, state.epoch)?;
            crate::train::tensorboard::drop_events_after(&args.log_dir, state.step)?;
        }
        let events = EventWriter::create(&args.log_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // First Ctrl-C: finish the step, save checkpoint_last, exit cleanly. Second: exit now.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing this step and saving checkpoint_last (Ctrl-C again to quit now)");
        });

        Ok(Trainer {
            state,
            engine,
            train_loader,
            valid_loader,
            loss,
            checkpoint_dir: args.checkpoint_dir.clone(),
            events,
            csv_path,
            stop,
            stop_after: args.stop_after,
            refine,
            interrupt_after_step: args.interrupt_after_step,
        })
    }

    fn train(mut self) -> Result<ExitCode> {
        let s = &self.state;
        println!(
            "training {} ({:.2} M parameters) at {}x{}, batch {}, {} train images, {}, lr {:e}, loss {:?}",
            s.model.model,
            self.engine.graph().param_count() as f64 / 1e6,
            s.model.image_size[0],
            s.model.image_size[1],
            s.model.batch_size,
            self.train_loader.samples().len(),
            count(s.epochs, "epoch"),
            s.schedule.lr_max,
            self.loss.kind,
        );
        let mut run_epochs = 0;
        while self.state.epoch < self.state.epochs {
            if self.stop_after.is_some_and(|n| run_epochs >= n) {
                let path = self.checkpoint_dir.join("checkpoint_last.safetensors");
                println!(
                    "stopping after {} as asked; continue with --resume {}",
                    count(run_epochs, "epoch"),
                    path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            run_epochs += 1;
            let epoch_run = self.train_epoch()?;
            let finished = self.state.batch_in_epoch >= self.train_loader.batches_per_epoch();
            if self.stop.load(Ordering::SeqCst) && !finished {
                self.state.partial = epoch_run.totals.clone();
                let path = self.save("checkpoint_last")?;
                println!(
                    "saved {} (epoch {} interrupted); resume with --resume {}",
                    path.display(),
                    self.state.epoch + 1,
                    path.display()
                );
                return Ok(ExitCode::from(130));
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.partial = PartialEpoch::default();
            let report = self.validate()?;
            self.end_epoch(&epoch_run, report.as_ref())?;
            if self.stop.load(Ordering::SeqCst) {
                // Interrupted after the epoch's last step: it is complete and saved as such.
                let path = self.checkpoint_dir.join("checkpoint_last.safetensors");
                println!(
                    "saved {} (epoch {} complete); resume with --resume {}",
                    path.display(),
                    self.state.epoch,
                    path.display()
                );
                return Ok(ExitCode::from(130));
            }
        }
        println!(
            "done: {}; best validation MRE {}",
            count(self.state.epochs, "epoch"),
            fmt_mm(self.state.best_metric)
        );
        Ok(ExitCode::SUCCESS)
    }

    /// Runs the rest of the current epoch: its mean training loss, the images seen and where the
    /// time went.
    fn train_epoch(&mut self) -> Result<EpochRun> {
        let epoch = self.state.epoch;
        let total = self.train_loader.batches_per_epoch();
        let bar = ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
                .expect("valid progress template"),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, self.state.epochs));
        bar.set_position(self.state.batch_in_epoch as u64);
        // An epoch resumed after an interrupt continues the totals of its first part.
        let before = self.state.partial.clone();
        let (mut loss_sum, mut images) = (before.loss_sum, before.images);
        let (mut waiting_s, mut steps_s) = (before.waiting_s, before.steps_s);
        let started = Instant::now();
        let mut batches = self.train_loader.epoch(epoch);
        if self.state.batch_in_epoch > 0 {
            // Resuming mid-epoch: the batches already trained on are built and dropped, so the
            // rest come out exactly as in an uninterrupted run.
            batches.nth(self.state.batch_in_epoch - 1);
        }
        // The following batch, taken from the loader only when already built: the engine uploads
        // its images while the GPU works on the current step.
        let mut ready: Option<Result<Batch>> = None;
        loop {
            // Time blocked on the loader's workers: zero while they keep ahead of the steps.
            let wait_started = Instant::now();
            let Some(batch) = ready.take().or_else(|| batches.next()) else {
                break;
            };
            let wait_ms = wait_started.elapsed().as_secs_f64() * 1e3;
            waiting_s += wait_ms / 1e3;
            let batch = batch?;
            ready = batches.next_if_ready();
            let next = ready.as_ref().and_then(|r| r.as_ref().ok());
            let lr = self.state.schedule.lr_at(self.state.step);
            let step_started = Instant::now();
            let sp = StepParams {
                lr: lr as f32,
                weight_decay: self.state.weight_decay,
                t: self.state.step + 1 - self.engine.skipped_steps(),
            };
            let result = self.engine.step(&batch, next, &self.loss, sp).map_err(|e| {
                e.context(format!(
                    "training stopped; the last good checkpoint in {} is untouched. Try a lower --lr",
                    self.checkpoint_dir.display()
                ))
            })?;
            let loss = result.loss;
            if result.skipped {
                bar.println(format!(
                    "step {}: fp16 gradients overflowed, step skipped and the loss scale lowered",
                    self.state.step + 1
                ));
            }
            self.state.step += 1;
            self.state.batch_in_epoch += 1;
            loss_sum += loss;
            images += batch.len();
            let step_ms = step_started.elapsed().as_secs_f64() * 1e3;
            steps_s += step_ms / 1e3;
            let mut scalars = vec![
                ("train/loss", loss),
                ("train/lr", lr),
                ("train/step_ms", step_ms),
                ("train/loader_wait_ms", wait_ms),
            ];
            if self.state.step % 10 == 1 {
                scalars.extend(self.engine.log_scalars());
            }
            self.events.scalars(self.state.step, &scalars)?;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} lr {lr:.2e} {:.1} img/s {}",
                loss_sum / (self.state.batch_in_epoch as f64).max(1.0),
                (images - before.images) as f64 / started.elapsed().as_secs_f64(),
                self.engine.status()
            ));
            if self.interrupt_after_step == Some(self.state.step) {
                self.stop.store(true, Ordering::SeqCst);
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
        }
        bar.finish_and_clear();
        let batches = self.state.batch_in_epoch.max(1);
        Ok(EpochRun {
            loss: loss_sum / batches as f64,
            totals: PartialEpoch {
                loss_sum,
                images,
                seconds: before.seconds + started.elapsed().as_secs_f64(),
                waiting_s,
                steps_s,
            },
        })
    }

    /// Validation metrics with the current weights, or `None` without a valid split.
    fn validate(&mut self) -> Result<Option<MetricsReport>> {
        let Some(loader) = &self.valid_loader else {
            return Ok(None);
        };
        let mut predictions = self.engine.predict(loader, self.state.sigma)?;
        if let Some(refine) = &self.refine {
            predictions = refine.fold(&predictions);
        }
        Ok(Some(metrics_of(loader.samples(), &predictions, &self.state.landmarks)))
    }

    fn end_epoch(&mut self, run: &EpochRun, report: Option<&MetricsReport>) -> Result<()> {
        let epoch = self.state.epoch;
        let seconds = run.totals.seconds;
        let lr = self.state.schedule.lr_at(self.state.step.saturating_sub(1));
        let overall = report.map(|r| r.overall);
        let train_loss = run.loss;
        let images_per_s = run.totals.images as f64 / seconds.max(1e-9);
        let waiting = run.totals.waiting_s / seconds.max(1e-9);
        let mut line = format!(
            "epoch {epoch}/{}: train loss {train_loss:.5}, lr {lr:.3e}, {images_per_s:.1} img/s (the steps alone {:.1}, \
             {:.0} % of the epoch waiting for data)",
            self.state.epochs,
            run.totals.images as f64 / run.totals.steps_s.max(1e-9),
            100.0 * waiting
        );
        if let Some(o) = overall {
            line += &format!(
                ", valid MRE {:.3} ± {:.3} mm, SDR 2/2.5/3/4 mm {:.1}/{:.1}/{:.1}/{:.1} %",
                o.mre_mm, o.sd_mm, o.sdr_percent[0], o.sdr_percent[1], o.sdr_percent[2], o.sdr_percent[3]
            );
        }
        println!("{line}");
        if waiting > LOADER_BOUND && run.totals.images > 0 {
            println!(
                "  the data loader is the bottleneck: raise --workers (now {}) or train from downscaled copies \
                 made by `cephalo prepare`",
                self.train_loader.config().workers
            );
        }

        let step = self.state.step;
        let mut scalars = vec![
            ("epoch/train_loss", train_loss),
            ("epoch/images_per_s", images_per_s),
            (
                "epoch/step_images_per_s",
                run.totals.images as f64 / run.totals.steps_s.max(1e-9),
            ),
            ("epoch/loader_wait_fraction", waiting),
            ("epoch/seconds", seconds),
        ];
        if let Some(o) = overall {
            scalars.extend([
                ("val/mre_mm", o.mre_mm),
                ("val/sd_mm", o.sd_mm),
                ("val/sdr_2mm", o.sdr_percent[0]),
                ("val/sdr_2.5mm", o.sdr_percent[1]),
                ("val/sdr_3mm", o.sdr_percent[2]),
                ("val/sdr_4mm", o.sdr_percent[3]),
            ]);
        }
        self.events.scalars(step, &scalars)?;
        if let Some(r) = report {
            let tags: Vec<String> = r
                .per_landmark
                .iter()
                .map(|(s, _)| format!("val_landmark_mre_mm/{s}"))
                .collect();
            let values: Vec<(&str, f64)> = tags
                .iter()
                .zip(&r.per_landmark)
                .map(|(t, (_, st))| (t.as_str(), st.mre_mm))
                .collect();
            self.events.scalars(step, &values)?;
        }
        self.events.flush()?;
        self.append_csv(epoch, lr, train_loss, overall, images_per_s, seconds)?;

        // The best checkpoint follows validation MRE, or the training loss without a valid split.
        let metric = overall.map_or(train_loss, |o| o.mre_mm);
        let improved = metric.is_finite() && self.state.best_metric.is_none_or(|best| metric < best);
        if improved {
            self.state.best_metric = Some(metric);
        }
        // checkpoint_best first: a crash between the two writes then leaves checkpoint_last one
        // epoch behind (resuming redoes that epoch and rewrites the same best) instead of
        // recording a best whose weights were never written.
        if improved {
            let path = self.save("checkpoint_best")?;
            println!("  new best ({}): {}", fmt_mm(Some(metric)), path.display());
        }
        self.save("checkpoint_last")?;
        Ok(())
    }

    fn append_csv(
        &self,
        epoch: usize,
        lr: f64,
        train_loss: f64,
        overall: Option<ErrorStats>,
        images_per_s: f64,
        seconds: f64,
    ) -> Result<()> {
        let new = !self.csv_path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.csv_path)
            .with_context(|| format!("opening {}", self.csv_path.display()))?;
        let mut w = csv::Writer::from_writer(file);
        if new {
            w.write_record([
                "epoch",
                "step",
                "lr",
                "train_loss",
                "val_mre_mm",
                "val_sd_mm",
                "val_sdr_2mm",
                "val_sdr_2.5mm",
                "val_sdr_3mm",
                "val_sdr_4mm",
                "images_per_s",
                "epoch_seconds",
            ])?;
        }
        let o = overall.map(|o| (o.mre_mm, o.sd_mm, o.sdr_percent));
        let f = |v: Option<f64>| v.map(|x| format!("{x:.5}")).unwrap_or_default();
        w.write_record([
            epoch.to_string(),
            self.state.step.to_string(),
            format!("{lr:.6e}"),
            format!("{train_loss:.6}"),
            f(o.map(|o| o.0)),
            f(o.map(|o| o.1)),
            f(o.map(|o| o.2[0])),
            f(o.map(|o| o.2[1])),
            f(o.map(|o| o.2[2])),
            f(o.map(|o| o.2[3])),
            format!("{images_per_s:.2}"),
            format!("{seconds:.1}"),
        ])?;
        w.flush()
            .with_context(|| format!("writing {}", self.csv_path.display()))?;
        Ok(())
    }

    /// Writes `<checkpoint_dir>/<name>.safetensors` atomically.
    fn save(&self, name: &str) -> Result<PathBuf> {
        let mut meta = self.state.to_meta();
        meta.loss_scaler = self.engine.loss_scaler_state();
        let ck = self.engine.checkpoint(meta)?;
        let path = self.checkpoint_dir.join(format!("{name}.safetensors"));
        checkpoint::save(&path, &ck)?;
        Ok(path)
    }
}

/// An optimizer moment of `len` values from a checkpoint.
fn moment(ck: &Checkpoint, path: &Path, name: &str, len: usize) -> Result<Vec<f32>> {
    match ck.tensors.get(name) {
        Some(t) if t.data.len() == len => Ok(t.data.clone()),
        Some(t) => bail!(
            "{}: {name} has {} values, the model needs {len}",
            path.display(),
            t.data.len()
        ),
        None => bail!(
            "{}: no optimizer state ({name}): it holds weights only; fine-tune from it with --lr/--epochs instead",
            path.display()
        ),
    }
}

fn train_loader_root(loader: &Loader) -> String {
    loader
        .samples()
        .first()
        .and_then(|s| s.image_path.parent())
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// FNV-1a over the sorted sample ids and the symbols.
fn fingerprint(samples: &[Sample], symbols: &[String]) -> String {
    let mut ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in ids.iter().copied().chain(symbols.iter().map(String::as_str)) {
        for b in part.bytes().chain([0u8]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// "1 epoch", "3 epochs".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Keeps the header and the rows of epochs up to `epoch` of a `train_log.csv` (rewritten
/// atomically, and only when a later row has to go).
fn truncate_csv_log(path: &Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let rows: Vec<&str> = lines.collect();
    let keep: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|row| {
            let first = row.split(',').next().unwrap_or("");
            first.trim().parse::<usize>().is_ok_and(|e| e <= epoch)
        })
        .collect();
    if keep.len() == rows.len() {
        return Ok(());
    }
    let mut out = String::with_capacity(text.len());
    for line in std::iter::once(header).chain(keep) {
        out.push_str(line);
        out.push('\n');
    }
    checkpoint::write_atomically(path, |f| Ok(std::io::Write::write_all(f, out.as_bytes())?))
}

fn fmt_mm(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3} mm")).unwrap_or_else(|| "n/a".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[test]
    fn a_one_epoch_demo_has_a_schedule_and_keeps_its_phantoms() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        let mut args =
            Cli::parse_from(["x", "--demo", "--epochs", "1", "--checkpoint-dir", ck.to_str().unwrap()]).train;
        let phantoms = args.checkpoint_dir.join("demo-phantoms");
        apply_demo_settings(&mut args, &phantoms).unwrap();
        let epochs = args.epochs.unwrap() as f64;
        let schedule = args.schedule.build(args.lr.unwrap(), epochs, 10).unwrap();
        assert!(schedule.warmup_epochs < epochs && schedule.t0 > 0.0);
        // The phantoms stay for eval and predict after the demo.
        let dataset = Dataset::open(&phantoms, &DatasetOptions::default()).unwrap();
        assert!(dataset.split(Split::Test).is_some_and(|s| !s.is_empty()));
        // The usual demo keeps its one warmup epoch.
        let mut usual = Cli::parse_from(["x", "--demo"]).train;
        apply_demo_settings(&mut usual, &dir.path().join("usual")).unwrap();
        assert_eq!(usual.schedule.warmup_epochs, Some(1.0));
    }
}
