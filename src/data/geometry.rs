//! Exact geometry between original-image pixels and network pixels.
//!
//! Convention everywhere: pixel centres at integer coordinates, x = column, y = row; an image of
//! width w covers [-0.5, w - 0.5]. Every sample keeps the [`Affine`] that took it from original
//! to network pixels, so predictions map back exactly (its inverse), whatever augmentation did.

/// A 2-D affine map `(x, y) -> (a x + b y + c, d x + e y + f)`, stored as `[a, b, c, d, e, f]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    pub const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    pub fn translation(tx: f64, ty: f64) -> Affine {
        Affine([1.0, 0.0, tx, 0.0, 1.0, ty])
    }

    pub fn scaling(sx: f64, sy: f64) -> Affine {
        Affine([sx, 0.0, 0.0, 0.0, sy, 0.0])
    }

    /// Rotation by `radians` about the origin; positive turns +x towards +y (clockwise on screen,
    /// since y points down).
    pub fn rotation(radians: f64) -> Affine {
        // libm, not the platform's C library: augmentation rotates with this, and the same seed
        // must give the same run everywhere.
        let (s, c) = libm::sincos(radians);
        Affine([c, -s, 0.0, s, c, 0.0])
    }

    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let [a, b, c, d, e, f] = self.0;
        [a * p[0] + b * p[1] + c, d * p[0] + e * p[1] + f]
    }

    /// The map that applies `self` first, then `next`.
    pub fn then(&self, next: &Affine) -> Affine {
        let [a, b, c, d, e, f] = self.0;
        let [p, q, r, s, t, u] = next.0;
        Affine([
            p * a + q * d,
            p * b + q * e,
            p * c + q * f + r,
            s * a + t * d,
            s * b + t * e,
            s * c + t * f + u,
        ])
    }

    pub fn determinant(&self) -> f64 {
        self.0[0] * self.0[4] - self.0[1] * self.0[3]
    }

    /// The inverse map. Every map built here (letterbox, augmentation) has a positive scale, so
    /// it is invertible; a singular matrix yields non-finite entries rather than a panic.
    pub fn inverse(&self) -> Affine {
        let [a, b, c, d, e, f] = self.0;
        let det = self.determinant();
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Affine([ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)])
    }

    /// Geometric-mean scale factor, sqrt(|det|): how many output units one input unit becomes.
    pub fn mean_scale(&self) -> f64 {
        self.determinant().abs().sqrt()
    }
}

/// Network input size, rows then columns, as in `--image-size H W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub height: usize,
    pub width: usize,
}

impl ImageSize {
    /// From the two values of `--image-size H W` (clap: `num_args = 2`), rejecting anything but
    /// two sizes from 16 to 8192.
    pub fn from_hw(values: &[usize]) -> anyhow::Result<ImageSize> {
        match values {
            [h, w] if (16..=8192).contains(h) && (16..=8192).contains(w) => Ok(ImageSize { height: *h, width: *w }),
            _ => anyhow::bail!("--image-size takes two sizes, height then width, each 16 to 8192 (e.g. 768 768)"),
        }
    }
}

/// The map from original pixels to network pixels that fits a `width` x `height` image into
/// `net` preserving aspect ratio, centred, padding the rest (letterbox).
pub fn letterbox(width: u32, height: u32, net: ImageSize) -> Affine {
    let s = (net.width as f64 / width as f64).min(net.height as f64 / height as f64);
    let ox = (net.width as f64 - width as f64 * s) / 2.0;
    let oy = (net.height as f64 - height as f64 * s) / 2.0;
    // x_net + 0.5 = (x + 0.5) s + ox: the pixel-centre convention maps extent to extent.
    Affine([s, 0.0, 0.5 * s - 0.5 + ox, 0.0, s, 0.5 * s - 0.5 + oy])
}

/// Maps network-pixel points back to original pixels with the sample's network -> original map.
pub fn to_original(points: &[[f64; 2]], net_to_original: &Affine) -> Vec<[f64; 2]> {
    points.iter().map(|&p| net_to_original.apply(p)).collect()
}

/// A single-channel f32 image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Plane {
    /// Pixel values scaled to [0, 1].
    pub fn from_gray(image: &image::GrayImage) -> Plane {
        Plane {
            width: image.width() as usize,
            height: image.height() as usize,
            data: image.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
        }
    }

    /// Back to 8 bits (clamped, rounded).
    pub fn to_gray(&self) -> image::GrayImage {
        let raw = self
            .data
            .iter()
            .map(|&v| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8)
            .collect();
        image::GrayImage::from_raw(self.width as u32, self.height as u32, raw).expect("plane size matches its data")
    }
}

