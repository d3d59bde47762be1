//! Tests of `kernels/conv_wgrad.cu` (through `backend/cuda/conv_wgrad.rs`) against the CPU twins
//! `conv2d_wgrad`, `conv2d_bias_grad` and `conv_transpose2d_wgrad` in `backend/cpu/conv.rs`, on the
//! exact f32 values of fp16 inputs. The GPU tests are ignored without a GPU; the plan test at the
//! end runs anywhere.
//!
//! Tolerance: 1e-2 for fp16 ops (docs/architecture.md#precision-and-tolerances). Products of fp16
//! values are exact in fp32 and every sum is fp32 on both sides, so the measured error is far
//! smaller; it is printed per case.
mod gpu_ops_support;

use cephalo::backend::cuda::conv_wgrad::{self, ConvWgrad, Tile, WgradPlan};
use cephalo::backend::{cpu, ConvParams, Shape4};
use cephalo::gpu::{DeviceBuffer, Gpu};
use cephalo::graph::Op;
use cephalo::model::ModelConfig;
use gpu_ops_support::*;
use half::f16;
use rand_chacha::ChaCha8Rng;

/// (input shape, convolution, with bias): every path and shape family the networks use, at sizes
/// the CPU twin checks quickly. Spatial sizes are odd where they can be.
fn conv_cases() -> Vec<(Shape4, ConvParams, bool)> {
    let sq = ConvParams::square;
    vec![
        // 3x3 stride 1 and 2 on HRNet's channel counts; tiles 32x128, 64x128, 128x128.
        (Shape4::new(1, 17, 19, 32), sq(32, 32, 3, 1, 1), false),
        (Shape4::new(4, 48, 48, 32), sq(32, 32, 3, 1, 1), false), // many splits
        (Shape4::new(4, 23, 25, 64), sq(64, 128, 3, 2, 1), false),
        (Shape4::new(2, 11, 9, 128), sq(128, 64, 3, 1, 1), true),
        (Shape4::new(1, 7, 5, 512), sq(512, 512, 3, 1, 1), false),
        // 1x1 (ResNet bottlenecks, HRNet fuse layers), up to 2048 channels.
        (Shape4::new(4, 13, 11, 256), sq(256, 64, 1, 1, 0), false),
        (Shape4::new(4, 9, 7, 64), sq(64, 256, 1, 1, 0), false),
        (Shape4::new(1, 6, 6, 2048), sq(2048, 512, 1, 1, 0), false),
        (Shape4::new(2, 12, 12, 1024), sq(1024, 2048, 1, 2, 0), false),
        // Stems on one input channel (scalar path): ResNet 7x7 s2 p3, HRNet 3x3 s2 p1.
        (Shape4::new(1, 37, 41, 1), sq(1, 64, 7, 2, 3), false),
        (Shape4::new(4, 33, 31, 1), sq(1, 64, 3, 2, 1), false),
        // HRNet-W18's channel counts (scalar path) and the 144s.
        (Shape4::new(2, 15, 13, 18), sq(18, 36, 3, 1, 1), false),
        (Shape4::new(1, 9, 9, 36), sq(36, 72, 3, 2, 1), false),
        (Shape4::new(2, 7, 7, 72), sq(72, 144, 3, 1, 1), false),
        (Shape4::new(1, 5, 5, 144), sq(144, 18, 1, 1, 0), false),
        // The head: 1x1 to 29 landmarks with bias.
        (Shape4::new(4, 25, 23, 32), sq(32, 29, 1, 1, 0), true),
        (Shape4::new(1, 3, 3, 8), sq(8, 8, 3, 1, 1), true),
    ]
}

/// (input shape, transposed convolution): SimpleBaseline's 4x4 stride-2 deconvolutions.
fn transposed_cases() -> Vec<(Shape4, ConvParams)> {
    vec![
        (Shape4::new(1, 6, 6, 256), ConvParams::square(256, 256, 4, 2, 1)),
        (Shape4::new(2, 5, 7, 512), ConvParams::square(512, 256, 4, 2, 1)),
        (Shape4::new(1, 4, 3, 24), ConvParams::square(24, 18, 4, 2, 1)),
    ]
}

