//! Heatmap targets and their decoding (docs/maths.md#heatmap-targets,
//! docs/maths.md#heatmap-decoding).
use cephalo::data::heatmap::{decode_argmax_quarter, decode_dark, encode, heatmap_to_image, image_to_heatmap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn data_heatmap_coordinate_convention() {
    // The centre of the first 4x4 block of image pixels (1.5) is heatmap pixel 0.
    assert_eq!(image_to_heatmap([1.5, 1.5], 4), [0.0, 0.0]);
    assert_eq!(image_to_heatmap([-0.5, 5.5], 4), [-0.5, 1.0]);
    let p = [123.37, 45.9];
    let q = heatmap_to_image(image_to_heatmap(p, 4), 4);
    assert!((q[0] - p[0]).abs() < 1e-12 && (q[1] - p[1]).abs() < 1e-12);
}

#[test]
fn data_heatmap_encode_values_and_layout() {
    let (h, w, sigma) = (20, 24, 2.0);
    let points = [[5.0, 6.0], [10.3, 12.7], [f64::NAN, 1.0]];
    let hm = encode(&points, h, w, sigma);
    assert_eq!(hm.len(), h * w * 3);
    assert_eq!(hm[(6 * w + 5) * 3], 1.0, "peak exactly 1 at an integer centre");
    for y in 0..h {
        for x in 0..w {
            for (k, p) in points.iter().enumerate().take(2) {
                let d2 = (x as f64 - p[0]).powi(2) + (y as f64 - p[1]).powi(2);
                let want = if d2 <= 9.0 * sigma * sigma {
                    (-d2 / (2.0 * sigma * sigma)).exp()
                } else {
                    0.0
                };
                let got = hm[(y * w + x) * 3 + k] as f64;
                assert!((got - want).abs() < 1e-6, "({x},{y}) k={k}: {got} vs {want}");
            }
            assert_eq!(hm[(y * w + x) * 3 + 2], 0.0, "a missing point gives an empty channel");
        }
    }
    assert!(hm.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn data_heatmap_dark_round_trip_within_005() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (h, w, k, sigma) = (48, 40, 8, 2.0);
    for _ in 0..20 {
        let points: Vec<[f64; 2]> = (0..k)
            .map(|_| {
                [
                    rng.random_range(4.0..w as f64 - 5.0),
                    rng.random_range(4.0..h as f64 - 5.0),
                ]
            })
            .collect();
        let hm = encode(&points, h, w, sigma);
        let dark = decode_dark(&hm, h, w, k, sigma);
        let quarter = decode_argmax_quarter(&hm, h, w, k);
        for c in 0..k {
            let (p, d, q) = (points[c], dark[c].point, quarter[c].point);
            let err = ((d[0] - p[0]).powi(2) + (d[1] - p[1]).powi(2)).sqrt();
            assert!(err < 0.05, "DARK: {d:?} vs {p:?} ({err})");
            // Quarter offset: within a quarter pixel plus the half-pixel argmax uncertainty.
            assert!(
                (q[0] - p[0]).abs() <= 0.5 && (q[1] - p[1]).abs() <= 0.5,
                "quarter: {q:?} vs {p:?}"
            );
            let peak = hm.iter().skip(c).step_by(k).cloned().fold(f32::MIN, f32::max);
            assert_eq!(dark[c].value, peak);
            assert_eq!(quarter[c].value, peak);
        }
    }
}

#[test]
fn data_heatmap_quarter_offset_direction() {
    let (h, w) = (16, 16);
    let hm = encode(&[[7.3, 8.0], [7.0, 7.8]], h, w, 2.0);
    let q = decode_argmax_quarter(&hm, h, w, 2);
    assert_eq!(q[0].point, [7.25, 8.0]);
    assert_eq!(q[1].point, [7.0, 7.75]);
}

#[test]
fn data_heatmap_dark_at_border_returns_argmax() {
    let (h, w) = (16, 16);
    let hm = encode(&[[0.0, 9.0]], h, w, 2.0);
    let d = decode_dark(&hm, h, w, 1, 2.0);
    assert_eq!(d[0].point, [0.0, 9.0]);
}

/// The batch form both engines use (`backend::cpu::heatmap::encode`, the GPU kernel's twin): every
/// element written over whatever the buffer held, each image its own `encode` of its landmarks, a
/// missing landmark an all-zero channel.
#[test]
fn data_heatmap_batch_encode_is_per_image_encode() {
    use cephalo::backend::cpu::heatmap;
    use cephalo::backend::HeatmapShape;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let shape = HeatmapShape::new(3, 17, 13, 4);
    let mut points: Vec<[f64; 2]> = (0..shape.n * shape.k)
        .map(|_| [rng.random_range(-3.0..16.0), rng.random_range(-3.0..20.0)])
        .collect();
    points[5] = [f64::NAN, 4.0];
    let mut out = vec![f32::NAN; shape.len()];
    heatmap::encode(&points, shape, 1.5, &mut out);
    let per_image = shape.h * shape.w * shape.k;
    for (i, maps) in out.chunks(per_image).enumerate() {
        let want = encode(&points[i * shape.k..(i + 1) * shape.k], shape.h, shape.w, 1.5);
        assert_eq!(maps, &want[..], "image {i}");
    }
    assert!((0..shape.h * shape.w).all(|p| out[per_image + p * shape.k + 1] == 0.0));
    assert!(out.iter().filter(|&&v| v > 0.5).count() >= 3, "few Gaussians drawn");
}
