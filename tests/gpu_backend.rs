//! The CUDA backend end to end: whole networks (a narrow HRNet and ResNet-18, with every op kind
//! between them) forward and backward on the GPU in fp16 against the f32 CPU backend on the same
//! parameters and inputs; the fused inference forward; determinism; the per-op profile.
#[path = "gpu_ops_support/mod.rs"]
mod support;

use std::sync::Arc;

use cephalo::backend::{Backend, CpuBackend, CudaBackend, ParamId};
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::graph::Graph;
use cephalo::model::ModelConfig;
use support::{gpu, random_f32, rel_err, rng};

/// Small enough to run the CPU side fast; odd landmark count exercises the masked channels.
fn graph(model: &str, size: [usize; 2], batch: usize) -> Graph {
    ModelConfig::new(model, 1, 5, size, batch).unwrap().build().unwrap()
}

fn options(mode: Mode, dtypes: DtypeSizes) -> PlanOptions {
    PlanOptions::new(mode, dtypes)
}

/// Sets every trainable parameter to a well-scaled random value (the default initialisation
/// leaves the head at 0.001 std, which would make the comparison trivial).
fn randomise(graph: &Graph, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<Vec<f32>> {
    graph
        .params
        .iter()
        .map(|p| {
            let fan_in: usize = p.shape.iter().skip(1).product::<usize>().max(1);
            let bound = if p.kind.trainable() && p.shape.len() > 1 {
                (3.0 / fan_in as f32).sqrt()
            } else {
                0.0
            };
            let init = p.initial_values(1);
            if bound > 0.0 {
                random_f32(rng, p.len(), -bound, bound)
            } else {
                init
            }
        })
        .collect()
}

fn executors(g: &Graph, mode: Mode, values: &[Vec<f32>]) -> (Executor<CpuBackend>, Executor<CudaBackend>) {
    let gpu = Arc::new(gpu());
    let mut cpu = Executor::new(g.clone(), options(mode, DtypeSizes::F32), CpuBackend::new(), 1);
    let mut cuda = Executor::new(g.clone(), options(mode, DtypeSizes::F16), CudaBackend::new(gpu), 1);
    cuda.backend_mut().take_error().expect("prepare");
    for (i, v) in values.iter().enumerate() {
        cpu.set_param(ParamId(i), v);
        cuda.set_param(ParamId(i), v);
    }
    cuda.backend_mut().take_error().expect("parameter upload");
    (cpu, cuda)
}

fn check_train_step(model: &str, size: [usize; 2], batch: usize) {
    let g = graph(model, size, batch);
    let mut r = rng();
    let values = randomise(&g, &mut r);
    let (mut cpu, mut cuda) = executors(&g, Mode::Train, &values);
    let input = random_f32(&mut r, g.input_shape().len(), -1.0, 1.0);

    let want = cpu.predict(&input);
    let got = cuda.predict(&input);
    cuda.backend_mut().take_error().expect("forward");
    let e = rel_err("output", &got, &want);
    println!("{model}: forward output relative error {e:.2e}");
    assert!(e < 3e-2, "{model}: forward output relative error {e:.3e}");

    let d_out = random_f32(&mut r, g.output_shape().len(), -1.0, 1.0);
    cpu.backward_from(&d_out);
    cuda.backward_from(&d_out);
    cuda.backend_mut().take_error().expect("backward");

    // Gradients of all trainable parameters together, and the worst single tensors reported.
    let (mut all_got, mut all_want, mut worst) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in g.params.iter().enumerate() {
        if !p.kind.trainable() {
            // Running statistics moved by the same batch statistics.
            let e = rel_err(&p.name, &cuda.param(ParamId(i)), &cpu.param(ParamId(i)));
            assert!(e < 1e-2, "{model}: {} relative error {e:.3e}", p.name);
            continue;
        }
        let (gg, gw) = (cuda.param_grad(ParamId(i)), cpu.param_grad(ParamId(i)));
        worst.push((rel_err(&p.name, &gg, &gw), p.name.clone()));
        all_got.extend(gg);
        all_want.extend(gw);
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("{model}: worst parameter gradients {:?}", &worst[..3.min(worst.len())]);
    let e = rel_err("all gradients", &all_got, &all_want);
    println!("{model}: all parameter gradients relative error {e:.2e}");
    assert!(e < 3e-2, "{model}: parameter gradients relative error {e:.3e}");
    assert!(
        worst[0].0 < 0.1,
        "{model}: {} gradient relative error {:.3e}",
        worst[0].1,
        worst[0].0
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hrnet_training_step_matches_the_cpu() {
    check_train_step("hrnet-w8", [64, 96], 2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn resnet_training_step_matches_the_cpu() {
    check_train_step("resnet18", [64, 64], 2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_inference_matches_the_cpu() {
    for model in ["hrnet-w8", "resnet18"] {
        let g = graph(model, [64, 64], 1);
        let mut r = rng();
        let mut values = randomise(&g, &mut r);
        // Non-trivial running statistics, so the BN fold matters.
        for (v, p) in values.iter_mut().zip(&g.params) {
            if p.name.ends_with("running_var") {
                *v = random_f32(&mut r, v.len(), 0.5, 2.0);
            } else if p.name.ends_with("running_mean") {
                *v = random_f32(&mut r, v.len(), -0.3, 0.3);
            }
        }
        let (mut cpu, mut cuda) = executors(&g, Mode::Eval, &values);
        let input = random_f32(&mut r, g.input_shape().len(), -1.0, 1.0);
        let want = cpu.predict(&input);
        let got = cuda.predict(&input);
        cuda.backend_mut().take_error().expect("forward");
        let e = rel_err("output", &got, &want);
        println!("{model}: fused inference relative error {e:.2e}");
        assert!(e < 2e-2, "{model}: fused inference relative error {e:.3e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_training_step_is_bitwise_repeatable() {
    let g = graph("hrnet-w8", [64, 64], 2);
    let mut r = rng();
    let values = randomise(&g, &mut r);
    let input = random_f32(&mut r, g.input_shape().len(), -1.0, 1.0);
    let d_out = random_f32(&mut r, g.output_shape().len(), -1.0, 1.0);
    let run = || {
        let (_, mut cuda) = executors(&g, Mode::Train, &values);
        let out = cuda.predict(&input);
        cuda.backward_from(&d_out);
        cuda.backend_mut().take_error().unwrap();
        let grads: Vec<Vec<f32>> = (0..g.params.len())
            .filter(|&i| g.params[i].kind.trainable())
            .map(|i| cuda.param_grad(ParamId(i)))
            .collect();
        (out, grads)
    };
    let (a, b) = (run(), run());
    assert!(
        a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()),
        "outputs differ"
    );
    assert!(a.1 == b.1, "gradients differ between two identical steps");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_op_profile_times_every_kind_that_ran() {
    let g = graph("resnet18", [64, 64], 1);
    let mut r = rng();
    let values = randomise(&g, &mut r);
    let (_, mut cuda) = executors(&g, Mode::Train, &values);
    cuda.backend_mut().enable_op_profile();
    let input = random_f32(&mut r, g.input_shape().len(), -1.0, 1.0);
    cuda.predict(&input);
    cuda.backward_from(&vec![0.5; g.output_shape().len()]);
    let times = cuda.backend_mut().take_op_times().unwrap();
    for kind in [
        "conv2d_fwd",
        "conv2d_dgrad",
        "conv2d_wgrad",
        "batchnorm_fwd_train",
        "maxpool_fwd",
    ] {
        let t = times
            .iter()
            .find(|t| t.0 == kind)
            .unwrap_or_else(|| panic!("{kind} not profiled: {times:?}"));
        assert!(t.1 > 0 && t.2 > 0.0, "{kind}: {t:?}");
    }
}
