//! `cephalo export`: a checkpoint (global model or refiner) as a standard ONNX file that
//! onnxruntime, OpenCV's DNN module or TensorRT run without cephalo.
//!
//! The model takes `image`, `N x C x H x W` f32, the letterboxed radiograph normalised as the
//! loader does (`(pixel / 255 - 0.5) / 0.25`), and returns `heatmaps`, `N x K x H/4 x W/4`
//! f32; its metadata says everything needed to decode them (see [`metadata`]). The graph is
//! cephalo's own inference graph ([`onnx`]).
//!
//! ONNX messages come from the `onnx-protobuf` crate: the ONNX schema compiled ahead of time by
//! rust-protobuf's pure-Rust code generator and shipped as source, so building needs neither
//! `protoc` nor a build script, and the encoding is rust-protobuf's, not ours.
pub mod onnx;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use protobuf::Message as _;

use crate::backend::ParamId;
use crate::checkpoint::{self, Checkpoint};
use crate::data::loader::{IMAGE_MEAN, IMAGE_STD};
use crate::graph::plan::{DtypeSizes, Mode, PlanOptions};
use crate::graph::Graph;

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A checkpoint written by `cephalo train` (a global model or a refiner).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The ONNX file to write (replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Store weights and compute in fp16 (input and output stay f32): half the file, for GPUs
    /// and TensorRT.
    #[arg(long)]
    pub fp16: bool,
    /// The batch dimension: a fixed number of images (what OpenCV and TensorRT engines prefer),
    /// or `dynamic` for any batch size chosen at run time.
    #[arg(long, default_value = "1", value_parser = parse_batch)]
    pub batch: Batch,
}

/// The batch dimension of the exported model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    Fixed(usize),
    Dynamic,
}

fn parse_batch(text: &str) -> Result<Batch, String> {
    if text.eq_ignore_ascii_case("dynamic") {
        return Ok(Batch::Dynamic);
    }
    crate::cli::positive_count(text)
        .map(Batch::Fixed)
        .map_err(|e| format!("{e}, or `dynamic`"))
}

pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    if args.out.is_dir() {
        bail!(
            "--out {} is a folder: give the path of the .onnx file to write",
            args.out.display()
        );
    }
    let ck = checkpoint::load_for_inference(&args.checkpoint)?;
    let (graph, model) =
        export(&ck, args.batch, args.fp16).with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    let bytes = model.write_to_bytes().context("encoding the ONNX model")?;
    checkpoint::write_atomically(&args.out, |file| Ok(file.write_all(&bytes)?))?;
    let input = graph.input_shape();
    let output = graph.output_shape();
    let batch = match args.batch {
        Batch::Fixed(n) => n.to_string(),
        Batch::Dynamic => onnx::DYNAMIC_BATCH.to_string(),
    };
    println!(
        "{} ({}{}) -> {}: {:.1} MB, {} ONNX nodes, opset {}; input `{}` {batch}x{}x{}x{} f32, output `{}` {batch}x{}x{}x{} f32",
        args.checkpoint.display(),
        ck.meta.model.model,
        if args.fp16 { ", fp16" } else { "" },
        args.out.display(),
        bytes.len() as f64 / 1e6,
        model.graph.node.len(),
        onnx::OPSET,
        onnx::INPUT_NAME,
        input.c,
        input.h,
        input.w,
        onnx::OUTPUT_NAME,
        output.c,
        output.h,
        output.w
    );
    Ok(ExitCode::SUCCESS)
}

/// The ONNX model of a loaded checkpoint, and the inference graph it was made from.
pub fn export(ck: &Checkpoint, batch: Batch, fp16: bool) -> Result<(Graph, ::onnx_protobuf::ModelProto)> {
    let mut config = ck.meta.model.clone();
    // A dynamic batch changes only the declared dimension: every other shape is the same.
    config.batch_size = match batch {
        Batch::Fixed(n) => n,
        Batch::Dynamic => 1,
    };
    // The graph the CPU and CUDA backends execute for inference, with their fusions.
    let graph = PlanOptions::new(Mode::Eval, DtypeSizes::F32).graph_for(config.build()?);
    ck.check_params(&graph)?;
    check_finite(ck, &graph)?;
    let weight = |id: ParamId| ck.tensors[&graph.params[id.0].name].data.as_slice();
    let options = onnx::OnnxOptions {
        fp16,
        dynamic_batch: batch == Batch::Dynamic,
        name: ck.meta.model.model.clone(),
        doc: doc_string(ck),
        metadata: metadata(ck),
    };
    let model = onnx::to_model(&graph, weight, &options)?;
    Ok((graph, model))
}

/// A model whose training diverged would export as NaN heatmaps: refuse it by name.
fn check_finite(ck: &Checkpoint, graph: &Graph) -> Result<()> {
    for p in &graph.params {
        if let Some(i) = ck.tensors[&p.name].data.iter().position(|v| !v.is_finite()) {
            bail!(
                "tensor {} holds a non-finite value ({} at index {i}): the training diverged; export an earlier checkpoint",
                p.name,
                ck.tensors[&p.name].data[i]
            );
        }
    }
    Ok(())
}

/// The model's `metadata_props`: what a program needs to feed the model and decode its output.
/// Lists are JSON, numbers plain decimals.
pub fn metadata(ck: &Checkpoint) -> Vec<(String, String)> {
    let m = &ck.meta;
    let json = |v: serde_json::Value| v.to_string();
    let mut props = vec![
        ("cephalo_version", env!("CARGO_PKG_VERSION").to_string()),
        ("model", m.model.model.clone()),
        (
            "stage",
            if m.refiner.is_some() { "refine" } else { "global" }.to_string(),
        ),
        ("landmarks", json(serde_json::json!(m.landmarks))),
        ("input_channels", m.model.in_channels.to_string()),
        ("input_size", json(serde_json::json!(m.model.image_size))),
        ("input_layout", "NCHW".to_string()),
        ("normalize_mean", IMAGE_MEAN.to_string()),
        ("normalize_std", IMAGE_STD.to_string()),
        (
            "preprocessing",
            format!(
                "grayscale, pixel values / 255, letterboxed into input_size (aspect ratio kept, centred, the rest 0), \
                 then (v - {IMAGE_MEAN}) / {IMAGE_STD}"
            ),
        ),
        ("heatmap_stride", m.heatmap_stride.to_string()),
        ("heatmap_sigma", m.heatmap_sigma.to_string()),
        (
            "decoding",
            "per channel: argmax, then one DARK Newton step on the log of the heatmap smoothed with a Gaussian of \
             heatmap_sigma; heatmap (x, y) -> input pixel ((x + 0.5) * stride - 0.5, (y + 0.5) * stride - 0.5), \
             pixel centres at integers"
                .to_string(),
        ),
    ];
    if let Some(spec) = &m.refiner {
        props.push(("refiner_patch", json(serde_json::json!(spec))));
    }
    props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn doc_string(ck: &Checkpoint) -> String {
    let m = &ck.meta;
    format!(
        "cephalo {} {}: {} landmark heatmaps at 1/{} of a {}x{} input{}, epoch {}",
        m.model.model,
        if m.refiner.is_some() {
            "refiner"
        } else {
            "landmark detector"
        },
        m.landmarks.len(),
        m.heatmap_stride,
        m.model.image_size[0],
        m.model.image_size[1],
        if m.refiner.is_some() { " patch" } else { "" },
        m.epoch
    )
}
