#!/usr/bin/env python3
"""Joins our convolution timings (the JSON lines printed by `cargo bench --bench gpu_conv` and
`--bench gpu_conv_wgrad`) with cuDNN's (`benches/cudnn_reference.py`) shape by shape and prints the
Markdown table of BENCHMARKS.md: per shape and direction our time, cuDNN's, the ratio, and the
fraction of the device's fp16 peak (`--peak-tflops`, from `benches/device_peaks.py`).

    python3 benches/conv_table.py --model hrnet-w32 --ours conv.log wgrad.log \
        --cudnn cudnn-hrnet-w32.json --peak-tflops 725.8
"""
import argparse
import json

KEY = ("kind", "n", "h", "w", "c_in", "c_out", "kh", "kw", "stride", "pad")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ours", nargs="+", required=True, help="bench logs with one JSON line per shape")
    ap.add_argument("--cudnn", required=True)
    ap.add_argument("--peak-tflops", type=float, required=True)
    a = ap.parse_args()
    ours = {}
    for path in a.ours:
        for line in open(path):
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row.get("model", a.model) != a.model:
                continue
            ours.setdefault(tuple(row[k] for k in KEY), {}).update(row)
    cudnn = {tuple(r[k] for k in KEY): r for r in json.load(open(a.cudnn))["rows"]}
    print("| conv (n h w c_in -> c_out k/s) | count | GFLOP | dir | ours ms | cuDNN ms | ours/cuDNN | ours % of peak |")
    print("|---|---|---|---|---|---|---|---|")
    totals = {"fwd": [0.0, 0.0], "dgrad": [0.0, 0.0], "wgrad": [0.0, 0.0]}
    for key, c in cudnn.items():
        o = ours.get(key, {})
        gflop = 2 * c["macs"] / 1e9
        name = f"{'T ' if key[0] == 'conv_transpose' else ''}{key[1]}x{key[2]}x{key[3]}x{key[4]} -> {key[5]} {key[6]}x{key[7]}/{key[8]}"
        for d in ("fwd", "dgrad", "wgrad"):
            mine, theirs = o.get(f"{d}_ms"), c.get(f"{d}_ms")
            if d == "dgrad" and c.get("reads_input", False):
                continue  # a convolution of the network input needs no input gradient
            if mine is None or theirs is None:
                continue
            totals[d][0] += c["count"] * mine
            totals[d][1] += c["count"] * theirs
            print(f"| {name} | {c['count']} | {gflop:.1f} | {d} | {mine:.4f} | {theirs:.4f} | {mine / theirs:.2f} | {100 * gflop / (mine * 1e-3) / 1e3 / a.peak_tflops:.1f} % |")
    all_ours = sum(t[0] for t in totals.values())
    all_cudnn = sum(t[1] for t in totals.values())
    for d, (m, t) in totals.items():
        print(f"| **sum {d}** (x count) | | | | {m:.2f} | {t:.2f} | {m / t:.2f} | |")
    print(f"| **one training step** | | | | {all_ours:.2f} | {all_cudnn:.2f} | {all_ours / all_cudnn:.2f} | |")


if __name__ == "__main__":
    main()
