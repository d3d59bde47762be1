//! GPU tests of `kernels/optim.cu` against the CPU twins in `backend/cpu/optim.rs`. Ignored without
//! a GPU; on a GPU machine run them with `--ignored` (a missing GPU then fails).
//!
//! Fresh random data every run (the seed is printed), poisoned outputs, sizes 1, 1000 and 9.6M (a
//! ResNet-sized parameter tensor, past the grid cap). Unscaling is one multiply on both sides, so
//! it must match bitwise; AdamW's fp32 state must agree to 1e-5 and its fp16 copy to 1e-2.
mod gpu_ops_support;

use cephalo::backend::{cpu, cuda};
use cephalo::backend::{AdamWParams, AdamWState};
use cephalo::gpu::{DevSliceMut, DeviceBuffer, Gpu};
use gpu_ops_support::*;
use half::f16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const SIZES: [usize; 4] = [1, 1000, 65_537, 9_600_000];

fn flag(gpu: &Gpu) -> DeviceBuffer<i32> {
    // Poisoned: neither 0 nor 1, so a flag the wrapper failed to clear reads as "non-finite".
    upload(gpu, &[0x5a5a_5a5a])
}

/// Device AdamW state over whole buffers: master weights, moments and the fp16 copy if given.
fn state<'a>(
    (w, m, v): (
        &'a mut DeviceBuffer<f32>,
        &'a mut DeviceBuffer<f32>,
        &'a mut DeviceBuffer<f32>,
    ),
    half_copy: Option<DevSliceMut<'a, f16>>,
) -> AdamWState<DevSliceMut<'a, f32>, DevSliceMut<'a, f16>> {
    AdamWState::new(w.slice_mut(), m.slice_mut(), v.slice_mut(), half_copy)
}

/// Indices of `count` random positions (with repeats) in `0..n`.
fn positions(rng: &mut ChaCha8Rng, n: usize, count: usize) -> Vec<usize> {
    (0..count).map(|_| rng.random_range(0..n)).collect()
}

