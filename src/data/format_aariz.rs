//! The Aariz layout (docs/formats.md#aariz):
//! `<split>/Cephalograms/<id>.<ext>`,
//! `<split>/Annotations/Cephalometric Landmarks/{Senior,Junior} Orthodontists/<id>.json`,
//! `<split>/Annotations/CVM Stages/<id>.json`, and `cephalogram_machine_mappings.csv` at the root
//! with each image's machine and pixel size. Folder names match in any letter case.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::{
    file_id, find_child, image_size, landmarks::known_symbols, list_images, mean_landmarks, Annotator, DatasetOptions,
    LandmarkSet, Problem, Sample, Scan, Split,
};

#[derive(Deserialize)]
struct LandmarkFile {
    landmarks: Vec<JsonLandmark>,
}

#[derive(Deserialize)]
struct JsonLandmark {
    symbol: String,
    value: JsonPoint,
}

#[derive(Deserialize)]
struct JsonPoint {
    x: f64,
    y: f64,
}

#[derive(Deserialize)]
struct CvmFile {
    cvm_stage: CvmStage,
}

#[derive(Deserialize)]
struct CvmStage {
    value: u8,
}

/// Machine name and pixel size of one cephalogram.
struct MachineInfo {
    machine: String,
    pixel_size_mm: f64,
}

pub(crate) fn scan(root: &Path, opts: &DatasetOptions) -> anyhow::Result<Scan> {
    let set = LandmarkSet::aariz29();
    let mut problems = Vec::new();
    let mappings = match find_child(root, "cephalogram_machine_mappings.csv") {
        Some(file) => read_mappings(&file, &mut problems)?,
        None => anyhow::bail!(
            "{}: no cephalogram_machine_mappings.csv; Aariz pixel sizes come from that file",
            root.display()
        ),
    };
    let mut splits: [Option<Vec<Sample>>; 3] = Default::default();
    for split in Split::ALL {
        let Some(dir) = find_child(root, split.name()) else {
            continue;
        };
        let samples = scan_split(&dir, &set, &mappings, opts, &mut problems)?;
        splits[split as usize] = Some(samples);
    }
    Ok(Scan {
        landmarks: set,
        splits,
        problems,
    })
}

/// Reads `cephalogram_machine_mappings.csv` (a UTF-8 BOM is allowed):
/// `cephalogram_id, machine, pixel_size, image_format, mode`.
fn read_mappings(file: &Path, problems: &mut Vec<Problem>) -> anyhow::Result<HashMap<String, MachineInfo>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot open {}", file.display()))?;
    let (mut reader, header) = super::csv_with_header(file, &bytes)?;
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').trim().eq_ignore_ascii_case(name))
            .with_context(|| format!("{}: no '{name}' column", file.display()))
    };
    let (id_col, machine_col, size_col) = (find("cephalogram_id")?, find("machine")?, find("pixel_size")?);
    let mut map = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem::new(file, format!("malformed CSV: {e}")));
                continue;
            }
        };
        let row = super::line_number(&bytes, record.position());
        let id = record.get(id_col).unwrap_or("").to_string();
        let size_text = record.get(size_col).unwrap_or("");
        match size_text.parse::<f64>() {
            Ok(pixel_size_mm) => {
                let machine = record.get(machine_col).unwrap_or("").to_string();
                map.insert(id, MachineInfo { machine, pixel_size_mm });
            }
            Err(_) => problems.push(Problem::new(
                file,
                format!("row {row} ({id}): pixel_size '{size_text}' is not a number"),
            )),
        }
    }
    Ok(map)
}

