//! Dataset readers: the real ISBI CSVs, a tiny Aariz tree built around the real annotation, the
//! ISBI challenge layout, and every kind of bad input.
use std::path::{Path, PathBuf};

use cephalo::data::{Annotator, Dataset, DatasetOptions, Format, LandmarkSet, Split};

fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn real_aariz_json() -> serde_json::Value {
    let path = shared_data().join("aariz-format/cks2ip8fq2a0j0yufdfssbc09.json");
    let text = std::fs::read_to_string(&path).expect("the real Aariz annotation fixture");
    serde_json::from_str(&text).unwrap()
}

/// (symbol, x, y) of the real annotation, in file order.
fn real_points() -> Vec<(String, f64, f64)> {
    real_aariz_json()["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["symbol"].as_str().unwrap().to_string(),
                l["value"]["x"].as_f64().unwrap(),
                l["value"]["y"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn write_png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([40]))
        .save(path)
        .unwrap();
}

/// The real annotation with every point moved by (dx, dy); `reverse` reverses the list order.
fn shifted_json(dx: f64, dy: f64, reverse: bool) -> String {
    let mut v = real_aariz_json();
    let list = v["landmarks"].as_array_mut().unwrap();
    for l in list.iter_mut() {
        let x = l["value"]["x"].as_f64().unwrap();
        let y = l["value"]["y"].as_f64().unwrap();
        l["value"]["x"] = serde_json::json!(x + dx);
        l["value"]["y"] = serde_json::json!(y + dy);
    }
    if reverse {
        list.reverse();
    }
    serde_json::to_string_pretty(&v).unwrap()
}

const ID: &str = "cks2ip8fq2a0j0yufdfssbc09";
const ID2: &str = "ckaaaaaaaaaaaaaaaaaaaaaaa";

/// A two-split Aariz tree: `Train` (capitalised) with the real file as junior and a shifted,
/// reordered copy as senior, plus CVM; `valid` with a second image. Mapping CSV with a BOM.
fn aariz_tree(dir: &Path) {
    write(
        &dir.join("cephalogram_machine_mappings.csv"),
        format!(
            "\u{feff}cephalogram_id,machine,pixel_size,image_format,mode\n\
             {ID},Carestream CS 9000C,0.127,jpg,Digital\n{ID2},Planmeca ProMax,0.1,png,Digital\n"
        ),
    );
    for (split, id) in [("Train", ID), ("valid", ID2)] {
        let d = dir.join(split);
        write_png(&d.join(format!("Cephalograms/{id}.png")), 1800, 2000);
        let lm = d.join("Annotations/Cephalometric Landmarks");
        write(
            &lm.join(format!("Junior Orthodontists/{id}.json")),
            shifted_json(0.0, 0.0, false),
        );
        write(
            &lm.join(format!("Senior Orthodontists/{id}.json")),
            shifted_json(4.0, 2.0, true),
        );
        write(
            &d.join(format!("Annotations/CVM Stages/{id}.json")),
            format!(r#"{{"ceph_id": "{id}", "cvm_stage": {{"id": "x", "title": "CVM-S3", "value": 3}}}}"#),
        );
    }
}

#[test]
fn data_landmark_sets() {
    let aariz = LandmarkSet::aariz29();
    assert_eq!(aariz.len(), 29);
    let file_order: Vec<String> = real_points().into_iter().map(|p| p.0).collect();
    assert_eq!(aariz.symbols, file_order, "Aariz order must be the JSON files' order");
    assert_eq!(aariz.index_of("N`"), Some(26));
    assert_eq!(aariz.index_of("N"), Some(4));
    assert_eq!(aariz.titles[27], "Soft Tissue Pogonion");
    let isbi = LandmarkSet::isbi19();
    assert_eq!(isbi.len(), 19);
    assert!(isbi.symbols.iter().all(|s| aariz.index_of(s).is_some()));
    assert_eq!(isbi.symbols[0], "S");
    assert_eq!(isbi.symbols[18], "Ar");
    assert!(LandmarkSet::from_symbols(&["S", "Xx"])
        .unwrap_err()
        .to_string()
        .contains("'Xx'"));
}

#[test]
fn data_real_isbi_csv_counts() {
    let path = shared_data().join("isbi2015");
    let ds = Dataset::open(&path, &DatasetOptions::default()).expect("shared/data/isbi2015");
    assert_eq!(ds.format, Format::Csv);
    assert_eq!(ds.landmarks(), &LandmarkSet::isbi19());
    let counts: Vec<usize> = Split::ALL.iter().map(|s| ds.split(*s).unwrap().len()).collect();
    assert_eq!(counts, vec![130, 20, 150]);
    let first = &ds.split(Split::Train).unwrap()[0];
    assert_eq!(first.id, "001");
    assert_eq!((first.width, first.height), (1935, 2400));
    assert_eq!(first.pixel_size_mm, 0.1);
    assert_eq!(first.landmarks[0], [832.0, 994.0]); // S of image 001, from the CSV's first row
    assert_eq!(first.landmarks[18], [664.0, 1336.0]); // Ar
}

#[test]
fn data_aariz_tree_mean_senior_junior() {
    let tmp = tempfile::tempdir().unwrap();
    aariz_tree(tmp.path());
    let real = real_points();
    for (annotator, shift) in [
        (Annotator::Mean, [2.0, 1.0]),
        (Annotator::Senior, [4.0, 2.0]),
        (Annotator::Junior, [0.0, 0.0]),
    ] {
        let ds = Dataset::open(tmp.path(), &DatasetOptions { annotator }).unwrap();
        assert_eq!(ds.format, Format::Aariz);
        assert_eq!(ds.landmarks(), &LandmarkSet::aariz29());
        let train = ds.split(Split::Train).unwrap();
        assert_eq!(train.len(), 1);
        let s = &train[0];
        assert_eq!(s.id, ID);
        for (k, (symbol, x, y)) in real.iter().enumerate() {
            assert_eq!(ds.landmarks().symbols[k], *symbol);
            assert_eq!(s.landmarks[k], [x + shift[0], y + shift[1]], "{annotator:?} {symbol}");
        }
        assert_eq!(s.pixel_size_mm, 0.127);
        assert_eq!(s.machine.as_deref(), Some("Carestream CS 9000C"));
        assert_eq!(s.cvm_stage, Some(3));
        assert_eq!((s.width, s.height), (1800, 2000));
        assert_eq!(ds.split(Split::Valid).unwrap()[0].pixel_size_mm, 0.1);
        assert!(ds.split(Split::Test).is_none());
        let err = ds.require_split(Split::Test).unwrap_err().to_string();
        assert!(err.contains("no 'test' split"), "{err}");
    }
}

#[test]
fn data_aariz_single_annotator_folder() {
    let tmp = tempfile::tempdir().unwrap();
    aariz_tree(tmp.path());
    for split in ["Train", "valid"] {
        std::fs::remove_dir_all(
            tmp.path()
                .join(split)
                .join("Annotations/Cephalometric Landmarks/Junior Orthodontists"),
        )
        .unwrap();
    }
    let ds = Dataset::open(tmp.path(), &DatasetOptions::default()).unwrap();
    let s = &ds.split(Split::Train).unwrap()[0];
    let (_, x, y) = real_points()[0].clone();
    assert_eq!(s.landmarks[0], [x + 4.0, y + 2.0], "only the senior folder exists");
    let err = Dataset::open(
        tmp.path(),
        &DatasetOptions {
            annotator: Annotator::Junior,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Cephalometric Landmarks") && err.contains("Junior"),
        "{err}"
    );
}

#[test]
fn data_isbi_challenge_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lines = |d: f64| -> String {
        let mut s: String = (0..19)
            .map(|k| format!("{},{}\n", 100.0 + 10.0 * k as f64 + d, 200.0 + d))
            .collect();
        s += "1\n2\n"; // classification lines follow the 19 points
        s
    };
    for (folder, id) in [("TrainingData", "001"), ("Test1Data", "151"), ("Test2Data", "301")] {
        write_png(
            &root.join(format!("RawImage/{folder}/{id}.bmp")).with_extension("png"),
            400,
            300,
        );
        write(&root.join(format!("AnnotationsByMD/400_senior/{id}.txt")), lines(2.0));
        write(&root.join(format!("AnnotationsByMD/400_junior/{id}.txt")), lines(0.0));
    }
    let ds = Dataset::open(root, &DatasetOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Isbi);
    assert_eq!(ds.landmarks(), &LandmarkSet::isbi19());
    assert_eq!(ds.split(Split::Train).unwrap()[0].id, "001");
    assert_eq!(ds.split(Split::Test).unwrap()[0].id, "151");
    assert_eq!(ds.split(Split::Valid).unwrap()[0].id, "301");
    let s = &ds.split(Split::Train).unwrap()[0];
    assert_eq!(s.landmarks[3], [131.0, 201.0]);
    assert_eq!(s.pixel_size_mm, 0.1);
    // A short annotation file names the file, the line and the landmark.
    write(&root.join("AnnotationsByMD/400_senior/001.txt"), "1,2\n3,4\n");
    let err = format!("{:#}", Dataset::open(root, &DatasetOptions::default()).unwrap_err());
    assert!(
        err.contains("001.txt") && err.contains("line 3") && err.contains("Or is missing"),
        "{err}"
    );
}

// ---------- bad input ----------

const HEADER: &str = "image,pixel_size_mm,S_x,S_y,N_x,N_y,machine";

/// A CSV dataset with one image `a.png` (100x80) and the given train.csv body.
fn csv_dataset(body: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("a.png"), 100, 80);
    write(&tmp.path().join("train.csv"), format!("{HEADER}\n{body}"));
    tmp
}

fn open_err(dir: &Path) -> String {
    format!("{:#}", Dataset::open(dir, &DatasetOptions::default()).unwrap_err())
}

/// The dataset in `dir` does not open, with an error that names every one of `needles`; `what`
/// says which case failed.
fn assert_open_refused(dir: &Path, needles: &[&str], what: &str) {
    let err = open_err(dir);
    assert!(needles.iter().all(|n| err.contains(n)), "{what}: {err}");
}

/// A dataset whose train.csv holds `rows` does not open, with an error that names every one of
/// `needles`.
fn assert_refused(rows: &str, needles: &[&str]) {
    assert_open_refused(csv_dataset(rows).path(), needles, &format!("{rows:?}"));
}

/// A dataset whose train.csv is the line `header` alone does not open, with an error that names
/// every one of `needles`.
fn assert_header_refused(header: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("train.csv"), format!("{header}\n"));
    assert_open_refused(tmp.path(), needles, &format!("header {header:?}"));
}

