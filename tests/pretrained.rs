//! `--pretrained`: the mapping of timm's, mmpose's and torchvision's weights onto cephalo's
//! networks, proved against the real libraries through the fixtures that
//! scripts/make-pretrained-fixtures.py writes (no PyTorch needed here):
//! * every key and shape of the full-size published models maps (or is a classification head);
//! * cephalo's CPU forward of the mapped backbone equals PyTorch's features, in colour (3
//!   input channels) and on a grey image with the stem folded to one channel;
//! * a pickle naming any other global is refused, naming it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cephalo::backend::{Backend, CpuBackend};
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::graph::Graph;
use cephalo::model::{resolve, Arch, ModelConfig};
use cephalo::pretrained::{self, KeyShapes, SourceTensor, StateDict};

/// f32 agreement with PyTorch, relative to the largest feature value: both sum the same
/// products in different orders through up to ~100 layers (measured: at most 1.6e-6).
const TOLERANCE: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pretrained")
        .join(name)
}

/// A key list written by the generator: key -> (shape, is float).
fn key_list(model: &str) -> KeyShapes {
    let text = std::fs::read_to_string(fixture(&format!("keys-{model}.json"))).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                t[0].as_str().unwrap().to_string(),
                (shape, t[2].as_str().unwrap().starts_with("float")),
            )
        })
        .collect()
}

fn graph(model: &str, in_channels: usize) -> (Graph, Arch) {
    let (_, arch) = resolve(model).unwrap();
    (
        ModelConfig::new(model, in_channels, 19, [64, 64], 1)
            .unwrap()
            .build()
            .unwrap(),
        arch,
    )
}

fn count(map: &BTreeMap<String, usize>, key: &str) -> usize {
    map.get(key).copied().unwrap_or(0)
}

#[test]
fn every_key_of_the_published_models_maps_onto_cephalo() {
    for (file, model) in [
        ("hrnet_w18", "hrnet-w18"),
        ("hrnet_w32", "hrnet-w32"),
        ("hrnet_w48", "hrnet-w48"),
        ("resnet18", "resnet18"),
        ("resnet34", "resnet34"),
        ("resnet50", "resnet50"),
    ] {
        let keys = key_list(file);
        for in_channels in [1, 3] {
            let (g, arch) = graph(model, in_channels);
            let m = pretrained::plan(&keys, &g, model, arch).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            let r = &m.report;
            let head = g
                .params
                .iter()
                .filter(|p| r.fresh.keys().any(|h| p.name.starts_with(h)))
                .count();
            assert_eq!(
                r.loaded_tensors + head,
                g.params.len(),
                "{file}: every backbone tensor loads"
            );
            assert!(head > 0, "{file}: the landmark head starts fresh");
            let ignored: usize = r.ignored.values().sum();
            assert_eq!(
                r.loaded_tensors + ignored,
                keys.len(),
                "{file}: every key is loaded or ignored"
            );
            let in_head = |name: &str| r.fresh.keys().any(|h| name.starts_with(h));
            let backbone_bn = g
                .params
                .iter()
                .filter(|p| p.name.ends_with(".running_var") && !in_head(&p.name))
                .count();
            assert!(count(&r.ignored, "num_batches_tracked") >= backbone_bn, "{file}");
            assert_eq!(
                r.folded.is_some(),
                in_channels == 1,
                "{file}: the stem folds only onto one channel"
            );
            if file.starts_with("hrnet") {
                for head in ["incre_modules.", "downsamp_modules.", "final_layer.", "classifier."] {
                    assert!(count(&r.ignored, head) > 0, "{file}: {head} is ignored");
                }
            } else {
                assert_eq!(count(&r.ignored, "fc."), 2, "{file}");
            }
        }
    }
}

