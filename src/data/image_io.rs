//! Image decoding to 8-bit grayscale, whatever the file holds (8/16-bit, gray/RGB/RGBA).
//!
//! Two things a plain `image::open` lets through are refused here, naming the file: a JPEG that
//! ends early or is corrupt (the lenient decoder fills the missing part with flat grey, which
//! would train and predict on an image that is half missing), and a header that claims absurd
//! dimensions (decoding it would try to allocate tens of gigabytes and abort the process).
use std::io::Cursor;
use std::path::Path;

use anyhow::Context;

pub use image::GrayImage;

/// The most pixels an image may have: 2.5 times the largest real radiographs (Aariz has
/// ~95-megapixel images). A 16-bit RGBA image this size decodes to 2 GB; a header claiming more
/// is far more likely corrupt or hostile than a radiograph.
pub const MAX_IMAGE_PIXELS: u64 = 250_000_000;

/// Decodes `path` to 8-bit grayscale. 16-bit images are scaled to 8 bits (value / 257), colour
/// images converted with the usual luma weights. Truncated or corrupt files and images above
/// [`MAX_IMAGE_PIXELS`] are errors naming the file.
pub fn load_gray(path: &Path) -> anyhow::Result<GrayImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    let format = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .format();
    let Some(format) = format else {
        anyhow::bail!(
            "cannot decode image {} (not an image format cephalo reads)",
            path.display()
        );
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .with_context(|| format!("cannot decode image {} (corrupt or unsupported)", path.display()))?;
    check_dimensions(path, width, height)?;
    let decoded = if format == image::ImageFormat::Jpeg {
        decode_jpeg_strict(&bytes)
    } else {
        let mut reader = image::ImageReader::with_format(Cursor::new(&bytes), format);
        // The header check above bounds the pixels; the allocation limit is a second guard for
        // decoders that allocate from other header fields.
        let mut limits = image::Limits::no_limits();
        limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
        reader.limits(limits);
        reader.decode().map_err(anyhow::Error::from)
    }
    .with_context(|| {
        format!(
            "cannot decode image {} (corrupt, truncated or unsupported)",
            path.display()
        )
    })?;
    Ok(match decoded {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => other.to_luma8(),
    })
}

/// Refuses an image whose header claims more than [`MAX_IMAGE_PIXELS`] (or a zero side).
fn check_dimensions(path: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        anyhow::bail!(
            "image {} has no pixels ({width}x{height}); is the file corrupt?",
            path.display()
        );
    }
    if pixels > MAX_IMAGE_PIXELS {
        anyhow::bail!(
            "image {} claims {width}x{height} pixels ({} megapixels), more than the {} megapixels \
             cephalo decodes; the file is corrupt, or must be downscaled first",
            path.display(),
            pixels / 1_000_000,
            MAX_IMAGE_PIXELS / 1_000_000
        );
    }
    Ok(())
}

/// Decodes a JPEG with the decoder `image` uses (zune-jpeg) and the same output colours, but in
/// strict mode: `image` runs it leniently, so a file cut short decodes "successfully" with the
/// missing rows grey. Strict mode reports the premature end and stray markers as errors.
fn decode_jpeg_strict(bytes: &[u8]) -> anyhow::Result<image::DynamicImage> {
    use zune_core::colorspace::ColorSpace;
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (width, height) = decoder.dimensions().context("JPEG without dimensions")?;
    let input = decoder.input_colorspace().context("JPEG without a colour space")?;
    // The colour spaces `image` keeps as they are; anything else (CMYK, YCCK) becomes RGB, as
    // `image` does, so the grey values match what `image::open` gives for a sound file.
    let output = match input {
        ColorSpace::Luma | ColorSpace::LumaA | ColorSpace::RGB | ColorSpace::RGBA => input,
        _ => ColorSpace::RGB,
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(output));
    let pixels = decoder.decode().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (w, h) = (width as u32, height as u32);
    let image = match output {
        ColorSpace::Luma => image::GrayImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageLuma8),
        ColorSpace::LumaA => image::GrayAlphaImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageLumaA8),
        ColorSpace::RGBA => image::RgbaImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageRgba8),
        _ => image::RgbImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageRgb8),
    };
    image.context("the JPEG decoder returned fewer pixels than the header claims")
}

/// Writes an 8-bit grayscale image atomically (temporary file in the same folder, then rename,
/// with the user's umask),
/// so an interrupted run never leaves a truncated image that a re-run would take as finished.
/// The format follows the extension; JPEG uses quality 95.
pub fn save_gray_atomic(image: &GrayImage, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::checkpoint::write_atomically(path, |file| {
        let mut writer = std::io::BufWriter::new(file);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut writer, 95)
                .encode_image(image)
                .with_context(|| format!("cannot encode {}", path.display()))?,
            _ => {
                let format = image::ImageFormat::from_path(path)
                    .with_context(|| format!("unknown image extension: {}", path.display()))?;
                image
                    .write_to(&mut writer, format)
                    .with_context(|| format!("cannot encode {}", path.display()))?
            }
        }
        std::io::Write::flush(&mut writer)?;
        Ok(())
    })?;
    Ok(())
}