#[test]
fn data_csv_good_row_and_metadata() {
    let tmp = csv_dataset("a.png,0.1,10,20,30.5,40,M1\n");
    let ds = Dataset::open(tmp.path(), &DatasetOptions::default()).unwrap();
    let s = &ds.split(Split::Train).unwrap()[0];
    assert_eq!(s.landmarks, vec![[10.0, 20.0], [30.5, 40.0]]);
    assert_eq!(s.machine.as_deref(), Some("M1"));
    assert!(ds.split(Split::Valid).is_none());
}

#[test]
fn data_bad_missing_image() {
    assert_refused("b.png,0.1,10,20,30,40,M1\n", &["b.png", "missing", "row 2"]);
}

#[test]
fn data_bad_corrupt_image() {
    let tmp = csv_dataset("c.png,0.1,10,20,30,40,M1\n");
    write(&tmp.path().join("c.png"), b"\x89PNG\r\n\x1a\nthis is not really a png");
    let err = open_err(tmp.path());
    assert!(err.contains("c.png") && err.contains("image"), "{err}");
    // A header that parses but pixel data that does not: only decoding finds it (data check).
    let mut bytes = std::fs::read(tmp.path().join("a.png")).unwrap();
    bytes.truncate(bytes.len() / 2 + 40);
    write(&tmp.path().join("c.png"), &bytes);
    let report = cephalo::data::check::check_dataset(tmp.path(), &DatasetOptions::default(), false);
    let problems = report.map(|r| r.problems).unwrap_or_default();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text.iter().any(|p| p.contains("c.png")), "{text:?}");
}