#[test]
fn a_file_of_another_size_is_refused_naming_both() {
    let (g, arch) = graph("hrnet-w32", 1);
    let err = format!(
        "{:#}",
        pretrained::plan(&key_list("hrnet_w18"), &g, "hrnet-w32", arch).unwrap_err()
    );
    assert!(err.contains("this is an HRNet-W18 file; --model is hrnet-w32"), "{err}");
    assert!(
        err.contains("[18, 64, 3, 3]") || err.contains("[18, 256, 3, 3]") || err.contains("18"),
        "{err}"
    );
    assert!(err.contains("expects [32"), "{err}");

    let (g, arch) = graph("resnet18", 1);
    let err = format!(
        "{:#}",
        pretrained::plan(&key_list("resnet50"), &g, "resnet18", arch).unwrap_err()
    );
    assert!(err.contains("this is a ResNet-50 file; --model is resnet18"), "{err}");

    let (g, arch) = graph("resnet34", 1);
    let err = format!(
        "{:#}",
        pretrained::plan(&key_list("resnet18"), &g, "resnet34", arch).unwrap_err()
    );
    assert!(
        err.contains("lacks") && err.contains("this is a ResNet-18 file"),
        "{err}"
    );

    let (g, arch) = graph("resnet50", 1);
    let err = format!(
        "{:#}",
        pretrained::plan(&key_list("hrnet_w18"), &g, "resnet50", arch).unwrap_err()
    );
    assert!(err.contains("this is an HRNet-W18 file; --model is resnet50"), "{err}");
}

#[test]
fn a_half_backbone_is_refused() {
    let mut keys = key_list("hrnet_w18");
    keys.retain(|k, _| !k.starts_with("stage4."));
    let (g, arch) = graph("hrnet-w18", 1);
    let err = format!("{:#}", pretrained::plan(&keys, &g, "hrnet-w18", arch).unwrap_err());
    assert!(err.contains("lacks") && err.contains("stage4.m0"), "{err}");
}

/// Features of `graph` (in eval mode) for one NCHW input: the outputs of the last node under
/// each of `prefixes`, NCHW like PyTorch's.
fn features(
    graph: Graph,
    params: &BTreeMap<String, Vec<f32>>,
    input_nchw: &[f32],
    prefixes: &[String],
) -> Vec<Vec<f32>> {
    let mut ex = Executor::with_params(
        graph,
        PlanOptions::new(Mode::Eval, DtypeSizes::F32),
        CpuBackend::new(),
        0,
        |n| params.get(n).map(Vec::as_slice),
    );
    let s = ex.graph().input_shape();
    let v = ex.input_view();
    ex.backend_mut().write(v, &nchw_to_nhwc(input_nchw, s.c, s.h, s.w));
    let wanted: Vec<usize> = prefixes
        .iter()
        .map(|p| {
            ex.graph()
                .nodes
                .iter()
                .rposition(|n| n.name.starts_with(p.as_str()))
                .unwrap_or_else(|| panic!("no node under {p}"))
        })
        .collect();
    let mut out = vec![Vec::new(); wanted.len()];
    for i in 0..ex.graph().nodes.len() {
        ex.forward_node(i);
        for (slot, _) in wanted.iter().enumerate().filter(|(_, &w)| w == i) {
            let s = ex.graph().nodes[i].shape;
            let nhwc = ex.backend().read(ex.plan().fwd[i]);
            out[slot] = nhwc_to_nchw(&nhwc, s.c, s.h, s.w);
        }
    }
    out
}

fn nchw_to_nhwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for ch in 0..c {
        for i in 0..h * w {
            out[i * c + ch] = x[ch * h * w + i];
        }
    }
    out
}

fn nhwc_to_nchw(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for ch in 0..c {
        for i in 0..h * w {
            out[ch * h * w + i] = x[i * c + ch];
        }
    }
    out
}

