"""Variant choice under a rising and falling open-loop Poisson load (issue 15), and the
latency of a request larger than a batch split across instances.

A family of two generated MLP variants of very different cost (stated accuracies
0.80 and 0.70; the numbers are the family's, not measured) is profiled with
`sluice profile` (which writes each variant's profile.json, the server's seed), then
served; the same Poisson arrival schedule, rising from 20 % to 150 % of the accurate
variant's measured capacity and falling again, is sent three times: always to the
accurate variant, always to the fast one, and to the family with a latency objective
(Sluice's choice). Per load step: SLO attainment (answered within the objective,
measured from the scheduled arrival, so no coordinated omission), mean accuracy
served, goodput (answers within the objective per second).

Then a model with `sluice_split_requests` answers a 4096-row request on 2 instances,
compared with the same rows in one run (the same model with max_batch_size 4096).

    python bench/variants.py --bin target/release/sluice

The server is pinned to CPU 0 and the load generator to the rest (`taskset`); on a
2-core shared machine the absolute numbers are noisy, the comparison within one run
is the result.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).parent))
import serverproc  # noqa: E402

WIDTH = 256
ACCURACY = {"accurate": 0.80, "fast": 0.70}


def mlp(name, hidden, layers):
    rng = np.random.default_rng(1)
    nodes, inits, prev, width = [], [], "x", WIDTH
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev, width = f"r{i}", hidden
    w = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    inits.append(helper.make_tensor("wo", TensorProto.FLOAT, w.shape, w.flatten()))
    nodes.append(helper.make_node("MatMul", [prev, "wo"], ["y"]))
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def write_model(repo, name, model, max_batch, extra=""):
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "tract"\nmax_batch_size: {max_batch}\n'
        f'input [{{ name: "x" data_type: TYPE_FP32 dims: [{WIDTH}] }}]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [10] }]\n' + extra)


def poisson_schedule(steps, seconds, seed=1):
    """[(t, step index)] arrival times of a piecewise-constant Poisson process."""
    rng = random.Random(seed)
    out, t0 = [], 0.0
    for i, rate in enumerate(steps):
        t = t0
        while True:
            t += rng.expovariate(rate)
            if t >= t0 + seconds:
                break
            out.append((t, i))
        t0 += seconds
    return out


def run_load(base, model, schedule, objective_ms, params, workers=96):
    body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.5] * WIDTH}]}
    if params:
        body["parameters"] = params
    data = json.dumps(body)
    results = [None] * len(schedule)
    local = threading.local()

    def send(ix, at, start):
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            r = s.post(f"{base}/v2/models/{model}/infer", data=data, timeout=30,
                       headers={"Content-Type": "application/json"})
            done = time.monotonic()
            variant = model
            if r.status_code == 200:
                variant = r.json().get("parameters", {}).get("sluice_variant", model)
            results[ix] = (r.status_code, (done - start - at) * 1e3, variant)
        except requests.RequestException:
            results[ix] = (0, None, None)

    start = time.monotonic() + 0.5
    with ThreadPoolExecutor(workers) as pool:
        for ix, (at, _) in enumerate(schedule):
            pool.submit(send, ix, at, start)
    return results


def summarize(schedule, results, steps, seconds, objective_ms):
    rows = []
    for i, rate in enumerate(steps):
        mine = [r for (_, s), r in zip(schedule, results) if s == i]
        ok = [r for r in mine if r[0] == 200 and r[1] is not None]
        met = [r for r in ok if r[1] <= objective_ms]
        acc = [ACCURACY[r[2]] for r in ok]
        rows.append({"rate": rate, "sent": len(mine), "attainment": len(met) / max(1, len(mine)),
                     "mean_accuracy": float(np.mean(acc)) if acc else None,
                     "goodput": len(met) / seconds})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/sluice")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per load step")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    work = Path(tempfile.mkdtemp(prefix="sluice-variants-"))
    repo = work / "models"
    dyn = "dynamic_batching { }\n"
    write_model(repo, "accurate", mlp("accurate", 4096, 3), 8, dyn)
    write_model(repo, "fast", mlp("fast", 64, 1), 8, dyn)
    params = "".join(f'parameters: {{ key: "variant.{m}" value: {{ string_value: "accuracy={a}" }} }}\n'
                     for m, a in ACCURACY.items())
    (repo / "fam").mkdir()
    (repo / "fam" / "config.pbtxt").write_text(f'name: "fam"\nplatform: "sluice_family"\n{params}')
    prof = subprocess.run(["taskset", "-c", "0", str(binary), "profile", "--model-repository", str(repo),
                           "--model", "accurate", "--model", "fast", "--ort-library", "off",
                           "--seconds-per-point", "1"], capture_output=True, text=True, check=True)
    print(prof.stdout)
    profiles = {m: json.loads((repo / m / "profile.json").read_text()) for m in ACCURACY}
    capacity = max(b["throughput_per_s"] for b in profiles["accurate"]["batches"])
    p50_1 = profiles["accurate"]["batches"][0]["latency_ms"]["p50"]
    objective = max(5.0, round(4 * p50_1, 1))
    fractions = [0.2, 0.6, 1.0, 1.5, 1.0, 0.6, 0.2]
    steps = [f * capacity for f in fractions]
    schedule = poisson_schedule(steps, args.seconds)
    cpus = os.cpu_count() or 2
    proc, ports = serverproc.start(binary, repo, cpus="0")
    base = f"http://127.0.0.1:{ports['HTTP']}"
    out = {"capacity_rows_per_s": capacity, "objective_ms": objective, "fractions": fractions,
           "seconds_per_step": args.seconds, "cpus": cpus, "policies": {}}
    try:
        for policy, model, p in [("always-accurate", "accurate", None), ("always-fast", "fast", None),
                                 ("sluice", "fam", {"latency_objective_ms": objective})]:
            results = run_load(base, model, schedule, objective, p)
            out["policies"][policy] = summarize(schedule, results, steps, args.seconds, objective)
            time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"accurate capacity {capacity:.0f} rows/s, objective {objective} ms, "
          f"{args.seconds:.0f} s per step")
    print(f"{'load':>6} | " + " | ".join(f"{p:^30}" for p in out["policies"]))
    print(f"{'':>6} | " + " | ".join(f"{'attain':>8} {'acc':>6} {'goodput':>8}    " for _ in out["policies"]))
    for i, f in enumerate(fractions):
        cells = []
        for rows in out["policies"].values():
            r = rows[i]
            acc = "-" if r["mean_accuracy"] is None else f"{r['mean_accuracy']:.3f}"
            cells.append(f"{r['attainment']:>8.3f} {acc:>6} {r['goodput']:>8.1f}    ")
        print(f"{f:>5.0%} | " + " | ".join(cells))
    out["split"] = split_bench(binary, work)
    print(f"split: 4096 rows on 2 instances in chunks of 256: {out['split']['split_ms']:.1f} ms; "
          f"one run of 4096 rows: {out['split']['one_run_ms']:.1f} ms; "
          f"ratio {out['split']['split_ms'] / out['split']['one_run_ms']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def split_bench(binary, work, reps=10):
    repo = work / "split"
    m = mlp("big", 1024, 2)
    write_model(repo, "chunked", m, 256,
                'instance_group [{ count: 2 }]\n'
                'parameters: { key: "sluice_split_requests" value: { string_value: "true" } }\n')
    write_model(repo, "whole", m, 4096)
    x = np.random.default_rng(2).standard_normal((4096, WIDTH)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [4096, WIDTH], "datatype": "FP32",
                                   "data": x.flatten().tolist()}]})
    proc, ports = serverproc.start(binary, repo, cpus="0-1")
    base = f"http://127.0.0.1:{ports['HTTP']}"
    try:
        times, answers = {}, {}
        for model in ("chunked", "whole"):
            s = requests.Session()
            s.post(f"{base}/v2/models/{model}/infer", data=body, timeout=120).raise_for_status()
            t = []
            for _ in range(reps):
                t0 = time.monotonic()
                r = s.post(f"{base}/v2/models/{model}/infer", data=body, timeout=120)
                t.append((time.monotonic() - t0) * 1e3)
                r.raise_for_status()
            times[model] = float(np.median(t))
            answers[model] = np.array(r.json()["outputs"][0]["data"], np.float32)
        assert np.allclose(answers["chunked"], answers["whole"], rtol=1e-4, atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"split_ms": times["chunked"], "one_run_ms": times["whole"], "reps": reps}


if __name__ == "__main__":
    main()
