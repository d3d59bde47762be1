//! Geometry: affine algebra, the letterbox round trip, the resampler's exactness and
//! anti-aliasing, and the dot-warp test of augmentation.
use cephalo::data::augment::{draw_geometry, transform_sample, AugmentConfig};
use cephalo::data::geometry::{gaussian_blur, letterbox, to_original, warp, warp_bilinear, Affine, ImageSize, Plane};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_affine(rng: &mut ChaCha8Rng) -> Affine {
    let mut m = [0.0; 6];
    for v in m.iter_mut() {
        *v = rng.random_range(-2.0..2.0);
    }
    m[0] += 3.0; // keep it well conditioned
    m[4] += 3.0;
    Affine(m)
}

#[test]
fn data_affine_compose_and_inverse() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..100 {
        let (a, b) = (random_affine(&mut rng), random_affine(&mut rng));
        let p = [rng.random_range(-100.0..100.0), rng.random_range(-100.0..100.0)];
        let via_both = b.apply(a.apply(p));
        let composed = a.then(&b).apply(p);
        assert!((via_both[0] - composed[0]).abs() < 1e-9 && (via_both[1] - composed[1]).abs() < 1e-9);
        let back = a.inverse().apply(a.apply(p));
        assert!((back[0] - p[0]).abs() < 1e-9 && (back[1] - p[1]).abs() < 1e-9);
    }
    let r = Affine::rotation(std::f64::consts::FRAC_PI_2).apply([1.0, 0.0]);
    assert!((r[0]).abs() < 1e-12 && (r[1] - 1.0).abs() < 1e-12, "+x turns to +y");
}

#[test]
fn data_letterbox_maps_extent_to_extent_and_round_trips() {
    let net = ImageSize {
        height: 768,
        width: 768,
    };
    let m = letterbox(1935, 2400, net);
    let s = 768.0 / 2400.0;
    let ox = (768.0 - 1935.0 * s) / 2.0;
    let tl = m.apply([-0.5, -0.5]);
    let br = m.apply([1934.5, 2399.5]);
    assert!(
        (tl[0] - (ox - 0.5)).abs() < 1e-9 && (tl[1] + 0.5).abs() < 1e-9,
        "{tl:?}"
    );
    assert!(
        (br[0] - (ox + 1935.0 * s - 0.5)).abs() < 1e-9 && (br[1] - 767.5).abs() < 1e-9,
        "{br:?}"
    );
    // Network points map back to original pixels within 1e-3 px, for the letterbox and for
    // augmented maps.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let lm: Vec<[f64; 2]> = (0..19)
        .map(|_| [rng.random_range(300.0..1600.0), rng.random_range(400.0..2000.0)])
        .collect();
    for map in [
        m,
        draw_geometry(&mut rng, &AugmentConfig::default(), 1935, 2400, &lm, net),
    ] {
        let net_points: Vec<[f64; 2]> = lm.iter().map(|&p| map.apply(p)).collect();
        let back = to_original(&net_points, &map.inverse());
        for (b, p) in back.iter().zip(&lm) {
            assert!((b[0] - p[0]).abs() < 1e-3 && (b[1] - p[1]).abs() < 1e-3);
        }
    }
    // A landscape image is padded top and bottom instead.
    let wide = letterbox(
        400,
        200,
        ImageSize {
            height: 100,
            width: 100,
        },
    );
    assert!((wide.apply([-0.5, -0.5])[1] - 24.5).abs() < 1e-9);
}

fn random_gray(w: u32, h: u32, seed: u64) -> image::GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    image::GrayImage::from_fn(w, h, |_, _| image::Luma([rng.random::<u8>()]))
}

#[test]
fn data_warp_identity_and_integer_shift_are_exact() {
    let img = random_gray(37, 23, 3);
    let out = warp(&img, &Affine::IDENTITY, ImageSize { height: 23, width: 37 });
    assert_eq!(out.to_gray(), img);
    // Output (x, y) reads source (x + 3, y - 2).
    let out = warp(
        &img,
        &Affine::translation(3.0, -2.0),
        ImageSize { height: 23, width: 37 },
    );
    for y in 0..23 {
        for x in 0..37 {
            let (sx, sy) = (x as i64 + 3, y as i64 - 2);
            let want = if sx < 37 && sy >= 0 {
                img.get_pixel(sx as u32, sy as u32)[0] as f32 / 255.0
            } else {
                0.0
            };
            assert!((out.data[y * 37 + x] - want).abs() < 1e-6);
        }
    }
    // Half-pixel shift: the mean of two neighbours.
    let out = warp(
        &img,
        &Affine::translation(0.5, 0.0),
        ImageSize { height: 23, width: 37 },
    );
    let want = (img.get_pixel(4, 5)[0] as f32 + img.get_pixel(5, 5)[0] as f32) / 510.0;
    assert!((out.data[5 * 37 + 4] - want).abs() < 1e-6);
}

