#!/usr/bin/env python3
"""TLS, API-key and body-budget cost, measured in one interleaved run: closed-loop
clients (1 and 8 processes) against one `sluice serve` per setting (plain, no body
budget, TLS, key, TLS+key; all five running at once), HTTP (requests, keep-alive) and
gRPC (tritonclient), on the example `mlp` model, batch 1. Each cell is measured in
ROUNDS short slices, the settings' order rotating from round to round, so a change in
the machine's load falls on every setting alike; the figures are totals over the
rounds (req/s) and the p99 of all latencies.

`sluice bench` has no TLS or header options yet, so this uses Python clients; their own
cost per request is part of every figure, which makes the ratios an upper bound of
what TLS and the key check cost (the same clients in every setting).

Usage: SLUICE_BIN=target/release/sluice python scripts/bench_security.py [seconds] [rounds]
"""

import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import EXAMPLES, Server  # noqa: E402

KEY = "bench-0123456789abcdef"


def client(kind, url, ca, key, seconds, out):
    import requests
    import tritonclient.grpc as grpcclient
    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    headers = {"authorization": f"Bearer {KEY}"} if key else {}
    lat = []
    if kind == "http":
        s = requests.Session()
        scheme = "https" if ca else "http"
        body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        call = lambda: s.post(f"{scheme}://{url}/v2/models/mlp/infer", json=body,
                              headers=headers, verify=ca or True, timeout=30).raise_for_status()
    else:
        c = grpcclient.InferenceServerClient(url, ssl=bool(ca), root_certificates=ca)
        inp = grpcclient.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(x)
        call = lambda: c.infer("mlp", [inp], headers=headers or None)
    for _ in range(20):
        call()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    out.put(lat)


def measure(kind, url, ca, key, clients, seconds):
    """The latencies of `clients` processes calling for `seconds`."""
    q = mp.Queue()
    procs = [mp.Process(target=client, args=(kind, url, ca, key, seconds, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    lat = [v for _ in procs for v in q.get()]
    for p in procs:
        p.join()
    return lat


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    d = Path(tempfile.mkdtemp())
    ossl = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "s.key", "-out", "s.csr", "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "1", "-out", "s.pem", "-extfile", "ext")
    (d / "keys").write_text(f"bench inference {KEY}\n")
    tls = ["--tls-cert", str(d / "s.pem"), "--tls-key", str(d / "s.key")]
    auth = ["--api-keys-file", str(d / "keys")]
    settings = {"plain": [], "no budget": ["--max-inflight-body-bytes", "0"], "tls": tls,
                "key": auth, "tls+key": tls + auth}
    servers = {}
    lat = {}
    try:
        for name, args in settings.items():
            servers[name] = Server(EXAMPLES, *args)
        names = list(settings)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for kind in ("http", "grpc"):
                for clients in (1, 8):
                    for name in order:
                        s = servers[name]
                        url = s.http_url if kind == "http" else s.grpc_url
                        ca = str(d / "ca.pem") if "tls" in name else None
                        lat.setdefault((kind, clients, name), []).extend(
                            measure(kind, url, ca, "key" in name, clients, seconds))
    finally:
        for s in servers.values():
            s.stop()
    rows = {cell: (len(v) / (seconds * rounds), float(np.percentile(v, 99)) * 1000)
            for cell, v in sorted(lat.items(), key=lambda kv: names.index(kv[0][2]))}
    print(f"| protocol | clients | setting | req/s | p99 ms | req/s vs plain | p99 vs plain |")
    print("|---|---|---|---|---|---|---|")
    for (kind, clients, name), (rps, p99) in rows.items():
        base_rps, base_p99 = rows[(kind, clients, "plain")]
        print(f"| {kind} | {clients} | {name} | {rps:.0f} | {p99:.2f} | {rps / base_rps:.2f} | "
              f"{p99 / base_p99:.2f} |")


if __name__ == "__main__":
    main()
