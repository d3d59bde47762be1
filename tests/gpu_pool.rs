//! GPU tests of `kernels/pool.cu` against the CPU twins in `backend/cpu/pool.rs`. Ignored without
//! a GPU. Inputs are quantised to a few values so windows have ties, which must be broken like the
//! CPU twin (first in window order) in forward and backward alike; results must match bit for bit.
mod gpu_ops_support;

use cephalo::backend::{cpu, cuda, PoolParams, Shape4};
use gpu_ops_support::*;
use half::f16;
use rand::Rng;

/// ResNet's stem pool (3/2/1), a plain 2x2/2, and an overlapping stride-1 window.
const POOLS: [PoolParams; 3] = [
    PoolParams::new(3, 2, 1),
    PoolParams::new(2, 2, 0),
    PoolParams::new(3, 1, 1),
];

/// Values in {-2, -1.5, ..., 2}: ties in most windows.
fn tied_values(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(rng.random_range(-4i32..=4) as f32 * 0.5))
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn maxpool_matches_cpu_bitwise_forward_and_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for xs in SHAPES.into_iter().chain([Shape4::new(4, 16, 16, 64)]) {
        for p in POOLS {
            if xs.h + 2 * p.pad < p.k || xs.w + 2 * p.pad < p.k {
                continue;
            }
            let ys = p.out_shape(xs);
            let x = tied_values(&mut rng, xs.len());
            let x32 = to_f32(&x);
            let xd = upload(&gpu, &x);

            let mut want = vec![0.0; ys.len()];
            cpu::pool::maxpool_fwd(&x32, xs, &p, &mut want);
            let mut yd = poisoned_f16(&gpu, ys.len());
            cuda::pool::maxpool_fwd(&gpu, xd.slice(), xs, &p, yd.slice_mut()).unwrap();
            assert_bitwise(&format!("maxpool_fwd {xs} {p:?}"), &yd.to_host(&gpu).unwrap(), &want);

            let dy = random_f16(&mut rng, ys.len(), -2.0, 2.0);
            let (dy32, dyd) = (to_f32(&dy), upload(&gpu, &dy));
            for accumulate in [false, true] {
                let dx0 = random_f16(&mut rng, xs.len(), -1.0, 1.0);
                let mut want = if accumulate { to_f32(&dx0) } else { vec![0.0; xs.len()] };
                cpu::pool::maxpool_bwd(&x32, xs, &dy32, &p, &mut want, accumulate);
                let mut dxd = if accumulate {
                    upload(&gpu, &dx0)
                } else {
                    poisoned_f16(&gpu, xs.len())
                };
                cuda::pool::maxpool_bwd(&gpu, xd.slice(), xs, dyd.slice(), &p, dxd.slice_mut(), accumulate).unwrap();
                let what = format!("maxpool_bwd {xs} {p:?} accumulate={accumulate}");
                assert_bitwise(&what, &dxd.to_host(&gpu).unwrap(), &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn maxpool_backward_routes_every_gradient_exactly_once() {
    // Non-overlapping windows: the input gradient holds each dy once, at its window's maximum.
    let gpu = gpu();
    let mut rng = rng();
    let xs = Shape4::new(2, 8, 6, 24);
    let p = PoolParams::new(2, 2, 0);
    let ys = p.out_shape(xs);
    let x = random_f16(&mut rng, xs.len(), -5.0, 5.0);
    let dy = random_f16(&mut rng, ys.len(), 0.5, 1.5);
    let (xd, dyd) = (upload(&gpu, &x), upload(&gpu, &dy));
    let mut dxd = poisoned_f16(&gpu, xs.len());
    cuda::pool::maxpool_bwd(&gpu, xd.slice(), xs, dyd.slice(), &p, dxd.slice_mut(), false).unwrap();
    let dx = download_f32(&gpu, &dxd);
    let total = |v: &[f32]| v.iter().map(|&g| g as f64).sum::<f64>();
    assert!((total(&dx) - total(&to_f32(&dy))).abs() < 1e-6 * ys.len() as f64);
    assert_eq!(dx.iter().filter(|&&g| g != 0.0).count(), ys.len());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn maxpool_rejects_windows_that_hold_no_pixel() {
    let gpu = gpu();
    let xs = Shape4::new(1, 4, 4, 8);
    let p = PoolParams::new(2, 2, 2);
    let x = upload(&gpu, &vec![f16::ONE; xs.len()]);
    let mut y = poisoned_f16(&gpu, p.out_shape(xs).len());
    assert!(cuda::pool::maxpool_fwd(&gpu, x.slice(), xs, &p, y.slice_mut()).is_err());
}