fn scan_split(
    dir: &Path,
    set: &LandmarkSet,
    mappings: &HashMap<String, MachineInfo>,
    opts: &DatasetOptions,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Vec<Sample>> {
    let images_dir =
        find_child(dir, "Cephalograms").with_context(|| format!("{}: no Cephalograms folder", dir.display()))?;
    let annotations =
        find_child(dir, "Annotations").with_context(|| format!("{}: no Annotations folder", dir.display()))?;
    let landmark_dir = find_child(&annotations, "Cephalometric Landmarks")
        .with_context(|| format!("{}: no 'Cephalometric Landmarks' folder", annotations.display()))?;
    let senior = find_child(&landmark_dir, "Senior Orthodontists");
    let junior = find_child(&landmark_dir, "Junior Orthodontists");
    // The annotator folders to read and average; a single existing folder is used as is.
    let sources: Vec<PathBuf> = match (opts.annotator, senior, junior) {
        (_, None, None) => anyhow::bail!(
            "{}: neither 'Senior Orthodontists' nor 'Junior Orthodontists' exists",
            landmark_dir.display()
        ),
        (Annotator::Mean, Some(s), Some(j)) => vec![s, j],
        (Annotator::Mean, Some(one), None) | (Annotator::Mean, None, Some(one)) => vec![one],
        (Annotator::Senior, Some(s), _) => vec![s],
        (Annotator::Junior, _, Some(j)) => vec![j],
        (chosen, _, _) => anyhow::bail!(
            "{}: --annotator {chosen:?} asked for a folder that does not exist; use --annotator mean \
             to take whichever annotator exists",
            landmark_dir.display()
        ),
    };
    let cvm_dir = find_child(&annotations, "CVM Stages");

    let images = list_images(&images_dir)?;
    let mut seen = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for image_path in images {
        let id = file_id(&image_path);
        seen.insert(id.clone());
        match read_sample(&id, image_path, set, &sources, cvm_dir.as_deref(), mappings) {
            Ok(sample) => samples.push(sample),
            Err(problem) => problems.push(problem),
        }
    }
    // An annotation whose image is missing is a problem too (a partial download, a typo).
    for source in &sources {
        let Ok(entries) = std::fs::read_dir(source) else {
            continue;
        };
        let mut orphans: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")))
            .filter(|p| !seen.contains(&*p.file_stem().unwrap_or_default().to_string_lossy()))
            .collect();
        orphans.sort();
        for orphan in orphans {
            problems.push(Problem::new(
                orphan,
                format!("annotation has no image in {}", images_dir.display()),
            ));
        }
    }
    Ok(samples)
}

fn read_sample(
    id: &str,
    image_path: PathBuf,
    set: &LandmarkSet,
    sources: &[PathBuf],
    cvm_dir: Option<&Path>,
    mappings: &HashMap<String, MachineInfo>,
) -> Result<Sample, Problem> {
    let landmarks = mean_landmarks(sources, set, |source| {
        read_landmark_file(&source.join(format!("{id}.json")), set)
    })?;
    let info = mappings.get(id).ok_or_else(|| {
        Problem::new(
            &image_path,
            format!("no pixel size: id {id} is not in cephalogram_machine_mappings.csv"),
        )
    })?;
    let cvm_stage = match cvm_dir.map(|d| d.join(format!("{id}.json"))) {
        Some(file) if file.is_file() => Some(read_cvm(&file)?),
        _ => None,
    };
    let (width, height) = image_size(&image_path)?;
    Ok(Sample {
        id: id.to_string(),
        image_path,
        landmarks,
        pixel_size_mm: info.pixel_size_mm,
        width,
        height,
        machine: Some(info.machine.clone()).filter(|m| !m.is_empty()),
        cvm_stage,
    })
}

/// One annotator's landmarks, matched to the set by symbol (not by position in the list).
fn read_landmark_file(file: &Path, set: &LandmarkSet) -> Result<Vec<[f64; 2]>, Problem> {
    let text = std::fs::read_to_string(file).map_err(|e| Problem::new(file, format!("cannot read annotation: {e}")))?;
    let parsed: LandmarkFile =
        serde_json::from_str(&text).map_err(|e| Problem::new(file, format!("malformed landmark JSON: {e}")))?;
    let mut points: Vec<Option<[f64; 2]>> = vec![None; set.len()];
    for lm in parsed.landmarks {
        let Some(k) = set.index_of(&lm.symbol) else {
            return Err(Problem::new(
                file,
                format!("unknown landmark symbol '{}'; known: {}", lm.symbol, known_symbols()),
            ));
        };
        if points[k].is_some() {
            return Err(Problem::new(file, format!("landmark {} appears twice", lm.symbol)));
        }
        points[k] = Some([lm.value.x, lm.value.y]);
    }
    points
        .iter()
        .enumerate()
        .map(|(k, p)| p.ok_or_else(|| Problem::new(file, format!("landmark {} is missing", set.symbols[k]))))
        .collect()
}

fn read_cvm(file: &Path) -> Result<u8, Problem> {
    let text = std::fs::read_to_string(file).map_err(|e| Problem::new(file, format!("cannot read CVM file: {e}")))?;
    let parsed: CvmFile =
        serde_json::from_str(&text).map_err(|e| Problem::new(file, format!("malformed CVM JSON: {e}")))?;
    Ok(parsed.cvm_stage.value)
}
