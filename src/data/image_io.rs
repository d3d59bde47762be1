//! Image decoding to 8-bit grayscale, whatever the file holds (8/16-bit, gray/RGB/RGBA).
use std::path::Path;

use anyhow::Context;

pub use image::GrayImage;

/// Decodes `path` to 8-bit grayscale. 16-bit images are scaled to 8 bits (value / 257), colour
/// images converted with the usual luma weights. No size limit: Aariz has ~95-megapixel images.
pub fn load_gray(path: &Path) -> anyhow::Result<GrayImage> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    reader.no_limits();
    let decoded = reader
        .decode()
        .with_context(|| format!("cannot decode image {} (corrupt or unsupported)", path.display()))?;
    Ok(match decoded {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => other.to_luma8(),
    })
}

/// Writes an 8-bit grayscale image atomically (temporary file in the same folder, then rename),
/// so an interrupted run never leaves a truncated image that a re-run would take as finished.
/// The format follows the extension; JPEG uses quality 95.
pub fn save_gray_atomic(image: &GrayImage, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut writer = std::io::BufWriter::new(tmp.as_file());
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
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
