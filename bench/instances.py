"""Live instances and the budgeted autoscaler (issue 16): two compute-bound models, a
trace whose load alternates between them, four server setups in one run.

Setups: `static-1` (each model 1 instance), `static-2` (each 2), `per-model` (the
autoscaler on each model, 1..2 instances, with a budget that never binds) and `budget`
(the same sharing `--cpu-budget` cores, by default the cores this process may use: each
keeps its minimum, the cores beyond the minimums go where the load is; on a machine
with no more cores than models there are none to move, and the setup is static-1 with a
controller that never finds room). Each phase sends Poisson arrivals (open loop, latency measured from the
scheduled send time, so a late send counts against the server) at `--hot` req/s to one
model and `--cold` to the other; the hot model swaps every `--phase` seconds. Every
setup replays the same arrivals (seeded per phase). Per phase: goodput (answers within
`--slo-ms` per second, both models), p99, the p99 of the first `--transition` seconds
(the load step), failed requests (any answer but 200, or none), and, from `/metrics`
polled every 50 ms, the time from the load step to the hot model's second instance and
to the cold model's return to one. Each answer's size is checked, and one answer per
model is compared with onnxruntime before any timing.

Rounds repeat the four setups in alternating order (forward, then reversed), so a
disturbance of a shared machine does not fall on one setup only.

Figures and their reading: BENCHMARKS.md, "Live instances and the budgeted autoscaler
(issue 16)".

Usage (repository root, after `cargo build --release --workspace`):

    .venv/bin/python bench/instances.py --phases 4 --phase 20 --rounds 2

(SLUICE_BIN selects another binary, as for the Python tests.)
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import requests
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import Server  # noqa: E402

# Each request is ROWS tokens of WIDTH through a 4-layer MLP: a GEMM per layer whose
# weights (10 MiB) stay in the shared cache, so the model is compute-bound; batching
# still helps (fuller GEMMs), so one instance carries more than one request at a time
# would suggest.
WIDTH, HIDDEN, LAYERS, ROWS = 256, 1024, 4, 32
SETUPS = ("static-1", "static-2", "per-model", "budget")


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
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, ROWS, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, ROWS, WIDTH])],
                              inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def write_repo(root, setup):
    for name, seed in (("a", 1), ("b", 2)):
        (root / name / "1").mkdir(parents=True)
        onnx.save(heavy_model(seed), str(root / name / "1" / "model.onnx"))
        cfg = {"name": name, "backend": "tract", "max_batch_size": 8,
               "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [ROWS, WIDTH]}],
               "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [ROWS, WIDTH]}],
               "dynamic_batching": {"max_queue_delay_microseconds": 500},
               "instance_group": [{"count": 2 if setup == "static-2" else 1}]}
        if setup in ("per-model", "budget"):
            cfg["parameters"] = {"sluice_autoscale_instances": {"string_value": "1:2"},
                                 "sluice_autoscale_down_window_s": {"string_value": "3"}}
        (root / name / "config.json").write_text(json.dumps(cfg))


X = np.random.default_rng(7).standard_normal((1, ROWS, WIDTH)).astype(np.float32)
HEADER = json.dumps({"inputs": [{"name": "x", "shape": [1, ROWS, WIDTH], "datatype": "FP32",
                                 "parameters": {"binary_data_size": X.nbytes}}],
                     "parameters": {"binary_data_output": True}}).encode()
BODY = HEADER + X.tobytes()
HEADERS = {"Inference-Header-Content-Length": str(len(HEADER)), "Content-Type": "application/octet-stream"}
ANSWER_BYTES = ROWS * WIDTH * 4


def infer(session, server, model):
    """One request; the output as an array, or None on any failure."""
    r = session.post(f"{server.base}/v2/models/{model}/infer", data=BODY, headers=HEADERS, timeout=60)
    if r.status_code != 200:
        return None
    n = int(r.headers.get("Inference-Header-Content-Length", "0"))
    raw = r.content[n:]
    if len(raw) != ANSWER_BYTES:
        return None
    return np.frombuffer(raw, np.float32).reshape(1, ROWS, WIDTH)


def verify(server, repo):
    """Each model's answer against onnxruntime, before anything is timed."""
    with requests.Session() as sess:
        for name in ("a", "b"):
            ref = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            want = ref.run(["y"], {"x": X})[0]
            got = infer(sess, server, name)
            assert got is not None, f"model {name} did not answer:\n{server.log()[-2000:]}"
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"model {name} vs onnxruntime")


