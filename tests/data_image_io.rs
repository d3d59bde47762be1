//! Decoding to 8-bit grayscale: 16-bit and RGB inputs, and errors that name the file.
use cephalo::data::image_io::load_gray;

#[test]
fn data_load_gray_handles_16_bit_and_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let p16 = tmp.path().join("deep.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(4, 3, |x, y| image::Luma([(x * 20000 + y * 257) as u16]))
        .save(&p16)
        .unwrap();
    let g = load_gray(&p16).unwrap();
    assert_eq!(g.dimensions(), (4, 3));
    for (x, y, v) in g.enumerate_pixels() {
        let want = ((x * 20000 + y * 257) as f64 / 257.0).round() as u8;
        assert!((v[0] as i32 - want as i32).abs() <= 1, "({x},{y}): {} vs {want}", v[0]);
    }
    let prgb = tmp.path().join("colour.png");
    image::RgbImage::from_fn(5, 2, |x, _| {
        image::Rgb([(x * 50) as u8, (x * 50) as u8, (x * 50) as u8])
    })
    .save(&prgb)
    .unwrap();
    let g = load_gray(&prgb).unwrap();
    assert_eq!(g.dimensions(), (5, 2));
    assert_eq!(g.get_pixel(3, 1)[0], 150, "grey RGB stays the same grey");
    let pbmp = tmp.path().join("x.bmp");
    image::GrayImage::from_pixel(3, 3, image::Luma([77]))
        .save(&pbmp)
        .unwrap();
    assert_eq!(load_gray(&pbmp).unwrap().get_pixel(1, 1)[0], 77);
}

#[test]
fn data_load_gray_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.png");
    let err = format!("{:#}", load_gray(&missing).unwrap_err());
    assert!(err.contains("missing.png"), "{err}");
    let corrupt = tmp.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let err = format!("{:#}", load_gray(&corrupt).unwrap_err());
    assert!(err.contains("corrupt.jpg") && err.contains("decode"), "{err}");
}

/// A grey gradient with texture, encoded as a real JPEG of `width` x `height`.
fn write_textured_jpeg(path: &std::path::Path, width: u32, height: u32, colour: bool) {
    let value = |x: u32, y: u32| ((x * 7 + y * 3 + (x * y) % 31) % 256) as u8;
    if colour {
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([value(x, y), value(y, x), 90]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(width, height, |x, y| image::Luma([value(x, y)]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn data_load_gray_refuses_truncated_jpegs_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for colour in [false, true] {
        let whole = tmp.path().join("whole.jpg");
        write_textured_jpeg(&whole, 300, 200, colour);
        let bytes = std::fs::read(&whole).unwrap();
        // A sound JPEG decodes to exactly what `image` gives: the strict decoder changes nothing
        // for good files.
        let want = image::open(&whole).unwrap().to_luma8();
        assert_eq!(load_gray(&whole).unwrap(), want, "colour {colour}");
        for (name, len) in [("first-5000.jpg", 5000), ("half.jpg", bytes.len() / 2)] {
            assert!(len < bytes.len());
            let cut = tmp.path().join(name);
            std::fs::write(&cut, &bytes[..len]).unwrap();
            // The lenient decoder `image` uses takes it: the missing rows come back grey.
            assert!(
                image::open(&cut).is_ok(),
                "the lenient decoder is expected to accept {name}"
            );
            let err = format!("{:#}", load_gray(&cut).unwrap_err());
            assert!(err.contains(name) && err.contains("truncated"), "{err}");
        }
    }
}

#[test]
fn data_load_gray_refuses_truncated_pngs_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole.png");
    image::GrayImage::from_fn(300, 200, |x, y| image::Luma([((x * 13 + y * 7) % 251) as u8]))
        .save(&whole)
        .unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = tmp.path().join("half.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", load_gray(&cut).unwrap_err());
    assert!(err.contains("half.png"), "{err}");
}

/// A PNG whose header claims `width` x `height` 16-bit RGBA, with one tiny data chunk: what a
/// hostile or corrupt file looks like to a decoder that trusts the header.
fn write_png_header_only(path: &std::path::Path, width: u32, height: u32) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.checksum(&body).to_be_bytes());
        out
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    file.extend(chunk(b"IHDR", &ihdr));
    file.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    file.extend(chunk(b"IEND", &[]));
    std::fs::write(path, file).unwrap();
}

#[test]
fn data_load_gray_refuses_absurd_dimensions_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = tmp.path().join("huge.png");
    write_png_header_only(&huge, 100_000, 100_000);
    // Without the check this allocates 80 GB and aborts the test process.
    let err = format!("{:#}", load_gray(&huge).unwrap_err());
    assert!(
        err.contains("huge.png") && err.contains("100000x100000") && err.contains("250 megapixels"),
        "{err}"
    );
    // Just under the limit the header passes and the missing data is a decoding error.
    let small = tmp.path().join("small-lie.png");
    write_png_header_only(&small, 1000, 1000);
    let err = format!("{:#}", load_gray(&small).unwrap_err());
    assert!(err.contains("small-lie.png") && err.contains("decode"), "{err}");
}
