//! `cephalo train` flags. The users' PyTorch spellings (`--dataset_path`, `--batch_size`,
//! `--image_size`, `--warmup_epochs`, `--mixed_precision`, `--loss adaptive_wing`) work unchanged.
use std::path::PathBuf;

use crate::data::cli::AugmentArgs;
use crate::data::Annotator;
use crate::device::DeviceArg;
use crate::train::loss::LossArgs;
use crate::train::schedule::ScheduleArgs;

/// Defaults of the flags that, given on a `--resume` command line, start a new schedule
/// (the users' fine-tuning recipe) instead of continuing the stored one.
pub const DEFAULT_EPOCHS: usize = 100;
pub const DEFAULT_LR: f64 = 5e-4;
pub const DEFAULT_BATCH_SIZE: usize = 4;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Dataset folder: Aariz, ISBI 2015 or landmark-CSV layout (detected).
    #[arg(long, alias = "dataset_path", required_unless_present = "demo")]
    pub dataset_path: Option<PathBuf>,
    /// Network: hrnet (= hrnet-w32), hrnet-w18, hrnet-w48, resnet (= resnet50), resnet18, resnet34,
    /// or the narrow hrnet-w8. A resumed run takes the network and image size from its checkpoint.
    #[arg(long, default_value = "hrnet")]
    pub model: String,
    /// Network input height and width (multiples of 32).
    #[arg(long, alias = "image_size", num_args = 2, value_names = ["H", "W"], default_values_t = [768, 768])]
    pub image_size: Vec<usize>,
    /// Images per training step [default: 4; a resumed run keeps its checkpoint's].
    #[arg(long, alias = "batch_size", value_parser = crate::cli::positive_count)]
    pub batch_size: Option<usize>,
    /// Epochs to train [default: 100].
    #[arg(long, value_parser = crate::cli::positive_count)]
    pub epochs: Option<usize>,
    /// Peak learning rate, reached at the end of warmup [default: 5e-4].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// AdamW weight decay (not applied to biases and BN parameters).
    #[arg(long, alias = "weight_decay", default_value_t = 1e-4, allow_negative_numbers = true)]
    pub weight_decay: f32,
    #[command(flatten)]
    pub loss: LossArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Continue from a checkpoint; with --lr, --warmup-epochs or --epochs it fine-tunes instead:
    /// the weights are kept and a new schedule starts.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start the backbone from ImageNet weights: a timm, mmpose (MSRA) or torchvision HRNet or
    /// ResNet file (safetensors, .pth or .bin) of the --model's size. Its RGB stem is folded to
    /// the grayscale input (kept as it is with --in-channels 3); the landmark head and the
    /// optimizer start fresh.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub pretrained: Option<PathBuf>,
    /// Input channels of the network: 1 (grayscale) or 3, the grey value repeated into each, so
    /// that a --pretrained RGB stem is kept as it is rather than folded [default: 1; a resumed run
    /// keeps its checkpoint's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub in_channels: Option<u8>,
    /// fp16 activations with fp32 master weights and loss scaling [default: on for CUDA; the CPU
    /// always trains in f32].
    #[arg(long, alias = "mixed_precision", num_args = 0..=1, default_missing_value = "true")]
    pub mixed_precision: Option<bool>,
    /// Where checkpoint_last and checkpoint_best are written (and read back by --resume).
    #[arg(long, alias = "checkpoint_dir", default_value = "checkpoints")]
    pub checkpoint_dir: PathBuf,
    /// TensorBoard event files and the per-epoch CSV go here.
    #[arg(long, alias = "log_dir", default_value = "logs")]
    pub log_dir: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// Seeds initialisation, shuffling and augmentation: the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads [default: cores - 1].
    #[arg(long)]
    pub workers: Option<usize>,
    /// GPU: record the forward and backward passes as CUDA graphs after the first step and replay
    /// them (one launch per pass instead of one per op). Experimental, off by default; a recording
    /// that fails falls back to launching op by op, with a warning.
    #[arg(long, alias = "cuda_graphs")]
    pub cuda_graphs: bool,
    /// Heatmap Gaussian sigma in heatmap pixels.
    #[arg(long, default_value_t = 2.0)]
    pub sigma: f64,
    /// Ground truth when a dataset has two annotators.
    #[arg(long, value_enum, default_value_t)]
    pub annotator: Annotator,
    #[command(flatten)]
    pub augment: AugmentArgs,
    #[command(flatten)]
    pub refine: crate::refine::args::RefineArgs,
    /// End this invocation after N epochs, leaving checkpoint_last to --resume later (for machines
    /// that can only train in sessions).
    #[arg(long, alias = "stop_after")]
    pub stop_after: Option<usize>,
    /// Acts as a Ctrl-C after this many steps of the run (for tests of the interrupt path: they
    /// cannot send a signal at a known step).
    #[arg(long, hide = true)]
    pub interrupt_after_step: Option<u64>,
    /// Train on generated phantom radiographs with a small model: shows training working in a
    /// few minutes on a CPU. The phantoms stay in <checkpoint-dir>/demo-phantoms.
    #[arg(long)]
    pub demo: bool,
}
