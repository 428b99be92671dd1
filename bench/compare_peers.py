"""Sluice vs its peers, all measured by the same `sluice bench` runs in one go, and the
BENCHMARKS.md table regenerated from the result.

For each model (the example MLP 784-256-10 and small CNN 3x32x32) and each server
(Sluice, FastAPI+uvicorn+onnxruntime, a Python grpcio server, Triton 2.51 with the Python
backend, MLServer; see bench/peers/peers.py), one server at a time is started pinned to
CPU 0 with taskset and `sluice bench` runs pinned to CPU 1 (one load thread):

- req/s of batch-1 requests with 1 and with 8 concurrent clients (closed loop);
- p99 latency at a fixed Poisson rate (MLPerf Server scenario, `--target-qps RATE`);
- the highest Poisson rate whose p99 stays within BOUND ms (`--find-peak`).

Sluice is measured over each protocol a peer speaks (HTTP JSON and gRPC) and each ratio
is Sluice / peer over the same protocol, from the same round. `--rounds N` repeats the
whole set, interleaved, and reports each cell's median.

    bench/peers/install.sh && cargo build --release
    python3 bench/compare_peers.py --rounds 2 --update-benchmarks
"""

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import peers  # noqa: E402

ROOT = peers.ROOT
OUT = peers.OUT
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
METRICS = ("c1_rps", "c8_rps", "fixed_p99", "peak_qps")
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def bench(url, protocol, model, extra, a):
    argv = [str(BIN), "bench", "--url", url, "--protocol", protocol, "--model", model,
            "--quiet", "--threads", "1", "--duration", str(a.duration), "--warmup", str(a.warmup),
            "--report", str(OUT / "last-report.json"), *extra]
    if a.client_cpus:
        argv = ["taskset", "-c", a.client_cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        log = OUT / "bench-failure.log"
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{out.stdout}\n{out.stderr}\n")
        first = next((l for l in out.stderr.splitlines() if l.strip() and not l.startswith(" ")), "")
        raise RuntimeError(f"sluice bench {' '.join(extra)} failed: {first[:300]} (full output in {log.name})")
    return json.loads((OUT / "last-report.json").read_text())


def measure(peer, protocol, model, a, notes):
    """One cell; a measurement that fails leaves its value empty and says why in `notes`."""
    url = peer.url(protocol)
    cell = {}

    def attempt(key, extra, pick):
        try:
            cell[key] = pick(bench(url, protocol, model, extra, a))
        except RuntimeError as e:
            cell[key] = None
            notes.append(f"{peer.name} {model} {protocol} {key}: {e}")

    for c in (1, 8):
        attempt(f"c{c}_rps", ["--concurrency-range", f"{c}:{c}"], lambda r: r["runs"][0]["throughput_rps"])
    attempt("fixed_p99", ["--scenario", "server", "--target-qps", str(a.rate), "--latency-bound-ms", str(a.bound)],
            lambda r: r["runs"][0]["latency_ms"]["p99"])
    attempt("peak_qps", ["--scenario", "server", "--find-peak", "--target-qps", str(a.peak_start),
                         "--latency-bound-ms", str(a.bound), "--peak-tolerance", "0.1"],
            lambda r: r["result"]["value"])
    return cell


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def ratio(s, p, invert=False):
    if not s or not p:
        return "–"
    return f"{(p / s if invert else s / p):.2f}×"


def table(results, a, failed, notes):
    cols = METRICS
    lines = [f"| model | server | protocol | req/s, 1 client | req/s, 8 clients | p99 ms at {a.rate:g}/s "
             f"| peak Poisson QPS, p99 ≤ {a.bound:g} ms |", "|---|---|---|---:|---:|---:|---:|"]
    ratios = ["| model | peer | protocol | req/s 1 client | req/s 8 clients | p99 at fixed rate "
              "(peer / Sluice) | peak QPS |", "|---|---|---|---:|---:|---:|---:|"]
    for model in a.models:
        cells = results.get(model, {})
        for key, cell in sorted(cells.items(), key=lambda kv: (not kv[0].startswith("sluice/"), kv[0])):
            peer, protocol = key.split("/")
            med = {c: median(cell[c]) for c in cols}
            lines.append(f"| {model} | {peer} | {protocol} | {fmt(med['c1_rps'])} | {fmt(med['c8_rps'])} "
                         f"| {fmt(med['fixed_p99'], 2)} | {fmt(med['peak_qps'])} |")
            if peer == "sluice":
                continue
            sl = results[model].get(f"sluice/{protocol}")
            if not sl:
                continue
            s = {c: median(sl[c]) for c in cols}
            ratios.append(f"| {model} | {peer} | {protocol} | {ratio(s['c1_rps'], med['c1_rps'])} "
                          f"| {ratio(s['c8_rps'], med['c8_rps'])} | {ratio(s['fixed_p99'], med['fixed_p99'], True)} "
                          f"| {ratio(s['peak_qps'], med['peak_qps'])} |")
    text = "\n".join(lines) + "\n\nSluice / peer (same protocol, same run; > 1 means Sluice is better):\n\n" + "\n".join(ratios) + "\n"
    if failed or notes:
        text += "\nLeft out:\n\n" + "\n".join(
            [f"- {k}: {v}" for k, v in failed.items()] + [f"- {n}" for n in notes]) + "\n"
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="sluice,fastapi,grpc,triton,mlserver")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=300.0, help="the fixed Poisson rate (queries/s)")
    p.add_argument("--bound", type=float, default=10.0, help="p99 bound in ms for the peak search")
    p.add_argument("--peak-start", type=float, default=250.0)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--update-benchmarks", action="store_true", help="rewrite the table in BENCHMARKS.md")
    a = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the running peer is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    a.models = a.models.split(",")
    names = a.peers.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    results, failed, notes = {}, {}, []
    for rnd in range(a.rounds):
        for name in names:
            protocols = ["http-json", "grpc"] if name == "sluice" else [peers.PROTOCOL[name]]
            try:
                peer = peers.Peer(name, a.server_cpus, log=OUT / f"peer-{name}.log")
            except Exception as e:  # noqa: BLE001 - recorded and left out of the table
                failed[f"{name}, round {rnd + 1}"] = f"did not start: {e}"
                print(f"!! {name}: {e}", file=sys.stderr)
                continue
            try:
                for model in a.models:
                    for protocol in protocols:
                        print(f"round {rnd + 1}: {name} {model} {protocol}", file=sys.stderr, flush=True)
                        cell = measure(peer, protocol, model, a, notes)
                        slot = results.setdefault(model, {}).setdefault(
                            f"{name}/{protocol}", {k: [] for k in (*METRICS, "raw")})
                        for k in METRICS:
                            slot[k].append(cell[k])
                        slot["raw"].append(cell)
            except Exception as e:  # noqa: BLE001
                failed[f"{name}, round {rnd + 1}"] = f"failed while measured: {e}"
                print(f"!! {name}: {e}", file=sys.stderr)
            finally:
                peer.stop()
    elapsed = time.time() - started
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "seconds": round(elapsed), "load_before": load_before,
            "load_after": os.getloadavg(), "args": vars(a)}
    (OUT / "peers.json").write_text(json.dumps({"meta": meta, "results": results, "failed": failed, "notes": notes}, indent=1))
    text = table(results, a, failed, notes)
    header = (f"Run {meta['date']} on {meta['machine']}, {round(elapsed)} s; load average "
              f"{load_before[0]:.1f} before, {meta['load_after'][0]:.1f} after (other builds share the cores). "
              f"Command: `python3 bench/compare_peers.py --rounds {a.rounds} --duration {a.duration:g} "
              f"--warmup {a.warmup:g} --rate {a.rate:g} --bound {a.bound:g}`; server on CPU {a.server_cpus}, "
              f"`sluice bench` on CPU {a.client_cpus}; median of {a.rounds} round(s).\n\n")
    (OUT / "peers.md").write_text(header + text)
    print(header + text)
    if a.update_benchmarks:
        path = ROOT / "BENCHMARKS.md"
        doc = path.read_text()
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN) + len(BEGIN)] + "\n" + header + text + doc[doc.index(END):]
            path.write_text(doc)
        else:
            print(f"BENCHMARKS.md has no {BEGIN} … {END} block to update", file=sys.stderr)


if __name__ == "__main__":
    main()
