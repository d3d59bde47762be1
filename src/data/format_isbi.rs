//! The original ISBI 2015 challenge layout (docs/formats.md#isbi-2015):
//! `RawImage/{TrainingData,Test1Data,Test2Data}/<nnn>.bmp` and
//! `AnnotationsByMD/400_{senior,junior}/<nnn>.txt`, each txt holding 19 `x,y` lines (then
//! classification lines, ignored). 0.1 mm per pixel.
//!
//! Splits: train = TrainingData (001-150), test = Test1Data (151-300, the set papers report on,
//! and the `test` split of the shared CSV copy), valid = Test2Data (301-400).
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{
    file_id, find_child, image_size, list_images, mean_landmarks, Annotator, DatasetOptions, LandmarkSet, Problem,
    Sample, Scan, Split,
};

/// The challenge's stated resolution.
pub const ISBI_PIXEL_SIZE_MM: f64 = 0.1;

pub(crate) fn scan(root: &Path, opts: &DatasetOptions) -> anyhow::Result<Scan> {
    let set = LandmarkSet::isbi19();
    let raw = find_child(root, "RawImage").context("no RawImage folder")?;
    let ann = find_child(root, "AnnotationsByMD").context("no AnnotationsByMD folder")?;
    let annotator_dir = |word: &str| -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&ann)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .filter(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_lowercase()
                    .contains(word)
            })
            .collect();
        dirs.sort();
        dirs.into_iter().next()
    };
    let (senior, junior) = (annotator_dir("senior"), annotator_dir("junior"));
    let sources: Vec<PathBuf> = match (opts.annotator, senior, junior) {
        (Annotator::Mean, Some(s), Some(j)) => vec![s, j],
        (Annotator::Mean, Some(one), None) | (Annotator::Mean, None, Some(one)) => vec![one],
        (Annotator::Senior, Some(s), _) => vec![s],
        (Annotator::Junior, _, Some(j)) => vec![j],
        (chosen, _, _) => anyhow::bail!(
            "{}: no annotation folder for --annotator {chosen:?} (expected 400_senior / 400_junior)",
            ann.display()
        ),
    };
    let mut problems = Vec::new();
    let mut splits: [Option<Vec<Sample>>; 3] = Default::default();
    for (split, folder) in [
        (Split::Train, "TrainingData"),
        (Split::Test, "Test1Data"),
        (Split::Valid, "Test2Data"),
    ] {
        let Some(dir) = find_child(&raw, folder) else {
            continue;
        };
        let mut samples = Vec::new();
        for image_path in list_images(&dir)? {
            match read_sample(image_path, &set, &sources) {
                Ok(s) => samples.push(s),
                Err(p) => problems.push(p),
            }
        }
        splits[split as usize] = Some(samples);
    }
    Ok(Scan {
        landmarks: set,
        splits,
        problems,
    })
}

fn read_sample(image_path: PathBuf, set: &LandmarkSet, sources: &[PathBuf]) -> Result<Sample, Problem> {
    let id = file_id(&image_path);
    let landmarks = mean_landmarks(sources, set, |source| read_txt(&source.join(format!("{id}.txt")), set))?;
    let (width, height) = image_size(&image_path)?;
    Ok(Sample {
        id,
        image_path,
        landmarks,
        pixel_size_mm: ISBI_PIXEL_SIZE_MM,
        width,
        height,
        machine: None,
        cvm_stage: None,
    })
}

/// The first 19 lines `x,y` of an annotation file.
fn read_txt(file: &Path, set: &LandmarkSet) -> Result<Vec<[f64; 2]>, Problem> {
    let text = std::fs::read_to_string(file).map_err(|e| Problem::new(file, format!("cannot read annotation: {e}")))?;
    let mut lines = text.lines();
    let mut points = Vec::with_capacity(set.len());
    for (k, symbol) in set.symbols.iter().enumerate() {
        let line = lines.next().map(str::trim).unwrap_or("");
        let parsed = line
            .split_once(',')
            .and_then(|(x, y)| Some([x.trim().parse::<f64>().ok()?, y.trim().parse::<f64>().ok()?]));
        match parsed {
            Some(p) => points.push(p),
            None if line.is_empty() => {
                return Err(Problem::new(
                    file,
                    format!("line {}: landmark {symbol} is missing", k + 1),
                ))
            }
            None => {
                return Err(Problem::new(
                    file,
                    format!("line {}: landmark {symbol}: expected 'x,y', found '{line}'", k + 1),
                ))
            }
        }
    }
    Ok(points)
}
