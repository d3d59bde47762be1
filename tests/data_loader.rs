//! The threaded loader: shapes, exactness of targets and maps, and determinism across worker
//! counts and epochs.
use cephalo::data::geometry::{letterbox, warp, ImageSize};
use cephalo::data::heatmap::{decode_dark, image_to_heatmap};
use cephalo::data::loader::{Batch, Loader, LoaderConfig, IMAGE_MEAN, IMAGE_STD};
use cephalo::data::{phantom, Dataset, DatasetOptions, Sample, Split};

fn phantom_samples(dir: &std::path::Path, count: usize) -> Vec<Sample> {
    phantom::write_dataset(dir, count, 7, 96, 120).unwrap();
    let ds = Dataset::open(dir, &DatasetOptions::default()).unwrap();
    ds.split(Split::Train).unwrap().to_vec()
}

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 3,
        workers,
        prefetch: 2,
        seed: 11,
        ..LoaderConfig::new(ImageSize { height: 64, width: 48 })
    }
}

fn collect(loader: &Loader, epoch: usize) -> Vec<Batch> {
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn data_loader_deterministic_across_worker_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = phantom_samples(tmp.path(), 12); // 8 train images
    assert_eq!(samples.len(), 8);
    let reference = Loader::new(samples.clone(), config(0)).unwrap();
    assert_eq!(reference.batches_per_epoch(), 2); // drop_last: 8 / 3
    let e0 = collect(&reference, 0);
    let e1 = collect(&reference, 1);
    assert_eq!(e0.len(), 2);
    assert_ne!(e0, e1, "another epoch reshuffles and re-augments");
    for workers in [1, 3] {
        let loader = Loader::new(samples.clone(), config(workers)).unwrap();
        assert_eq!(collect(&loader, 0), e0, "{workers} workers, epoch 0");
        assert_eq!(collect(&loader, 1), e1, "{workers} workers, epoch 1");
        assert_eq!(loader.batch(1, 1).unwrap(), e1[1], "a single batch on demand");
    }
    let other_seed = Loader::new(samples.clone(), LoaderConfig { seed: 12, ..config(2) }).unwrap();
    assert_ne!(collect(&other_seed, 0), e0);
    // An epoch abandoned half-way stops cleanly.
    let loader = Loader::new(samples, config(2)).unwrap();
    let mut it = loader.epoch(3);
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

/// Taking batches early when they are ready (as training does, to upload the next batch during a
/// step) yields the same batches in the same order; it never blocks, and without workers it has
/// nothing to offer.
#[test]
fn data_loader_next_if_ready_keeps_the_order_and_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = phantom_samples(tmp.path(), 12);
    let cfg = LoaderConfig {
        batch_size: 2,
        ..config(2)
    };
    let want = collect(
        &Loader::new(
            samples.clone(),
            LoaderConfig {
                workers: 0,
                ..cfg.clone()
            },
        )
        .unwrap(),
        1,
    );
    assert_eq!(want.len(), 4);
    let loader = Loader::new(samples.clone(), cfg).unwrap();
    let mut it = loader.epoch(1);
    let mut got = vec![it.next().unwrap().unwrap()];
    let mut early = 0;
    while got.len() < want.len() {
        // Poll until the workers have the next batch, as a slow step would give them time to.
        let started = std::time::Instant::now();
        let batch = loop {
            if let Some(b) = it.next_if_ready() {
                early += 1;
                break b.unwrap();
            }
            assert!(started.elapsed().as_secs() < 30, "the next batch never became ready");
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        got.push(batch);
    }
    assert_eq!(got, want);
    assert_eq!(early, 3);
    assert!(
        it.next_if_ready().is_none() && it.next().is_none(),
        "past the end of the epoch"
    );
    let mut sync = Loader::new(
        samples,
        LoaderConfig {
            workers: 0,
            ..config(0)
        },
    )
    .unwrap()
    .epoch(0);
    assert!(
        sync.next_if_ready().is_none(),
        "a loader without workers builds on demand only"
    );
    assert!(sync.next().is_some());
}

#[test]
fn data_loader_batches_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = phantom_samples(tmp.path(), 12);
    let cfg = LoaderConfig {
        augment: None,
        shuffle: false,
        drop_last: false,
        image_size: ImageSize { height: 128, width: 96 },
        ..config(2)
    };
    let (h, w) = (128, 96);
    let net = cfg.image_size;
    let loader = Loader::new(samples.clone(), cfg.clone()).unwrap();
    let batches = collect(&loader, 0);
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![3, 3, 2]);
    let (hh, hw) = cfg.heatmap_size();
    assert_eq!((hh, hw), (32, 24));
    let k = 19;
    assert_eq!(batches[2].indices, vec![6, 7]);
    assert_eq!(batches[2].images.len(), 2 * h * w);
    assert_eq!(batches[2].heatmap_points.len(), 2 * k);
    assert_eq!(batches[2].target_shape().len(), 2 * hh * hw * k);
    let mut checked = 0;
    for (slot, b) in batches.iter().flat_map(|b| (0..b.len()).map(move |slot| (slot, b))) {
        let index = b.indices[slot];
        let s = &samples[index];
        // Without augmentation: the letterboxed image, normalised by the documented constants.
        let img = cephalo::data::image_io::load_gray(&s.image_path).unwrap();
        let map = letterbox(s.width, s.height, net);
        let want = warp(&img, &map.inverse(), net);
        let got = &b.images[slot * h * w..(slot + 1) * h * w];
        for (g, w) in got.iter().zip(&want.data) {
            assert!((g - (w - IMAGE_MEAN) / IMAGE_STD).abs() < 1e-6);
        }
        // Points, maps back to the original, and heatmaps whose peaks decode to the points.
        let targets = b.encode_targets();
        let hm = &targets[slot * hh * hw * k..(slot + 1) * hh * hw * k];
        let peaks = decode_dark(hm, hh, hw, k, cfg.sigma);
        for (j, p) in b.points[slot].iter().enumerate() {
            let back = b.affines[slot].apply(*p);
            assert!((back[0] - s.landmarks[j][0]).abs() < 1e-9 && (back[1] - s.landmarks[j][1]).abs() < 1e-9);
            let t = image_to_heatmap(*p, cfg.stride);
            let d = peaks[j].point;
            // Away from the border (3 sigma + the DARK kernel) decoding is exact to 0.05 px.
            let m = 6.5;
            if t[0] > m && t[1] > m && t[0] < hw as f64 - 1.0 - m && t[1] < hh as f64 - 1.0 - m {
                checked += 1;
                assert!(
                    (d[0] - t[0]).abs() < 0.05 && (d[1] - t[1]).abs() < 0.05,
                    "{d:?} vs {t:?}"
                );
            }
        }
    }
    assert!(checked >= 10, "only {checked} interior landmarks checked");
}

