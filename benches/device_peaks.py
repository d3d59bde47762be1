#!/usr/bin/env python3
"""The GPU's measured peaks, the denominators of every efficiency figure: fp16 tensor-core
throughput (a large fp16 matmul, fp32 accumulation) and device-memory copy bandwidth (a large
device-to-device copy, bytes read plus bytes written). Medians of CUDA-event timings after warm-up.
One JSON object on stdout, a summary on stderr.

  python3 benches/device_peaks.py > peaks.json
"""
import argparse
import json
import sys
import time

import torch

from cudnn_reference import measure  # the CUDA-event median the cuDNN reference times with


def median_ms(fn, warmup, repeats):
    """Median milliseconds of one call of fn, timed call by call."""
    return measure(fn, warmup, repeats, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matmul-size", type=int, default=8192, help="M = N = K of the fp16 matmul")
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the copied buffer")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")

    n = args.matmul_size
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False  # fp32 accumulation throughout
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    c = torch.empty(n, n, device="cuda", dtype=torch.float16)
    mm_ms = median_ms(lambda: torch.matmul(a, b, out=c), args.warmup, args.repeats)
    tflops = 2 * n**3 / (mm_ms * 1e-3) / 1e12
    del a, b, c

    elems = args.copy_mib * 2**20 // 2
    src = torch.randn(elems, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), args.warmup, args.repeats)
    gbs = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e9

    report = {
        "script": "device_peaks.py",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "fp16_matmul": {"m_n_k": n, "median_ms": mm_ms, "tflops": tflops},
        "d2d_copy": {"mib": args.copy_mib, "median_ms": copy_ms, "gb_per_s_read_plus_write": gbs},
    }
    print(json.dumps(report, indent=2))
    print(f"{report['gpu']}: fp16 matmul {n}^3 {tflops:.1f} TFLOP/s, copy {gbs:.0f} GB/s (read+write)", file=sys.stderr)


if __name__ == "__main__":
    main()
