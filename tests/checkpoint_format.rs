//! Checkpoints: round trip, the raw safetensors layout a Python reader relies on (parsed here
//! from scratch), atomic writes, and precise errors.
use std::path::Path;

use cephalo::backend::{CpuBackend, ParamId};
use cephalo::checkpoint::{self, Checkpoint, Meta};
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::model::ModelConfig;

fn config(landmarks: usize) -> ModelConfig {
    ModelConfig::new("resnet18", 1, landmarks, [64, 64], 1).unwrap()
}

fn executor(cfg: &ModelConfig, seed: u64) -> Executor<CpuBackend> {
    Executor::new(
        cfg.build().unwrap(),
        PlanOptions::new(Mode::Eval, DtypeSizes::F32),
        CpuBackend::new(),
        seed,
    )
}

fn meta(cfg: &ModelConfig) -> Meta {
    let mut m = Meta::new(
        cfg.clone(),
        (0..cfg.landmarks).map(|i| format!("L{}", i + 1)).collect(),
        4,
        2.0,
    );
    m.epoch = 7;
    m.step = 1234;
    // A value serde_json's default (best-effort) float parser read back one bit off, so that a
    // resumed run's checkpoint differed from an uninterrupted run's.
    m.best_metric = Some(14.228117291428715);
    m.rng = serde_json::json!({"seed": 42, "draws": 99});
    m.dataset_fingerprint = Some("sha256:abc".into());
    m
}

/// The checkpoint of a fresh executor of `cfg` from `seed`, with [`meta`].
fn checkpoint_of(cfg: &ModelConfig, seed: u64) -> Checkpoint {
    Checkpoint::from_executor(&executor(cfg, seed), meta(cfg))
}

#[test]
fn round_trip_restores_weights_statistics_metadata_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = config(3);
    let mut a = executor(&cfg, 1);
    // Non-trivial running statistics, so their round trip is visible.
    let rv = a.graph().param_id("layer1.0.bn1.running_var").unwrap();
    let n = a.graph().params[rv.0].len();
    a.set_param(rv, &(0..n).map(|i| 1.0 + i as f32 / 7.0).collect::<Vec<_>>());
    let mut ck = Checkpoint::from_executor(&a, meta(&cfg));
    ck.insert_moments("conv1.weight", &[64, 7, 7, 1], vec![0.5; 64 * 49], vec![0.25; 64 * 49]);
    checkpoint::save(&path, &ck).unwrap();

    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded, ck);
    let mut b = executor(&cfg, 2); // different initial weights
    loaded.load_into(&mut b).unwrap();
    let input: Vec<f32> = (0..cfg.input_shape().len()).map(|i| (i as f32 * 0.37).sin()).collect();
    assert_eq!(a.predict(&input), b.predict(&input));
    assert_eq!(b.param(rv), a.param(rv));
}

/// Asserts that the load error `e` names the file `name` and says it is no safetensors file.
fn assert_not_safetensors(e: &str, name: &str, what: &str) {
    assert!(e.contains(name) && e.contains("not a valid safetensors"), "{what}: {e}");
}

/// Inference loads skip the optimizer's moments (never read from disk) and nothing else; a
/// truncated file is an error naming it, for both loads.
#[test]
fn inference_loads_skip_the_moments_and_refuse_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = config(3);
    let mut ck = checkpoint_of(&cfg, 1);
    let plain = ck.clone();
    ck.insert_moments("conv1.weight", &[64, 7, 7, 1], vec![0.5; 64 * 49], vec![0.25; 64 * 49]);
    checkpoint::save(&path, &ck).unwrap();
    assert_eq!(checkpoint::load_for_inference(&path).unwrap(), plain);
    assert_eq!(checkpoint::load(&path).unwrap(), ck);

    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    for keep in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        for e in [
            checkpoint::load(&cut).unwrap_err(),
            checkpoint::load_for_inference(&cut).unwrap_err(),
        ] {
            assert_not_safetensors(&format!("{e:#}"), "cut.safetensors", &format!("{keep} bytes"));
        }
    }
}

/// The safetensors layout, read by hand: 8-byte little-endian header length, JSON header with
/// `dtype`, `shape` and `data_offsets` per tensor and `__metadata__`, then the raw data.
#[test]
fn layout_is_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let cfg = config(2);
    let ex = executor(&cfg, 3);
    let ck = Checkpoint::from_executor(&ex, meta(&cfg));
    checkpoint::save(&path, &ck).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let obj = header.as_object().unwrap();
    let md = obj["__metadata__"].as_object().unwrap();
    assert_eq!(md["format"], "cephalo-checkpoint");
    assert_eq!(md["format_version"], "1");
    let meta_json: serde_json::Value = serde_json::from_str(md["meta"].as_str().unwrap()).unwrap();
    assert_eq!(meta_json["model"]["model"], "resnet18");
    assert_eq!(meta_json["landmarks"], serde_json::json!(["L1", "L2"]));
    assert_eq!(meta_json["step"], 1234);

    let mut spans = Vec::new();
    for p in &ex.graph().params {
        let entry = &obj[&p.name];
        assert_eq!(entry["dtype"], "F32", "{}", p.name);
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).unwrap();
        assert_eq!(shape, p.shape, "{}", p.name);
        let off: [usize; 2] = serde_json::from_value(entry["data_offsets"].clone()).unwrap();
        assert_eq!(off[1] - off[0], 4 * p.len(), "{}", p.name);
        let values: Vec<f32> = data[off[0]..off[1]]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, ck.tensors[&p.name].data, "{}", p.name);
        spans.push(off);
    }
    assert_eq!(
        obj.len(),
        ex.graph().params.len() + 1,
        "one entry per parameter plus __metadata__"
    );
    // The tensors tile the data section exactly, with no gaps or overlaps.
    spans.sort();
    assert_eq!(spans[0][0], 0);
    assert!(spans.windows(2).all(|w| w[0][1] == w[1][0]));
    assert_eq!(spans.last().unwrap()[1], data.len());
}