/// The largest difference relative to the reference's largest magnitude.
fn relative_error(ours: &[f32], torch: &[f32]) -> f32 {
    assert_eq!(ours.len(), torch.len());
    let scale = torch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = ours.iter().zip(torch).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn hrnet_outputs() -> Vec<String> {
    (0..4).map(|i| format!("stage4.m2.fuse.i{i}.")).collect()
}

/// Checks the RGB (3-channel network) and grey (1 channel, folded stem) features of a model
/// whose file tensors `sd` holds, against `reference` entries `<prefix>rgb_...`/`grey_...`.
fn check_features(
    sd: &StateDict,
    reference: &StateDict,
    prefix: &str,
    build: impl Fn(usize) -> Graph,
    arch: Arch,
    outputs: &[String],
    names: &[&str],
) {
    for (colour, in_channels) in [("rgb", 3), ("grey", 1)] {
        let g = build(in_channels);
        let loaded = pretrained::map_state_dict(sd, &g, "the test network", arch).unwrap();
        assert_eq!(loaded.report.folded.is_some(), in_channels == 1);
        let input = &reference[&format!("{prefix}{colour}_input")].data;
        let ours = features(g, &loaded.params, input, outputs);
        for (o, name) in ours.iter().zip(names) {
            let torch = &reference[&format!("{prefix}{colour}_{name}")];
            let err = relative_error(o, &torch.data);
            println!("{prefix}{colour} {name}: max |cephalo - PyTorch| / max |PyTorch| = {err:.2e}");
            assert!(err < TOLERANCE, "{prefix}{colour} {name}: relative error {err:e}");
        }
    }
}

fn small_hrnet(in_channels: usize) -> Graph {
    ModelConfig::new("hrnet-w18", in_channels, 19, [64, 64], 1)
        .unwrap()
        .build_hrnet_width(2)
}

#[test]
fn timm_safetensors_mmpose_pth_and_legacy_pth_give_pytorchs_features() {
    let reference = pretrained::read_state_dict(&fixture("hrnet_w2_features.safetensors")).unwrap();
    let timm = pretrained::read_state_dict(&fixture("hrnet_w2.safetensors")).unwrap();
    let mmpose = pretrained::read_state_dict(&fixture("hrnet_w2_mmpose.pth")).unwrap();
    let legacy = pretrained::read_state_dict(&fixture("hrnet_w2_legacy.pth")).unwrap();
    let arch = Arch::HrNet { width: 2 };
    let names = ["b0", "b1", "b2", "b3"];
    check_features(&timm, &reference, "", small_hrnet, arch, &hrnet_outputs(), &names);
    check_features(&mmpose, &reference, "", small_hrnet, arch, &hrnet_outputs(), &names);
    check_features(&legacy, &reference, "", small_hrnet, arch, &hrnet_outputs(), &names);

    // The same values from the three formats.
    let g = small_hrnet(1);
    let a = pretrained::map_state_dict(&timm, &g, "hrnet-w2", arch).unwrap();
    let b = pretrained::map_state_dict(&mmpose, &g, "hrnet-w2", arch).unwrap();
    let c = pretrained::map_state_dict(&legacy, &g, "hrnet-w2", arch).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.params, c.params);
    assert_eq!(a.report, c.report);
    println!("timm file:\n{}\nmmpose file:\n{}", a.report, b.report);
    assert_eq!(count(&b.report.ignored, "keypoint_head."), 1);
    assert_eq!(
        count(&a.report.ignored, "num_batches_tracked"),
        count(&b.report.ignored, "num_batches_tracked")
    );
}

