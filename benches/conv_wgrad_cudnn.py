#!/usr/bin/env python3
"""cuDNN's weight-gradient time for the shapes `cargo bench --bench gpu_conv_wgrad` reports.

Reads the bench's output on stdin (its JSON lines: kind, model, count, geometry, wgrad_ms), times
the same weight gradient through PyTorch (fp16, channels-last, cudnn.benchmark on, so cuDNN picks
its fastest algorithm, deterministic or not), and prints ours against cuDNN per shape and in total
per model, weighted by the shapes' counts. CUDA events, 3 warm-up runs, median of 15, as the bench.

    target/release/deps/gpu_conv_wgrad-* | python3 benches/conv_wgrad_cudnn.py
"""
import json
import sys

import torch

WARMUP, RUNS = 3, 15


def median_ms(fn):
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(RUNS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def cudnn_wgrad_ms(s):
    dev, dt = "cuda", torch.float16
    n, h, w, cin, cout, k, st, pad = (s[key] for key in ("n", "h", "w", "c_in", "c_out", "kh", "stride", "pad"))
    transposed = s["kind"] == "conv_transpose"
    x = torch.randn(n, cin, h, w, device=dev, dtype=dt).to(memory_format=torch.channels_last)
    if transposed:
        wt = torch.randn(cin, cout, k, k, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        oh, ow = (h - 1) * st - 2 * pad + k, (w - 1) * st - 2 * pad + k
    else:
        wt = torch.randn(cout, cin, k, k, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        oh, ow = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
    dy = torch.randn(n, cout, oh, ow, device=dev, dtype=dt).to(memory_format=torch.channels_last)

    def run():
        torch.ops.aten.convolution_backward(
            dy, x, wt, None, [st, st], [pad, pad], [1, 1], transposed, [0, 0], 1, [False, True, False]
        )

    return median_ms(run)


def main():
    torch.backends.cudnn.benchmark = True
    shapes = [json.loads(line) for line in sys.stdin if line.startswith('{"kind"')]
    print(f"device: {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
    totals = {}
    print(f"{'model':<10} {'kind':<15} {'input':<20} {'c_out':>5} {'k':>2} {'s':>2} {'count':>5} "
          f"{'ours ms':>9} {'cudnn ms':>9} {'cudnn/ours':>10}")
    for s in shapes:
        ms = cudnn_wgrad_ms(s)
        t = totals.setdefault(s["model"], [0.0, 0.0])
        t[0] += s["wgrad_ms"] * s["count"]
        t[1] += ms * s["count"]
        shape = f"{s['n']}x{s['h']}x{s['w']}x{s['c_in']}"
        print(f"{s['model']:<10} {s['kind']:<15} {shape:<20} {s['c_out']:>5} {s['kh']:>2} {s['stride']:>2} "
              f"{s['count']:>5} {s['wgrad_ms']:>9.4f} {ms:>9.4f} {ms / s['wgrad_ms']:>10.2f}")
    for model, (ours, cudnn) in totals.items():
        print(f"{model} total weighted by count: ours {ours:.3f} ms, cuDNN {cudnn:.3f} ms, cuDNN/ours {cudnn / ours:.2f}")


if __name__ == "__main__":
    main()
