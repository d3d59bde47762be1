//! The data pipeline: landmark sets, dataset formats (Aariz, ISBI 2015, landmark CSV), image
//! decoding, exact geometry, augmentation, heatmap targets and decoding, the threaded loader, the
//! `prepare` downscaler and the phantom generator.
//!
//! Everything downstream works on [`Sample`]s: an image path, its landmarks in original-image
//! pixels (x = column, y = row, pixel centres at integer coordinates) and its pixel size.
pub mod augment;
pub mod check;
pub mod cli;
mod format_aariz;
mod format_csv;
mod format_isbi;
pub mod geometry;
pub mod heatmap;
pub mod image_io;
pub mod landmarks;
pub mod loader;
pub mod phantom;
pub mod prepare;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use landmarks::LandmarkSet;

/// One of the three conventional splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The lowercase name used for folders, CSV files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which annotation is the ground truth when a dataset has two annotators (Aariz, ISBI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Annotator {
    /// The mean of the senior and junior positions (exact, sub-pixel; the official Aariz loader
    /// rounds it up to whole pixels, which biases every point by +0.25 px on average).
    #[default]
    Mean,
    Senior,
    Junior,
}

/// How to read a dataset.
#[derive(Debug, Clone, Default)]
pub struct DatasetOptions {
    pub annotator: Annotator,
}

/// The on-disk layouts `Dataset::open` recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Aariz,
    Isbi,
    Csv,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Aariz => "aariz",
            Format::Isbi => "isbi",
            Format::Csv => "csv",
        })
    }
}

/// One annotated image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub image_path: PathBuf,
    /// Original-image pixels, x = column, y = row, in the order of the dataset's landmark set.
    pub landmarks: Vec<[f64; 2]>,
    pub pixel_size_mm: f64,
    /// Image size in pixels, read from the file header when the dataset was opened.
    pub width: u32,
    pub height: u32,
    /// The X-ray machine, when the dataset says (Aariz; a CSV `machine` column).
    pub machine: Option<String>,
    /// Cervical vertebral maturation stage 1..=6, when known (Aariz; a CSV `cvm_stage` column).
    pub cvm_stage: Option<u8>,
}

/// Something wrong with one file of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub message: String,
}

impl Problem {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problem {
            file: file.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// A dataset: its landmark set and up to three splits of samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub format: Format,
    landmarks: LandmarkSet,
    splits: [Option<Vec<Sample>>; 3],
}

/// What a format reader found: the samples it could read and the problems with the rest.
pub(crate) struct Scan {
    pub landmarks: LandmarkSet,
    pub splits: [Option<Vec<Sample>>; 3],
    pub problems: Vec<Problem>,
}

impl Dataset {
    /// Opens the dataset at `path`, detecting its format; any problem with any sample is an
    /// error (`cephalo data check` lists them all).
    pub fn open(path: &Path, opts: &DatasetOptions) -> anyhow::Result<Dataset> {
        let (dataset, problems) = Self::scan(path, opts)?;
        if let Some(first) = problems.first() {
            anyhow::bail!(
                "{} problem(s) in dataset {}; the first: {first}\n\
                 run `cephalo data check --dataset-path {}` to list them all",
                problems.len(),
                path.display(),
                path.display()
            );
        }
        Ok(dataset)
    }

