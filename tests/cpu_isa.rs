//! The CPU convolutions (the inference forward's Winograd path too) and batch norms give bit-identical results whatever the instruction set (AVX-512, AVX2,
//! baseline) and the thread count, as `backend::cpu::simd` promises: the tile sizes and the
//! intrinsic tiles change where an element is computed, never its chain of fused multiply-adds.
//!
//! One test in its own binary: the instruction set is process-wide state.
use cephalo::backend::cpu::batchnorm::BnForward;
use cephalo::backend::cpu::{batchnorm, conv, simd};
use cephalo::backend::{AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, ConvParams, GradOut, Shape4};
use rand::{Rng, SeedableRng};

type Outputs = Vec<(String, Vec<u32>)>;

/// Forward, input gradient and weight gradient of every case, as bit patterns.
fn run_all(cases: &[(Shape4, ConvParams)]) -> Outputs {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect() };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut out = Vec::new();
    for (xs, p) in cases {
        let ys = p.out_shape(*xs);
        let (x, w, b, dy) = (
            random(xs.len()),
            random(p.weight_len()),
            random(p.c_out),
            random(ys.len()),
        );
        let mut y = vec![0.0; ys.len()];
        if conv::winograd_suits(p) {
            // The inference forward's Winograd path, before `y` holds the direct forward.
            conv::conv2d_fwd_winograd(&x, *xs, &w, p, &mut y);
            out.push((format!("Winograd fwd {xs} {p:?}"), bits(&y)));
        }
        conv::conv2d_fwd(&x, *xs, &w, p, Some(&b), &mut y);
        out.push((format!("fwd {xs} {p:?}"), bits(&y)));
        let mut dx = vec![0.0; xs.len()];
        conv::conv2d_dgrad(&dy, &w, p, &mut dx, *xs, false);
        out.push((format!("dgrad {xs} {p:?}"), bits(&dx)));
        let mut dw = vec![0.0; p.weight_len()];
        conv::conv2d_wgrad(&x, *xs, &dy, p, &mut dw);
        out.push((format!("wgrad {xs} {p:?}"), bits(&dw)));

        // Batch norm on the convolution's output: statistics, the plain and the block-join
        // forward, and both backwards.
        let c = ys.c;
        let (gamma, beta, res) = (random(c), random(c), random(ys.len()));
        let (mut saved, mut rm, mut rv) = (vec![0.0; 2 * c], vec![0.0; c], vec![1.0; c]);
        let bp = BnParams::default();
        let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
        batchnorm::bn_batch_stats(&y, ys, bp, &mut saved, running);
        out.push((format!("bn stats {ys}"), bits(&[saved.clone(), rm, rv].concat())));
        let bn = BnWeights::new(gamma.as_slice(), beta.as_slice(), bp);
        let mut z = vec![0.0; ys.len()];
        batchnorm::bn_apply_saved(&y, ys, bn, &saved, true, &mut z);
        out.push((format!("bn relu {ys}"), bits(&z)));
        batchnorm::bn_add_relu_apply_saved(&y, ys, bn, &saved, &res, &mut z);
        out.push((format!("bn add relu {ys}"), bits(&z)));
        let (mut dx, mut dg, mut db) = (vec![0.0; ys.len()], vec![0.0; c], vec![0.0; c]);
        let fwd = BnForward {
            x: &y,
            xs: ys,
            bn,
            saved: &saved,
        };
        fn grads<'a>(dgamma: &'a mut [f32], dbeta: &'a mut [f32]) -> BnGrads<&'a mut [f32]> {
            BnGrads::new(dgamma, dbeta)
        }
        fn overwrite(data: &mut [f32]) -> GradOut<&mut [f32]> {
            GradOut::new(data, false)
        }
        batchnorm::bn_bwd(&dy, fwd, true, overwrite(&mut dx), grads(&mut dg, &mut db));
        out.push((
            format!("bn bwd {ys}"),
            bits(&[dx.clone(), dg.clone(), db.clone()].concat()),
        ));
        let mut dres = vec![0.0; ys.len()];
        let join = AddReluJoin {
            y: z.as_slice(),
            d_residual: Some(overwrite(&mut dres)),
        };
        batchnorm::bn_add_relu_bwd(&dy, fwd, join, overwrite(&mut dx), grads(&mut dg, &mut db));
        out.push((format!("bn add relu bwd {ys}"), bits(&[dx, dg, db, dres].concat())));
    }
    out
}

#[test]
fn convolutions_and_batch_norms_are_bit_identical_across_instruction_sets_and_threads() {
    // 8- and 16-lane blocks, channel counts that need padding lanes, strides 1 and 2, 1x1 and
    // 3x3, and enough pixels for several weight-gradient chunks and parallel jobs.
    let cases = [
        (Shape4::new(2, 24, 20, 8), ConvParams::square(8, 8, 3, 1, 1)),
        (Shape4::new(1, 30, 26, 32), ConvParams::square(32, 32, 3, 1, 1)),
        (Shape4::new(2, 33, 29, 16), ConvParams::square(16, 64, 3, 2, 1)),
        (Shape4::new(1, 40, 36, 24), ConvParams::square(24, 120, 1, 1, 0)),
        (Shape4::new(1, 21, 19, 5), ConvParams::square(5, 19, 3, 1, 1)),
        (Shape4::new(1, 64, 56, 64), ConvParams::square(64, 64, 3, 1, 1)),
    ];
    let threads = |n: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("thread pool")
    };
    let reference = threads(1).install(|| {
        simd::set_isa(simd::Isa::Baseline).expect("the baseline runs everywhere");
        run_all(&cases)
    });
    let mut checked = 0;
    for isa in [simd::Isa::Avx512, simd::Isa::Avx2, simd::Isa::Baseline] {
        if !isa.supported() {
            eprintln!("{} not supported by this CPU: not checked", isa.name());
            continue;
        }
        for n in [1, 2, 3] {
            let got = threads(n).install(|| {
                simd::set_isa(isa).expect("supported");
                run_all(&cases)
            });
            for ((what, want), (_, have)) in reference.iter().zip(&got) {
                let differ = want.iter().zip(have).filter(|(a, b)| a != b).count();
                assert_eq!(
                    differ,
                    0,
                    "{what}: {differ} values differ between baseline/1 thread and {}/{n} threads",
                    isa.name()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "at least the baseline at three thread counts");
}
