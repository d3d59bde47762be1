//! GPU tests of `kernels/resample.cu` against the CPU twins in `backend/cpu/resample.rs`.
//! Ignored without a GPU. The kernels repeat the CPU's tap arithmetic and fused multiply-adds in
//! the same order, so results must match bit for bit after rounding to fp16.
mod gpu_ops_support;

use cephalo::backend::upsample_shape;
use cephalo::backend::{cpu, cuda, Shape4, UpsampleMode};
use gpu_ops_support::*;

/// (input shape, factor): HRNet's factors 2, 4 and 8, plus 3, on HRNet's channel counts.
const CASES: [(Shape4, usize); 7] = [
    (Shape4::new(1, 5, 7, 18), 2),
    (Shape4::new(4, 3, 5, 32), 4),
    (Shape4::new(1, 2, 3, 36), 8),
    (Shape4::new(4, 6, 5, 64), 2),
    (Shape4::new(1, 3, 4, 256), 2),
    (Shape4::new(4, 4, 3, 29), 3),
    (Shape4::new(1, 1, 1, 8), 4),
];

/// The cases with their outputs' shapes: (xs, factor, ys).
fn cases() -> impl Iterator<Item = (Shape4, usize, Shape4)> {
    CASES
        .into_iter()
        .map(|(xs, factor)| (xs, factor, upsample_shape(xs, factor)))
}

const MODES: [UpsampleMode; 2] = [UpsampleMode::Nearest, UpsampleMode::Bilinear];

#[test]
#[ignore = "needs a CUDA GPU"]
fn upsample_forward_matches_cpu_bitwise() {
    let gpu = gpu();
    let mut rng = rng();
    for (xs, factor, ys) in cases() {
        let x = random_f16(&mut rng, xs.len() + 1, -4.0, 4.0);
        // Offset 0 takes the 8-channel vector path where c allows, offset 1 the scalar one.
        for off in [0usize, 1] {
            let x32 = to_f32(&x[off..off + xs.len()]);
            let xd = upload(&gpu, &x);
            for mode in MODES {
                let mut want = vec![0.0; ys.len()];
                cpu::resample::upsample_fwd(&x32, xs, mode, &mut want, ys);
                let mut yd = poisoned_f16(&gpu, ys.len() + 1);
                cuda::resample::upsample_fwd(
                    &gpu,
                    xd.slice().sub(off, xs.len()),
                    xs,
                    mode,
                    yd.slice_mut().sub_mut(off, ys.len()),
                    ys,
                )
                .unwrap();
                let got = yd.to_host(&gpu).unwrap();
                let what = format!("upsample_fwd {mode:?} {xs} x{factor} off={off}");
                assert_bitwise(&what, &got[off..off + ys.len()], &want);
                assert_close(&what, &to_f32(&got[off..off + ys.len()]), &want, 1e-2);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn upsample_backward_matches_cpu_bitwise_when_writing_and_accumulating() {
    let gpu = gpu();
    let mut rng = rng();
    for (xs, factor, ys) in cases() {
        let dy = random_f16(&mut rng, ys.len() + 1, -2.0, 2.0);
        let dx0 = random_f16(&mut rng, xs.len() + 1, -2.0, 2.0);
        for off in [0usize, 1] {
            let dy32 = to_f32(&dy[off..off + ys.len()]);
            let dyd = upload(&gpu, &dy);
            for mode in MODES {
                for accumulate in [false, true] {
                    let mut want = if accumulate {
                        to_f32(&dx0[off..off + xs.len()])
                    } else {
                        vec![0.0; xs.len()]
                    };
                    cpu::resample::upsample_bwd(&dy32, ys, mode, &mut want, xs, accumulate);
                    let mut dxd = if accumulate {
                        upload(&gpu, &dx0)
                    } else {
                        poisoned_f16(&gpu, xs.len() + 1)
                    };
                    cuda::resample::upsample_bwd(
                        &gpu,
                        dyd.slice().sub(off, ys.len()),
                        ys,
                        mode,
                        dxd.slice_mut().sub_mut(off, xs.len()),
                        xs,
                        accumulate,
                    )
                    .unwrap();
                    let got = dxd.to_host(&gpu).unwrap();
                    let what = format!("upsample_bwd {mode:?} {xs} x{factor} off={off} accumulate={accumulate}");
                    assert_bitwise(&what, &got[off..off + xs.len()], &want);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn upsample_backward_is_the_adjoint_of_forward() {
    // <up(x), dy> = <x, up^T(dy)>, an identity independent of the CPU twin.
    let gpu = gpu();
    let mut rng = rng();
    let (xs, factor) = (Shape4::new(2, 7, 5, 24), 4);
    let ys = upsample_shape(xs, factor);
    let (x, dy) = (
        random_f16(&mut rng, xs.len(), -1.0, 1.0),
        random_f16(&mut rng, ys.len(), -1.0, 1.0),
    );
    for mode in MODES {
        let (xd, dyd) = (upload(&gpu, &x), upload(&gpu, &dy));
        let (mut yd, mut dxd) = (poisoned_f16(&gpu, ys.len()), poisoned_f16(&gpu, xs.len()));
        cuda::resample::upsample_fwd(&gpu, xd.slice(), xs, mode, yd.slice_mut(), ys).unwrap();
        cuda::resample::upsample_bwd(&gpu, dyd.slice(), ys, mode, dxd.slice_mut(), xs, false).unwrap();
        let (y32, dx32, x32, dy32) = (
            download_f32(&gpu, &yd),
            download_f32(&gpu, &dxd),
            to_f32(&x),
            to_f32(&dy),
        );
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
        let (lhs, rhs) = (dot(&y32, &dy32), dot(&x32, &dx32));
        // fp16 rounding of y and dx perturbs each product by about 2^-11 of itself, with random
        // signs: the sums may differ by a few times 2^-11 * ||products||, a missing tap by far more.
        let norm = y32
            .iter()
            .zip(&dy32)
            .map(|(&p, &q)| (p as f64 * q as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (lhs - rhs).abs() < 1e-2 * norm,
            "{mode:?}: <up x, dy> = {lhs}, <x, up^T dy> = {rhs}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn upsample_backward_is_bitwise_deterministic() {
    let gpu = gpu();
    let mut rng = rng();
    let (xs, factor) = (Shape4::new(4, 24, 24, 32), 8);
    let ys = upsample_shape(xs, factor);
    let dy = random_f16(&mut rng, ys.len(), -1.0, 1.0);
    let run = || {
        let dyd = upload(&gpu, &dy);
        let mut dxd = poisoned_f16(&gpu, xs.len());
        cuda::resample::upsample_bwd(
            &gpu,
            dyd.slice(),
            ys,
            UpsampleMode::Bilinear,
            dxd.slice_mut(),
            xs,
            false,
        )
        .unwrap();
        dxd.to_host(&gpu).unwrap()
    };
    assert!(same_bits(&run(), &run()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn non_integer_factor_is_an_error() {
    let gpu = gpu();
    let (xs, ys) = (Shape4::new(1, 3, 3, 8), Shape4::new(1, 7, 7, 8));
    let x = upload(&gpu, &vec![POISON_F16; xs.len()]);
    let mut y = poisoned_f16(&gpu, ys.len());
    let err = cuda::resample::upsample_fwd(&gpu, x.slice(), xs, UpsampleMode::Nearest, y.slice_mut(), ys).unwrap_err();
    assert!(err.to_string().contains("integer factor"), "{err}");
}
