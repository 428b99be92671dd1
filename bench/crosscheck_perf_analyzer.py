"""Cross-checks `sluice bench`'s closed-loop concurrency sweep against Triton's
`perf_analyzer` (the real 2.51 binary from `tritonclient[all]==2.51.0`, installed by
`bench/peers/install.sh perf`): the same server, model, protocol and concurrency levels,
batch-1 requests, one after the other, reporting requests/s and p99 for each level and
the ratio of the two tools.

Each server runs pinned to CPU 0 and both load generators to CPU 1. perf_analyzer
sends HTTP inputs as Triton binary tensors and reads `GET v2/models/{m}/config`, so it
cannot measure the JSON-only FastAPI peer or MLServer (no config endpoint): those are
tried and their error is printed.

    bench/peers/install.sh perf && cargo build --release
    python3 bench/crosscheck_perf_analyzer.py --peers sluice,triton,grpc
"""

import argparse
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import peers  # noqa: E402

ROOT, OUT = peers.ROOT, peers.OUT
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
# What each peer speaks; Sluice is checked over both.
PROTOCOLS = {"sluice": ["http-binary", "grpc"], "triton": ["http-binary", "grpc"], "grpc": ["grpc"],
             "fastapi": ["http-binary"], "mlserver": ["http-binary"]}
# Hand-made peers report max_batch_size 0 and a variable first dimension.
SHAPES = {"grpc": ["--shape", "input:1,784"], "fastapi": ["--shape", "input:1,784"],
          "mlserver": ["--shape", "input:1,784"]}


def pinned(argv, cpus):
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def perf_analyzer(peer, name, protocol, level, a, extra=()):
    """`extra`: more perf_analyzer flags (e.g. `--input-tensor-format json`)."""
    sp = peers.site_packages("perf")
    env = dict(os.environ, LD_LIBRARY_PATH=str(sp / "nvidia" / "cuda_runtime" / "lib"))
    out = OUT / "perf_analyzer.csv"
    argv = pinned([str(peers.VENVS / "perf" / "bin" / "perf_analyzer"), "-m", a.model,
                   "-u", peer.url(protocol), "-i", "grpc" if protocol == "grpc" else "http",
                   "--concurrency-range", f"{level}:{level}", "--measurement-interval", str(int(a.duration * 1000)),
                   "--stability-percentage", "100", "--max-trials", "6", "--percentile", "99",
                   "-f", str(out), *SHAPES.get(name, []), *extra], a.client_cpus)
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr).strip().splitlines()[-1][:300])
    rows = {}
    for r in csv.DictReader(io.StringIO(out.read_text())):
        rows[int(r["Concurrency"])] = (float(r["Inferences/Second"]), float(r["p99 latency"]) / 1e3)
    return rows


def sluice_bench(peer, protocol, level, a):
    report = OUT / "crosscheck-report.json"
    argv = pinned([str(BIN), "bench", "--url", peer.url(protocol), "--protocol", protocol,
                   "--model", a.model, "--quiet", "--threads", "1", "--concurrency-range",
                   f"{level}:{level}", "--duration", str(a.duration), "--warmup", "1",
                   "--report", str(report)], a.client_cpus)
    subprocess.run(argv, check=True, capture_output=True)
    r = json.loads(report.read_text())
    return {x["concurrency"]: (x["throughput_rps"], x["latency_ms"]["p99"]) for x in r["runs"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="sluice,triton,grpc,fastapi,mlserver")
    p.add_argument("--model", default="mlp")
    p.add_argument("--levels", default="1:7:2", help="START:END:STEP concurrencies")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per level")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print("| server | protocol | clients | sluice bench req/s | perf_analyzer req/s | ratio "
          "| sluice bench p99 ms | perf_analyzer p99 ms |\n|---|---|---:|---:|---:|---:|---:|---:|")
    results, failed = [], {}
    for name in a.peers.split(","):
        try:
            peer = peers.Peer(name, a.server_cpus, log=OUT / f"peer-{name}.log")
        except Exception as e:  # noqa: BLE001
            failed[name] = f"did not start: {e}"
            continue
        try:
            start, end, step = map(int, a.levels.split(":"))
            for protocol in PROTOCOLS[name]:
                # Level by level, the two tools back to back, so both see the same
                # conditions on these shared cores.
                for c in range(start, end + 1, step):
                    try:
                        pa = perf_analyzer(peer, name, protocol, c, a)
                    except Exception as e:  # noqa: BLE001
                        failed[f"{name} {protocol}"] = f"perf_analyzer: {e}"
                        break
                    sb = sluice_bench(peer, protocol, c, a)
                    if c not in pa or c not in sb:
                        continue
                    (sr, sp), (pr, pp) = sb[c], pa[c]
                    results.append({"server": name, "protocol": protocol, "clients": c,
                                    "sluice_bench": sb[c], "perf_analyzer": pa[c]})
                    print(f"| {name} | {protocol} | {c} | {sr:,.0f} | {pr:,.0f} | {sr / pr:.2f} "
                          f"| {sp:.2f} | {pp:.2f} |", flush=True)
        finally:
            peer.stop()
    for k, v in failed.items():
        print(f"- left out {k}: {v}")
    (OUT / "crosscheck.json").write_text(json.dumps({"args": vars(a), "results": results,
                                                     "failed": failed}, indent=1))


if __name__ == "__main__":
    main()
