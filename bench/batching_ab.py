#!/usr/bin/env python3
"""The adaptive batcher of two builds, side by side: closed-loop throughput (N clients
sending batch-1 requests back to back) and open-loop Poisson latency on the batching
benchmark's models, with the server pinned to CPU 0 and `sluice bench` (of the
candidate build) pinned to CPU 1. The builds are interleaved round by round, so drift
on a shared machine hits them alike; each figure is the median over the rounds, and
the last column is candidate / baseline.

  .venv/bin/python scripts/make_batching_models.py
  .venv/bin/python bench/batching_ab.py --baseline BIN [--candidate BIN] [--rounds 3]

BIN: a `sluice` binary, e.g. one built from an earlier commit.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

import serverproc

ROOT = Path(__file__).resolve().parent.parent


def start(binary, repo, model):
    proc, ports = serverproc.start(binary, repo, "--metrics-port", "0", "--model-control-mode", "explicit",
                                   "--load-model", model)
    base = f"http://127.0.0.1:{ports['HTTP']}"
    for _ in range(600):
        try:
            if requests.get(f"{base}/v2/models/{model}/ready", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError(f"{model} never became ready")
    return proc, ports


def mean_batch(port, model, before=None):
    stats = requests.get(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=5).json()
    m = stats["model_stats"][0]
    now = (m["execution_count"], m["inference_count"])
    if before is None:
        return now
    runs, items = now[0] - before[0], now[1] - before[1]
    return items / max(runs, 1)


def bench(tool, port, model, protocol, seconds, scenario_args):
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run(
            ["taskset", "-c", "1", str(tool), "bench", "-u", f"127.0.0.1:{port}", "-m", model,
             "--protocol", protocol, "--duration", str(seconds), "--warmup", "1", "--quiet",
             "--report", report.name, *scenario_args],
            check=True, capture_output=True, text=True)
        run = json.load(open(report.name))["runs"][0]
    return run["throughput_rps"], run["latency_ms"]["p50"], run["latency_ms"]["p99"], run["errors"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--candidate", default=str(ROOT / "target" / "release" / "sluice"))
    parser.add_argument("--repo", default=str(ROOT / "models-extra" / "batching"))
    parser.add_argument("--model", default="wide_adaptive")
    parser.add_argument("--clients", default="8,32,64")
    parser.add_argument("--rates", default="1000,1600", help="open-loop Poisson rates (requests/s)")
    parser.add_argument("--protocols", default="http-binary,grpc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    builds = {"baseline": args.baseline, "candidate": args.candidate}
    cells = [(p, "closed", int(c)) for p in args.protocols.split(",") for c in args.clients.split(",")]
    cells += [("http-binary", "open", float(r)) for r in args.rates.split(",")]
    results = {(name, cell): [] for name in builds for cell in cells}
    for round_ in range(args.rounds):
        for name, binary in builds.items():
            proc, ports = start(binary, args.repo, args.model)
            try:
                for cell in cells:
                    protocol, kind, x = cell
                    port = ports["gRPC" if protocol == "grpc" else "HTTP"]
                    before = mean_batch(ports["HTTP"], args.model)
                    if kind == "closed":
                        scenario = ["--scenario", "offline", "--concurrency", str(x)]
                    else:
                        scenario = ["--scenario", "server", "--target-qps", str(x), "--latency-bound-ms", "1000"]
                    rps, p50, p99, errors = bench(args.candidate, port, args.model, protocol, args.seconds, scenario)
                    batch = mean_batch(ports["HTTP"], args.model, before)
                    results[(name, cell)].append((rps, p50, p99, batch, errors))
            finally:
                proc.terminate()
                proc.wait()
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)

    print(f"\n{args.model}, medians of {args.rounds} interleaved rounds, {args.seconds:g} s each\n")
    print("| protocol | load | build | req/s | mean batch | p50 ms | p99 ms | errors | req/s candidate / baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        protocol, kind, x = cell
        load = f"{x} clients" if kind == "closed" else f"Poisson {x:.0f}/s"
        med = {}
        for name in builds:
            rows = results[(name, cell)]
            med[name] = [statistics.median(r[i] for r in rows) for i in range(4)] + [sum(r[4] for r in rows)]
        for name in builds:
            rps, p50, p99, batch, errors = med[name]
            ratio = f"{med['candidate'][0] / med['baseline'][0]:.2f}" if name == "candidate" else ""
            print(f"| {protocol} | {load} | {name} | {rps:.0f} | {batch:.1f} | {p50:.2f} | {p99:.2f} | {errors} | {ratio} |")


if __name__ == "__main__":
    main()
