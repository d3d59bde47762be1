//! Training augmentation, and the one function that turns a decoded image and its landmarks into
//! a network-sized input.
//!
//! Geometry (rotation, scale, translation, optional flip) is composed with the letterbox fit
//! into ONE affine map from original to network pixels, so the image is resampled once and the
//! landmarks move by exactly the same matrix. A draw that would push a landmark out of the frame
//! is redrawn. Photometric changes (blur, gamma, contrast, brightness, noise) act on the
//! resampled [0, 1] image.
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::geometry::{gaussian_blur, letterbox, warp, Affine, ImageSize, Plane};

/// Augmentation ranges; each part is disabled by setting its range to zero.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Rotation drawn uniformly in +-`rotation_deg` degrees, about the network image centre.
    pub rotation_deg: f64,
    /// Isotropic scale drawn uniformly in [1 - scale, 1 + scale].
    pub scale: f64,
    /// Translation drawn uniformly in +-`translate` times the network width / height.
    pub translate: f64,
    /// Horizontal flip with probability 0.5. Off by default: lateral cephalograms all face the
    /// same way, so a flip only teaches the network a pose it never sees.
    pub hflip: bool,
    /// Additive brightness drawn in +-`brightness` (image range is [0, 1]).
    pub brightness: f32,
    /// Contrast factor drawn in [1 - contrast, 1 + contrast], about mid-grey.
    pub contrast: f32,
    /// Gamma drawn log-uniformly in [1 / (1 + gamma), 1 + gamma].
    pub gamma: f32,
    /// Gaussian noise with a standard deviation drawn in [0, noise].
    pub noise: f32,
    /// Probability of a Gaussian blur, and its largest sigma in network pixels.
    pub blur_probability: f32,
    pub blur_sigma: f32,
    /// Geometric draws tried before falling back to the plain letterbox.
    pub max_tries: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            rotation_deg: 10.0,
            scale: 0.1,
            translate: 0.05,
            hflip: false,
            brightness: 0.1,
            contrast: 0.2,
            gamma: 0.25,
            noise: 0.02,
            blur_probability: 0.2,
            blur_sigma: 1.0,
            max_tries: 20,
        }
    }
}

/// A network-sized input: the image in [0, 1], the landmarks in network pixels, and the map that
/// produced it.
#[derive(Debug, Clone)]
pub struct Transformed {
    pub image: Plane,
    pub points: Vec<[f64; 2]>,
    pub original_to_net: Affine,
}

/// True when every point lies within the network frame, whose extent under the pixel-centre
/// convention is [-0.5, W - 0.5] x [-0.5, H - 0.5] (as for any image).
pub fn all_inside(points: &[[f64; 2]], net: ImageSize) -> bool {
    points
        .iter()
        .all(|p| p[0] >= -0.5 && p[1] >= -0.5 && p[0] <= net.width as f64 - 0.5 && p[1] <= net.height as f64 - 0.5)
}

/// Draws the original -> network map: letterbox, then a random flip, rotation and scale about
/// the network centre, then a translation. Redraws (up to `max_tries`) while a landmark would
/// leave the frame; falls back to the plain letterbox.
pub fn draw_geometry<R: Rng>(
    rng: &mut R,
    cfg: &AugmentConfig,
    width: u32,
    height: u32,
    landmarks: &[[f64; 2]],
    net: ImageSize,
) -> Affine {
    let base = letterbox(width, height, net);
    let (cx, cy) = ((net.width as f64 - 1.0) / 2.0, (net.height as f64 - 1.0) / 2.0);
    for _ in 0..cfg.max_tries {
        let angle = symmetric(rng, cfg.rotation_deg).to_radians();
        let scale = 1.0 + symmetric(rng, cfg.scale);
        let tx = symmetric(rng, cfg.translate) * net.width as f64;
        let ty = symmetric(rng, cfg.translate) * net.height as f64;
        let flip = cfg.hflip && rng.random_bool(0.5);
        let mut map = base.then(&Affine::translation(-cx, -cy));
        if flip {
            map = map.then(&Affine::scaling(-1.0, 1.0));
        }
        let map = map
            .then(&Affine::rotation(angle))
            .then(&Affine::scaling(scale, scale))
            .then(&Affine::translation(cx + tx, cy + ty));
        let moved: Vec<[f64; 2]> = landmarks.iter().map(|&p| map.apply(p)).collect();
        if all_inside(&moved, net) {
            return map;
        }
    }
    base
}

/// Uniform in [-r, r] (exactly 0 when r is 0, without consuming randomness differently).
pub(crate) fn symmetric<R: Rng>(rng: &mut R, r: f64) -> f64 {
    (rng.random::<f64>() * 2.0 - 1.0) * r
}

/// Draws and applies the photometric part in place; the image stays in [0, 1].
pub fn photometric<R: Rng>(rng: &mut R, cfg: &AugmentConfig, image: &mut Plane) {
    let blur = rng.random::<f32>() < cfg.blur_probability;
    let blur_sigma = rng.random::<f32>() * cfg.blur_sigma;
    // Transcendental functions from the pure-Rust libm (here and below), not the platform's C
    // library: the same seed gives the same augmentation on every platform.
    let log_gamma = symmetric(rng, libm::log(1.0 + cfg.gamma as f64)) as f32;
    let contrast = 1.0 + symmetric(rng, cfg.contrast as f64) as f32;
    let brightness = symmetric(rng, cfg.brightness as f64) as f32;
    let noise_std = rng.random::<f32>() * cfg.noise;
    if blur && blur_sigma > 0.05 {
        gaussian_blur(image, blur_sigma as f64);
    }
    // Gamma, contrast and brightness form one monotonic curve: tabulate it (a powf per pixel
    // is most of the cost otherwise); 4096 steps are far finer than the 8-bit input.
    let gamma = libm::expf(log_gamma);
    const STEPS: usize = 4096;
    let curve: Vec<f32> = (0..STEPS)
        .map(|i| (libm::powf(i as f32 / (STEPS - 1) as f32, gamma) - 0.5) * contrast + 0.5 + brightness)
        .collect();
    for v in image.data.iter_mut() {
        *v = curve[(v.clamp(0.0, 1.0) * (STEPS - 1) as f32 + 0.5) as usize];
    }
    if noise_std > 0.0 {
        if let Ok(normal) = Normal::new(0.0f32, noise_std) {
            for v in image.data.iter_mut() {
                *v += normal.sample(rng);
            }
        }
    }
    for v in image.data.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
}

/// Fits a decoded image and its landmarks (original pixels) into the network frame: the plain
/// letterbox when `augment` is `None`, else one random augmentation drawn from `rng`.
pub fn transform_sample<R: Rng>(
    image: &image::GrayImage,
    landmarks: &[[f64; 2]],
    net: ImageSize,
    augment: Option<(&AugmentConfig, &mut R)>,
) -> Transformed {
    let (w, h) = (image.width(), image.height());
    let resample = |map: Affine| Transformed {
        image: warp(image, &map.inverse(), net),
        points: landmarks.iter().map(|&p| map.apply(p)).collect(),
        original_to_net: map,
    };
    match augment {
        None => resample(letterbox(w, h, net)),
        Some((cfg, rng)) => {
            let mut out = resample(draw_geometry(rng, cfg, w, h, landmarks, net));
            photometric(rng, cfg, &mut out.image);
            out
        }
    }
}
