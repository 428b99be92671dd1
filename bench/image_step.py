#!/usr/bin/env python3
"""The `sluice_image` step alone vs the same work in Pillow + numpy, per image, one thread,
in one run: decode, shorter side to 256 (bilinear), center crop 224, (x - 127) / 128, NCHW
float32 (the EfficientNet-Lite recipe of examples/pipelines/image_preprocess).

    cargo build --release -p sluice-backend-builtin --example image_step_bench
    .venv/bin/python scripts/make_pipeline_models.py      # the photos
    .venv/bin/python bench/image_step.py [--iterations 200]

Prints a Markdown table: µs per image for each, and Pillow / Sluice.
"""

import argparse
import io
import pathlib
import subprocess
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "examples" / "image_step_bench"
IMAGES = ROOT / "models-extra" / "pipeline-images"
FILES = ["coffee.png", "rocket.jpg", "chelsea.webp", "astronaut.png"]


def pillow(data):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def pillow_us(path, iterations):
    data = path.read_bytes()
    for _ in range(5):
        pillow(data)
    t = time.perf_counter()
    for _ in range(iterations):
        pillow(data)
    return (time.perf_counter() - t) * 1e6 / iterations


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    paths = [IMAGES / f for f in FILES]
    out = subprocess.run([str(BIN), *map(str, paths), "--iterations", str(args.iterations)],
                         check=True, capture_output=True, text=True).stdout
    sluice = {pathlib.Path(line.split()[0]).name: float(line.split()[1]) for line in out.splitlines()}
    print("| image | size | Sluice µs/image | Pillow+numpy µs/image | Pillow / Sluice |")
    print("|---|---|---|---|---|")
    for p in paths:
        us = pillow_us(p, args.iterations)
        w, h = Image.open(p).size
        print(f"| {p.name} | {w}x{h} | {sluice[p.name]:.0f} | {us:.0f} | {us / sluice[p.name]:.2f} |")


if __name__ == "__main__":
    main()
