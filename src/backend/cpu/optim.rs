//! CPU twins of `kernels/optim.cu`: gradient unscaling with a finite check, and AdamW on fp32
//! master weights (docs/maths.md#adamw).
//!
//! The mixed-precision step is: unscale (fp32 gradients times `1/loss_scale`, and one flag saying
//! whether anything was inf/NaN); if all finite, AdamW, which writes the fp32 master weights, both
//! moments and the fp16 weight copy the forward pass reads.
use half::f16;
use rayon::prelude::*;

use super::simd::{for_each_isa, on_isa};
use crate::backend::{AdamWChunk, AdamWParams, AdamWState};

/// Elements per parallel work item: large enough that rayon's scheduling is negligible.
const CHUNK: usize = 1 << 14;

/// `grads[i] *= inv_scale`; returns true when every result is finite.
pub fn unscale_and_check(grads: &mut [f32], inv_scale: f32) -> bool {
    grads
        .par_chunks_mut(CHUNK)
        .fold(
            || true,
            |ok, chunk| {
                chunk.iter_mut().fold(ok, |ok, g| {
                    *g *= inv_scale;
                    ok & g.is_finite()
                })
            },
        )
        .reduce(|| true, |a, b| a & b)
}

/// One AdamW step on one parameter tensor, step number `t` (from 1), updating `state` in place
/// (`w` its master weights):
/// `g = grad * grad_mul; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
/// w -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd*w)`, with `wd = 0` unless `decay`
/// (BN parameters and biases are not decayed). When `state.half_copy` is given it receives the
/// updated weights rounded to fp16 (round to nearest even, as `__float2half_rn`).
pub fn adamw_step(
    state: AdamWState<&mut [f32], &mut [f16]>,
    grad: &[f32],
    hp: &AdamWParams,
    t: u64,
    decay: bool,
    grad_mul: f32,
) {
    let AdamWState {
        master,
        m,
        v,
        half_copy,
    } = state;
    let n = master.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "adamw_step: master, grad, m and v must have the same length"
    );
    let (bc1, bc2) = hp.bias_corrections(t);
    let wd = if decay { hp.weight_decay } else { 0.0 };
    let update = |w: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
        let g = g * grad_mul;
        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
        let m_hat = *m / bc1;
        let v_hat = *v / bc2;
        *w -= hp.lr * (m_hat / (v_hat.sqrt() + hp.eps) + wd * *w);
    };
    let body = master
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK));
    match half_copy {
        Some(half) => {
            assert_eq!(half.len(), n, "adamw_step: fp16 copy length mismatch");
            body.zip(half.par_chunks_mut(CHUNK)).for_each(|((((w, g), m), v), h)| {
                for i in 0..w.len() {
                    update(&mut w[i], g[i], &mut m[i], &mut v[i]);
                    h[i] = f16::from_f32(w[i]);
                }
            });
        }
        None => {
            let k = AdamWConsts {
                hp: *hp,
                bc1,
                bc2,
                wd,
                grad_mul,
            };
            body.for_each(|(((w, g), m), v)| on_isa!(adamw_isa::<f32>(w, g, m, v, &k)));
        }
    }
}

/// What every element's update reads besides its own state.
struct AdamWConsts {
    hp: AdamWParams,
    bc1: f32,
    bc2: f32,
    wd: f32,
    grad_mul: f32,
}

/// [`adamw_step`]'s update over one chunk, compiled per instruction set (the same operations as
/// its closure, in the same order: no multiply-add is fused, so the GPU twin's tolerance holds).
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)] // for_each_isa names an element type; this is f32 only
fn adamw_chunk<T>(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamWConsts) {
    let hp = &k.hp;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.grad_mul;
        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
        let m_hat = *m / k.bc1;
        let v_hat = *v / k.bc2;
        *w -= hp.lr * (m_hat / (v_hat.sqrt() + hp.eps) + k.wd * *w);
    }
}
for_each_isa!(adamw_isa: adamw_chunk<>(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamWConsts));

