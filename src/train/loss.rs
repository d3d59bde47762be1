//! The training loss as the trainer sees it: which loss (`--loss`), whether the Adaptive Wing
//! weight map is on, and the per-landmark weights, dispatched to the backend's fused
//! loss-and-gradient op.
use anyhow::Result;

use crate::backend::cpu::loss::{awing_fwd_bwd, mse_fwd_bwd};
use crate::backend::cuda::loss::{DevHeatmapBatch, LossOutputs};
use crate::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use crate::gpu::{DevSlice, Gpu};
use crate::train::landmark_weights::LandmarkWeightsArg;

/// `--loss`: the users' names (`adaptive_wing`, `heatmap`) work unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum LossKind {
    /// Adaptive Wing loss (Wang et al., ICCV 2019): sharper heatmaps than MSE near the peak.
    #[default]
    #[value(alias = "adaptive_wing", alias = "awing")]
    AdaptiveWing,
    /// Mean squared error on the heatmaps (the users' older "heatmap" loss).
    #[value(alias = "mse")]
    Heatmap,
}

/// The loss flags, to be flattened into the train command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct LossArgs {
    /// Loss on the heatmaps.
    #[arg(long, value_enum, default_value_t = LossKind::AdaptiveWing)]
    pub loss: LossKind,
    /// Multiply the loss around each landmark (3x3-dilated target > 0.2) by 11, as in the
    /// Adaptive Wing paper; `--weight-map false` weighs all pixels alike.
    #[arg(long, alias = "weight_map", default_value_t = true, action = clap::ArgAction::Set)]
    pub weight_map: bool,
    /// Per-landmark loss weights: `none`, `difficult` (UMT/UPM 2.5, R 2.0, Ar/Go 1.8, LMT 1.6,
    /// LPM 1.4, Or 1.3, Co/PNS 1.2, others 1) or a JSON/CSV file of symbol → weight.
    #[arg(long, alias = "landmark_weights", default_value_t)]
    pub landmark_weights: LandmarkWeightsArg,
}

/// A resolved loss: kind, weight map and one weight per heatmap channel.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatmapLoss {
    pub kind: LossKind,
    pub awing: AWingParams,
    pub weight_map: Option<WeightMap>,
    pub channel_weights: Vec<f32>,
}

impl HeatmapLoss {
    /// Resolves the flags against the dataset's landmark symbols (channel order).
    pub fn from_args(args: &LossArgs, symbols: &[String]) -> Result<Self> {
        Ok(Self {
            kind: args.loss,
            awing: AWingParams::default(),
            weight_map: args.weight_map.then(WeightMap::default),
            channel_weights: args.landmark_weights.resolve(symbols)?,
        })
    }

    /// Mean loss over the batch; writes `d loss / d pred * grad_scale` into `grad` (CPU backend).
    pub fn fwd_bwd_cpu(
        &self,
        pred: &[f32],
        target: &[f32],
        shape: HeatmapShape,
        grad_scale: f32,
        grad: &mut [f32],
    ) -> f64 {
        let batch = HeatmapBatch { pred, target, shape };
        let weighting = LossWeighting {
            channel_weights: &self.channel_weights[..],
            weight_map: self.weight_map,
        };
        match self.kind {
            LossKind::AdaptiveWing => awing_fwd_bwd(batch, weighting, self.awing, grad_scale, grad),
            LossKind::Heatmap => mse_fwd_bwd(batch, weighting, grad_scale, grad),
        }
    }
}

impl HeatmapLoss {
    /// The same on the GPU: fp16 predictions, f32 targets, and `channel_weights` the device copy
    /// of `self.channel_weights`; the gradient (times `grad_scale`, the loss scale) goes to
    /// `out.grad` in fp16 and the mean loss stays on the device in `out.loss`.
    pub fn fwd_bwd_gpu(
        &self,
        gpu: &Gpu,
        batch: DevHeatmapBatch,
        channel_weights: DevSlice<f32>,
        grad_scale: f32,
        out: LossOutputs,
    ) -> Result<()> {
        use crate::backend::cuda::loss as gpu_loss;
        let weighting = LossWeighting {
            channel_weights,
            weight_map: self.weight_map,
        };
        match self.kind {
            LossKind::AdaptiveWing => gpu_loss::awing_fwd_bwd(gpu, batch, weighting, self.awing, grad_scale, out),
            LossKind::Heatmap => gpu_loss::mse_fwd_bwd(gpu, batch, weighting, grad_scale, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        loss: LossArgs,
    }

    #[test]
    fn users_spellings_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()));
        assert_eq!(parse(&[]).unwrap().loss.loss, LossKind::AdaptiveWing);
        assert_eq!(
            parse(&["--loss", "adaptive_wing"]).unwrap().loss.loss,
            LossKind::AdaptiveWing
        );
        assert_eq!(
            parse(&["--loss", "adaptive-wing"]).unwrap().loss.loss,
            LossKind::AdaptiveWing
        );
        assert_eq!(parse(&["--loss", "heatmap"]).unwrap().loss.loss, LossKind::Heatmap);
        assert!(parse(&["--loss", "focal"]).is_err());
        let cli = parse(&["--weight-map", "false", "--landmark-weights", "difficult"]).unwrap();
        assert!(!cli.loss.weight_map);
        assert_eq!(cli.loss.landmark_weights, LandmarkWeightsArg::Difficult);
    }

    #[test]
    fn dispatches_to_the_chosen_loss_with_resolved_weights() {
        let symbols: Vec<String> = ["S", "UMT"].iter().map(|s| s.to_string()).collect();
        let cli = Cli::parse_from(["x", "--loss", "heatmap", "--landmark-weights", "difficult"]);
        let loss = HeatmapLoss::from_args(&cli.loss, &symbols).unwrap();
        assert_eq!(loss.channel_weights, [1.0, 2.5]);
        let shape = HeatmapShape { n: 1, h: 1, w: 1, k: 2 };
        let mut grad = [0.0; 2];
        // Target 0 everywhere: no weight map region, so 0.5 * (1 * 0.25 + 2.5 * 0.25).
        let value = loss.fwd_bwd_cpu(&[0.5, 0.5], &[0.0, 0.0], shape, 1.0, &mut grad);
        assert!((value - 0.4375).abs() < 1e-9);
        assert_eq!(grad, [0.5, 1.25]);
    }
}
