//! `cephalo export`: the ONNX file's structure, bad input refused without a partial file, and
//! (with onnxruntime, see `export_matches_cpu_inference_in_onnxruntime`) the exported models'
//! heatmaps against cephalo's own CPU inference on real ISBI radiographs.
mod cli_support;

use std::path::{Path, PathBuf};

use cephalo::checkpoint::{self, Checkpoint, Meta, Tensor};
use cephalo::data::augment::{transform_sample, AugmentConfig};
use cephalo::data::geometry::ImageSize;
use cephalo::data::heatmap::{decode_dark, heatmap_to_image};
use cephalo::data::image_io::load_gray;
use cephalo::data::landmarks::LandmarkSet;
use cephalo::data::loader::normalize_into;
use cephalo::data::{Dataset, DatasetOptions, Split};
use cephalo::device::Device;
use cephalo::eval::command::load_model;
use cephalo::graph::ParamKind;
use cephalo::model::ModelConfig;
use cli_support::run;
use onnx_protobuf::{tensor_proto::DataType, Message, ModelProto};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// A checkpoint of `model` with random weights *and* random batch-norm statistics, every value
/// of a scale that keeps activations of order 1 through the network: every folded constant
/// (gamma, beta, mean, variance, bias) differs from its identity value, so a wrong fold, layout
/// or coordinate mode shows in the heatmaps, which a freshly initialised model (BN identity,
/// std 0.001 weights, all-zero heatmaps) would hide.
fn random_checkpoint(model: &str, size: [usize; 2], seed: u64) -> Checkpoint {
    random_checkpoint_with_channels(model, 1, size, seed)
}

/// A random hrnet-w8 refiner (64-pixel patches of 0.3 mm) from `seed`.
fn random_refiner(seed: u64) -> Checkpoint {
    let mut refiner = random_checkpoint("hrnet-w8", [64, 64], seed);
    refiner.meta.refiner = Some(cephalo::refine::PatchSpec {
        size: 64,
        mm: 0.3,
        jitter_mm: 5.0,
        train_pixel_mm: 0.1,
    });
    refiner
}

fn random_checkpoint_with_channels(model: &str, in_channels: usize, size: [usize; 2], seed: u64) -> Checkpoint {
    let config = ModelConfig::new(model, in_channels, 19, size, 1).unwrap();
    let graph = config.build().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = |rng: &mut rand_chacha::ChaCha8Rng, std: f32| Normal::new(0.0, std).unwrap().sample(rng);
    let tensors = graph
        .params
        .iter()
        .map(|p| {
            let n = p.len();
            let data: Vec<f32> = match p.kind {
                ParamKind::Weight => {
                    let fan_in: usize = p.shape[1..].iter().product();
                    let std = (1.0 / fan_in as f32).sqrt();
                    (0..n).map(|_| normal(&mut rng, std)).collect()
                }
                ParamKind::Bias | ParamKind::BnBeta | ParamKind::RunningMean => {
                    (0..n).map(|_| normal(&mut rng, 0.2)).collect()
                }
                ParamKind::BnGamma => (0..n).map(|_| rng.random_range(0.5..1.5)).collect(),
                ParamKind::RunningVar => (0..n).map(|_| rng.random_range(0.5..2.0)).collect(),
            };
            (
                p.name.clone(),
                Tensor {
                    shape: p.shape.clone(),
                    data,
                },
            )
        })
        .collect();
    let meta = Meta::new(config, LandmarkSet::isbi19().symbols, 4, 2.0);
    Checkpoint { meta, tensors }
}

fn export(args: &[&str]) -> anyhow::Result<std::process::ExitCode> {
    run(&[&["export"], args].concat())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn load_onnx(path: &Path) -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

fn dims(m: &ModelProto, output: bool) -> Vec<String> {
    use onnx_protobuf::{tensor_shape_proto::dimension::Value, type_proto};
    let info = if output { &m.graph.output[0] } else { &m.graph.input[0] };
    let Some(type_proto::Value::TensorType(t)) = &info.type_.value else {
        panic!("tensor type")
    };
    t.shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(v)) => v.to_string(),
            Some(Value::DimParam(p)) => p.clone(),
            _ => "?".into(),
        })
        .collect()
}

