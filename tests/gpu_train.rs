//! GPU training end to end on generated phantoms: the loss and the validation MRE fall in fp16
//! with loss scaling; an interrupted run resumes on the GPU to the same step, bit for bit; GPU
//! inference (`eval --device cuda`) agrees with the CPU on the same checkpoint.
use std::path::Path;
use std::sync::Arc;

use cephalo::backend::CudaBackend;
use cephalo::bench::synthetic_batch;
use cephalo::checkpoint::{Checkpoint, Meta};
use cephalo::data::geometry::ImageSize;
use cephalo::data::loader::{Batch, Loader, LoaderConfig};
use cephalo::data::{Dataset, DatasetOptions, Split};
use cephalo::eval::inference::predict_loader;
use cephalo::gpu::Gpu;
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::model::ModelConfig;
use cephalo::train::cuda_engine::CudaEngine;
use cephalo::train::landmark_weights::LandmarkWeightsArg;
use cephalo::train::loss::{HeatmapLoss, LossArgs, LossKind};
use cephalo::train::step::StepParams;
use rand::SeedableRng;

mod cli_support;

use cli_support::csv_column;

/// The training run of these tests: 128x128 on `device` with two loader workers, batch 4, seed 7,
/// flags spelt with underscores.
fn train(dir: &Path, data: &Path, device: &str, extra: &[&str]) {
    let run = cli_support::Train {
        underscores: true,
        model: "hrnet-w8",
        size: "128",
        device,
        workers: "2",
    };
    run.run_seeded(dir, data, extra);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_lowers_loss_and_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 64, 3, 256);
    train(
        dir.path(),
        &data,
        "cuda",
        &["--epochs", "8", "--lr", "2e-3", "--warmup-epochs", "1"],
    );
    let log = dir.path().join("logs/train_log.csv");
    let loss = csv_column(&log, "train_loss");
    let mre = csv_column(&log, "val_mre_mm");
    println!("loss {loss:?}\nMRE {mre:?}");
    assert_eq!(loss.len(), 8);
    assert!(loss.iter().all(|l| l.is_finite()));
    assert!(loss[7] < 0.7 * loss[0], "training loss should fall: {loss:?}");
    let best_late = mre[4..].iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(best_late < 0.6 * mre[0], "validation MRE should fall: {mre:?}");
    let ck = cephalo::checkpoint::load(&dir.path().join("ck/checkpoint_last.safetensors")).unwrap();
    assert!(
        ck.meta.loss_scaler.get("scale").is_some(),
        "the loss scaler is checkpointed"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_resume_is_bitwise_identical_to_an_uninterrupted_run() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(data_dir.path(), 16, 5, 160);
    let args = ["--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "1"];

    let straight = tempfile::tempdir().unwrap();
    train(straight.path(), &data, "cuda", &args);

    let split = tempfile::tempdir().unwrap();
    let mut first_half = args.to_vec();
    first_half.extend(["--stop-after", "1"]);
    train(split.path(), &data, "cuda", &first_half);
    let last = split.path().join("ck/checkpoint_last.safetensors");
    train(split.path(), &data, "cuda", &["--resume", last.to_str().unwrap()]);

    let a = cephalo::checkpoint::load(&straight.path().join("ck/checkpoint_last.safetensors")).unwrap();
    let b = cephalo::checkpoint::load(&last).unwrap();
    assert_eq!(a.meta.step, b.meta.step);
    assert_same_tensors(&a, &b, "between the straight and the resumed GPU run");
}

/// The same checkpoint loaded for inference on the CPU (f32) and the GPU (fp16, BN folded)
/// gives the same heatmaps. (Comparing MREs of a barely trained model would not work: its flat
/// heatmaps make the decoded peaks jump on tiny differences.)
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_inference_of_a_checkpoint_matches_the_cpu() {
    use cephalo::device::Device;
    use cephalo::eval::command::load_model;
    let dir = tempfile::tempdir().unwrap();
    let (_, ck) = cli_support::trained_checkpoint(dir.path(), 12, 9);
    let mut cpu = load_model(&ck, 2, Device::Cpu).unwrap();
    let mut gpu = load_model(&ck, 2, Device::Cuda(0)).unwrap();
    let n = cpu.exec.graph().input_shape().len();
    let input: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let want = cpu.exec.predict(&input).unwrap();
    let got = gpu.exec.predict(&input).unwrap();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(&want) {
        assert!(g.is_finite());
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    let e = (num / den).sqrt();
    println!("heatmaps relative error {e:.2e}");
    assert!(e < 2e-2, "GPU heatmaps differ from the CPU's: relative error {e:.3e}");
}

/// Uploading the next batch's images during a step (`step(batch, Some(next))`, as training does
/// whenever the loader already has that batch) changes no bit: four steps with and without staging
/// end in the same weights and moments, and so does a stale staging (the engine staged one batch and
/// is then handed another, which it must upload itself).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_staging_the_next_batch_changes_no_bit() {
    let (model, symbols, loss) = engine_setup(5);
    let (gpu, batches) = gpu_and_batches(&model, 3, 4);
    let run = |plan: &[(usize, Option<usize>)]| -> Checkpoint {
        let mut engine = CudaEngine::new(gpu.clone(), model.build().unwrap(), 1, &loss).unwrap();
        for (t, &(b, next)) in plan.iter().enumerate() {
            let sp = StepParams {
                lr: 1e-3,
                weight_decay: 1e-4,
                t: t as u64 + 1,
            };
            engine.step(&batches[b], next.map(|n| &batches[n]), &loss, sp).unwrap();
        }
        engine
            .checkpoint(Meta::new(model.clone(), symbols.clone(), 4, 2.0))
            .unwrap()
    };
    let plain = run(&[(0, None), (1, None), (2, None), (3, None)]);
    let staged = run(&[(0, Some(1)), (1, Some(2)), (2, Some(3)), (3, None)]);
    assert_same_tensors(&plain, &staged, "with the next batch staged");
    let reordered = run(&[(0, None), (1, None), (3, None), (2, None)]);
    let stale = run(&[(0, Some(1)), (1, Some(2)), (3, None), (2, None)]);
    assert_same_tensors(&reordered, &stale, "after a stale staging");
    // The test can fail: other batches give other weights.
    let differs = plain.tensors.iter().any(|(name, t)| {
        let u = &reordered.tensors[name];
        t.data.iter().zip(&u.data).any(|(x, y)| x.to_bits() != y.to_bits())
    });
    assert!(differs, "the batch order changed nothing: the comparison is blind");
}

/// Validation runs in the training executor's memory (its activations inside the training arena,
/// its weights the training weights). Its predictions must equal those of a separately allocated
/// inference executor loaded from a checkpoint of the same weights, and training after it must
/// go on exactly as if it had not run: validation overwrote the next batch's staged images, so
/// the step after it must upload them again.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_validation_in_the_training_memory_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    cephalo::data::phantom::write_dataset(dir.path(), 12, 4, 160, 160).unwrap();
    let ds = Dataset::open(dir.path(), &DatasetOptions::default()).unwrap();
    let samples = ds.split(Split::Train).unwrap().to_vec();
    let k = samples[0].landmarks.len();
    let loader = Loader::new(
        samples,
        LoaderConfig {
            batch_size: 2,
            augment: None,
            shuffle: false,
            drop_last: false,
            workers: 0,
            ..LoaderConfig::new(ImageSize {
                height: 128,
                width: 128,
            })
        },
    )
    .unwrap();
    let (model, symbols, loss) = engine_setup(k);
    let (gpu, batches) = gpu_and_batches(&model, 5, 3);
    let sp = |t: u64| StepParams {
        lr: 1e-3,
        weight_decay: 1e-4,
        t,
    };
    let meta = || Meta::new(model.clone(), symbols.clone(), 4, 2.0);

    let mut engine = CudaEngine::new(gpu.clone(), model.build().unwrap(), 1, &loss).unwrap();
    engine.step(&batches[0], Some(&batches[1]), &loss, sp(1)).unwrap();
    engine.step(&batches[1], Some(&batches[2]), &loss, sp(2)).unwrap();
    let validated = engine.predict(&loader, 2.0).unwrap();

    // The same weights in an inference executor of its own.
    let ck: Checkpoint = engine.checkpoint(meta()).unwrap();
    let options = PlanOptions::new(Mode::Eval, DtypeSizes::F16);
    let mut separate = Executor::new(model.build().unwrap(), options, CudaBackend::new(gpu.clone()), 1);
    ck.load_into(&mut separate).unwrap();
    let alone = predict_loader(&mut separate, &loader, 2.0).unwrap();
    assert_eq!(validated.len(), alone.len());
    for (a, b) in validated.iter().zip(&alone) {
        assert_eq!(a.index, b.index);
        assert_eq!(a.points, b.points, "image {}: landmarks differ", a.index);
        assert_eq!(a.confidence, b.confidence, "image {}: confidences differ", a.index);
    }

    // Training goes on as if validation had not run.
    engine.step(&batches[2], None, &loss, sp(3)).unwrap();
    let mut straight = CudaEngine::new(gpu.clone(), model.build().unwrap(), 1, &loss).unwrap();
    straight.step(&batches[0], Some(&batches[1]), &loss, sp(1)).unwrap();
    straight.step(&batches[1], Some(&batches[2]), &loss, sp(2)).unwrap();
    straight.step(&batches[2], None, &loss, sp(3)).unwrap();
    let (a, b) = (engine.checkpoint(meta()).unwrap(), straight.checkpoint(meta()).unwrap());
    assert_same_tensors(&a, &b, "after a validation between steps");
}

