//! The landmark CSV format (docs/formats.md#landmark-csv): `train.csv`, `valid.csv`, `test.csv`,
//! each with the header `image,pixel_size_mm,<SYM>_x,<SYM>_y,...`; image paths relative to the
//! CSV's folder. Optional `machine` and `cvm_stage` columns become sample metadata; other columns
//! are ignored.
use std::path::Path;

use anyhow::Context;

use super::{image_size, LandmarkSet, Problem, Sample, Scan, Split};

/// Where each needed value sits in a row.
struct Columns {
    image: usize,
    pixel_size: usize,
    /// (x column, y column) per landmark of the set.
    coords: Vec<(usize, usize)>,
    machine: Option<usize>,
    cvm_stage: Option<usize>,
}

pub(crate) fn scan(root: &Path) -> anyhow::Result<Scan> {
    let mut landmarks: Option<(LandmarkSet, std::path::PathBuf)> = None;
    let mut splits: [Option<Vec<Sample>>; 3] = Default::default();
    let mut problems = Vec::new();
    for split in Split::ALL {
        let file = root.join(format!("{split}.csv"));
        if !file.is_file() {
            continue;
        }
        let bytes = std::fs::read(&file).with_context(|| format!("cannot open {}", file.display()))?;
        let (mut reader, header) = super::csv_with_header(&file, &bytes)?;
        let (set, columns) = parse_header(&header).with_context(|| format!("{}: bad header", file.display()))?;
        match &landmarks {
            None => landmarks = Some((set.clone(), file.clone())),
            Some((first, first_file)) if *first != set => anyhow::bail!(
                "{} has landmarks [{}] but {} has [{}]; all splits must share one landmark list",
                file.display(),
                set.symbols.join(", "),
                first_file.display(),
                first.symbols.join(", ")
            ),
            Some(_) => {}
        }
        let mut samples = Vec::new();
        for record in reader.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    let row = super::line_number(&bytes, e.position());
                    problems.push(Problem::new(&file, format!("row {row}: malformed CSV: {e}")));
                    continue;
                }
            };
            let row = super::line_number(&bytes, record.position());
            match parse_row(root, &record, &columns, &set) {
                Ok(sample) => samples.push(sample),
                Err(message) => problems.push(Problem::new(&file, format!("row {row}: {message}"))),
            }
        }
        splits[split as usize] = Some(samples);
    }
    let landmarks = landmarks.map(|(set, _)| set).context("no CSV files")?;
    Ok(Scan {
        landmarks,
        splits,
        problems,
    })
}

/// Reads the landmark list from `<SYM>_x,<SYM>_y` column pairs, in the order they appear.
fn parse_header(header: &csv::StringRecord) -> anyhow::Result<(LandmarkSet, Columns)> {
    let names: Vec<&str> = header.iter().map(|h| h.trim_start_matches('\u{feff}')).collect();
    let find = |name: &str| names.iter().position(|n| *n == name);
    let image = find("image").context("no 'image' column")?;
    let pixel_size = find("pixel_size_mm").context("no 'pixel_size_mm' column")?;
    let mut symbols = Vec::new();
    let mut coords = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(symbol) = name.strip_suffix("_x") {
            let y = find(&format!("{symbol}_y"))
                .with_context(|| format!("column '{name}' has no matching '{symbol}_y'"))?;
            symbols.push(symbol.to_string());
            coords.push((i, y));
        } else if let Some(symbol) = name.strip_suffix("_y") {
            anyhow::ensure!(
                find(&format!("{symbol}_x")).is_some(),
                "column '{name}' has no matching '{symbol}_x'"
            );
        }
    }
    anyhow::ensure!(!symbols.is_empty(), "no landmark columns (<SYM>_x, <SYM>_y)");
    let set = LandmarkSet::from_symbols(&symbols)?;
    let columns = Columns {
        image,
        pixel_size,
        coords,
        machine: find("machine"),
        cvm_stage: find("cvm_stage"),
    };
    Ok((set, columns))
}

fn parse_row(root: &Path, record: &csv::StringRecord, columns: &Columns, set: &LandmarkSet) -> Result<Sample, String> {
    let field = |i: usize, what: &str| -> Result<&str, String> {
        match record.get(i) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("missing value for {what}")),
        }
    };
    let number = |i: usize, what: &str| -> Result<f64, String> {
        let text = field(i, what)?;
        text.parse::<f64>()
            .map_err(|_| format!("{what}: '{text}' is not a number"))
    };
    let rel = field(columns.image, "image")?;
    let image_path = root.join(rel);
    let pixel_size_mm = number(columns.pixel_size, "pixel_size_mm")?;
    let mut landmarks = Vec::with_capacity(set.len());
    for (k, &(cx, cy)) in columns.coords.iter().enumerate() {
        let symbol = &set.symbols[k];
        let x = number(cx, &format!("landmark {symbol} ({symbol}_x)"))?;
        let y = number(cy, &format!("landmark {symbol} ({symbol}_y)"))?;
        landmarks.push([x, y]);
    }
    let machine = columns
        .machine
        .and_then(|i| record.get(i))
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let cvm_stage = match columns.cvm_stage.and_then(|i| record.get(i)).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<u8>().map_err(|_| format!("cvm_stage: '{v}' is not 1..6"))?),
    };
    let (width, height) = image_size(&image_path).map_err(|p| format!("{}: {}", p.file.display(), p.message))?;
    let id = Path::new(rel)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| rel.to_string());
    Ok(Sample {
        id,
        image_path,
        landmarks,
        pixel_size_mm,
        width,
        height,
        machine,
        cvm_stage,
    })
}
