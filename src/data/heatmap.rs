//! Heatmap targets and their decoding (docs/maths.md#heatmap-targets,
//! docs/maths.md#heatmap-decoding).
//!
//! Layout: one image's heatmaps are `h * w * k` floats in NHWC order with the landmark as the
//! last (channel) axis: index `(y * w + x) * k + landmark`. Coordinates: pixel centres at
//! integers; heatmap = (image + 0.5) / stride - 0.5.

/// Values of a target Gaussian beyond this many sigmas are set to exactly 0.
pub const TRUNCATE_SIGMAS: f64 = 3.0;

/// Network-pixel coordinate -> heatmap coordinate.
pub fn image_to_heatmap(p: [f64; 2], stride: usize) -> [f64; 2] {
    let s = stride as f64;
    [(p[0] + 0.5) / s - 0.5, (p[1] + 0.5) / s - 0.5]
}

/// Heatmap coordinate -> network-pixel coordinate.
pub fn heatmap_to_image(p: [f64; 2], stride: usize) -> [f64; 2] {
    let s = stride as f64;
    [(p[0] + 0.5) * s - 0.5, (p[1] + 0.5) * s - 0.5]
}

/// Target heatmaps for one image: for each point an unnormalised Gaussian with peak 1 at its
/// exact sub-pixel position (heatmap pixels), truncated at 3 sigma. A non-finite point gives an
/// all-zero channel. Returns `h * w * points.len()` floats, NHWC.
pub fn encode(points: &[[f64; 2]], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    let mut out = vec![0f32; h * w * points.len()];
    encode_into(&mut out, points, h, w, sigma);
    out
}

/// [`encode`] into a zeroed slice of `h * w * points.len()` floats.
pub fn encode_into(out: &mut [f32], points: &[[f64; 2]], h: usize, w: usize, sigma: f64) {
    let k = points.len();
    debug_assert_eq!(out.len(), h * w * k);
    let reach = TRUNCATE_SIGMAS * sigma;
    let inv = 1.0 / (2.0 * sigma * sigma);
    for (c, &[px, py]) in points.iter().enumerate() {
        if !(px.is_finite() && py.is_finite()) {
            continue;
        }
        // Only the window that can be within `reach` of the centre is touched.
        let x0 = (px - reach).ceil().max(0.0) as usize;
        let y0 = (py - reach).ceil().max(0.0) as usize;
        let x1 = (px + reach).floor().min(w as f64 - 1.0);
        let y1 = (py + reach).floor().min(h as f64 - 1.0);
        if x1 < 0.0 || y1 < 0.0 {
            continue;
        }
        let (x1, y1) = (x1 as usize, y1 as usize);
        for y in y0..=y1 {
            let dy = y as f64 - py;
            for x in x0..=x1 {
                let dx = x as f64 - px;
                let d2 = dx * dx + dy * dy;
                if d2 <= reach * reach {
                    // libm's exp: the same targets on every platform.
                    out[(y * w + x) * k + c] = libm::exp(-d2 * inv) as f32;
                }
            }
        }
    }
}

/// A decoded landmark: heatmap-pixel position and the heatmap's peak value (a confidence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub point: [f64; 2],
    pub value: f32,
}

/// Integer argmax of channel `c` (first maximum in row-major order).
fn argmax(heatmaps: &[f32], h: usize, w: usize, k: usize, c: usize) -> (usize, usize, f32) {
    let mut best = (0, 0, f32::NEG_INFINITY);
    for y in 0..h {
        for x in 0..w {
            let v = heatmaps[(y * w + x) * k + c];
            if v > best.2 {
                best = (x, y, v);
            }
        }
    }
    best
}

/// Argmax, then a quarter-pixel step towards the higher neighbour on each axis.
pub fn decode_argmax_quarter(heatmaps: &[f32], h: usize, w: usize, k: usize) -> Vec<Peak> {
    (0..k)
        .map(|c| {
            let at = |x: usize, y: usize| heatmaps[(y * w + x) * k + c];
            let (x, y, value) = argmax(heatmaps, h, w, k, c);
            let mut p = [x as f64, y as f64];
            if x > 0 && x + 1 < w {
                p[0] += 0.25 * sign(at(x + 1, y) - at(x - 1, y));
            }
            if y > 0 && y + 1 < h {
                p[1] += 0.25 * sign(at(x, y + 1) - at(x, y - 1));
            }
            Peak { point: p, value }
        })
        .collect()
}

fn sign(v: f32) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// DARK decoding (Zhang et al., CVPR 2020): smooth the heatmap with a Gaussian of the target's
/// sigma (kernel 2*round(2.5 sigma)+1: 11 taps for sigma 2, as in mmpose), take the log, and do
/// one Newton step from the argmax with central differences. The log of a Gaussian is a
/// quadratic, so the step lands on the true centre; it is skipped at the border and when the
/// Hessian is not negative definite. Only the 3x3 neighbourhood of the argmax is smoothed.
pub fn decode_dark(heatmaps: &[f32], h: usize, w: usize, k: usize, sigma: f64) -> Vec<Peak> {
    let radius = (2.5 * sigma).round().max(1.0) as isize;
    let taps = super::geometry::gaussian_kernel(sigma, radius as usize);
    (0..k)
        .map(|c| {
            let (x, y, value) = argmax(heatmaps, h, w, k, c);
            let mut peak = Peak {
                point: [x as f64, y as f64],
                value,
            };
            if x == 0 || y == 0 || x + 1 >= w || y + 1 >= h {
                return peak;
            }
            // Smoothed value at (sx, sy), edges replicated.
            let smooth = |sx: isize, sy: isize| -> f64 {
                let mut acc = 0.0f64;
                for (j, ty) in taps.iter().enumerate() {
                    let yy = (sy + j as isize - radius).clamp(0, h as isize - 1) as usize;
                    for (i, tx) in taps.iter().enumerate() {
                        let xx = (sx + i as isize - radius).clamp(0, w as isize - 1) as usize;
                        acc += (*ty * *tx) as f64 * heatmaps[(yy * w + xx) * k + c] as f64;
                    }
                }
                acc.max(1e-10).ln()
            };
            let (xi, yi) = (x as isize, y as isize);
            let l = |dx: isize, dy: isize| smooth(xi + dx, yi + dy);
            let center = l(0, 0);
            let dx = 0.5 * (l(1, 0) - l(-1, 0));
            let dy = 0.5 * (l(0, 1) - l(0, -1));
            let dxx = l(1, 0) - 2.0 * center + l(-1, 0);
            let dyy = l(0, 1) - 2.0 * center + l(0, -1);
            let dxy = 0.25 * (l(1, 1) - l(1, -1) - l(-1, 1) + l(-1, -1));
            let det = dxx * dyy - dxy * dxy;
            if det > 1e-12 && dxx < 0.0 {
                let ox = -(dyy * dx - dxy * dy) / det;
                let oy = -(dxx * dy - dxy * dx) / det;
                if ox.is_finite() && oy.is_finite() && ox.abs() <= 1.0 && oy.abs() <= 1.0 {
                    peak.point = [x as f64 + ox, y as f64 + oy];
                }
            }
            peak
        })
        .collect()
}
