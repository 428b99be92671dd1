"""Live instances and the budgeted autoscaler (issue 16): two compute-bound models, a
trace whose load alternates between them, four server setups in one run.

Setups: `static-1` (each model 1 instance), `static-2` (each 2), `per-model` (the
autoscaler on each model, 1..2 instances, with a budget that never binds) and `budget`
(the same sharing `--cpu-budget 3`: each keeps its minimum, the third core goes where
the load is). Each phase sends Poisson arrivals (open loop, latency measured from the
scheduled send time) at `--hot` req/s to one model and `--cold` to the other; the hot
model swaps every `--phase` seconds. Per phase: goodput (answers within `--slo-ms` per
second, both models) and p99. For the autoscaled setups also the time from each load
step to the hot model's second instance (polled from `/metrics`).

Status: written, not yet run (no numbers in BENCHMARKS.md from it yet).

Usage (repository root, after `cargo build --release --workspace`):

    .venv/bin/python bench/instances.py --phases 4 --phase 10
"""

import argparse
import json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import Server, metric  # noqa: E402

WIDTH, HIDDEN, LAYERS = 256, 1024, 4


def heavy_model(seed):
    rng = np.random.default_rng(seed)
    inits, nodes, prev, n = [], [], "x", WIDTH
    for i in range(LAYERS):
        out = WIDTH if i == LAYERS - 1 else HIDDEN
        w = (rng.standard_normal((n, out)) / np.sqrt(n)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        prev, n = f"r{i}", out
    nodes[-1] = helper.make_node("Relu", [f"h{LAYERS - 1}"], ["y"])
    graph = helper.make_graph(nodes, "heavy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def write_repo(root, setup):
    for name, seed in (("a", 1), ("b", 2)):
        (root / name / "1").mkdir(parents=True)
        onnx.save(heavy_model(seed), str(root / name / "1" / "model.onnx"))
        cfg = {"name": name, "backend": "tract", "max_batch_size": 8,
               "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
               "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
               "dynamic_batching": {"max_queue_delay_microseconds": 500},
               "instance_group": [{"count": 2 if setup == "static-2" else 1}]}
        if setup in ("per-model", "budget"):
            cfg["parameters"] = {"sluice_autoscale_instances": {"string_value": "1:2"},
                                 "sluice_autoscale_down_window_s": {"string_value": "3"}}
        (root / name / "config.json").write_text(json.dumps(cfg))


def run_phase(server, rates, seconds, slo_s, seed):
    """Open-loop Poisson arrivals per model; returns {model: [latency or None]}."""
    rng = np.random.default_rng(seed)
    schedule = []
    for model, rate in rates.items():
        t = 0.0
        while True:
            t += rng.exponential(1.0 / rate)
            if t >= seconds:
                break
            schedule.append((t, model))
    schedule.sort()
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                                   "data": [0.5] * WIDTH}]})
    results = {m: [] for m in rates}
    lock = threading.Lock()
    local = threading.local()
    start = time.monotonic() + 0.2

    def send(item):
        at, model = item
        if not hasattr(local, "s"):
            local.s = requests.Session()
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            r = local.s.post(f"{server.base}/v2/models/{model}/infer", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        lat = time.monotonic() - (start + at)
        with lock:
            results[model].append(lat if ok else None)

    with ThreadPoolExecutor(max_workers=48) as pool:
        list(pool.map(send, schedule))
    return results


def p99(xs):
    xs = [x for x in xs if x is not None]
    return float(np.percentile(xs, 99)) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--phase", type=float, default=10.0)
    ap.add_argument("--hot", type=float, default=0.0, help="req/s to the hot model (0: 1.6× one instance)")
    ap.add_argument("--cold", type=float, default=5.0)
    ap.add_argument("--slo-ms", type=float, default=0.0, help="0: 10× one request's service time")
    ap.add_argument("--setups", default="static-1,static-2,per-model,budget")
    args = ap.parse_args()
    out = {}
    calib = None
    for setup in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            write_repo(repo, setup)
            extra = ["--autoscale-interval-ms", "200"]
            if setup == "budget":
                extra += ["--cpu-budget", "3"]
            elif setup == "per-model":
                extra += ["--cpu-budget", "64"]
            s = Server(repo, *extra)
            try:
                if calib is None:
                    # one request at a time: the service time of batch 1
                    body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                                        "data": [0.5] * WIDTH}]}
                    sess = requests.Session()
                    for _ in range(20):
                        sess.post(f"{s.base}/v2/models/a/infer", json=body, timeout=30)
                    t0 = time.monotonic()
                    for _ in range(100):
                        sess.post(f"{s.base}/v2/models/a/infer", json=body, timeout=30)
                    calib = (time.monotonic() - t0) / 100
                    print(f"one request alone: {calib * 1e3:.2f} ms", flush=True)
                hot = args.hot or 1.6 / calib
                slo = (args.slo_ms / 1e3) if args.slo_ms else 10 * calib
                phases = []
                for k in range(args.phases):
                    hot_model = "a" if k % 2 == 0 else "b"
                    rates = {"a": hot if hot_model == "a" else args.cold,
                             "b": hot if hot_model == "b" else args.cold}
                    step = time.monotonic()
                    reached = {}

                    def watch(hm=hot_model, t0=step, done=reached):
                        while time.monotonic() - t0 < args.phase:
                            if metric(s, "sluice_model_instances", model=hm, version="1") >= 2:
                                done["s"] = time.monotonic() - t0
                                return
                            time.sleep(0.05)

                    w = threading.Thread(target=watch)
                    if setup in ("per-model", "budget"):
                        w.start()
                    res = run_phase(s, rates, args.phase, slo, seed=k)
                    if w.is_alive() or setup in ("per-model", "budget"):
                        w.join()
                    lat = res["a"] + res["b"]
                    good = sum(1 for x in lat if x is not None and x <= slo)
                    failed = sum(1 for x in lat if x is None)
                    phases.append({"hot": hot_model, "goodput": good / args.phase, "p99_ms": p99(lat) * 1e3,
                                   "failed": failed, "sent": len(lat), "to_2_instances_s": reached.get("s")})
                    print(setup, phases[-1], flush=True)
                out[setup] = {"phases": phases, "hot_rps": hot, "slo_ms": slo * 1e3,
                              "goodput": sum(p["goodput"] for p in phases) / len(phases)}
            finally:
                s.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
