#!/usr/bin/env python3
"""What metrics cost: MLP batch-1 throughput (wrk, Triton binary tensors, 8 connections)
and the server's CPU time per request (from /proc: steadier than throughput when other
work shares the machine) with the metrics endpoint off, on and scraped every 250 ms, and
optionally against a build from before statistics existed. Configurations are interleaved round by round so
drift on a shared machine hits them alike; the server runs on one core (taskset -c 0),
wrk on the other.

  .venv/bin/python bench/metrics_overhead.py [--rounds 5] [--seconds 4] [--baseline BIN]

BIN: a `sluice` built from a commit before the statistics (e.g. 71410fa), to measure
what recording costs as well as what serving /metrics costs.
"""

import argparse
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import requests

import serverproc

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "sluice"


def start(binary, *extra):
    return serverproc.start(binary, ROOT / "examples" / "models", *extra)


def cpu_seconds(pid):
    """User + system CPU time of a process (and its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime in clock ticks


def wrk(port, seconds, pid):
    """(requests/s, server CPU µs per request) of one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c8", f"-d{seconds}s", "-s", "bench/out/mlp_post.lua",
         f"http://127.0.0.1:{port}/v2/models/mlp/infer"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    assert "Non-2xx" not in out, out
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), used / total * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=BIN",
                    help="another sluice build to measure alongside (metrics on), e.g. an older commit")
    args = ap.parse_args()
    subprocess.run(["bash", "-c", "bench/wrk_mlp.sh http://127.0.0.1:1 >/dev/null 2>&1 || true"], cwd=ROOT)
    assert (ROOT / "bench/out/mlp_post.lua").exists()

    configs = {"metrics off": (BIN, ["--allow-metrics", "false"]),
               "metrics on": (BIN, ["--metrics-port", "0"]),
               "on + scraped 4/s": (BIN, ["--metrics-port", "0"])}
    for item in args.compare:
        label, binary = item.split("=", 1)
        configs = {label: (Path(binary), ["--metrics-port", "0"]), **configs}
    if args.baseline:
        configs = {"before statistics": (args.baseline, []), **configs}
    results = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, (binary, extra) in configs.items():
            proc, ports = start(binary, *extra)
            stop = threading.Event()
            if name.endswith("scraped 4/s"):
                def scrape(port=ports["metrics"]):
                    while not stop.is_set():
                        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
                        stop.wait(0.25)
                threading.Thread(target=scrape, daemon=True).start()
            time.sleep(0.5)
            wrk(ports["HTTP"], 1, proc.pid)  # warm-up
            results[name].append(wrk(ports["HTTP"], args.seconds, proc.pid))
            stop.set()
            proc.terminate()
            proc.wait(30)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1][0]:.0f} req/s {v[-1][1]:.1f} µs"
                                              for n, v in results.items()), flush=True)
    ref_rps = statistics.median(v[0] for v in results["metrics off"])
    ref_cpu = statistics.median(v[1] for v in results["metrics off"])
    print("\n| configuration | median req/s | / metrics off | server CPU µs/request | / metrics off |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"| {name} | {rps:.0f} | {rps / ref_rps:.3f} | {cpu:.1f} | {cpu / ref_cpu:.3f} |")


if __name__ == "__main__":
    main()
