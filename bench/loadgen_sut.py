"""A system under test for MLCommons LoadGen (`mlcommons-loadgen`) that sends each
query sample to a KServe v2 server as one batch-1 HTTP request with Triton's binary
tensor extension (the bytes `sluice bench --protocol http-binary` sends), from a pool
of threads with one keep-alive connection each. LoadGen schedules the queries and
measures latency; the summary's numbers are written to `--out` as JSON.

    bench/out/venvs/loadgen/bin/python bench/loadgen_sut.py --url 127.0.0.1:8000 \
        --model wide --input x --shape 1,512 --scenario server --qps 200 --bound-ms 10 \
        --duration 20 --out server.json
"""

import argparse
import http.client
import json
import queue
import re
import threading
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np


def encode(name, x):
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), len(header)


def summary(path):
    text = path.read_text()

    def number(label):
        m = re.search(re.escape(label) + r"\s*:\s*([0-9.e+]+)", text)
        return float(m.group(1)) if m else None

    valid = re.search(r"Result is\s*:\s*(\w+)", text)
    return {"completed_qps": number("Completed samples per second"),
            "scheduled_qps": number("Scheduled samples per second"),
            "samples_per_s": number("Samples per second"),
            "p50_ms": (number("50.00 percentile latency (ns)") or 0) / 1e6,
            "p90_ms": (number("90.00 percentile latency (ns)") or 0) / 1e6,
            "p99_ms": (number("99.00 percentile latency (ns)") or 0) / 1e6,
            "result": valid.group(1) if valid else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="input tensor name")
    p.add_argument("--shape", required=True, help="request shape, e.g. 1,512")
    p.add_argument("--scenario", choices=["server", "offline"], required=True)
    p.add_argument("--qps", type=float, required=True, help="Server: target QPS; Offline: expected QPS")
    p.add_argument("--bound-ms", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=32, help="sending threads (Offline: the concurrency)")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    host, port = a.url.rsplit(":", 1)
    path = f"/v2/models/{a.model}/infer"
    shape = [int(d) for d in a.shape.split(",")]
    rng = np.random.default_rng(1)
    bodies = [encode(a.input, rng.random(shape, dtype=np.float32)) for _ in range(16)]
    work = queue.Queue()
    errors = []

    def worker():
        conn = http.client.HTTPConnection(host, int(port))
        while True:
            item = work.get()
            if item is None:
                return
            sample_id, index = item
            body, header_len = bodies[index % len(bodies)]
            try:
                conn.request("POST", path, body=body, headers={
                    "Inference-Header-Content-Length": str(header_len),
                    "Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(response.status)
            except (OSError, http.client.HTTPException) as e:
                errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port))
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.threads)]
    for t in threads:
        t.start()

    def issue_queries(samples):  # must not block: hand the samples to the senders
        for s in samples:
            work.put((s.id, s.index))

    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(a.duration * 1000)
    settings.max_duration_ms = int(a.duration * 1000 * 2)
    settings.min_query_count = 1
    if a.scenario == "server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = a.qps
        settings.server_target_latency_ns = int(a.bound_ms * 1e6)
    else:
        settings.scenario = lg.TestScenario.Offline
        settings.offline_expected_qps = a.qps
    outdir = Path(a.out).with_suffix("")
    outdir.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    sut = lg.ConstructSUT(issue_queries, lambda: None)
    qsl = lg.ConstructQSL(1024, len(bodies), lambda s: None, lambda s: None)
    lg.StartTestWithLogSettings(sut, qsl, settings, log)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    for _ in threads:
        work.put(None)
    result = summary(outdir / "mlperf_log_summary.txt")
    result["errors"] = len(errors)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