#[test]
fn data_warp_prefilter_prevents_aliasing() {
    // One-pixel stripes, downscaled 3.3x: the honest answer is flat mid-grey.
    let stripes = image::GrayImage::from_fn(660, 660, |x, _| image::Luma([if x % 2 == 0 { 255 } else { 0 }]));
    let net = ImageSize {
        height: 200,
        width: 200,
    };
    let map = letterbox(660, 660, net).inverse();
    let std = |p: &Plane| {
        let inner: Vec<f32> = (10..190)
            .flat_map(|y| (10..190).map(move |x| (y, x)))
            .map(|(y, x)| p.data[y * 200 + x])
            .collect();
        let mean = inner.iter().sum::<f32>() / inner.len() as f32;
        (inner.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / inner.len() as f32).sqrt()
    };
    let filtered = warp(&stripes, &map, net);
    let aliased = warp_bilinear(&Plane::from_gray(&stripes), &map, net);
    assert!(std(&filtered) < 0.05, "prefiltered std {}", std(&filtered));
    assert!(
        std(&aliased) > 0.2,
        "the test must be able to see aliasing: {}",
        std(&aliased)
    );
}

/// Bright Gaussian dots of `sigma` px at `points` on a dark `w` x `h` image.
fn dots(w: u32, h: u32, points: &[[f64; 2]], sigma: f64) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let v: f64 = points
            .iter()
            .map(|p| (-((x as f64 - p[0]).powi(2) + (y as f64 - p[1]).powi(2)) / (2.0 * sigma * sigma)).exp())
            .sum();
        image::Luma([(v.min(1.0) * 255.0).round() as u8])
    })
}

/// Intensity-weighted centroid in a (2r+1)^2 window around `guess`.
fn centroid(p: &Plane, guess: [f64; 2], r: isize) -> [f64; 2] {
    let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
    let (gx, gy) = (guess[0].round() as isize, guess[1].round() as isize);
    for y in gy - r..=gy + r {
        for x in gx - r..=gx + r {
            if x >= 0 && y >= 0 && (x as usize) < p.width && (y as usize) < p.height {
                let v = p.data[y as usize * p.width + x as usize] as f64;
                sx += v * x as f64;
                sy += v * y as f64;
                s += v;
            }
        }
    }
    [sx / s, sy / s]
}

fn dot_test(w: u32, h: u32, sigma: f64, net: ImageSize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A grid of well separated dots away from the border.
    let mut points = Vec::new();
    for gy in 1..5 {
        for gx in 1..4 {
            points.push([
                w as f64 * gx as f64 / 4.0 + rng.random_range(-3.0..3.0),
                h as f64 * gy as f64 / 5.0 + rng.random_range(-3.0..3.0),
            ]);
        }
    }
    let img = dots(w, h, &points, sigma);
    let cfg = AugmentConfig {
        rotation_deg: 20.0,
        scale: 0.2,
        translate: 0.05,
        brightness: 0.0,
        contrast: 0.0,
        gamma: 0.0,
        noise: 0.0,
        blur_probability: 0.0,
        ..AugmentConfig::default()
    };
    let t = transform_sample(&img, &points, net, Some((&cfg, &mut rng)));
    assert_ne!(
        t.original_to_net,
        letterbox(w, h, net),
        "the draw must be a real augmentation"
    );
    for (k, &p) in t.points.iter().enumerate() {
        let c = centroid(&t.image, p, 6);
        let err = ((c[0] - p[0]).powi(2) + (c[1] - p[1]).powi(2)).sqrt();
        assert!(
            err < 0.5,
            "dot {k}: found at {c:?}, landmark moved to {p:?} (error {err:.3} px)"
        );
    }
}

#[test]
fn data_augment_dot_warp_follows_landmarks() {
    for seed in 0..4 {
        dot_test(
            240,
            300,
            2.0,
            ImageSize {
                height: 256,
                width: 256,
            },
            seed,
        );
    }
}

#[test]
fn data_augment_dot_warp_with_prefilter() {
    // ~3.3x downscale: goes through the box prefilter path.
    for seed in 10..12 {
        dot_test(
            720,
            900,
            5.0,
            ImageSize {
                height: 272,
                width: 272,
            },
            seed,
        );
    }
}

