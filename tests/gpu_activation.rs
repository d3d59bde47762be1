//! GPU tests of the relu / add / add+relu kernels of `kernels/elementwise.cu` against their CPU
//! twins in `backend/cpu/elementwise.rs`. Ignored without a GPU; run with `--ignored` on one.
//! The GPU's fp32 arithmetic is the CPU twin's, so results must match bit for bit after rounding.
mod gpu_ops_support;

use cephalo::backend::{cpu, cuda};
use cephalo::gpu::{DevSlice, DevSliceMut, Gpu};
use gpu_ops_support::*;
use half::f16;

/// Lengths that hit the scalar-only, vector, vector+tail and multi-wave paths, and an HRNet-like
/// activation (4 x 13 x 17 x 36).
const LENS: [usize; 6] = [1, 7, 8, 1000, 4 * 13 * 17 * 36, 1_000_003];

/// `relu_bwd` and `add_relu_bwd`: (y, dy, dx, accumulate) on the CPU and on the GPU.
type CpuMaskedBwd = fn(&[f32], &[f32], &mut [f32], bool);
type GpuMaskedBwd = fn(&Gpu, DevSlice<f16>, DevSlice<f16>, DevSliceMut<f16>, bool) -> anyhow::Result<()>;

#[test]
#[ignore = "needs a CUDA GPU"]
fn relu_and_add_forward_match_cpu_bitwise() {
    let gpu = gpu();
    let mut rng = rng();
    for n in LENS {
        let a = random_f16(&mut rng, n + 1, -4.0, 4.0);
        let b = random_f16(&mut rng, n + 1, -4.0, 4.0);
        // Offset 0 takes the vector path, offset 1 (2 bytes in) the scalar one.
        for off in [0usize, 1] {
            let (a32, b32) = (to_f32(&a[off..off + n]), to_f32(&b[off..off + n]));
            let (ad, bd) = (upload(&gpu, &a), upload(&gpu, &b));
            let (av, bv) = (ad.slice().sub(off, n), bd.slice().sub(off, n));

            let mut want = vec![0.0f32; n];
            cpu::elementwise::relu_fwd(&a32, &mut want);
            let mut y = poisoned_f16(&gpu, n + 1);
            cuda::elementwise::relu_fwd(&gpu, av, y.slice_mut().sub_mut(off, n)).unwrap();
            let got = y.to_host(&gpu).unwrap();
            assert_bitwise(&format!("relu_fwd n={n} off={off}"), &got[off..off + n], &want);
            if off == 1 {
                assert_eq!(got[0].to_bits(), POISON_F16.to_bits(), "relu_fwd wrote before its view");
            }

            cpu::elementwise::add_fwd(&a32, &b32, &mut want);
            let mut y = poisoned_f16(&gpu, n + 1);
            cuda::elementwise::add_fwd(&gpu, av, bv, y.slice_mut().sub_mut(off, n)).unwrap();
            let got = y.to_host(&gpu).unwrap();
            assert_bitwise(&format!("add_fwd n={n} off={off}"), &got[off..off + n], &want);

            cpu::elementwise::add_relu_fwd(&a32, &b32, &mut want);
            let mut y = poisoned_f16(&gpu, n + 1);
            cuda::elementwise::add_relu_fwd(&gpu, av, bv, y.slice_mut().sub_mut(off, n)).unwrap();
            let got = y.to_host(&gpu).unwrap();
            assert_bitwise(&format!("add_relu_fwd n={n} off={off}"), &got[off..off + n], &want);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn relu_and_add_backward_match_cpu_bitwise_when_writing_and_accumulating() {
    let gpu = gpu();
    let mut rng = rng();
    for n in LENS {
        // A ReLU output: zero about half the time, positive otherwise.
        let y: Vec<f16> = random_f16(&mut rng, n + 1, -2.0, 2.0)
            .into_iter()
            .map(|v| if v.to_f32() > 0.0 { v } else { f16::ZERO })
            .collect();
        let dy = random_f16(&mut rng, n + 1, -3.0, 3.0);
        let dx0 = random_f16(&mut rng, n + 1, -3.0, 3.0);
        for off in [0usize, 1] {
            let (y32, dy32) = (to_f32(&y[off..off + n]), to_f32(&dy[off..off + n]));
            let (yd, dyd) = (upload(&gpu, &y), upload(&gpu, &dy));
            for accumulate in [false, true] {
                let what = |op: &str| format!("{op} n={n} off={off} accumulate={accumulate}");
                // Overwriting starts from poison, accumulating from real values.
                let start = if accumulate {
                    dx0.clone()
                } else {
                    vec![POISON_F16; n + 1]
                };
                let start32 = if accumulate {
                    to_f32(&dx0[off..off + n])
                } else {
                    vec![0.0; n]
                };

                // The two masked backwards: the same arguments, each against its own twin.
                let masked: [(&str, CpuMaskedBwd, GpuMaskedBwd); 2] = [
                    ("relu_bwd", cpu::elementwise::relu_bwd, cuda::elementwise::relu_bwd),
                    (
                        "add_relu_bwd",
                        cpu::elementwise::add_relu_bwd,
                        cuda::elementwise::add_relu_bwd,
                    ),
                ];
                for (op, cpu_bwd, gpu_bwd) in masked {
                    let mut want = start32.clone();
                    cpu_bwd(&y32, &dy32, &mut want, accumulate);
                    let mut dx = upload(&gpu, &start);
                    gpu_bwd(
                        &gpu,
                        yd.slice().sub(off, n),
                        dyd.slice().sub(off, n),
                        dx.slice_mut().sub_mut(off, n),
                        accumulate,
                    )
                    .unwrap();
                    assert_bitwise(&what(op), &dx.to_host(&gpu).unwrap()[off..off + n], &want);
                }

                let mut want = start32;
                cpu::elementwise::add_bwd(&dy32, &mut want, accumulate);
                let mut dx = upload(&gpu, &start);
                cuda::elementwise::add_bwd(
                    &gpu,
                    dyd.slice().sub(off, n),
                    dx.slice_mut().sub_mut(off, n),
                    accumulate,
                )
                .unwrap();
                assert_bitwise(&what("add_bwd"), &dx.to_host(&gpu).unwrap()[off..off + n], &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mismatched_lengths_are_errors_not_faults() {
    let gpu = gpu();
    let a = upload(&gpu, &[f16::ONE; 8]);
    let mut y = poisoned_f16(&gpu, 7);
    let err = cuda::elementwise::relu_fwd(&gpu, a.slice(), y.slice_mut()).unwrap_err();
    assert!(err.to_string().contains("8"), "{err}");
    assert!(cuda::elementwise::add_fwd(&gpu, a.slice(), a.slice().sub(0, 7), y.slice_mut()).is_err());
}
