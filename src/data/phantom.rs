//! Procedural "phantom" cephalograms: skull-like radiographs whose 19 ISBI landmarks are tied
//! to the drawn anatomy (S is the centre of the sella, Po the top of the ear rod ring, Or the
//! bottom of the orbit, PNS and ANS the ends of the palate, Ar/Go/Me/Gn/Pog/B the corners of
//! the mandible outline, UIT/LIT the incisor tips, Sn/Ls/Li/Pog` the corners of the soft-tissue
//! profile). They are written in the landmark CSV format and serve the demo and the tests that
//! must learn something quickly on a CPU.
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::geometry::{gaussian_blur, Affine, Plane};
use super::image_io::save_gray_atomic;
use super::landmarks::LandmarkSet;
use super::Split;

/// Phantom pixel size: the face spans ~200 px where a real one spans ~130 mm.
pub const PHANTOM_PIXEL_SIZE_MM: f64 = 0.6;

/// Mean ISBI 2015 landmark positions (training set, fractions of 1935 x 2400), in ISBI order.
const TEMPLATE: [[f64; 2]; 19] = [
    [0.417, 0.434], // S
    [0.719, 0.405], // N
    [0.661, 0.509], // Or
    [0.310, 0.507], // Po
    [0.716, 0.631], // A
    [0.703, 0.773], // B
    [0.700, 0.826], // Pog
    [0.669, 0.852], // Me
    [0.691, 0.843], // Gn
    [0.381, 0.724], // Go
    [0.736, 0.705], // LIT
    [0.744, 0.710], // UIT
    [0.805, 0.672], // Ls
    [0.794, 0.755], // Li
    [0.775, 0.622], // Sn
    [0.749, 0.839], // Pog`
    [0.504, 0.596], // PNS
    [0.726, 0.603], // ANS
    [0.347, 0.554], // Ar
];

// Indices into the ISBI order.
const S: usize = 0;
const N: usize = 1;
const OR: usize = 2;
const PO: usize = 3;
const A: usize = 4;
const B: usize = 5;
const POG: usize = 6;
const ME: usize = 7;
const GN: usize = 8;
const GO: usize = 9;
const LIT: usize = 10;
const UIT: usize = 11;
const LS: usize = 12;
const LI: usize = 13;
const SN: usize = 14;
const SPOG: usize = 15;
const PNS: usize = 16;
const ANS: usize = 17;
const AR: usize = 18;

/// One generated radiograph.
pub struct Phantom {
    pub image: image::GrayImage,
    /// Pixels, in [`LandmarkSet::isbi19`] order.
    pub landmarks: Vec<[f64; 2]>,
}

fn add(p: [f64; 2], q: [f64; 2]) -> [f64; 2] {
    [p[0] + q[0], p[1] + q[1]]
}

fn lerp(p: [f64; 2], q: [f64; 2], t: f64) -> [f64; 2] {
    [p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t]
}

fn dist(p: [f64; 2], q: [f64; 2]) -> f64 {
    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt()
}

