#!/usr/bin/env python3
"""The `sluice_image` step against the same work in Pillow + numpy, in one run: decode,
shorter side to 256 (bilinear), center crop 224, (x - 127) / 128, NCHW float32 (the
EfficientNet-Lite recipe of examples/pipelines/image_preprocess).

    .venv/bin/python scripts/make_pipeline_models.py      # the photos
    cargo build --release --workspace                     # target/release/sluice
    # optional, for the step alone without a server:
    cargo build --release -p sluice-backend-builtin --example image_step_bench
    .venv/bin/python bench/image_step.py [--seconds 10] [--image coffee.png]

Two comparisons:
1. Served: `sluice serve` with the step (2 instances, one per core) answering tritonclient
   HTTP binary requests from 1 and 8 client threads (one client each), requests/s; against
   Pillow + numpy called directly (no server, no HTTP) from 1 and 8 Python threads,
   images/s. The server side also pays HTTP, the client and the copy of the 602 KB answer,
   so the ratio understates the step's own speed.
2. The step alone (when the example binary exists): µs per image on one thread, against
   Pillow + numpy's µs per image on one thread.
"""

import argparse
import io
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
EXAMPLE = ROOT / "target" / "release" / "examples" / "image_step_bench"
IMAGES = ROOT / "models-extra" / "pipeline-images"

CONFIG = (ROOT / "examples" / "pipelines" / "image_preprocess" / "config.pbtxt").read_text() + \
    "\ninstance_group [ { count: 2 } ]\n"


def pillow(data):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def closed_loop(threads, seconds, make_call):
    """Runs `threads` loops of `make_call()()` for `seconds`; calls per second."""
    counts = [0] * threads
    stop = time.monotonic() + seconds
    def loop(i):
        call = make_call()
        call()  # warm up
        while time.monotonic() < stop:
            call()
            counts[i] += 1
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--image", default="coffee.png")
    ap.add_argument("--alone-only", action="store_true", help="only comparison 2 (no server)")
    args = ap.parse_args()
    data = (IMAGES / args.image).read_bytes()
    w, h = Image.open(IMAGES / args.image).size

    print(f"image: {args.image} ({w}x{h}); one run, shared 2-core machine\n")
    if not args.alone_only:
        served_table(args, data)
    step_alone(args, data)


def served_table(args, data):
    import tritonclient.http as httpclient
    from conftest import Server

    with tempfile.TemporaryDirectory() as repo:
        model = pathlib.Path(repo) / "image_preprocess"
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(CONFIG)
        server = Server(repo)
        try:
            arr = np.array([[data]], dtype=np.object_)

            def served():
                client = httpclient.InferenceServerClient(server.http_url)
                inp = httpclient.InferInput("image", [1, 1], "BYTES")
                inp.set_data_from_numpy(arr)
                out = [httpclient.InferRequestedOutput("pixels", binary_data=True)]
                return lambda: client.infer("image_preprocess", [inp], outputs=out).as_numpy("pixels")

            rows = []
            for threads in (1, 8):
                s = closed_loop(threads, args.seconds, served)
                p = closed_loop(threads, args.seconds, lambda: (lambda: pillow(data)))
                rows.append((threads, s, p))
        finally:
            server.stop()

    print(f"{args.seconds:.0f} s per cell\n")
    print("| clients / threads | Sluice served req/s | Pillow+numpy in-process images/s | Sluice / Pillow |")
    print("|---|---|---|---|")
    for threads, s, p in rows:
        print(f"| {threads} | {s:.0f} | {p:.0f} | {s / p:.2f} |")


def step_alone(args, data):
    if not EXAMPLE.exists():
        print(f"(no {EXAMPLE.relative_to(ROOT)}: the step alone is not measured)")
        return
    iterations = 200
    for _ in range(5):
        pillow(data)
    t = time.perf_counter()
    for _ in range(iterations):
        pillow(data)
    pil_us = (time.perf_counter() - t) * 1e6 / iterations
    out = subprocess.run([str(EXAMPLE), str(IMAGES / args.image), "--iterations", str(iterations)],
                         check=True, capture_output=True, text=True).stdout
    step_us = float(out.split()[1])
    print(f"\nstep alone, one thread: Sluice {step_us:.0f} µs/image, Pillow+numpy {pil_us:.0f} µs/image, "
          f"Pillow / Sluice {pil_us / step_us:.2f}")


if __name__ == "__main__":
    main()
