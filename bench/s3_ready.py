#!/usr/bin/env python3
"""Time to ready from an S3 bucket (a real SeaweedFS on loopback) vs from a local folder,
cold and warm model cache, and sluice's download throughput vs boto3's in the same run.

    .venv/bin/python scripts/make_bench_models.py --out models-bench
    .venv/bin/python bench/s3_ready.py --bench-models models-bench [--runs 3]

Each figure is the median of --runs server starts (process start to the first 200 from
/v2/health/ready). The machine is shared and noisy: read ratios, not absolute times.
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from seaweed import Seaweed  # noqa: E402

BIN = ROOT / "target" / "release" / "sluice"


def time_to_ready(repo, env, *extra):
    args = [str(BIN), "serve", "--model-repository", str(repo), "--http-address", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port, lines = None, []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"HTTP server listening on [^:\s]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    assert port, "".join(lines)
    while requests.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code != 200:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    proc.terminate()
    rest = proc.stderr.read()
    proc.wait(60)
    return elapsed, "".join(lines) + rest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench-models", type=Path, default=ROOT / "models-bench")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    store = Seaweed().start()
    try:
        env = store.env()
        c = store.client()
        c.create_bucket(Bucket="bench")
        work = Path(tempfile.mkdtemp(prefix="sluice-s3bench-"))
        resnet = work / "resnet"
        resnet.mkdir()
        shutil.copytree(a.bench_models / "resnet50", resnet / "resnet50")
        repos = {"examples": ROOT / "examples" / "models", "resnet50": resnet}
        for name, folder in repos.items():
            store.upload_tree("bench", name, folder)
        print("| models | local folder | bucket, cold cache | bucket, warm cache |")
        print("|---|---|---|---|")
        sluice_mbps = None
        for name, folder in repos.items():
            local = [time_to_ready(folder, env)[0] for _ in range(a.runs)]
            cold, warm = [], []
            for i in range(a.runs):
                cache = work / f"cache-{name}-{i}"
                t, log = time_to_ready(f"s3://bench/{name}", env, "--model-cache-dir", str(cache))
                cold.append(t)
                if name == "resnet50":
                    m = re.search(r'model="resnet50" downloaded=\d+ reused=\d+ bytes=(\d+) ms=(\d+)', log)
                    if m:
                        mbps = int(m.group(1)) / 1e6 / (max(int(m.group(2)), 1) / 1e3)
                        sluice_mbps = max(sluice_mbps or 0, mbps)
                warm.append(time_to_ready(f"s3://bench/{name}", env, "--model-cache-dir", str(cache))[0])
            med = statistics.median
            print(f"| {name} | {med(local):.2f} s | {med(cold):.2f} s ({med(cold) / med(local):.2f}x) "
                  f"| {med(warm):.2f} s ({med(warm) / med(local):.2f}x) |")
        key = "resnet50/resnet50/1/model.onnx"
        size = c.head_object(Bucket="bench", Key=key)["ContentLength"]
        best = 0
        for i in range(a.runs):
            t0 = time.monotonic()
            c.download_file("bench", key, str(work / f"boto-{i}"))
            best = max(best, size / 1e6 / (time.monotonic() - t0))
        print(f"\nResNet-50 file ({size / 1e6:.1f} MB) download, best of {a.runs}: "
              f"sluice {sluice_mbps:.0f} MB/s, boto3 download_file {best:.0f} MB/s "
              f"(ratio {sluice_mbps / best:.2f})")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        store.cleanup()


if __name__ == "__main__":
    main()
