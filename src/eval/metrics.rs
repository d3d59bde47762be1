//! MRE, SD and SDR (docs/formats.md#metrics), overall, per landmark and per X-ray machine.
//!
//! The radial error of one landmark in one image is the Euclidean distance between prediction and
//! ground truth in original-image pixels, times that image's pixel size. Every statistic is over
//! (image, landmark) pairs. SD is the population standard deviation (numpy's default, which the
//! published evaluation scripts use).
use serde::Serialize;

/// The radii (mm) of the success detection rates every paper reports.
pub const SDR_RADII_MM: [f64; 4] = [2.0, 2.5, 3.0, 4.0];

/// Radial errors in mm of one image's landmarks.
pub fn radial_errors_mm(pred: &[[f64; 2]], truth: &[[f64; 2]], pixel_size_mm: f64) -> Vec<f64> {
    assert_eq!(
        pred.len(),
        truth.len(),
        "prediction and ground truth have different landmark counts"
    );
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p[0] - t[0]).hypot(p[1] - t[1]) * pixel_size_mm)
        .collect()
}

/// Statistics of a set of radial errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorStats {
    /// Number of (image, landmark) pairs.
    pub count: usize,
    /// Mean radial error, mm.
    pub mre_mm: f64,
    /// Standard deviation of the radial error, mm.
    pub sd_mm: f64,
    /// Percentage of pairs within 2, 2.5, 3 and 4 mm.
    pub sdr_percent: [f64; 4],
}

impl ErrorStats {
    pub fn from_errors(errors: &[f64]) -> ErrorStats {
        let count = errors.len();
        if count == 0 {
            return ErrorStats {
                count,
                mre_mm: f64::NAN,
                sd_mm: f64::NAN,
                sdr_percent: [f64::NAN; 4],
            };
        }
        let n = count as f64;
        let mre = errors.iter().sum::<f64>() / n;
        let sd = (errors.iter().map(|e| (e - mre).powi(2)).sum::<f64>() / n).sqrt();
        let sdr = SDR_RADII_MM.map(|r| 100.0 * errors.iter().filter(|&&e| e <= r).count() as f64 / n);
        ErrorStats {
            count,
            mre_mm: mre,
            sd_mm: sd,
            sdr_percent: sdr,
        }
    }
}

/// One evaluated image.
#[derive(Debug, Clone)]
pub struct ImageResult<'a> {
    pub predicted: &'a [[f64; 2]],
    pub truth: &'a [[f64; 2]],
    pub pixel_size_mm: f64,
    pub machine: Option<&'a str>,
}

/// Overall, per-landmark and per-machine statistics.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsReport {
    pub overall: ErrorStats,
    /// In the dataset's landmark order.
    pub per_landmark: Vec<(String, ErrorStats)>,
    /// Sorted by machine name; empty when no image knows its machine.
    pub per_machine: Vec<(String, ErrorStats)>,
}

impl MetricsReport {
    pub fn compute(symbols: &[String], images: &[ImageResult<'_>]) -> MetricsReport {
        let k = symbols.len();
        let mut all = Vec::with_capacity(images.len() * k);
        let mut by_landmark = vec![Vec::with_capacity(images.len()); k];
        let mut by_machine: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for image in images {
            let errors = radial_errors_mm(image.predicted, image.truth, image.pixel_size_mm);
            assert_eq!(errors.len(), k, "image has {} landmarks, the set has {k}", errors.len());
            for (j, e) in errors.iter().enumerate() {
                by_landmark[j].push(*e);
            }
            if let Some(m) = image.machine {
                by_machine.entry(m).or_default().extend(&errors);
            }
            all.extend(errors);
        }
        MetricsReport {
            overall: ErrorStats::from_errors(&all),
            per_landmark: symbols
                .iter()
                .cloned()
                .zip(by_landmark.iter().map(|e| ErrorStats::from_errors(e)))
                .collect(),
            per_machine: by_machine
                .into_iter()
                .map(|(m, e)| (m.to_string(), ErrorStats::from_errors(&e)))
                .collect(),
        }
    }

    /// Landmarks from the worst MRE to the best: the ones to look at first.
    pub fn worst_first(&self) -> Vec<&(String, ErrorStats)> {
        let mut rows: Vec<_> = self.per_landmark.iter().collect();
        rows.sort_by(|a, b| b.1.mre_mm.total_cmp(&a.1.mre_mm));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_on_hand_computed_errors() {
        // Errors 1, 2, 3, 6 mm: mean 3, population variance (4+1+0+9)/4 = 3.5.
        let s = ErrorStats::from_errors(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!(s.count, 4);
        assert!((s.mre_mm - 3.0).abs() < 1e-12);
        assert!((s.sd_mm - 3.5f64.sqrt()).abs() < 1e-12);
        // <= 2: {1, 2} = 50 %; <= 2.5: 50 %; <= 3: 75 %; <= 4: 75 %.
        assert_eq!(s.sdr_percent, [50.0, 50.0, 75.0, 75.0]);
    }

    #[test]
    fn radial_error_uses_the_pixel_size() {
        // A 3-4-5 triangle: 5 px at 0.1 mm/px is 0.5 mm.
        let e = radial_errors_mm(&[[3.0, 4.0]], &[[0.0, 0.0]], 0.1);
        assert!((e[0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn report_splits_by_landmark_and_machine() {
        let symbols = vec!["S".to_string(), "N".to_string()];
        let truth = [[0.0, 0.0], [10.0, 10.0]];
        let pred_a = [[10.0, 0.0], [10.0, 10.0]]; // S off by 10 px, N exact
        let pred_b = [[0.0, 30.0], [10.0, 10.0]]; // S off by 30 px
        let images = [
            ImageResult {
                predicted: &pred_a,
                truth: &truth,
                pixel_size_mm: 0.1,
                machine: Some("B"),
            },
            ImageResult {
                predicted: &pred_b,
                truth: &truth,
                pixel_size_mm: 0.1,
                machine: Some("A"),
            },
        ];
        let r = MetricsReport::compute(&symbols, &images);
        assert!((r.overall.mre_mm - (1.0 + 3.0) / 4.0).abs() < 1e-12);
        assert!((r.per_landmark[0].1.mre_mm - 2.0).abs() < 1e-12);
        assert_eq!(r.per_landmark[1].1.mre_mm, 0.0);
        assert_eq!(r.worst_first()[0].0, "S");
        assert_eq!(
            r.per_machine.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert!((r.per_machine[0].1.mre_mm - 1.5).abs() < 1e-12);
    }
}
