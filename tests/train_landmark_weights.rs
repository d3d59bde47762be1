//! `--landmark-weights`: the built-in table, user files, and the errors for bad files.
use std::path::{Path, PathBuf};

use cephalo::train::landmark_weights::LandmarkWeightsArg;

/// The 29 Aariz symbols in their JSON order (docs/formats.md#aariz).
const AARIZ: [&str; 29] = [
    "A", "ANS", "B", "Me", "N", "Or", "Pog", "PNS", "Pn", "R", "S", "Ar", "Co", "Gn", "Go", "Po", "LPM", "LIT", "LMT",
    "UPM", "UIA", "UIT", "UMT", "LIA", "Li", "Ls", "N`", "Pog`", "Sn",
];

fn aariz() -> Vec<String> {
    AARIZ.iter().map(|s| s.to_string()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn weight_of(weights: &[f32], symbol: &str) -> f32 {
    weights[AARIZ.iter().position(|s| *s == symbol).unwrap()]
}

#[test]
fn difficult_table_on_aariz() {
    let w = LandmarkWeightsArg::Difficult.resolve(&aariz()).unwrap();
    let table = [
        ("UMT", 2.5),
        ("UPM", 2.5),
        ("R", 2.0),
        ("Ar", 1.8),
        ("Go", 1.8),
        ("LMT", 1.6),
        ("LPM", 1.4),
        ("Or", 1.3),
        ("Co", 1.2),
        ("PNS", 1.2),
    ];
    for (sym, want) in table {
        assert_eq!(weight_of(&w, sym), want, "{sym}");
    }
    assert_eq!(w.iter().filter(|&&x| x == 1.0).count(), 19);
}

#[test]
fn json_and_csv_files() {
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "w.json", r#"{"UMT": 3, "Pog`": 1.5}"#);
    let w = LandmarkWeightsArg::File(json).resolve(&aariz()).unwrap();
    assert_eq!(
        (weight_of(&w, "UMT"), weight_of(&w, "Pog`"), weight_of(&w, "S")),
        (3.0, 1.5, 1.0)
    );

    let with_header = write(dir.path(), "a.csv", "\u{feff}symbol,weight\nGo, 2\nN`,0.5\n");
    let w = LandmarkWeightsArg::File(with_header).resolve(&aariz()).unwrap();
    assert_eq!((weight_of(&w, "Go"), weight_of(&w, "N`")), (2.0, 0.5));

    let no_header = write(dir.path(), "weights.txt", "Ar,1.8\nCo,1.2\n");
    let w: LandmarkWeightsArg = no_header.to_str().unwrap().parse().unwrap();
    let w = w.resolve(&aariz()).unwrap();
    assert_eq!((weight_of(&w, "Ar"), weight_of(&w, "Co")), (1.8, 1.2));
}

/// Resolves `text` written to `name` and returns the error message, which must name the file.
fn error_for(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, text);
    let err = LandmarkWeightsArg::File(path.clone()).resolve(&aariz()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&path.display().to_string()), "file not named: {msg}");
    msg
}

#[test]
fn bad_files_are_errors_naming_file_and_symbol() {
    let msg = error_for("w.json", r#"{"UMT": 2.5, "Xx": 1, "go": 2}"#);
    assert!(msg.contains("Xx, go") && msg.contains("unknown"), "{msg}");
    let msg = error_for("w.json", r#"{"UMT": -1}"#);
    assert!(msg.contains("'UMT'") && msg.contains("> 0"), "{msg}");
    let msg = error_for("w.json", r#"{"UMT": "heavy"}"#);
    assert!(msg.contains("'UMT'") && msg.contains("not a number"), "{msg}");
    let msg = error_for("w.json", r#"{"UMT": 2.5,"#);
    assert!(msg.contains("JSON object"), "{msg}");
    let msg = error_for("w.csv", "symbol,weight\nGo,2\nAr,inf\n");
    assert!(msg.contains("line 3") && msg.contains("'Ar'"), "{msg}");
    let msg = error_for("w.csv", "Go,2\nAr\n");
    assert!(msg.contains("line 2") && msg.contains("symbol,weight"), "{msg}");
    let msg = error_for("w.csv", "Go,2\nGo,3\n");
    assert!(msg.contains("'Go' is given twice"), "{msg}");
    let msg = error_for("w.csv", "Go,2\nAr,heavy\n");
    assert!(msg.contains("line 2") && msg.contains("not a number"), "{msg}");
    let msg = error_for("w.csv", "");
    assert!(msg.contains("no `symbol,weight` rows"), "{msg}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = LandmarkWeightsArg::File("/nonexistent/weights.json".into())
        .resolve(&aariz())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/nonexistent/weights.json") && msg.contains("difficult"),
        "{msg}"
    );
}
