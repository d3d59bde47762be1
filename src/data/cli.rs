//! The `cephalo data ...` commands.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::augment::AugmentConfig;
use super::{check::check_dataset, phantom, Annotator, DatasetOptions};

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Validate every sample of a dataset and summarise it; exit status 1 if anything is wrong.
    Check(CheckArgs),
    /// Generate procedural skull-like radiographs with landmarks (landmark CSV format).
    Phantom(PhantomArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The dataset folder (aariz, isbi or csv layout, detected).
    #[arg(long)]
    pub dataset_path: PathBuf,
    /// Ground truth when a dataset has two annotators.
    #[arg(long, value_enum, default_value_t = Annotator::Mean)]
    pub annotator: Annotator,
}

#[derive(Debug, clap::Args)]
pub struct PhantomArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (70 % train, 15 % valid, 15 % test).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 320)]
    pub height: usize,
}

pub fn run(args: &DataArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DataCommand::Check(a) => {
            let opts = DatasetOptions { annotator: a.annotator };
            let report = check_dataset(&a.dataset_path, &opts, true)?;
            print!("{}", report.render(&a.dataset_path));
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DataCommand::Phantom(a) => {
            phantom::write_dataset(&a.out, a.count, a.seed, a.width, a.height)?;
            println!("wrote {} phantom image(s) to {}", a.count, a.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Augmentation flags, for commands that train (`#[command(flatten)]`). Defaults are
/// [`AugmentConfig::default`]; `--no-augment` turns everything off.
#[derive(Debug, Clone, clap::Args)]
pub struct AugmentArgs {
    /// Train without augmentation (plain letterbox).
    #[arg(long)]
    pub no_augment: bool,
    /// Largest rotation, degrees (uniform in +-).
    #[arg(long, default_value_t = AugmentConfig::default().rotation_deg)]
    pub aug_rotation: f64,
    /// Largest relative scale change (uniform in 1 +- this).
    #[arg(long, default_value_t = AugmentConfig::default().scale)]
    pub aug_scale: f64,
    /// Largest shift as a fraction of the image size.
    #[arg(long, default_value_t = AugmentConfig::default().translate)]
    pub aug_translate: f64,
    /// Largest brightness change (image range 0..1).
    #[arg(long, default_value_t = AugmentConfig::default().brightness)]
    pub aug_brightness: f32,
    /// Largest relative contrast change.
    #[arg(long, default_value_t = AugmentConfig::default().contrast)]
    pub aug_contrast: f32,
    /// Largest gamma change (gamma in [1/(1+g), 1+g]).
    #[arg(long, default_value_t = AugmentConfig::default().gamma)]
    pub aug_gamma: f32,
    /// Largest Gaussian noise standard deviation (image range 0..1).
    #[arg(long, default_value_t = AugmentConfig::default().noise)]
    pub aug_noise: f32,
    /// Probability of a Gaussian blur (sigma up to 1 px).
    #[arg(long, default_value_t = AugmentConfig::default().blur_probability)]
    pub aug_blur: f32,
    /// Also flip horizontally half the time (off: cephalograms face one way).
    #[arg(long)]
    pub aug_hflip: bool,
}

impl AugmentArgs {
    /// The configuration, or `None` with `--no-augment`; rejects negative or absurd ranges.
    pub fn to_config(&self) -> anyhow::Result<Option<AugmentConfig>> {
        if self.no_augment {
            return Ok(None);
        }
        let check = |name: &str, v: f64, max: f64| {
            anyhow::ensure!((0.0..=max).contains(&v), "--{name} {v} must be between 0 and {max}");
            Ok(())
        };
        check("aug-rotation", self.aug_rotation, 180.0)?;
        check("aug-scale", self.aug_scale, 0.9)?;
        check("aug-translate", self.aug_translate, 0.5)?;
        check("aug-brightness", self.aug_brightness as f64, 1.0)?;
        check("aug-contrast", self.aug_contrast as f64, 0.9)?;
        check("aug-gamma", self.aug_gamma as f64, 4.0)?;
        check("aug-noise", self.aug_noise as f64, 1.0)?;
        check("aug-blur", self.aug_blur as f64, 1.0)?;
        Ok(Some(AugmentConfig {
            rotation_deg: self.aug_rotation,
            scale: self.aug_scale,
            translate: self.aug_translate,
            hflip: self.aug_hflip,
            brightness: self.aug_brightness,
            contrast: self.aug_contrast,
            gamma: self.aug_gamma,
            noise: self.aug_noise,
            blur_probability: self.aug_blur,
            ..AugmentConfig::default()
        }))
    }
}
