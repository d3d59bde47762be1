//! GPU tests of `kernels/concat.cu` against the CPU twins in `backend/cpu/concat.rs`. Ignored
//! without a GPU. Concatenation is data movement (and, accumulating, one fp32 add), so results
//! must match bit for bit.
mod gpu_ops_support;

use cephalo::backend::{cpu, cuda};
use cephalo::gpu::DevSliceMut;
use gpu_ops_support::*;
use half::f16;

/// Channel widths of the inputs: HRNet's final concat (W18/W32 branches), widths that defeat the
/// vector path (29, 3), and a single input.
const WIDTHS: [&[usize]; 5] = [&[18, 36, 72, 144], &[32, 64, 128, 256], &[29, 3, 8], &[64, 32], &[16]];
const PIXELS: [usize; 3] = [1, 7 * 5, 4 * 9 * 11];

/// Every pair of widths and pixel count, with the output's channels: (widths, pixels, c).
fn cases() -> impl Iterator<Item = (&'static [usize], usize, usize)> {
    WIDTHS
        .into_iter()
        .flat_map(|widths| PIXELS.map(|pixels| (widths, pixels, widths.iter().sum())))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn concat_forward_matches_cpu_bitwise() {
    let gpu = gpu();
    let mut rng = rng();
    for (widths, pixels, c) in cases() {
        let xs: Vec<Vec<f16>> = widths
            .iter()
            .map(|&w| random_f16(&mut rng, pixels * w, -3.0, 3.0))
            .collect();
        let xs32: Vec<Vec<f32>> = xs.iter().map(|x| to_f32(x)).collect();
        let refs: Vec<&[f32]> = xs32.iter().map(|x| x.as_slice()).collect();
        let mut want = vec![0.0; pixels * c];
        cpu::concat::concat_fwd(&refs, widths, &mut want);

        let xd: Vec<_> = xs.iter().map(|x| upload(&gpu, x)).collect();
        let views: Vec<_> = xd.iter().map(|b| b.slice()).collect();
        let mut yd = poisoned_f16(&gpu, pixels * c);
        cuda::concat::concat_fwd(&gpu, &views, widths, yd.slice_mut()).unwrap();
        assert_bitwise(
            &format!("concat_fwd {widths:?} pixels={pixels}"),
            &yd.to_host(&gpu).unwrap(),
            &want,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn concat_backward_matches_cpu_bitwise_with_skipped_and_accumulated_inputs() {
    let gpu = gpu();
    let mut rng = rng();
    for (widths, pixels, c) in cases() {
        let dy = random_f16(&mut rng, pixels * c, -3.0, 3.0);
        let dy32 = to_f32(&dy);
        // Input i: no gradient when i % 3 == 2, accumulate when i % 3 == 1, overwrite else.
        let mode = |i: usize| match i % 3 {
            2 => None,
            1 => Some(true),
            _ => Some(false),
        };
        let starts: Vec<Vec<f16>> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| match mode(i) {
                Some(true) => random_f16(&mut rng, pixels * w, -1.0, 1.0),
                _ => vec![POISON_F16; pixels * w],
            })
            .collect();

        let mut cpu_dx: Vec<Vec<f32>> = starts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if mode(i) == Some(true) {
                    to_f32(s)
                } else {
                    vec![0.0; s.len()]
                }
            })
            .collect();
        let mut cpu_targets: Vec<Option<(&mut [f32], bool)>> = cpu_dx
            .iter_mut()
            .enumerate()
            .map(|(i, d)| mode(i).map(|acc| (d.as_mut_slice(), acc)))
            .collect();
        cpu::concat::concat_bwd(&dy32, widths, &mut cpu_targets);

        let dyd = upload(&gpu, &dy);
        let mut dxd: Vec<_> = starts.iter().map(|s| upload(&gpu, s)).collect();
        let mut targets: Vec<Option<(DevSliceMut<f16>, bool)>> = dxd
            .iter_mut()
            .enumerate()
            .map(|(i, d)| mode(i).map(|acc| (d.slice_mut(), acc)))
            .collect();
        cuda::concat::concat_bwd(&gpu, dyd.slice(), widths, &mut targets).unwrap();
        drop(targets);
        for (i, d) in dxd.iter().enumerate() {
            let got = d.to_host(&gpu).unwrap();
            let what = format!("concat_bwd {widths:?} pixels={pixels} input {i}");
            if mode(i).is_none() {
                assert!(
                    same_bits(&got, &starts[i]),
                    "{what}: written though it wants no gradient"
                );
            } else {
                assert_bitwise(&what, &got, &cpu_dx[i]);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn concat_rejects_inputs_that_do_not_fit() {
    let gpu = gpu();
    let a = upload(&gpu, &[f16::ONE; 10]);
    let mut y = poisoned_f16(&gpu, 12);
    let err = cuda::concat::concat_fwd(&gpu, &[a.slice()], &[3], y.slice_mut()).unwrap_err();
    assert!(err.to_string().contains("input 0"), "{err}");
}
