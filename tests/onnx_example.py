"""Landmarks of one radiograph with a model written by `cephalo export`.

Needs onnxruntime, numpy and Pillow. Usage: python onnx_example.py model.onnx xray.jpg
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def letterbox(path, meta):
    """The X-ray as the network input (1 x 1 x H x W) and the network -> original pixel map."""
    height, width = json.loads(meta["input_size"])
    image = Image.open(path).convert("F")  # grayscale, 0..255 as float
    s = min(width / image.width, height / image.height)
    ox, oy = (width - image.width * s) / 2, (height - image.height * s) / 2
    # The input covers the source box below; pad with black so that box lies inside the picture,
    # then resample it with Pillow's antialiasing (a triangle filter scaled to the reduction).
    m = int(np.ceil(max(ox, oy) / s)) + 1
    padded = ImageOps.expand(image, border=m, fill=0)
    box = (m - ox / s, m - oy / s, m + (width - ox) / s, m + (height - oy) / s)
    net = np.asarray(padded.resize((width, height), Image.BILINEAR, box=box), np.float32)
    mean, std = float(meta["normalize_mean"]), float(meta["normalize_std"])
    x = ((net / 255 - mean) / std)[None, None]

    def to_original(u, v):  # network pixels -> original pixels (pixel centres at integers)
        return (u + 0.5 - ox) / s - 0.5, (v + 0.5 - oy) / s - 0.5

    return x, to_original


def decode_dark(heatmaps, sigma):
    """Per channel: the argmax, refined by one Newton step on the log of the heatmap smoothed
    with a Gaussian of the training sigma (DARK). Returns K x 2 (x, y) in heatmap pixels."""
    k, h, w = heatmaps.shape
    radius = max(int(np.floor(2.5 * sigma + 0.5)), 1)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    points = np.zeros((k, 2))
    for c, hm in enumerate(heatmaps.astype(np.float64)):
        y, x = np.unravel_index(np.argmax(hm), hm.shape)
        points[c] = x, y
        if x == 0 or y == 0 or x + 1 >= w or y + 1 >= h:
            continue

        def log_smooth(sx, sy):  # smoothed value at (sx, sy), edges replicated
            rows = np.clip(np.arange(sy - radius, sy + radius + 1), 0, h - 1)
            cols = np.clip(np.arange(sx - radius, sx + radius + 1), 0, w - 1)
            return np.log(max(taps @ hm[np.ix_(rows, cols)] @ taps, 1e-10))

        l = {(dx, dy): log_smooth(x + dx, y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        gx, gy = (l[1, 0] - l[-1, 0]) / 2, (l[0, 1] - l[0, -1]) / 2
        gxx = l[1, 0] - 2 * l[0, 0] + l[-1, 0]
        gyy = l[0, 1] - 2 * l[0, 0] + l[0, -1]
        gxy = (l[1, 1] - l[1, -1] - l[-1, 1] + l[-1, -1]) / 4
        det = gxx * gyy - gxy * gxy
        if det > 1e-12 and gxx < 0:
            step = -(gyy * gx - gxy * gy) / det, -(gxx * gy - gxy * gx) / det
            if max(abs(step[0]), abs(step[1])) <= 1:
                points[c] = x + step[0], y + step[1]
    return points


def predict(session, path):
    """{symbol: (x, y)} in original pixels of the image at `path`."""
    meta = session.get_modelmeta().custom_metadata_map
    x, to_original = letterbox(path, meta)
    heatmaps = session.run(["heatmaps"], {"image": x})[0][0]
    stride = int(meta["heatmap_stride"])
    points = decode_dark(heatmaps, float(meta["heatmap_sigma"]))
    symbols = json.loads(meta["landmarks"])
    return {sym: to_original((px + 0.5) * stride - 0.5, (py + 0.5) * stride - 0.5) for sym, (px, py) in zip(symbols, points)}


if __name__ == "__main__":
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    for symbol, (x, y) in predict(session, sys.argv[2]).items():
        print(f"{symbol:5} {x:8.1f} {y:8.1f}")