/// Distance from `p` to the segment a-b.
fn segment_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let (vx, vy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 {
        (((p[0] - a[0]) * vx + (p[1] - a[1]) * vy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    dist(p, [a[0] + t * vx, a[1] + t * vy])
}

/// Anti-aliased drawing on a float canvas: every shape adds `amp` times its pixel coverage.
struct Canvas {
    plane: Plane,
}

impl Canvas {
    /// Adds amp * coverage(distance) over the shape's bounding box.
    fn stamp(&mut self, lo: [f64; 2], hi: [f64; 2], amp: f32, coverage: impl Fn([f64; 2]) -> f64) {
        let (w, h) = (self.plane.width, self.plane.height);
        let x0 = lo[0].floor().max(0.0) as usize;
        let y0 = lo[1].floor().max(0.0) as usize;
        let x1 = (hi[0].ceil().max(0.0) as usize).min(w.saturating_sub(1));
        let y1 = (hi[1].ceil().max(0.0) as usize).min(h.saturating_sub(1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let c = coverage([x as f64, y as f64]);
                if c > 0.0 {
                    self.plane.data[y * w + x] += amp * c.min(1.0) as f32;
                }
            }
        }
    }

    /// A thick line with round ends (half-width `r`).
    fn capsule(&mut self, a: [f64; 2], b: [f64; 2], r: f64, amp: f32) {
        let lo = [a[0].min(b[0]) - r - 1.0, a[1].min(b[1]) - r - 1.0];
        let hi = [a[0].max(b[0]) + r + 1.0, a[1].max(b[1]) + r + 1.0];
        self.stamp(lo, hi, amp, |p| (r - segment_distance(p, a, b) + 0.5).clamp(0.0, 1.0));
    }

    /// A polyline of capsules.
    fn stroke(&mut self, points: &[[f64; 2]], r: f64, amp: f32) {
        for pair in points.windows(2) {
            self.capsule(pair[0], pair[1], r, amp);
        }
    }

    /// A ring of radius `radius` and half-thickness `t`, only where `keep` holds.
    fn ring(&mut self, c: [f64; 2], radius: f64, t: f64, amp: f32, keep: impl Fn([f64; 2]) -> bool) {
        let reach = radius + t + 1.0;
        self.stamp([c[0] - reach, c[1] - reach], [c[0] + reach, c[1] + reach], amp, |p| {
            if keep(p) {
                (t - (dist(p, c) - radius).abs() + 0.5).clamp(0.0, 1.0)
            } else {
                0.0
            }
        });
    }

    fn disk(&mut self, c: [f64; 2], radius: f64, amp: f32) {
        let reach = radius + 1.0;
        self.stamp([c[0] - reach, c[1] - reach], [c[0] + reach, c[1] + reach], amp, |p| {
            (radius - dist(p, c) + 0.5).clamp(0.0, 1.0)
        });
    }

    /// A filled polygon (even-odd rule), no anti-aliasing needed at this soft intensity.
    fn polygon(&mut self, vertices: &[[f64; 2]], amp: f32) {
        let lo = vertices
            .iter()
            .fold([f64::MAX; 2], |m, p| [m[0].min(p[0]), m[1].min(p[1])]);
        let hi = vertices
            .iter()
            .fold([f64::MIN; 2], |m, p| [m[0].max(p[0]), m[1].max(p[1])]);
        self.stamp(lo, hi, amp, |p| {
            let mut inside = false;
            let mut j = vertices.len() - 1;
            for i in 0..vertices.len() {
                let (a, b) = (vertices[i], vertices[j]);
                if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
                    inside = !inside;
                }
                j = i;
            }
            if inside {
                1.0
            } else {
                0.0
            }
        });
    }
}

/// Draws one phantom of `width` x `height` pixels.
pub fn generate<R: Rng>(rng: &mut R, width: usize, height: usize) -> Phantom {
    loop {
        if let Some(p) = try_generate(rng, width, height) {
            return p;
        }
    }
}

fn try_generate<R: Rng>(rng: &mut R, width: usize, height: usize) -> Option<Phantom> {
    let (wf, hf) = (width as f64, height as f64);
    let mut u = |r: f64| (rng.random::<f64>() * 2.0 - 1.0) * r;
    // Template in ISBI pixels, centred on the face, zoomed so the face fills the frame.
    let zoom = 1.6 * wf / 1935.0 * (1.0 + u(0.08));
    let placement = Affine::translation(-1090.0, -1520.0)
        .then(&Affine::rotation(u(6.0).to_radians()))
        .then(&Affine::scaling(zoom, zoom))
        .then(&Affine::translation(wf / 2.0 + u(0.05) * wf, hf / 2.0 + u(0.04) * hf));
    let mut lm: Vec<[f64; 2]> = TEMPLATE
        .iter()
        .map(|t| placement.apply([t[0] * 1935.0, t[1] * 2400.0]))
        .collect();
    // Individual anatomy: the mandible (and what it carries) turns about Ar, the maxilla moves
    // forward or back, and every point varies a little on its own.
    let jaw = Affine::translation(-lm[AR][0], -lm[AR][1])
        .then(&Affine::rotation(u(5.0).to_radians()))
        .then(&Affine::translation(lm[AR][0], lm[AR][1]));
    for i in [B, POG, ME, GN, GO, LIT, LI, SPOG] {
        lm[i] = jaw.apply(lm[i]);
    }
    let maxilla = u(0.02) * wf;
    for i in [A, ANS, UIT, LS, SN] {
        lm[i][0] += maxilla;
    }
    let sn_len = dist(lm[S], lm[N]);
    for p in lm.iter_mut() {
        *p = add(*p, [u(0.012 * sn_len), u(0.012 * sn_len)]);
    }
    let margin = 3.0;
    if lm
        .iter()
        .any(|p| p[0] < margin || p[1] < margin || p[0] > wf - 1.0 - margin || p[1] > hf - 1.0 - margin)
    {
        return None;
    }

    let mut canvas = Canvas {
        plane: Plane {
            width,
            height,
            data: vec![0.08; width * height],
        },
    };
    let unit = sn_len; // anatomy sizes scale with the skull
    let vec = |dx: f64, dy: f64| [dx * unit, dy * unit];
    // Soft tissue: the head's silhouette, whose profile runs through Sn, Ls, Li and Pog`.
    let stomion = add(lerp(lm[LS], lm[LI], 0.5), vec(-0.06, 0.0));
    let fold = add(lerp(lm[LI], lm[SPOG], 0.5), vec(-0.05, 0.0));
    let pronasale = add(lm[SN], vec(0.12, -0.08));
    let soft_nasion = add(lm[N], vec(0.07, 0.0));
    let soft_menton = add(lm[ME], vec(0.0, 0.07));
    let profile = [
        [soft_nasion[0] + 0.02 * unit, 0.0],
        soft_nasion,
        pronasale,
        lm[SN],
        lm[LS],
        stomion,
        lm[LI],
        fold,
        lm[SPOG],
        soft_menton,
        [lm[ME][0] - 0.3 * unit, hf],
        [0.0, hf],
        [0.0, 0.0],
    ];
    canvas.polygon(&profile, 0.16);
    // Cranial vault: a circular arc ending at N, with the nasal bone going down from N.
    let vault_centre = add(lerp(lm[S], lm[N], 0.4), vec(0.0, 0.25));
    let vault_radius = dist(vault_centre, lm[N]);
    let n_y = lm[N][1];
    canvas.ring(vault_centre, vault_radius, 0.035 * unit, 0.45, |p| p[1] <= n_y);
    canvas.capsule(lm[N], add(lm[N], vec(0.08, 0.14)), 0.02 * unit, 0.35);
    // Cranial base from the sella to the nasion.
    canvas.capsule(add(lm[S], vec(0.12, -0.02)), lm[N], 0.025 * unit, 0.25);
    // Sella turcica: a bony cup around S (open at the top), darker inside.
    let r_sella = 0.09 * unit;
    canvas.disk(lm[S], r_sella, -0.05);
    let s_y = lm[S][1];
    canvas.ring(lm[S], r_sella, 0.025 * unit, 0.5, |p| p[1] >= s_y - 0.3 * r_sella);
    // Orbit: a ring whose lowest point is Or.
    let r_orbit = 0.13 * unit;
    canvas.ring(add(lm[OR], [0.0, -r_orbit]), r_orbit, 0.02 * unit, 0.3, |_| true);
    // Ear rod: a bright ring whose top is Po.
    let r_ear = 0.07 * unit;
    canvas.ring(add(lm[PO], [0.0, r_ear]), r_ear, 0.022 * unit, 0.6, |_| true);
    // Palate from PNS to ANS, maxilla down to A and the alveolus.
    canvas.capsule(lm[PNS], lm[ANS], 0.03 * unit, 0.4);
    let alveolus = add(lm[UIT], vec(-0.07, -0.1));
    canvas.stroke(&[lm[ANS], lm[A], alveolus], 0.025 * unit, 0.35);
    // Incisors: tapered teeth ending at the tips.
    let upper_apex = add(lm[UIT], vec(-0.1, -0.22));
    let lower_apex = add(lm[LIT], vec(-0.1, 0.2));
    canvas.capsule(upper_apex, lm[UIT], 0.03 * unit, 0.45);
    canvas.capsule(lower_apex, lm[LIT], 0.028 * unit, 0.45);
    // Molars along the occlusal plane.
    let occlusal = lerp(lm[UIT], lm[LIT], 0.5);
    for t in [0.45, 0.62] {
        let c = lerp(occlusal, lm[GO], t);
        canvas.disk(add(c, vec(0.0, -0.05)), 0.05 * unit, 0.3);
        canvas.disk(add(c, vec(0.0, 0.05)), 0.05 * unit, 0.3);
    }
    // Mandible: condyle, ramus Ar-Go, body Go-Me, symphysis Me-Gn-Pog-B, alveolus to the incisor.
    canvas.disk(add(lm[AR], vec(-0.02, -0.05)), 0.05 * unit, 0.3);
    canvas.stroke(
        &[lm[AR], lm[GO], lm[ME], lm[GN], lm[POG], lm[B], lower_apex],
        0.04 * unit,
        0.5,
    );

    let mut plane = canvas.plane;
    gaussian_blur(&mut plane, 0.6);
    let noise = Normal::new(0.0f32, 0.02).ok()?;
    for v in plane.data.iter_mut() {
        *v = (*v + noise.sample(rng)).clamp(0.0, 1.0);
    }
    Some(Phantom {
        image: plane.to_gray(),
        landmarks: lm,
    })
}

/// Writes `count` phantoms as a landmark-CSV dataset in `out` (70 % train, 15 % valid, the rest
/// test), PNG images under `images/`. Deterministic in `seed`.
pub fn write_dataset(out: &Path, count: usize, seed: u64, width: usize, height: usize) -> anyhow::Result<()> {
    anyhow::ensure!(count >= 3, "--count must be at least 3 (one image per split)");
    anyhow::ensure!(width >= 64 && height >= 64, "phantoms need at least 64x64 pixels");
    let set = LandmarkSet::isbi19();
    let n_train = (count * 70 / 100).max(1);
    let n_valid = (count * 15 / 100).max(1);
    let mut rows: [Vec<(PathBuf, Vec<[f64; 2]>)>; 3] = Default::default();
    let bar = super::progress_bar(count, "drawing", true);
    for i in 0..count {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let phantom = generate(&mut rng, width, height);
        let rel = PathBuf::from(format!("images/phantom_{i:04}.png"));
        save_gray_atomic(&phantom.image, &out.join(&rel))?;
        let split = if i < n_train {
            Split::Train
        } else if i < n_train + n_valid {
            Split::Valid
        } else {
            Split::Test
        };
        rows[split as usize].push((rel, phantom.landmarks));
        bar.inc(1);
    }
    bar.finish_and_clear();
    for split in Split::ALL {
        let samples = &rows[split as usize];
        if samples.is_empty() {
            continue;
        }
        let lines: Vec<super::prepare::CsvRow> = samples
            .iter()
            .map(|(rel, lm)| super::prepare::CsvRow {
                image: rel.to_string_lossy().into_owned(),
                pixel_size_mm: PHANTOM_PIXEL_SIZE_MM,
                landmarks: lm.clone(),
                machine: None,
                cvm_stage: None,
            })
            .collect();
        super::prepare::write_csv_atomic(&out.join(format!("{split}.csv")), &set, &lines)
            .with_context(|| format!("writing the {split} split"))?;
    }
    Ok(())
}
