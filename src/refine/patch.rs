//! Where a patch lies in the original image, and cutting it.
//!
//! A patch is `size` x `size` network pixels; its centre pixel ((size - 1) / 2 under the
//! pixel-centre convention) sits on the chosen centre in the original image, and one patch pixel
//! spans `spacing` original pixels, turned by `rotation` (augmentation). That map is an
//! [`Affine`] like every other in the pipeline, so a heatmap peak found in the patch maps back
//! to original pixels exactly with it.
//!
//! Cutting goes through [`warp`], the global loader's exact anti-aliased resampler, on a crop of
//! the image just larger than the patch's footprint (warping the whole film for each 64 x 64
//! patch would cost a full pass over 4.6 M pixels). The crop's origin is aligned to warp's
//! box-filter blocks, so the result is the same as warping the whole image. What lies outside
//! the image is black (0), as in the global letterbox: a patch partly outside is padded, never
//! refused.
use image::GrayImage;

use crate::data::geometry::{warp, Affine, ImageSize, Plane};

/// The map patch pixels -> original pixels of a `size` x `size` patch centred on `centre`
/// (original pixels), `spacing` original pixels per patch pixel, turned by `rotation` radians.
pub fn patch_to_original(centre: [f64; 2], spacing: f64, size: usize, rotation: f64) -> Affine {
    let mid = (size as f64 - 1.0) / 2.0;
    Affine::translation(-mid, -mid)
        .then(&Affine::rotation(rotation))
        .then(&Affine::scaling(spacing, spacing))
        .then(&Affine::translation(centre[0], centre[1]))
}

/// A patch centre inside the image: a point predicted outside the film (or a non-finite one) is
/// moved to the nearest pixel of the image (the image centre for a non-finite point), so its
/// patch still shows the film next to it rather than black.
pub fn clamp_to_image(p: [f64; 2], width: u32, height: u32) -> [f64; 2] {
    let (w, h) = (width as f64 - 1.0, height as f64 - 1.0);
    if !(p[0].is_finite() && p[1].is_finite()) {
        return [w / 2.0, h / 2.0];
    }
    [p[0].clamp(0.0, w.max(0.0)), p[1].clamp(0.0, h.max(0.0))]
}

