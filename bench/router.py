"""`sluice route` measurements (BENCHMARKS.md, "Router"): real replicas and a real router
on loopback, loaded by `sluice bench` (overhead, tail) or a Python client (balance).

    python bench/router.py overhead   # throughput and p50 at 8 clients: router vs direct
    python bench/router.py tail       # one of three replicas stalls 100 ms 1 % of the time
    python bench/router.py balance    # Zipf popularity over 12 models on 3 replicas

The machine is shared and noisy: compare the two columns of one run, not runs."""

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serverproc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "sluice"
EXAMPLES = ROOT / "examples" / "models"
LISTEN = re.compile(r"(HTTP|gRPC) server listening on [^:\s]+:(\d+)")


def start_router(replicas, *extra):
    args = [str(BIN), "route", "--address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
            "--poll-ms", "100", "--log", "warn,sluice::route=info"]
    for proc, ports in replicas:
        args += ["--replica", f"127.0.0.1:{ports['HTTP']}/{ports['gRPC']}"]
    proc = subprocess.Popen(args + list(extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = {}
    for line in proc.stderr:
        m = LISTEN.search(line)
        if m:
            ports[m.group(1)] = int(m.group(2))
            if m.group(1) == "HTTP":
                break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    base = f"http://127.0.0.1:{ports['HTTP']}"
    for _ in range(200):
        st = requests.get(f"{base}/v2/router/state", timeout=5).json()
        if all(r["usable"] and r["models"] for r in st["replicas"]):
            break
        time.sleep(0.05)
    return proc, ports, base


def bench(port, model, concurrency, duration):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([str(BIN), "bench", "-u", f"127.0.0.1:{port}", "-m", model, "--concurrency-range",
                        f"{concurrency}:{concurrency}", "--duration", str(duration), "--warmup", "1", "--report", f.name,
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        report = json.load(open(f.name))
    run = report["runs"][0] if "runs" in report else report
    return run


def summary(run):
    lat = run["latency_ms"]
    return {"rps": run["throughput_rps"], "p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"],
            "max": lat.get("max"), "errors": run.get("errors", 0)}


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def overhead(args):
    replica = serverproc.start(BIN, EXAMPLES, cpus="0,1")
    router, rports, _ = start_router([replica], "--hedge", "off")
    try:
        rows = []
        for _ in range(args.rounds):
            rows.append(("direct", summary(bench(replica[1]["HTTP"], "mlp", 8, args.duration))))
            rows.append(("router", summary(bench(rports["HTTP"], "mlp", 8, args.duration))))
        for name, s in rows:
            print(f"{name:7s} {s['rps']:9.0f} req/s  p50 {s['p50']:.3f} ms  p99 {s['p99']:.3f} ms  errors {s['errors']}")
        d = [s for n, s in rows if n == "direct"]
        r = [s for n, s in rows if n == "router"]
        rps = sum(x["rps"] for x in r) / sum(x["rps"] for x in d)
        p50 = sum(x["p50"] for x in r) / len(r) - sum(x["p50"] for x in d) / len(d)
        print(f"router/direct throughput {rps:.3f}; p50 difference {p50:+.3f} ms")
    finally:
        stop(router, replica[0])


def staller(proc, stop_event, seed, fraction=0.01, stall=0.1):
    """SIGSTOPs `proc` for `stall` seconds at Poisson times, `fraction` of the time."""
    rng = random.Random(seed)
    rate = fraction / stall
    count = 0
    while not stop_event.wait(rng.expovariate(rate)):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(stall)
        proc.send_signal(signal.SIGCONT)
        count += 1
    return count


def tail(args):
    replicas = [serverproc.start(BIN, EXAMPLES, "--metrics-port", "0", cpus="0,1") for _ in range(3)]
    try:
        for mode, burst in [("off", "3"), ("p95", "3"), ("p95", "20")]:
            router, rports, base = start_router(replicas, "--hedge", mode, "--hedge-burst", burst)
            stop_event = threading.Event()
            t = threading.Thread(target=staller, args=(replicas[0][0], stop_event, 7))
            t.start()
            try:
                s = summary(bench(rports["HTTP"], "mlp", 8, args.duration))
            finally:
                stop_event.set()
                t.join()
                replicas[0][0].send_signal(signal.SIGCONT)
            st = requests.get(f"{base}/v2/router/state", timeout=5).json()
            extra = st["hedges"] / max(st["requests"], 1)
            print(f"hedge {mode:3s} burst {burst:2s}: {s['rps']:7.0f} req/s p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms "
                  f"p99.9 {s['p999']:.2f} ms max {s['max']} ms errors {s['errors']} "
                  f"hedges {st['hedges']} ({100 * extra:.2f} % extra) won {st['hedge_wins']}")
            stop(router)
    finally:
        stop(*[r[0] for r in replicas])


def balance(args):
    tmp = Path(tempfile.mkdtemp())
    names = [f"m{i:02d}" for i in range(12)]
    for n in names:
        (tmp / n / "1").mkdir(parents=True)
        shutil.copy(EXAMPLES / "mlp" / "1" / "model.onnx", tmp / n / "1" / "model.onnx")
        cfg = (EXAMPLES / "mlp" / "config.pbtxt").read_text().replace('name: "mlp"', f'name: "{n}"')
        (tmp / n / "config.pbtxt").write_text(cfg)
    replicas = [serverproc.start(BIN, tmp, "--metrics-port", "0", "--model-control-mode", "explicit", "--model-memory-budget",
                                 str(400 << 20), cpus="0,1") for _ in range(3)]
    router, rports, base = start_router(replicas, "--copy-rate-per-min", "2000")
    weights = [1 / (i + 1) ** 1.1 for i in range(len(names))]
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
    counts = {n: 0 for n in names}
    peaks = {}
    stop_event = threading.Event()
    errors = []

    def client(seed):
        rng = random.Random(seed)
        session = requests.Session()
        while not stop_event.is_set():
            n = rng.choices(names, weights)[0]
            r = session.post(f"{base}/v2/models/{n}/infer", json=body, timeout=60)
            counts[n] += 1
            if r.status_code != 200:
                errors.append(r.text)

    def sampler():
        while not stop_event.wait(0.05):
            st = requests.get(f"{base}/v2/router/state", timeout=5).json()
            for r in st["replicas"]:
                q = sum(m["in_flight"] for m in r["models"])
                peaks.setdefault(r["id"], []).append(q)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)] + [threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop_event.set()
        for t in threads:
            t.join()
        st = requests.get(f"{base}/v2/router/state", timeout=5).json()
        total = sum(counts.values())
        print(f"{total} requests, {len(errors)} errors; popularity (share of requests):",
              " ".join(f"{n}:{100 * c / total:.1f}%" for n, c in counts.items()))
        for r in st["replicas"]:
            held = [m["name"] for m in r["models"] if m["state"] == "READY"]
            q = peaks.get(r["id"], [0])
            print(f"{r['id']}: {r['sent']} attempts ({100 * r['sent'] / max(total, 1):.1f} %), "
                  f"mean in-flight {sum(q) / len(q):.2f}, max {max(q)}, holds {len(held)}: {' '.join(held)}")
        print(f"router loads {st['loads']}, hedges {st['hedges']}, retries {st['retries']}")
    finally:
        stop(router, *[r[0] for r in replicas])
        shutil.rmtree(tmp)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["overhead", "tail", "balance"])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    {"overhead": overhead, "tail": tail, "balance": balance}[args.what](args)


if __name__ == "__main__":
    main()