#[test]
fn data_bad_malformed_csv() {
    assert_refused("a.png,0.1,abc,20,30,40,M1\n", &["train.csv", "row 2", "S_x", "'abc'"]);
    assert_refused("a.png,0.1,10\n", &["train.csv", "row 2"]);
    // An x column without its y column.
    assert_header_refused("image,pixel_size_mm,S_x", &["train.csv", "S_y"]);
}

#[test]
fn data_bad_nan_and_outside() {
    assert_refused("a.png,0.1,NaN,20,30,40,M1\n", &["a.png", "landmark S", "non-finite"]);
    assert_refused("a.png,0.1,10,20,130,40,M1\n", &["a.png", "landmark N", "outside"]);
}

#[test]
fn data_bad_missing_value_and_pixel_size() {
    assert_refused("a.png,,10,20,30,40,M1\n", &["row 2", "pixel_size_mm"]);
    assert_refused("a.png,0.1,10,20,,40,M1\n", &["row 2", "landmark N"]);
    assert_refused("a.png,100,10,20,30,40,M1\n", &["pixel size 100", "plausible"]);
}

#[test]
fn data_bad_unknown_symbol_in_csv() {
    assert_header_refused("image,pixel_size_mm,Foo_x,Foo_y", &["train.csv", "'Foo'"]);
}

