//! GPU tests of `kernels/conv.cu` (forward with its epilogue, input gradient, transposed
//! convolution) against the f32 CPU twins in `backend/cpu/conv.rs`, fed the exact f32 values of
//! the fp16 inputs. Ignored without a GPU, except the tile-table test, which is shapes only.
//!
//! Shape classes: 3x3 stride 1 and 2, 1x1, the 7x7 stride-2 and 3x3 stride-2 one-channel stems,
//! HRNet-W18 widths (18/36/72/144, the general loader) and W32/ResNet widths (32..2048), a
//! 29-channel head, the 4x4 stride-2 transposed convolution with 256 channels, odd spatial sizes,
//! batch 1 and 4, plus random odd shapes. Outputs start poisoned (NaN), accumulating ones random;
//! tolerance 1e-2 (docs/architecture.md#precision-and-tolerances); a second identical launch must
//! give the same bits. The BN-statistics epilogue (`conv2d_fwd_bn_stats`) is checked against the
//! CPU twin's statistics of the GPU's own output (1e-5, f32 results).
mod gpu_ops_support;

use cephalo::backend::cpu::batchnorm::bn_batch_stats;
use cephalo::backend::cpu::conv::{self as cpu_conv, Affine};
use cephalo::backend::cuda::conv::{
    self as gpu_conv, ConvDgrad, ConvEpilogue, ConvFwd, GemmShape, GpuShape, Pass, Tile, TILES_BIG_SMEM, TILES_GENERAL,
    TILES_SMALL_SMEM,
};
use cephalo::backend::{BnParams, BnRunning, ConvParams, GradOut, Shape4};
use cephalo::gpu::{kernel_image, DeviceBuffer, Gpu};
use cephalo::graph::Op;
use cephalo::model::ModelConfig;
use gpu_ops_support::*;
use half::f16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-2;

/// Weights scaled like He initialisation, so outputs stay O(1) whatever the fan-in (fp16 range).
fn weights(rng: &mut ChaCha8Rng, p: &ConvParams) -> Vec<f16> {
    let bound = (3.0 / p.patch_len() as f32).sqrt();
    random_f16(rng, p.weight_len(), -bound, bound)
}

/// The shape classes every pass is tested on: (input shape, convolution).
fn shape_classes() -> Vec<(Shape4, ConvParams)> {
    let sq = ConvParams::square;
    vec![
        (Shape4::new(4, 13, 17, 32), sq(32, 64, 3, 1, 1)),
        (Shape4::new(1, 9, 7, 256), sq(256, 128, 3, 1, 1)),
        (Shape4::new(4, 13, 17, 32), sq(32, 64, 3, 2, 1)),
        (Shape4::new(1, 12, 11, 64), sq(64, 128, 3, 2, 1)),
        (Shape4::new(4, 6, 11, 64), sq(64, 256, 1, 1, 0)),
        (Shape4::new(1, 5, 7, 2048), sq(2048, 512, 1, 1, 0)),
        (Shape4::new(1, 7, 9, 512), sq(512, 1024, 1, 1, 0)),
        (Shape4::new(1, 37, 41, 1), sq(1, 64, 7, 2, 3)),
        (Shape4::new(4, 33, 35, 1), sq(1, 64, 3, 2, 1)),
        (Shape4::new(2, 11, 13, 18), sq(18, 36, 3, 1, 1)),
        (Shape4::new(1, 11, 13, 72), sq(72, 144, 3, 2, 1)),
        (Shape4::new(2, 9, 9, 144), sq(144, 72, 1, 1, 0)),
        (Shape4::new(2, 12, 10, 32), sq(32, 29, 1, 1, 0)),
        (Shape4::new(1, 6, 5, 29), sq(29, 32, 3, 1, 1)),
        (Shape4::new(4, 24, 24, 256), sq(256, 256, 3, 1, 1)),
        // 49 taps: more than the vec loader's masks hold, so the general loader despite c_in = 8.
        (Shape4::new(1, 15, 13, 8), sq(8, 16, 7, 1, 3)),
        (Shape4::new(2, 9, 11, 64), sq(64, 64, 5, 2, 2)),
    ]
}

