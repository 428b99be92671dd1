#!/usr/bin/env python3
"""What the response cache buys and costs (issue 19), measured with `sluice bench`
(Offline scenario: 8 closed-loop clients, HTTP binary tensors) against a real
`sluice serve` pinned to CPU 0; the load generator and Redis (Debian's redis-server,
started here on a free port, no persistence) share CPU 1.

- Hit vs miss latency (p50/p99), throughput and the server's CPU time per request
  (all its threads, from /proc/PID/task/*/schedstat) for the example MLP (small) and
  ResNet-50 (from scripts/make_bench_models.py), with the local cache and with Redis,
  next to the same model with no cache. Hits: one distinct input; misses: more
  distinct inputs than the run sends (the server's hit counter confirms 0 hits).
- A local hit against the round trip of a model that does nothing (`noop`: a Slice
  with the MLP's input and output sizes): the server's own per-request cost.
- A Zipf (s = 1.0) stream over 10 000 distinct MLP inputs: no cache, a local cache
  small enough for about half the requests to hit, one that holds everything, Redis.

`--sched fifo` (the default where `chrt` may use it) runs the server, the load
generator and Redis under SCHED_FIFO, so that other programs on the same two cores
(compilers, on a shared machine) cannot delay their wake-ups; `--sched normal`
leaves them at normal priority. Under `normal` on a core that a CPU-bound program
shares, each wake-up of a process that slept waits for that program's time slice
to end (one 4 ms scheduler tick here, `perf sched timehist`), and a hit, which the
server answers in one burst before it sleeps again, pays that wait on both sides
of every round trip: that was the "hit stall" of issue 19, not the cache's work.

  .venv/bin/python scripts/make_bench_models.py
  .venv/bin/python bench/cache_bench.py [--seconds 5] [--skip-resnet] [--skip-zipf] [--sched fifo|normal]

Writes bench/out/cache/results.json and prints a Markdown table.
"""

import argparse
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper

import serverproc

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "sluice"
OUT = ROOT / "bench" / "out" / "cache"

CONFIG = """name: "{name}"
max_batch_size: 32
input [ {{ name: "{input}", data_type: TYPE_FP32, dims: {dims} }} ]
output [ {{ name: "{output}", data_type: TYPE_FP32, dims: [ {classes} ] }} ]
{extra}"""
CACHE = "response_cache { enable: true }\n"


def make_repository(with_resnet):
    repo = OUT / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    models = {
        "mlp": (ROOT / "examples/models/mlp/1/model.onnx",
                dict(input="input", dims="[ 784 ]", output="probabilities", classes=10, extra=CACHE)),
    }
    if with_resnet:
        src = ROOT / "models-bench/resnet50/1/model.onnx"
        if not src.exists():
            raise SystemExit("models-bench/resnet50 is missing: run scripts/make_bench_models.py first")
        models["resnet50"] = (src, dict(input="image", dims="[ 3, 224, 224 ]", output="logits",
                                        classes=1000, extra=CACHE))
    for name, (src, cfg) in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").symlink_to(src)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, **cfg))
    # A model that does nothing: the first 10 of 784 values (the MLP's sizes).
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [10])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["out"])], "noop",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])],
                              [starts, ends, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "noop" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "noop" / "1" / "model.onnx"))
    (repo / "noop" / "config.pbtxt").write_text(
        CONFIG.format(name="noop", input="input", dims="[ 784 ]", output="out", classes=10, extra=""))
    return repo


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PREFIX = []  # `chrt -f N` under --sched fifo


