//! The executor end to end: finite-difference gradient checks of whole graphs (a tiny HRNet and
//! a small graph using every op), and recomputation giving the same numbers as storing.
use cephalo::backend::{CpuBackend, ParamId, Shape4, UpsampleMode};
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::graph::{Graph, GraphBuilder, Init, ParamKind};
use cephalo::model::ModelConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn normals(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).unwrap();
    (0..n).map(|_| d.sample(rng)).collect()
}

fn train_options(recompute_bn: bool, dtypes: DtypeSizes) -> PlanOptions {
    PlanOptions {
        input_grad: true,
        recompute_bn,
        ..PlanOptions::new(Mode::Train, dtypes)
    }
}

/// Parameter values well scaled for gradient checks: conv weights `N(0, 1/fan_in)`, biases and
/// BN beta around 0, BN gamma around 1 (random, so that their gradients matter).
fn test_values(graph: &Graph, seed: u64) -> Vec<Option<Vec<f32>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    graph
        .params
        .iter()
        .map(|p| {
            let n = p.len();
            Some(match p.kind {
                ParamKind::Weight => {
                    let fan_in: usize = if p.name.contains("deconv") {
                        p.shape[0]
                    } else {
                        p.shape[1..].iter().product()
                    };
                    normals(&mut rng, n, (1.0 / fan_in as f32).sqrt())
                }
                ParamKind::Bias | ParamKind::BnBeta => normals(&mut rng, n, 0.1),
                ParamKind::BnGamma => normals(&mut rng, n, 0.2).iter().map(|v| v + 1.0).collect(),
                ParamKind::RunningMean | ParamKind::RunningVar => return None,
            })
        })
        .collect()
}

fn executor(graph: Graph, recompute_bn: bool, seed: u64) -> Executor<CpuBackend> {
    executor_with(graph, train_options(recompute_bn, DtypeSizes::F32), seed)
}

fn executor_with(graph: Graph, options: PlanOptions, seed: u64) -> Executor<CpuBackend> {
    let values = test_values(&graph, seed);
    let mut ex = Executor::new(graph, options, CpuBackend::new(), seed);
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            ex.set_param(ParamId(i), v);
        }
    }
    ex
}

/// Everything one training step on the CPU produces, for comparing two ways of running it.
#[derive(Debug, PartialEq)]
struct StepOutcome {
    output: Vec<f32>,
    /// Every parameter after the step's forward (running statistics moved).
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    input_grad: Vec<f32>,
}