/// Random odd shapes: any channel counts (both loaders), kernels 1..5, strides 1..2.
fn random_shapes(rng: &mut ChaCha8Rng, count: usize) -> Vec<(Shape4, ConvParams)> {
    (0..count)
        .map(|_| {
            let k = [1, 3, 5, 2][rng.random_range(0..4)];
            let stride = rng.random_range(1..=2);
            let pad = rng.random_range(0..=k / 2);
            let c_in = [rng.random_range(1..80), 8 * rng.random_range(1..12)][rng.random_range(0..2)];
            let c_out = rng.random_range(1..100);
            let xs = Shape4::new(
                rng.random_range(1..=4),
                rng.random_range(k..k + 20),
                rng.random_range(k..k + 20),
                c_in,
            );
            (xs, ConvParams::square(c_in, c_out, k, stride, pad))
        })
        .collect()
}

/// Forward: plain, bias (shift only), scale+shift+ReLU and scale+shift+residual+ReLU (the
/// inference block join) epilogues, vs the CPU twins.
fn check_fwd(gpu: &Gpu, rng: &mut ChaCha8Rng, xs: Shape4, p: &ConvParams, tile: Option<Tile>) {
    let ys = p.out_shape(xs);
    let x = random_f16(rng, xs.len(), -1.0, 1.0);
    let w = weights(rng, p);
    let scale = random_f32(rng, p.c_out, 0.5, 1.5);
    let shift = random_f32(rng, p.c_out, -0.5, 0.5);
    let (xf, wf) = (to_f32(&x), to_f32(&w));
    let (xd, wd) = (upload(gpu, &x), upload(gpu, &w));
    let (sd, hd) = (upload(gpu, &scale), upload(gpu, &shift));
    let residual = random_f16(rng, ys.len(), -1.0, 1.0);
    let (rf, rd) = (to_f32(&residual), upload(gpu, &residual));
    let what = format!("fwd {xs} {p:?} {tile:?}");
    for mode in 0..4 {
        let mut want = vec![0.0f32; ys.len()];
        let epilogue = match mode {
            0 => {
                cpu_conv::conv2d_fwd(&xf, xs, &wf, p, None, &mut want);
                ConvEpilogue::NONE
            }
            1 => {
                cpu_conv::conv2d_fwd(&xf, xs, &wf, p, Some(&shift), &mut want);
                ConvEpilogue {
                    shift: Some(hd.slice()),
                    ..ConvEpilogue::NONE
                }
            }
            _ => {
                let with_residual = mode == 3;
                let affine = Affine {
                    scale: &scale,
                    shift: &shift,
                    residual: with_residual.then_some(rf.as_slice()),
                    relu: true,
                };
                cpu_conv::conv2d_affine_fwd(&xf, xs, &wf, p, None, affine, &mut want);
                ConvEpilogue {
                    scale: Some(sd.slice()),
                    shift: Some(hd.slice()),
                    residual: with_residual.then(|| rd.slice()),
                    relu: true,
                }
            }
        };
        let conv = ConvFwd {
            x: xd.slice(),
            xs,
            w: wd.slice(),
            p,
        };
        let run = |y: &mut DeviceBuffer<f16>| match tile {
            Some(t) => gpu_conv::conv2d_fwd_tiled(gpu, conv, &epilogue, y.slice_mut(), t),
            None => gpu_conv::conv2d_fwd(gpu, conv, &epilogue, y.slice_mut()),
        };
        let mut y = poisoned_f16(gpu, ys.len());
        run(&mut y).unwrap();
        let first = y.to_host(gpu).unwrap();
        assert_close(&format!("{what} epilogue {mode}"), &to_f32(&first), &want, TOL);
        let mut y2 = poisoned_f16(gpu, ys.len());
        run(&mut y2).unwrap();
        assert!(same_bits(&first, &y2.to_host(gpu).unwrap()), "{what}: repeat differs");
    }
}