/// AdamW on every tensor of a model at once: [`adamw_step`] on each chunk's elements, with
/// `state` (master, m, v and the fp16 copy) the whole value regions and `grad` the whole gradient
/// region. Elements no chunk names are left as they are. Equal to one [`adamw_step`] per tensor.
pub fn adamw_step_chunks(
    state: AdamWState<&mut [f32], &mut [f16]>,
    grad: &[f32],
    chunks: &[AdamWChunk],
    hp: &AdamWParams,
    t: u64,
    grad_mul: f32,
) {
    let AdamWState {
        master,
        m,
        v,
        mut half_copy,
    } = state;
    let (values, grads) = AdamWChunk::extents(chunks);
    assert!(
        master.len() >= values && m.len() >= values && v.len() >= values && grad.len() >= grads,
        "adamw_step_chunks: the chunks reach element {values} of the values and {grads} of the gradients"
    );
    for c in chunks {
        let (w, g, len) = (c.value_at as usize, c.grad_at as usize, c.len as usize);
        let chunk = AdamWState::new(
            &mut master[w..w + len],
            &mut m[w..w + len],
            &mut v[w..w + len],
            half_copy.as_deref_mut().map(|h| &mut h[w..w + len]),
        );
        adamw_step(chunk, &grad[g..g + len], hp, t, c.decay != 0, grad_mul);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{AdamWTensor, ADAMW_CHUNK_LEN};

    #[test]
    fn unscale_flags_inf_and_nan_and_scales_the_rest() {
        let mut g = vec![2.0f32; 3 * CHUNK];
        assert!(unscale_and_check(&mut g, 0.5));
        assert!(g.iter().all(|&x| x == 1.0));
        g[CHUNK + 7] = f32::NAN;
        assert!(!unscale_and_check(&mut g, 0.5));
        g[CHUNK + 7] = 1.0;
        g[2 * CHUNK] = f32::INFINITY;
        assert!(!unscale_and_check(&mut g, 0.5));
    }

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // At t = 1, m_hat = g and v_hat = g^2, so the step is lr * g/(|g| + eps) ≈ lr * sign(g).
        let hp = AdamWParams {
            lr: 0.1,
            weight_decay: 0.0,
            ..AdamWParams::default()
        };
        let mut w = vec![1.0f32, 1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        let mut half = vec![f16::ZERO; 3];
        adamw_step(
            AdamWState::new(&mut w, &mut m, &mut v, Some(&mut half)),
            &[3.0, -0.01, 0.0],
            &hp,
            1,
            true,
            1.0,
        );
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-5 && w[2] == 1.0);
        assert_eq!(half, [f16::from_f32(w[0]), f16::from_f32(w[1]), f16::ONE]);
    }

    /// Tensors of the lengths a model has (empty, a BN vector, exactly one chunk, one past it, several
    /// chunks), laid out with gaps (padding, frozen tensors) and a gradient region that skips
    /// them, as the CUDA backend lays them out.
    fn model_like() -> (Vec<AdamWTensor>, usize, usize) {
        let lens = [0, 18, ADAMW_CHUNK_LEN, ADAMW_CHUNK_LEN + 1, 10_000, 3];
        let (mut value_at, mut grad_at) = (5, 0);
        let tensors = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let t = AdamWTensor {
                    value_at,
                    grad_at,
                    len,
                    decay: i % 2 == 0,
                };
                value_at += len + 7;
                grad_at += len.div_ceil(8) * 8;
                t
            })
            .collect();
        (tensors, value_at, grad_at)
    }

    #[test]
    fn chunk_table_covers_each_tensor_once_in_pieces_of_at_most_the_chunk_length() {
        let (tensors, values, grads) = model_like();
        let table = AdamWChunk::table(&tensors);
        assert!(table.iter().all(|c| c.len >= 1 && c.len as usize <= ADAMW_CHUNK_LEN));
        for t in &tensors {
            let mine: Vec<_> = table
                .iter()
                .filter(|c| (c.value_at as usize) >= t.value_at && (c.value_at as usize) < t.value_at + t.len)
                .collect();
            assert_eq!(mine.iter().map(|c| c.len as usize).sum::<usize>(), t.len);
            assert!(mine.iter().all(
                |c| c.value_at as usize - t.value_at == c.grad_at as usize - t.grad_at && (c.decay == 1) == t.decay
            ));
        }
        let (v, g) = AdamWChunk::extents(&table);
        assert!(v <= values && g <= grads);
        assert_eq!(table.len(), 1 + 1 + 2 + 3 + 1);
        assert_eq!(
            size_of::<AdamWChunk>(),
            24,
            "the kernel's struct AdamWChunk is 24 bytes"
        );
    }

    #[test]
    fn whole_model_step_equals_one_step_per_tensor_and_touches_nothing_else() {
        let (tensors, values, grads) = model_like();
        let hp = AdamWParams {
            lr: 1e-3,
            weight_decay: 0.05,
            ..AdamWParams::default()
        };
        let fill = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        let (master, grad, m, v) = (
            fill(values, 0.37),
            fill(grads, 0.11),
            fill(values, 0.05),
            fill(values, 0.02),
        );
        let v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        let half: Vec<f16> = master.iter().map(|&x| f16::from_f32(x)).collect();
        let (mut w1, mut m1, mut v1, mut h1) = (master.clone(), m.clone(), v.clone(), half.clone());
        let table = AdamWChunk::table(&tensors);
        adamw_step_chunks(
            AdamWState::new(&mut w1, &mut m1, &mut v1, Some(&mut h1)),
            &grad,
            &table,
            &hp,
            3,
            0.5,
        );
        let (mut w2, mut m2, mut v2, mut h2) = (master.clone(), m.clone(), v.clone(), half.clone());
        for t in &tensors {
            let (a, g, n) = (t.value_at, t.grad_at, t.len);
            adamw_step(
                AdamWState::new(
                    &mut w2[a..a + n],
                    &mut m2[a..a + n],
                    &mut v2[a..a + n],
                    Some(&mut h2[a..a + n]),
                ),
                &grad[g..g + n],
                &hp,
                3,
                t.decay,
                0.5,
            );
        }
        assert!(w1.iter().zip(&w2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(m1.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(h1, h2);
        // The gaps between tensors are untouched, the tensors are not.
        let gap = tensors[1].value_at + tensors[1].len;
        assert_eq!(w1[..5], master[..5]);
        assert_eq!(w1[gap..gap + 7], master[gap..gap + 7]);
        assert_ne!(w1[tensors[2].value_at], master[tensors[2].value_at]);
    }
}