/// Averages `factor` x `factor` blocks of 8-bit pixels (area downscale) into [0, 1] floats; blocks
/// cut by the right or bottom edge average the pixels they have.
fn box_reduce(image: &image::GrayImage, factor: usize) -> Plane {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (rw, rh) = (w.div_ceil(factor), h.div_ceil(factor));
    let src = image.as_raw();
    let mut sums = vec![0u32; rw * rh];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let out = &mut sums[(y / factor) * rw..(y / factor + 1) * rw];
        for (chunk, acc) in row.chunks(factor).zip(out.iter_mut()) {
            *acc += chunk.iter().map(|&v| v as u32).sum::<u32>();
        }
    }
    let mut data = vec![0f32; rw * rh];
    for ry in 0..rh {
        let bh = factor.min(h - ry * factor);
        for rx in 0..rw {
            let bw = factor.min(w - rx * factor);
            data[ry * rw + rx] = sums[ry * rw + rx] as f32 / (255.0 * (bh * bw) as f32);
        }
    }
    Plane {
        width: rw,
        height: rh,
        data,
    }
}

/// Resamples `image` into an `out` sized plane: output pixel p takes the value around
/// `out_to_src(p)` in the source; outside the source is 0.
///
/// Anti-aliasing: bilinear interpolation is a tent filter of half-width 1 source pixel, right
/// while the warp's scale s (source pixels per output pixel) is at most 1; a 2400 -> 768 fit
/// has s ~ 3.1, and plain bilinear would alias (moire on trabecular bone, flickering thin
/// edges). So:
/// - 1 < s < 2: a tent of half-width s (at most 4 x 4 taps), the footprint of an output pixel;
/// - s >= 2: first average k x k blocks with k = floor(s) (exact area filter, one cheap pass
///   over the big image), then a tent of half-width sqrt(r^2 + 1) for the remaining scale
///   r = s / k in [1, 2). The extra unit width (blur widths add in quadrature) is needed
///   because a box filter leaks: 1-pixel stripes reduced by 3 still alternate by a third of
///   their contrast, and a tent of half-width r sampled at arbitrary phases passes up to 70 %
///   of that; with the extra width under 20 %.
///
/// The reduced pixel i sits at original k (i + 0.5) - 0.5 and that map is composed exactly, so
/// the prefilter moves nothing. (A full area sampler through a summed-area table would be a
/// little sharper, but needs a 64-bit table the size of the image: 760 MB for Aariz's largest.)
pub fn warp(image: &image::GrayImage, out_to_src: &Affine, out: ImageSize) -> Plane {
    let s = out_to_src.mean_scale();
    let k = s.floor().max(1.0) as usize;
    if k >= 2 {
        let kf = k as f64;
        let to_reduced = Affine([1.0 / kf, 0.0, 0.5 / kf - 0.5, 0.0, 1.0 / kf, 0.5 / kf - 0.5]);
        let r = s / kf;
        let reduced = box_reduce(image, k);
        resample_tent(&reduced, &out_to_src.then(&to_reduced), out, (r * r + 1.0).sqrt())
    } else if s > 1.0 + 1e-9 {
        resample_tent(&Plane::from_gray(image), out_to_src, out, s)
    } else {
        warp_bilinear(&Plane::from_gray(image), out_to_src, out)
    }
}

/// Largest tent half-width [`resample_tent`] supports.
const MAX_TENT: f64 = 3.0;

/// floor(v) for v > -2^20, by truncating a shifted positive number: one instruction, where
/// `f64::floor` is a library call on baseline x86-64 and showed up in profiles.
fn floor_shifted(v: f64) -> isize {
    const OFFSET: f64 = 1_048_576.0;
    (v + OFFSET) as isize - OFFSET as isize
}

/// Resamples a float plane with a tent filter of half-width `r` (1 <= r <= 3) source pixels;
/// outside the source is 0 (its weights still count, so borders fade as with bilinear).
pub fn resample_tent(src: &Plane, out_to_src: &Affine, out: ImageSize, r: f64) -> Plane {
    let r = r.clamp(1.0, MAX_TENT);
    // A fixed tap count per axis lets the compiler unroll the inner loops.
    if r <= 2.0 {
        resample_tent_taps::<4>(src, out_to_src, out, r)
    } else {
        resample_tent_taps::<6>(src, out_to_src, out, r)
    }
}

