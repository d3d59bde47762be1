//! The memory planner: no two buffers that are live at the same step share bytes, for every
//! model in training and inference, and the arena stays close to the live peak.
use cephalo::backend::Shape4;
use cephalo::graph::plan::{plan, BufferKind, DtypeSizes, Mode, PlanOptions};
use cephalo::graph::{GraphBuilder, Init, Op, TensorId};
use cephalo::model::{ModelConfig, MODEL_NAMES};

#[test]
fn every_model_plan_is_overlap_free() {
    for model in &MODEL_NAMES[..6] {
        let g = ModelConfig::new(model, 1, 19, [128, 96], 2).unwrap().build().unwrap();
        let mut arenas = Vec::new();
        for (mode, dtypes) in [
            (Mode::Train, DtypeSizes::F16),
            (Mode::Eval, DtypeSizes::F16),
            (Mode::Train, DtypeSizes::F32),
        ] {
            // The graph the executor runs: with its mode's fusions.
            let opts = PlanOptions::new(mode, dtypes);
            let p = plan(&opts.graph_for(g.clone()), opts);
            if let Err(e) = p.check() {
                panic!("{model} {mode:?}: {e}");
            }
            assert!(p.arena_bytes >= p.live_peak_bytes, "{model}: arena below the live peak");
            // First-fit decreasing keeps the arena near the lower bound.
            assert!(
                (p.arena_bytes as f64) < 1.3 * p.live_peak_bytes as f64,
                "{model} {mode:?}: arena {} vs live peak {}",
                p.arena_bytes,
                p.live_peak_bytes
            );
            arenas.push(p.arena_bytes);
        }
        assert!(arenas[1] < arenas[0], "{model}: inference must need less than training");
        assert!(arenas[2] > arenas[0], "{model}: f32 activations need more than fp16");
    }
}

#[test]
fn the_check_catches_an_overlap() {
    let g = ModelConfig::new("resnet18", 1, 19, [64, 64], 1)
        .unwrap()
        .build()
        .unwrap();
    let mut p = plan(&g, PlanOptions::new(Mode::Train, DtypeSizes::F32));
    assert!(p.check().is_ok());
    // Move the input gradient onto the input: both are live at the stem's backward step.
    let input = g.input.0;
    let fwd = p
        .buffers
        .iter()
        .find(|b| b.kind == cephalo::graph::plan::BufferKind::Forward(g.input))
        .unwrap()
        .offset;
    for b in &mut p.buffers {
        if b.kind == cephalo::graph::plan::BufferKind::Forward(cephalo::graph::TensorId(input + 1)) {
            b.offset = fwd;
        }
    }
    assert!(p.check().is_err());
}

#[test]
fn a_chain_in_inference_needs_two_buffers() {
    // x -> relu -> relu -> relu: each tensor dies when the next is made, so two buffers suffice.
    let s = Shape4::new(1, 8, 8, 4);
    let (mut b, x) = GraphBuilder::new(s, Init::Zeros);
    let a = b.relu("a", x);
    let c = b.relu("b", a);
    let d = b.relu("c", c);
    let g = b.finish(d);
    let p = plan(&g, PlanOptions::new(Mode::Eval, DtypeSizes::F32));
    assert_eq!(p.arena_bytes, 2 * s.len() * 4);
    assert_eq!(p.live_peak_bytes, 2 * s.len() * 4);
    // Without parameters nothing needs a gradient: training plans the same as inference.
    let t = plan(&g, PlanOptions::new(Mode::Train, DtypeSizes::F32));
    assert_eq!(t.arena_bytes, p.arena_bytes);

    // Behind a convolution, backward runs: the conv keeps its input and every ReLU its output
    // until their backward, and at the conv's backward the input, the first ReLU output, its
    // gradient and the conv output's gradient are live together.
    let (mut b, x) = GraphBuilder::new(s, Init::Zeros);
    let y = b.conv("conv", x, 4, 1, 1, false);
    let a = b.relu("a", y);
    let c = b.relu("b", a);
    let g = b.finish(c);
    let t = plan(&g, PlanOptions::new(Mode::Train, DtypeSizes::F32));
    t.check().unwrap();
    // Live at b's backward: x, a, b (saved), grad b, grad a = 5 tensors.
    assert_eq!(t.live_peak_bytes, 5 * s.len() * 4);
}

/// In training every batch norm that reads a convolution read by nothing else gets its statistics
/// from that convolution, whose step then starts the BN's statistics buffer (written there);
/// inference plans and plans that turn it off pair nothing.
#[test]
fn each_batch_norm_after_a_convolution_gets_its_statistics_from_it() {
    for model in ["hrnet-w8", "resnet18"] {
        let g = ModelConfig::new(model, 1, 19, [128, 96], 2).unwrap().build().unwrap();
        let p = plan(&g, PlanOptions::new(Mode::Train, DtypeSizes::F16));
        p.check().unwrap();
        let mut paired = 0;
        for (j, node) in g.nodes.iter().enumerate() {
            let Op::BatchNorm { .. } = node.op else {
                assert_eq!(p.bn_stats_by[j], None, "{model}: {} is no batch norm", node.name);
                continue;
            };
            let src = node.inputs[0].0;
            let only_reader = g.nodes.iter().filter(|n| n.inputs.contains(&TensorId(src))).count() == 1;
            let want = (matches!(g.nodes[src].op, Op::Conv { .. }) && only_reader).then_some(src);
            assert_eq!(p.bn_stats_by[j], want, "{model}: {}", node.name);
            if let Some(i) = want {
                paired += 1;
                assert_eq!(p.bn_stats_of[i], Some(j));
                let stats = p
                    .buffers
                    .iter()
                    .find(|b| b.kind == BufferKind::Stats(TensorId(j)))
                    .unwrap();
                assert_eq!(
                    stats.first, i,
                    "{model}: {} statistics live from the convolution",
                    node.name
                );
            }
        }
        assert!(paired > 10, "{model}: only {paired} pairs");
        for opts in [
            PlanOptions::new(Mode::Eval, DtypeSizes::F16),
            PlanOptions {
                bn_stats_in_conv: false,
                ..PlanOptions::new(Mode::Train, DtypeSizes::F16)
            },
        ] {
            let q = plan(&g, opts);
            assert!(q.bn_stats_by.iter().chain(&q.bn_stats_of).all(Option::is_none));
        }
    }
}

/// A join whose residual is the batch norm's own input stays unfused (the fused backward would
/// write that tensor's two gradients in the wrong order); an ordinary join fuses.
#[test]
fn a_join_on_the_batch_norms_own_input_is_not_fused() {
    let (mut b, x) = GraphBuilder::new(Shape4::new(1, 6, 6, 8), Init::Normal { std: 0.1 });
    let c = b.conv("c", x, 8, 3, 1, false);
    let t = b.batchnorm("bn", c, false);
    let own = b.add_relu("own", t, c);
    let d = b.conv("d", own, 8, 3, 1, false);
    let u = b.batchnorm("bn2", d, false);
    let out = b.add_relu("join", u, own);
    let g = b.finish(out);
    let fused = g.fuse_for_training();
    let kinds: Vec<&str> = fused.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "bn_add_relu").count(), 1, "{kinds:?}");
    let last = fused.nodes.last().unwrap();
    assert_eq!(last.op.kind(), "bn_add_relu");
    assert_eq!(fused.nodes[last.inputs[0].0].name, "d");
    plan(&fused, PlanOptions::new(Mode::Train, DtypeSizes::F32))
        .check()
        .unwrap();
}