/// Cuts the patch whose pixels map to the original image by `patch_to_original`: the image
/// resampled by [`warp`] (values in [0, 1]), black where the patch leaves the image.
pub fn cut_patch(image: &GrayImage, patch_to_original: &Affine, size: usize) -> Plane {
    let out = ImageSize {
        height: size,
        width: size,
    };
    let edge = size as f64 - 0.5;
    let corners = [[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]].map(|c| patch_to_original.apply(c));
    let min = |i: usize| corners.iter().map(|c| c[i]).fold(f64::INFINITY, f64::min);
    let max = |i: usize| corners.iter().map(|c| c[i]).fold(f64::NEG_INFINITY, f64::max);
    // warp box-filters k x k blocks (k = floor of the scale) and then reaches at most about
    // 2.3 blocks further with its tent: a margin of 4 blocks and 2 pixels covers every tap.
    let k = patch_to_original.mean_scale().floor().max(1.0) as i64;
    let margin = 4 * k + 2;
    let align = |v: i64| v.div_euclid(k) * k;
    let x0 = align(min(0).floor() as i64 - margin);
    let y0 = align(min(1).floor() as i64 - margin);
    let x1 = max(0).ceil() as i64 + margin;
    let y1 = max(1).ceil() as i64 + margin;
    let (cw, ch) = ((x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32);
    let mut crop = GrayImage::new(cw, ch);
    let (iw, ih) = (image.width() as i64, image.height() as i64);
    // The part of the crop that lies on the image; the rest stays 0.
    let (sx0, sx1) = (x0.max(0), (x1 + 1).min(iw));
    let (sy0, sy1) = (y0.max(0), (y1 + 1).min(ih));
    if sx0 < sx1 && sy0 < sy1 {
        let src = image.as_raw();
        let dst: &mut [u8] = &mut crop;
        let len = (sx1 - sx0) as usize;
        for y in sy0..sy1 {
            let from = (y * iw + sx0) as usize;
            let to = ((y - y0) * cw as i64 + (sx0 - x0)) as usize;
            dst[to..to + len].copy_from_slice(&src[from..from + len]);
        }
    }
    let to_crop = patch_to_original.then(&Affine::translation(-(x0 as f64), -(y0 as f64)));
    warp(&crop, &to_crop, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dim textured image with a bright 7x7 dot centred on `dot` (large enough to stay the
    /// brightest spot when a patch samples the film at 3 pixels per patch pixel).
    fn film(width: u32, height: u32, dot: [u32; 2]) -> GrayImage {
        GrayImage::from_fn(width, height, |x, y| {
            if x.abs_diff(dot[0]) <= 3 && y.abs_diff(dot[1]) <= 3 {
                image::Luma([255])
            } else {
                image::Luma([((x + 2 * y) % 60) as u8])
            }
        })
    }

    /// The centroid of the patch's bright pixels (the dot; the texture stays below 0.25).
    fn bright_centroid(p: &Plane) -> [f64; 2] {
        let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
        for (i, &v) in p.data.iter().enumerate() {
            if v > 0.4 {
                let w = v as f64;
                sx += w * (i % p.width) as f64;
                sy += w * (i / p.width) as f64;
                sw += w;
            }
        }
        assert!(sw > 0.0, "no bright pixel in the patch");
        [sx / sw, sy / sw]
    }

    #[test]
    fn patch_and_original_coordinates_round_trip() {
        let map = patch_to_original([812.25, 1033.5], 3.0, 64, 0.2);
        let back = map.inverse();
        for p in [[0.0, 0.0], [31.5, 31.5], [63.0, 10.0], [-4.0, 70.0]] {
            let q = back.apply(map.apply(p));
            assert!(
                (q[0] - p[0]).abs() < 1e-9 && (q[1] - p[1]).abs() < 1e-9,
                "{p:?} -> {q:?}"
            );
        }
        // The patch's centre pixel is the centre; one patch pixel is `spacing` original pixels.
        let c = map.apply([31.5, 31.5]);
        assert!((c[0] - 812.25).abs() < 1e-9 && (c[1] - 1033.5).abs() < 1e-9);
        assert!((map.mean_scale() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_point_of_the_film_is_found_where_the_map_sends_it() {
        let dot = [700u32, 900u32];
        let image = film(1200, 1500, dot);
        for (rotation, spacing) in [(0.0, 1.0), (0.3, 2.5), (-0.2, 3.0)] {
            // Centre off the dot, so its place in the patch is not the middle.
            let map = patch_to_original([690.0, 915.0], spacing, 64, rotation);
            let patch = cut_patch(&image, &map, 64);
            let found = map.apply(bright_centroid(&patch));
            let miss = (found[0] - dot[0] as f64).hypot(found[1] - dot[1] as f64);
            assert!(
                miss <= spacing,
                "rotation {rotation}, spacing {spacing}: dot found at {found:?}"
            );
        }
    }

    #[test]
    fn cutting_from_a_crop_equals_warping_the_whole_image() {
        let image = film(900, 700, [400, 300]);
        for spacing in [0.8, 1.5, 2.0, 3.3] {
            let map = patch_to_original([420.3, 310.7], spacing, 32, 0.15);
            let patch = cut_patch(&image, &map, 32);
            let whole = warp(&image, &map, ImageSize { height: 32, width: 32 });
            let worst = patch
                .data
                .iter()
                .zip(&whole.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "spacing {spacing}: differs by {worst}");
        }
    }

    #[test]
    fn a_patch_partly_outside_the_image_is_padded_with_black() {
        let image = GrayImage::from_pixel(300, 200, image::Luma([200]));
        // Centred on the top-left corner: about three quarters of the patch is off the film.
        let map = patch_to_original([0.0, 0.0], 2.0, 32, 0.0);
        let patch = cut_patch(&image, &map, 32);
        assert_eq!(patch.data.len(), 32 * 32);
        let at = |x: usize, y: usize| patch.data[y * 32 + x];
        assert_eq!(at(0, 0), 0.0, "off the film is black");
        assert!((at(28, 28) - 200.0 / 255.0).abs() < 1e-5, "on the film is the film");
        // Entirely outside: all black, no panic.
        let far = patch_to_original([-5000.0, 9000.0], 2.0, 32, 0.0);
        assert!(cut_patch(&image, &far, 32).data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn centres_outside_the_image_are_clamped_onto_it() {
        assert_eq!(clamp_to_image([-40.0, 50.0], 100, 80), [0.0, 50.0]);
        assert_eq!(clamp_to_image([130.0, 95.5], 100, 80), [99.0, 79.0]);
        assert_eq!(clamp_to_image([f64::NAN, 3.0], 101, 81), [50.0, 40.0]);
        assert_eq!(clamp_to_image([12.5, 7.25], 100, 80), [12.5, 7.25]);
    }
}