def fifo_allowed():
    return subprocess.run(["chrt", "-f", "10", "true"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def cpu_ns(pid):
    """CPU time of every thread of `pid` so far (schedstat's first field, ns)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def start_redis():
    port = free_port()
    d = OUT / "redis"
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([*PREFIX, "taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def flush_redis(port):
    """Empties Redis, so that no run meets another run's entries."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(64).startswith(b"+OK")


def counters(metrics_port):
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    out = {"hits": 0.0, "misses": 0.0}
    for line in text.splitlines():
        for key, name in (("hits", "sluice_cache_hits_total "), ("misses", "sluice_cache_misses_total ")):
            if line.startswith(name):
                out[key] = float(line.split()[1])
    return out


def answered(ports):
    """Requests the server has answered successfully, over all models."""
    stats = requests.get(f"http://127.0.0.1:{ports['HTTP']}/v2/models/stats", timeout=10).json()
    return sum(m["inference_stats"]["success"]["count"] for m in stats["model_stats"])


def bench(ports, model, distinct, seconds, warmup, zipf=None, pid=None):
    report = OUT / "last.json"
    args = [*PREFIX, "taskset", "-c", "1", str(BIN), "bench", "-u", f"127.0.0.1:{ports['HTTP']}", "-m", model,
            "--scenario", "offline", "--concurrency", "8", "--duration", str(seconds),
            "--warmup", str(warmup), "--distinct-inputs", str(distinct), "--quiet", "--report", str(report)]
    if zipf is not None:
        args += ["--zipf", str(zipf)]
    before = counters(ports["metrics"]) if "metrics" in ports else None
    # The server's CPU over the whole bench run (warm-up included) per request it
    # answered in that time (its own statistics' success counts).
    cpu0, ok0 = (cpu_ns(pid), answered(ports)) if pid else (None, None)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    cpu1, ok1 = (cpu_ns(pid), answered(ports)) if pid else (None, None)
    run = json.loads(report.read_text())["runs"][0]
    row = {"rps": run["throughput_rps"], "p50": run["latency_ms"]["p50"], "p99": run["latency_ms"]["p99"],
           "errors": run["errors"]}
    if pid:
        row["cpu_us"] = (cpu1 - cpu0) / 1000 / max(ok1 - ok0, 1)
    if before is not None:
        after = counters(ports["metrics"])
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        row["hit_rate"] = hits / (hits + misses) if hits + misses else None
    return row


def serve(repo, *flags):
    return serverproc.start(BIN, repo, "--metrics-port", "0", *flags, prefix=PREFIX)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def main():
    global PREFIX
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-zipf", action="store_true")
    p.add_argument("--sched", choices=["fifo", "normal"], default=None,
                   help="scheduling of server, load generator and Redis (default: fifo where allowed)")
    a = p.parse_args()
    sched = a.sched or ("fifo" if fifo_allowed() else "normal")
    if sched == "fifo":
        if not fifo_allowed():
            raise SystemExit("--sched fifo: chrt -f is not permitted here (needs CAP_SYS_NICE)")
        PREFIX = ["chrt", "-f", "10"]
    print(f"scheduling: {sched}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    repo = make_repository(not a.skip_resnet)
    secs, warm = a.seconds, 1.0
    redis, redis_port = start_redis()
    configs = {
        "none": ["--cache-config", "none"],
        "local": ["--cache-config", "local,size=536870912"],
        "redis": ["--cache-config", f"redis,host=127.0.0.1,port={redis_port}"],
    }
    results = []

    def record(label, model, cache, inputs, row):
        row.update(label=label, model=model, cache=cache, inputs=inputs, sched=sched)
        results.append(row)
        hr = row.get("hit_rate")
        print(f"{label:<28} {row['rps']:>9.1f} req/s  p50 {row['p50']:>8.3f} ms  p99 {row['p99']:>8.3f} ms"
              f"  server CPU {row.get('cpu_us', float('nan')):>9.1f} us/req"
              f"  hit rate {'-' if hr is None else f'{hr:.2f}'}  errors {row['errors']}", flush=True)

    try:
        # Misses need more distinct inputs than a run sends: the MLP's miss runs are
        # short (2 s + 0.5 s warm-up at ~20k req/s fit in 60 000 inputs).
        models = [("mlp", 60000, secs)] + ([] if a.skip_resnet else [("resnet50", 96, max(secs, 8.0))])
        for cache, flags in configs.items():
            flush_redis(redis_port)
            proc, ports = serve(repo, *flags)
            pid = proc.pid
            try:
                if cache == "local":
                    record("noop (no cache)", "noop", "none", "1", bench(ports, "noop", 1, secs, warm, pid=pid))
                for model, distinct, s in models:
                    if cache == "none":
                        record(f"{model} no cache", model, cache, "1", bench(ports, model, 1, s, warm, pid=pid))
                        continue
                    record(f"{model} {cache} hit", model, cache, "1", bench(ports, model, 1, s, warm, pid=pid))
                    short = (2.0, 0.5) if model == "mlp" else (s, warm)
                    record(f"{model} {cache} miss", model, cache, str(distinct),
                           bench(ports, model, distinct, *short, pid=pid))
                if cache == "local":
                    record("noop (no cache) again", "noop", "none", "1",
                           bench(ports, "noop", 1, secs, warm, pid=pid))
            finally:
                stop(proc)
        # Zipf over 10 000 distinct MLP inputs. A fresh server per run (cold cache;
        # the warm-up second fills it). An MLP entry weighs ~3.6 KB, so 300 kB holds
        # the ~84 most popular answers: H(84)/H(10000) = 0.51 of the requests.
        zipf = {} if a.skip_zipf else {
            "none": configs["none"],
            "local, 300 kB": ["--cache-config", "local,size=300000"],
            "local, 512 MB": configs["local"],
            "redis": configs["redis"],
        }
        for cache, flags in zipf.items():
            flush_redis(redis_port)
            proc, ports = serve(repo, *flags)
            try:
                record(f"mlp zipf {cache}", "mlp", cache, "10000 zipf 1.0",
                       bench(ports, "mlp", 10000, secs, warm, zipf=1.0, pid=proc.pid))
            finally:
                stop(proc)
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(20)
    (OUT / f"results-{sched}.json").write_text(json.dumps(results, indent=1))
    by = {r["label"]: r for r in results}
    noop = {k: (by["noop (no cache)"][k] + by["noop (no cache) again"][k]) / 2 for k in ("p50", "rps", "cpu_us")}
    print("\n| Run | req/s | p50 ms | p99 ms | server CPU µs/req | hit rate |\n|---|---:|---:|---:|---:|---:|")
    for r in results:
        hr = r.get("hit_rate")
        rps = f"{r['rps']:_.0f}".replace("_", " ")
        print(f"| {r['label']} | {rps} | {r['p50']:.3f} | {r['p99']:.1f} | {r['cpu_us']:.1f} | "
              f"{'–' if hr is None else f'{hr:.2f}'} |")
    print(f"\nlocal hit / noop: p50 {by['mlp local hit']['p50'] / noop['p50']:.2f}x, "
          f"req/s {by['mlp local hit']['rps'] / noop['rps']:.2f}x, CPU {by['mlp local hit']['cpu_us'] / noop['cpu_us']:.2f}x")
    for m in ["mlp"] + ([] if a.skip_resnet else ["resnet50"]):
        base = by[f"{m} no cache"]
        for c in ["local", "redis"]:
            hit, miss = by[f"{m} {c} hit"], by[f"{m} {c} miss"]
            print(f"{m} {c}: req/s hit {hit['rps'] / base['rps']:.2f}x, miss {miss['rps'] / base['rps']:.2f}x of no cache "
                  f"(hit/miss {hit['rps'] / miss['rps']:.2f}x); server CPU per request hit {hit['cpu_us'] / base['cpu_us']:.2f}x, "
                  f"miss {miss['cpu_us'] / base['cpu_us']:.2f}x of no cache")
    for c in zipf:
        print(f"zipf {c}: {by[f'mlp zipf {c}']['rps'] / by['mlp zipf none']['rps']:.2f}x of no cache")


if __name__ == "__main__":
    main()
