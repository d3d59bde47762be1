//! GPU tests of `kernels/batchnorm.cu` against the CPU twins in `backend/cpu/batchnorm.rs`, and of
//! the fused BN+add+ReLU against the unfused CPU pair (BN, then add_relu). Ignored without a GPU.
//!
//! Inputs have per-channel offsets and spreads, like real pre-BN activations (a zero-mean input
//! would make the mean's relative error meaningless). Tolerances
//! (docs/architecture.md#precision-and-tolerances): 1e-2 for fp16 outputs; 1e-5 for the f32
//! statistics; 1e-4 for dgamma/dbeta, whose per-chunk partial sums are f32 where the CPU twin sums
//! in f64.
mod gpu_ops_support;

use cephalo::backend::cuda::batchnorm::{BnForward, DevBnWeights, StatsTargets};
use cephalo::backend::{cpu, cuda, AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, GradOut, Shape4};
use cephalo::gpu::{DevSlice, DevSliceMut, DeviceBuffer, Gpu};
use gpu_ops_support::*;
use half::f16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One batch-norm layer's inputs on the host (fp16 activations as their exact f32 values).
struct Case {
    xs: Shape4,
    x: Vec<f16>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dy: Vec<f16>,
    residual: Vec<f16>,
    bp: BnParams,
}

impl Case {
    fn random(rng: &mut ChaCha8Rng, xs: Shape4) -> Case {
        let c = xs.c;
        let offset = random_f32(rng, c, -3.0, 3.0);
        let spread = random_f32(rng, c, 0.2, 2.0);
        let x = (0..xs.len())
            .map(|i| f16::from_f32(offset[i % c] + spread[i % c] * rng.random_range(-1.0f32..1.0)))
            .collect();
        Case {
            xs,
            x,
            gamma: random_f32(rng, c, 0.5, 1.5),
            beta: random_f32(rng, c, -0.5, 0.5),
            running_mean: random_f32(rng, c, -1.0, 1.0),
            running_var: random_f32(rng, c, 0.5, 2.0),
            dy: random_f16(rng, xs.len(), -1.0, 1.0),
            residual: random_f16(rng, xs.len(), -1.0, 1.0),
            bp: BnParams {
                eps: 1e-5,
                momentum: rng.random_range(0.05..0.3),
            },
        }
    }

    /// The layer's gamma and beta as the CPU twins take them.
    fn cpu_weights(&self) -> BnWeights<&[f32]> {
        BnWeights::new(&self.gamma, &self.beta, self.bp)
    }

    /// The CPU twin's backward from `dy` with the saved statistics, into `dx` (overwritten or
    /// accumulated into): (dx, dgamma, dbeta).
    fn cpu_bwd(&self, dy: &[f32], saved: &[f32], relu: bool, (mut dx, accumulate): (Vec<f32>, bool)) -> [Vec<f32>; 3] {
        let c = self.xs.c;
        let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
        let x = to_f32(&self.x);
        let fwd = cpu::batchnorm::BnForward {
            x: &x,
            xs: self.xs,
            bn: self.cpu_weights(),
            saved,
        };
        let grads = BnGrads::new(dgamma.as_mut_slice(), dbeta.as_mut_slice());
        let out = GradOut {
            data: dx.as_mut_slice(),
            accumulate,
        };
        cpu::batchnorm::bn_bwd(dy, fwd, relu, out, grads);
        [dx, dgamma, dbeta]
    }
}

/// The case's parameters on the GPU.
struct Dev {
    x: DeviceBuffer<f16>,
    gamma: DeviceBuffer<f32>,
    beta: DeviceBuffer<f32>,
    running_mean: DeviceBuffer<f32>,
    running_var: DeviceBuffer<f32>,
    dy: DeviceBuffer<f16>,
    residual: DeviceBuffer<f16>,
    workspace: DeviceBuffer<f32>,
}

