#!/usr/bin/env python3
"""Server CPU per request of two builds on the small example MLP (`examples/models/mlp`:
dynamic batching with a 100 µs delay and preferred sizes 4 and 8, two instances), the
scheduler's lock work being on this path. `sluice bench` (of the candidate build, pinned to
CPU 1) runs a closed loop of N clients sending batch-1 binary HTTP requests; the server is
pinned to CPU 0; its user + system CPU time (from /proc) over the run is divided by the
requests it answered (from the statistics extension). Builds are interleaved round by round
and each figure is the median over the rounds.

  .venv/bin/python bench/sched_cpu.py --baseline BIN [--candidate BIN] [--rounds 5]
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
MODEL = "mlp"


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def answered(port):
    stats = requests.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/stats", timeout=5).json()
    return stats["model_stats"][0]["inference_stats"]["success"]["count"]


def one_run(binary, tool, clients, seconds):
    proc, ports = serverproc.start(binary, ROOT / "examples" / "models", "--metrics-port", "0")
    try:
        port = ports["HTTP"]
        for _ in range(300):
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        count0, cpu0 = answered(port), cpu_seconds(proc.pid)
        with tempfile.NamedTemporaryFile(suffix=".json") as report:
            subprocess.run(
                ["taskset", "-c", "1", str(tool), "bench", "-u", f"127.0.0.1:{port}", "-m", MODEL,
                 "--protocol", "http-binary", "--duration", str(seconds), "--warmup", "0", "--quiet",
                 "--report", report.name, "--scenario", "offline", "--concurrency", str(clients)],
                check=True, capture_output=True, text=True)
            run = json.load(open(report.name))["runs"][0]
        cpu = cpu_seconds(proc.pid) - cpu0
        count = answered(port) - count0
        return run["throughput_rps"], cpu / max(count, 1) * 1e6, count
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--candidate", default=str(ROOT / "target" / "release" / "sluice"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    builds = {"baseline": args.baseline, "candidate": args.candidate}
    results = {name: [] for name in builds}
    for r in range(args.rounds):
        for name, binary in builds.items():
            results[name].append(one_run(binary, args.candidate, args.clients, args.seconds))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1][0]:.0f} req/s {v[-1][1]:.1f} µs CPU/request"
                                              for n, v in results.items()), flush=True)
    print(f"\n{MODEL}, {args.clients} clients, medians of {args.rounds} interleaved rounds, {args.seconds:g} s each\n")
    print("| build | req/s | server CPU µs/request | candidate / baseline (CPU) |")
    print("|---|---|---|---|")
    base = statistics.median(v[1] for v in results["baseline"])
    for name, values in results.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        ratio = f"{cpu / base:.3f}" if name == "candidate" else ""
        print(f"| {name} | {rps:.0f} | {cpu:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