/// The BN-statistics epilogue: `y` the same bits as `conv2d_fwd` with the same bias; `saved =
/// [mean; invstd]` and the running statistics as the CPU twin's `bn_batch_stats` computes them
/// from that `y` (so the epilogue's reduction alone is compared, to the f32 tolerance 1e-5); a
/// repeat gives the same bits. The bias moves the channel means far from 0, where a naive sum of
/// squares would lose the variance.
fn check_fwd_bn_stats(gpu: &Gpu, rng: &mut ChaCha8Rng, xs: Shape4, p: &ConvParams) {
    let ys = p.out_shape(xs);
    let c = p.c_out;
    let x = random_f16(rng, xs.len(), -1.0, 1.0);
    let w = weights(rng, p);
    let bias = random_f32(rng, c, 2.0, 6.0);
    let (xd, wd, bd) = (upload(gpu, &x), upload(gpu, &w), upload(gpu, &bias));
    let bp = BnParams::default();
    let running_mean0 = random_f32(rng, c, -1.0, 1.0);
    let running_var0 = random_f32(rng, c, 0.5, 2.0);
    let what = format!("fwd+bn-stats {xs} {p:?}");
    let epilogue = ConvEpilogue {
        shift: Some(bd.slice()),
        ..ConvEpilogue::NONE
    };
    let conv = ConvFwd {
        x: xd.slice(),
        xs,
        w: wd.slice(),
        p,
    };
    let mut plain = poisoned_f16(gpu, ys.len());
    gpu_conv::conv2d_fwd(gpu, conv, &epilogue, plain.slice_mut()).unwrap();
    let plain = plain.to_host(gpu).unwrap();
    let run = || {
        let mut y = poisoned_f16(gpu, ys.len());
        let mut saved = poisoned_f32(gpu, 2 * c);
        let mut rm = upload(gpu, &running_mean0);
        let mut rv = upload(gpu, &running_var0);
        let mut ws = poisoned_f32(gpu, gpu_conv::conv2d_bn_stats_workspace_len(ys));
        let targets = stats_targets(&mut saved, (&mut rm, &mut rv), &mut ws);
        gpu_conv::conv2d_fwd_bn_stats(gpu, conv, Some(bd.slice()), y.slice_mut(), bp, targets).unwrap();
        let host = |b: &DeviceBuffer<f32>| b.to_host(gpu).unwrap();
        (y.to_host(gpu).unwrap(), host(&saved), host(&rm), host(&rv))
    };
    let (y, saved, rm, rv) = run();
    assert!(same_bits(&y, &plain), "{what}: y differs from conv2d_fwd's");
    let (mut want_saved, mut want_rm, mut want_rv) = (vec![0.0f32; 2 * c], running_mean0.clone(), running_var0.clone());
    let running = BnRunning::new(want_rm.as_mut_slice(), want_rv.as_mut_slice());
    bn_batch_stats(&to_f32(&y), ys, bp, &mut want_saved, running);
    assert_close(&format!("{what} mean"), &saved[..c], &want_saved[..c], 1e-5);
    assert_close(&format!("{what} invstd"), &saved[c..], &want_saved[c..], 1e-5);
    assert_close(&format!("{what} running mean"), &rm, &want_rm, 1e-5);
    assert_close(&format!("{what} running var"), &rv, &want_rv, 1e-5);
    let again = run();
    assert!(same_bits(&again.0, &y), "{what}: repeat y differs");
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&again.1), bits(&saved), "{what}: repeat statistics differ");
}