impl Dev {
    fn new(gpu: &Gpu, k: &Case) -> Dev {
        Dev {
            x: upload(gpu, &k.x),
            gamma: upload(gpu, &k.gamma),
            beta: upload(gpu, &k.beta),
            running_mean: upload(gpu, &k.running_mean),
            running_var: upload(gpu, &k.running_var),
            dy: upload(gpu, &k.dy),
            residual: upload(gpu, &k.residual),
            // Poisoned: every workspace value the kernels read must have been written this call.
            workspace: poisoned_f32(gpu, cuda::batchnorm::bn_workspace_len(k.xs)),
        }
    }

    fn weights(&self, bp: BnParams) -> DevBnWeights<'_> {
        BnWeights {
            gamma: self.gamma.slice(),
            beta: self.beta.slice(),
            params: bp,
        }
    }

    /// A training forward's arguments: the case's `x`, `residual` and weights, and the statistics
    /// targets `saved`, the case's running statistics and workspace.
    fn train<'a>(&'a mut self, bp: BnParams, saved: &'a mut DeviceBuffer<f32>) -> Train<'a> {
        let running = (&mut self.running_mean, &mut self.running_var);
        Train {
            x: self.x.slice(),
            residual: self.residual.slice(),
            weights: BnWeights {
                gamma: self.gamma.slice(),
                beta: self.beta.slice(),
                params: bp,
            },
            targets: stats_targets(saved, running, &mut self.workspace),
        }
    }

    /// A backward's arguments from the case: `dy`, the forward (`x`, the weights and the saved
    /// statistics `saved`) and the workspace, borrowed together.
    fn bwd<'a>(&'a mut self, xs: Shape4, bp: BnParams, saved: DevSlice<'a, f32>) -> Bwd<'a> {
        Bwd {
            dy: self.dy.slice(),
            fwd: BnForward {
                x: self.x.slice(),
                xs,
                // The fields, not `self.weights`: the workspace is borrowed mutably beside them.
                bn: BnWeights {
                    gamma: self.gamma.slice(),
                    beta: self.beta.slice(),
                    params: bp,
                },
                saved,
            },
            workspace: self.workspace.slice_mut(),
        }
    }
}

struct Bwd<'a> {
    dy: DevSlice<'a, f16>,
    fwd: BnForward<'a>,
    workspace: DevSliceMut<'a, f32>,
}

struct Train<'a> {
    x: DevSlice<'a, f16>,
    residual: DevSlice<'a, f16>,
    weights: DevBnWeights<'a>,
    targets: StatsTargets<'a>,
}

/// Training forward on GPU and CPU; returns the CPU's saved statistics for the backward tests.
fn check_fwd_train(gpu: &Gpu, k: &Case, relu: bool) -> Vec<f32> {
    let (xs, c) = (k.xs, k.xs.c);
    let what = format!("bn_fwd_train {xs} relu={relu}");
    let x32 = to_f32(&k.x);
    let (mut y, mut saved) = (vec![0.0; xs.len()], vec![0.0; 2 * c]);
    let (mut rm, mut rv) = (k.running_mean.clone(), k.running_var.clone());
    let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
    cpu::batchnorm::bn_fwd_train(&x32, xs, k.cpu_weights(), relu, &mut y, &mut saved, running);

    let mut d = Dev::new(gpu, k);
    let (mut yd, mut sd) = (poisoned_f16(gpu, xs.len()), poisoned_f32(gpu, 2 * c));
    let t = d.train(k.bp, &mut sd);
    cuda::batchnorm::bn_fwd_train(gpu, t.x, xs, t.weights, relu, yd.slice_mut(), t.targets).unwrap();
    assert_close(&format!("{what}: y"), &download_f32(gpu, &yd), &y, 1e-2);
    let gs = sd.to_host(gpu).unwrap();
    assert_close(&format!("{what}: mean"), &gs[..c], &saved[..c], 1e-5);
    assert_close(&format!("{what}: invstd"), &gs[c..], &saved[c..], 1e-5);
    assert_close(
        &format!("{what}: running_mean"),
        &d.running_mean.to_host(gpu).unwrap(),
        &rm,
        1e-5,
    );
    assert_close(
        &format!("{what}: running_var"),
        &d.running_var.to_host(gpu).unwrap(),
        &rv,
        1e-5,
    );
    saved
}

