//! `cephalo eval` on a checkpoint trained for one epoch on phantoms: the printed metrics and the
//! JSON report agree with each other and with the ground truth; mismatched inputs are clear errors.
use std::path::Path;

mod cli_support;
use cli_support::{eval, eval_report, trained_checkpoint};

#[test]
fn eval_report_holds_every_prediction_and_consistent_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ck) = trained_checkpoint(dir.path(), 16, 9);
    let report = dir.path().join("out/report.json");
    let args = ["--split", "test", "--batch-size", "3", "--device", "cpu"];
    let json = eval_report(&ck, &data, &report, &args);
    let predictions = json["predictions"].as_array().unwrap();
    // 16 phantoms: 11 train, 2 valid, 3 test; batch 3 exercises a full batch.
    assert_eq!(predictions.len(), 3);
    let mut errors = Vec::new();
    for p in predictions {
        let pixel = p["pixel_size_mm"].as_f64().unwrap();
        for l in p["landmarks"].as_array().unwrap() {
            let (pr, tr) = (&l["predicted"], &l["truth"]);
            let dx = pr[0].as_f64().unwrap() - tr[0].as_f64().unwrap();
            let dy = pr[1].as_f64().unwrap() - tr[1].as_f64().unwrap();
            let e = dx.hypot(dy) * pixel;
            assert!((e - l["error_mm"].as_f64().unwrap()).abs() < 1e-9);
            errors.push(e);
        }
    }
    assert_eq!(errors.len(), 3 * 19);
    let mre = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!((mre - json["metrics"]["overall"]["mre_mm"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(json["metrics"]["per_landmark"].as_array().unwrap().len(), 19);
}

#[test]
fn eval_refuses_a_missing_checkpoint_and_a_missing_split() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ck) = trained_checkpoint(dir.path(), 16, 9);
    let err = eval(Path::new("/nonexistent/ck.safetensors"), &data, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/ck.safetensors"), "{err:#}");
    std::fs::remove_file(data.join("test.csv")).unwrap();
    let err = eval(&ck, &data, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("test"), "{err:#}");
}
