//! Overlay pictures: the radiograph with each landmark marked and labelled by its symbol, the
//! analysis lines, and the measurements listed in a corner. Sizes scale with the image so labels
//! stay readable at full resolution (a 2400-pixel radiograph gets 3x larger glyphs than an 800).
use font8x8::UnicodeFonts;
use image::{GrayImage, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_hollow_circle_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

use super::analysis::Measurement;

const LANDMARK: Rgb<u8> = Rgb([255, 60, 40]);
const DOUBTFUL: Rgb<u8> = Rgb([255, 190, 0]);
const LABEL: Rgb<u8> = Rgb([255, 255, 120]);
const LINE: Rgb<u8> = Rgb([40, 200, 255]);
const SHADOW: Rgb<u8> = Rgb([0, 0, 0]);

/// What to draw for one image.
pub struct OverlayInput<'a> {
    pub image: &'a GrayImage,
    pub symbols: &'a [String],
    /// Original-image pixels.
    pub points: &'a [[f64; 2]],
    /// Doubtful landmarks (low confidence, or outside the image) are drawn in amber and marked
    /// with "?"; so are the measurements that rest on them.
    pub doubtful: &'a [bool],
    pub measurements: &'a [Measurement],
}

pub fn draw(input: &OverlayInput<'_>) -> RgbImage {
    let mut canvas = image::DynamicImage::ImageLuma8(input.image.clone()).to_rgb8();
    let short_side = canvas.width().min(canvas.height()) as f32;
    let unit = (short_side / 400.0).max(1.0);
    let glyph = unit.round().max(1.0) as u32;

    let index = |s: &str| input.symbols.iter().position(|x| x == s);
    for m in input.measurements {
        for (a, b) in &m.lines {
            if let (Some(i), Some(j)) = (index(a), index(b)) {
                thick_line(&mut canvas, input.points[i], input.points[j], unit * 0.8, LINE);
            }
        }
    }
    for (k, symbol) in input.symbols.iter().enumerate() {
        let [x, y] = input.points[k];
        let (cx, cy) = (x.round() as i32, y.round() as i32);
        let doubtful = input.doubtful.get(k).copied().unwrap_or(false);
        let color = if doubtful { DOUBTFUL } else { LANDMARK };
        let r = (3.0 * unit) as i32;
        draw_filled_circle_mut(&mut canvas, (cx, cy), r, color);
        draw_hollow_circle_mut(&mut canvas, (cx, cy), r + 1, SHADOW);
        let label = if doubtful { format!("{symbol}?") } else { symbol.clone() };
        text(&mut canvas, cx + r + 2, cy - (4 * glyph) as i32, &label, glyph, LABEL);
    }
    // The measurements, top left, on a dark panel so they stay legible over film labels.
    let lines: Vec<(String, Rgb<u8>)> = input
        .measurements
        .iter()
        .map(|m| {
            let color = if m.doubtful_landmarks.is_empty() {
                LINE
            } else {
                DOUBTFUL
            };
            (m.short_text(), color)
        })
        .collect();
    if let Some(longest) = lines.iter().map(|(l, _)| l.chars().count()).max() {
        let panel_w = (longest as u32 * 8 + 6) * glyph;
        let panel_h = (lines.len() as u32 * 10 + 6) * glyph;
        draw_filled_rect_mut(
            &mut canvas,
            Rect::at(glyph as i32, glyph as i32).of_size(panel_w, panel_h),
            SHADOW,
        );
    }
    let mut y = (4 * glyph) as i32;
    for (line, color) in &lines {
        text(&mut canvas, (4 * glyph) as i32, y, line, glyph, *color);
        y += (10 * glyph) as i32;
    }
    canvas
}

fn thick_line(canvas: &mut RgbImage, a: [f64; 2], b: [f64; 2], width: f32, color: Rgb<u8>) {
    let (dx, dy) = ((b[0] - a[0]) as f32, (b[1] - a[1]) as f32);
    let len = dx.hypot(dy).max(1e-6);
    let (nx, ny) = (-dy / len, dx / len);
    // Parallel one-pixel lines spread evenly across the width, centred on the segment.
    let span = width.max(1.0);
    let steps = span.ceil() as i32;
    for i in 0..steps {
        let t = span * ((i as f32 + 0.5) / steps as f32 - 0.5);
        let start = (a[0] as f32 + nx * t, a[1] as f32 + ny * t);
        let end = (b[0] as f32 + nx * t, b[1] as f32 + ny * t);
        draw_line_segment_mut(canvas, start, end, color);
    }
}

/// Draws `s` with the 8x8 bitmap font, each font pixel a `scale` x `scale` block, over a
/// one-block dark shadow so it reads on bright and dark bone alike.
fn text(canvas: &mut RgbImage, x: i32, y: i32, s: &str, scale: u32, color: Rgb<u8>) {
    for (dx, c) in [(scale as i32, SHADOW), (0, color)] {
        let mut cx = x + dx;
        for ch in s.chars() {
            let rows = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::LATIN_FONTS.get(ch))
                .unwrap_or([0xff; 8]);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        let px = cx + col * scale as i32;
                        let py = y + dx + row as i32 * scale as i32;
                        draw_filled_rect_mut(canvas, Rect::at(px, py).of_size(scale, scale), c);
                    }
                }
            }
            cx += 8 * scale as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks_labels_and_lines_land_where_expected() {
        let image = GrayImage::from_pixel(400, 300, image::Luma([90]));
        let symbols = vec!["S".to_string(), "N".to_string()];
        let points = [[100.0, 150.0], [300.0, 150.0]];
        let m = Measurement {
            name: "SN",
            value: 1.0,
            unit: "deg",
            interpretation: None,
            lines: vec![("S", "N")],
            landmarks: vec!["S", "N"],
            doubtful_landmarks: vec!["N".into()],
        };
        let out = draw(&OverlayInput {
            image: &image,
            symbols: &symbols,
            points: &points,
            doubtful: &[false, true],
            measurements: &[m],
        });
        assert_eq!(out.dimensions(), (400, 300));
        assert_eq!(
            *out.get_pixel(100, 150),
            LANDMARK,
            "confident landmark in red at its position"
        );
        assert_eq!(*out.get_pixel(300, 150), DOUBTFUL, "doubtful landmark in amber");
        assert_eq!(*out.get_pixel(200, 150), LINE, "the S-N line between them");
        // Untouched background stays grey; some label pixels exist right of each marker.
        assert_eq!(*out.get_pixel(200, 250), Rgb([90, 90, 90]));
        let label_pixels = (104..140)
            .flat_map(|x| (140..160).map(move |y| (x, y)))
            .filter(|&(x, y)| *out.get_pixel(x, y) == LABEL);
        assert!(label_pixels.count() > 5, "the label S is drawn next to its marker");
        // The measurement on a doubtful landmark is listed in amber, not in the line colour.
        let panel = (0..120).flat_map(|x| (0..20).map(move |y| (x, y)));
        let amber = panel.clone().filter(|&(x, y)| *out.get_pixel(x, y) == DOUBTFUL).count();
        assert!(amber > 5, "the doubtful measurement is drawn in amber");
        assert_eq!(panel.filter(|&(x, y)| *out.get_pixel(x, y) == LINE).count(), 0);
    }
}
