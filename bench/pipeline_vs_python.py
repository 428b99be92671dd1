#!/usr/bin/env python3
"""The whole image service (issue 14): Sluice's `image_classifier` ensemble (built-in
decode + resize + crop + normalize, EfficientNet-Lite0 on ONNX Runtime or tract, built-in
softmax + top-5 + labels) against the same pipeline in Python (Pillow + numpy +
onnxruntime + numpy), requests/s at 1 and 8 clients, in one run, rounds interleaved.

    .venv/bin/python scripts/make_pipeline_models.py      # models-extra/pipelines, photos
    cargo build --release --workspace                     # target/release/sluice
    .venv/bin/python bench/pipeline_vs_python.py [--seconds 10] [--rounds 2] [--image coffee.png]

Sluice is served by `sluice serve` and called over HTTP (tritonclient, binary tensors,
one client per thread); Python is called in process (no server, no HTTP, one shared
onnxruntime session, which runs concurrent calls), so the ratio understates what a
Python *server* (FastAPI, Triton's Python backend) would pay on top. Before timing, both
answer the photo and their top-5 must agree (ties within 0.02 allowed).
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

from conftest import Server  # noqa: E402
from test_builtin import IMAGES, pil_reference  # noqa: E402

PIPELINES = ROOT / "models-extra" / "pipelines"
ENSEMBLES = ROOT / "examples" / "pipelines" / "ensembles"


def repository(tmp):
    for model in sorted(p for p in PIPELINES.iterdir() if p.is_dir()):
        shutil.copytree(model, tmp / model.name, symlinks=True)
    for e in sorted(ENSEMBLES.iterdir()):
        (tmp / e.name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(e / "config.pbtxt", tmp / e.name / "config.pbtxt")
    return tmp


def python_pipeline():
    import onnxruntime as ort

    session = ort.InferenceSession(str(PIPELINES / "efficientnet_lite0" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    labels = (PIPELINES / "imagenet_top5" / "1" / "labels.txt").read_text().splitlines()

    def classify(data):
        x = pil_reference(data, (224, 224), shorter_side=256, mean=127.0, std=128.0).transpose(2, 0, 1)[None]
        logits = session.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:5]
        return top, p[top], [labels[c] for c in top]

    return classify


def sluice_client(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)

    def classify(data):
        inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=np.object_), binary_data=True)
        r = client.infer("image_classifier", [inp])
        return r.as_numpy("CLASSES")[0], r.as_numpy("PROBABILITIES")[0], r.as_numpy("LABELS")[0]

    return classify


def closed_loop(threads, seconds, make_call, data):
    """Answers per second of `threads` closed loops, each with its own `make_call()`."""
    counts, stop, errors = [0] * threads, threading.Event(), []

    def loop(i):
        call = make_call()
        while not stop.is_set():
            try:
                call(data)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                return
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image", default="coffee.png")
    ap.add_argument("--clients", default="1,8")
    args = ap.parse_args()
    if not (PIPELINES / "efficientnet_lite0" / "1" / "model.onnx").exists():
        sys.exit("run scripts/make_pipeline_models.py first")
    data = (IMAGES / args.image).read_bytes()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    server = Server(repository(tmp), "--model-control-mode", "explicit", "--load-model", "image_classifier")
    try:
        py = python_pipeline()
        top, p, _ = py(data)
        classes, probs, names = sluice_client(server)(data)
        for got, want in zip(classes, top):
            if got != want:
                assert abs(probs[list(classes).index(got)] - p[list(top).index(want)]) < 0.02, (classes, top)
        print(f"answers agree: top-1 {classes[0]} ({names[0].decode()}), python {top[0]}")
        shared_python = python_pipeline()  # one session for every Python thread
        clients = [int(c) for c in args.clients.split(",")]
        results = {(side, c): [] for side in ("sluice", "python") for c in clients}
        for r in range(args.rounds):
            order = ("sluice", "python") if r % 2 == 0 else ("python", "sluice")
            for c in clients:
                for side in order:
                    make = (lambda: sluice_client(server)) if side == "sluice" else (lambda: shared_python)
                    results[(side, c)].append(closed_loop(c, args.seconds, make, data))
        print(f"\n{args.image}, {args.rounds} rounds of {args.seconds:g} s (median):\n")
        print("| clients | Sluice ensemble req/s | Python (Pillow + onnxruntime) req/s | Sluice / Python |")
        print("|---:|---:|---:|---:|")
        for c in clients:
            s, p = np.median(results[("sluice", c)]), np.median(results[("python", c)])
            print(f"| {c} | {s:.1f} | {p:.1f} | {s / p:.2f} |")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
