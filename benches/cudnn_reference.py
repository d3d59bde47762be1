#!/usr/bin/env python3
"""cuDNN's time for every distinct convolution of one of our networks, through PyTorch.

Input: the list printed by `cephalo model conv-shapes --json` (same model, image and batch size
as the run you compare with). For each shape it times, in fp16 with channels_last tensors and
cudnn.benchmark on, the forward pass (F.conv2d or F.conv_transpose2d), the input gradient (dgrad)
and the weight gradient (wgrad) separately through aten.convolution_backward. Each figure is the
median over --repeats measurements between two CUDA events, each measurement averaging --inner
back-to-back calls, after warm-up (which includes cuDNN's algorithm search).

Output: one JSON object on stdout whose "rows" are the input rows plus fwd_ms, dgrad_ms, wgrad_ms
and their TFLOP/s (2 * MACs / time), and totals for one training step (every occurrence, no
dgrad for a convolution that reads the network input); a table on stderr.

  cephalo model conv-shapes --model hrnet-w32 --image-size 768 768 --batch-size 4 --json > shapes.json
  python3 benches/cudnn_reference.py --shapes shapes.json > cudnn.json
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def measure(fn, warmup, repeats, inner):
    """Median milliseconds of one call of fn."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def shape_ops(s, device, dtype):
    """The forward, dgrad and wgrad calls of one shape row, on fresh random tensors."""
    cl = torch.channels_last
    transposed = s["kind"] == "conv_transpose"
    x = torch.randn(s["n"], s["c_in"], s["h"], s["w"], device=device, dtype=dtype).to(memory_format=cl)
    # PyTorch's weight layouts: conv [c_out, c_in, kh, kw], transposed conv [c_in, c_out, kh, kw].
    wshape = (s["c_in"], s["c_out"]) if transposed else (s["c_out"], s["c_in"])
    w = (torch.randn(*wshape, s["kh"], s["kw"], device=device, dtype=dtype) * 0.05).to(memory_format=cl)
    stride, pad = [s["stride"]] * 2, [s["pad"]] * 2
    conv = F.conv_transpose2d if transposed else F.conv2d
    y = conv(x, w, None, stride, pad)
    if list(y.shape) != [s["n"], s["c_out"], s["out_h"], s["out_w"]]:
        sys.exit(f"shape mismatch for {s}: PyTorch gives {list(y.shape)}")
    dy = torch.randn_like(y).to(memory_format=cl)

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, pad, [1, 1], transposed, [0, 0], 1, mask
        )

    return (lambda: conv(x, w, None, stride, pad)), backward([True, False, False]), backward([False, True, False])


def check(shapes):
    """CPU, fp32, one call each: the file parses and every shape agrees with PyTorch's."""
    for s in shapes:
        fwd, dgrad, wgrad = shape_ops(s, "cpu", torch.float32)
        fwd()
        dx, dw = dgrad()[0], wgrad()[1]
        assert list(dx.shape) == [s["n"], s["c_in"], s["h"], s["w"]], s
        assert dw.shape[2:] == (s["kh"], s["kw"]), s
    print(f"{len(shapes)} shapes agree with PyTorch", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", required=True, help="JSON list from `cephalo model conv-shapes --json`")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20, help="measurements per figure (median taken)")
    p.add_argument("--inner", type=int, default=10, help="back-to-back calls per measurement")
    p.add_argument("--check-only", action="store_true", help="no GPU: run every shape once on the CPU, exit")
    args = p.parse_args()
    with open(args.shapes) as f:
        shapes = json.load(f)
    if args.check_only:
        return check(shapes)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.backends.cudnn.benchmark = True

    rows = []
    totals = {"fwd_ms": 0.0, "dgrad_ms": 0.0, "wgrad_ms": 0.0}
    for s in shapes:
        ops = shape_ops(s, "cuda", torch.float16)
        fwd, dgrad, wgrad = (measure(op, args.warmup, args.repeats, args.inner) for op in ops)
        flop = 2 * s["macs"]
        tf = lambda ms: flop / (ms * 1e-3) / 1e12  # noqa: E731
        row = dict(s, fwd_ms=fwd, dgrad_ms=dgrad, wgrad_ms=wgrad)
        row.update(fwd_tflops=tf(fwd), dgrad_tflops=tf(dgrad), wgrad_tflops=tf(wgrad))
        rows.append(row)
        totals["fwd_ms"] += s["count"] * fwd
        # Training needs no input gradient for the convolution that reads the image.
        totals["dgrad_ms"] += 0.0 if s.get("reads_input") else s["count"] * dgrad
        totals["wgrad_ms"] += s["count"] * wgrad
        print(
            f"{s['kind']:<14} n{s['n']} {s['h']}x{s['w']}x{s['c_in']:<4} -> {s['c_out']:<4} "
            f"{s['kh']}x{s['kw']} s{s['stride']} x{s['count']:<3}  fwd {fwd:.4f} ms ({row['fwd_tflops']:.1f} TF/s)  "
            f"dgrad {dgrad:.4f} ({row['dgrad_tflops']:.1f})  wgrad {wgrad:.4f} ({row['wgrad_tflops']:.1f})",
            file=sys.stderr,
        )
    totals["train_ms"] = sum(totals.values())
    report = {
        "script": "cudnn_reference.py",
        "shapes_file": args.shapes,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "inner": args.inner,
        "totals_per_step": totals,
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print(
        f"all convolutions of one step: fwd {totals['fwd_ms']:.2f} ms, dgrad {totals['dgrad_ms']:.2f} ms, "
        f"wgrad {totals['wgrad_ms']:.2f} ms, total {totals['train_ms']:.2f} ms",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