/// Forward and backward replayed from CUDA graphs (`--cuda-graphs`) train to the same bits as
/// launching op by op: five steps over three batches, with the next batch staged as in training.
/// The graphs are recorded at the second step and replayed from then on.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cuda_graphs_change_no_bit() {
    let (model, symbols, loss) = engine_setup(5);
    let (gpu, batches) = gpu_and_batches(&model, 9, 3);
    let run = |graphs: bool| -> Checkpoint {
        let mut engine = CudaEngine::new(gpu.clone(), model.build().unwrap(), 1, &loss).unwrap();
        engine.use_cuda_graphs(graphs);
        let order = [0, 1, 2, 1, 0];
        for (t, pair) in order.windows(2).map(Some).chain([None]).enumerate() {
            let (b, next) = match pair {
                Some(&[b, n]) => (b, Some(&batches[n])),
                _ => (order[order.len() - 1], None),
            };
            let sp = StepParams {
                lr: 1e-3,
                weight_decay: 1e-4,
                t: t as u64 + 1,
            };
            engine.step(&batches[b], next, &loss, sp).unwrap();
        }
        assert_eq!(engine.replaying_cuda_graphs(), graphs, "graphs recorded and replayed");
        engine
            .checkpoint(Meta::new(model.clone(), symbols.clone(), 4, 2.0))
            .unwrap()
    };
    assert_same_tensors(&run(false), &run(true), "with CUDA graphs");
}