/// One forward and backward of `graph` under `options` from seeded parameters, input and output
/// gradient; also returns the plan's arena size.
fn train_step(graph: Graph, options: PlanOptions, seed: u64) -> (StepOutcome, usize) {
    let mut ex = executor_with(graph, options, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let input = normals(&mut rng, ex.graph().input_shape().len(), 1.0);
    let r = normals(&mut rng, ex.graph().output_shape().len(), 1.0);
    let output = ex.predict(&input);
    ex.backward_from(&r);
    let n = ex.graph().params.len();
    let outcome = StepOutcome {
        output,
        params: (0..n).map(|i| ex.param(ParamId(i))).collect(),
        grads: (0..n)
            .filter(|&i| ex.graph().params[i].kind.trainable())
            .map(|i| ex.param_grad(ParamId(i)))
            .collect(),
        input_grad: ex.input_grad().expect("the options ask for the input gradient"),
    };
    (outcome, ex.plan().arena_bytes)
}

type Ex64 = Executor<CpuBackend<f64>>;

/// `L = sum(output * r)`, everything in f64.
fn loss(ex: &mut Ex64, input: &[f64], r: &[f64]) -> f64 {
    let v = ex.input_view();
    ex.backend_mut().write_exact(v, input);
    ex.forward();
    let out = ex.backend().read_exact(ex.output_view());
    out.iter().zip(r).map(|(y, r)| y * r).sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks the analytic gradient of `L` along random directions against central differences in
/// f64 (the same executor and ops, on `CpuBackend::<f64>`), for the input and for every
/// parameter named in `groups` (empty: all trainable ones).
fn gradcheck(graph: Graph, groups: &[&str], seed: u64) {
    let values = test_values(&graph, seed);
    let mut ex: Ex64 = Executor::new(
        graph,
        train_options(true, DtypeSizes::F64),
        CpuBackend::with_element(),
        seed,
    );
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            ex.set_param(ParamId(i), v);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let f64v = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    let input = f64v(normals(&mut rng, ex.graph().input_shape().len(), 1.0));
    let r = f64v(normals(&mut rng, ex.graph().output_shape().len(), 1.0));
    loss(&mut ex, &input, &r);
    let g = ex.output_grad_view();
    ex.backend_mut().write_exact(g, &r);
    ex.backward();
    let input_grad_view = ex.plan().grad[ex.graph().input.0].expect("input gradient planned");
    let input_grad = ex.backend().read_exact(input_grad_view);

    // A kink (ReLU, max pool) crossed by the step biases the quotient. The tiny HRNet is deep
    // enough to amplify a 1e-6 step across kinks (errors of a few percent, shrinking with the
    // step); at 1e-8 none is crossed and f64 still resolves L to ~1e-7 of the derivative.
    let h = 1e-8;
    let check = |what: &str, analytic: f64, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * h);
        let err = (numeric - analytic).abs() / analytic.abs().max(1.0);
        assert!(
            err < 1e-5,
            "{what}: analytic {analytic:.8e} vs numeric {numeric:.8e} (rel err {err:.2e})"
        );
    };

    let v = f64v(normals(&mut rng, input.len(), 1.0));
    let shifted = |s: f64| input.iter().zip(&v).map(|(x, v)| x + s * v).collect::<Vec<f64>>();
    let plus = loss(&mut ex, &shifted(h), &r);
    let minus = loss(&mut ex, &shifted(-h), &r);
    check("input", dot(&input_grad, &v), plus, minus);

    let params = ex.graph().params.clone();
    let mut checked = 0;
    for (i, p) in params.iter().enumerate() {
        if !p.kind.trainable() || !(groups.is_empty() || groups.iter().any(|g| p.name == *g)) {
            continue;
        }
        let id = ParamId(i);
        let theta = ex.backend().param_exact(id).to_vec();
        let analytic_grad = ex.backend().grad_exact(id).to_vec();
        let v = f64v(normals(&mut rng, theta.len(), 1.0));
        let at = |s: f64| theta.iter().zip(&v).map(|(t, v)| t + s * v).collect::<Vec<f64>>();
        ex.backend_mut().write_param_exact(id, &at(h));
        let plus = loss(&mut ex, &input, &r);
        ex.backend_mut().write_param_exact(id, &at(-h));
        let minus = loss(&mut ex, &input, &r);
        ex.backend_mut().write_param_exact(id, &theta);
        check(&p.name, dot(&analytic_grad, &v), plus, minus);
        checked += 1;
    }
    assert_eq!(
        checked,
        if groups.is_empty() {
            checked.max(1)
        } else {
            groups.len()
        },
        "parameter groups found"
    );
}

fn tiny_hrnet() -> Graph {
    ModelConfig::new("hrnet-w18", 1, 3, [64, 64], 2)
        .unwrap()
        .build_hrnet_width(4)
}

#[test]
fn tiny_hrnet_gradients_match_finite_differences() {
    gradcheck(
        tiny_hrnet(),
        &[
            "stem.conv1.weight",
            "stem.bn1.weight",
            "stem.bn1.bias",
            "layer1.block0.downsample.0.weight",
            "transition1.b1.bn.weight",
            "stage2.m0.b1.block3.conv2.weight",
            "stage3.m2.fuse.i0.j2.conv.weight",
            "stage3.m3.fuse.i2.j0.down1.bn.bias",
            "stage4.m2.fuse.i3.j0.down2.conv.weight",
            "stage4.m2.b3.block0.bn1.weight",
            "head.conv1.weight",
            "head.conv1.bias",
            "head.bn1.weight",
            "head.conv2.weight",
            "head.conv2.bias",
        ],
        11,
    );
}