def run_phase(server, rates, seconds, seed):
    """Open-loop Poisson arrivals per model; returns [(scheduled s, model, latency s or None, status)]."""
    rng = np.random.default_rng(seed)
    schedule = []
    for model, rate in sorted(rates.items()):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / rate)
            if t >= seconds:
                break
            schedule.append((t, model))
    schedule.sort()
    results = []
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
            ok = infer(local.s, server, model) is not None
            status = "ok" if ok else "bad answer"
        except requests.RequestException as e:
            ok, status = False, type(e).__name__
        lat = time.monotonic() - (start + at)
        with lock:
            results.append((at, model, lat if ok else None, status))

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(send, schedule))
    return results, start


class Watch:
    """Instance counts of both models from /metrics every 50 ms: [(monotonic s, a, b)]."""

    def __init__(self, server):
        self.server, self.samples, self._stop = server, [], threading.Event()
        self._sess = requests.Session()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _counts(self):
        text = self._sess.get(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10).text
        got = {}
        for line in text.splitlines():
            if line.startswith("sluice_model_instances{"):
                head, _, val = line.rpartition(" ")
                for m in ("a", "b"):
                    if f'model="{m}"' in head:
                        got[m] = int(float(val))
        return got.get("a", 0), got.get("b", 0)

    def _run(self):
        while not self._stop.is_set():
            try:
                a, b = self._counts()
                self.samples.append((time.monotonic(), a, b))
            except requests.RequestException:
                pass
            self._stop.wait(0.05)

    def first(self, since, until, model, pred):
        """Seconds from `since` to the first sample in [since, until) where `pred(count)`."""
        col = 1 if model == "a" else 2
        for s in self.samples:
            if since <= s[0] < until and pred(s[col]):
                return s[0] - since
        return None

    def stop(self):
        self._stop.set()
        self._t.join()


def p99(xs):
    xs = [x for x in xs if x is not None]
    return float(np.percentile(xs, 99)) * 1e3 if xs else float("nan")


def calibrate(server, n=60):
    """The median latency of one request at a time (batch 1, HTTP included)."""
    with requests.Session() as sess:
        for _ in range(10):
            infer(sess, server, "a")
        lat = []
        for _ in range(n):
            t0 = time.monotonic()
            assert infer(sess, server, "a") is not None
            lat.append(time.monotonic() - t0)
    return float(np.median(lat))