struct Out {
    dw: Vec<f32>,
    db: Option<Vec<f32>>,
}

/// Runs the GPU weight gradient with poisoned outputs and workspace; `misalign` shifts x by one
/// element so the scalar loaders run where the vector ones would.
fn run_gpu(gpu: &Gpu, x: &[f16], xs: Shape4, dy: &[f16], p: &ConvParams, bias: bool, misalign: bool) -> Out {
    let shift = misalign as usize;
    let mut xh = vec![f16::ZERO; shift];
    xh.extend_from_slice(x);
    let xd = upload(gpu, &xh);
    let dyd = upload(gpu, dy);
    let mut dw = poisoned_f32(gpu, p.weight_len());
    let mut db = poisoned_f32(gpu, p.c_out);
    let mut ws = poisoned_f32(gpu, conv_wgrad::conv2d_wgrad_workspace_len(xs, p).max(1));
    let c = ConvWgrad {
        x: xd.slice().sub(shift, x.len()),
        xs,
        dy: dyd.slice(),
        p,
    };
    conv_wgrad::conv2d_wgrad(gpu, c, dw.slice_mut(), bias.then(|| db.slice_mut()), ws.slice_mut()).unwrap();
    Out {
        dw: dw.to_host(gpu).unwrap(),
        db: bias.then(|| db.to_host(gpu).unwrap()),
    }
}

