//! The networks: pure functions from a [`ModelConfig`] to a [`Graph`].
//!
//! | name (short)            | network                                          |
//! |-------------------------|--------------------------------------------------|
//! | `hrnet-w8`              | HRNetV2, width 8 (narrow: the CPU demo)          |
//! | `hrnet-w18`             | HRNetV2, width 18                                |
//! | `hrnet-w32` (`hrnet`)   | HRNetV2, width 32                                |
//! | `hrnet-w48`             | HRNetV2, width 48                                |
//! | `resnet18`, `resnet34`  | SimpleBaseline on ResNet-18/34 (BasicBlocks)     |
//! | `resnet50` (`resnet`)   | SimpleBaseline on ResNet-50 (Bottlenecks)        |
//!
//! Input: `in_channels` (1 for grayscale cephalograms, the default, or 3) at the image size;
//! output: one heatmap per landmark at 1/4 of the input.
pub mod conv_shapes;
pub mod hrnet;
pub mod resnet;
pub mod summary;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::backend::Shape4;
use crate::graph::{Graph, GraphBuilder, Init};

/// Every model name the program accepts, canonical names first.
pub const MODEL_NAMES: [&str; 9] = [
    "hrnet-w8",
    "hrnet-w18",
    "hrnet-w32",
    "hrnet-w48",
    "resnet18",
    "resnet34",
    "resnet50",
    "hrnet",
    "resnet",
];

/// The architecture of a model name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    HrNet { width: usize },
    ResNet(resnet::ResNetDepth),
}

/// Resolves a (possibly short) model name to its canonical name and architecture.
pub fn resolve(name: &str) -> Result<(&'static str, Arch)> {
    Ok(match name.to_ascii_lowercase().as_str() {
        // Narrow: for the CPU demo and quick experiments, not a published configuration.
        "hrnet-w8" => ("hrnet-w8", Arch::HrNet { width: 8 }),
        "hrnet-w18" => ("hrnet-w18", Arch::HrNet { width: 18 }),
        "hrnet-w32" | "hrnet" => ("hrnet-w32", Arch::HrNet { width: 32 }),
        "hrnet-w48" => ("hrnet-w48", Arch::HrNet { width: 48 }),
        "resnet18" => ("resnet18", Arch::ResNet(resnet::RESNET18)),
        "resnet34" => ("resnet34", Arch::ResNet(resnet::RESNET34)),
        "resnet50" | "resnet" => ("resnet50", Arch::ResNet(resnet::RESNET50)),
        _ => bail!("unknown model {name:?}: choose one of {}", MODEL_NAMES.join(", ")),
    })
}

/// Everything that fixes a network's graph. Serialised into checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Canonical model name (`hrnet-w32`, `resnet50`, ...).
    pub model: String,
    pub in_channels: usize,
    pub landmarks: usize,
    /// Input height and width in pixels.
    pub image_size: [usize; 2],
    pub batch_size: usize,
}

impl ModelConfig {
    /// A validated config; `model` may be a short name.
    pub fn new(
        model: &str,
        in_channels: usize,
        landmarks: usize,
        image_size: [usize; 2],
        batch_size: usize,
    ) -> Result<Self> {
        let (canonical, _) = resolve(model)?;
        if in_channels != 1 && in_channels != 3 {
            bail!("--in-channels must be 1 (grayscale) or 3, got {in_channels}");
        }
        if landmarks == 0 {
            bail!("--landmarks must be at least 1");
        }
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let [h, w] = image_size;
        // Both networks reach 1/32 of the input and come back to 1/4 by exact factors of 2.
        if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
            bail!("--image-size {h} {w}: both sides must be positive multiples of 32 (e.g. 768 768)");
        }
        Ok(Self {
            model: canonical.to_string(),
            in_channels,
            landmarks,
            image_size,
            batch_size,
        })
    }

    pub fn input_shape(&self) -> Shape4 {
        Shape4::new(
            self.batch_size,
            self.image_size[0],
            self.image_size[1],
            self.in_channels,
        )
    }

    /// Builds the graph.
    pub fn build(&self) -> Result<Graph> {
        let (_, arch) = resolve(&self.model)?;
        let (mut b, x) = GraphBuilder::new(self.input_shape(), Init::Normal { std: 0.001 });
        let y = match arch {
            Arch::HrNet { width } => hrnet::build(&mut b, x, width, self.landmarks),
            Arch::ResNet(depth) => resnet::build(&mut b, x, depth, self.landmarks),
        };
        Ok(b.finish(y))
    }

    /// Builds an HRNet of any width (tests use tiny widths such as 4).
    pub fn build_hrnet_width(&self, width: usize) -> Graph {
        let (mut b, x) = GraphBuilder::new(self.input_shape(), Init::Normal { std: 0.001 });
        let y = hrnet::build(&mut b, x, width, self.landmarks);
        b.finish(y)
    }
}

/// Name prefixes of the heatmap heads (everything else is backbone).
pub const HEAD_PREFIXES: [&str; 3] = ["head.", "deconv_layers.", "final_layer."];

/// Trainable parameters outside the head.
pub fn backbone_param_count(g: &Graph) -> usize {
    g.params
        .iter()
        .filter(|p| p.kind.trainable() && !HEAD_PREFIXES.iter().any(|h| p.name.starts_with(h)))
        .map(|p| p.len())
        .sum()
}
