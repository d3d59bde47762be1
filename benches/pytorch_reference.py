#!/usr/bin/env python3
"""PyTorch reference for cephalo's benchmarks: our networks, trained the way our users train them.

The networks are built layer for layer like src/model/hrnet.rs and src/model/resnet.rs (one input
channel, 29 heatmaps at 1/4 of the input by default), so `--expect-params N` with N from
`cephalo model summary` proves the two count the same parameters.

Training (`--mode train`, the default) times one full step as the users' scripts run it: fp16
autocast, GradScaler, channels_last, cudnn.benchmark, AdamW (lr 5e-4), Adaptive Wing loss with
the weighted loss map, on random Gaussian heatmap targets. Inference (`--mode infer`) times
eval-mode forward passes in fp16 without gradients at batch 1 and 4.

Each step is timed with its own pair of CUDA events after warm-up; the report holds the median,
p10 and p90, images/s and memory peaks. One JSON object goes to stdout, a summary to stderr.
`--check-only` builds the model on the CPU, checks the parameter count, runs one small forward
pass and exits (no GPU needed).

  python3 benches/pytorch_reference.py --model hrnet-w32 --expect-params N > out.json
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- building blocks


def conv_bn(c_in, c_out, k, stride, relu):
    """k x k convolution (padding k // 2, no bias), batch norm, optional ReLU."""
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Basic(nn.Module):
    """BasicBlock: 3x3-BN-ReLU, 3x3-BN, plus the input (or its 1x1 projection), ReLU."""

    def __init__(self, c_in, planes, stride=1, project=False):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, planes, 3, stride, True), conv_bn(planes, planes, 3, 1, False))
        self.shortcut = conv_bn(c_in, planes, 1, stride, False) if project else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 to 4x planes, plus shortcut, ReLU."""

    def __init__(self, c_in, planes, stride=1, project=False):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(c_in, planes, 1, 1, True),
            conv_bn(planes, planes, 3, stride, True),
            conv_bn(planes, planes * 4, 1, 1, False),
        )
        self.shortcut = conv_bn(c_in, planes * 4, 1, stride, False) if project else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


# ---------------------------------------------------------------- HRNetV2 (src/model/hrnet.rs)

STAGES = [(1, 2), (4, 3), (3, 4)]  # (modules, branches) of stages 2, 3 and 4


class FusePath(nn.Module):
    """Brings branch j to branch i: 1x1 + BN + nearest upsampling from a coarser branch, or a
    chain of stride-2 3x3 convolutions from a finer one (BN-ReLU between, BN only on the last)."""

    def __init__(self, i, j, widths):
        super().__init__()
        self.factor = 2 ** (j - i) if j > i else 1
        if j > i:
            self.body = conv_bn(widths[j], widths[i], 1, 1, False)
        else:
            steps = []
            for k in range(i - j):
                last = k + 1 == i - j
                steps.append(conv_bn(widths[j], widths[i] if last else widths[j], 3, 2, not last))
            self.body = nn.Sequential(*steps)

    def forward(self, x):
        y = self.body(x)
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") if self.factor > 1 else y


class HrModule(nn.Module):
    """4 BasicBlocks per branch, then out_i = ReLU(sum_j f_ij(x_j))."""

    def __init__(self, widths):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(nn.Sequential(*[Basic(w, w) for _ in range(4)]) for w in widths)
        self.fuse = nn.ModuleList(
            nn.ModuleList(nn.Identity() if j == i else FusePath(i, j, widths) for j in range(n)) for i in range(n)
        )

    def forward(self, xs):
        ys = [b(x) for b, x in zip(self.branches, xs)]
        return [F.relu(sum(f(y) for f, y in zip(paths, ys))) for paths in self.fuse]


class HRNet(nn.Module):
    def __init__(self, width, landmarks, in_channels):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, 64, 3, 2, True), conv_bn(64, 64, 3, 2, True))
        self.layer1 = nn.Sequential(*[Bottleneck(64 if i == 0 else 256, 64, 1, i == 0) for i in range(4)])
        widths = [width << i for i in range(4)]
        self.transitions = nn.ModuleList([conv_bn(256, widths[0], 3, 1, True), conv_bn(256, widths[1], 3, 2, True)])
        self.stages = nn.ModuleList()
        for modules, n in STAGES:
            if n > 2:
                # Transitions 2 and 3: a new branch, stride-2 3x3 from the coarsest one.
                self.transitions.append(conv_bn(widths[n - 2], widths[n - 1], 3, 2, True))
            self.stages.append(nn.ModuleList(HrModule(widths[:n]) for _ in range(modules)))
        c = 15 * width
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, landmarks, 1)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        xs = [self.transitions[0](x), self.transitions[1](x)]
        for s, stage in enumerate(self.stages):
            if s > 0:
                xs.append(self.transitions[s + 1](xs[-1]))
            for module in stage:
                xs = module(xs)
        size = xs[0].shape[-2:]
        up = [xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
        return self.head(torch.cat(up, dim=1))


# ---------------------------------------------------------------- SimpleBaseline (src/model/resnet.rs)

RESNETS = {"resnet18": (Basic, [2, 2, 2, 2]), "resnet34": (Basic, [3, 4, 6, 3]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


class SimpleBaseline(nn.Module):
    def __init__(self, depth, landmarks, in_channels):
        super().__init__()
        block, counts = RESNETS[depth]
        expansion = 4 if block is Bottleneck else 1
        layers = [conv_bn(in_channels, 64, 7, 2, True), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for stage, n in enumerate(counts):
            planes = 64 << stage
            for k in range(n):
                stride = 2 if k == 0 and stage > 0 else 1
                layers.append(block(c, planes, stride, k == 0 and (stride != 1 or c != planes * expansion)))
                c = planes * expansion
        self.backbone = nn.Sequential(*layers)
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        deconvs = []
        for _ in range(3):
            deconvs += [nn.ConvTranspose2d(c, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True)]
            c = 256
        self.deconv_layers = nn.Sequential(*deconvs)
        self.final_layer = nn.Conv2d(256, landmarks, 1)
        for m in [*self.deconv_layers, self.final_layer]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x):
        return self.final_layer(self.deconv_layers(self.backbone(x)))


def conv_shape_counts(model, x):
    """{shape key: count} of every convolution in one forward pass, keyed like the rows of
    `cephalo model conv-shapes --json`."""
    counts = {}

    def hook(m, inputs, out):
        n, c_in, h, w = inputs[0].shape
        kind = "conv_transpose" if isinstance(m, nn.ConvTranspose2d) else "conv"
        key = (kind, n, h, w, c_in, m.out_channels, *m.kernel_size, m.stride[0], m.padding[0], *out.shape[2:])
        counts[key] = counts.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return counts, out


def build_model(name, landmarks, in_channels):
    name = {"hrnet": "hrnet-w32", "resnet": "resnet50"}.get(name.lower(), name.lower())
    if name.startswith("hrnet-w") and name[7:].isdigit():
        return name, HRNet(int(name[7:]), landmarks, in_channels)
    if name in RESNETS:
        return name, SimpleBaseline(name, landmarks, in_channels)
    sys.exit(f"unknown model {name!r}: hrnet-w8/w18/w32/w48, resnet18/34/50")


# ------------------------------------------------------ loss (docs/maths.md#adaptive-wing-loss)


def adaptive_wing(pred, target, alpha=2.1, omega=14.0, eps=1.0, theta=0.5, weight=10.0):
    """Adaptive Wing loss with the weighted loss map (W * M + 1, M = dilate3x3(target) > 0.2),
    mean over all elements, in fp32."""
    pred, target = pred.float(), target.float()
    d = (target - pred).abs()
    a = alpha - target
    r = theta / eps
    big_a = omega * a * r ** (a - 1) / (eps * (1 + r**a))
    big_c = theta * big_a - omega * torch.log1p(r**a)
    loss = torch.where(d < theta, omega * torch.log1p((d / eps) ** a), big_a * d - big_c)
    mask = (F.max_pool2d(target, 3, 1, 1) > 0.2).float()
    return (loss * (weight * mask + 1)).mean()


def random_heatmaps(n, k, h, w, sigma, device):
    """One unit-peak Gaussian per heatmap at a random sub-pixel position."""
    cy = torch.rand(n, k, 1, 1, device=device) * (h - 1)
    cx = torch.rand(n, k, 1, 1, device=device) * (w - 1)
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w)
    g = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
    return torch.where(g < 1e-3, torch.zeros_like(g), g)


# ---------------------------------------------------------------- timing


def stats(ms, images):
    """Median, p10, p90 and mean of per-step times (ms), images/s at the median."""
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    med = statistics.median(ms)
    return {
        "median_ms": med,
        "p10_ms": q[0],
        "p90_ms": q[8],
        "mean_ms": statistics.fmean(ms),
        "images_per_s": images / (med / 1e3),
    }


def timed(fn, warmup, steps):
    """Runs fn warmup times, then steps times each between two CUDA events; returns the list of
    milliseconds, the wall-clock seconds of the timed phase and the memory peaks of the warm-up."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    warm_peaks = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    t0 = time.perf_counter()
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return [s.elapsed_time(e) for s, e in events], wall, warm_peaks


