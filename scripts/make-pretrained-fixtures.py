#!/usr/bin/env python3
"""Writes the fixtures of tests/pretrained.rs into tests/fixtures/pretrained/ from the real
libraries (timm's HRNet, torchvision's ResNet), so the Rust tests prove cephalo's mapping of
their weights without PyTorch in CI. Nothing is downloaded: every model starts from random
weights with a fixed seed.

    python -m venv --system-site-packages venv && venv/bin/pip install torch torchvision timm safetensors
    venv/bin/python scripts/make-pretrained-fixtures.py

Written:
* keys-<model>.json: every key and shape of timm's hrnet_w18/w32/w48 and torchvision's
  resnet18/34/50 state dicts (full size; the test checks that every key maps or is ignored and
  every shape matches cephalo's network).
* hrnet_w2.safetensors (timm layout), hrnet_w2_mmpose.pth (torch.save of an mmpose-style
  checkpoint: the same values under backbone., a keypoint head and a meta dict) and
  hrnet_w2_legacy.pth (the timm layout in torch.save's pre-1.6 format, which MSRA's and timm's
  2019-2020 HRNet files use), all float16 to stay small: timm's HighResolutionNet with branch widths 2/4/8/16 (W18's structure, small
  enough to commit), random weights rounded to float16 and random BN statistics, without the
  classification head (11 M values; the key lists cover its keys);
  hrnet_w2_features.safetensors: its four stage-4 branch outputs in eval mode for an RGB input
  and for a grey input repeated to 3 channels.
* counter_features.safetensors: the same outputs (layer4 for ResNet) of the full-size
  timm hrnet_w18 and torchvision resnet18, with every tensor set by counter_values() below
  (the test computes the same values; the weights themselves would be 40-80 MB).
* evil.pth: a torch.save zip whose pickle calls os.system: the reader must refuse it.
"""
import collections
import io
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import safetensors.torch
import timm
import timm.models.hrnet as timm_hrnet
import torch
import torchvision

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pretrained")
SIZE = 64  # input height and width: stage 4's branches are 16, 8, 4 and 2 pixels
# cephalo's input normalisation (src/data/loader.rs): (pixel / 255 - 0.5) / 0.25
CEPHALO_MEAN, CEPHALO_STD = 0.5, 0.25


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def counter_values(name, n, lo, hi):
    """n values in [lo, hi) from splitmix64 of (hash of name, index): float32 arithmetic the
    Rust test repeats operation for operation."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return lo32 + (hi32 - lo32) * u


def value_range(key, shape):
    """The range counter_values draws a tensor from, by its role (mirrored in the Rust test)."""
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        a = float(np.sqrt(np.float32(6.0) / np.float32(fan_in)))
        return -a, a
    if leaf == "weight":  # batch-norm gamma (a linear layer's 2-D weight is never loaded)
        return 0.3, 0.7
    if leaf == "bias":
        return -0.1, 0.1
    if leaf == "running_mean":
        return -0.1, 0.1
    if leaf == "running_var":
        return 0.5, 1.5
    raise ValueError(key)


def set_counter_weights(model):
    sd = model.state_dict()
    for k, t in sd.items():
        if not t.is_floating_point() or t.dim() not in (1, 4):
            continue
        lo, hi = value_range(k, list(t.shape))
        t.copy_(torch.from_numpy(counter_values(k, t.numel(), lo, hi)).reshape(t.shape))


def randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) * 0.4 + 0.3
            m.bias.data = torch.rand(c, generator=gen) * 0.2 - 0.1
            m.running_mean = torch.rand(c, generator=gen) * 0.2 - 0.1
            m.running_var = torch.rand(c, generator=gen) + 0.5


def inputs(gen):
    """An RGB image normalised like cephalo's input, and a grey one repeated to 3 channels."""
    rgb = (torch.rand(1, 3, SIZE, SIZE, generator=gen) - CEPHALO_MEAN) / CEPHALO_STD
    grey = (torch.rand(1, 1, SIZE, SIZE, generator=gen) - CEPHALO_MEAN) / CEPHALO_STD
    return rgb, grey


def hrnet_features(model, x):
    with torch.no_grad():
        x = model.act1(model.bn1(model.conv1(x)))
        x = model.act2(model.bn2(model.conv2(x)))
        return model.stages(x)