/// [`resample_tent`] with `N = 2 ceil(r)` taps per axis, starting at floor(x) - N/2 + 1: every
/// source pixel closer than r is covered; farther ones get weight 0.
fn resample_tent_taps<const N: usize>(src: &Plane, out_to_src: &Affine, out: ImageSize, r: f64) -> Plane {
    let inv_r = (1.0 / r) as f32;
    let (sw, sh) = (src.width as isize, src.height as isize);
    let half = (N / 2) as isize;
    map_from_source(src, out_to_src, out, r, |x, y| {
        let (x0, y0) = (floor_shifted(x) - half + 1, floor_shifted(y) - half + 1);
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        let mut wx = [0f32; N];
        let mut wy = [0f32; N];
        for i in 0..N {
            wx[i] = (1.0 - (fx - i as f32).abs() * inv_r).max(0.0);
            wy[i] = (1.0 - (fy - i as f32).abs() * inv_r).max(0.0);
        }
        let norm = wx.iter().sum::<f32>() * wy.iter().sum::<f32>();
        let mut acc = 0.0f32;
        if x0 >= 0 && y0 >= 0 && x0 + N as isize <= sw && y0 + N as isize <= sh {
            let base = (y0 * sw + x0) as usize;
            for (j, wyj) in wy.iter().enumerate() {
                let line = &src.data[base + j * sw as usize..][..N];
                let mut racc = 0.0f32;
                for i in 0..N {
                    racc += wx[i] * line[i];
                }
                acc += wyj * racc;
            }
        } else {
            for (j, wyj) in wy.iter().enumerate() {
                let yy = y0 + j as isize;
                if yy < 0 || yy >= sh {
                    continue;
                }
                for (i, wxi) in wx.iter().enumerate() {
                    let xx = x0 + i as isize;
                    if xx >= 0 && xx < sw {
                        acc += wyj * wxi * src.data[(yy * sw + xx) as usize];
                    }
                }
            }
        }
        acc / norm
    })
}

/// Plain bilinear resampling (2 x 2 source pixels per output pixel), outside = 0.
pub fn warp_bilinear(src: &Plane, out_to_src: &Affine, out: ImageSize) -> Plane {
    let (sw, sh) = (src.width as isize, src.height as isize);
    let at = |x: isize, y: isize| -> f32 {
        if x >= 0 && y >= 0 && x < sw && y < sh {
            src.data[(y * sw + x) as usize]
        } else {
            0.0
        }
    };
    map_from_source(src, out_to_src, out, 1.0, |x, y| {
        let (x0, y0) = (floor_shifted(x), floor_shifted(y));
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        let inside = x0 >= 0 && y0 >= 0 && x0 + 1 < sw && y0 + 1 < sh;
        let (p00, p10, p01, p11) = if inside {
            let i = (y0 * sw + x0) as usize;
            let w = sw as usize;
            (src.data[i], src.data[i + 1], src.data[i + w], src.data[i + w + 1])
        } else {
            (at(x0, y0), at(x0 + 1, y0), at(x0, y0 + 1), at(x0 + 1, y0 + 1))
        };
        let top = p00 + (p10 - p00) * fx;
        let bottom = p01 + (p11 - p01) * fx;
        top + (bottom - top) * fy
    })
}

/// The `out`-sized plane whose pixel `(u, v)` is `sample(x, y)` at its source point
/// `(x, y) = out_to_src(u, v)`, or 0 where that point lies `reach` or more pixels outside `src`
/// (`x <= -reach` or `x >= width - 1 + reach`, likewise `y`), where no filter tap reaches it.
fn map_from_source(
    src: &Plane,
    out_to_src: &Affine,
    out: ImageSize,
    reach: f64,
    mut sample: impl FnMut(f64, f64) -> f32,
) -> Plane {
    let [a, b, c, d, e, f] = out_to_src.0;
    let (sw, sh) = (src.width as f64, src.height as f64);
    let mut data = vec![0f32; out.width * out.height];
    for (v, row) in data.chunks_mut(out.width).enumerate() {
        let v = v as f64;
        let (sx, sy) = (b * v + c, e * v + f);
        for (u, px) in row.iter_mut().enumerate() {
            let x = a * u as f64 + sx;
            let y = d * u as f64 + sy;
            if x <= -reach || y <= -reach || x >= sw - 1.0 + reach || y >= sh - 1.0 + reach {
                continue;
            }
            *px = sample(x, y);
        }
    }
    Plane {
        width: out.width,
        height: out.height,
        data,
    }
}

/// Normalised 1-D Gaussian taps for offsets -radius..=radius.
pub fn gaussian_kernel(sigma: f64, radius: usize) -> Vec<f32> {
    let taps: Vec<f64> = (-(radius as isize)..=radius as isize)
        .map(|i| libm::exp(-((i * i) as f64) / (2.0 * sigma * sigma)))
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter().map(|t| (t / sum) as f32).collect()
}

/// Separable Gaussian blur in place, edges replicated.
pub fn gaussian_blur(plane: &mut Plane, sigma: f64) {
    if sigma <= 0.0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let taps = gaussian_kernel(sigma, radius);
    let (w, h) = (plane.width, plane.height);
    let r = radius as isize;
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = &plane.data[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0.0;
            for (t, tap) in taps.iter().enumerate() {
                let sx = (x as isize + t as isize - r).clamp(0, w as isize - 1) as usize;
                acc += tap * row[sx];
            }
            tmp[y * w + x] = acc;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (t, tap) in taps.iter().enumerate() {
                let sy = (y as isize + t as isize - r).clamp(0, h as isize - 1) as usize;
                acc += tap * tmp[sy * w + x];
            }
            plane.data[y * w + x] = acc;
        }
    }
}
