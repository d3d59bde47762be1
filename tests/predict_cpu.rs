//! `cephalo predict` end to end on phantoms: JSON in the Aariz schema, the landmark CSV readable
//! back as a dataset, overlays, a corrupt image skipped with a non-zero exit, and an output
//! folder of another run protected.
mod cli_support;
use cli_support::{run, trained_checkpoint};

#[test]
fn predict_writes_json_csv_and_overlays_and_skips_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ck) = trained_checkpoint(dir.path(), 12, 4);
    let images = dir.path().join("phantoms/images");
    std::fs::write(images.join("zz_corrupt.png"), b"not a png").unwrap();
    let out = dir.path().join("out");
    let code = run(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--pixel-size",
        "0.1",
        "--device",
        "cpu",
    ])
    .unwrap();
    assert_eq!(
        code,
        std::process::ExitCode::FAILURE,
        "a corrupt image makes the exit status non-zero"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("phantom_0000.json")).unwrap()).unwrap();
    assert_eq!(json["ceph_id"], "phantom_0000");
    let landmarks = json["landmarks"].as_array().unwrap();
    assert_eq!(landmarks.len(), 19);
    assert_eq!(landmarks[0]["symbol"], "S");
    assert_eq!(landmarks[0]["title"], "Sella");
    let x = landmarks[0]["value"]["x"].as_f64().unwrap();
    assert!(
        (0.0..96.0).contains(&x),
        "landmarks are in original pixels of the 96x96 image"
    );
    assert!(json["analysis"].as_array().unwrap().iter().any(|m| m["name"] == "ANB"));
    assert!(out.join("phantom_0000_overlay.png").exists());
    let overlay = image::open(out.join("phantom_0000_overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (96, 96));

    // The CSV has every readable image, 2 + 2 * 19 columns.
    let mut r = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    assert_eq!(r.headers().unwrap().len(), 2 + 2 * 19);
    assert_eq!(r.records().count(), 12);

    // Another checkpoint must not write into this folder without --overwrite.
    let other = dir.path().join("other.safetensors");
    std::fs::copy(&ck, &other).unwrap();
    let err = run(&[
        "predict",
        "--checkpoint",
        other.to_str().unwrap(),
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
}