#[test]
fn export_writes_a_self_contained_opset17_model_with_decoding_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let ck_path = dir.path().join("ck.safetensors");
    let mut ck = random_checkpoint("hrnet-w8", [64, 96], 1);
    ck.meta.epoch = 7;
    checkpoint::save(&ck_path, &ck).unwrap();
    let out = dir.path().join("model.onnx");
    export(&["--checkpoint", s(&ck_path), "--out", s(&out), "--batch", "2"]).unwrap();
    let m = load_onnx(&out);
    assert_eq!(m.opset_import[0].version, 17);
    assert_eq!(m.graph.input[0].name, "image");
    assert_eq!(m.graph.output[0].name, "heatmaps");
    assert_eq!(dims(&m, false), ["2", "1", "64", "96"]);
    assert_eq!(dims(&m, true), ["2", "19", "16", "24"]);
    let meta: std::collections::HashMap<&str, &str> = m
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    let symbols: Vec<String> = serde_json::from_str(meta["landmarks"]).unwrap();
    assert_eq!(symbols, LandmarkSet::isbi19().symbols);
    assert_eq!(meta["input_size"], "[64,96]");
    assert_eq!(meta["heatmap_stride"], "4");
    assert_eq!(meta["heatmap_sigma"], "2");
    assert_eq!(meta["normalize_mean"], "0.5");
    assert_eq!(meta["normalize_std"], "0.25");
    assert_eq!(meta["model"], "hrnet-w8");
    assert_eq!(meta["stage"], "global");
    assert_eq!(meta["cephalo_version"], env!("CARGO_PKG_VERSION"));

    // Every node reads only the input, initializers and earlier outputs (topological order),
    // and every initializer is read.
    let mut defined: std::collections::HashSet<&str> = m.graph.initializer.iter().map(|t| t.name.as_str()).collect();
    defined.insert("image");
    let mut read = std::collections::HashSet::new();
    for node in &m.graph.node {
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            assert!(defined.contains(i.as_str()), "{} reads {i} before it exists", node.name);
            read.insert(i.as_str());
        }
        defined.insert(&node.output[0]);
    }
    assert!(m.graph.initializer.iter().all(|t| read.contains(t.name.as_str())));
    assert!(defined.contains("heatmaps"));
    // HRNet's batch norms all fold into convolutions; every upsampling is HRNet's bilinear one.
    let ops = |op: &str| m.graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(ops("BatchNormalization"), 0);
    let graph =
        cephalo::graph::plan::PlanOptions::new(cephalo::graph::plan::Mode::Eval, cephalo::graph::plan::DtypeSizes::F32)
            .graph_for(ck.meta.model.build().unwrap());
    let convs = graph.nodes.iter().filter(|n| n.op.kind().starts_with("conv")).count();
    assert_eq!(ops("Conv"), convs);
    // HRNet upsamples with both modes: nearest in the fuse layers, bilinear before the head.
    let mut modes = std::collections::BTreeMap::new();
    for resize in m.graph.node.iter().filter(|n| n.op_type == "Resize") {
        let attr = |name: &str| {
            let a = resize.attribute.iter().find(|a| a.name == name)?;
            Some(String::from_utf8(a.s.clone()).unwrap())
        };
        let mode = attr("mode").unwrap();
        match mode.as_str() {
            "linear" => assert_eq!(attr("coordinate_transformation_mode").unwrap(), "half_pixel"),
            "nearest" => {
                assert_eq!(attr("coordinate_transformation_mode").unwrap(), "asymmetric");
                assert_eq!(attr("nearest_mode").unwrap(), "floor");
            }
            other => panic!("Resize mode {other}"),
        }
        *modes.entry(mode).or_insert(0) += 1;
    }
    let upsamples = |kind: &str| graph.nodes.iter().filter(|n| n.op.kind() == kind).count();
    assert_eq!(
        modes.get("linear").copied().unwrap_or(0),
        upsamples("upsample_bilinear")
    );
    assert_eq!(
        modes.get("nearest").copied().unwrap_or(0),
        upsamples("upsample_nearest")
    );
    assert!(upsamples("upsample_bilinear") > 0 && upsamples("upsample_nearest") > 0);

    // --fp16 --batch dynamic: half-precision weights, f32 at both ends, a symbolic batch.
    let out16 = dir.path().join("model16.onnx");
    export(&[
        "--checkpoint",
        s(&ck_path),
        "--out",
        s(&out16),
        "--fp16",
        "--batch",
        "dynamic",
    ])
    .unwrap();
    let m16 = load_onnx(&out16);
    assert_eq!(dims(&m16, false), ["N", "1", "64", "96"]);
    assert_eq!(dims(&m16, true), ["N", "19", "16", "24"]);
    let weights16 = m16
        .graph
        .initializer
        .iter()
        .filter(|t| t.name.ends_with(".weight"))
        .all(|t| t.data_type == DataType::FLOAT16 as i32);
    assert!(weights16);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(size(&out16) < 0.55 * size(&out), "fp16 halves the file");

    // A refiner exports too and says so.
    let refiner = random_refiner(2);
    let refiner_path = dir.path().join("refiner.safetensors");
    checkpoint::save(&refiner_path, &refiner).unwrap();
    let out_r = dir.path().join("refiner.onnx");
    export(&["--checkpoint", s(&refiner_path), "--out", s(&out_r)]).unwrap();
    let mr = load_onnx(&out_r);
    let stage = mr.metadata_props.iter().find(|p| p.key == "stage").unwrap();
    assert_eq!(stage.value, "refine");
    let patch = mr.metadata_props.iter().find(|p| p.key == "refiner_patch").unwrap();
    let spec: serde_json::Value = serde_json::from_str(&patch.value).unwrap();
    assert_eq!(spec["size"], 64);
    assert_eq!(spec["mm"], 0.3);
}

