"""`sluice route` measurements (BENCHMARKS.md, "Router"): real replicas and a real router
on loopback, loaded by `sluice bench` (overhead, tail) or a Python client (balance).

    python bench/router.py overhead [--pin]  # throughput and p50 at 8 clients: router vs direct
    python bench/router.py tail       # one of three replicas stalls 100 ms 1 % of the time
    python bench/router.py balance    # Zipf popularity over 12 models on 3 replicas
    python bench/router.py instructions  # CPU instructions per request: router vs replica

The machine is shared and noisy: compare the two columns of one run, not runs."""

import argparse
import json
import os
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
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
EXAMPLES = ROOT / "examples" / "models"
LISTEN = re.compile(r"(HTTP|gRPC) server listening on [^:\s]+:(\d+)")


def start_router(replicas, *extra, prefix=(), poll_ms=100):
    args = [*prefix, str(BIN), "route", "--address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
            "--poll-ms", str(poll_ms), "--log", "warn,sluice::route=info"]
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
        st = requests.get(f"{base}/v2/router/state", timeout=60).json()
        if all(r["usable"] and r["models"] for r in st["replicas"]):
            break
        time.sleep(0.05)
    return proc, ports, base


def bench(port, model, concurrency, duration, prefix=()):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([*prefix, str(BIN), "bench", "-u", f"127.0.0.1:{port}", "-m", model, "--concurrency-range",
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
    # --pin: the replica gets core 0 to itself; the router and the client share core 1
    # (direct runs: the client alone there), so the router's CPU is not taken from the
    # replica's, as with a router on its own node.
    replica = serverproc.start(BIN, EXAMPLES, cpus="0" if args.pin else "0,1")
    side = ("taskset", "-c", "1") if args.pin else ()
    router, rports, _ = start_router([replica], "--hedge", "off", prefix=side)
    try:
        rows = []
        for _ in range(args.rounds):
            rows.append(("direct", summary(bench(replica[1]["HTTP"], args.model, 8, args.duration, side))))
            rows.append(("router", summary(bench(rports["HTTP"], args.model, 8, args.duration, side))))
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
        for mode, burst in [("off", "3"), ("p95", "3"), ("p95", "20"), ("p99", "3")]:
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
            st = requests.get(f"{base}/v2/router/state", timeout=60).json()
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
            st = requests.get(f"{base}/v2/router/state", timeout=60).json()
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
        st = requests.get(f"{base}/v2/router/state", timeout=60).json()
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


CALLGRIND_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def under_callgrind(out_file, start, load, counter_url, counter):
    """Starts a process under callgrind (`start(prefix)` returns (proc, port)), runs
    `load(port)`, reads the requests it answered from its own counter, stops it, and
    returns (instructions of the whole run, requests)."""
    proc, port = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"])
    try:
        load(port)
        text = requests.get(counter_url(port), timeout=120).text
        answered = sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                       if line.startswith(counter) and not line.startswith("#"))
    finally:
        stop(proc)
    return int(CALLGRIND_TOTAL.search(Path(out_file).read_text()).group(1)), answered


def instructions(args):
    """CPU instructions per answered request (valgrind callgrind counts them: the same
    for the same binary and load whatever else the machine does): the router's, with
    the replica running natively behind it, and the replica's own, loaded directly. Each
    process runs twice, with one request and with `--duration` seconds of load (8
    clients), and the difference of the totals is divided by the difference of the
    requests, so start-up and shutdown cancel out."""
    out = Path(tempfile.mkdtemp())
    one = lambda port: bench(port, "mlp", 1, 1)  # noqa: E731
    full = lambda port: bench(port, "mlp", 8, args.duration)  # noqa: E731
    results = {}
    try:
        replica = serverproc.start(BIN, EXAMPLES, "--metrics-port", "0", cpus="0,1")
        try:
            def router(prefix):
                proc, ports, _ = start_router([replica], "--hedge", "off", poll_ms=1000, prefix=prefix)
                return proc, ports["HTTP"]
            # the router's /metrics is on its HTTP port
            runs = [under_callgrind(out / f"router{i}.out", router, load, lambda p: f"http://127.0.0.1:{p}/metrics",
                                    "sluice_router_requests_total") for i, load in enumerate((one, full))]
            results["router"] = runs
        finally:
            stop(replica[0])

        metrics_port = {}

        def serve(prefix):
            args_serve = ["--model-repository", str(EXAMPLES), "--http-address", "127.0.0.1", "--http-port", "0",
                          "--grpc-port", "0", "--metrics-port", "0", "--ort-library", "off", "--log",
                          "warn,sluice=info"]
            proc = subprocess.Popen([*prefix, str(BIN), "serve", *args_serve], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            ports = {}
            for line in proc.stderr:
                m = serverproc.LISTEN.search(line)
                if m:
                    ports[m.group(1)] = int(m.group(2))
                    if m.group(1) == "HTTP":
                        break
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            metrics_port[ports["HTTP"]] = ports["metrics"]
            return proc, ports["HTTP"]

        if args.router_only:
            (ir0, n0), (ir1, n1) = results["router"]
            print(f"router   {(ir1 - ir0) / (n1 - n0):10.0f} instructions per request ({n1 - n0:.0f} requests; "
                  f"totals {ir0} and {ir1})")
            return
        runs = [under_callgrind(out / f"replica{i}.out", serve, load,
                                lambda p: f"http://127.0.0.1:{metrics_port[p]}/metrics",
                                'sluice_inference_requests_total{model="mlp",version="1",outcome="success"}')
                for i, load in enumerate((one, full))]
        results["replica"] = runs
        per = {}
        for name, ((ir0, n0), (ir1, n1)) in results.items():
            per[name] = (ir1 - ir0) / (n1 - n0)
            print(f"{name:8s} {per[name]:10.0f} instructions per request ({n1 - n0:.0f} requests; "
                  f"totals {ir0} and {ir1})")
        ratio = per["router"] / per["replica"]
        print(f"router/replica {ratio:.3f}; on shared cores throughput through the router is bounded by "
              f"direct x {1 / (1 + ratio):.3f}")
    finally:
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["overhead", "tail", "balance", "instructions"])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--router-only", action="store_true", help="instructions: the router's figure only")
    p.add_argument("--keep", help="instructions: copy the callgrind files here (for callgrind_annotate)")
    p.add_argument("--pin", action="store_true",
                   help="overhead: the replica on core 0, the router and the client on core 1")
    p.add_argument("--model", default="mlp", help="overhead: the example model to load")
    args = p.parse_args()
    {"overhead": overhead, "tail": tail, "balance": balance, "instructions": instructions}[args.what](args)


if __name__ == "__main__":
    main()