/// A small graph with every op kind, so each backward path of the executor is exercised.
fn every_op_graph() -> Graph {
    let (mut b, x) = GraphBuilder::new(Shape4::new(2, 12, 12, 3), Init::Normal { std: 0.1 });
    let stem = b.conv("stem", x, 6, 3, 1, true);
    // No ReLU before the max pool: ReLU zeros tie inside pooling windows, and a tie broken by
    // the finite-difference step is a kink that biases the quotient.
    let stem = b.batchnorm("stem_bn", stem, false);
    let pooled = b.maxpool("pool", stem, 3, 2, 1); // 6x6
    let c = b.conv("c1", pooled, 6, 3, 1, false);
    let c = b.batchnorm("c1_bn", c, false);
    let res = b.add_relu("res", c, pooled);
    let down = b.conv("down", res, 8, 3, 2, false); // 3x3
    let down = b.relu("down_relu", down);
    let up = b.scope("tconv", |b| b.conv_transpose("deconv", down, 5, 4, 2, 1)); // 6x6
    let near = b.conv("near", down, 5, 1, 1, false);
    let near = b.upsample("near_up", near, 2, UpsampleMode::Nearest);
    let bil = b.conv("bil", down, 5, 1, 1, false);
    let bil = b.upsample("bil_up", bil, 2, UpsampleMode::Bilinear);
    let sum = b.add("sum", near, bil);
    // The graph input joins the concat: without an input gradient it is a hole in concat_bwd.
    let skip = b.maxpool("skip", x, 2, 2, 0);
    let cat = b.concat("cat", &[res, skip, up, sum]);
    let out = b.conv("out", cat, 2, 1, 1, true);
    b.finish(out)
}

#[test]
fn every_op_graph_gradients_match_finite_differences() {
    gradcheck(every_op_graph(), &[], 21);
}

#[test]
fn recomputing_bn_outputs_gives_the_same_gradients_with_less_memory() {
    let (recomputed, arena_a) = train_step(tiny_hrnet(), train_options(true, DtypeSizes::F32), 5);
    let (kept, arena_b) = train_step(tiny_hrnet(), train_options(false, DtypeSizes::F32), 5);
    assert_eq!(recomputed, kept, "recomputation must be exact");
    assert!(
        arena_a < arena_b,
        "recomputing must lower the arena: {arena_a} vs {arena_b}"
    );
}

/// The convolutions that compute their batch norm's statistics (`bn_stats_in_conv`, what the GPU
/// does in the convolution epilogue) must change nothing: outputs, every gradient and the running
/// statistics are the same bits as with the batch norms computing their own.
#[test]
fn bn_statistics_from_the_convolution_change_no_bit() {
    let options = |in_conv: bool| PlanOptions {
        bn_stats_in_conv: in_conv,
        ..train_options(true, DtypeSizes::F32)
    };
    let paired = |in_conv: bool| {
        executor_with(tiny_hrnet(), options(in_conv), 9)
            .plan()
            .bn_stats_by
            .iter()
            .flatten()
            .count()
    };
    assert!(
        paired(true) > 0,
        "the tiny HRNet has convolutions followed by batch norms"
    );
    assert_eq!(paired(false), 0);
    let (a, _) = train_step(tiny_hrnet(), options(true), 9);
    let (b, _) = train_step(tiny_hrnet(), options(false), 9);
    assert_eq!(a, b);
}

/// How many nodes of `g` run the op `kind`.
fn nodes_of_kind(g: &Graph, kind: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.kind() == kind).count()
}

/// Training with each batch norm fused into the residual join that reads it
/// (`fuse_bn_add_relu`, one GPU pass forward and one reduction backward instead of two ops) must
/// change nothing on the CPU, where the BN output is f32 either way: outputs, every gradient, the
/// running statistics and the input gradient are the same bits; and it needs no more memory.
#[test]
fn bn_add_relu_fusion_in_training_changes_no_bit() {
    for graph in [tiny_hrnet(), every_op_graph()] {
        let fused_nodes = nodes_of_kind(&graph.fuse_for_training(), "bn_add_relu");
        assert!(fused_nodes > 0, "the graph has BN -> add_relu joins");
        let options = |fuse: bool| PlanOptions {
            fuse_bn_add_relu: fuse,
            ..train_options(true, DtypeSizes::F32)
        };
        let (a, arena_a) = train_step(graph.clone(), options(true), 13);
        let (b, arena_b) = train_step(graph.clone(), options(false), 13);
        assert_eq!(a, b);
        assert!(
            arena_a <= arena_b,
            "fusing must not cost memory: {arena_a} vs {arena_b}"
        );
    }
}