/// Bitwise equal, except that any NaN matches any NaN: the GPU's arithmetic returns its canonical
/// NaN where the CPU keeps the input's payload. (The poison is NaN too, so the flag and the planted
/// positions, not this, are what catch an unwritten output there; everywhere else it is caught.)
fn assert_bits_f32(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    if let Some(i) = (0..got.len()).find(|&i| !same(got[i], want[i])) {
        panic!("{what}: element {i} is {} on the GPU, {} on the CPU", got[i], want[i]);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn unscale_f32_matches_cpu_in_place_and_flags_planted_nan_and_inf() {
    let gpu = gpu();
    let mut rng = rng();
    for n in SIZES {
        let inv_scale = 1.0 / rng.random_range(1.0f32..70_000.0);
        let mut fd = flag(&gpu);
        for planted in [None, Some(f32::NAN), Some(f32::INFINITY), Some(f32::NEG_INFINITY), None] {
            let what = format!("unscale_and_check n={n} planted={planted:?}");
            let mut grads = random_f32(&mut rng, n, -5000.0, 5000.0);
            if let Some(bad) = planted {
                for i in positions(&mut rng, n, 1 + n / 100_000) {
                    grads[i] = bad;
                }
            }
            let mut gd = upload(&gpu, &grads);
            let want_ok = cpu::optim::unscale_and_check(&mut grads, inv_scale);
            assert_eq!(
                want_ok,
                planted.is_none(),
                "{what}: the CPU twin disagrees with the plant"
            );
            cuda::optim::unscale_and_check(&gpu, gd.slice_mut(), inv_scale, fd.slice_mut()).unwrap();
            assert_eq!(
                cuda::optim::read_flag(&gpu, fd.slice()).unwrap(),
                want_ok,
                "{what}: flag"
            );
            assert_bits_f32(&what, &gd.to_host(&gpu).unwrap(), &grads);
        }
    }
}

/// One parameter tensor's optimizer state on the host.
struct State {
    master: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    half: Vec<f16>,
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_matches_cpu_over_three_steps() {
    let gpu = gpu();
    let mut rng = rng();
    for n in SIZES {
        for (decay, with_half) in [(true, true), (false, true), (true, false)] {
            let hp = AdamWParams {
                lr: rng.random_range(1e-4..1e-2),
                beta1: rng.random_range(0.8..0.95),
                beta2: rng.random_range(0.99..0.9999),
                eps: 1e-8,
                weight_decay: rng.random_range(0.01..0.1),
            };
            let what = format!("adamw n={n} decay={decay} half={with_half} {hp:?}");
            // Resuming state: nonzero moments (v > 0), master weights of either sign.
            let mut cpu_state = State {
                master: random_f32(&mut rng, n, -1.0, 1.0),
                m: random_f32(&mut rng, n, -1e-2, 1e-2),
                v: random_f32(&mut rng, n, 1e-6, 1e-4),
                half: vec![POISON_F16; n],
            };
            let initial = cpu_state.master.clone();
            let mut wd = upload(&gpu, &cpu_state.master);
            let mut md = upload(&gpu, &cpu_state.m);
            let mut vd = upload(&gpu, &cpu_state.v);
            let mut hd = poisoned_f16(&gpu, n);
            let t0 = rng.random_range(1..1000u64);
            for t in t0..t0 + 3 {
                let grad = random_f32(&mut rng, n, -1e-2, 1e-2);
                let grad_mul = rng.random_range(0.3f32..1.0);
                let half = with_half.then_some(&mut cpu_state.half[..]);
                cpu::optim::adamw_step(
                    AdamWState::new(&mut cpu_state.master, &mut cpu_state.m, &mut cpu_state.v, half),
                    &grad,
                    &hp,
                    t,
                    decay,
                    grad_mul,
                );
                let gd = upload(&gpu, &grad);
                let half_d = with_half.then(|| hd.slice_mut());
                cuda::optim::adamw_step(
                    &gpu,
                    state((&mut wd, &mut md, &mut vd), half_d),
                    gd.slice(),
                    &hp,
                    t,
                    decay,
                    grad_mul,
                )
                .unwrap();
            }
            assert_close(
                &format!("{what}: master"),
                &wd.to_host(&gpu).unwrap(),
                &cpu_state.master,
                1e-5,
            );
            assert_close(&format!("{what}: m"), &md.to_host(&gpu).unwrap(), &cpu_state.m, 1e-5);
            assert_close(&format!("{what}: v"), &vd.to_host(&gpu).unwrap(), &cpu_state.v, 1e-5);
            let got_half = hd.to_host(&gpu).unwrap();
            if with_half {
                assert_close(
                    &format!("{what}: fp16 copy"),
                    &to_f32(&got_half),
                    &to_f32(&cpu_state.half),
                    1e-2,
                );
            } else {
                assert!(
                    got_half.iter().all(|h| h.to_bits() == POISON_F16.to_bits()),
                    "{what}: the fp16 copy was written though none was passed"
                );
            }
            // The steps moved the weights: a kernel that never ran would not pass for one that did.
            let moved = wd.to_host(&gpu).unwrap();
            let still = initial.iter().zip(&moved).filter(|(a, b)| a == b).count();
            assert!(
                still * 10 <= n,
                "{what}: {still} of {n} weights did not move in three steps"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn decay_flag_reaches_the_kernel() {
    // A zero gradient isolates weight decay: w -= lr * wd * w, or nothing when decay is false.
    let gpu = gpu();
    let hp = AdamWParams {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamWParams::default()
    };
    for decay in [true, false] {
        let mut wd = upload(&gpu, &[2.0f32]);
        let (gd, mut md, mut vd) = (
            upload(&gpu, &[0.0f32]),
            upload(&gpu, &[0.0f32]),
            upload(&gpu, &[0.0f32]),
        );
        let mut hd = poisoned_f16(&gpu, 1);
        cuda::optim::adamw_step(
            &gpu,
            state((&mut wd, &mut md, &mut vd), Some(hd.slice_mut())),
            gd.slice(),
            &hp,
            1,
            decay,
            1.0,
        )
        .unwrap();
        let want = if decay { 2.0 - 0.1 * 0.5 * 2.0 } else { 2.0 };
        let got = wd.to_host(&gpu).unwrap()[0];
        assert!((got - want).abs() < 1e-6, "decay={decay}: {got}, want {want}");
        assert_eq!(hd.to_host(&gpu).unwrap()[0], f16::from_f32(got));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_arguments_are_errors_not_launches() {
    let gpu = gpu();
    let hp = AdamWParams::default();
    let mut w = upload(&gpu, &[1.0f32; 8]);
    let (short_g, g) = (upload(&gpu, &[1.0f32; 7]), upload(&gpu, &[1.0f32; 8]));
    let (mut m, mut v) = (upload(&gpu, &[0.0f32; 8]), upload(&gpu, &[0.0f32; 8]));
    for (g, step, what) in [(&short_g, 1, "a short gradient"), (&g, 0, "step 0")] {
        let r = cuda::optim::adamw_step(
            &gpu,
            state((&mut w, &mut m, &mut v), None),
            g.slice(),
            &hp,
            step,
            true,
            1.0,
        );
        assert!(r.is_err(), "{what} was accepted");
    }
    let mut two_flags = upload(&gpu, &[0i32, 0]);
    let r = cuda::optim::unscale_and_check(&gpu, w.slice_mut(), 1.0, two_flags.slice_mut());
    assert!(r.is_err(), "a two-element flag was accepted");
    assert_eq!(w.to_host(&gpu).unwrap(), [1.0f32; 8], "a refused call launched anyway");
}

/// The one-launch, whole-model AdamW step against its CPU twin and against one GPU launch per
/// tensor: tensors of model-like lengths (a BN vector, exactly one chunk, one past it, several),
/// with gaps between them in the value regions (padding, frozen tensors) and a gradient region
/// that skips the gaps, as the CUDA backend lays parameters out. The gaps must come back untouched
/// (poisoned fp16 copy included), the tensors equal to the per-tensor launches bit for bit.
#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_model_adamw_equals_the_twin_and_the_per_tensor_step() {
    use cephalo::backend::{AdamWChunk, AdamWTensor, ADAMW_CHUNK_LEN};
    let gpu = gpu();
    let mut rng = rng();
    let lens = [
        18,
        1,
        ADAMW_CHUNK_LEN,
        ADAMW_CHUNK_LEN + 1,
        3 * ADAMW_CHUNK_LEN + 77,
        256,
        36_864,
    ];
    let (mut value_at, mut grad_at) = (3, 0);
    let tensors: Vec<AdamWTensor> = lens
        .iter()
        .map(|&len| {
            let t = AdamWTensor {
                value_at,
                grad_at,
                len,
                decay: rng.random_bool(0.5),
            };
            value_at += len + rng.random_range(0..9);
            grad_at += len.div_ceil(8) * 8;
            t
        })
        .collect();
    let (values, grads) = (value_at + 5, grad_at);
    let hp = AdamWParams {
        lr: rng.random_range(1e-4..1e-2),
        weight_decay: rng.random_range(0.01..0.1),
        ..AdamWParams::default()
    };
    let master = random_f32(&mut rng, values, -1.0, 1.0);
    let m = random_f32(&mut rng, values, -1e-2, 1e-2);
    let v = random_f32(&mut rng, values, 1e-6, 1e-4);
    let grad = random_f32(&mut rng, grads, -1e-2, 1e-2);
    let (t, grad_mul) = (rng.random_range(1..1000u64), 0.75f32);
    let table = AdamWChunk::table(&tensors);

    // The CPU twin.
    let (mut cw, mut cm, mut cv, mut ch) = (master.clone(), m.clone(), v.clone(), vec![POISON_F16; values]);
    cpu::optim::adamw_step_chunks(
        AdamWState::new(&mut cw, &mut cm, &mut cv, Some(&mut ch)),
        &grad,
        &table,
        &hp,
        t,
        grad_mul,
    );

    // The GPU, one launch.
    let gd = upload(&gpu, &grad);
    let (mut wd, mut md, mut vd, mut hd) = (
        upload(&gpu, &master),
        upload(&gpu, &m),
        upload(&gpu, &v),
        poisoned_f16(&gpu, values),
    );
    let chunks = cuda::optim::AdamWChunkTable::new(&gpu, &table).unwrap();
    cuda::optim::adamw_step_chunks(
        &gpu,
        state((&mut wd, &mut md, &mut vd), Some(hd.slice_mut())),
        gd.slice(),
        &chunks,
        &hp,
        t,
        grad_mul,
    )
    .unwrap();
    let (gw, gm, gv, gh) = (
        wd.to_host(&gpu).unwrap(),
        md.to_host(&gpu).unwrap(),
        vd.to_host(&gpu).unwrap(),
        hd.to_host(&gpu).unwrap(),
    );
    assert_close("whole-model adamw: master", &gw, &cw, 1e-5);
    assert_close("whole-model adamw: m", &gm, &cm, 1e-5);
    assert_close("whole-model adamw: v", &gv, &cv, 1e-5);
    assert_close("whole-model adamw: fp16 copy", &to_f32(&gh), &to_f32(&ch), 1e-2);
    // Outside every tensor: untouched.
    let inside = |i: usize| tensors.iter().any(|t| (t.value_at..t.value_at + t.len).contains(&i));
    for i in (0..values).filter(|&i| !inside(i)) {
        assert_eq!(
            gw[i].to_bits(),
            master[i].to_bits(),
            "gap element {i} of the masters written"
        );
        assert_eq!(
            gh[i].to_bits(),
            POISON_F16.to_bits(),
            "gap element {i} of the fp16 copy written"
        );
    }

    // The GPU, one launch per tensor: the same bits.
    let (mut pw, mut pm, mut pv, mut ph) = (
        upload(&gpu, &master),
        upload(&gpu, &m),
        upload(&gpu, &v),
        poisoned_f16(&gpu, values),
    );
    for t_ in &tensors {
        let (a, g, n) = (t_.value_at, t_.grad_at, t_.len);
        cuda::optim::adamw_step(
            &gpu,
            AdamWState::new(
                pw.slice_mut().sub_mut(a, n),
                pm.slice_mut().sub_mut(a, n),
                pv.slice_mut().sub_mut(a, n),
                Some(ph.slice_mut().sub_mut(a, n)),
            ),
            gd.slice().sub(g, n),
            &hp,
            t,
            t_.decay,
            grad_mul,
        )
        .unwrap();
    }
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    for (what, got, launches) in [
        ("masters differ", &gw, &pw),
        ("m differs", &gm, &pm),
        ("v differs", &gv, &pv),
    ] {
        assert!(
            same(got, &launches.to_host(&gpu).unwrap()),
            "{what} from the per-tensor launches"
        );
    }
    assert!(
        same_bits(&gh, &ph.to_host(&gpu).unwrap()),
        "fp16 copies differ from the per-tensor launches"
    );

    // A table reaching past the regions is refused before any launch.
    let short = upload(&gpu, &grad[..grads - 1]);
    let err = cuda::optim::adamw_step_chunks(
        &gpu,
        state((&mut wd, &mut md, &mut vd), None),
        short.slice(),
        &chunks,
        &hp,
        t,
        1.0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("chunks reach"), "{err}");
}