    /// Reads the dataset, keeping every sample that reads cleanly and listing the problems of
    /// the others. Fails only when the dataset as a whole cannot be read (no recognisable
    /// layout, an unreadable CSV header, no samples at all).
    pub fn scan(path: &Path, opts: &DatasetOptions) -> anyhow::Result<(Dataset, Vec<Problem>)> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("dataset folder {} cannot be read", path.display()))?;
        anyhow::ensure!(meta.is_dir(), "dataset path {} is not a folder", path.display());
        let format = detect_format(path)?;
        let scan = match format {
            Format::Aariz => format_aariz::scan(path, opts)?,
            Format::Isbi => format_isbi::scan(path, opts)?,
            Format::Csv => format_csv::scan(path)?,
        };
        let Scan {
            landmarks,
            splits,
            mut problems,
        } = scan;
        let mut splits = splits;
        for samples in splits.iter_mut().flatten() {
            samples.retain(|s| match check_sample_geometry(s, &landmarks) {
                Ok(()) => true,
                Err(p) => {
                    problems.push(p);
                    false
                }
            });
        }
        let total: usize = splits.iter().flatten().map(Vec::len).sum();
        if total == 0 && problems.is_empty() {
            anyhow::bail!("dataset {} ({format}) holds no images", path.display());
        }
        let dataset = Dataset {
            root: path.to_path_buf(),
            format,
            landmarks,
            splits,
        };
        Ok((dataset, problems))
    }

    /// The landmark set; the model's output channels follow its order.
    pub fn landmarks(&self) -> &LandmarkSet {
        &self.landmarks
    }

    /// The samples of one split, or `None` when the dataset has no such split.
    pub fn split(&self, split: Split) -> Option<&[Sample]> {
        self.splits[split.index()].as_deref()
    }

    /// The samples of one split, or an error saying that the split is missing or empty.
    pub fn require_split(&self, split: Split) -> anyhow::Result<&[Sample]> {
        match self.split(split) {
            Some(samples) if !samples.is_empty() => Ok(samples),
            Some(_) => anyhow::bail!("the '{split}' split of dataset {} is empty", self.root.display()),
            None => anyhow::bail!(
                "dataset {} ({}) has no '{split}' split ({})",
                self.root.display(),
                self.format,
                match self.format {
                    Format::Csv => format!("expected {split}.csv"),
                    Format::Aariz => format!("expected a folder named {split}"),
                    Format::Isbi => "expected RawImage/TrainingData, Test1Data, Test2Data".into(),
                }
            ),
        }
    }
}

/// Looks at the folder's layout: CSV files, Aariz split folders, or the ISBI folders.
fn detect_format(path: &Path) -> anyhow::Result<Format> {
    if Split::ALL.iter().any(|s| path.join(format!("{s}.csv")).is_file()) {
        return Ok(Format::Csv);
    }
    if find_child(path, "RawImage").is_some() && find_child(path, "AnnotationsByMD").is_some() {
        return Ok(Format::Isbi);
    }
    let has_aariz_split = Split::ALL.iter().any(|s| {
        find_child(path, s.name())
            .is_some_and(|d| find_child(&d, "Cephalograms").is_some() || find_child(&d, "Annotations").is_some())
    });
    if has_aariz_split || find_child(path, "cephalogram_machine_mappings.csv").is_some() {
        return Ok(Format::Aariz);
    }
    anyhow::bail!(
        "no dataset found in {}: expected train.csv / valid.csv / test.csv (landmark CSV), \
         train/ valid/ test/ folders with Cephalograms and Annotations (Aariz), or RawImage and \
         AnnotationsByMD folders (ISBI 2015)",
        path.display()
    )
}

/// The child of `dir` whose name equals `name` ignoring ASCII case (exact match preferred).
pub(crate) fn find_child(dir: &Path, name: &str) -> Option<PathBuf> {
    let exact = dir.join(name);
    if exact.exists() {
        return Some(exact);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
        .collect();
    matches.sort();
    matches.into_iter().next()
}

/// Image extensions the loaders accept.
pub(crate) const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

pub(crate) fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The image files in `dir`, sorted.
pub(crate) fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_image_file(p))
        .collect();
    images.sort();
    Ok(images)
}