/// Input gradient, overwriting and accumulating, vs the CPU twin.
fn check_dgrad(gpu: &Gpu, rng: &mut ChaCha8Rng, xs: Shape4, p: &ConvParams, tile: Option<Tile>) {
    let ys = p.out_shape(xs);
    let dy = random_f16(rng, ys.len(), -1.0, 1.0);
    let w = weights(rng, p);
    let (dyf, wf) = (to_f32(&dy), to_f32(&w));
    let (dyd, wd) = (upload(gpu, &dy), upload(gpu, &w));
    let mut ws = poisoned_f16(gpu, gpu_conv::conv2d_dgrad_workspace_len(p));
    let what = format!("dgrad {xs} {p:?} {tile:?}");
    for accumulate in [false, true] {
        let old = random_f16(rng, xs.len(), -1.0, 1.0);
        let mut want = if accumulate { to_f32(&old) } else { vec![0.0; xs.len()] };
        cpu_conv::conv2d_dgrad(&dyf, &wf, p, &mut want, xs, accumulate);
        let mut run = || {
            let mut dx = if accumulate {
                upload(gpu, &old)
            } else {
                poisoned_f16(gpu, xs.len())
            };
            let d = ConvDgrad {
                dy: dyd.slice(),
                w: wd.slice(),
                p,
                xs,
            };
            let dx_out = GradOut {
                data: dx.slice_mut(),
                accumulate,
            };
            let r = match tile {
                Some(t) => gpu_conv::conv2d_dgrad_tiled(gpu, d, dx_out, ws.slice_mut(), t),
                None => gpu_conv::conv2d_dgrad(gpu, d, dx_out, ws.slice_mut()),
            };
            r.unwrap();
            dx.to_host(gpu).unwrap()
        };
        let first = run();
        assert_close(&format!("{what} accumulate {accumulate}"), &to_f32(&first), &want, TOL);
        assert!(same_bits(&first, &run()), "{what}: repeat differs");
    }
}

