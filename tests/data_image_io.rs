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
