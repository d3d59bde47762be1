#!/usr/bin/env python3
"""cephalo's CPU path against PyTorch and onnxruntime, in one run on the same machine.

Three comparisons, each contender timed in turn within every round (so that a change in the
machine's load affects all of them alike), medians over the rounds:

* inference: HRNet-W32 at 768x768, batch 1, f32, batch norm folded into the convolutions on
  every side: `cephalo bench --device cpu --mode infer`, PyTorch eager in channels_last
  (oneDNN) and NCHW, and onnxruntime on the same network exported from PyTorch;
* training: one step of hrnet-w8 at 256x224, batch 4, f32, Adaptive Wing loss with the weight
  map and AdamW: `cephalo bench --device cpu --mode train` against PyTorch in both layouts;
* export (`--only export`, needs no torch): onnxruntime on the model `cephalo export` writes,
  HRNet-W32 at 768x768, batch 1, f32, against `cephalo bench --device cpu --mode infer` on the
  same network. The checkpoint is one training step of HRNet-W32 on generated phantoms (made
  once, kept in target/cpu-compare; the convolutions' time does not depend on the weights'
  values), exported with `cephalo export`; `--onnx FILE` times another exported file instead.

The PyTorch networks are benches/pytorch_reference.py's, built layer for layer like cephalo's.
Every contender uses the same number of threads (--threads, default: all cores). PyTorch from
PyPI brings CUDA wheels of several GB, so the script installs torch, onnx and onnxruntime into
its own virtual environment (target/bench-venv, created on first use) and is not part of CI.

  cargo build --release
  python3 benches/cpu_compare.py [--rounds 5] [--json cpu_compare.json]
  python3 benches/cpu_compare.py --only export --threads 2 [--onnx model.onnx]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-venv"


def ensure_venv(need_torch=True):
    """Re-runs this script inside the benchmark venv (created and filled on first use)."""
    try:
        import onnxruntime  # noqa: F401

        if need_torch:
            import torch  # noqa: F401

        return
    except ImportError:
        pass
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        sys.exit("torch or onnxruntime is missing from the benchmark venv: delete target/bench-venv and retry")
    if not python.exists():
        print(f"creating {VENV} (torch, onnx, onnxruntime from PyPI; several GB)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "torch", "onnx", "onnxruntime"])
    os.execv(str(python), [str(python), *sys.argv])


def median_ms(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def cephalo_ms(binary, threads, mode, model, size, batch, landmarks, warmup, steps):
    """Median step time from `cephalo bench --device cpu` (its own warm-up and timing)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.json"
        cmd = [
            str(binary), "bench", "--device", "cpu", "--mode", mode, "--model", model,
            "--image-size", str(size[0]), str(size[1]), "--batch-size", str(batch),
            "--landmarks", str(landmarks), "--warmup", str(warmup), "--steps", str(steps), "--json", str(out),
        ]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["step_ms"]["median_ms"]


def exported_hrnet_w32(binary, landmarks):
    """target/cpu-compare/hrnet-w32-768.onnx, written by `cephalo export` from a checkpoint of one
    training step on phantoms (both made on first use)."""
    work = ROOT / "target" / "cpu-compare"
    onnx_path = work / "hrnet-w32-768.onnx"
    if onnx_path.exists():
        return onnx_path
    work.mkdir(parents=True, exist_ok=True)
    phantoms, ck = work / "phantoms", work / "checkpoints"
    quiet = dict(check=True, stdout=subprocess.DEVNULL)
    if not (ck / "checkpoint_last.safetensors").exists():
        print("making an HRNet-W32 768x768 checkpoint (one training step on phantoms)", file=sys.stderr)
        subprocess.run([str(binary), "data", "phantom", "--out", str(phantoms), "--count", "4"], **quiet)
        # Stopped after one step as by Ctrl-C: checkpoint_last is written and the exit status is 130.
        done = subprocess.run([
            str(binary), "train", "--dataset-path", str(phantoms), "--model", "hrnet-w32", "--image-size", "768",
            "768", "--batch-size", "1", "--epochs", "1", "--warmup-epochs", "0", "--device", "cpu",
            "--interrupt-after-step", "1", "--checkpoint-dir", str(ck), "--log-dir", str(work / "logs"),
        ], stdout=subprocess.DEVNULL)
        if not (ck / "checkpoint_last.safetensors").exists():
            sys.exit(f"training the HRNet-W32 checkpoint failed (exit status {done.returncode})")
    subprocess.run([str(binary), "export", "--checkpoint", str(ck / "checkpoint_last.safetensors"), "--out",
                    str(onnx_path)], check=True)
    return onnx_path