/// The files in `dir` other than `keep`: what a failed export must not leave behind.
fn leftovers(dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.contains(&p.as_path()))
        .collect()
}

#[test]
fn export_refuses_bad_input_with_a_clear_error_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("model.onnx");
    let err = |args: &[&str]| format!("{:#}", export(args).unwrap_err());

    // Not a safetensors file at all.
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    let e = err(&["--checkpoint", s(&garbage), "--out", s(&out)]);
    assert!(
        e.contains("garbage.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );

    // A safetensors file that is not a cephalo checkpoint.
    let foreign = dir.path().join("foreign.safetensors");
    let data = [0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &foreign).unwrap();
    let e = err(&["--checkpoint", s(&foreign), "--out", s(&out)]);
    assert!(e.contains("not a cephalo checkpoint"), "{e}");

    // A truncated checkpoint.
    let ck = random_checkpoint("resnet18", [64, 64], 3);
    let good = dir.path().join("good.safetensors");
    checkpoint::save(&good, &ck).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&["--checkpoint", s(&truncated), "--out", s(&out)]);
    assert!(e.contains("truncated.safetensors"), "{e}");

    // A checkpoint whose tensors do not fit its model.
    let mut wrong = ck.clone();
    wrong.tensors.remove("final_layer.bias").unwrap();
    let wrong_path = dir.path().join("wrong.safetensors");
    checkpoint::save(&wrong_path, &wrong).unwrap();
    let e = err(&["--checkpoint", s(&wrong_path), "--out", s(&out)]);
    assert!(e.contains("missing 1 tensor(s): final_layer.bias"), "{e}");

    // A diverged model (NaN), and one fp16 cannot hold.
    let mut nan = ck.clone();
    nan.tensors.get_mut("conv1.weight").unwrap().data[5] = f32::NAN;
    let nan_path = dir.path().join("nan.safetensors");
    checkpoint::save(&nan_path, &nan).unwrap();
    let e = err(&["--checkpoint", s(&nan_path), "--out", s(&out)]);
    assert!(e.contains("conv1.weight") && e.contains("non-finite"), "{e}");
    let mut huge = ck.clone();
    huge.tensors.get_mut("conv1.weight").unwrap().data[5] = 1e6;
    let huge_path = dir.path().join("huge.safetensors");
    checkpoint::save(&huge_path, &huge).unwrap();
    let e = err(&["--checkpoint", s(&huge_path), "--out", s(&out), "--fp16"]);
    assert!(e.contains("--fp16") && e.contains("conv1"), "{e}");

    // Unwritable places: a missing folder, a folder given as the file.
    let e = err(&[
        "--checkpoint",
        s(&good),
        "--out",
        s(&dir.path().join("no/such/dir/m.onnx")),
    ]);
    assert!(e.contains("no/such/dir"), "{e}");
    let e = err(&["--checkpoint", s(&good), "--out", s(&outdir)]);
    assert!(e.contains("is a folder"), "{e}");
    assert!(leftovers(&outdir, &[]).is_empty(), "no partial or temporary file");

    // A bad --batch is refused by the parser, naming the flag.
    let e = err(&["--checkpoint", s(&good), "--out", s(&out), "--batch", "0"]);
    assert!(e.contains("--batch") && e.contains("dynamic"), "{e}");

    // A failed export leaves an earlier file of that name as it was.
    std::fs::write(&out, b"the previous export").unwrap();
    err(&["--checkpoint", s(&nan_path), "--out", s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous export");
    export(&["--checkpoint", s(&good), "--out", s(&out)]).unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"the previous export");
    assert!(leftovers(&outdir, &[&out]).is_empty(), "only the model is left");
}

/// The Python example in README.md is the tested file itself, word for word.
#[test]
fn readme_carries_the_tested_onnx_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("tests/onnx_example.py")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```python\n{example}```")),
        "README.md must show tests/onnx_example.py verbatim in a ```python block"
    );
}

