#!/usr/bin/env python3
"""The two numbers a Kubernetes deployment needs (BENCHMARKS.md, "Deploy kit"):

- `ready`: time from process start (spawn) to the first 200 from /v2/health/ready for a
  repository and backend, median/max over rounds: the budget a startupProbe must cover.
- `drain`: a closed loop of clients on one replica; SIGTERM arrives under load with a
  drain grace; every request sent is classified as answered (200), refused (503, or the
  connection refused once the process is gone) or lost (anything else: a reset, a
  timeout, an accepted request never answered). The goal is 0 lost.

    .venv/bin/python bench/deploy_timings.py ready --repository examples/models --rounds 5
    ORT_DYLIB_PATH=... .venv/bin/python bench/deploy_timings.py ready --repository examples/models \
        --backend onnxruntime --rounds 5
    .venv/bin/python bench/deploy_timings.py drain --clients 4 --grace 2 --after-grace 2
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from serverproc import LISTEN

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))


def spawn(repository, *extra):
    args = [str(BIN), "serve", "--model-repository", str(repository), "--http-address", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log", "warn,sluice=info", *extra]
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = LISTEN.search(line)
        if m and m.group(1) == "HTTP":
            port = int(m.group(2))
            break
    else:
        raise RuntimeError(f"sluice exited before listening (code {proc.wait()})")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, f"http://127.0.0.1:{port}", start


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def ready(args):
    extra = ["--default-backend", args.backend] if args.backend else []
    times = []
    for _ in range(args.rounds):
        proc, base, start = spawn(args.repository, *extra)
        try:
            while True:
                try:
                    if requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"sluice exited with {proc.returncode} before ready")
                time.sleep(0.002)
            times.append(time.monotonic() - start)
            models = requests.get(f"{base}/v2/models/stats", timeout=10).json()
            names = sorted(m["name"] for m in models.get("model_stats", []))
        finally:
            stop(proc)
    ms = [t * 1000 for t in times]
    print(f"{args.repository} backend={args.backend or 'tract'} models={names} rounds={args.rounds}: "
          f"start->ready median {statistics.median(ms):.0f} ms, min {min(ms):.0f}, max {max(ms):.0f}")


MLP = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}


def drain(args):
    proc, base, _ = spawn(args.repository, "--drain-grace-secs", str(args.grace))
    counts = {"answered": 0, "refused": 0, "lost": 0}
    refused_by = {"503": 0, "connection refused": 0}
    phase = {"before": 0, "grace": 0, "after": 0}
    lock = threading.Lock()
    sigterm_at = [None]
    done = threading.Event()
    lost = []

    def client():
        while not done.is_set():
            sent = time.monotonic()
            try:
                r = requests.post(f"{base}/v2/models/mlp/infer", json=MLP, timeout=60)
                kind = "answered" if r.status_code == 200 else "refused" if r.status_code == 503 else "lost"
                if kind == "refused":
                    refused_by["503"] += 1
                if kind == "lost":
                    lost.append(f"{r.status_code} {r.text[:100]}")
            except requests.ConnectionError as e:
                refused = "Connection refused" in str(e)
                kind = "refused" if refused else "lost"
                if refused:
                    refused_by["connection refused"] += 1
                if not refused:
                    lost.append(repr(e)[:200])
                if refused:
                    time.sleep(0.01)  # the process is gone: a client would go elsewhere
            except requests.RequestException as e:  # noqa: BLE001 - a timeout is a lost request
                kind = "lost"
                lost.append(repr(e)[:200])
            with lock:
                counts[kind] += 1
                t = sigterm_at[0]
                if kind == "answered":
                    if t is None or sent < t:
                        phase["before"] += 1
                    elif sent < t + args.grace:
                        phase["grace"] += 1
                    else:
                        phase["after"] += 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(args.before)
    sigterm_at[0] = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    exited = time.monotonic() - sigterm_at[0]
    time.sleep(args.after_grace)
    done.set()
    for t in threads:
        t.join(60)
    print(f"clients={args.clients} grace={args.grace}s: exit code {code} after {exited:.2f} s; "
          f"answered {counts['answered']} (sent before SIGTERM {phase['before']}, during the grace "
          f"{phase['grace']}, after it {phase['after']}), refused {counts['refused']} "
          f"(503 {refused_by['503']}, connection refused {refused_by['connection refused']}), lost {counts['lost']}")
    for line in lost[:5]:
        print("  lost:", line)
    return 1 if counts["lost"] else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ready")
    r.add_argument("--repository", type=Path, default=ROOT / "examples" / "models")
    r.add_argument("--backend", choices=["tract", "onnxruntime"])
    r.add_argument("--rounds", type=int, default=5)
    d = sub.add_parser("drain")
    d.add_argument("--repository", type=Path, default=ROOT / "examples" / "models")
    d.add_argument("--clients", type=int, default=4)
    d.add_argument("--grace", type=float, default=2.0)
    d.add_argument("--before", type=float, default=2.0, help="seconds of load before SIGTERM")
    d.add_argument("--after-grace", type=float, default=1.0, help="seconds the clients go on after the exit")
    args = p.parse_args()
    sys.exit(ready(args) if args.command == "ready" else drain(args))


if __name__ == "__main__":
    main()
