#!/usr/bin/env python3
"""Cross-check of a local cache hit against a model that does nothing, with a plain
Python keep-alive client (http.client, binary tensors, 1 and 4 connections; neither
process pinned): per-request latency p50/p99, requests over 20 ms, throughput. Uses the
repository that bench/cache_bench.py writes (run that first).

  .venv/bin/python bench/cache_hit_python.py
"""

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import serverproc

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "sluice"
REPO = ROOT / "bench" / "out" / "cache" / "repo"
X = np.arange(784, dtype=np.float32).tobytes()


def header(output):
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(X)}}],
                       "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()


def client(port, model, output, n):
    h = header(output)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    latencies = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body=h + X,
                     headers={"Inference-Header-Content-Length": str(len(h))})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        latencies.append(time.perf_counter() - t)
    conn.close()
    return latencies


def main():
    proc, ports = serverproc.start(BIN, REPO, "--metrics-port", "0", "--cache-config", "local,size=536870912",
                                   cpus="0,1")
    try:
        for model, output in [("mlp", "probabilities"), ("noop", "out"), ("mlp", "probabilities")]:
            for conc in [1, 4]:
                with ThreadPoolExecutor(conc) as pool:
                    t = time.perf_counter()
                    lat = sum(pool.map(lambda _: client(ports["HTTP"], model, output, 1500), range(conc)), [])
                    elapsed = time.perf_counter() - t
                lat = np.array(lat) * 1000
                print(f"{model:<5} c{conc} {len(lat) / elapsed:8.0f} req/s  p50 {np.percentile(lat, 50):.3f} ms"
                      f"  p99 {np.percentile(lat, 99):.3f} ms  >20 ms: {int((lat > 20).sum())}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
