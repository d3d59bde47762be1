//! A network started from pretrained weights on the GPU: the weights arrive unchanged in the
//! fp32 master copy, and its first training step matches the CPU twin's.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cephalo::bench::synthetic_batch;
use cephalo::checkpoint::{Checkpoint, Meta, Tensor};
use cephalo::gpu::Gpu;
use cephalo::model::{Arch, ModelConfig};
use cephalo::pretrained;
use cephalo::train::cuda_engine::CudaEngine;
use cephalo::train::engine::{CpuEngine, Engine};
use cephalo::train::landmark_weights::LandmarkWeightsArg;
use cephalo::train::loss::{HeatmapLoss, LossArgs, LossKind};
use cephalo::train::step::StepParams;
use rand::SeedableRng;

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_first_step_from_pretrained_weights_matches_the_cpu() {
    first_step_matches_the_cpu(1);
}

/// `--in-channels 3`: the RGB stem kept unfolded, the grey value in all three input channels.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_first_step_from_an_unfolded_rgb_stem_matches_the_cpu() {
    first_step_matches_the_cpu(3);
}

fn first_step_matches_the_cpu(in_channels: usize) {
    let k = 5;
    let model = ModelConfig::new("hrnet-w18", in_channels, k, [128, 128], 2).unwrap();
    // timm's HRNet at widths 2/4/8/16 (the committed fixture), its stem folded to grayscale
    // for one input channel and kept as it is for three.
    let graph = model.build_hrnet_width(2);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pretrained/hrnet_w2.safetensors");
    let sd = pretrained::read_state_dict(&file).unwrap();
    let loaded = pretrained::map_state_dict(&sd, &graph, "hrnet-w2", Arch::HrNet { width: 2 }).unwrap();
    let tensors: BTreeMap<String, Tensor> = graph
        .params
        .iter()
        .map(|p| {
            let data = loaded
                .params
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| p.initial_values(1));
            (
                p.name.clone(),
                Tensor {
                    shape: p.shape.clone(),
                    data,
                },
            )
        })
        .collect();
    let symbols: Vec<String> = (0..k).map(|i| format!("L{i}")).collect();
    let meta = Meta::new(model.clone(), symbols, 4, 2.0);
    let ck = Checkpoint {
        meta: meta.clone(),
        tensors,
    };
    let loss = HeatmapLoss::from_args(
        &LossArgs {
            loss: LossKind::AdaptiveWing,
            weight_map: true,
            landmark_weights: LandmarkWeightsArg::None,
        },
        &ck.meta.landmarks,
    )
    .unwrap();

    let gpu = Arc::new(Gpu::open(0).expect("a CUDA GPU"));
    let mut cuda = Engine::Cuda(Box::new(CudaEngine::new(gpu, graph.clone(), 1, &loss).unwrap()));
    let mut cpu = Engine::Cpu(Box::new(CpuEngine::new(graph.clone(), 1)));
    cuda.load_weights(&ck).unwrap();
    cpu.load_weights(&ck).unwrap();
    assert_eq!(loaded.report.folded.is_some(), in_channels == 1);
    let on_gpu = cuda.checkpoint(meta.clone()).unwrap();
    for (name, values) in &loaded.params {
        let same = on_gpu.tensors[name]
            .data
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: the GPU's master weights differ from the file's");
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let batch = synthetic_batch(&graph, &mut rng);
    let sp = StepParams {
        lr: 1e-3,
        weight_decay: 1e-4,
        t: 1,
    };
    // The loss scaler may skip the first fp16 steps (overflow) without touching the weights.
    let mut gpu_step = cuda.step(&batch, None, &loss, sp).unwrap();
    for _ in 0..20 {
        if !gpu_step.skipped {
            break;
        }
        gpu_step = cuda.step(&batch, None, &loss, sp).unwrap();
    }
    assert!(!gpu_step.skipped, "the GPU skipped 20 steps");
    let cpu_step = cpu.step(&batch, None, &loss, sp).unwrap();
    let loss_err = (gpu_step.loss - cpu_step.loss).abs() / cpu_step.loss.abs();
    println!(
        "first step loss: GPU {} CPU {} (relative {loss_err:.2e})",
        gpu_step.loss, cpu_step.loss
    );
    assert!(loss_err < 5e-2, "loss: GPU {} CPU {}", gpu_step.loss, cpu_step.loss);

    let (a, b) = (cuda.checkpoint(meta.clone()).unwrap(), cpu.checkpoint(meta).unwrap());
    let trainable: Vec<&str> = graph
        .params
        .iter()
        .filter(|p| p.kind.trainable())
        .map(|p| p.name.as_str())
        .collect();
    // From the same start, one AdamW step moves each weight by at most lr (times 1 + the decay)
    // on either side: a weight loaded differently would differ by far more. Adam's first step
    // is lr * sign(gradient), so gradients that round to other signs in fp16 legitimately
    // differ by up to 2 lr; the mean difference must stay well below that.
    let (mut worst, mut sum, mut n, mut moved) = (0.0f32, 0.0f64, 0usize, false);
    for name in &trainable {
        let (g, c) = (&a.tensors[*name].data, &b.tensors[*name].data);
        moved |= *c != ck.tensors[*name].data;
        for (x, y) in g.iter().zip(c) {
            let d = (x - y).abs();
            worst = worst.max(d);
            sum += d as f64;
            n += 1;
        }
    }
    assert!(moved, "the CPU step changed no weight: the comparison is blind");
    let mean = sum / n as f64;
    println!("weights after the first step: GPU vs CPU max |difference| {worst:.2e}, mean {mean:.2e} (lr 1e-3)");
    assert!(
        worst <= 2.2e-3,
        "a weight differs by {worst:e} after one step of lr 1e-3"
    );
    assert!(
        mean < 0.5e-3,
        "the GPU's and the CPU's steps differ by {mean:e} on average"
    );
}