def compare_export(args):
    """onnxruntime on cephalo's own export against cephalo's CPU inference, same network."""
    import numpy as np
    import onnxruntime as ort

    onnx_path = Path(args.onnx) if args.onnx else exported_hrnet_w32(args.cephalo, args.landmarks)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    model, (h, w) = meta["model"], json.loads(meta["input_size"])
    landmarks = len(json.loads(meta["landmarks"]))
    shape = [1 if isinstance(d, str) else d for d in sess.get_inputs()[0].shape]
    if shape[0] != 1:
        sys.exit(f"{onnx_path} has a fixed batch of {shape[0]}: export it with --batch 1 (or dynamic)")
    feed = {"image": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {onnx_path}", file=sys.stderr)
    times = {"cephalo": [], "onnxruntime": []}
    for r in range(args.rounds):
        time.sleep(1.0)  # let the other side's worker threads stop spinning
        times["cephalo"].append(cephalo_ms(args.cephalo, args.threads, "infer", model, (h, w), 1, landmarks, 1,
                                           args.steps))
        time.sleep(1.0)
        times["onnxruntime"].append(median_ms(lambda: sess.run(None, feed), 1, args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()),
              file=sys.stderr)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{model} {h}x{w} batch 1 forward (f32): onnxruntime on `cephalo export`'s model vs cephalo")
    print(f"{'contender':<28} {'ms':>9} {'cephalo/it':>11}")
    for name, ms in medians.items():
        print(f"{name:<28} {ms:>9.1f} {medians['cephalo'] / ms:>10.2f}x")
    return {"model": model, "image_size": [h, w], "batch": 1, "onnx": str(onnx_path), "threads": args.threads,
            "onnxruntime": ort.__version__, "median_ms": medians}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cephalo", default=str(ROOT / "target" / "release" / "cephalo"), help="the cephalo binary")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=5, help="rounds; each contender runs once per round")
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    p.add_argument("--landmarks", type=int, default=19, help="heatmap channels (19: ISBI 2015)")
    p.add_argument("--only", choices=["infer", "train", "export"], help="run one of the comparisons")
    p.add_argument("--onnx", help="with --only export: time this file from `cephalo export` (batch 1 or dynamic)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if not Path(args.cephalo).exists():
        sys.exit(f"{args.cephalo} not found: run `cargo build --release` first (or pass --cephalo)")
    ensure_venv(need_torch=args.only != "export")
    if args.only == "export":
        report = {"export": compare_export(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return

    import onnxruntime as ort
    import torch
    from torch.fx.experimental.optimization import fuse

    sys.path.insert(0, str(ROOT / "benches"))
    from pytorch_reference import adaptive_wing, build_model, random_heatmaps

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report = {
        "cpu": cpu, "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
        "torch": torch.__version__, "onnxruntime": ort.__version__,
    }
    print(f"{cpu}, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}", file=sys.stderr)

    def run_rounds(contenders):
        times = {name: [] for name, _ in contenders}
        for r in range(args.rounds):
            for name, fn in contenders:
                # Let the previous contender's worker threads stop spinning (OpenMP's and
                # onnxruntime's pools busy-wait after their work) before the next one starts.
                time.sleep(1.0)
                times[name].append(fn())
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()),
                  file=sys.stderr)
        return {name: statistics.median(t) for name, t in times.items()}

    def table(title, medians, images):
        ours = medians["cephalo"]
        print(f"\n{title}\n{'contender':<28} {'ms':>9} {'images/s':>9} {'cephalo/it':>11}")
        for name, ms in medians.items():
            print(f"{name:<28} {ms:>9.1f} {images / ms * 1e3:>9.2f} {ours / ms:>10.2f}x")

    if args.only in (None, "infer"):
        size, lm = (768, 768), args.landmarks
        _, net = build_model("hrnet-w32", lm, 1)
        net = fuse(net.eval())  # batch norm folded into the convolutions, as cephalo and ORT do
        x = torch.randn(1, 1, *size)
        net_cl = fuse(build_model("hrnet-w32", lm, 1)[1].eval()).to(memory_format=torch.channels_last)
        net_cl.load_state_dict(net.state_dict())
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with tempfile.TemporaryDirectory() as d:
            onnx_path = Path(d) / "hrnet-w32.onnx"
            torch.onnx.export(net, (x,), str(onnx_path), input_names=["image"], output_names=["heatmaps"],
                              opset_version=17, dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            feed = {"image": x.numpy()}

            def torch_fwd(model, inp):
                def f():
                    with torch.inference_mode():
                        model(inp)
                return lambda: median_ms(f, 1, args.steps)

            medians = run_rounds([
                ("cephalo", lambda: cephalo_ms(args.cephalo, args.threads, "infer", "hrnet-w32", size, 1, lm, 1,
                                               args.steps)),
                ("onnxruntime", lambda: median_ms(lambda: sess.run(None, feed), 1, args.steps)),
                ("pytorch channels_last", torch_fwd(net_cl, x_cl)),
                ("pytorch NCHW", torch_fwd(net, x)),
            ])
        table("HRNet-W32 768x768 batch 1 forward (f32, BN folded)", medians, 1)
        report["infer"] = {"model": "hrnet-w32", "image_size": size, "batch": 1, "median_ms": medians}

    if args.only in (None, "train"):
        size, n, lm = (256, 224), 4, args.landmarks

        def torch_step(channels_last):
            _, model = build_model("hrnet-w8", lm, 1)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt).train()
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
            batches = [(torch.randn(n, 1, *size).contiguous(memory_format=fmt),
                        random_heatmaps(n, lm, size[0] // 4, size[1] // 4, 2.0, "cpu")) for _ in range(4)]
            i = [0]

            def step():
                xb, yb = batches[i[0] % len(batches)]
                i[0] += 1
                opt.zero_grad(set_to_none=True)
                adaptive_wing(model(xb), yb).backward()
                opt.step()
            return lambda: median_ms(step, 1, args.steps)

        medians = run_rounds([
            ("cephalo", lambda: cephalo_ms(args.cephalo, args.threads, "train", "hrnet-w8", size, n, lm, 1,
                                           args.steps)),
            ("pytorch channels_last", torch_step(True)),
            ("pytorch NCHW", torch_step(False)),
        ])
        table(f"hrnet-w8 256x224 batch {n} training step (f32, Adaptive Wing, AdamW)", medians, n)
        report["train"] = {"model": "hrnet-w8", "image_size": size, "batch": n, "median_ms": medians}

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
