//! `cephalo predict` end to end on phantoms: JSON in the Aariz schema, the landmark CSV readable
//! back as a dataset, overlays, a corrupt image skipped with a non-zero exit, and an output
//! folder of another run protected.
mod cli_support;
use cli_support::{predict, read_json, trained_checkpoint};

#[test]
fn predict_writes_json_csv_and_overlays_and_skips_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ck) = trained_checkpoint(dir.path(), 12, 4);
    let images = dir.path().join("phantoms/images");
    std::fs::write(images.join("zz_corrupt.png"), b"not a png").unwrap();
    let out = dir.path().join("out");
    let args = [images.to_str().unwrap(), "--pixel-size", "0.1", "--device", "cpu"];
    let code = predict(&ck, &out, &args).unwrap();
    assert_eq!(
        code,
        std::process::ExitCode::FAILURE,
        "a corrupt image makes the exit status non-zero"
    );

    let json = read_json(&out.join("phantom_0000.json"));
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

    // The CSV has every readable image, 2 + 2 * 19 columns and the doubtful landmarks.
    let mut r = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    assert_eq!(r.headers().unwrap().len(), 2 + 2 * 19 + 1);
    assert_eq!(&r.headers().unwrap()[2 + 2 * 19], "doubtful_landmarks");
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 12);

    // Every measurement names the doubtful landmarks it rests on, as the landmark list flags
    // them, and the CSV lists the same landmarks (a one-epoch model has plenty of them).
    let doubtful: Vec<&str> = landmarks
        .iter()
        .filter(|l| l["doubtful"] == true)
        .map(|l| l["symbol"].as_str().unwrap())
        .collect();
    assert!(!doubtful.is_empty(), "premise: the weak model has doubtful landmarks");
    let row = rows.iter().find(|r| r[0].ends_with("phantom_0000.png")).unwrap();
    assert_eq!(row[2 + 2 * 19].split(' ').collect::<Vec<_>>(), doubtful);
    let anb = json["analysis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ANB")
        .unwrap();
    let want: Vec<&str> = ["S", "N", "A", "B"]
        .into_iter()
        .filter(|s| doubtful.contains(s))
        .collect();
    let got: Vec<&str> = anb["doubtful_landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got, want);
    for l in landmarks {
        let outside = l["outside_image"].as_bool().unwrap();
        assert!(
            !outside || l["doubtful"] == true,
            "a landmark outside the image is doubtful"
        );
    }

    // Written with the user's umask, like any file the process creates itself.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for name in [
            "phantom_0000.json",
            "predictions.csv",
            "cephalo-predict.json",
            "phantom_0000_overlay.png",
        ] {
            assert_eq!(mode(&out.join(name)), mode(&probe), "{name}");
        }
        assert_eq!(mode(&ck), mode(&probe), "the checkpoint");
    }

    // Another checkpoint must not write into this folder without --overwrite.
    let other = dir.path().join("other.safetensors");
    std::fs::copy(&ck, &other).unwrap();
    let err = predict(&other, &out, &[images.to_str().unwrap()]).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
}

#[test]
fn predict_writes_nothing_before_its_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ck) = trained_checkpoint(dir.path(), 6, 1);
    let images = dir.path().join("phantoms/images");
    let out = dir.path().join("out");
    // A checkpoint cut short: the run fails and leaves no trace in --out.
    let bad = dir.path().join("bad.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let predict =
        |checkpoint: &std::path::Path| predict(checkpoint, &out, &[images.to_str().unwrap(), "--device", "cpu"]);
    let err = predict(&bad).unwrap_err();
    assert!(format!("{err:#}").contains("bad.safetensors"), "{err:#}");
    assert!(
        !out.join("cephalo-predict.json").exists(),
        "a failed run wrote its manifest"
    );
    // So the next, correct run into the same folder is not refused.
    let code = predict(&ck).unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.join("cephalo-predict.json").exists());
}

#[test]
fn predict_refuses_images_too_small_to_be_radiographs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ck) = trained_checkpoint(dir.path(), 6, 2);
    let dot = dir.path().join("dot.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([9])).save(&dot).unwrap();
    let out = dir.path().join("out");
    let code = predict(&ck, &out, &[dot.to_str().unwrap(), "--device", "cpu"]).unwrap();
    assert_eq!(code, std::process::ExitCode::FAILURE);
    assert!(!out.join("dot.json").exists(), "no analysis of a 1x1 image");
}