#[test]
fn data_loader_reports_bad_images_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let mut samples = phantom_samples(tmp.path(), 6);
    std::fs::write(&samples[1].image_path, b"garbage").unwrap();
    let loader = Loader::new(
        samples.clone(),
        LoaderConfig {
            shuffle: false,
            batch_size: 2,
            ..config(2)
        },
    )
    .unwrap();
    let err = format!("{:#}", loader.epoch(0).next().unwrap().unwrap_err());
    assert!(
        err.contains(&samples[1].image_path.display().to_string()) && err.contains("batch 1 of epoch 1"),
        "{err}"
    );
    let bad = LoaderConfig {
        image_size: ImageSize { height: 62, width: 48 },
        ..config(0)
    };
    assert!(Loader::new(samples.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("stride"));
    let too_big = LoaderConfig {
        batch_size: 50,
        ..config(0)
    };
    assert!(Loader::new(samples.clone(), too_big)
        .unwrap_err()
        .to_string()
        .contains("batch size 50"));
    samples[0].landmarks.pop();
    assert!(Loader::new(samples, config(0)).is_err());
}

/// The whole chain on real radiographs: ISBI images -> letterbox -> heatmaps -> DARK ->
/// network pixels -> original pixels lands on the annotated landmarks.
#[test]
fn data_loader_real_isbi_round_trip() {
    use cephalo::data::heatmap::heatmap_to_image;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/isbi2015");
    let ds = Dataset::open(&path, &DatasetOptions::default()).unwrap();
    let samples = ds.split(Split::Valid).unwrap()[..2].to_vec();
    let cfg = LoaderConfig {
        image_size: ImageSize {
            height: 256,
            width: 256,
        },
        augment: None,
        shuffle: false,
        batch_size: 2,
        workers: 1,
        ..LoaderConfig::new(ImageSize {
            height: 256,
            width: 256,
        })
    };
    let loader = Loader::new(samples.clone(), cfg.clone()).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let (hh, hw) = cfg.heatmap_size();
    let k = 19;
    // One heatmap pixel is 4 network pixels = 4 * 2400 / 256 = 37.5 original pixels here.
    let tolerance = 0.05 * 4.0 * 2400.0 / 256.0;
    let mut worst: f64 = 0.0;
    let targets = batch.encode_targets();
    for (slot, sample) in samples.iter().enumerate() {
        let hm = &targets[slot * hh * hw * k..(slot + 1) * hh * hw * k];
        let peaks = decode_dark(hm, hh, hw, k, cfg.sigma);
        for (j, peak) in peaks.iter().enumerate() {
            let original = batch.affines[slot].apply(heatmap_to_image(peak.point, cfg.stride));
            let want = sample.landmarks[j];
            let err = ((original[0] - want[0]).powi(2) + (original[1] - want[1]).powi(2)).sqrt();
            worst = worst.max(err);
            assert!(
                err < tolerance,
                "image {} landmark {j}: {original:?} vs {want:?}",
                samples[slot].id
            );
        }
    }
    assert!(worst > 0.0, "the decode is not a copy of the input");
    // Images are real content, not padding: the radiograph's mean is well above black.
    let mean = batch.images[..256 * 256]
        .iter()
        .map(|v| v * IMAGE_STD + IMAGE_MEAN)
        .sum::<f32>()
        / 65536.0;
    assert!(mean > 0.1, "{mean}");
}

#[test]
fn data_loader_errors_name_the_file_and_count_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let samples = phantom_samples(dir.path(), 10);
    // The first image, cut short after the dataset was opened: the loader must not train on it.
    let victim = samples[0].image_path.clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    for workers in [0, 2] {
        let cfg = LoaderConfig {
            shuffle: false,
            ..config(workers)
        };
        let loader = Loader::new(samples.clone(), cfg).unwrap();
        let err = loader
            .epoch(0)
            .find_map(Result::err)
            .expect("the cut image is an error");
        let text = format!("{err:#}");
        assert!(text.contains("batch 1 of epoch 1"), "{text}");
        assert!(text.contains(victim.file_name().unwrap().to_str().unwrap()), "{text}");
    }
}