#[test]
fn data_augment_redraws_to_keep_landmarks_inside() {
    let net = ImageSize { height: 64, width: 64 };
    // Landmarks in the corners leave the frame under most rotations; every draw must keep them.
    let lm = [[0.0, 0.0], [99.0, 0.0], [0.0, 99.0], [99.0, 99.0], [50.0, 50.0]];
    let cfg = AugmentConfig {
        rotation_deg: 30.0,
        scale: 0.3,
        ..AugmentConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..50 {
        let m = draw_geometry(&mut rng, &cfg, 100, 100, &lm, net);
        for p in lm {
            let q = m.apply(p);
            assert!(q[0] >= -0.5 && q[1] >= -0.5 && q[0] <= 63.5 && q[1] <= 63.5, "{q:?}");
        }
    }
}

#[test]
fn data_augment_photometric_stays_in_range_and_changes_pixels() {
    let img = random_gray(64, 64, 7);
    let lm = [[10.0, 10.0]];
    let net = ImageSize { height: 64, width: 64 };
    let cfg = AugmentConfig {
        brightness: 0.3,
        contrast: 0.5,
        noise: 0.1,
        blur_probability: 1.0,
        ..AugmentConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let t = transform_sample(&img, &lm, net, Some((&cfg, &mut rng)));
    assert!(t.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    let plain = transform_sample::<ChaCha8Rng>(&img, &lm, net, None);
    assert_eq!(plain.original_to_net, Affine::IDENTITY.then(&letterbox(64, 64, net)));
    let diff: f32 = t
        .image
        .data
        .iter()
        .zip(&plain.image.data)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(diff / 4096.0 > 0.01);
}

#[test]
fn data_gaussian_blur_keeps_constants_and_mass() {
    let mut p = Plane {
        width: 30,
        height: 20,
        data: vec![0.4; 600],
    };
    gaussian_blur(&mut p, 1.5);
    assert!(p.data.iter().all(|v| (v - 0.4).abs() < 1e-5));
    let mut p = Plane {
        width: 31,
        height: 31,
        data: vec![0.0; 961],
    };
    p.data[15 * 31 + 15] = 1.0;
    gaussian_blur(&mut p, 1.0);
    let mass: f32 = p.data.iter().sum();
    assert!(
        (mass - 1.0).abs() < 1e-5 && (p.data[15 * 31 + 15] - 0.159).abs() < 0.01,
        "{}",
        p.data[15 * 31 + 15]
    );
}

#[test]
fn data_augment_args_map_to_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        aug: cephalo::data::cli::AugmentArgs,
    }
    let cli = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(cli.aug.to_config().unwrap(), Some(AugmentConfig::default()));
    let cli = Cli::try_parse_from(["x", "--aug-rotation", "5", "--aug-hflip"]).unwrap();
    let cfg = cli.aug.to_config().unwrap().unwrap();
    assert_eq!((cfg.rotation_deg, cfg.hflip), (5.0, true));
    assert_eq!(
        Cli::try_parse_from(["x", "--no-augment"])
            .unwrap()
            .aug
            .to_config()
            .unwrap(),
        None
    );
    let err = Cli::try_parse_from(["x", "--aug-scale", "-1"]).map(|c| c.aug.to_config());
    assert!(!matches!(err, Ok(Ok(_))), "a negative range is rejected");
}

/// The tent resampler against a naive sum over every source pixel.
#[test]
fn data_resample_tent_matches_naive_reference() {
    use cephalo::data::geometry::resample_tent;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let src = Plane {
        width: 23,
        height: 17,
        data: (0..23 * 17).map(|_| rng.random::<f32>()).collect(),
    };
    let out = ImageSize { height: 9, width: 11 };
    for r in [1.0, 1.37, 2.0, 2.6] {
        let map = Affine::rotation(0.3)
            .then(&Affine::scaling(1.9, 1.9))
            .then(&Affine::translation(-2.0, 1.5));
        let got = resample_tent(&src, &map, out, r);
        for v in 0..out.height {
            for u in 0..out.width {
                let [x, y] = map.apply([u as f64, v as f64]);
                let (mut acc, mut norm) = (0.0f64, 0.0f64);
                // Weights over all integer positions near (x, y), in or out of the image.
                for j in (y - 4.0).floor() as i64..=(y + 4.0).ceil() as i64 {
                    for i in (x - 4.0).floor() as i64..=(x + 4.0).ceil() as i64 {
                        let w = (1.0 - (x - i as f64).abs() / r).max(0.0) * (1.0 - (y - j as f64).abs() / r).max(0.0);
                        norm += w;
                        if i >= 0 && j >= 0 && i < 23 && j < 17 {
                            acc += w * src.data[(j * 23 + i) as usize] as f64;
                        }
                    }
                }
                let want = if x <= -r || y <= -r || x >= 22.0 + r || y >= 16.0 + r {
                    0.0
                } else {
                    acc / norm
                };
                let g = got.data[v * out.width + u] as f64;
                assert!((g - want).abs() < 1e-5, "r={r} ({u},{v}): {g} vs {want}");
            }
        }
    }
}

#[test]
fn data_image_size_from_flag_values() {
    assert_eq!(
        ImageSize::from_hw(&[768, 640]).unwrap(),
        ImageSize {
            height: 768,
            width: 640
        }
    );
    for bad in [&[768][..], &[768, 768, 3], &[0, 768], &[768, 100000]] {
        assert!(ImageSize::from_hw(bad)
            .unwrap_err()
            .to_string()
            .contains("--image-size"));
    }
}