fn check_apply_and_eval(gpu: &Gpu, k: &Case, saved: &[f32], relu: bool) {
    let xs = k.xs;
    let x32 = to_f32(&k.x);
    let d = Dev::new(gpu, k);
    let sd = upload(gpu, saved);

    let mut want = vec![0.0; xs.len()];
    cpu::batchnorm::bn_apply_saved(&x32, xs, k.cpu_weights(), saved, relu, &mut want);
    let mut yd = poisoned_f16(gpu, xs.len());
    cuda::batchnorm::bn_apply_saved(gpu, d.x.slice(), xs, d.weights(k.bp), sd.slice(), relu, yd.slice_mut()).unwrap();
    assert_close(
        &format!("bn_apply_saved {xs} relu={relu}"),
        &download_f32(gpu, &yd),
        &want,
        1e-2,
    );

    let running = BnRunning::new(k.running_mean.as_slice(), k.running_var.as_slice());
    cpu::batchnorm::bn_fwd_eval(&x32, xs, k.cpu_weights(), running, relu, &mut want);
    let mut yd = poisoned_f16(gpu, xs.len());
    let running = BnRunning {
        mean: d.running_mean.slice(),
        var: d.running_var.slice(),
    };
    cuda::batchnorm::bn_fwd_eval(gpu, d.x.slice(), xs, d.weights(k.bp), running, relu, yd.slice_mut()).unwrap();
    assert_close(
        &format!("bn_fwd_eval {xs} relu={relu}"),
        &download_f32(gpu, &yd),
        &want,
        1e-2,
    );
}