def resnet_features(model, x):
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def features(arch, model, prefix, gen):
    model.eval()
    rgb, grey = inputs(gen)
    out = {f"{prefix}rgb_input": rgb, f"{prefix}grey_input": grey}
    for name, x in [("rgb", rgb), ("grey", grey.repeat(1, 3, 1, 1))]:
        if arch == "hrnet":
            for b, y in enumerate(hrnet_features(model, x)):
                out[f"{prefix}{name}_b{b}"] = y
        else:
            out[f"{prefix}{name}_layer4"] = resnet_features(model, x)
    return out


def write_keys():
    models = {
        "hrnet_w18": lambda: timm.create_model("hrnet_w18", pretrained=False),
        "hrnet_w32": lambda: timm.create_model("hrnet_w32", pretrained=False),
        "hrnet_w48": lambda: timm.create_model("hrnet_w48", pretrained=False),
        "resnet18": torchvision.models.resnet18,
        "resnet34": torchvision.models.resnet34,
        "resnet50": torchvision.models.resnet50,
    }
    for name, make in models.items():
        library = "timm" if name.startswith("hrnet") else "torchvision"
        version = timm.__version__ if library == "timm" else torchvision.__version__
        sd = make().state_dict()
        doc = {
            "source": f"{library} {version} {name}, state_dict()",
            "tensors": [[k, list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in sd.items()],
        }
        with open(os.path.join(OUT, f"keys-{name}.json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")


def small_hrnet():
    cfg = json.loads(json.dumps(timm_hrnet.cfg_cls["hrnet_w18"]))
    for stage, n in [("stage2", 2), ("stage3", 3), ("stage4", 4)]:
        cfg[stage]["num_channels"] = [2 << i for i in range(n)]
        cfg[stage]["num_blocks"] = tuple(cfg[stage]["num_blocks"])
    cfg["stage1"]["num_blocks"] = tuple(cfg["stage1"]["num_blocks"])
    return timm_hrnet.HighResolutionNet(cfg)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran a command",))


def write_evil():
    """A torch.save zip with a pickle that calls os.system when PyTorch (weights_only=False)
    loads it: it is never loaded here, only written."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", pickle.dumps({"conv1.weight": Evil()}, protocol=2))
        z.writestr("evil/byteorder", "little")
        z.writestr("evil/version", "3\n")
    with open(os.path.join(OUT, "evil.pth"), "wb") as f:
        f.write(buf.getvalue())


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(18)
    write_keys()

    small = small_hrnet()
    randomise_bn(small, gen)
    small.eval()
    head = ("incre", "downsamp", "final", "classifier")
    sd = {k: v for k, v in small.state_dict().items() if not k.startswith(head)}
    for v in sd.values():
        if v.is_floating_point():
            v.copy_(v.half().float())  # the float16 file holds exactly the model's values
    safetensors.torch.save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, os.path.join(OUT, "hrnet_w2.safetensors")
    )
    metadata = small.state_dict()._metadata  # what a real state dict pickles through BUILD
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    backbone = collections.OrderedDict((f"backbone.{k}", v) for k, v in half.items())
    # A parameter pickles through torch._utils._rebuild_parameter: the reader must take it too.
    backbone["backbone.conv1.weight"] = torch.nn.Parameter(half["conv1.weight"], requires_grad=False)
    backbone["keypoint_head.final_layer.weight"] = torch.zeros(19, 15 * 2, 1, 1, dtype=torch.half)
    backbone._metadata = collections.OrderedDict((f"backbone.{k}", v) for k, v in metadata.items())
    torch.save(
        {"meta": {"epoch": 210, "mmpose_version": "0.29.0"}, "state_dict": backbone},
        os.path.join(OUT, "hrnet_w2_mmpose.pth"),
    )
    legacy = collections.OrderedDict(half)
    legacy._metadata = metadata
    torch.save(legacy, os.path.join(OUT, "hrnet_w2_legacy.pth"), _use_new_zipfile_serialization=False)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in features("hrnet", small, "", gen).items()},
        os.path.join(OUT, "hrnet_w2_features.safetensors"),
    )

    counter = {}
    w18 = timm.create_model("hrnet_w18", pretrained=False)
    set_counter_weights(w18)
    counter.update(features("hrnet", w18, "hrnet_w18.", gen))
    r18 = torchvision.models.resnet18()
    set_counter_weights(r18)
    counter.update(features("resnet", r18, "resnet18.", gen))
    for k, v in counter.items():
        print(f"{k}: {tuple(v.shape)} max |x| {v.abs().max().item():.3g}", file=sys.stderr)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in counter.items()}, os.path.join(OUT, "counter_features.safetensors")
    )
    write_evil()


if __name__ == "__main__":
    main()
