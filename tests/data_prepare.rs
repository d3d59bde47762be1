//! `prepare` (the downscaled copy) and the phantom generator.
use std::path::Path;

use cephalo::data::geometry::Plane;
use cephalo::data::landmarks::LandmarkSet;
use cephalo::data::prepare::{prepare_dataset, write_csv_atomic, CsvRow};
use cephalo::data::{phantom, Dataset, DatasetOptions, Split};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn at(img: &image::GrayImage, p: [f64; 2]) -> f64 {
    img.get_pixel(p[0].round() as u32, p[1].round() as u32)[0] as f64
}

#[test]
fn data_phantom_is_deterministic_and_tied_to_anatomy() {
    let a = phantom::generate(&mut ChaCha8Rng::seed_from_u64(5), 256, 320);
    let b = phantom::generate(&mut ChaCha8Rng::seed_from_u64(5), 256, 320);
    let c = phantom::generate(&mut ChaCha8Rng::seed_from_u64(6), 256, 320);
    assert_eq!(a.image, b.image);
    assert_eq!(a.landmarks, b.landmarks);
    assert_ne!(a.landmarks, c.landmarks);
    let set = LandmarkSet::isbi19();
    for ph in [&a, &c] {
        let lm = |s: &str| ph.landmarks[set.index_of(s).unwrap()];
        let unit = ((lm("S")[0] - lm("N")[0]).powi(2) + (lm("S")[1] - lm("N")[1]).powi(2)).sqrt();
        // Po is the top of the bright ear-rod ring; its centre is dark.
        let ring_centre = [lm("Po")[0], lm("Po")[1] + 0.07 * unit];
        assert!(at(&ph.image, lm("Po")) > at(&ph.image, ring_centre) + 40.0);
        // S is the centre of the sella, darker than the floor of its bony cup.
        let floor = [lm("S")[0], lm("S")[1] + 0.09 * unit];
        assert!(at(&ph.image, floor) > at(&ph.image, lm("S")) + 40.0);
        // The mandible is drawn through Go and Me.
        assert!(at(&ph.image, lm("Go")) > 150.0 && at(&ph.image, lm("Me")) > 150.0);
    }
}

#[test]
fn data_phantom_writes_a_csv_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    phantom::write_dataset(tmp.path(), 10, 3, 128, 160).unwrap();
    let ds = Dataset::open(tmp.path(), &DatasetOptions::default()).unwrap();
    assert_eq!(ds.landmarks(), &LandmarkSet::isbi19());
    let counts: Vec<usize> = Split::ALL.iter().map(|s| ds.split(*s).unwrap().len()).collect();
    assert_eq!(counts, vec![7, 1, 2]);
    let s = &ds.split(Split::Test).unwrap()[1];
    let ph = phantom::generate(
        &mut ChaCha8Rng::seed_from_u64(3u64.wrapping_mul(1_000_003) + 9),
        128,
        160,
    );
    for (a, b) in s.landmarks.iter().zip(&ph.landmarks) {
        assert!(
            (a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-3,
            "CSV keeps 3 decimals"
        );
    }
}

/// A CSV dataset of one 600x800 image with a bright dot at each of the 19 landmarks.
fn dot_dataset(dir: &Path) -> Vec<[f64; 2]> {
    let set = LandmarkSet::isbi19();
    let points: Vec<[f64; 2]> = (0..19)
        .map(|k| {
            [
                80.0 + (k % 4) as f64 * 140.0 + 0.37 * k as f64,
                70.0 + (k / 4) as f64 * 150.0 + 0.61 * k as f64,
            ]
        })
        .collect();
    let sigma = 4.0;
    let img = image::GrayImage::from_fn(600, 800, |x, y| {
        let v: f64 = points
            .iter()
            .map(|p| (-((x as f64 - p[0]).powi(2) + (y as f64 - p[1]).powi(2)) / (2.0 * sigma * sigma)).exp())
            .sum();
        image::Luma([(v.min(1.0) * 255.0).round() as u8])
    });
    img.save(dir.join("dots.png")).unwrap();
    let row = CsvRow {
        image: "dots.png".into(),
        pixel_size_mm: 0.1,
        landmarks: points.clone(),
        machine: Some("M".into()),
        cvm_stage: Some(4),
    };
    write_csv_atomic(&dir.join("train.csv"), &set, &[row]).unwrap();
    points
}