/// A file's name without its extension: a sample's id.
pub(crate) fn file_id(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// The mean over the annotators' `sources` of the landmarks `read` gives for each (one image's
/// annotation file in that source folder).
pub(crate) fn mean_landmarks(
    sources: &[PathBuf],
    set: &LandmarkSet,
    mut read: impl FnMut(&Path) -> Result<Vec<[f64; 2]>, Problem>,
) -> Result<Vec<[f64; 2]>, Problem> {
    let mut sum = vec![[0.0f64; 2]; set.len()];
    for source in sources {
        for (acc, p) in sum.iter_mut().zip(read(source)?) {
            acc[0] += p[0];
            acc[1] += p[1];
        }
    }
    let n = sources.len() as f64;
    Ok(sum.into_iter().map(|[x, y]| [x / n, y / n]).collect())
}

/// A reader of the CSV `bytes` (read from `file`) with trimmed fields, and its header row.
pub(crate) fn csv_with_header<'b>(
    file: &Path,
    bytes: &'b [u8],
) -> anyhow::Result<(csv::Reader<&'b [u8]>, csv::StringRecord)> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(bytes);
    let header = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header row", file.display()))?
        .clone();
    Ok((reader, header))
}

/// Plausible radiograph pixel sizes (mm per pixel): anything outside is almost surely a unit
/// mistake (metres, micrometres, pixels per mm).
pub const PIXEL_SIZE_RANGE_MM: (f64, f64) = (0.005, 2.0);

/// The smallest image side accepted: anything smaller is a thumbnail or a broken file, and
/// training or predicting on it gives numbers that mean nothing.
pub const MIN_IMAGE_SIDE: u32 = 32;

/// Cheap per-sample checks that need only the header: the image size is known, every landmark
/// is finite and inside the image, and the pixel size is plausible.
fn check_sample_geometry(s: &Sample, set: &LandmarkSet) -> Result<(), Problem> {
    if s.width.min(s.height) < MIN_IMAGE_SIDE {
        return Err(Problem::new(
            &s.image_path,
            format!(
                "image is {}x{} pixels: too small for a radiograph (at least {MIN_IMAGE_SIDE} pixels a side)",
                s.width, s.height
            ),
        ));
    }
    let (lo, hi) = PIXEL_SIZE_RANGE_MM;
    if !(s.pixel_size_mm.is_finite() && s.pixel_size_mm >= lo && s.pixel_size_mm <= hi) {
        return Err(Problem::new(
            &s.image_path,
            format!(
                "pixel size {} mm is not plausible (expected {lo}..{hi} mm per pixel)",
                s.pixel_size_mm
            ),
        ));
    }
    for (k, p) in s.landmarks.iter().enumerate() {
        let symbol = set.symbols.get(k).map(String::as_str).unwrap_or("?");
        if !(p[0].is_finite() && p[1].is_finite()) {
            return Err(Problem::new(
                &s.image_path,
                format!("landmark {symbol} has a non-finite coordinate ({}, {})", p[0], p[1]),
            ));
        }
        // Under the pixel-centre convention the image covers [-0.5, w - 0.5] x [-0.5, h - 0.5].
        let inside = p[0] >= -0.5 && p[0] <= s.width as f64 - 0.5 && p[1] >= -0.5 && p[1] <= s.height as f64 - 0.5;
        if !inside {
            return Err(Problem::new(
                &s.image_path,
                format!(
                    "landmark {symbol} at ({}, {}) lies outside the {}x{} image",
                    p[0], p[1], s.width, s.height
                ),
            ));
        }
    }
    Ok(())
}