#[test]
fn data_bad_empty_and_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("no dataset found"), "{err}");
    write(&tmp.path().join("test.csv"), format!("{HEADER}\n"));
    let err = open_err(tmp.path());
    assert!(err.contains("holds no images"), "{err}");
    let err = open_err(&tmp.path().join("nope"));
    assert!(err.contains("nope") && err.contains("cannot be read"), "{err}");
}

#[test]
fn data_bad_aariz_json_cases() {
    type Damage = Box<dyn Fn(&Path)>;
    let cases: [(&str, Damage, &[&str]); 5] = [
        (
            "truncated JSON",
            Box::new(|f: &Path| {
                let text = std::fs::read_to_string(f).unwrap();
                std::fs::write(f, &text[..text.len() / 2]).unwrap();
            }),
            &["malformed landmark JSON"],
        ),
        (
            "missing landmark",
            Box::new(|f: &Path| {
                let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
                v["landmarks"].as_array_mut().unwrap().retain(|l| l["symbol"] != "Sn");
                std::fs::write(f, v.to_string()).unwrap();
            }),
            &["landmark Sn is missing"],
        ),
        (
            "unknown symbol",
            Box::new(|f: &Path| {
                let text = std::fs::read_to_string(f).unwrap().replace("\"Pog`\"", "\"Xyz\"");
                std::fs::write(f, text).unwrap();
            }),
            &["unknown landmark symbol 'Xyz'"],
        ),
        (
            "null coordinate",
            Box::new(|f: &Path| {
                let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
                v["landmarks"][3]["value"]["x"] = serde_json::Value::Null;
                std::fs::write(f, v.to_string()).unwrap();
            }),
            &["malformed landmark JSON"],
        ),
        (
            "deleted annotation",
            Box::new(|f: &Path| std::fs::remove_file(f).unwrap()),
            &["cannot read annotation"],
        ),
    ];
    for (name, damage, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        aariz_tree(tmp.path());
        let file = tmp.path().join(format!(
            "Train/Annotations/Cephalometric Landmarks/Senior Orthodontists/{ID}.json"
        ));
        damage(&file);
        let err = open_err(tmp.path());
        assert!(
            err.contains(&format!("Senior Orthodontists/{ID}.json")),
            "{name}: {err}"
        );
        for e in expected {
            assert!(err.contains(e), "{name}: {err}");
        }
    }
}

#[test]
fn data_bad_aariz_pixel_size_and_split() {
    let tmp = tempfile::tempdir().unwrap();
    aariz_tree(tmp.path());
    write(
        &tmp.path().join("cephalogram_machine_mappings.csv"),
        format!("cephalogram_id,machine,pixel_size,image_format,mode\n{ID},X,0.1,jpg,D\n"),
    );
    let err = open_err(tmp.path());
    assert!(
        err.contains(&format!("{ID2}.png")) && err.contains("no pixel size"),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("cephalogram_machine_mappings.csv")).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("cephalogram_machine_mappings.csv"), "{err}");
    // A split folder without its Cephalograms folder.
    let tmp = tempfile::tempdir().unwrap();
    aariz_tree(tmp.path());
    std::fs::remove_dir_all(tmp.path().join("valid/Cephalograms")).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("valid") && err.contains("no Cephalograms folder"), "{err}");
    // An annotation whose image is gone.
    let tmp = tempfile::tempdir().unwrap();
    aariz_tree(tmp.path());
    std::fs::remove_file(tmp.path().join(format!("valid/Cephalograms/{ID2}.png"))).unwrap();
    let (_, problems) = Dataset::scan(tmp.path(), &DatasetOptions::default()).unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|p| p.contains(&format!("{ID2}.json")) && p.contains("has no image")),
        "{text:?}"
    );
}

