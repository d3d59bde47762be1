//! `cephalo predict`: landmarks for new radiographs (no ground truth needed).
//!
//! For every image: an Aariz-schema JSON (`ceph_id`, `landmarks` with `symbol`, `title`,
//! `value {x, y}` in original pixels, plus a confidence per landmark and the cephalometric
//! analysis), an overlay PNG, and one CSV for all images in the landmark-CSV format. Unreadable
//! images are reported by name and skipped; the exit status is 1 if any was. Images go through the
//! training code's letterbox geometry and DARK decoding.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::augment::{transform_sample, AugmentConfig};
use crate::data::geometry::ImageSize;
use crate::data::heatmap::{decode_dark, heatmap_to_image};
use crate::data::image_io::load_gray;
use crate::data::landmarks::aariz_title;
use crate::data::loader::normalize_into;
use crate::data::{Sample, MIN_IMAGE_SIDE};
use crate::device::DeviceArg;
use crate::eval::command::{inference_device, load_model, write_json_atomic};
use crate::eval::inference::PredictedImage;
use crate::predict::analysis::{analyse, flag_doubtful, Measurement, Points};
use crate::predict::overlay::{self, OverlayInput};
use crate::refine::infer::{unannotated_sample, Refiner};

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];
/// Marks an output folder as ours, with the checkpoint that wrote it.
const MANIFEST: &str = "cephalo-predict.json";

#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// A checkpoint written by `cephalo train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images, or folders of images (png, jpg, bmp, tif).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for the JSON files, overlays and predictions.csv.
    #[arg(long, default_value = "predictions")]
    pub out: PathBuf,
    /// Millimetres per pixel of the images: enables distances (lips to E-line) and is written to
    /// the CSV.
    #[arg(long, alias = "pixel_size")]
    pub pixel_size: Option<f64>,
    /// Landmarks whose heatmap peak is below this are flagged as doubtful.
    #[arg(long, default_value_t = 0.3)]
    pub min_confidence: f32,
    /// Skip the overlay pictures.
    #[arg(long)]
    pub no_overlay: bool,
    /// Replace the results of a different run in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Images per forward pass.
    #[arg(long, alias = "batch_size", default_value_t = 4, value_parser = crate::cli::positive_count)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// A refiner (`cephalo train --stage refine`): refine every landmark on a patch of the
    /// original image; confidences (and doubtful flags) are then the refiner's. Without
    /// --pixel-size the images are taken to have the refiner's training pixel size.
    #[arg(long)]
    pub refiner: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    checkpoint: String,
    checkpoint_bytes: u64,
}

#[derive(Serialize)]
struct LandmarkJson<'a> {
    symbol: &'a str,
    title: &'a str,
    value: PointJson,
    confidence: f32,
    /// Low confidence, or outside the image.
    doubtful: bool,
    outside_image: bool,
}

#[derive(Serialize)]
struct PointJson {
    x: f64,
    y: f64,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    ceph_id: &'a str,
    image: String,
    pixel_size_mm: Option<f64>,
    landmarks: Vec<LandmarkJson<'a>>,
    analysis: &'a [Measurement],
}

/// One image's result.
struct Predicted {
    path: PathBuf,
    points: Vec<[f64; 2]>,
    confidence: Vec<f32>,
    /// Per landmark: outside the image (the pixel-centre convention: [-0.5, size - 0.5]).
    outside: Vec<bool>,
    /// Per landmark: below --min-confidence or outside the image.
    doubtful: Vec<bool>,
}

