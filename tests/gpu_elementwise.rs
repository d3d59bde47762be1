//! GPU tests of `kernels/elementwise.cu` against the CPU twins in `backend/cpu/elementwise.rs`.
//! Ignored without a GPU; on a GPU machine run them with `--ignored` (a missing GPU then fails).
//! Fresh random inputs every run (the seed is printed), poisoned outputs, odd and misaligned sizes.
mod gpu_ops_support;

use cephalo::backend::{cpu, cuda};
use cephalo::gpu::DeviceBuffer;
use gpu_ops_support::*;
use half::f16;
use rand::Rng;

/// Sizes that hit the scalar-only, vector, vector+tail and multi-wave paths.
const SIZES: [usize; 6] = [1, 7, 8, 1000, 65_543, 3_000_001];

#[test]
#[ignore = "needs a CUDA GPU"]
fn convert_matches_cpu_bitwise() {
    let gpu = gpu();
    let mut rng = rng();
    for n in SIZES {
        // Include values past fp16's range and subnormals, so rounding and overflow are exercised.
        let mut host = random_f32(&mut rng, n, -70_000.0, 70_000.0);
        for (i, v) in host.iter_mut().enumerate().step_by(5) {
            *v *= 1e-9 * (i % 3) as f32;
        }
        let mut want = vec![f16::ZERO; n];
        cpu::elementwise::convert_f32_to_f16(&host, &mut want);

        let src = DeviceBuffer::from_host(&gpu, &host).unwrap();
        let mut dst = DeviceBuffer::from_host(&gpu, &vec![POISON_F16; n]).unwrap();
        cuda::elementwise::convert_f32_to_f16(&gpu, src.slice(), dst.slice_mut()).unwrap();
        let got = dst.to_host(&gpu).unwrap();
        assert!(same_bits(&got, &want), "f32->f16 differs at n={n}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn axpy_matches_cpu_bitwise_on_aligned_and_misaligned_views() {
    let gpu = gpu();
    let mut rng = rng();
    for n in SIZES {
        let a: f32 = rng.random_range(-3.0..3.0);
        let x32 = random_f32(&mut rng, n + 1, -4.0, 4.0);
        let y32 = random_f32(&mut rng, n + 1, -4.0, 4.0);
        // Offset 0 takes the vector path, offset 1 (2 bytes in) the scalar one.
        for offset in [0usize, 1] {
            let xh: Vec<f16> = x32.iter().map(|&v| f16::from_f32(v)).collect();
            let yh: Vec<f16> = y32.iter().map(|&v| f16::from_f32(v)).collect();
            let mut want_h = yh[offset..offset + n].to_vec();
            cpu::elementwise::axpy_f16(a, &xh[offset..offset + n], &mut want_h);
            let xd = DeviceBuffer::from_host(&gpu, &xh).unwrap();
            let mut yd = DeviceBuffer::from_host(&gpu, &yh).unwrap();
            cuda::elementwise::axpy_f16(&gpu, a, xd.slice().sub(offset, n), yd.slice_mut().sub_mut(offset, n)).unwrap();
            let got = yd.to_host(&gpu).unwrap();
            assert!(
                same_bits(&got[offset..offset + n], &want_h),
                "axpy_f16 n={n} offset={offset}"
            );
            // The element before a misaligned view must be untouched.
            if offset > 0 {
                assert_eq!(got[0].to_bits(), yh[0].to_bits());
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fill_writes_exactly_the_view() {
    let gpu = gpu();
    let mut rng = rng();
    for n in SIZES {
        let value = f16::from_f32(rng.random_range(-10.0..10.0));
        let mut buf = DeviceBuffer::from_host(&gpu, &vec![POISON_F16; n + 2]).unwrap();
        cuda::elementwise::fill_f16(&gpu, buf.slice_mut().sub_mut(1, n), value).unwrap();
        let got = buf.to_host(&gpu).unwrap();
        let mut want = vec![POISON_F16; n + 2];
        cpu::elementwise::fill(&mut want[1..=n], value);
        assert!(same_bits(&got, &want), "fill_f16 n={n}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn kernels_are_deterministic_run_to_run() {
    let gpu = gpu();
    let mut rng = rng();
    let n = 1 << 20;
    let x = random_f16(&mut rng, n, -2.0, 2.0);
    let y = random_f16(&mut rng, n, -2.0, 2.0);
    let run = || {
        let xd = DeviceBuffer::from_host(&gpu, &x).unwrap();
        let mut yd = DeviceBuffer::from_host(&gpu, &y).unwrap();
        cuda::elementwise::axpy_f16(&gpu, 0.7, xd.slice(), yd.slice_mut()).unwrap();
        yd.to_host(&gpu).unwrap()
    };
    let (first, second) = (run(), run());
    assert!(same_bits(&first, &second));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn arena_views_are_aligned_and_disjoint_in_device_memory() {
    let gpu = gpu();
    let arena = cephalo::gpu::Arena::new(&gpu, 1 << 20).unwrap();
    // Two regions as the planner would place them: aligned, side by side.
    let (a, b) = (0, 2048);
    // SAFETY: the two views cover disjoint bytes (0..2000 and 2048..4048).
    let (va, vb) = unsafe { (arena.view_mut::<f16>(a, 1000), arena.view_mut::<f16>(b, 1000)) };
    assert_eq!(va.ptr() % 256, 0);
    cuda::elementwise::fill_f16(&gpu, va, f16::ONE).unwrap();
    cuda::elementwise::fill_f16(&gpu, vb, f16::from_f32(2.0)).unwrap();
    let mut out = DeviceBuffer::<f16>::zeros(&gpu, 1000).unwrap();
    cuda::elementwise::axpy_f16(&gpu, 1.0, arena.view(a, 1000), out.slice_mut()).unwrap();
    cuda::elementwise::axpy_f16(&gpu, 1.0, arena.view(b, 1000), out.slice_mut()).unwrap();
    assert!(out.to_host(&gpu).unwrap().iter().all(|v| v.to_f32() == 3.0));
    assert_eq!(arena.capacity(), 1 << 20);
}
