"""Validates `sluice bench` against the official MLPerf harness: the same Server and
Offline settings run through `sluice bench` and through MLCommons LoadGen
(`bench/loadgen_sut.py`), against one Sluice, and their QPS and p99 are compared
(the goal: within 10 %).

The model is made here (bench/out/validation/): a memory-bound MLP 512-2048-2048-16
(random weights, fixed seed; about a millisecond per request on ONNX Runtime), so the
server's time, not the Python client's, dominates what LoadGen sees. Sluice runs pinned
to CPU 0, both load generators to CPU 1; rounds interleave the two tools.

    bench/peers/install.sh loadgen && cargo build --release
    .venv/bin/python bench/validate_loadgen.py --rounds 2 --duration 20
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import peers  # noqa: E402

ROOT, OUT = peers.ROOT, peers.OUT / "validation"
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
SHAPE = [1, 512]


def make_repo():
    repo = OUT / "repo"
    (repo / "wide" / "1").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    dims = [512, 2048, 2048, 16]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out if out == "y" else f"m{i}"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, repo / "wide" / "1" / "model.onnx")
    (repo / "wide" / "config.pbtxt").write_text(
        'name: "wide"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 512 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1, 16 ] } ]\n'
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n')
    return repo


def pinned(argv, cpus):
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def sluice_bench(url, extra, a):
    report = OUT / "sluice-bench.json"
    argv = pinned([str(BIN), "bench", "--url", url, "--model", "wide", "--protocol", "http-binary",
                   "--quiet", "--threads", "1", "--report", str(report), *extra], a.client_cpus)
    subprocess.run(argv, check=True, capture_output=True)
    return json.loads(report.read_text())


def loadgen(url, scenario, qps, a):
    out = OUT / f"loadgen-{scenario}.json"
    py = peers.venv_python("loadgen")
    argv = pinned([str(py), str(ROOT / "bench" / "loadgen_sut.py"), "--url", url, "--model", "wide",
                   "--input", "x", "--shape", ",".join(map(str, SHAPE)), "--scenario", scenario,
                   "--qps", str(qps), "--bound-ms", str(a.bound), "--duration", str(a.duration),
                   "--threads", str(a.concurrency if scenario == "offline" else 32),
                   "--out", str(out)], a.client_cpus)
    subprocess.run(argv, check=True, capture_output=True)
    return json.loads(out.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--load", type=float, default=0.5, help="Server rate as a share of 1-client throughput")
    p.add_argument("--bound", type=float, default=20.0, help="Server p99 bound, ms")
    p.add_argument("--concurrency", type=int, default=4, help="Offline: concurrent requests")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    a = p.parse_args()
    repo = make_repo()
    server = peers.Peer("sluice", a.server_cpus, log=OUT / "sluice.log", repo=repo, ready_models=["wide"])
    url = server.url("http-binary")
    try:
        warm = sluice_bench(url, ["--concurrency-range", "1:1", "--duration", "3", "--warmup", "1"], a)
        qps = round(a.load * warm["runs"][0]["throughput_rps"])
        print(f"1-client throughput {warm['runs'][0]['throughput_rps']:.0f}/s; Server rate {qps}/s", file=sys.stderr)
        rows = {k: [] for k in ("sb_server", "lg_server", "sb_offline", "lg_offline")}
        for rnd in range(a.rounds):
            print(f"round {rnd + 1}", file=sys.stderr, flush=True)
            r = sluice_bench(url, ["--scenario", "server", "--target-qps", str(qps), "--latency-bound-ms",
                                   str(a.bound), "--duration", str(a.duration), "--warmup", "0"], a)["runs"][0]
            rows["sb_server"].append({"qps": r["throughput_rps"], "p99_ms": r["latency_ms"]["p99"],
                                      "p90_ms": r["latency_ms"]["p90"], "errors": r["errors"]})
            lg = loadgen(url, "server", qps, a)
            rows["lg_server"].append({"qps": lg["completed_qps"], "p99_ms": lg["p99_ms"],
                                      "p90_ms": lg["p90_ms"], "errors": lg["errors"]})
            r = sluice_bench(url, ["--scenario", "offline", "--concurrency", str(a.concurrency),
                                   "--duration", str(a.duration), "--warmup", "0"], a)["runs"][0]
            rows["sb_offline"].append({"qps": r["samples_per_s"], "p99_ms": r["latency_ms"]["p99"],
                                       "p90_ms": r["latency_ms"]["p90"], "errors": r["errors"]})
            lg = loadgen(url, "offline", r["samples_per_s"], a)
            rows["lg_offline"].append({"qps": lg["samples_per_s"], "p99_ms": lg["p99_ms"],
                                       "p90_ms": lg["p90_ms"], "errors": lg["errors"]})
    finally:
        server.stop()
    (OUT / "validation.json").write_text(json.dumps({"qps": qps, "args": vars(a), "rows": rows}, indent=1))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("qps", "p99_ms", "p90_ms", "errors")}
           for k, v in rows.items()}
    print(f"| scenario | harness | QPS | p90 ms | p99 ms | errors |\n|---|---|---:|---:|---:|---:|")
    for scen, label in (("server", f"Server {qps}/s"), ("offline", f"Offline, {a.concurrency} in flight")):
        for tool, name in (("sb", "sluice bench"), ("lg", "MLPerf LoadGen")):
            m = med[f"{tool}_{scen}"]
            print(f"| {label} | {name} | {m['qps']:.1f} | {m['p90_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']:.0f} |")
    sb, lg = med["sb_server"], med["lg_server"]
    print(f"\nServer: QPS sluice bench / LoadGen = {sb['qps'] / lg['qps']:.3f}, "
          f"p99 = {sb['p99_ms'] / lg['p99_ms']:.3f}")
    sb, lg = med["sb_offline"], med["lg_offline"]
    # LoadGen's Offline issues every sample in one query at the start, so its latencies
    # count from then: only throughput compares.
    print(f"Offline: samples/s sluice bench / LoadGen = {sb['qps'] / lg['qps']:.3f}")
    print("per round:", json.dumps(rows))


if __name__ == "__main__":
    main()
