//! `cephalo data check`: reads every annotation and decodes every image of a dataset, and lists
//! every problem with its file.
use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::image_io::load_gray;
use super::{Dataset, DatasetOptions, Format, Problem, Split};

/// What a check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub format: Format,
    pub landmarks: super::LandmarkSet,
    /// Images per split that read cleanly; `None` for an absent split.
    pub split_counts: [Option<usize>; 3],
    /// (width, height) -> image count.
    pub image_sizes: BTreeMap<(u32, u32), usize>,
    /// Pixel size (mm, as printed) -> image count.
    pub pixel_sizes: BTreeMap<String, usize>,
    /// Machine -> image count ("unknown" when the dataset does not say).
    pub machines: BTreeMap<String, usize>,
    pub problems: Vec<Problem>,
}

/// Scans the dataset and decodes every image in parallel (with a progress bar if `progress`).
pub fn check_dataset(path: &Path, opts: &DatasetOptions, progress: bool) -> anyhow::Result<CheckReport> {
    let (dataset, mut problems) = Dataset::scan(path, opts)?;
    let samples: Vec<_> = Split::ALL.iter().filter_map(|s| dataset.split(*s)).flatten().collect();
    let bar = super::progress_bar(samples.len(), "decoding", progress);
    let log = super::LogProgress::new("decoding", samples.len(), progress);
    let decode_problems: Vec<Problem> = samples
        .par_iter()
        .filter_map(|s| {
            let result = match load_gray(&s.image_path) {
                Err(e) => Some(Problem::new(&s.image_path, format!("{e:#}"))),
                Ok(img) if (img.width(), img.height()) != (s.width, s.height) => Some(Problem::new(
                    &s.image_path,
                    format!(
                        "decoded size {}x{} differs from the header's {}x{}",
                        img.width(),
                        img.height(),
                        s.width,
                        s.height
                    ),
                )),
                Ok(_) => None,
            };
            bar.inc(1);
            log.inc();
            result
        })
        .collect();
    bar.finish_and_clear();
    log.finish();
    // Samples with scan problems were already dropped; those that fail to decode drop now.
    let bad: std::collections::HashSet<_> = decode_problems.iter().map(|p| p.file.clone()).collect();
    problems.extend(decode_problems);

    let mut report = CheckReport {
        format: dataset.format,
        landmarks: dataset.landmarks().clone(),
        split_counts: [None; 3],
        image_sizes: BTreeMap::new(),
        pixel_sizes: BTreeMap::new(),
        machines: BTreeMap::new(),
        problems,
    };
    for split in Split::ALL {
        let Some(samples) = dataset.split(split) else {
            continue;
        };
        let good: Vec<_> = samples.iter().filter(|s| !bad.contains(&s.image_path)).collect();
        report.split_counts[split as usize] = Some(good.len());
        for s in good {
            *report.image_sizes.entry((s.width, s.height)).or_default() += 1;
            *report.pixel_sizes.entry(short_number(s.pixel_size_mm)).or_default() += 1;
            let machine = s.machine.clone().unwrap_or_else(|| "unknown".into());
            *report.machines.entry(machine).or_default() += 1;
        }
    }
    Ok(report)
}

/// At most 6 decimals, trailing zeros dropped: 0.1 -> "0.1", 0.3125504805 -> "0.31255".
fn short_number(v: f64) -> String {
    let text = format!("{v:.6}");
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_string()
}

/// Prints "a (n), b (m)" sorted by count, at most `limit` entries.
fn tally<K: std::fmt::Display>(entries: impl Iterator<Item = (K, usize)>, limit: usize) -> String {
    let mut v: Vec<(K, usize)> = entries.collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let more = v.len().saturating_sub(limit);
    let mut parts: Vec<String> = v.into_iter().take(limit).map(|(k, n)| format!("{k} ({n})")).collect();
    if more > 0 {
        parts.push(format!("... {more} more"));
    }
    parts.join(", ")
}

impl CheckReport {
    /// The human-readable summary, problems last.
    pub fn render(&self, path: &Path) -> String {
        let mut out = String::new();
        out += &format!("dataset      {} ({} format)\n", path.display(), self.format);
        out += &format!(
            "landmarks    {}: {}\n",
            self.landmarks.len(),
            self.landmarks.symbols.join(" ")
        );
        for split in Split::ALL {
            let count = match self.split_counts[split as usize] {
                Some(n) => format!("{n} images"),
                None => "absent".into(),
            };
            out += &format!("{:<12} {count}\n", split.name());
        }
        let sizes = self.image_sizes.iter().map(|((w, h), n)| (format!("{w}x{h}"), *n));
        out += &format!("image sizes  {}\n", tally(sizes, 6));
        let pixel = self.pixel_sizes.iter().map(|(p, n)| (format!("{p} mm"), *n));
        out += &format!("pixel sizes  {}\n", tally(pixel, 6));
        out += &format!(
            "machines     {}\n",
            tally(self.machines.iter().map(|(m, n)| (m, *n)), 10)
        );
        out += &format!("problems     {}\n", self.problems.len());
        for p in &self.problems {
            out += &format!("  {p}\n");
        }
        out
    }
}