fn check_bwd(gpu: &Gpu, rng: &mut ChaCha8Rng, k: &Case, saved: &[f32], relu: bool, accumulate: bool) {
    let (xs, c) = (k.xs, k.xs.c);
    let what = format!("bn_bwd {xs} relu={relu} accumulate={accumulate}");
    let dx0 = if accumulate {
        random_f16(rng, xs.len(), -1.0, 1.0)
    } else {
        vec![POISON_F16; xs.len()]
    };
    let dx = if accumulate { to_f32(&dx0) } else { vec![0.0; xs.len()] };
    let [dx, dgamma, dbeta] = k.cpu_bwd(&to_f32(&k.dy), saved, relu, (dx, accumulate));

    let mut d = Dev::new(gpu, k);
    let sd = upload(gpu, saved);
    let mut dxd = upload(gpu, &dx0);
    let (mut dgd, mut dbd) = (poisoned_f32(gpu, c), poisoned_f32(gpu, c));
    let b = d.bwd(xs, k.bp, sd.slice());
    let (dx_out, grads) = bwd_outputs(&mut dxd, accumulate, &mut dgd, &mut dbd);
    cuda::batchnorm::bn_bwd(gpu, b.dy, b.fwd, relu, dx_out, grads, b.workspace).unwrap();
    assert_close(&format!("{what}: dx"), &download_f32(gpu, &dxd), &dx, 1e-2);
    assert_close(&format!("{what}: dgamma"), &dgd.to_host(gpu).unwrap(), &dgamma, 1e-4);
    assert_close(&format!("{what}: dbeta"), &dbd.to_host(gpu).unwrap(), &dbeta, 1e-4);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batchnorm_matches_cpu_twin_forward_eval_and_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for xs in SHAPES {
        let k = Case::random(&mut rng, xs);
        for relu in [false, true] {
            let saved = check_fwd_train(&gpu, &k, relu);
            check_apply_and_eval(&gpu, &k, &saved, relu);
            for accumulate in [false, true] {
                check_bwd(&gpu, &mut rng, &k, &saved, relu, accumulate);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batchnorm_statistics_are_exact_on_a_known_batch() {
    // One channel, values 1..=8 over 8 pixels: mean 4.5, biased variance 5.25, unbiased 6.
    let gpu = gpu();
    let xs = Shape4::new(2, 2, 2, 1);
    let x: Vec<f16> = (1..=8).map(|v| f16::from_f32(v as f32)).collect();
    let bp = BnParams {
        eps: 1e-5,
        momentum: 0.5,
    };
    let (xd, g, b) = (upload(&gpu, &x), upload(&gpu, &[1.0f32]), upload(&gpu, &[0.0f32]));
    let (mut rm, mut rv) = (upload(&gpu, &[0.0f32]), upload(&gpu, &[1.0f32]));
    let (mut y, mut saved) = (poisoned_f16(&gpu, 8), poisoned_f32(&gpu, 2));
    let mut ws = poisoned_f32(&gpu, cuda::batchnorm::bn_workspace_len(xs));
    let weights = BnWeights {
        gamma: g.slice(),
        beta: b.slice(),
        params: bp,
    };
    let targets = stats_targets(&mut saved, (&mut rm, &mut rv), &mut ws);
    cuda::batchnorm::bn_fwd_train(&gpu, xd.slice(), xs, weights, false, y.slice_mut(), targets).unwrap();
    let s = saved.to_host(&gpu).unwrap();
    assert!((s[0] - 4.5).abs() < 1e-6, "mean {}", s[0]);
    assert!(
        (s[1] - 1.0 / (5.25f32 + 1e-5).sqrt()).abs() < 1e-5,
        "invstd {} (biased variance 5.25)",
        s[1]
    );
    assert!((rm.to_host(&gpu).unwrap()[0] - 2.25).abs() < 1e-6);
    assert!(
        (rv.to_host(&gpu).unwrap()[0] - 3.5).abs() < 1e-5,
        "running_var moves towards the unbiased 6"
    );
    let y = download_f32(&gpu, &y);
    assert!((y[0] + 3.5 / 5.25f32.sqrt()).abs() < 2e-3, "y[0] = {}", y[0]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_bn_add_relu_matches_unfused_cpu_pair() {
    let gpu = gpu();
    let mut rng = rng();
    for xs in SHAPES {
        let k = Case::random(&mut rng, xs);
        let c = xs.c;
        let (x32, r32, dy32) = (to_f32(&k.x), to_f32(&k.residual), to_f32(&k.dy));

        // CPU: t = bn(x) (no ReLU), y = max(t + residual, 0).
        let (mut t, mut saved) = (vec![0.0; xs.len()], vec![0.0; 2 * c]);
        let (mut rm, mut rv) = (k.running_mean.clone(), k.running_var.clone());
        let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
        cpu::batchnorm::bn_fwd_train(&x32, xs, k.cpu_weights(), false, &mut t, &mut saved, running);
        let mut y = vec![0.0; xs.len()];
        cpu::elementwise::add_relu_fwd(&t, &r32, &mut y);

        let mut d = Dev::new(&gpu, &k);
        let (mut yd, mut sd) = (poisoned_f16(&gpu, xs.len()), poisoned_f32(&gpu, 2 * c));
        let t = d.train(k.bp, &mut sd);
        cuda::batchnorm::bn_add_relu_fwd_train(&gpu, t.x, xs, t.weights, t.residual, yd.slice_mut(), t.targets)
            .unwrap();
        assert_close(
            &format!("bn_add_relu_fwd_train {xs}: y"),
            &download_f32(&gpu, &yd),
            &y,
            1e-2,
        );
        assert_close(
            &format!("bn_add_relu_fwd_train {xs}: running_var"),
            &d.running_var.to_host(&gpu).unwrap(),
            &rv,
            1e-5,
        );

        // Same saved statistics on both sides from here on.
        let sd = upload(&gpu, &saved);
        let mut ya = poisoned_f16(&gpu, xs.len());
        cuda::batchnorm::bn_add_relu_apply_saved(
            &gpu,
            d.x.slice(),
            xs,
            d.weights(k.bp),
            sd.slice(),
            d.residual.slice(),
            ya.slice_mut(),
        )
        .unwrap();
        assert_close(
            &format!("bn_add_relu_apply_saved {xs}"),
            &download_f32(&gpu, &ya),
            &y,
            1e-2,
        );

        // Backward: both sides take the mask from the same fp16-rounded output.
        let y16 = to_f16(&y);
        let y_masked = to_f32(&y16);
        let yd16 = upload(&gpu, &y16);
        for accumulate in [false, true] {
            let what = format!("bn_add_relu_bwd {xs} accumulate={accumulate}");
            let mut g = vec![0.0; xs.len()];
            cpu::elementwise::relu_bwd(&y_masked, &dy32, &mut g, false);
            let dres0 = random_f16(&mut rng, xs.len(), -1.0, 1.0);
            let mut dres = if accumulate {
                to_f32(&dres0)
            } else {
                vec![0.0; xs.len()]
            };
            cpu::elementwise::add_bwd(&g, &mut dres, accumulate);
            let [dx, dgamma, dbeta] = k.cpu_bwd(&g, &saved, false, (vec![0.0; xs.len()], false));

            let mut dxd = poisoned_f16(&gpu, xs.len());
            let mut dresd = if accumulate {
                upload(&gpu, &dres0)
            } else {
                poisoned_f16(&gpu, xs.len())
            };
            let (mut dgd, mut dbd) = (poisoned_f32(&gpu, c), poisoned_f32(&gpu, c));
            let b = d.bwd(xs, k.bp, sd.slice());
            let join = AddReluJoin {
                y: yd16.slice(),
                d_residual: Some(GradOut {
                    data: dresd.slice_mut(),
                    accumulate,
                }),
            };
            let (dx_out, grads) = bwd_outputs(&mut dxd, false, &mut dgd, &mut dbd);
            cuda::batchnorm::bn_add_relu_bwd(&gpu, b.dy, b.fwd, join, dx_out, grads, b.workspace).unwrap();
            assert_close(&format!("{what}: dx"), &download_f32(&gpu, &dxd), &dx, 1e-2);
            assert_bitwise(&format!("{what}: d_residual"), &dresd.to_host(&gpu).unwrap(), &dres);
            assert_close(&format!("{what}: dgamma"), &dgd.to_host(&gpu).unwrap(), &dgamma, 1e-4);
            assert_close(&format!("{what}: dbeta"), &dbd.to_host(&gpu).unwrap(), &dbeta, 1e-4);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batchnorm_is_bitwise_deterministic_run_to_run() {
    let gpu = gpu();
    let mut rng = rng();
    // Large enough for the full 1024-chunk reduction grid.
    let xs = Shape4::new(4, 48, 48, 64);
    let k = Case::random(&mut rng, xs);
    let c = xs.c;
    let run = || {
        let mut d = Dev::new(&gpu, &k);
        let (mut y, mut saved) = (poisoned_f16(&gpu, xs.len()), poisoned_f32(&gpu, 2 * c));
        let t = d.train(k.bp, &mut saved);
        cuda::batchnorm::bn_fwd_train(&gpu, t.x, xs, t.weights, true, y.slice_mut(), t.targets).unwrap();
        let (mut dx, mut dg, mut db) = (
            poisoned_f16(&gpu, xs.len()),
            poisoned_f32(&gpu, c),
            poisoned_f32(&gpu, c),
        );
        let b = d.bwd(xs, k.bp, saved.slice());
        let (dx_out, grads) = bwd_outputs(&mut dx, false, &mut dg, &mut db);
        cuda::batchnorm::bn_bwd(&gpu, b.dy, b.fwd, true, dx_out, grads, b.workspace).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        (
            y.to_host(&gpu).unwrap(),
            bits(saved.to_host(&gpu).unwrap()),
            dx.to_host(&gpu).unwrap(),
            bits(dg.to_host(&gpu).unwrap()),
            bits(db.to_host(&gpu).unwrap()),
        )
    };
    let (a, b) = (run(), run());
    assert!(same_bits(&a.0, &b.0), "y differs between runs");
    assert_eq!(a.1, b.1, "saved statistics differ between runs");
    assert!(same_bits(&a.2, &b.2), "dx differs between runs");
    assert_eq!((a.3, a.4), (b.3, b.4), "dgamma/dbeta differ between runs");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn too_small_workspace_is_an_error() {
    let gpu = gpu();
    let xs = Shape4::new(1, 4, 4, 8);
    let d = Dev::new(&gpu, &Case::random(&mut rng(), xs));
    let (mut y, mut saved) = (poisoned_f16(&gpu, xs.len()), poisoned_f32(&gpu, 16));
    let (mut rm, mut rv) = (poisoned_f32(&gpu, 8), poisoned_f32(&gpu, 8));
    let mut ws = poisoned_f32(&gpu, 3);
    let targets = stats_targets(&mut saved, (&mut rm, &mut rv), &mut ws);
    let weights = d.weights(BnParams::default());
    let err = cuda::batchnorm::bn_fwd_train(&gpu, d.x.slice(), xs, weights, false, y.slice_mut(), targets).unwrap_err();
    assert!(err.to_string().contains("workspace"), "{err}");
}

/// The eval-mode BN folded for a convolution epilogue (with and without the conv's bias) against
/// the CPU twin `bn_eval_affine` plus the bias fold `shift + bias * scale`, on poisoned outputs.
#[test]
#[ignore = "needs a CUDA GPU"]
fn eval_affine_fold_matches_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    let bp = BnParams::default();
    for c in [1usize, 29, 256] {
        let gamma = random_f32(&mut rng, c, 0.5, 1.5);
        let beta = random_f32(&mut rng, c, -0.5, 0.5);
        let mean = random_f32(&mut rng, c, -1.0, 1.0);
        let var = random_f32(&mut rng, c, 0.1, 3.0);
        let bias = random_f32(&mut rng, c, -0.3, 0.3);
        let (scale, shift) =
            cpu::batchnorm::bn_eval_affine(BnWeights::new(&gamma, &beta, bp), BnRunning::new(&mean, &var));
        for with_bias in [false, true] {
            let (g, b, m, v, bi) = (
                upload(&gpu, &gamma),
                upload(&gpu, &beta),
                upload(&gpu, &mean),
                upload(&gpu, &var),
                upload(&gpu, &bias),
            );
            let (mut s, mut t) = (poisoned_f32(&gpu, c), poisoned_f32(&gpu, c));
            let bias_view = with_bias.then(|| bi.slice());
            let weights = BnWeights {
                gamma: g.slice(),
                beta: b.slice(),
                params: bp,
            };
            let running = BnRunning {
                mean: m.slice(),
                var: v.slice(),
            };
            cuda::batchnorm::bn_eval_affine(&gpu, weights, running, bias_view, s.slice_mut(), t.slice_mut()).unwrap();
            let want_shift: Vec<f32> = if with_bias {
                shift
                    .iter()
                    .zip(&scale)
                    .zip(&bias)
                    .map(|((&t, &s), &b)| t + b * s)
                    .collect()
            } else {
                shift.clone()
            };
            assert_close("scale", &s.to_host(&gpu).unwrap(), &scale, 1e-5);
            assert_close("shift", &t.to_host(&gpu).unwrap(), &want_shift, 1e-5);
        }
    }
}