/// A progress bar for long data work ("preparing [=====>   ] 120/300 (12s left)"), or a hidden
/// one when `visible` is false (tests, library callers).
pub(crate) fn progress_bar(len: usize, message: &'static str, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

/// The 1-based line of a CSV record, counted from its byte offset. The csv crate's own line
/// counter comes out one too low for files with Windows (CRLF) line ends: after a `\r` it takes
/// the `\n` for the start of the next record. So the record is taken to start at the first byte
/// at or after its offset that ends no line. 0 when the position is unknown.
pub(crate) fn line_number(bytes: &[u8], position: Option<&csv::Position>) -> u64 {
    let Some(position) = position else {
        return 0;
    };
    let mut offset = (position.byte() as usize).min(bytes.len());
    while offset < bytes.len() && matches!(bytes[offset], b'\r' | b'\n') {
        offset += 1;
    }
    1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count() as u64
}

/// Progress of long data work for logs: the progress bar draws only on a terminal, so when stderr
/// is not one (a log file, CI) this prints a line every few seconds and one at the end instead.
pub(crate) struct LogProgress {
    what: &'static str,
    total: usize,
    done: std::sync::atomic::AtomicUsize,
    started: std::time::Instant,
    last: std::sync::Mutex<std::time::Instant>,
    every: std::time::Duration,
    enabled: bool,
}

impl LogProgress {
    /// Prints only when `visible` (the caller wants progress) and stderr is not a terminal.
    pub(crate) fn new(what: &'static str, total: usize, visible: bool) -> Self {
        use std::io::IsTerminal;
        let enabled = visible && !std::io::stderr().is_terminal();
        Self::with_interval(what, total, std::time::Duration::from_secs(5), enabled)
    }

    pub(crate) fn with_interval(what: &'static str, total: usize, every: std::time::Duration, enabled: bool) -> Self {
        let now = std::time::Instant::now();
        Self {
            what,
            total,
            done: 0.into(),
            started: now,
            last: std::sync::Mutex::new(now),
            every,
            enabled,
        }
    }

    /// Counts one item; returns the line it printed, if it was time for one.
    pub(crate) fn inc(&self) -> Option<String> {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if !self.enabled {
            return None;
        }
        let mut last = self.last.lock().ok()?;
        if last.elapsed() < self.every || done >= self.total {
            return None;
        }
        *last = std::time::Instant::now();
        self.print(done, format_args!("({:.0} s)", self.started.elapsed().as_secs_f64()))
    }

    /// The closing line with the total time; returns it when printed.
    pub(crate) fn finish(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
        self.print(
            done,
            format_args!("done in {:.1} s", self.started.elapsed().as_secs_f64()),
        )
    }

    /// Prints `what done/total` and `tail` to stderr and returns the line.
    fn print(&self, done: usize, tail: std::fmt::Arguments) -> Option<String> {
        let line = format!("{} {done}/{} {tail}", self.what, self.total);
        eprintln!("{line}");
        Some(line)
    }
}

/// Width and height from the image header, without decoding the pixels.
pub(crate) fn image_size(path: &Path) -> Result<(u32, u32), Problem> {
    if !path.is_file() {
        return Err(Problem::new(path, "image file is missing"));
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Problem::new(path, format!("cannot open image: {e}")))?
        .into_dimensions()
        .map_err(|e| Problem::new(path, format!("not a readable image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_progress_prints_while_working_and_at_the_end() {
        let p = LogProgress::with_interval("decoding", 3, std::time::Duration::ZERO, true);
        assert_eq!(p.inc().as_deref().map(|l| l.starts_with("decoding 1/3 (")), Some(true));
        assert!(p.inc().unwrap().starts_with("decoding 2/3"));
        assert_eq!(p.inc(), None, "the last item is left to the closing line");
        assert!(p.finish().unwrap().starts_with("decoding 3/3 done in "));
        let quiet = LogProgress::with_interval("decoding", 3, std::time::Duration::ZERO, false);
        assert_eq!((quiet.inc(), quiet.finish()), (None, None));
    }

    #[test]
    fn csv_line_numbers_count_newlines_of_either_kind() {
        let lf = b"h\na\nb\n";
        let crlf = b"h\r\na\r\nb\r\n";
        let at = |bytes: &[u8], byte: u64| {
            let mut pos = csv::Position::new();
            pos.set_byte(byte);
            line_number(bytes, Some(&pos))
        };
        assert_eq!((at(lf, 0), at(lf, 2), at(lf, 4)), (1, 2, 3));
        assert_eq!((at(crlf, 0), at(crlf, 3), at(crlf, 6)), (1, 2, 3));
        // Where the csv crate puts a CRLF record: on the `\n` ending the line before.
        assert_eq!((at(crlf, 2), at(crlf, 5)), (2, 3));
        assert_eq!(line_number(lf, None), 0);
    }
}