/// A recorded forward pass (`record_pass`, as `cephalo bench --mode infer --cuda-graphs` uses it)
/// replays to the bits of running the pass op by op, and reads the input of the moment: a new
/// batch written into the input gives that batch's output.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_recorded_inference_replays_the_pass() {
    use cephalo::backend::Backend;
    use cephalo::train::cuda_engine::{record_pass, Pass};
    let (model, _, _) = engine_setup(5);
    let gpu = Arc::new(Gpu::open(0).expect("a CUDA GPU"));
    let options = PlanOptions::new(Mode::Eval, DtypeSizes::F16);
    let mut exec = Executor::new(model.build().unwrap(), options, CudaBackend::new(gpu.clone()), 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let (a, b) = (
        synthetic_batch(exec.graph(), &mut rng),
        synthetic_batch(exec.graph(), &mut rng),
    );
    let (input, output) = (exec.input_view(), exec.output_view());
    let eager = |exec: &mut Executor<CudaBackend>, batch: &Batch| {
        exec.backend_mut().write(input, &batch.images);
        exec.forward();
        exec.backend_mut().take_error().unwrap();
        exec.backend().read(output)
    };
    let (want_a, want_b) = (eager(&mut exec, &a), eager(&mut exec, &b));
    assert_ne!(want_a, want_b);
    let graph = record_pass(&mut exec, Pass::Forward).unwrap();
    for (batch, want) in [(&a, &want_a), (&b, &want_b), (&a, &want_a)] {
        exec.backend_mut().write(input, &batch.images);
        graph.launch().unwrap();
        let got = exec.backend().read(output);
        let same = got.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "the replayed forward pass differs from the op-by-op one");
    }
}

/// The engine-level tests' setup: HRNet-W8 at 128x128, batch 2, `k` landmarks, their names and the
/// default loss (Adaptive Wing with the weight map).
fn engine_setup(k: usize) -> (ModelConfig, Vec<String>, HeatmapLoss) {
    let model = ModelConfig::new("hrnet-w8", 1, k, [128, 128], 2).unwrap();
    let symbols: Vec<String> = (0..k).map(|i| format!("L{i}")).collect();
    let args = LossArgs {
        loss: LossKind::AdaptiveWing,
        weight_map: true,
        landmark_weights: LandmarkWeightsArg::None,
    };
    let loss = HeatmapLoss::from_args(&args, &symbols).unwrap();
    (model, symbols, loss)
}

/// The GPU, shared as the engines take it, and `count` synthetic batches for `model` drawn with
/// `seed`.
fn gpu_and_batches(model: &ModelConfig, seed: u64, count: usize) -> (Arc<Gpu>, Vec<Batch>) {
    let gpu = Arc::new(Gpu::open(0).expect("a CUDA GPU"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let graph = model.build().unwrap();
    let batches = (0..count).map(|_| synthetic_batch(&graph, &mut rng)).collect();
    (gpu, batches)
}

/// Every tensor (weights, statistics, moments) of `a` equals `b`'s to the bit.
fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint, what: &str) {
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        let same = t.data.iter().zip(&u.data).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs {what}");
    }
}