fn same_f32_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn check_conv(gpu: &Gpu, rng: &mut ChaCha8Rng, xs: Shape4, p: ConvParams, bias: bool) {
    let ys = p.out_shape(xs);
    let plan = WgradPlan::new(xs, &p);
    let what = format!(
        "conv2d_wgrad {xs} {}x{} s{} p{} -> {} ({plan:?})",
        p.kh, p.kw, p.stride, p.pad, p.c_out
    );
    let x = random_f16(rng, xs.len(), -1.0, 1.0);
    let dy = random_f16(rng, ys.len(), -1.0, 1.0);
    let (x32, dy32) = (to_f32(&x), to_f32(&dy));
    let mut want = vec![0.0f32; p.weight_len()];
    cpu::conv::conv2d_wgrad(&x32, xs, &dy32, &p, &mut want);

    let got = run_gpu(gpu, &x, xs, &dy, &p, bias, false);
    let e = rel_err(&format!("{what}: dw"), &got.dw, &want);
    println!("{what}: dw rel err {e:.2e}");
    assert!(e < 1e-2, "{what}: dw relative error {e:.3e}");
    if let Some(db) = &got.db {
        let mut want_db = vec![0.0f32; p.c_out];
        cpu::conv::conv2d_bias_grad(&dy32, ys, &mut want_db);
        let e = rel_err(&format!("{what}: db"), db, &want_db);
        println!("{what}: db rel err {e:.2e}");
        assert!(e < 1e-2, "{what}: db relative error {e:.3e}");
    }

    // Deterministic: a second run gives the same bits, and so do the scalar loaders.
    let again = run_gpu(gpu, &x, xs, &dy, &p, bias, false);
    assert!(same_f32_bits(&got.dw, &again.dw), "{what}: dw differs between two runs");
    assert_eq!(got.db.is_some(), again.db.is_some());
    if let (Some(a), Some(b)) = (&got.db, &again.db) {
        assert!(same_f32_bits(a, b), "{what}: db differs between two runs");
    }
    let scalar = run_gpu(gpu, &x, xs, &dy, &p, bias, true);
    assert!(
        same_f32_bits(&got.dw, &scalar.dw),
        "{what}: the scalar loaders (misaligned x) give other bits than the vector ones"
    );

    // The default plans of these small shapes mostly pick 64 x 16 tiles; every other tile (and
    // its loader variants: x at an odd element offset) must agree with the CPU twin too.
    let dyd = upload(gpu, &dy);
    // The same x values at element 0 (aligned) and at element 1 (2 bytes off 16-byte alignment).
    let x_at = [upload(gpu, &x), upload(gpu, &[&[f16::ZERO][..], &x[..]].concat())];
    for tile in Tile::ALL {
        let plan = WgradPlan::with(xs, &p, tile, 2);
        let mut bits = Vec::new();
        for offset in [0, 1] {
            let mut dw = poisoned_f32(gpu, p.weight_len());
            let mut ws = poisoned_f32(gpu, plan.partial_len(&p).max(1));
            let c = ConvWgrad {
                x: x_at[offset].slice().sub(offset, x.len()),
                xs,
                dy: dyd.slice(),
                p: &p,
            };
            conv_wgrad::conv2d_wgrad_planned(gpu, c, plan, dw.slice_mut(), None, ws.slice_mut()).unwrap();
            let dw = dw.to_host(gpu).unwrap();
            let e = rel_err(&format!("{what} {plan:?}"), &dw, &want);
            assert!(
                e < 1e-2,
                "{what} {plan:?} (x at offset {offset}): relative error {e:.3e}"
            );
            bits.push(dw);
        }
        assert!(
            same_f32_bits(&bits[0], &bits[1]),
            "{what} {plan:?}: loader variants give other bits"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_wgrad_matches_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    for (xs, p, bias) in conv_cases() {
        check_conv(&gpu, &mut rng, xs, p, bias);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv_transpose2d_wgrad_matches_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    for (xs, p) in transposed_cases() {
        let ys = p.transposed_out_shape(xs);
        let what = format!(
            "conv_transpose2d_wgrad {xs} {}x{} s{} p{} -> {ys}",
            p.kh, p.kw, p.stride, p.pad
        );
        let x = random_f16(&mut rng, xs.len(), -1.0, 1.0);
        let dy = random_f16(&mut rng, ys.len(), -1.0, 1.0);
        let mut want = vec![0.0f32; p.weight_len()];
        cpu::conv::conv_transpose2d_wgrad(&to_f32(&x), xs, &to_f32(&dy), &p, &mut want);

        let run = || {
            let (xd, dyd) = (upload(&gpu, &x), upload(&gpu, &dy));
            let mut dw = poisoned_f32(&gpu, p.weight_len());
            let mut ws = poisoned_f32(&gpu, conv_wgrad::conv_transpose2d_wgrad_workspace_len(xs, &p).max(1));
            let c = ConvWgrad {
                x: xd.slice(),
                xs,
                dy: dyd.slice(),
                p: &p,
            };
            conv_wgrad::conv_transpose2d_wgrad(&gpu, c, dw.slice_mut(), ws.slice_mut()).unwrap();
            dw.to_host(&gpu).unwrap()
        };
        let got = run();
        let e = rel_err(&what, &got, &want);
        println!("{what}: rel err {e:.2e}");
        assert!(e < 1e-2, "{what}: relative error {e:.3e}");
        assert!(same_f32_bits(&got, &run()), "{what}: differs between two runs");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_tile_and_split_count_agrees() {
    // One shape through every tile with one split and with many: all close to the CPU twin.
    let gpu = gpu();
    let mut rng = rng();
    let (xs, p) = (Shape4::new(2, 21, 19, 16), ConvParams::square(16, 40, 3, 2, 1));
    let ys = p.out_shape(xs);
    let x = random_f16(&mut rng, xs.len(), -1.0, 1.0);
    let dy = random_f16(&mut rng, ys.len(), -1.0, 1.0);
    let mut want = vec![0.0f32; p.weight_len()];
    cpu::conv::conv2d_wgrad(&to_f32(&x), xs, &to_f32(&dy), &p, &mut want);
    let (xd, dyd) = (upload(&gpu, &x), upload(&gpu, &dy));
    for tile in Tile::ALL {
        for splits in [1, 3, 1000] {
            let plan = WgradPlan::with(xs, &p, tile, splits);
            let mut dw = poisoned_f32(&gpu, p.weight_len());
            let mut ws: DeviceBuffer<f32> = poisoned_f32(&gpu, plan.partial_len(&p).max(1));
            let c = ConvWgrad {
                x: xd.slice(),
                xs,
                dy: dyd.slice(),
                p: &p,
            };
            conv_wgrad::conv2d_wgrad_planned(&gpu, c, plan, dw.slice_mut(), None, ws.slice_mut()).unwrap();
            let e = rel_err(&format!("{plan:?}"), &dw.to_host(&gpu).unwrap(), &want);
            assert!(e < 1e-4, "{plan:?}: relative error {e:.3e}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_lengths_are_refused() {
    let gpu = gpu();
    let (xs, p) = (Shape4::new(1, 5, 5, 8), ConvParams::square(8, 8, 3, 1, 1));
    let x = upload(&gpu, &vec![f16::ONE; xs.len()]);
    let dy = upload(&gpu, &vec![f16::ONE; p.out_shape(xs).len()]);
    let mut dw = poisoned_f32(&gpu, p.weight_len() - 1);
    let mut ws = poisoned_f32(&gpu, 1);
    let c = ConvWgrad {
        x: x.slice(),
        xs,
        dy: dy.slice(),
        p: &p,
    };
    let err = conv_wgrad::conv2d_wgrad(&gpu, c, dw.slice_mut(), None, ws.slice_mut()).unwrap_err();
    assert!(format!("{err:#}").contains("dw has"), "{err:#}");
}

/// Every convolution of HRNet-W32 and ResNet-50 at 768x768, batch 4, one input channel: the
/// default plan's tile and splits are valid, cover every pixel, fill an H100 unless the pixels
/// run out, and keep the workspace within its stated bound. Runs without a GPU.
#[test]
fn plans_are_valid_for_every_conv_of_the_networks() {
    let mut seen = 0;
    for model in ["hrnet-w32", "resnet50"] {
        let g = ModelConfig::new(model, 1, 29, [768, 768], 4).unwrap().build().unwrap();
        for node in &g.nodes {
            let (xs, p) = match &node.op {
                Op::Conv { p, .. } => (g.shape(node.inputs[0]), *p),
                // The transposed convolution's gradient is its adjoint's.
                Op::ConvTranspose { p, .. } => (p.transposed_out_shape(g.shape(node.inputs[0])), p.adjoint()),
                _ => continue,
            };
            seen += 1;
            let plan = WgradPlan::new(xs, &p);
            let steps = p.out_shape(xs).pixels().div_ceil(32);
            let what = format!("{model} {} {xs} {p:?}: {plan:?}", node.name);
            assert!(
                plan.tile.smem_bytes() <= 99 * 1024,
                "{what}: shared memory over an sm_86 block's"
            );
            assert!(plan.splits >= 1 && plan.steps_per_split >= 1, "{what}");
            assert!(plan.splits * plan.steps_per_split >= steps, "{what}: pixels left out");
            assert!(
                (plan.splits - 1) * plan.steps_per_split < steps,
                "{what}: an empty split"
            );
            assert!(
                plan.splits == 1 || plan.steps_per_split >= 16,
                "{what}: splits too short"
            );
            // Fewer CTAs than an H100 has SMs only where splits of 16 stages run out, or the
            // partials' memory bound stops them.
            let (ctas, tiles) = (plan.ctas(&p), plan.ctas(&p) / plan.splits);
            let by_steps = (steps / 16).max(1);
            let by_memory = ((8 << 20) / p.weight_len()).max(1);
            assert!(
                ctas >= 132 || 2 * plan.splits >= by_steps.min(by_memory),
                "{what}: only {ctas} CTAs ({tiles} tiles)"
            );
            let ws = conv_wgrad::conv2d_wgrad_workspace_len(xs, &p);
            println!("{what}: {ctas} CTAs, workspace {ws} floats");
            assert!(ws <= (8 << 20).max(128 * p.c_out), "{what}: workspace {ws}");
            assert!(ws >= plan.partial_len(&p), "{what}");
        }
        // The transposed-convolution entry point's workspace is its adjoint's.
        for node in &g.nodes {
            if let Op::ConvTranspose { p, .. } = &node.op {
                let xs = g.shape(node.inputs[0]);
                assert_eq!(
                    conv_wgrad::conv_transpose2d_wgrad_workspace_len(xs, p),
                    conv_wgrad::conv2d_wgrad_workspace_len(p.transposed_out_shape(xs), &p.adjoint())
                );
            }
        }
    }
    assert!(seen > 100, "only {seen} convolutions found");
}
