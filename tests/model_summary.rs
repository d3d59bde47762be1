//! `cephalo model summary`: its numbers and its errors for bad flags.
use cephalo::model::summary::summary;
use cephalo::model::{resolve, ModelConfig};

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