#[test]
fn a_failed_write_leaves_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    std::fs::write(&path, b"previous checkpoint").unwrap();
    let err = checkpoint::write_atomically(&path, |f| {
        use std::io::Write;
        f.write_all(b"half of a new checkpo")?;
        anyhow::bail!("simulated crash in the middle of the write")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"));
    assert_eq!(std::fs::read(&path).unwrap(), b"previous checkpoint");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind: {leftovers:?}");
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let e = format!("{:#}", checkpoint::load(&missing).unwrap_err());
    assert!(e.contains("nope.safetensors"), "{e}");

    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let e = format!("{:#}", checkpoint::load(&corrupt).unwrap_err());
    assert_not_safetensors(&e, "corrupt.safetensors", "a header of no JSON");

    // A checkpoint of a 3-landmark model loaded into a 5-landmark one.
    let path = dir.path().join("three.safetensors");
    let cfg3 = config(3);
    checkpoint::save(&path, &checkpoint_of(&cfg3, 1)).unwrap();
    let ck = checkpoint::load(&path).unwrap();
    let mut five = executor(&config(5), 1);
    let e = format!("{:#}", ck.load_into(&mut five).unwrap_err());
    assert!(
        e.contains("final_layer.weight is [3, 1, 1, 256] in the checkpoint but [5, 1, 1, 256]"),
        "{e}"
    );
    assert!(e.contains("final_layer.bias"), "{e}");

    // Missing and unexpected tensors are named.
    let mut partial = ck.clone();
    partial.tensors.remove("layer2.0.conv1.weight");
    partial.tensors.insert(
        "extra.weight".into(),
        checkpoint::Tensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let mut three = executor(&cfg3, 1);
    let e = format!("{:#}", partial.load_into(&mut three).unwrap_err());
    assert!(e.contains("missing 1 tensor(s): layer2.0.conv1.weight"), "{e}");
    assert!(e.contains("unexpected 1 tensor(s): extra.weight"), "{e}");
    // Nothing was half-loaded: the check runs before any write.
    assert_ne!(three.param(ParamId(0)), vec![0.0; three.graph().params[0].len()]);

    // A future format version is refused with a hint.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let bumped = header.replace("\"format_version\":\"1\"", "\"format_version\":\"9\"");
    assert_ne!(header, bumped);
    bytes.splice(8..8 + n, bumped.into_bytes());
    let future = dir.path().join("future.safetensors");
    std::fs::write(&future, &bytes).unwrap();
    let e = format!("{:#}", checkpoint::load(Path::new(&future)).unwrap_err());
    assert!(e.contains("format version 9") && e.contains("update cephalo"), "{e}");
}

#[test]
fn two_saves_of_one_state_are_byte_identical() {
    let cfg = config(3);
    let ck = checkpoint_of(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    // The metadata map used to be a HashMap with a fresh random order per save.
    let first = dir.path().join("a.safetensors");
    checkpoint::save(&first, &ck).unwrap();
    let bytes = std::fs::read(&first).unwrap();
    for i in 0..8 {
        let path = dir.path().join(format!("b{i}.safetensors"));
        checkpoint::save(&path, &ck).unwrap();
        assert!(std::fs::read(&path).unwrap() == bytes, "save {i} differs");
    }
    assert_eq!(checkpoint::load(&first).unwrap(), ck);
}

#[test]
fn stale_temporaries_of_ours_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A process id that cannot be running (above Linux's pid_max limit of 2^22).
    let dead = format!("{}99999999-abc123", checkpoint::TEMP_PREFIX);
    let ours_now = format!("{}{}-def456", checkpoint::TEMP_PREFIX, std::process::id());
    let foreign = ".tmp-someone-elses";
    for name in [dead.as_str(), ours_now.as_str(), foreign, "checkpoint_last.safetensors"] {
        std::fs::write(d.join(name), vec![0u8; 1000]).unwrap();
    }
    std::fs::create_dir(d.join(format!("{}1-dir", checkpoint::TEMP_PREFIX))).unwrap();
    let removed = checkpoint::remove_stale_temporaries(d);
    let left: std::collections::BTreeSet<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    if Path::new("/proc/self").exists() {
        assert_eq!(removed, 1);
        assert!(!left.contains(&dead), "{left:?}");
    }
    // A write of this very process in progress, other programs' files, checkpoints and
    // directories stay.
    for name in [ours_now.as_str(), foreign, "checkpoint_last.safetensors"] {
        assert!(left.contains(name), "{name} removed: {left:?}");
    }
    assert!(left.contains(&format!("{}1-dir", checkpoint::TEMP_PREFIX)));
}

#[cfg(unix)]
#[test]
fn checkpoints_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = config(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    checkpoint::save(&path, &checkpoint_of(&cfg, 1)).unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&probe), "tempfile's 0600 leaked into the checkpoint");
}