#[test]
fn eval_mode_normalises_with_running_statistics() {
    // After one training forward, the running statistics moved; eval uses them, so an eval
    // forward of a graph whose running stats equal the batch stats matches training output.
    let graph = every_op_graph();
    let mut train = executor(graph.clone(), true, 9);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let input = normals(&mut rng, graph.input_shape().len(), 1.0);
    let _ = train.predict(&input);
    let mut eval = Executor::new(
        graph.clone(),
        PlanOptions::new(Mode::Eval, DtypeSizes::F32),
        CpuBackend::new(),
        9,
    );
    for i in 0..graph.params.len() {
        let id = ParamId(i);
        eval.set_param(id, &train.param(id));
    }
    let out = eval.predict(&input);
    assert!(out.iter().all(|v| v.is_finite()));
    // Running mean after one step from 0 is 0.1 * batch mean: check one BN layer directly.
    let rm = graph.param_id("stem_bn.running_mean").unwrap();
    let moved = train.param(rm);
    assert!(moved.iter().any(|&v| v != 0.0), "running mean must move in training");
    assert_eq!(eval.param(rm), moved);
}

#[test]
fn fused_conv_bn_inference_matches_the_unfused_ops() {
    for graph in [
        tiny_hrnet(),
        ModelConfig::new("resnet18", 1, 3, [64, 64], 1)
            .unwrap()
            .build()
            .unwrap(),
    ] {
        let mut values = test_values(&graph, 4);
        // Random running statistics (variance positive) so the folding has work to do.
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for (v, p) in values.iter_mut().zip(&graph.params) {
            match p.kind {
                ParamKind::RunningMean => *v = Some(normals(&mut rng, p.len(), 0.3)),
                ParamKind::RunningVar => {
                    *v = Some(normals(&mut rng, p.len(), 0.3).iter().map(|x| 0.5 + x.abs()).collect())
                }
                _ => {}
            }
        }
        let run = |fuse: bool| {
            let opts = PlanOptions {
                fuse_conv_bn: fuse,
                ..PlanOptions::new(Mode::Eval, DtypeSizes::F32)
            };
            let mut ex = Executor::new(graph.clone(), opts, CpuBackend::new(), 1);
            for (i, v) in values.iter().enumerate() {
                ex.set_param(ParamId(i), v.as_ref().unwrap());
            }
            let input: Vec<f32> = (0..graph.input_shape().len())
                .map(|i| (i as f32 * 0.61).sin())
                .collect();
            (ex.predict(&input), ex.graph().nodes.len())
        };
        let (fused, fused_nodes) = run(true);
        let (plain, plain_nodes) = run(false);
        assert!(fused_nodes < plain_nodes, "some conv+BN pairs must fuse");
        let joins = nodes_of_kind(&graph.fuse_for_inference(), "conv_bn_add_relu");
        assert!(joins > 0, "the residual joins must fuse too");
        // The fused nodes run the inference forward, which takes Winograd's F(2x2, 3x3) for the
        // 3x3 stride-1 convolutions (docs/maths.md#winograd-convolution): a different rounding
        // from the plain convolution's direct sum, of the same size (measured over these whole
        // networks: 1.2e-6 and 1.9e-6 of the largest output). A wrong fold (scale, shift,
        // epsilon, residual or ReLU) is off by far more than 1e-5.
        let scale = plain.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = fused.iter().zip(&plain).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("fused against unfused: {:.1e} of the largest value", worst / scale);
        assert!(
            worst <= 1e-5 * scale,
            "fused inference differs from the unfused ops by {worst:e} (largest value {scale:e})"
        );
    }
}

#[test]
fn skipping_the_input_gradient_changes_no_parameter_gradient() {
    // Without an input gradient the concat has a hole and the stem conv skips its dgrad.
    let graph = every_op_graph();
    let values = test_values(&graph, 12);
    let run = |input_grad: bool| {
        let opts = PlanOptions {
            input_grad,
            ..PlanOptions::new(Mode::Train, DtypeSizes::F32)
        };
        let mut ex = Executor::new(graph.clone(), opts, CpuBackend::new(), 1);
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                ex.set_param(ParamId(i), v);
            }
        }
        let input: Vec<f32> = (0..graph.input_shape().len()).map(|i| (i as f32 * 0.3).cos()).collect();
        let r: Vec<f32> = (0..graph.output_shape().len())
            .map(|i| (i as f32 * 0.7).sin())
            .collect();
        ex.predict(&input);
        ex.backward_from(&r);
        assert_eq!(ex.input_grad().is_some(), input_grad);
        (0..graph.params.len())
            .filter(|&i| graph.params[i].kind.trainable())
            .map(|i| ex.param_grad(ParamId(i)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(false), run(true));
}
