"""Sluice against real Triton 2.51 on the batch-1 MLP (784-256-10), closed loop at
several client counts, over HTTP binary, HTTP JSON and gRPC, measured by both
`perf_analyzer` (Triton's own tool) and `sluice bench`, with each side's CPU counted.

Each server is pinned to `--server-cpus` and each load generator to `--client-cpus`
(taskset). Per cell (config, server, protocol, clients, tool) it reports requests/s,
p99, and CPU µs per request of the server (every process of its session: Triton's
Python-backend stubs included) and of the client (the tool's own user+system time), and
how busy the client's core was: a client near 100 % of its core is the bottleneck, and
the ratio it shows is a floor. Requests are counted by the server's own statistics
(`v2/models/mlp/stats`, success count), so both tools are divided by the same thing.

Configs: `batched` (the example's dynamic batching: max_batch_size 32, 100 µs delay, 2
instances, for both servers) and `unbatched` (the same without dynamic batching). The
rounds are interleaved: per round every (config, server) is started afresh, measured
across all cells, and stopped; the table gives each cell's median over rounds.

    bench/peers/install.sh triton perf && cargo build --release --workspace
    python3 bench/triton_compare.py --rounds 3 --duration 3          # writes bench/out/triton.{json,md}

perf_analyzer and `sluice bench` come from `bench/crosscheck_perf_analyzer.py`.
"""

import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import crosscheck_perf_analyzer as xc  # noqa: E402
import peers  # noqa: E402

OUT = peers.OUT
TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_s(sid):
    """User+system seconds of every live process in session `sid` (the server and,
    for Triton, its backend stub processes)."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # After the name: state ppid pgrp session ... utime(14) stime(15).
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def successes(peer, model):
    url = f"http://127.0.0.1:{peer.http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=5) as r:
        stats = json.load(r)["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cell(peer, tool, protocol, level, a):
    """One measurement with its CPU accounting."""
    n0, s0, c0, t0 = successes(peer, a.model), session_cpu_s(peer.pid()), children_cpu_s(), time.time()
    if tool == "perf_analyzer":
        if protocol == "http-json":
            extra = ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        else:
            extra = []
        rows = xc.perf_analyzer(peer, peer.name, "grpc" if protocol == "grpc" else "http", level, a, extra)
    else:
        rows = xc.sluice_bench(peer, protocol, level, a)
    n1, s1, c1, t1 = successes(peer, a.model), session_cpu_s(peer.pid()), children_cpu_s(), time.time()
    rps, p99 = rows[level]
    requests = max(n1 - n0, 1)
    return {"rps": rps, "p99_ms": p99, "requests": requests,
            "server_us": (s1 - s0) / requests * 1e6, "client_us": (c1 - c0) / requests * 1e6,
            "client_core": (c1 - c0) / (t1 - t0), "server_core": (s1 - s0) / (t1 - t0)}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(results, a):
    lines = ["| config | protocol | clients | tool | Sluice req/s | Triton req/s | ratio | Sluice p99 ms "
             "| Triton p99 ms | server µs/req Sluice / Triton | client µs/req (S / T) | client core busy (S / T) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in a.configs:
        for protocol in a.protocols:
            for level in a.levels:
                for tool in a.tools:
                    key = f"{config}/{protocol}/{level}/{tool}"
                    s = results.get(f"sluice/{key}", [])
                    t = results.get(f"triton/{key}", [])
                    if not s and not t:
                        continue
                    m = {side: {k: med([c[k] for c in cells]) for k in
                                ("rps", "p99_ms", "server_us", "client_us", "client_core")}
                         for side, cells in (("s", s), ("t", t))}

                    def f(side, k, d=0):
                        v = m[side][k]
                        return "–" if v is None else f"{v:,.{d}f}"
                    ratio = (f"{m['s']['rps'] / m['t']['rps']:.2f}×"
                             if m["s"]["rps"] and m["t"]["rps"] else "–")
                    core = lambda side: "–" if m[side]["client_core"] is None else f"{m[side]['client_core']:.0%}"
                    lines.append(f"| {config} | {protocol} | {level} | {tool} | {f('s', 'rps')} | {f('t', 'rps')} "
                                 f"| {ratio} | {f('s', 'p99_ms', 2)} | {f('t', 'p99_ms', 2)} "
                                 f"| {f('s', 'server_us')} / {f('t', 'server_us')} "
                                 f"| {f('s', 'client_us')} / {f('t', 'client_us')} | {core('s')} / {core('t')} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement window")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--protocols", default="http-binary,http-json,grpc")
    p.add_argument("--tools", default="perf_analyzer,sluice-bench")
    p.add_argument("--configs", default="batched,unbatched")
    p.add_argument("--servers", default="sluice,triton")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    a = p.parse_args()
    for k in ("levels", "protocols", "tools", "configs", "servers"):
        setattr(a, k, a.__dict__[k].split(","))
    a.levels = [int(x) for x in a.levels]
    OUT.mkdir(parents=True, exist_ok=True)
    results, failed = {}, {}
    started, load_before = time.time(), os.getloadavg()
    for rnd in range(a.rounds):
        for config in a.configs:
            for name in a.servers:
                try:
                    peer = peers.Peer(name, a.server_cpus, log=OUT / f"peer-{name}.log",
                                      ready_models=[a.model], batching=config == "batched")
                except Exception as e:  # noqa: BLE001 - recorded, left out of the table
                    failed[f"{name} {config} round {rnd + 1}"] = f"did not start: {e}"
                    continue
                try:
                    for protocol in a.protocols:
                        for level in a.levels:
                            for tool in a.tools:
                                key = f"{name}/{config}/{protocol}/{level}/{tool}"
                                try:
                                    c = cell(peer, tool, protocol, level, a)
                                except Exception as e:  # noqa: BLE001
                                    failed[f"{key} round {rnd + 1}"] = str(e)[:300]
                                    continue
                                results.setdefault(key, []).append(c)
                                print(f"round {rnd + 1} {key}: {c['rps']:,.0f}/s p99 {c['p99_ms']:.2f} ms, "
                                      f"server {c['server_us']:.0f} µs/req, client {c['client_us']:.0f} µs/req "
                                      f"({c['client_core']:.0%} of its core)", file=sys.stderr, flush=True)
                finally:
                    peer.stop()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.time() - started), "load_before": load_before,
            "load_after": os.getloadavg(), "args": vars(a)}
    (OUT / "triton.json").write_text(json.dumps({"meta": meta, "results": results, "failed": failed}, indent=1))
    text = (f"Run {meta['date']}, {meta['seconds']} s, load average {load_before[0]:.1f} before and "
            f"{meta['load_after'][0]:.1f} after; servers on CPU {a.server_cpus}, clients on CPU "
            f"{a.client_cpus}; median of {a.rounds} round(s), {a.duration:g} s windows.\n\n" + table(results, a))
    if failed:
        text += "\nLeft out:\n\n" + "\n".join(f"- {k}: {v}" for k, v in failed.items()) + "\n"
    (OUT / "triton.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