def run_setup(setup, args, trace):
    """Runs every phase of the trace on a fresh server of `setup`."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo, setup)
        extra = ["--autoscale-interval-ms", str(args.interval_ms)]
        if setup == "budget":
            extra += ["--cpu-budget", str(args.cpu_budget)]
        elif setup == "per-model":
            extra += ["--cpu-budget", "64"]
        s = Server(repo, *extra)
        try:
            verify(s, repo)
            if trace["calib"] is None:
                trace["calib"] = calibrate(s)
                trace["hot"] = args.hot or 1.6 / trace["calib"]
                trace["slo"] = (args.slo_ms / 1e3) if args.slo_ms else 10 * trace["calib"]
                print(f"one request alone: {trace['calib'] * 1e3:.2f} ms; hot {trace['hot']:.1f} req/s, "
                      f"cold {args.cold} req/s, objective {trace['slo'] * 1e3:.0f} ms", flush=True)
            else:
                # the same warm-up every setup gets
                with requests.Session() as sess:
                    for _ in range(10):
                        infer(sess, s, "a")
            slo = trace["slo"]
            watch = Watch(s)
            phases = []
            for k in range(args.phases):
                hot_model, cold_model = ("a", "b") if k % 2 == 0 else ("b", "a")
                rates = {hot_model: trace["hot"], cold_model: args.cold}
                res, start = run_phase(s, rates, args.phase, seed=k)
                end = time.monotonic()
                lat = [r[2] for r in res]
                early = [r[2] for r in res if r[0] < args.transition]
                good = sum(1 for x in lat if x is not None and x <= slo)
                failed = [r[3] for r in res if r[2] is None]
                phases.append({
                    "hot": hot_model, "sent": len(res), "failed": len(failed),
                    "failures": sorted(set(failed)),
                    "goodput": good / args.phase, "p99_ms": p99(lat), "p99_transition_ms": p99(early),
                    "hot_to_2_s": watch.first(start, end, hot_model, lambda c: c >= 2),
                    "cold_to_1_s": watch.first(start, end, cold_model, lambda c: c <= 1),
                })
                print(setup, phases[-1], flush=True)
            watch.stop()
            changes = [line for line in s.lines if "autoscale: instances changed" in line]
            peak = max((a + b for _, a, b in watch.samples), default=0)
        finally:
            code = s.stop()
        assert code == 0, f"{setup}: server exited with {code}"
        return {"phases": phases, "changes": len(changes), "first_changes": changes[:4],
                "ceilings": sum(1 for line in changes if "no more than" in line),
                "peak_instances": peak,
                "goodput": sum(p["goodput"] for p in phases) / len(phases),
                "failed": sum(p["failed"] for p in phases)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the setups, alternating their order")
    ap.add_argument("--hot", type=float, default=0.0, help="req/s to the hot model (0: 1.6× one request alone)")
    ap.add_argument("--cold", type=float, default=5.0)
    ap.add_argument("--slo-ms", type=float, default=0.0, help="0: 10× one request alone")
    ap.add_argument("--transition", type=float, default=5.0, help="seconds after a step counted as transition")
    ap.add_argument("--interval-ms", type=int, default=200, help="the autoscaler's tick")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--cpu-budget", type=int, default=len(os.sched_getaffinity(0)),
                    help="the budget setup's --cpu-budget (default: the cores this process may use)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "instances.json"))
    args = ap.parse_args()
    setups = args.setups.split(",")
    trace = {"calib": None, "hot": None, "slo": None}
    rounds = []
    for r in range(args.rounds):
        order = setups if r % 2 == 0 else setups[::-1]
        rounds.append({setup: run_setup(setup, args, trace) for setup in order})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"trace": trace, "args": vars(args), "rounds": rounds}, indent=1))

    # Summary: per setup, mean over rounds; ratios against the best static setup.
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    summary = {}
    for setup in setups:
        runs = [rd[setup] for rd in rounds]
        summary[setup] = {
            "goodput": mean([x["goodput"] for x in runs]),
            "phase_goodput": [mean([x["phases"][k]["goodput"] for x in runs]) for k in range(args.phases)],
            "p99": [mean([x["phases"][k]["p99_ms"] for x in runs]) for k in range(args.phases)],
            "p99_transition": [mean([x["phases"][k]["p99_transition_ms"] for x in runs]) for k in range(args.phases)],
            "to_2": [mean([x["phases"][k]["hot_to_2_s"] for x in runs]) for k in range(args.phases)],
            "failed": sum(x["failed"] for x in runs),
            "sent": sum(p["sent"] for x in runs for p in x["phases"]),
            "changes": [f"{x['changes']} ({x['ceilings']})" for x in runs],
            "round_goodput": [x["goodput"] for x in runs],
        }
    statics = [s for s in ("static-1", "static-2") if s in summary]
    best = max(statics, key=lambda s: summary[s]["goodput"]) if statics else None
    print(f"\nobjective {trace['slo'] * 1e3:.0f} ms, hot {trace['hot']:.1f} req/s, cold {args.cold} req/s, "
          f"{args.phases} phases of {args.phase:.0f} s, {args.rounds} round(s), budget setup "
          f"--cpu-budget {args.cpu_budget}")
    print("| setup | goodput/s (per round) | vs best static | worst phase vs best static | "
          "p99 ms per phase | p99 ms first %.0f s per phase | s to 2nd instance per phase | failed / sent | "
          "changes logged (ceilings) |" % args.transition)
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = lambda xs, f: ", ".join("–" if x is None else f.format(x) for x in xs)  # noqa: E731
    for setup in setups:
        v = summary[setup]
        ratio = worst = "–"
        if best:
            b = summary[best]
            ratio = f"{v['goodput'] / b['goodput']:.2f}"
            worst = f"{min(g / bg for g, bg in zip(v['phase_goodput'], b['phase_goodput'])):.2f}"
        print(f"| {setup} | {v['goodput']:.1f} ({fmt(v['round_goodput'], '{:.1f}')}) | {ratio} | {worst} | "
              f"{fmt(v['p99'], '{:.0f}')} | {fmt(v['p99_transition'], '{:.0f}')} | {fmt(v['to_2'], '{:.2f}')} | "
              f"{v['failed']} / {v['sent']} | {fmt(v['changes'], '{}')} |")


if __name__ == "__main__":
    main()
