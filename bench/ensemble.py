#!/usr/bin/env python3
"""Ensembles against their steps alone, in one run, with `sluice bench` (closed loop).

    cargo build --release --workspace                     # target/release/sluice
    .venv/bin/python bench/ensemble.py [--seconds 5] [--rounds 3] [--width 512 --layers 8]

Models (generated here, tract engine, one intra-op thread each):
  heavy: y = tanh(... tanh(x @ W1) ... @ W8), x FP32 [512], 8 layers of 512x512 (or
         --layers of --width): the CPU-heavy step; 2 instances, dynamic batching (max 16).
  heavy2: the same graph with other weights (the second branch).
  light: softmax over [512] (the built-in `sluice_postprocess`), 1 instance, batching;
         it runs inline, on the request's thread.
  light_queued: the same softmax with `inline: false`: every run queued for its instance.
Ensembles:
  chain:  IN -> heavy -> light -> OUT (two steps A -> B)
  chain_queued: IN -> heavy -> light_queued -> OUT (the same chain, its second step queued)
  branch: IN -> heavy -> OUT1 and IN -> heavy2 -> OUT2 (two independent branches)

Measured, with every run on the same server in one process, in `--rounds` rounds that
each run every model once (so a drift of the machine reaches all of them alike); the
tables give each round's ratios and the median over rounds:
1. Throughput of `chain` at 8 and 32 closed-loop clients as a fraction of
   min(heavy alone, light alone) at the same concurrency; p99 of `chain` against the sum
   of the two steps' p99 alone; the same for `chain_queued`.
2. Latency of `branch` (one client) against the slower branch alone (one client): p50
   and p99 ratios.
"""

import argparse
import json
import os
import statistics
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
    for name, inline in [("light", "true"), ("light_queued", "false")]:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(
            f'backend: "sluice_postprocess"\nmax_batch_size: 16\n'
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
            f'output [ {{ name: "p" data_type: TYPE_FP32 dims: [ {D} ] }} ]\n'
            'parameters { key: "kind" value: { string_value: "softmax" } }\n'
            f'parameters {{ key: "inline" value: {{ string_value: "{inline}" }} }}\n'
            'dynamic_batching { }\ninstance_group [ { count: 1 } ]\n')
    for name, steps, outputs in [
        ("chain", ['{ model_name: "heavy" input_map { key: "x" value: "IN" } output_map { key: "y" value: "H" } }',
                   '{ model_name: "light" input_map { key: "x" value: "H" } output_map { key: "p" value: "OUT" } }'],
         ["OUT"]),
        ("chain_queued",
         ['{ model_name: "heavy" input_map { key: "x" value: "IN" } output_map { key: "y" value: "H" } }',
          '{ model_name: "light_queued" input_map { key: "x" value: "H" } output_map { key: "p" value: "OUT" } }'],
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


WARMUP_S = 1


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(url, model, seconds, *args, pid=None):
    """The runs of one `sluice bench`; with `pid`, each run also gets `server_cpu_ms`: the
    server's CPU time per request over the run and its warm-up (one concurrency per call)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [str(BIN), "bench", "-u", url, "-m", model, "--duration", str(seconds), "--warmup",
               str(WARMUP_S), "--report", f.name, *args]
        before = cpu_seconds(pid) if pid else None
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs = json.load(open(f.name))["runs"]
        if pid:
            assert len(runs) == 1
            requests = runs[0]["throughput_rps"] * (seconds + WARMUP_S)
            runs[0]["server_cpu_ms"] = (cpu_seconds(pid) - before) * 1000 / requests
        return runs


def main():
    global D, LAYERS
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
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
            rounds = []
            for _ in range(args.rounds):
                closed, single = {}, {}
                for model in ["heavy", "light", "chain", "chain_queued"]:
                    closed[model] = {}
                    for c in (8, 32):
                        run = bench(url, model, args.seconds, "--concurrency-range", f"{c}:{c}:1",
                                    pid=proc.pid)[0]
                        closed[model][run["label"]] = run
                for model in ["heavy", "heavy2", "branch"]:
                    single[model] = bench(url, model, args.seconds)[0]
                rounds.append((closed, single))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"closed loop, {args.seconds:g} s per run, {args.rounds} rounds, server on CPUs {args.cpus}, "
          f"heavy step {LAYERS} layers of {D}x{D}")
    print("fraction = chain / min(heavy, light) in the same round; queued = the chain whose softmax "
          "step is queued for its instance")
    print(f"{'run':<16} {'round':>5} {'heavy req/s':>12} {'light req/s':>12} {'chain req/s':>12} "
          f"{'fraction':>9} {'chain p99':>10} {'sum p99':>9} {'queued req/s':>13} {'fraction':>9} {'p99':>8}")
    labels = list(rounds[0][0]["chain"])
    cpu_lines = []
    for label in labels:
        cpu = {m: [r[0][m][label]["server_cpu_ms"] for r in rounds] for m in ["heavy", "chain", "chain_queued"]}
        med = {m: statistics.median(v) for m, v in cpu.items()}
        cpu_lines.append(f"{label:<16} server CPU per request (median): heavy {med['heavy'] * 1000:.1f} us, "
                         f"chain {med['chain'] * 1000:.1f} us ({med['chain'] / med['heavy']:.3f}x), "
                         f"chain_queued {med['chain_queued'] * 1000:.1f} us "
                         f"({med['chain_queued'] / med['heavy']:.3f}x)")
        fractions, queued = [], []
        for i, (closed, _) in enumerate(rounds):
            h, l, c, q = (closed[m][label] for m in ["heavy", "light", "chain", "chain_queued"])
            floor = min(h["throughput_rps"], l["throughput_rps"])
            sum_p99 = h["latency_ms"]["p99"] + l["latency_ms"]["p99"]
            fractions.append(c["throughput_rps"] / floor)
            queued.append(q["throughput_rps"] / floor)
            print(f"{label:<16} {i + 1:>5} {h['throughput_rps']:>12.1f} {l['throughput_rps']:>12.1f} "
                  f"{c['throughput_rps']:>12.1f} {fractions[-1]:>9.3f} {c['latency_ms']['p99']:>10.3f} "
                  f"{sum_p99:>9.3f} {q['throughput_rps']:>13.1f} {queued[-1]:>9.3f} "
                  f"{q['latency_ms']['p99']:>8.3f}")
        print(f"{label:<16} {'median':>5} {'':>12} {'':>12} {'':>12} {statistics.median(fractions):>9.3f} "
              f"{'':>10} {'':>9} {'':>13} {statistics.median(queued):>9.3f}")
    for line in cpu_lines:
        print(line)
    p50s, p99s = [], []
    for i, (_, single) in enumerate(rounds):
        slower = max(["heavy", "heavy2"], key=lambda m: single[m]["latency_ms"]["p50"])
        b, s = single["branch"]["latency_ms"], single[slower]["latency_ms"]
        p50s.append(b["p50"] / s["p50"])
        p99s.append(b["p99"] / s["p99"])
        print(f"round {i + 1}, one client: branch p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms; slower branch "
              f"alone ({slower}) p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms; ratio p50 {p50s[-1]:.3f}, "
              f"p99 {p99s[-1]:.3f}")
    print(f"branch / slower branch, median over rounds: p50 {statistics.median(p50s):.3f}, "
          f"p99 {statistics.median(p99s):.3f}")


if __name__ == "__main__":
    main()
