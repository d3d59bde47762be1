//! `cephalo model summary`: layers, parameters, multiply-accumulates and the memory planner's
//! activation peaks, without running anything. Also dispatches `cephalo model conv-shapes`
//! ([`crate::model::conv_shapes`]).
use std::process::ExitCode;

use anyhow::Result;

use crate::graph::plan::{plan, DtypeSizes, Mode, PlanOptions};
use crate::graph::Graph;
use crate::model::conv_shapes::{conv_shapes, conv_shapes_table};
use crate::model::{backbone_param_count, ModelConfig};

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Print layers, parameter count, multiply-accumulates and planned activation memory.
    Summary(SummaryArgs),
    /// List every distinct convolution (shape, count, multiply-accumulates); --json for scripts.
    ConvShapes(ConvShapesArgs),
}

/// The flags that fix a network's graph, shared by the `model` subcommands.
#[derive(Debug, clap::Args)]
pub struct NetworkArgs {
    /// hrnet-w18, hrnet-w32 (hrnet), hrnet-w48, resnet18, resnet34, resnet50 (resnet).
    #[arg(long, default_value = "hrnet-w32")]
    pub model: String,
    /// Input height and width in pixels (multiples of 32).
    #[arg(long, num_args = 2, value_names = ["H", "W"], default_values_t = [768, 768])]
    pub image_size: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Number of landmarks (output heatmaps); Aariz has 29, ISBI 2015 has 19.
    #[arg(long, default_value_t = 29)]
    pub landmarks: usize,
    /// 1 for grayscale input, 3 for RGB (ImageNet-style) input.
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
}

impl NetworkArgs {
    /// The validated config (clear errors for a bad model name or image size).
    pub fn config(&self) -> Result<ModelConfig> {
        ModelConfig::new(
            &self.model,
            self.in_channels,
            self.landmarks,
            [self.image_size[0], self.image_size[1]],
            self.batch_size,
        )
    }
}

#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub net: NetworkArgs,
    /// List every layer instead of one line per top-level block.
    #[arg(long)]
    pub layers: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConvShapesArgs {
    #[command(flatten)]
    pub net: NetworkArgs,
    /// Print a JSON list (the input of benches/cudnn_reference.py) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ModelArgs) -> Result<ExitCode> {
    match &args.command {
        ModelCommand::Summary(a) => {
            let cfg = a.net.config()?;
            let g = cfg.build()?;
            print!("{}", summary(&cfg, &g, a.layers));
        }
        ModelCommand::ConvShapes(a) => {
            let cfg = a.net.config()?;
            let shapes = conv_shapes(&cfg.build()?);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&shapes)?);
            } else {
                println!(
                    "model {}  input {}x{}x{} (NHWC, batch {})  landmarks {}",
                    cfg.model, cfg.image_size[0], cfg.image_size[1], cfg.in_channels, cfg.batch_size, cfg.landmarks
                );
                print!("{}", conv_shapes_table(&shapes));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The summary text: a table of layers (or top-level blocks) and the totals.
pub fn summary(cfg: &ModelConfig, g: &Graph, every_layer: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {}  input {}x{}x{} (NHWC, batch {})  landmarks {}",
        cfg.model, cfg.image_size[0], cfg.image_size[1], cfg.in_channels, cfg.batch_size, cfg.landmarks
    );
    let _ = writeln!(
        out,
        "{:<44} {:<18} {:>16} {:>12} {:>16}",
        "layer", "op", "output (NHWC)", "params", "MACs"
    );
    // Rows: every layer, or the layers grouped by their first name component.
    let mut rows: Vec<(String, String, String, usize, u64)> = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let (params, macs) = (g.node_params(i), g.node_macs(i));
        if every_layer {
            rows.push((
                node.name.clone(),
                node.op.kind().to_string(),
                node.shape.to_string(),
                params,
                macs,
            ));
            continue;
        }
        let group = node.name.split('.').next().unwrap_or_default().to_string();
        match rows.last_mut() {
            Some(r) if r.0 == group => {
                r.1 = "block".into();
                r.2 = node.shape.to_string();
                r.3 += params;
                r.4 += macs;
            }
            _ => rows.push((group, node.op.kind().to_string(), node.shape.to_string(), params, macs)),
        }
    }
    for (name, kind, shape, params, macs) in rows {
        let _ = writeln!(out, "{name:<44} {kind:<18} {shape:>16} {params:>12} {macs:>16}");
    }
    let macs = g.macs();
    let _ = writeln!(out, "layers (graph nodes): {}", g.nodes.len());
    let _ = writeln!(
        out,
        "parameters: {} (backbone {})",
        g.param_count(),
        backbone_param_count(g)
    );
    let _ = writeln!(
        out,
        "multiply-accumulates: {:.2} G per batch, {:.2} G per image",
        macs as f64 / 1e9,
        macs as f64 / 1e9 / cfg.batch_size as f64
    );
    // Each plan is of the graph its executor runs (`PlanOptions::graph_for`): the training fusions,
    // or batch norms folded into the convolutions for inference. The fusions do not depend on the
    // element size, so each graph is made once.
    let train_graph = PlanOptions::new(Mode::Train, DtypeSizes::F16).graph_for(g.clone());
    let eval_graph = PlanOptions::new(Mode::Eval, DtypeSizes::F16).graph_for(g.clone());
    for (label, dtypes) in [
        ("fp16 activations (GPU)", DtypeSizes::F16),
        ("f32 activations (CPU)", DtypeSizes::F32),
    ] {
        let train = plan(&train_graph, PlanOptions::new(Mode::Train, dtypes));
        let eval = plan(&eval_graph, PlanOptions::new(Mode::Eval, dtypes));
        let _ = writeln!(
            out,
            "activation arena, {label}: training {} (live peak {}), inference {} (live peak {})",
            mib(train.arena_bytes),
            mib(train.live_peak_bytes),
            mib(eval.arena_bytes),
            mib(eval.live_peak_bytes)
        );
    }
    out
}
