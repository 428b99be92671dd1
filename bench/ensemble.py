#!/usr/bin/env python3
"""Ensembles against their steps alone, in one run, with `sluice bench` (closed loop).

    cargo build --release --workspace                     # target/release/sluice
    .venv/bin/python bench/ensemble.py [--seconds 5] [--width 512 --layers 8]

Models (generated here, tract engine, one intra-op thread each):
  heavy: y = tanh(... tanh(x @ W1) ... @ W8), x FP32 [512], 8 layers of 512x512 (or
         --layers of --width): the CPU-heavy step; 2 instances, dynamic batching (max 16).
  heavy2: the same graph with other weights (the second branch).
  light: softmax over [512] (the built-in `sluice_postprocess`), 1 instance, batching.
Ensembles:
  chain:  IN -> heavy -> light -> OUT (two steps A -> B)
  branch: IN -> heavy -> OUT1 and IN -> heavy2 -> OUT2 (two independent branches)

Measured, with every run on the same server in one process:
1. Throughput of `chain` at 8 and 32 closed-loop clients as a fraction of
   min(heavy alone, light alone) at the same concurrency; p99 of `chain` against the sum
   of the two steps' p99 alone.
2. Latency of `branch` (one client) against the slower branch alone (one client): p50
   and p99 ratios.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import serverproc  # noqa: E402

BIN = ROOT / "target" / "release" / "sluice"
D, LAYERS = 512, 8


def heavy(repo, name, seed):
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.normal(size=(D, D)) / np.sqrt(D)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [D, D], w.flatten()))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "y" if i == LAYERS - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [-1, D]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, name, [io[0]], [io[1]], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(
        f'backend: "tract"\nmax_batch_size: 16\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
        'dynamic_batching { }\ninstance_group [ { count: 2 } ]\n'
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n')


def make_repo(repo):
    heavy(repo, "heavy", 1)
    heavy(repo, "heavy2", 2)
    (repo / "light" / "1").mkdir(parents=True)
    (repo / "light" / "config.pbtxt").write_text(
        f'backend: "sluice_postprocess"\nmax_batch_size: 16\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
        f'output [ {{ name: "p" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
        'parameters { key: "kind" value: { string_value: "softmax" } }\n'
        'dynamic_batching { }\ninstance_group [ { count: 1 } ]\n')
    for name, steps, outputs in [
        ("chain", ['{ model_name: "heavy" input_map { key: "x" value: "IN" } output_map { key: "y" value: "H" } }',
                   '{ model_name: "light" input_map { key: "x" value: "H" } output_map { key: "p" value: "OUT" } }'],
         ["OUT"]),
        ("branch", ['{ model_name: "heavy" input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT1" } }',
                    '{ model_name: "heavy2" input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT2" } }'],
         ["OUT1", "OUT2"]),
    ]:
        (repo / name / "1").mkdir(parents=True)
        outs = ", ".join(f'{{ name: "{o}" data_type: TYPE_FP32 dims: [ {D} ] }}' for o in outputs)
        (repo / name / "config.pbtxt").write_text(
            f'platform: "ensemble"\nmax_batch_size: 16\n'
            f'input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {D} ] }} ]\noutput [ {outs} ]\n'
            f'ensemble_scheduling {{ step [ {", ".join(steps)} ] }}\n')


def bench(url, model, seconds, *args):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [str(BIN), "bench", "-u", url, "-m", model, "--duration", str(seconds), "--warmup", "1",
               "--report", f.name, *args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(f.name))["runs"]


def main():
    global D, LAYERS
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--cpus", default="0,1")
    ap.add_argument("--width", type=int, default=D, help="the heavy step's layer width")
    ap.add_argument("--layers", type=int, default=LAYERS, help="the heavy step's layer count")
    args = ap.parse_args()
    D, LAYERS = args.width, args.layers
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        make_repo(repo)
        proc, ports = serverproc.start(BIN, repo, "--metrics-port", "0", cpus=args.cpus)
        url = f"127.0.0.1:{ports['HTTP']}"
        try:
            closed = {}
            for model in ["heavy", "light", "chain"]:
                closed[model] = {r["label"]: r for r in
                                 bench(url, model, args.seconds, "--concurrency-range", "8:32:24")}
            single = {}
            for model in ["heavy", "heavy2", "branch"]:
                single[model] = bench(url, model, args.seconds)[0]
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"closed loop, {args.seconds:g} s per run, server on CPUs {args.cpus}, heavy step "
          f"{LAYERS} layers of {D}x{D}")
    print(f"{'run':<16} {'heavy req/s':>12} {'light req/s':>12} {'chain req/s':>12} {'fraction':>9} "
          f"{'chain p99':>10} {'sum p99':>9} {'ratio':>6}")
    for label in closed["chain"]:
        h, l, c = (closed[m][label] for m in ["heavy", "light", "chain"])
        floor = min(h["throughput_rps"], l["throughput_rps"])
        sum_p99 = h["latency_ms"]["p99"] + l["latency_ms"]["p99"]
        print(f"{label:<16} {h['throughput_rps']:>12.1f} {l['throughput_rps']:>12.1f} {c['throughput_rps']:>12.1f} "
              f"{c['throughput_rps'] / floor:>9.3f} {c['latency_ms']['p99']:>10.3f} {sum_p99:>9.3f} "
              f"{c['latency_ms']['p99'] / sum_p99:>6.3f}")
    slower = max(["heavy", "heavy2"], key=lambda m: single[m]["latency_ms"]["p50"])
    b, s = single["branch"]["latency_ms"], single[slower]["latency_ms"]
    print(f"one client: branch p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms; slower branch alone ({slower}) "
          f"p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms; ratio p50 {b['p50'] / s['p50']:.3f}, "
          f"p99 {b['p99'] / s['p99']:.3f}")


if __name__ == "__main__":
    main()