/// One model to check in onnxruntime: its checkpoint, an input batch and cephalo's answer.
struct Case {
    name: String,
    checkpoint: Checkpoint,
}

fn f32_file(path: &Path, values: &[f32]) {
    std::fs::write(path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// NHWC (cephalo's activations) as NCHW (ONNX's).
fn nhwc_to_nchw(x: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    out
}

/// Exports each case (f32 with a fixed batch of 2, fp16 with a dynamic batch), runs cephalo's
/// CPU inference on two ISBI validation radiographs, and hands the files to
/// `tests/onnx_check.py`, which runs onnxruntime on them and compares. Needs a Python with onnx,
/// onnxruntime, numpy and Pillow, named by `CEPHALO_ONNX_PYTHON` (CI makes one: `.ci/run`).
#[test]
#[ignore = "needs onnxruntime: CEPHALO_ONNX_PYTHON=/path/to/python cargo test --test export_onnx -- --ignored"]
fn export_matches_cpu_inference_in_onnxruntime() {
    let python = std::env::var("CEPHALO_ONNX_PYTHON")
        .expect("set CEPHALO_ONNX_PYTHON to a Python with onnx, onnxruntime, numpy and Pillow (see .ci/run)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let isbi = root.join("../shared/data/isbi2015");
    let ds = Dataset::open(&isbi, &DatasetOptions::default()).expect("the ISBI 2015 data in ../shared/data");
    let samples = &ds.split(Split::Valid).unwrap()[..2];
    let refiner = random_refiner(13);
    let mut cases = vec![
        Case {
            name: "hrnet-w8".into(),
            checkpoint: random_checkpoint("hrnet-w8", [256, 224], 11),
        },
        Case {
            name: "resnet18".into(),
            checkpoint: random_checkpoint("resnet18", [256, 224], 12),
        },
        Case {
            name: "refiner".into(),
            checkpoint: refiner,
        },
        // Three input channels: the one case where cephalo's NHWC input and ONNX's NCHW differ.
        Case {
            name: "hrnet-w8-3-channels".into(),
            checkpoint: random_checkpoint_with_channels("hrnet-w8", 3, [64, 64], 14),
        },
    ];
    // Trained checkpoints to check as well, when there are some: CEPHALO_EXPORT_CHECKPOINTS=a:b.
    for path in std::env::var("CEPHALO_EXPORT_CHECKPOINTS")
        .unwrap_or_default()
        .split(':')
    {
        if !path.is_empty() {
            let checkpoint = checkpoint::load_for_inference(Path::new(path)).unwrap();
            let name = format!("trained-{}", cases.len() - 2);
            cases.push(Case { name, checkpoint });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut listed = Vec::new();
    for case in &cases {
        let base = dir.path().join(&case.name);
        let ck_path = base.with_extension("safetensors");
        checkpoint::save(&ck_path, &case.checkpoint).unwrap();
        let onnx = base.with_extension("onnx");
        let onnx16 = dir.path().join(format!("{}_fp16.onnx", case.name));
        export(&["--checkpoint", s(&ck_path), "--out", s(&onnx), "--batch", "2"]).unwrap();
        export(&[
            "--checkpoint",
            s(&ck_path),
            "--out",
            s(&onnx16),
            "--fp16",
            "--batch",
            "dynamic",
        ])
        .unwrap();

        // cephalo's own CPU inference on the letterboxed radiographs (a refiner's input is a
        // patch; the letterboxed film serves as well for comparing two runtimes).
        let [h, w] = case.checkpoint.meta.model.image_size;
        let size = ImageSize { height: h, width: w };
        let c = case.checkpoint.meta.model.in_channels;
        let per = h * w;
        let mut input = vec![0.0f32; 2 * per * c];
        let mut maps = Vec::new();
        for (slot, sample) in samples.iter().enumerate() {
            let image = load_gray(&sample.image_path).unwrap();
            let t = transform_sample(
                &image,
                &[],
                size,
                None::<(&AugmentConfig, &mut rand_chacha::ChaCha8Rng)>,
            );
            let mut plane = vec![0.0f32; per];
            normalize_into(&mut plane, &t.image.data);
            // Channel ch of pixel i (NHWC): the grey value, scaled and shifted by channel, so that
            // a channel-order mistake shows.
            for (i, &v) in plane.iter().enumerate() {
                for ch in 0..c {
                    input[(slot * per + i) * c + ch] = v * (1.0 - 0.4 * ch as f32) + 0.3 * ch as f32;
                }
            }
            maps.push(t.original_to_net.inverse());
        }
        let mut model = load_model(&ck_path, 2, Device::Cpu).unwrap();
        let heatmaps = model.exec.predict(&input).unwrap();
        let out = model.exec.graph().output_shape();
        let (hh, hw, k) = (out.h, out.w, out.c);
        let mut landmarks = Vec::new();
        let mut original = Vec::new();
        for (slot, map) in maps.iter().enumerate() {
            let sigma = case.checkpoint.meta.heatmap_sigma as f64;
            let peaks = decode_dark(&heatmaps[slot * hh * hw * k..][..hh * hw * k], hh, hw, k, sigma);
            landmarks.push(peaks.iter().map(|p| p.point).collect::<Vec<_>>());
            original.push(
                peaks
                    .iter()
                    .map(|p| map.apply(heatmap_to_image(p.point, case.checkpoint.meta.heatmap_stride)))
                    .collect::<Vec<_>>(),
            );
        }
        let input_path = base.with_extension("input.f32");
        let reference_path = base.with_extension("heatmaps.f32");
        f32_file(&input_path, &nhwc_to_nchw(&input, 2, h, w, c));
        f32_file(&reference_path, &nhwc_to_nchw(&heatmaps, 2, hh, hw, k));
        listed.push(serde_json::json!({
            "name": case.name,
            "onnx": onnx,
            "onnx_fp16": onnx16,
            "input": input_path,
            "input_shape": [2, c, h, w],
            "reference": reference_path,
            "reference_shape": [2, k, hh, hw],
            "sigma": case.checkpoint.meta.heatmap_sigma,
            "landmarks": landmarks,
            "images": samples.iter().map(|s| &s.image_path).collect::<Vec<_>>(),
            "original_landmarks": original,
        }));
    }
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec_pretty(&listed).unwrap()).unwrap();
    let status = std::process::Command::new(&python)
        .arg(root.join("tests/onnx_check.py"))
        .arg(&cases_path)
        .status()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        status.success(),
        "tests/onnx_check.py found differences (its output above)"
    );
}