def memory_report(warm_peaks):
    mib = 1 / 2**20
    free, total = torch.cuda.mem_get_info()
    report = {
        "max_allocated_mib": torch.cuda.max_memory_allocated() * mib,
        "max_reserved_mib": torch.cuda.max_memory_reserved() * mib,
        "max_allocated_incl_warmup_mib": max(warm_peaks[0], torch.cuda.max_memory_allocated()) * mib,
        "max_reserved_incl_warmup_mib": max(warm_peaks[1], torch.cuda.max_memory_reserved()) * mib,
        # Whole device, every process and the CUDA context included (what nvidia-smi shows).
        "device_used_mib": (total - free) * mib,
        "device_total_mib": total * mib,
    }
    try:
        report["device_used_nvml_mib"] = torch.cuda.device_memory_used() * mib
    except Exception:  # older torch or no NVML: mem_get_info above is the same figure
        pass
    return report


# ---------------------------------------------------------------- modes


def train(model, args, dev):
    h, w = args.image_size
    n, k = args.batch_size, args.landmarks
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    scaler = torch.amp.GradScaler("cuda")
    net = torch.compile(model) if args.compile else model
    # A few distinct batches, generated on the GPU: the step, not data loading, is timed.
    batches = [
        (
            torch.randn(n, args.in_channels, h, w, device=dev).contiguous(memory_format=torch.channels_last),
            random_heatmaps(n, k, h // 4, w // 4, 2.0, dev),
        )
        for _ in range(4)
    ]
    model.train()
    i = [0]

    def step():
        x, y = batches[i[0] % len(batches)]
        i[0] += 1
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = net(x)
        loss = adaptive_wing(out, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    ms, wall, warm_peaks = timed(step, args.warmup, args.steps)
    result = stats(ms, n)
    result["wall_images_per_s"] = n * args.steps / wall
    result["memory"] = memory_report(warm_peaks)
    result["loss_scale"] = scaler.get_scale()
    return {"batch_size": n, **result}


def infer(model, args, dev):
    h, w = args.image_size
    model.eval()
    runs = []
    # "autocast": fp32 weights under torch.autocast (the users' predict scripts);
    # "half": the model converted to fp16 once.
    for precision in ("autocast", "half"):
        m = model.half() if precision == "half" else model
        net = torch.compile(m) if args.compile else m
        for n in args.infer_batches:
            x = torch.randn(n, args.in_channels, h, w, device=dev).contiguous(memory_format=torch.channels_last)
            if precision == "half":
                x = x.half()

            def forward():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                    net(x)

            ms, wall, warm_peaks = timed(forward, args.warmup, args.steps)
            r = {"precision": precision, "batch_size": n, **stats(ms, n)}
            r["wall_images_per_s"] = n * args.steps / wall
            r["memory"] = memory_report(warm_peaks)
            runs.append(r)
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hrnet-w32", help="hrnet-w18, hrnet-w32 (hrnet), hrnet-w48, resnet18/34/50")
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--image-size", type=int, nargs=2, default=[768, 768], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=4, help="training batch")
    p.add_argument("--infer-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--landmarks", type=int, default=29)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, compile)")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (run once without to compare)")
    p.add_argument("--expect-params", type=int, help="fail unless the model has exactly this many parameters")
    p.add_argument("--check-only", action="store_true", help="CPU: count parameters, one forward pass, exit")
    p.add_argument("--shapes", help="with --check-only: `cephalo model conv-shapes --json` output to compare with")
    args = p.parse_args()
    h, w = args.image_size
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        sys.exit(f"--image-size {h} {w}: both sides must be positive multiples of 32")

    name, model = build_model(args.model, args.landmarks, args.in_channels)
    params = sum(t.numel() for t in model.parameters())
    print(f"{name}: {params} parameters", file=sys.stderr)
    if args.expect_params is not None and params != args.expect_params:
        sys.exit(f"parameter count {params} != --expect-params {args.expect_params}: the networks differ")
    if args.check_only:
        model.eval()
        n = args.batch_size if args.shapes else 1
        counts, out = conv_shape_counts(model, torch.randn(n, args.in_channels, h, w))
        expected = (n, args.landmarks, h // 4, w // 4)
        print(json.dumps({"model": name, "params": params, "output_shape": list(out.shape), "convs": len(counts)}))
        if tuple(out.shape) != expected:
            sys.exit(f"output shape {tuple(out.shape)} != {expected}")
        if args.shapes:
            # Same convolutions, same number of times, as our graph.
            keys = ["kind", "n", "h", "w", "c_in", "c_out", "kh", "kw", "stride", "pad", "out_h", "out_w"]
            with open(args.shapes) as f:
                ours = {tuple(r[k] for k in keys): r["count"] for r in json.load(f)}
            if ours != counts:
                diff = sorted(set(ours.items()) ^ set(counts.items()))
                sys.exit(f"convolutions differ from {args.shapes} (shape, count):\n" + "\n".join(map(str, diff)))
            print(f"same {len(counts)} distinct convolutions as {args.shapes}", file=sys.stderr)
        return
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: only --check-only runs without one")

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = model.to(dev, memory_format=torch.channels_last)
    report = {
        "script": "pytorch_reference.py",
        "mode": args.mode,
        "model": name,
        "params": params,
        "image_size": [h, w],
        "landmarks": args.landmarks,
        "in_channels": args.in_channels,
        "compile": args.compile,
        "warmup": args.warmup,
        "steps": args.steps,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if args.mode == "train":
        report["train"] = train(model, args, dev)
        rows = [report["train"]]
    else:
        report["infer"] = infer(model, args, dev)
        rows = report["infer"]
    print(json.dumps(report, indent=2))
    print(f"{name} {args.mode} {h}x{w} on {report['gpu']} (torch {report['torch']}, cuDNN {report['cudnn']})",
          file=sys.stderr)
    for r in rows:
        m = r["memory"]
        print(
            f"  {r.get('precision', 'amp-fp16')} batch {r['batch_size']}: median {r['median_ms']:.2f} ms "
            f"(p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f}), {r['images_per_s']:.1f} images/s; "
            f"peak allocated {m['max_allocated_mib']:.0f} MiB, reserved {m['max_reserved_mib']:.0f} MiB, "
            f"device used {m['device_used_mib']:.0f} MiB",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