// The counter-based weights of the generator (counter_values, value_range), repeated here.

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn counter_values(name: &str, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let seed = fnv1a(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u32 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

fn value_range(key: &str, shape: &[usize]) -> (f32, f32) {
    if let [_, i, kh, kw] = *shape {
        let a = (6.0f32 / (i * kh * kw) as f32).sqrt();
        return (-a, a);
    }
    match key.rsplit('.').next().unwrap() {
        "weight" => (0.3, 0.7),
        "bias" | "running_mean" => (-0.1, 0.1),
        "running_var" => (0.5, 1.5),
        other => panic!("{key}: {other}"),
    }
}

/// A full-size state dict with the generator's counter values (other tensors zero).
fn counter_state_dict(model: &str) -> StateDict {
    key_list(model)
        .into_iter()
        .map(|(k, (shape, is_float))| {
            let n = shape.iter().product();
            let data = if is_float && matches!(shape.len(), 1 | 4) {
                let (lo, hi) = value_range(&k, &shape);
                counter_values(&k, n, lo, hi)
            } else {
                vec![0.0; n]
            };
            (k, SourceTensor { shape, data, is_float })
        })
        .collect()
}

#[test]
fn full_size_timm_hrnet_w18_and_torchvision_resnet18_give_pytorchs_features() {
    let reference = pretrained::read_state_dict(&fixture("counter_features.safetensors")).unwrap();
    let build =
        |model: &'static str| move |c: usize| ModelConfig::new(model, c, 19, [64, 64], 1).unwrap().build().unwrap();
    check_features(
        &counter_state_dict("hrnet_w18"),
        &reference,
        "hrnet_w18.",
        build("hrnet-w18"),
        Arch::HrNet { width: 18 },
        &hrnet_outputs(),
        &["b0", "b1", "b2", "b3"],
    );
    check_features(
        &counter_state_dict("resnet18"),
        &reference,
        "resnet18.",
        build("resnet18"),
        resolve("resnet18").unwrap().1,
        &["layer4.".to_string()],
        &["layer4"],
    );
}

#[test]
fn a_pickle_naming_another_global_is_refused() {
    let err = format!("{:#}", pretrained::read_state_dict(&fixture("evil.pth")).unwrap_err());
    assert!(err.contains("posix.system"), "{err}");
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("hrnet_w2_mmpose.pth")).unwrap();
    for (name, bytes) in [
        ("truncated.pth", good[..good.len() / 2].to_vec()),
        (
            "noise.bin",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("empty.pth", Vec::new()),
        ("bare-pickle.pth", vec![0x80, 0x02, b'.']),
        (
            "legacy-truncated.pth",
            std::fs::read(fixture("hrnet_w2_legacy.pth")).unwrap()[..700_000].to_vec(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", pretrained::read_state_dict(&path).unwrap_err());
        assert!(err.contains(name), "{name}: {err}");
    }
    // A pickle cut anywhere is refused cleanly too.
    let pkl = {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&good)).unwrap();
        let name = zip
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .find(|n| n.ends_with("data.pkl"))
            .unwrap();
        let mut f = zip.by_name(&name).unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).unwrap();
        buf
    };
    for cut in (0..pkl.len()).step_by(97) {
        assert!(pretrained::pickle::parse(&pkl[..cut]).is_err(), "cut at {cut}");
    }
    assert!(pretrained::pickle::parse(&pkl).is_ok());
}

// `cephalo train --pretrained`, end to end on the CPU.

#[path = "cli_support/mod.rs"]
mod cli_support;

/// A full-size ResNet-18 file (torchvision's keys, the counter values) as safetensors.
fn write_resnet18_file(path: &Path) -> StateDict {
    let sd = counter_state_dict("resnet18");
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = sd
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
    sd
}

#[test]
fn train_starts_the_backbone_from_the_file_and_the_head_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resnet18.safetensors");
    let sd = write_resnet18_file(&file);
    let data = cli_support::phantoms(dir.path(), 8, 3, 96);
    let ck_dir = dir.path().join("ck");
    let train = |model: &str, extra: &[&str]| {
        let flags = [
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            // Small enough that one epoch leaves every weight where the file put it.
            "--lr",
            "1e-12",
            "--pretrained",
            file.to_str().unwrap(),
        ];
        let run = cli_support::Train {
            model,
            ..cli_support::CPU_64
        };
        run.run(dir.path(), &data, &[&flags, extra].concat())
    };
    let err = format!("{:#}", train("resnet34", &[]).unwrap_err());
    assert!(err.contains("this is a ResNet-18 file; --model is resnet34"), "{err}");
    let err = format!("{:#}", train("resnet18", &["--resume", "x.safetensors"]).unwrap_err());
    assert!(err.contains("--pretrained") && err.contains("--resume"), "{err}");

    train("resnet18", &[]).expect("training from the file runs");
    let ck = cephalo::checkpoint::load(&ck_dir.join("checkpoint_last.safetensors")).unwrap();
    let g = ModelConfig::new("resnet18", 1, ck.meta.landmarks.len(), [64, 64], 2)
        .unwrap()
        .build()
        .unwrap();
    let mapped = pretrained::map_state_dict(&sd, &g, "resnet18", resolve("resnet18").unwrap().1).unwrap();
    for (name, values) in &mapped.params {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue; // training-mode batch norm updates them
        }
        let worst = ck.tensors[name]
            .data
            .iter()
            .zip(values)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-6, "{name}: {worst:e} away from the file's values");
    }
    // The head starts as a fresh run's would (seed 0) and moves no more than the backbone.
    let head = g.params.iter().find(|p| p.name == "final_layer.weight").unwrap();
    let fresh = head.initial_values(0);
    let worst = ck.tensors[&head.name]
        .data
        .iter()
        .zip(&fresh)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst < 1e-6,
        "final_layer.weight: {worst:e} away from its fresh initialisation"
    );
}

#[test]
fn a_pickle_that_doubles_a_memo_entry_costs_no_memory() {
    // () then 64 times t = (t, t): 2^64 leaves if each read of the memo were a copy.
    let mut p = vec![0x80, 2, b')', b'q', 0];
    for _ in 0..64 {
        p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    p.push(b'.');
    assert!(pretrained::pickle::parse(&p).is_ok());
}