/// `check` (a pass against its CPU twin, with the tile the table picks) on every shape class and
/// `random` random shapes.
fn check_classes_and_random_shapes(check: fn(&Gpu, &mut ChaCha8Rng, Shape4, &ConvParams, Option<Tile>), random: usize) {
    let gpu = gpu();
    let mut rng = rng();
    let mut shapes = shape_classes();
    shapes.extend(random_shapes(&mut rng, random));
    for (xs, p) in shapes {
        check(&gpu, &mut rng, xs, &p, None);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn forward_matches_the_cpu_twin() {
    check_classes_and_random_shapes(check_fwd, 24);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bn_statistics_epilogue_matches_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    let mut shapes = shape_classes();
    shapes.extend(random_shapes(&mut rng, 12));
    // HRNet-W32's widest maps, where a row tile is a small part of a channel's pixels.
    shapes.push((Shape4::new(4, 96, 96, 32), ConvParams::square(32, 32, 3, 1, 1)));
    shapes.push((Shape4::new(1, 64, 64, 64), ConvParams::square(64, 256, 1, 1, 0)));
    for (xs, p) in shapes {
        check_fwd_bn_stats(&gpu, &mut rng, xs, &p);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn input_gradient_matches_the_cpu_twin() {
    check_classes_and_random_shapes(check_dgrad, 24);
}

/// Every tile configuration of both loaders and both passes, whatever the table would pick.
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_tile_configuration_matches_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    let shapes = [
        (Shape4::new(2, 19, 13, 40), ConvParams::square(40, 136, 3, 1, 1)),
        (Shape4::new(1, 17, 15, 136), ConvParams::square(136, 40, 3, 2, 1)),
        (Shape4::new(2, 19, 13, 18), ConvParams::square(18, 70, 3, 1, 1)),
        (Shape4::new(1, 17, 15, 70), ConvParams::square(70, 18, 3, 2, 1)),
    ];
    for (xs, p) in shapes {
        let tiles = |vec: bool| -> Vec<Tile> {
            if vec {
                let mut v = TILES_BIG_SMEM.to_vec();
                v.extend(TILES_SMALL_SMEM.iter().filter(|t| !TILES_BIG_SMEM.contains(t)));
                v
            } else {
                TILES_GENERAL.to_vec()
            }
        };
        for t in tiles(xs.c % 8 == 0) {
            check_fwd(&gpu, &mut rng, xs, &p, Some(t));
        }
        for t in tiles(p.c_out % 8 == 0) {
            check_dgrad(&gpu, &mut rng, xs, &p, Some(t));
        }
    }
}

/// The transposed convolution (ResNet head: 4x4, stride 2, pad 1, 256 channels) and its input
/// gradient, vs the CPU twins.
#[test]
#[ignore = "needs a CUDA GPU"]
fn transposed_convolution_matches_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    let cases = [
        (Shape4::new(4, 6, 5, 256), ConvParams::square(256, 256, 4, 2, 1)),
        (Shape4::new(1, 7, 9, 64), ConvParams::square(64, 29, 4, 2, 1)),
        (Shape4::new(2, 5, 4, 29), ConvParams::square(29, 40, 4, 2, 1)),
        (Shape4::new(1, 3, 5, 16), ConvParams::square(16, 24, 3, 2, 1)),
    ];
    for (xs, p) in cases {
        let ys = p.transposed_out_shape(xs);
        let what = format!("transposed {xs} {p:?}");
        let x = random_f16(&mut rng, xs.len(), -1.0, 1.0);
        let w = weights(&mut rng, &p.adjoint());
        let (xf, wf) = (to_f32(&x), to_f32(&w));
        let (xd, wd) = (upload(&gpu, &x), upload(&gpu, &w));
        let mut ws = poisoned_f16(&gpu, gpu_conv::conv2d_dgrad_workspace_len(&p.adjoint()));
        let mut want = vec![0.0f32; ys.len()];
        cpu_conv::conv_transpose2d_fwd(&xf, xs, &wf, &p, &mut want);
        let mut run = || {
            let mut y = poisoned_f16(&gpu, ys.len());
            let conv = ConvFwd {
                x: xd.slice(),
                xs,
                w: wd.slice(),
                p: &p,
            };
            gpu_conv::conv_transpose2d_fwd(&gpu, conv, y.slice_mut(), ws.slice_mut()).unwrap();
            y.to_host(&gpu).unwrap()
        };
        let first = run();
        assert_close(&format!("{what} fwd"), &to_f32(&first), &want, TOL);
        assert!(same_bits(&first, &run()), "{what}: fwd repeat differs");

        let dy = random_f16(&mut rng, ys.len(), -1.0, 1.0);
        let dyd = upload(&gpu, &dy);
        for accumulate in [false, true] {
            let old = random_f16(&mut rng, xs.len(), -1.0, 1.0);
            let mut want = if accumulate { to_f32(&old) } else { vec![0.0; xs.len()] };
            cpu_conv::conv_transpose2d_dgrad(&to_f32(&dy), &wf, &p, &mut want, xs, accumulate);
            let run = || {
                let mut dx = if accumulate {
                    upload(&gpu, &old)
                } else {
                    poisoned_f16(&gpu, xs.len())
                };
                let d = ConvDgrad {
                    dy: dyd.slice(),
                    w: wd.slice(),
                    p: &p,
                    xs,
                };
                let dx_out = GradOut {
                    data: dx.slice_mut(),
                    accumulate,
                };
                gpu_conv::conv_transpose2d_dgrad(&gpu, d, dx_out).unwrap();
                dx.to_host(&gpu).unwrap()
            };
            let first = run();
            assert_close(&format!("{what} dgrad acc {accumulate}"), &to_f32(&first), &want, TOL);
            assert!(same_bits(&first, &run()), "{what}: dgrad repeat differs");
        }
    }
}

/// Wrong lengths and shapes are errors with a message, never a launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_arguments_are_refused() {
    let gpu = gpu();
    let p = ConvParams::square(8, 16, 3, 1, 1);
    let xs = Shape4::new(1, 5, 5, 8);
    let x = upload(&gpu, &vec![f16::ONE; xs.len()]);
    let w = upload(&gpu, &vec![f16::ONE; p.weight_len()]);
    let mut y = poisoned_f16(&gpu, 5 * 5 * 16);
    let mut short = poisoned_f16(&gpu, 10);
    let conv = ConvFwd {
        x: x.slice(),
        xs,
        w: w.slice(),
        p: &p,
    };
    let e = gpu_conv::conv2d_fwd(&gpu, conv, &ConvEpilogue::NONE, short.slice_mut());
    assert!(format!("{:#}", e.unwrap_err()).contains("y has 10 elements"));
    let wrong = ConvFwd {
        xs: Shape4::new(1, 5, 5, 4),
        ..conv
    };
    assert!(gpu_conv::conv2d_fwd(&gpu, wrong, &ConvEpilogue::NONE, y.slice_mut()).is_err());
    let scale = upload(&gpu, &[1.0f32; 3]);
    let bad = ConvEpilogue {
        scale: Some(scale.slice()),
        ..ConvEpilogue::NONE
    };
    assert!(gpu_conv::conv2d_fwd(&gpu, conv, &bad, y.slice_mut()).is_err());
    let mut ws = poisoned_f16(&gpu, 3);
    let dy = upload(&gpu, &vec![f16::ONE; 5 * 5 * 16]);
    let mut dx = poisoned_f16(&gpu, xs.len());
    let d = ConvDgrad {
        dy: dy.slice(),
        w: w.slice(),
        p: &p,
        xs,
    };
    let dx_out = GradOut::new(dx.slice_mut(), false);
    let e = gpu_conv::conv2d_dgrad(&gpu, d, dx_out, ws.slice_mut());
    assert!(format!("{:#}", e.unwrap_err()).contains("workspace"));
}

/// The GEMMs of every convolution of a graph, forward and input gradient, with the convolution
/// they come from.
fn gemms(model: &str) -> Vec<(Pass, GemmShape, String)> {
    let g = ModelConfig::new(model, 1, 29, [768, 768], 4).unwrap().build().unwrap();
    let mut out = Vec::new();
    for node in &g.nodes {
        let xs = g.shape(node.inputs.first().copied().unwrap_or(g.input));
        let name = format!("{model} {} {xs}", node.name);
        match &node.op {
            Op::Conv { p, .. } => {
                out.push((Pass::Fwd, GemmShape::fwd(xs, p), name.clone()));
                out.push((Pass::Dgrad, GemmShape::dgrad(xs, p), name));
            }
            Op::ConvTranspose { p, .. } => {
                // The transposed convolution is the adjoint's dgrad; its input gradient the
                // adjoint's forward.
                let ys = p.transposed_out_shape(xs);
                out.push((Pass::Dgrad, GemmShape::dgrad(ys, &p.adjoint()), name.clone()));
                out.push((Pass::Fwd, GemmShape::fwd(ys, &p.adjoint()), name));
            }
            _ => {}
        }
    }
    out
}

/// The tile table gives every convolution of HRNet-W32 and ResNet-50 at 768x768, batch 4, a
/// kernel that exists, fits shared memory and the grid limits, uses the 16-byte loader whenever
/// the channels allow, is never twice as wide as the output channels need, and spreads over every SM
/// of an H100 (132) and an RTX 3070 Ti (48) whenever the smallest tile could.
#[test]
fn tile_table_covers_hrnet_and_resnet_convolutions() {
    let gpus = [
        GpuShape {
            sms: 132,
            smem_per_sm: gpu_conv::smem_per_sm((9, 0)),
        },
        GpuShape {
            sms: 48,
            smem_per_sm: gpu_conv::smem_per_sm((8, 6)),
        },
    ];
    let mut count = 0;
    for model in ["hrnet-w32", "resnet50"] {
        for (pass, g, name) in gemms(model) {
            for d in &gpus {
                let lp = gpu_conv::plan(pass, &g, true, d, None).unwrap();
                let what = format!("{name} {pass:?} {g:?} on {d:?}: {lp:?}");
                assert!(kernel_image::module_of(lp.kernel).is_some(), "{what}: no such kernel");
                assert_eq!(lp.vec, g.cs % 8 == 0, "{what}");
                assert!(
                    lp.tile.bn <= 2 * g.cols.next_multiple_of(32),
                    "{what}: tile far wider than needed"
                );
                let blocks = (lp.grid.0 * lp.grid.1 * lp.grid.2) as usize;
                let most = g.slices * g.rows.div_ceil(64) * g.cols.div_ceil(32);
                assert!(blocks >= d.sms.min(most), "{what}: {blocks} blocks leave SMs idle");
                assert!(
                    lp.smem_bytes as usize + 1024 <= d.smem_per_sm,
                    "{what}: does not fit an SM"
                );
                count += 1;
            }
        }
    }
    assert!(count > 400, "only {count} GEMMs found");
}