fn centroid(p: &Plane, guess: [f64; 2], r: isize) -> [f64; 2] {
    let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
    let (gx, gy) = (guess[0].round() as isize, guess[1].round() as isize);
    for y in gy - r..=gy + r {
        for x in gx - r..=gx + r {
            let v = p.data[y as usize * p.width + x as usize] as f64;
            sx += v * x as f64;
            sy += v * y as f64;
            s += v;
        }
    }
    [sx / s, sy / s]
}

#[test]
fn data_prepare_scales_coordinates_exactly_and_resumes() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    dot_dataset(src.path());
    let ds = Dataset::open(src.path(), &DatasetOptions::default()).unwrap();
    let summary = prepare_dataset(&ds, out.path(), 230, "png", false).unwrap();
    assert_eq!((summary.written, summary.skipped), (1, 0));
    let copy = Dataset::open(out.path(), &DatasetOptions::default()).unwrap();
    let s = &copy.split(Split::Train).unwrap()[0];
    assert_eq!((s.width, s.height), (173, 230)); // 600 * 230 / 800 = 172.5 -> 173
    assert!((s.pixel_size_mm - 0.1 / (173.0 / 600.0 * 230.0 / 800.0f64).sqrt()).abs() < 1e-9);
    assert_eq!(s.machine.as_deref(), Some("M"));
    assert_eq!(s.cvm_stage, Some(4));
    let img = Plane::from_gray(&cephalo::data::image_io::load_gray(&s.image_path).unwrap());
    for (k, p) in s.landmarks.iter().enumerate() {
        let c = centroid(&img, *p, 4);
        let err = ((c[0] - p[0]).powi(2) + (c[1] - p[1]).powi(2)).sqrt();
        assert!(err < 0.5, "dot {k}: at {c:?}, CSV says {p:?}");
    }
    // A second run finds the image done; a deleted image is redone.
    let again = prepare_dataset(&ds, out.path(), 230, "png", false).unwrap();
    assert_eq!((again.written, again.skipped), (0, 1));
    std::fs::remove_file(&s.image_path).unwrap();
    let redo = prepare_dataset(&ds, out.path(), 230, "png", false).unwrap();
    assert_eq!((redo.written, redo.skipped), (1, 0));
}

/// Runs a command line in-process (see tests/data_formats.rs).
fn run_cli(args: &[&str]) -> anyhow::Result<std::process::ExitCode> {
    use clap::Parser;
    let cli = cephalo::cli::Cli::try_parse_from(std::iter::once("cephalo").chain(args.iter().copied()))?;
    cephalo::cli::run(cli)
}

#[test]
fn data_prepare_and_phantom_commands() {
    use std::process::ExitCode;
    let tmp = tempfile::tempdir().unwrap();
    let (ph, small) = (tmp.path().join("ph"), tmp.path().join("small"));
    let (ph_s, small_s) = (ph.to_str().unwrap(), small.to_str().unwrap());
    let ok = ExitCode::SUCCESS;
    assert_eq!(
        run_cli(&["data", "phantom", "--out", ph_s, "--count", "5", "--seed", "2"]).unwrap(),
        ok
    );
    let args = ["prepare", "--dataset-path", ph_s, "--out", small_s, "--max-side", "100"];
    assert_eq!(run_cli(&args).unwrap(), ok);
    assert!(small.join("images/train/phantom_0000.jpg").is_file());
    assert_eq!(run_cli(&["data", "check", "--dataset-path", small_s]).unwrap(), ok);
    let copy = Dataset::open(&small, &DatasetOptions::default()).unwrap();
    assert!(Split::ALL
        .iter()
        .flat_map(|s| copy.split(*s).unwrap())
        .all(|s| (s.width, s.height) == (80, 100)));
    let none = tmp.path().join("none");
    let err = run_cli(&["prepare", "--dataset-path", none.to_str().unwrap(), "--out", small_s]).unwrap_err();
    assert!(format!("{err:#}").contains("none"), "{err:#}");
    assert!(run_cli(&["prepare", "--dataset-path", ph_s, "--out", small_s, "--max-side", "x"]).is_err());
}
