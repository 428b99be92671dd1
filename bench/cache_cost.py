#!/usr/bin/env python3
"""What a response-cache hit and miss cost the server, in instructions per request
(issue 19): a count that does not depend on the machine's speed or on what else
runs on it, unlike the latencies of bench/cache_bench.py.

One `sluice serve` runs under valgrind's callgrind (every thread, instructions
executed in the server process only; Redis's own work is not in its figures). For
each phase the counters are zeroed, `sluice bench` sends requests for a few seconds
(Offline, 4 clients, HTTP binary tensors), the counters are dumped, and the total
is divided by the requests the server answered in the phase (its own statistics;
`sluice bench`'s first request, which checks the model, is one of them: the one hit
of a miss phase). Redis's `socket_timeout` is 5 s here: under valgrind the server is
tens of times slower, and a lookup past the usual 100 ms would read as a miss.
Phases: a model that does nothing (`noop`, the server's own per-request cost), the
MLP with no cache, an MLP hit (one distinct input, warmed first), an MLP miss (more
distinct inputs than the phase sends, none stored before); once with the local cache and once with Redis
(Debian's redis-server on a free port).

  .venv/bin/python bench/cache_cost.py [--seconds 4]

Writes bench/out/cache/cost.json and prints a Markdown table.
"""

import argparse
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

import cache_bench
import serverproc

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "sluice"
OUT = ROOT / "bench" / "out" / "cache"


def make_repository():
    repo = cache_bench.make_repository(False)
    # The same MLP files with no response_cache: the no-cache baseline on the same server.
    plain = repo / "mlp_plain"
    (plain / "1").mkdir(parents=True)
    (plain / "1" / "model.onnx").symlink_to(ROOT / "examples/models/mlp/1/model.onnx")
    text = (repo / "mlp" / "config.pbtxt").read_text().replace('name: "mlp"', 'name: "mlp_plain"')
    (plain / "config.pbtxt").write_text(text.replace(cache_bench.CACHE, ""))
    return repo


def answered(port):
    stats = requests.get(f"http://127.0.0.1:{port}/v2/models/stats", timeout=60).json()
    return {m["name"]: m["inference_stats"]["success"]["count"] for m in stats["model_stats"]}


def hits(port):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
    for line in text.splitlines():
        if line.startswith("sluice_cache_hits_total "):
            return float(line.split()[1])
    return 0.0


def dump(pid, before):
    """Dumps callgrind's counters; returns the instructions since the last zero."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    for _ in range(600):
        new = [p for p in OUT.glob(f"callgrind.{pid}.*") if p not in before]
        if new:
            text = new[0].read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def phase(proc, ports, model, distinct, seconds, seed=1):
    pid = proc.pid
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    ok0, hits0 = answered(ports["HTTP"]), hits(ports["metrics"])
    before = set(OUT.glob(f"callgrind.{pid}.*"))
    subprocess.run([str(BIN), "bench", "-u", f"127.0.0.1:{ports['HTTP']}", "-m", model, "--scenario", "offline",
                    "--concurrency", "4", "--duration", str(seconds), "--warmup", "0",
                    "--distinct-inputs", str(distinct), "--seed", str(seed), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    instructions = dump(pid, before)
    ok1, hits1 = answered(ports["HTTP"]), hits(ports["metrics"])
    n = ok1[model] - ok0[model]
    # The stats and metrics reads themselves are a few requests' worth: left in.
    return {"requests": n, "instructions": instructions, "per_request": instructions / max(n, 1),
            "hit_rate": (hits1 - hits0) / n if n else None}


def start(prefix, repo, *flags):
    """`sluice serve` under `prefix` (valgrind must run the server itself, not a
    wrapper that execs it); returns (process, ports) once it listens."""
    args = [*prefix, str(BIN), "serve", "--model-repository", str(repo), "--http-address", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ort-library", "off",
            "--log", "warn,sluice=info", *flags]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = {}
    for line in proc.stderr:
        m = serverproc.LISTEN.search(line)
        if m:
            ports[m.group(1)] = int(m.group(2))
            if m.group(1) == "HTTP":
                break
    else:
        raise RuntimeError(f"sluice exited before listening (code {proc.wait()})")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, ports


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0)
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("callgrind.*"):
        old.unlink()
    repo = make_repository()
    redis, redis_port = cache_bench.start_redis()
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={OUT}/callgrind.%p",
              f"--log-file={OUT}/valgrind.log"]
    rows = []
    try:
        for cache, flags in [("local", "local,size=536870912"), ("redis", f"redis,host=127.0.0.1,port={redis_port},socket_timeout=5000")]:
            proc, ports = start(prefix, repo, "--cache-config", flags)
            try:
                # Warm every path once (first requests build lazy state) and store the hit.
                for model in ("noop", "mlp_plain", "mlp"):
                    phase(proc, ports, model, 1, 1)
                todo = [("noop", "noop", 1), ("mlp, no cache", "mlp_plain", 1),
                        (f"mlp, {cache} hit", "mlp", 1), (f"mlp, {cache} miss", "mlp", 5000)]
                if cache == "redis":
                    todo = todo[2:]
                for label, model, distinct in todo:
                    # Misses: another seed than the warm-up's, so no input repeats one stored.
                    row = phase(proc, ports, model, distinct, a.seconds, seed=1 if distinct == 1 else 7)
                    row.update(label=label)
                    rows.append(row)
                    hr = row["hit_rate"]
                    print(f"{label:<20} {row['requests']:>6} requests  {row['per_request']:>10.0f} instructions/request"
                          f"  hit rate {'-' if hr is None else f'{hr:.2f}'}", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(20)
    (OUT / "cost.json").write_text(json.dumps(rows, indent=1))
    by = {r["label"]: r["per_request"] for r in rows}
    base, noop = by["mlp, no cache"], by["noop"]
    print("\n| Request | instructions / request | vs noop | vs MLP, no cache |\n|---|---:|---:|---:|")
    for r in rows:
        n = f"{r['per_request']:_.0f}".replace("_", " ")
        print(f"| {r['label']} | {n} | {r['per_request'] / noop:.2f}x | {r['per_request'] / base:.2f}x |")


if __name__ == "__main__":
    main()
