//! GPU tests of `kernels/loss.cu` against the CPU twins in `backend/cpu/loss.rs`. Ignored without a
//! GPU; on a GPU machine run them with `--ignored` (a missing GPU then fails).
//!
//! Fresh random heatmaps every run (the seed is printed): Gaussian targets around random points
//! and fp16 predictions = target + noise, which visits both Adaptive Wing branches and both sides
//! of the weight map's threshold. Outputs, workspace and loss buffer are poisoned before each call.
//! Tolerances (docs/architecture.md#precision-and-tolerances): 1e-2 for the fp16 gradient, 1e-5 for
//! the loss value (fp32 per element, f64 sums on both sides, in different orders).
mod gpu_ops_support;

use cephalo::backend::cuda::loss::{DevHeatmapBatch, LossOutputs};
use cephalo::backend::{cpu, cuda};
use cephalo::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use cephalo::gpu::{DevSlice, DeviceBuffer, Gpu};
use gpu_ops_support::heatmap_shape as shape;
use gpu_ops_support::*;
use half::f16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Odd sizes, a single element, and the users' 768x768 input's heatmaps (stride 4, 29 landmarks,
/// batch 4), which caps the grid.
const SHAPES: [HeatmapShape; 4] = [
    shape(1, 7, 9, 5),
    shape(2, 13, 11, 3),
    shape(1, 1, 1, 1),
    shape(4, 192, 192, 29),
];

/// The scale the loss scaler starts from, used for the full-size batch.
const GRAD_SCALE: f32 = 65536.0;

/// The largest power of two up to [`GRAD_SCALE`] that keeps every gradient of `s` inside fp16's
/// range (weights up to 3 x 13 times AWing slopes up to ~26, over `s.len()` elements; at most 64):
/// roughly what a dynamic loss scaler settles on. 65536 for 4x192x192x29, where a 1x1x1x1 batch
/// would overflow at 65536.
fn grad_scale(s: HeatmapShape) -> f32 {
    let limit = (s.len() / 16).max(1) as f32;
    let mut scale = 1.0f32;
    while scale * 2.0 <= limit.min(GRAD_SCALE) {
        scale *= 2.0;
    }
    scale
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    AWing(AWingParams),
    Mse,
}

/// One batch on the host: fp16 predictions (as their exact f32 values for the CPU twin), f32
/// targets and per-channel weights.
struct Batch {
    shape: HeatmapShape,
    pred: Vec<f16>,
    target: Vec<f32>,
    channel_weights: Vec<f32>,
}

impl Batch {
    fn random(rng: &mut ChaCha8Rng, s: HeatmapShape) -> Batch {
        let mut target = vec![0.0f32; s.len()];
        let sigma: f64 = rng.random_range(1.0..3.0);
        for n in 0..s.n {
            for c in 0..s.k {
                let cy = rng.random_range(0.0..s.h as f64);
                let cx = rng.random_range(0.0..s.w as f64);
                for y in 0..s.h {
                    for x in 0..s.w {
                        let r2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                        target[((n * s.h + y) * s.w + x) * s.k + c] = (-r2 / (2.0 * sigma * sigma)).exp() as f32;
                    }
                }
            }
        }
        let pred = target
            .iter()
            .map(|&t| f16::from_f32(t + rng.random_range(-0.8f32..0.8)))
            .collect();
        Batch {
            shape: s,
            pred,
            target,
            channel_weights: random_f32(rng, s.k, 0.5, 3.0),
        }
    }
}

/// The batch on the GPU, with poisoned outputs.
struct Dev {
    pred: DeviceBuffer<f16>,
    target: DeviceBuffer<f32>,
    channel_weights: DeviceBuffer<f32>,
    grad: DeviceBuffer<f16>,
    workspace: DeviceBuffer<f64>,
    loss: DeviceBuffer<f64>,
}

impl Dev {
    fn new(gpu: &Gpu, b: &Batch) -> Dev {
        let len = b.shape.len();
        Dev {
            pred: upload(gpu, &b.pred),
            target: upload(gpu, &b.target),
            channel_weights: upload(gpu, &b.channel_weights),
            grad: poisoned_f16(gpu, len),
            workspace: upload(gpu, &vec![f64::NAN; cuda::loss::loss_workspace_len(b.shape)]),
            loss: upload(gpu, &[f64::NAN]),
        }
    }

    /// The loss's arguments over the whole batch without a weight map, for a caller to change.
    fn args(
        &mut self,
        shape: HeatmapShape,
    ) -> (DevHeatmapBatch<'_>, LossWeighting<DevSlice<'_, f32>>, LossOutputs<'_>) {
        let batch = HeatmapBatch {
            pred: self.pred.slice(),
            target: self.target.slice(),
            shape,
        };
        let weighting = LossWeighting {
            channel_weights: self.channel_weights.slice(),
            weight_map: None,
        };
        let outputs = LossOutputs {
            grad: self.grad.slice_mut(),
            workspace: self.workspace.slice_mut(),
            loss: self.loss.slice_mut(),
        };
        (batch, weighting, outputs)
    }

    /// Runs the loss on the GPU; returns (loss value, gradient).
    fn run(&mut self, gpu: &Gpu, b: &Batch, loss: Loss, map: Option<WeightMap>, grad_scale: f32) -> (f64, Vec<f16>) {
        let (batch, weighting, outputs) = self.args(b.shape);
        let weighting = LossWeighting {
            weight_map: map,
            ..weighting
        };
        match loss {
            Loss::AWing(p) => cuda::loss::awing_fwd_bwd(gpu, batch, weighting, p, grad_scale, outputs),
            Loss::Mse => cuda::loss::mse_fwd_bwd(gpu, batch, weighting, grad_scale, outputs),
        }
        .unwrap();
        let value = cuda::loss::read_loss(gpu, self.loss.slice()).unwrap();
        (value, self.grad.to_host(gpu).unwrap())
    }
}

fn cpu_loss(b: &Batch, loss: Loss, map: Option<WeightMap>, grad_scale: f32) -> (f64, Vec<f32>) {
    let pred = to_f32(&b.pred);
    let mut grad = vec![0.0f32; b.shape.len()];
    let batch = HeatmapBatch {
        pred: &pred[..],
        target: &b.target[..],
        shape: b.shape,
    };
    let weighting = LossWeighting {
        channel_weights: &b.channel_weights[..],
        weight_map: map,
    };
    let value = match loss {
        Loss::AWing(p) => cpu::loss::awing_fwd_bwd(batch, weighting, p, grad_scale, &mut grad),
        Loss::Mse => cpu::loss::mse_fwd_bwd(batch, weighting, grad_scale, &mut grad),
    };
    (value, grad)
}

fn losses(rng: &mut ChaCha8Rng) -> [Loss; 3] {
    [
        Loss::AWing(AWingParams::default()),
        // Non-default parameters, so that a swapped argument cannot agree by accident.
        Loss::AWing(AWingParams {
            alpha: rng.random_range(2.05..2.3),
            omega: rng.random_range(8.0..20.0),
            eps: rng.random_range(0.8..2.0),
            theta: rng.random_range(0.3..0.6),
        }),
        Loss::Mse,
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn losses_match_cpu_twins_with_and_without_the_weight_map() {
    let gpu = gpu();
    let mut rng = rng();
    for s in SHAPES {
        let b = Batch::random(&mut rng, s);
        let mut d = Dev::new(&gpu, &b);
        for loss in losses(&mut rng) {
            let maps = [
                None,
                Some(WeightMap::default()),
                Some(WeightMap {
                    w: rng.random_range(2.0..12.0),
                    threshold: rng.random_range(0.1..0.5),
                }),
            ];
            for map in maps {
                let what = format!("{loss:?} {s:?} map={map:?}");
                let scale = grad_scale(s);
                let (want, want_grad) = cpu_loss(&b, loss, map, scale);
                let (got, got_grad) = d.run(&gpu, &b, loss, map, scale);
                let rel = (got - want).abs() / want.abs();
                assert!(rel < 1e-5, "{what}: loss {got} vs CPU {want} (relative {rel:.2e})");
                assert_close(&format!("{what}: grad"), &to_f32(&got_grad), &want_grad, 1e-2);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scaled_gradient_survives_the_fp16_cast_at_full_size() {
    // 4.3M elements: the unscaled gradient of the mean is ~1e-7 per element, below fp16's normal
    // range (6.1e-5) and mostly flushed; times 65536 it must come through wherever the CPU's is.
    let gpu = gpu();
    let mut rng = rng();
    let b = Batch::random(&mut rng, shape(4, 192, 192, 29));
    let mut d = Dev::new(&gpu, &b);
    for loss in [Loss::AWing(AWingParams::default()), Loss::Mse] {
        for map in [None, Some(WeightMap::default())] {
            let what = format!("{loss:?} map={map:?}");
            assert_eq!(grad_scale(b.shape), GRAD_SCALE);
            let (_, want) = cpu_loss(&b, loss, map, GRAD_SCALE);
            let (_, got) = d.run(&gpu, &b, loss, map, GRAD_SCALE);
            let normal = f16::MIN_POSITIVE.to_f32();
            let mut big = 0usize;
            for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
                if w.abs() >= normal {
                    big += 1;
                    assert!(
                        g.to_f32() != 0.0 && g.to_f32().signum() == w.signum(),
                        "{what}: element {i} is {g} on the GPU, {w} on the CPU"
                    );
                }
            }
            let nonzero = want.iter().filter(|w| **w != 0.0).count();
            assert!(
                big as f64 >= 0.9 * nonzero as f64,
                "{what}: only {big} of {nonzero} CPU gradients reach fp16's normal range at scale {GRAD_SCALE}"
            );
            // Unscaled, the same gradients would mostly not: the scale is what the test exercises.
            let (_, unscaled) = cpu_loss(&b, loss, map, 1.0);
            let normal_unscaled = unscaled.iter().filter(|w| w.abs() >= normal).count();
            assert!(
                normal_unscaled < big / 2,
                "{what}: {normal_unscaled} unscaled gradients are normal fp16 already"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn loss_value_is_bitwise_reproducible() {
    // Run to run, with fresh buffers, and between the grid-capped and uncapped shapes.
    let gpu = gpu();
    let mut rng = rng();
    for s in [shape(1, 7, 9, 5), shape(4, 192, 192, 29)] {
        let b = Batch::random(&mut rng, s);
        for (loss, map) in [
            (Loss::AWing(AWingParams::default()), Some(WeightMap::default())),
            (Loss::Mse, None),
        ] {
            let scale = grad_scale(s);
            let (first, first_grad) = Dev::new(&gpu, &b).run(&gpu, &b, loss, map, scale);
            for run in 0..3 {
                let (again, again_grad) = Dev::new(&gpu, &b).run(&gpu, &b, loss, map, scale);
                assert_eq!(
                    first.to_bits(),
                    again.to_bits(),
                    "{loss:?} {s:?}: run {run} gives {again}, the first {first}"
                );
                assert!(
                    same_bits(&first_grad, &again_grad),
                    "{loss:?} {s:?}: gradient differs on run {run}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mse_by_hand() {
    // Mean of 2 * (0.25, 1) = 1.25; grad = 2 * weight * d / len * scale = (4, -8), all exact.
    let gpu = gpu();
    let b = Batch {
        shape: shape(1, 1, 2, 1),
        pred: vec![f16::from_f32(0.5), f16::ZERO],
        target: vec![0.0, 1.0],
        channel_weights: vec![2.0],
    };
    let (value, grad) = Dev::new(&gpu, &b).run(&gpu, &b, Loss::Mse, None, 4.0);
    assert_eq!(value, 1.25);
    assert_eq!(to_f32(&grad), [4.0, -8.0]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_sizes_are_errors_not_launches() {
    let gpu = gpu();
    let mut rng = rng();
    let s = shape(1, 7, 9, 5);
    let b = Batch::random(&mut rng, s);
    let mut d = Dev::new(&gpu, &b);
    let p = AWingParams::default();
    let short_ws = cuda::loss::loss_workspace_len(s) - 1;
    let (batch, weighting, outputs) = d.args(s);
    let short_weights = LossWeighting {
        channel_weights: weighting.channel_weights.sub(0, s.k - 1),
        ..weighting
    };
    let err = cuda::loss::awing_fwd_bwd(&gpu, batch, short_weights, p, 1.0, outputs);
    assert!(err.is_err(), "one channel weight short was accepted");
    let (batch, weighting, mut outputs) = d.args(s);
    let short_workspace = LossOutputs {
        workspace: outputs.workspace.sub_mut(0, short_ws),
        grad: outputs.grad,
        loss: outputs.loss,
    };
    let err = cuda::loss::mse_fwd_bwd(&gpu, batch, weighting, 1.0, short_workspace);
    assert!(err.is_err(), "a short workspace was accepted");
    let (batch, weighting, outputs) = d.args(s);
    let short_pred = HeatmapBatch {
        pred: batch.pred.sub(1, s.len() - 1),
        ..batch
    };
    let err = cuda::loss::mse_fwd_bwd(&gpu, short_pred, weighting, 1.0, outputs);
    assert!(err.is_err(), "a short prediction was accepted");
    // Nothing was launched: the outputs are still poisoned.
    assert!(d
        .grad
        .to_host(&gpu)
        .unwrap()
        .iter()
        .all(|g| g.to_bits() == POISON_F16.to_bits()));
    assert!(cuda::loss::read_loss(&gpu, d.loss.slice()).unwrap().is_nan());
}
