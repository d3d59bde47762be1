"""Checks models written by `cephalo export` against cephalo's own CPU inference.

Run by tests/export_onnx.rs (export_matches_cpu_inference_in_onnxruntime), which writes the
models, the input batch and cephalo's heatmaps and landmarks, and lists them in CASES.json.
For each model:
  * onnx.checker.check_model with full checks (the f32 and the fp16 file);
  * onnxruntime (CPU, 2 threads) on the same input: heatmaps within HEATMAP_TOLERANCE of
    cephalo's, and the landmarks decoded from them (tests/onnx_example.py's DARK decoding, the
    README's) within 0.05 heatmap pixels of cephalo's own decoding;
  * the fp16 model loads and runs, with a dynamic batch;
  * the README example's preprocessing against cephalo's input, and its map back to original
    pixels against cephalo's.
Usage: python onnx_check.py CASES.json
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_example  # noqa: E402  (the README example, tested here)

# Largest |onnxruntime - cephalo| allowed for an f32 heatmap value, relative to the largest
# |heatmap| (at least 1): both compute in f32 but sum the convolutions in different orders, and
# the export folds batch norm into the weights where cephalo applies it after the sum. Measured
# on the CI's models (random weights and BN statistics, heatmaps up to ~3000) and on trained
# ISBI models: at most 1.4e-6 of the largest value; 1e-5 leaves room for other CPUs' instruction
# sets, while a wrong layout, fold or resize mode is off by far more than 1e-3 of it.
HEATMAP_TOLERANCE = 1e-5
# Landmarks: the decoded points may differ by at most this many heatmap pixels.
LANDMARK_TOLERANCE = 0.05
# The example's Pillow preprocessing against cephalo's own warp, mean difference in normalised
# input units (one grey level is 1/255/0.25 = 0.0157): both are antialiased filters on the same
# geometry and measured 0.016-0.018 apart on ISBI films at 256x224; the same input shifted by
# half a network pixel is 0.043 away, one pixel 0.086.
PREPROCESS_MEAN_TOLERANCE = 0.025


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def read(path, shape):
    return np.fromfile(path, dtype="<f4").reshape(shape)


def check_case(case):
    name = case["name"]
    failures = []
    for path in (case["onnx"], case["onnx_fp16"]):
        onnx.checker.check_model(onnx.load(path), full_check=True)
    x = read(case["input"], case["input_shape"])
    reference = read(case["reference"], case["reference_shape"])
    sess = session(case["onnx"])
    heatmaps = sess.run(["heatmaps"], {"image": x})[0]
    diff = float(np.abs(heatmaps - reference).max())
    scale = max(1.0, float(np.abs(reference).max()))
    print(f"{name}: f32 max |onnxruntime - cephalo| = {diff:.2e}, {diff / scale:.2e} of the largest |heatmap|")
    if not diff <= HEATMAP_TOLERANCE * scale:
        failures.append(f"{name}: heatmaps differ by {diff:.2e} > {HEATMAP_TOLERANCE:.0e} x {scale:.3g}")

    worst = 0.0
    for image, want, maps in zip(case["images"], case["landmarks"], heatmaps):
        got = onnx_example.decode_dark(maps, case["sigma"])
        worst = max(worst, float(np.abs(got - np.array(want)).max()))
    print(f"{name}: landmarks (DARK) max difference {worst:.2e} heatmap pixels")
    if not worst <= LANDMARK_TOLERANCE:
        failures.append(f"{name}: landmarks differ by {worst:.3f} > {LANDMARK_TOLERANCE} heatmap pixels")

    # The README's decoding on cephalo's own heatmaps is cephalo's decoding.
    for want, maps in zip(case["landmarks"], reference):
        own = float(np.abs(onnx_example.decode_dark(maps, case["sigma"]) - np.array(want)).max())
        if not own <= 1e-6:
            failures.append(f"{name}: the example's DARK decoding differs from cephalo's by {own:.2e}")

    sess16 = session(case["onnx_fp16"])
    one = sess16.run(["heatmaps"], {"image": x[:1]})[0]
    both = sess16.run(["heatmaps"], {"image": x})[0]
    diff16 = float(np.abs(both - reference).max())
    print(f"{name}: fp16 runs (batch 1 and 2), max |fp16 - cephalo f32| = {diff16:.2e}")
    if one.shape != (1,) + reference.shape[1:] or both.shape != reference.shape:
        failures.append(f"{name}: fp16 output shapes {one.shape}, {both.shape}")
    if not (np.isfinite(one).all() and np.isfinite(both).all()):
        failures.append(f"{name}: fp16 heatmaps are not finite")

    # The example (for grayscale global models: a refiner reads patches cut around landmarks, not
    # the letterboxed film): preprocessing and the map back to original pixels, on the same films.
    meta = sess.get_modelmeta().custom_metadata_map
    stride = int(meta["heatmap_stride"])
    example = meta["stage"] == "global" and meta["input_channels"] == "1"
    for slot, image in enumerate(case["images"] if example else []):
        net, to_original = onnx_example.letterbox(image, meta)
        mean = float(np.abs(net[0] - x[slot]).mean())
        print(f"{name}: example preprocessing of {os.path.basename(image)}: mean |Pillow - cephalo| = {mean:.4f}")
        if not mean <= PREPROCESS_MEAN_TOLERANCE:
            failures.append(f"{name}: the example's input differs from cephalo's by {mean:.4f} on average")
        for (px, py), (ox, oy) in zip(case["landmarks"][slot], case["original_landmarks"][slot]):
            u, v = to_original((px + 0.5) * stride - 0.5, (py + 0.5) * stride - 0.5)
            if not (abs(u - ox) < 1e-6 * max(1, abs(ox)) and abs(v - oy) < 1e-6 * max(1, abs(oy))):
                failures.append(f"{name}: the example maps ({px}, {py}) to ({u}, {v}), cephalo to ({ox}, {oy})")
                break
    # The example end to end, on one image (the fixed-batch f32 model takes two: the fp16 model
    # has a dynamic batch).
    if example:
        points = onnx_example.predict(sess16, case["images"][0])
        if len(points) != len(json.loads(meta["landmarks"])):
            failures.append(f"{name}: the example predicted {len(points)} landmarks")
    return failures


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    failures = [msg for case in cases for msg in check_case(case)]
    for msg in failures:
        print("FAIL", msg)
    print("onnx checks:", "all passed" if not failures else f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
