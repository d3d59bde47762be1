//! `cephalo model summary` and `cephalo model conv-shapes`: their numbers and their errors for bad flags.
mod cli_support;

use std::process::ExitCode;

use cephalo::graph::plan::{plan, DtypeSizes, Mode, Plan, PlanOptions};
use cephalo::graph::Graph;
use cephalo::model::conv_shapes::{conv_shapes, conv_shapes_table, ConvKind, ConvShape};
use cephalo::model::summary::summary;
use cephalo::model::{resolve, ModelConfig};
use cephalo::train::cuda_engine::{memory_plan, MemoryPlan};

#[test]
fn summary_reports_exact_counts_and_planned_memory() {
    let cfg = ModelConfig::new("resnet", 3, 29, [256, 256], 2).unwrap();
    assert_eq!(cfg.model, "resnet50");
    let g = cfg.build().unwrap();
    let text = summary(&cfg, &g, false);
    assert!(text.contains("parameters: 34002781 (backbone 23508032)"), "{text}");
    assert!(
        text.contains(&format!("{:.2} G per batch", g.macs() as f64 / 1e9)),
        "{text}"
    );
    assert!(text.contains("training") && text.contains("inference"), "{text}");
    // One row per top-level block, or every layer with --layers.
    assert!(text.contains("layer4") && text.contains("deconv_layers") && text.contains("final_layer"));
    let every = summary(&cfg, &g, true);
    assert!(every.lines().count() > g.nodes.len());
    assert!(every.contains("layer2.0.downsample.0"));
}

#[test]
fn short_names_and_bad_flags() {
    assert_eq!(resolve("hrnet").unwrap().0, "hrnet-w32");
    assert_eq!(resolve("HRNet-W18").unwrap().0, "hrnet-w18");
    let e = resolve("hrnet-w64").unwrap_err().to_string();
    assert!(e.contains("hrnet-w64") && e.contains("resnet34"), "{e}");
    let e = ModelConfig::new("hrnet", 1, 19, [100, 768], 1).unwrap_err().to_string();
    assert!(
        e.contains("--image-size 100 768") && e.contains("multiples of 32"),
        "{e}"
    );
    let e = ModelConfig::new("hrnet", 2, 19, [768, 768], 1).unwrap_err().to_string();
    assert!(e.contains("--in-channels"), "{e}");
    assert!(ModelConfig::new("hrnet", 1, 0, [768, 768], 1).is_err());
    assert!(ModelConfig::new("hrnet", 1, 19, [768, 768], 0).is_err());
}

#[test]
fn conv_shapes_command_lists_distinct_convolutions() {
    for argv in [
        &[
            "model",
            "conv-shapes",
            "--model",
            "resnet18",
            "--image-size",
            "64",
            "96",
            "--batch-size",
            "2",
        ][..],
        &[
            "model",
            "conv-shapes",
            "--model",
            "hrnet-w18",
            "--image-size",
            "64",
            "64",
            "--json",
        ][..],
    ] {
        assert_eq!(cli_support::run(argv).unwrap(), ExitCode::SUCCESS, "{argv:?}");
    }
    // The JSON the command prints reads back into the same list (benches/cudnn_reference.py reads it).
    let cfg = ModelConfig::new("resnet50", 1, 29, [128, 96], 3).unwrap();
    let shapes = conv_shapes(&cfg.build().unwrap());
    let json = serde_json::to_string_pretty(&shapes).unwrap();
    assert!(
        json.contains("\"kind\": \"conv_transpose\"") && json.contains("\"out_h\""),
        "{json}"
    );
    let back: Vec<ConvShape> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, shapes);
    let stem = &shapes[0];
    assert_eq!(
        (stem.kind, stem.n, stem.h, stem.w, stem.c_in, stem.kh),
        (ConvKind::Conv, 3, 128, 96, 1, 7)
    );
    assert!(stem.reads_input && shapes[1..].iter().all(|s| !s.reads_input));
    let table = conv_shapes_table(&shapes);
    assert!(table.lines().next().unwrap().starts_with("kind"), "{table}");
    assert!(table.contains("conv_transpose") && table.contains("4x4"), "{table}");
}

#[test]
fn conv_shapes_command_rejects_bad_flags() {
    let e = cli_support::run(&["model", "conv-shapes", "--model", "vgg16"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("vgg16") && e.contains("hrnet-w32"), "{e}");
    let e = cli_support::run(&["model", "conv-shapes", "--image-size", "100", "768"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 32"), "{e}");
    assert!(cli_support::run(&["model", "conv-shapes", "--image-size", "768"]).is_err());
    assert!(cli_support::run(&["model", "conv-shapes", "--batch-size", "0"]).is_err());
}

/// The model's graph, its GPU training memory plan, and the plan of an fp16 evaluation pass with
/// an arena of its own.
fn gpu_plans(cfg: ModelConfig) -> (Graph, MemoryPlan, Plan) {
    let g = cfg.build().unwrap();
    let p = memory_plan(&g);
    let options = PlanOptions::new(Mode::Eval, DtypeSizes::F16);
    let eval = plan(&options.graph_for(g.clone()), options);
    (g, p, eval)
}

/// The GPU training run's memory plan: validation runs inside the training arena (its own arena is
/// far smaller) and on the training weights, so it adds nothing, and the total is the sum of the
/// training parts.
#[test]
fn validation_needs_no_device_memory_of_its_own() {
    for (model, batch) in [("hrnet-w32", 2), ("resnet50", 4)] {
        let (_, p, eval) = gpu_plans(ModelConfig::new(model, 1, 19, [256, 256], batch).unwrap());
        assert!(eval.arena_bytes > 0 && eval.arena_bytes < p.train_arena, "{model}");
        assert_eq!(p.eval_arena, 0, "{model}");
        assert_eq!(p.total(), p.train_arena + p.params + p.optimizer + p.scratch, "{model}");
    }
}

/// The planned device memory of GPU training at the users' sizes, printed for BENCHMARKS.md
/// (`cargo test --release --test model_summary -- --ignored --nocapture training_memory_plans`):
/// the plan now, and what validation's own arena and copy of the weights (fp32 masters and fp16
/// copies) added before it ran in the training memory. Ignored: it plans full-size networks.
#[test]
#[ignore = "prints the full-size memory plans for BENCHMARKS.md"]
fn training_memory_plans() {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for (model, batch) in [("hrnet-w32", 4), ("resnet50", 8)] {
        let (g, p, eval) = gpu_plans(ModelConfig::new(model, 1, 29, [768, 768], batch).unwrap());
        let weights_copy = g.params.iter().map(|p| p.len()).sum::<usize>() * 6;
        assert_eq!(p.eval_arena, 0, "{model}");
        println!(
            "{model} 768x768 batch {batch}: planned {:.0} MiB (activations {:.0}, parameters {:.0}, optimizer {:.0}, \
             scratch {:.0}); validation's own arena {:.0} MiB and weight copy {:.0} MiB are no longer added",
            mib(p.total()),
            mib(p.train_arena),
            mib(p.params),
            mib(p.optimizer),
            mib(p.scratch),
            mib(eval.arena_bytes),
            mib(weights_copy)
        );
    }
}