/// Runs a command line in-process (the CLI code itself, without spawning the binary, whose
/// path in a shared target folder another checkout may overwrite mid-test).
fn run_cli(args: &[&str]) -> anyhow::Result<std::process::ExitCode> {
    use clap::Parser;
    let cli = cephalo::cli::Cli::try_parse_from(std::iter::once("cephalo").chain(args.iter().copied()))?;
    cephalo::cli::run(cli)
}

#[test]
fn data_check_command_exit_status() {
    use std::process::ExitCode;
    let tmp = csv_dataset("a.png,0.1,10,20,30,40,M1\na.png,0.1,10,20,300,40,M1\n");
    let path = tmp.path().to_str().unwrap();
    assert_eq!(
        run_cli(&["data", "check", "--dataset-path", path]).unwrap(),
        ExitCode::from(1)
    );
    let report = cephalo::data::check::check_dataset(tmp.path(), &DatasetOptions::default(), false).unwrap();
    let text = report.render(tmp.path());
    assert!(
        text.contains("problems     1") && text.contains("a.png") && text.contains("outside"),
        "{text}"
    );
    assert!(text.contains("train        1 images"), "{text}");
    let tmp = csv_dataset("a.png,0.1,10,20,30,40,M1\n");
    let path = tmp.path().to_str().unwrap();
    assert_eq!(
        run_cli(&["data", "check", "--dataset-path", path]).unwrap(),
        ExitCode::SUCCESS
    );
    let text = cephalo::data::check::check_dataset(tmp.path(), &DatasetOptions::default(), false)
        .unwrap()
        .render(tmp.path());
    assert!(
        text.contains("machines     M1 (1)") && text.contains("100x80 (1)"),
        "{text}"
    );
    let err = run_cli(&["data", "check", "--dataset-path", "/nonexistent/x"]).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/x"));
}

#[test]
fn data_crlf_csv_rows_are_numbered_like_lf_ones() {
    for newline in ["\n", "\r\n"] {
        let tmp = tempfile::tempdir().unwrap();
        write_png(&tmp.path().join("a.png"), 100, 80);
        let rows = [
            HEADER,
            "a.png,0.1,10,20,30,40,M1",
            "a.png,0.1,10,20,30,40,M1",
            "a.png,0.1,abc,20,30,40,M1",
        ];
        write(&tmp.path().join("train.csv"), rows.join(newline) + newline);
        let err = open_err(tmp.path());
        assert!(err.contains("row 4") && err.contains("'abc'"), "{newline:?}: {err}");
    }
}

#[test]
fn data_check_reports_truncated_and_oversized_images_by_name() {
    let tmp = csv_dataset("a.png,0.1,10,20,30,40,M1\ncut.jpg,0.1,10,20,30,40,M1\nhuge.png,0.1,10,20,30,40,M1\n");
    // A real JPEG cut in half: the lenient decoder would give flat grey for the missing part.
    let jpeg = tmp.path().join("whole.jpg");
    image::GrayImage::from_fn(100, 80, |x, y| image::Luma([((x * 7 + y * 13) % 256) as u8]))
        .save(&jpeg)
        .unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::remove_file(&jpeg).unwrap();
    write(&tmp.path().join("cut.jpg"), &bytes[..bytes.len() / 2]);
    // A PNG header claiming 100000x100000 16-bit RGBA: decoding it would abort on 80 GB.
    let mut png = std::fs::read(tmp.path().join("a.png")).unwrap();
    png[16..26].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 16, 6]);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    write(&tmp.path().join("huge.png"), &png);
    let report = cephalo::data::check::check_dataset(tmp.path(), &DatasetOptions::default(), false).unwrap();
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|p| p.contains("cut.jpg") && p.contains("truncated")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("huge.png") && p.contains("100000x100000") && p.contains("megapixels")),
        "{text:?}"
    );
    assert_eq!(report.split_counts[0], Some(1), "only a.png is usable");
}

#[test]
fn data_tiny_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("dot.png"), 1, 1);
    write(
        &tmp.path().join("train.csv"),
        format!("{HEADER}\ndot.png,0.1,0,0,0,0,M1\n"),
    );
    let err = open_err(tmp.path());
    assert!(
        err.contains("dot.png") && err.contains("1x1") && err.contains("too small"),
        "{err}"
    );
}
