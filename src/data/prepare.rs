//! `cephalo prepare`: a downscaled copy of a dataset in the landmark CSV format. Decoding a
//! full-size radiograph costs tens of milliseconds; a copy at the training resolution decodes
//! several times faster and is small enough to carry to a GPU machine.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rayon::prelude::*;

use super::geometry::{warp, Affine, ImageSize};
use super::image_io::{load_gray, save_gray_atomic};
use super::landmarks::LandmarkSet;
use super::{Annotator, Dataset, DatasetOptions, Sample, Split};

#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// The dataset to copy (aariz, isbi or csv layout).
    #[arg(long)]
    pub dataset_path: PathBuf,
    /// Folder for the copy (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Longest image side in the copy, in pixels; smaller images keep their size.
    #[arg(long, default_value_t = 1024)]
    pub max_side: u32,
    /// Image format of the copy: jpg (quality 95, ~4x smaller) or png (lossless).
    #[arg(long, default_value = "jpg", value_parser = ["jpg", "png"])]
    pub image_format: String,
    /// Ground truth when a dataset has two annotators.
    #[arg(long, value_enum, default_value_t = Annotator::Mean)]
    pub annotator: Annotator,
}

pub fn run(args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    let dataset = Dataset::open(
        &args.dataset_path,
        &DatasetOptions {
            annotator: args.annotator,
        },
    )?;
    let summary = prepare_dataset(&dataset, &args.out, args.max_side, &args.image_format, true)?;
    println!(
        "prepared {} image(s) into {} ({} written, {} already done)",
        summary.written + summary.skipped,
        args.out.display(),
        summary.written,
        summary.skipped
    );
    Ok(ExitCode::SUCCESS)
}

/// One row of a landmark CSV.
pub struct CsvRow {
    /// Path relative to the CSV's folder.
    pub image: String,
    pub pixel_size_mm: f64,
    pub landmarks: Vec<[f64; 2]>,
    pub machine: Option<String>,
    pub cvm_stage: Option<u8>,
}

/// Writes a landmark CSV atomically; `machine` / `cvm_stage` columns appear when any row has one.
pub fn write_csv_atomic(path: &Path, set: &LandmarkSet, rows: &[CsvRow]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let with_machine = rows.iter().any(|r| r.machine.is_some());
    let with_cvm = rows.iter().any(|r| r.cvm_stage.is_some());
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(tmp.as_file()));
        let mut header = vec!["image".to_string(), "pixel_size_mm".to_string()];
        for s in &set.symbols {
            header.push(format!("{s}_x"));
            header.push(format!("{s}_y"));
        }
        if with_machine {
            header.push("machine".into());
        }
        if with_cvm {
            header.push("cvm_stage".into());
        }
        writer.write_record(&header)?;
        for row in rows {
            let mut record = vec![row.image.clone(), format!("{}", row.pixel_size_mm)];
            for p in &row.landmarks {
                record.push(format!("{:.3}", p[0]));
                record.push(format!("{:.3}", p[1]));
            }
            if with_machine {
                record.push(row.machine.clone().unwrap_or_default());
            }
            if with_cvm {
                record.push(row.cvm_stage.map(|c| c.to_string()).unwrap_or_default());
            }
            writer.write_record(&record)?;
        }
        writer.flush()?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What `prepare_dataset` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareSummary {
    pub written: usize,
    pub skipped: usize,
}

/// The size a `width` x `height` image gets with its longest side at most `max_side`.
pub fn target_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let scale = (max_side as f64 / width.max(height) as f64).min(1.0);
    let w = ((width as f64 * scale).round() as u32).max(1);
    let h = ((height as f64 * scale).round() as u32).max(1);
    (w, h)
}

/// The exact original -> copy map for a resize to `w` x `h` (pixel-centre convention).
pub fn resize_map(width: u32, height: u32, w: u32, h: u32) -> Affine {
    let (sx, sy) = (w as f64 / width as f64, h as f64 / height as f64);
    Affine([sx, 0.0, 0.5 * sx - 0.5, 0.0, sy, 0.5 * sy - 0.5])
}

/// Writes the downscaled copy: `images/<split>/<id>.<ext>` and `<split>.csv`. Images already
/// present with the right size are kept (they were written atomically), so a re-run resumes.
pub fn prepare_dataset(
    dataset: &Dataset,
    out: &Path,
    max_side: u32,
    image_format: &str,
    progress: bool,
) -> anyhow::Result<PrepareSummary> {
    anyhow::ensure!(max_side >= 16, "--max-side {max_side} is too small (at least 16)");
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let total: usize = Split::ALL
        .iter()
        .filter_map(|s| dataset.split(*s))
        .map(<[Sample]>::len)
        .sum();
    let bar = super::progress_bar(total, "preparing", progress);
    let mut summary = PrepareSummary { written: 0, skipped: 0 };
    for split in Split::ALL {
        let Some(samples) = dataset.split(split) else {
            continue;
        };
        let mut ids = std::collections::HashSet::new();
        if let Some(dup) = samples.iter().find(|s| !ids.insert(s.id.as_str())) {
            anyhow::bail!(
                "two images of the {split} split share the name '{}' (one is {}); rename one",
                dup.id,
                dup.image_path.display()
            );
        }
        let results: Vec<anyhow::Result<(CsvRow, bool)>> = samples
            .par_iter()
            .map(|sample| {
                let r = prepare_one(sample, out, split, max_side, image_format);
                bar.inc(1);
                r
            })
            .collect();
        let mut rows = Vec::with_capacity(samples.len());
        for r in results {
            let (row, written) = r?;
            if written {
                summary.written += 1;
            } else {
                summary.skipped += 1;
            }
            rows.push(row);
        }
        write_csv_atomic(&out.join(format!("{split}.csv")), dataset.landmarks(), &rows)?;
    }
    bar.finish_and_clear();
    Ok(summary)
}

fn prepare_one(
    sample: &Sample,
    out: &Path,
    split: Split,
    max_side: u32,
    image_format: &str,
) -> anyhow::Result<(CsvRow, bool)> {
    let (w, h) = target_size(sample.width, sample.height, max_side);
    let map = resize_map(sample.width, sample.height, w, h);
    let rel = format!("images/{split}/{}.{image_format}", sample.id);
    let dest = out.join(&rel);
    let done = image::image_dimensions(&dest).is_ok_and(|d| d == (w, h));
    if !done {
        let image = load_gray(&sample.image_path)?;
        anyhow::ensure!(
            (image.width(), image.height()) == (sample.width, sample.height),
            "{}: decoded size {}x{} differs from its header's {}x{}",
            sample.image_path.display(),
            image.width(),
            image.height(),
            sample.width,
            sample.height
        );
        let small = warp(
            &image,
            &map.inverse(),
            ImageSize {
                height: h as usize,
                width: w as usize,
            },
        );
        save_gray_atomic(&small.to_gray(), &dest)?;
    }
    let (sx, sy) = (map.0[0], map.0[4]);
    let row = CsvRow {
        image: rel,
        // Mean of the two axes' scales; they differ only by the rounding of the new size.
        pixel_size_mm: sample.pixel_size_mm / (sx * sy).sqrt(),
        landmarks: sample.landmarks.iter().map(|&p| map.apply(p)).collect(),
        machine: sample.machine.clone(),
        cvm_stage: sample.cvm_stage,
    };
    Ok((row, !done))
}