pub fn run(args: &PredictArgs) -> Result<ExitCode> {
    let device = inference_device(args.device)?;
    if let Some(mm) = args.pixel_size {
        if !(mm.is_finite() && mm > 0.0 && mm < 5.0) {
            bail!("--pixel-size {mm}: expected millimetres per pixel, e.g. 0.1");
        }
    }
    let images = collect_images(&args.inputs)?;
    // Refuse a bad --out first (cheap), but write nothing into it before the checkpoint loads:
    // a failed run must not leave a manifest that makes the next, correct run refuse the folder.
    let manifest = check_out_dir(&args.out, &args.checkpoint, args.overwrite)?;
    let mut model = load_model(&args.checkpoint, args.batch_size, device)?;
    crate::refine::infer::require_global(&model.meta, &args.checkpoint, "--checkpoint")?;
    let mut refiner = match &args.refiner {
        Some(path) => {
            let r = Refiner::load(path, &model.meta, &args.checkpoint, args.batch_size, device)?;
            if args.pixel_size.is_none() {
                eprintln!(
                    "note: no --pixel-size: the patches assume the refiner's training pixel size, {} mm",
                    r.spec.train_pixel_mm
                );
            }
            Some(r)
        }
        None => None,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    crate::checkpoint::remove_stale_temporaries(&args.out);
    write_json_atomic(&args.out.join(MANIFEST), &manifest)?;
    let symbols = model.meta.landmarks.clone();
    let size = ImageSize {
        height: model.meta.model.image_size[0],
        width: model.meta.model.image_size[1],
    };
    let out_shape = model.exec.graph().output_shape();
    let (h, w, k, n) = (out_shape.h, out_shape.w, out_shape.c, out_shape.n);
    let stride = size.height / h;
    let per_in = size.height * size.width * model.meta.model.in_channels;

    let bar = ProgressBar::new(images.len() as u64).with_style(
        ProgressStyle::with_template("predict {bar:30} {pos}/{len} [{elapsed}<{eta}]").expect("valid template"),
    );
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for chunk in images.chunks(n) {
        // Decode and letterbox in parallel; an unreadable image is reported and skipped.
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|path| {
                let image = load_gray(path)?;
                if image.width().min(image.height()) < MIN_IMAGE_SIDE {
                    bail!(
                        "{} is {}x{} pixels: too small for a radiograph (at least {MIN_IMAGE_SIDE} a side)",
                        path.display(),
                        image.width(),
                        image.height()
                    );
                }
                let t = transform_sample(&image, &[], size, None::<(&AugmentConfig, &mut ChaCha8Rng)>);
                Ok((path.clone(), image, t))
            })
            .collect();
        let mut ok = Vec::new();
        for (path, result) in chunk.iter().zip(prepared) {
            match result {
                Ok(item) => ok.push(item),
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped {}: {e:#}", path.display()));
                    failed.push(path.clone());
                }
            }
        }
        if ok.is_empty() {
            bar.inc(chunk.len() as u64);
            continue;
        }
        let mut input = vec![0.0f32; n * per_in];
        for (slot, (_, _, t)) in ok.iter().enumerate() {
            normalize_into(&mut input[slot * per_in..(slot + 1) * per_in], &t.image.data);
        }
        let heatmaps = model.exec.predict(&input)?;
        let mut global = Vec::with_capacity(ok.len());
        for (slot, (_, _, t)) in ok.iter().enumerate() {
            let maps = &heatmaps[slot * h * w * k..(slot + 1) * h * w * k];
            let peaks = decode_dark(maps, h, w, k, model.meta.heatmap_sigma as f64);
            let net_to_original = t.original_to_net.inverse();
            global.push(PredictedImage {
                index: slot,
                points: peaks
                    .iter()
                    .map(|p| net_to_original.apply(heatmap_to_image(p.point, stride)))
                    .collect(),
                confidence: peaks.iter().map(|p| p.value).collect(),
            });
        }
        if let Some(r) = &mut refiner {
            let pixel_mm = args.pixel_size.unwrap_or(r.spec.train_pixel_mm);
            let samples: Vec<Sample> = ok
                .iter()
                .map(|(path, image, _)| unannotated_sample(path, image, pixel_mm))
                .collect();
            global = r.refine(&samples, &global, 0)?;
        }
        for ((path, image, _), p) in ok.into_iter().zip(global) {
            let (iw, ih) = (image.width() as f64, image.height() as f64);
            let outside: Vec<bool> = p
                .points
                .iter()
                .map(|q| !(q[0] >= -0.5 && q[0] <= iw - 0.5 && q[1] >= -0.5 && q[1] <= ih - 0.5))
                .collect();
            let doubtful = p
                .confidence
                .iter()
                .zip(&outside)
                .map(|(&c, &out)| out || c < args.min_confidence)
                .collect();
            let result = Predicted {
                path,
                points: p.points,
                confidence: p.confidence,
                outside,
                doubtful,
            };
            write_outputs(args, &symbols, &result, &image)?;
            rows.push(result);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_csv(&args.out.join("predictions.csv"), &symbols, &rows, args.pixel_size)?;
    println!("{} image(s) predicted into {}", rows.len(), args.out.display());
    if !failed.is_empty() {
        eprintln!("{} image(s) could not be read: {}", failed.len(), list(&failed));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Files as given, folders expanded to their images (sorted, not recursive).
fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("listing {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            if found.is_empty() {
                bail!("{} holds no images ({})", input.display(), IMAGE_EXTENSIONS.join(", "));
            }
            found.sort();
            images.extend(found);
        } else if input.exists() {
            images.push(input.clone());
        } else {
            bail!("{} does not exist", input.display());
        }
    }
    Ok(images)
}

/// Accepts `out` when it does not exist, is empty or holds an earlier run of the same checkpoint;
/// anything else needs --overwrite, so one run never silently replaces another's results.
/// Returns the manifest to write once the inputs are known to be good.
fn check_out_dir(out: &Path, checkpoint: &Path, overwrite: bool) -> Result<Manifest> {
    let bytes = std::fs::metadata(checkpoint)
        .with_context(|| format!("reading checkpoint {}", checkpoint.display()))?
        .len();
    let ours = Manifest {
        checkpoint: checkpoint.display().to_string(),
        checkpoint_bytes: bytes,
    };
    if out.exists() && !overwrite {
        let manifest = out.join(MANIFEST);
        let previous: Option<Manifest> = std::fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .next()
            .is_none();
        match previous {
            Some(p) if p == ours => {}
            Some(p) => bail!(
                "{} holds predictions of another checkpoint ({}): choose another --out or pass --overwrite",
                out.display(),
                p.checkpoint
            ),
            None if empty => {}
            None => bail!(
                "{} exists and is not a cephalo predict folder: choose another --out or pass --overwrite",
                out.display()
            ),
        }
    }
    Ok(ours)
}

fn write_outputs(args: &PredictArgs, symbols: &[String], p: &Predicted, image: &image::GrayImage) -> Result<()> {
    let stem = p
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string();
    let mut measurements = analyse(
        &Points {
            symbols,
            points: &p.points,
        },
        args.pixel_size,
    );
    flag_doubtful(&mut measurements, |s| {
        symbols.iter().position(|x| x == s).is_some_and(|i| p.doubtful[i])
    });
    let landmarks = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| LandmarkJson {
            symbol: s,
            title: aariz_title(s).unwrap_or(s),
            value: PointJson {
                x: p.points[i][0],
                y: p.points[i][1],
            },
            confidence: p.confidence[i],
            doubtful: p.doubtful[i],
            outside_image: p.outside[i],
        })
        .collect();
    let json = ImageJson {
        ceph_id: &stem,
        image: p.path.display().to_string(),
        pixel_size_mm: args.pixel_size,
        landmarks,
        analysis: &measurements,
    };
    write_json_atomic(&args.out.join(format!("{stem}.json")), &json)?;
    if !args.no_overlay {
        let picture = overlay::draw(&OverlayInput {
            image,
            symbols,
            points: &p.points,
            doubtful: &p.doubtful,
            measurements: &measurements,
        });
        let path = args.out.join(format!("{stem}_overlay.png"));
        let tmp = args.out.join(format!(".{stem}_overlay.png.tmp"));
        picture
            .save_with_format(&tmp, image::ImageFormat::Png)
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    print_analysis(&stem, &measurements);
    Ok(())
}

fn print_analysis(stem: &str, measurements: &[Measurement]) {
    if measurements.is_empty() {
        return;
    }
    let parts: Vec<String> = measurements
        .iter()
        .map(|m| {
            let note = m.note().map(|n| format!(" ({n})")).unwrap_or_default();
            format!("{} {:.1} {}{note}", m.name, m.value, m.unit)
        })
        .collect();
    println!("{stem}: {}", parts.join(", "));
}

/// The landmark-CSV format, so predictions can be read back as a dataset, plus a
/// `doubtful_landmarks` column (space-separated symbols; readers of the format ignore it).
fn write_csv(path: &Path, symbols: &[String], rows: &[Predicted], pixel_size: Option<f64>) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["image".to_string(), "pixel_size_mm".to_string()];
    for s in symbols {
        header.push(format!("{s}_x"));
        header.push(format!("{s}_y"));
    }
    header.push("doubtful_landmarks".to_string());
    w.write_record(&header)?;
    for r in rows {
        let mut record = vec![
            r.path.display().to_string(),
            pixel_size.map(|p| p.to_string()).unwrap_or_default(),
        ];
        for p in &r.points {
            record.push(format!("{:.2}", p[0]));
            record.push(format!("{:.2}", p[1]));
        }
        let doubtful: Vec<&str> = symbols
            .iter()
            .zip(&r.doubtful)
            .filter(|(_, &d)| d)
            .map(|(s, _)| s.as_str())
            .collect();
        record.push(doubtful.join(" "));
        w.write_record(&record)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    crate::checkpoint::write_atomically(path, |f| Ok(std::io::Write::write_all(f, &bytes)?))
}
