"""Observability end to end: `/metrics` (checked by promtool and scraped by a real
Prometheus), Triton's statistics extension over HTTP and gRPC with unmodified
tritonclient, live log settings, and W3C trace context in the logs."""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, gated_body, make_gated_model, wait_for_queue, wait_until
from models import assert_close, reference

# scripts/test.sh installs Debian's prometheus package and sets this, so CI fails
# instead of skipping when the tools are missing.
REQUIRE = os.environ.get("SLUICE_REQUIRE_PROMETHEUS") == "1"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def need(tool, path):
    if path is None:
        if REQUIRE:
            pytest.fail(f"{tool} is not installed (scripts/test.sh installs Debian's prometheus package)")
        pytest.skip(f"{tool} is not installed")


def scrape(server):
    r = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def parse(text):
    """[(name, labels dict, value)] for every sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == str(x) for k, x in labels.items())]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def mlp_body(rows, width=784):
    x = np.random.default_rng(rows).standard_normal((rows, width)).astype(np.float32)
    return {"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32", "data": x.flatten().tolist()}]}


def send_known_load(s):
    """10 batch-1 and 4 batch-3 successes over HTTP, 2 over gRPC, 3 invalid: (successes, rows, invalid)."""
    for _ in range(10):
        assert requests.post(f"{s.base}/v2/models/mlp/infer", json=mlp_body(1), timeout=30).status_code == 200
    for _ in range(4):
        assert requests.post(f"{s.base}/v2/models/mlp/infer", json=mlp_body(3), timeout=30).status_code == 200
    g = grpcclient.InferenceServerClient(s.grpc_url)
    x = np.ones((1, 784), np.float32)
    for _ in range(2):
        i = grpcclient.InferInput("input", [1, 784], "FP32")
        i.set_data_from_numpy(x)
        got = g.infer("mlp", [i]).as_numpy("probabilities")
        assert_close(got, reference("mlp", {"input": x})["probabilities"])
    # Invalid: a wrong shape, a wrong datatype, and a body that is not JSON.
    bad = mlp_body(1, width=10)
    assert requests.post(f"{s.base}/v2/models/mlp/infer", json=bad, timeout=30).status_code == 400
    wrong_type = mlp_body(1)
    wrong_type["inputs"][0]["datatype"] = "INT64"
    assert requests.post(f"{s.base}/v2/models/mlp/infer", json=wrong_type, timeout=30).status_code == 400
    assert requests.post(f"{s.base}/v2/models/mlp/infer", data=b"{nope", timeout=30).status_code == 400
    return 16, 10 + 12 + 2, 3


def test_metrics_count_requests_by_outcome_and_pass_promtool(start_server, tmp_path):
    need("promtool", PROMTOOL)
    shutil.copytree(EXAMPLES / "mlp", tmp_path / "mlp")
    gate = make_gated_model(tmp_path, tmp_path / "gates", "slow")
    s = start_server(tmp_path, "--queue-capacity", "2", "--test-execution-gates", str(tmp_path / "gates"))
    successes, rows, invalid = send_known_load(s)

    # The gated model, one instance, a queue of 2: r runs (held by the gate), a waits,
    # t waits and times out without running, b waits, and f finds the queue full. Each
    # step is observed before the next; nothing depends on how fast the machine is.
    x = gated_body()
    url = f"{s.base}/v2/models/slow/infer"
    try:
        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(requests.post, url, json=x, timeout=60)
            wait_for_queue(s, "slow", running=1, queued=0)
            a = pool.submit(requests.post, url, json=x, timeout=60)
            wait_for_queue(s, "slow", running=1, queued=1)
            timed = requests.post(url, json={**x, "parameters": {"timeout": 300_000}}, timeout=60)
            assert timed.status_code == 504, timed.text
            wait_for_queue(s, "slow", running=1, queued=1)
            b = pool.submit(requests.post, url, json=x, timeout=60)
            wait_for_queue(s, "slow", running=1, queued=2)
            full = requests.post(url, json=x, timeout=60)
            assert full.status_code == 429, full.text
            gate.release(3)
            assert [f.result().status_code for f in (running, a, b)] == [200, 200, 200]
    finally:
        gate.open_for_good()
        gate.close()

    text = scrape(s)
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    m = parse(text)
    mlp = {"model": "mlp", "version": "1"}
    assert value(m, "sluice_inference_requests_total", outcome="success", **mlp) == successes
    assert value(m, "sluice_inference_requests_total", outcome="invalid", **mlp) == invalid
    for outcome in ["rejected", "timeout", "cancelled", "backend"]:
        assert value(m, "sluice_inference_requests_total", outcome=outcome, **mlp) == 0
    assert value(m, "sluice_inference_items_total", **mlp) == rows
    executions = value(m, "sluice_inference_executions_total", **mlp)
    assert 1 <= executions <= successes
    assert value(m, "sluice_inference_batched_requests_total", **mlp) == successes
    # Every request (successful or not) is in the request histogram; executed ones in the others.
    assert value(m, "sluice_inference_request_duration_seconds_count", **mlp) == successes + invalid
    assert value(m, "sluice_inference_request_duration_seconds_bucket", le="+Inf", **mlp) == successes + invalid
    assert value(m, "sluice_inference_queue_duration_seconds_count", **mlp) == successes
    assert value(m, "sluice_inference_compute_duration_seconds_count", **mlp) == successes
    assert value(m, "sluice_inference_batch_size_count", **mlp) == executions
    assert value(m, "sluice_inference_batch_size_sum", **mlp) == rows
    assert 0 < value(m, "sluice_inference_request_duration_seconds_sum", **mlp) < 30
    buckets = [(float(l["le"]), v) for n, l, v in m
               if n == "sluice_inference_request_duration_seconds_bucket" and l["model"] == "mlp" and l["le"] != "+Inf"]
    assert [c for _, c in buckets] == sorted(c for _, c in buckets), "buckets are cumulative"

    slow = {"model": "slow", "version": "1"}
    assert value(m, "sluice_inference_requests_total", outcome="success", **slow) == 3
    assert value(m, "sluice_inference_requests_total", outcome="timeout", **slow) == 1
    assert value(m, "sluice_inference_requests_total", outcome="rejected", **slow) == 1
    assert value(m, "sluice_inference_executions_total", **slow) == 3, "the timed-out request never ran"
    assert value(m, "sluice_inference_queue_size", **slow) == 0
    assert value(m, "sluice_inference_in_flight", **slow) == 0
    assert value(m, "sluice_model_ready", **slow) == 1
    assert value(m, "sluice_model_load_duration_seconds", **slow) > 0
    assert value(m, "sluice_build_info") == 1
    assert value(m, "process_resident_memory_bytes") > 1e6
    assert value(m, "process_cpu_seconds_total") > 0
    assert not any(n.startswith("nv_") for n, _, _ in m), "Triton names only when asked"


def test_triton_compatible_names(start_server):
    s = start_server(EXAMPLES, "--metrics-triton-compat")
    successes, rows, invalid = send_known_load(s)
    m = parse(scrape(s))
    mlp = {"model": "mlp", "version": "1"}
    assert value(m, "nv_inference_request_success", **mlp) == successes
    assert value(m, "nv_inference_request_failure", reason="OTHER", **mlp) == invalid
    assert value(m, "nv_inference_count", **mlp) == rows
    assert value(m, "nv_inference_exec_count", **mlp) == value(m, "sluice_inference_executions_total", **mlp)
    assert value(m, "nv_inference_request_duration_us", **mlp) > value(m, "nv_inference_queue_duration_us", **mlp)
    assert value(m, "nv_inference_pending_request_count", **mlp) == 0
    # The native set is still there beside them.
    assert value(m, "sluice_inference_requests_total", outcome="success", **mlp) == successes


def test_metrics_can_be_turned_off(start_server):
    s = start_server(EXAMPLES, "--allow-metrics", "false")
    assert s.metrics_port is None
    assert "metrics server listening" not in s.log()


def stat(d):
    return d["count"], d["ns"]


def test_statistics_extension_counts_what_was_sent(start_server):
    s = start_server(EXAMPLES)
    successes, rows, invalid = send_known_load(s)
    h = httpclient.InferenceServerClient(s.http_url)
    g = grpcclient.InferenceServerClient(s.grpc_url)

    http_stats = h.get_inference_statistics("mlp")["model_stats"]
    assert len(http_stats) == 1
    st = http_stats[0]
    assert (st["name"], st["version"]) == ("mlp", "1")
    assert st["inference_count"] == rows
    inf = st["inference_stats"]
    assert inf["success"]["count"] == successes
    assert inf["fail"]["count"] == invalid
    for phase in ["queue", "compute_input", "compute_infer", "compute_output"]:
        assert inf[phase]["count"] == successes, phase
    assert inf["compute_infer"]["ns"] > 0
    # Each request's time includes its queue and compute time.
    assert inf["success"]["ns"] >= inf["queue"]["ns"]
    assert inf["cache_hit"] == {"count": 0, "ns": 0}
    assert sum(b["compute_infer"]["count"] for b in st["batch_stats"]) == st["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in st["batch_stats"]) == rows
    assert st["last_inference"] > (time.time() - 600) * 1000

    # The same figures over gRPC (nothing was sent in between).
    gs = g.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    assert int(gs["inference_count"]) == rows
    assert int(gs["execution_count"]) == st["execution_count"]
    assert int(gs["inference_stats"]["success"]["count"]) == successes
    assert int(gs["inference_stats"]["fail"]["count"]) == invalid
    assert int(gs["inference_stats"]["queue"]["ns"]) == inf["queue"]["ns"]

    # Every model, one version, and the errors.
    every = h.get_inference_statistics()["model_stats"]
    assert sorted(m["name"] for m in every) == ["cnn", "digits", "mixed", "mlp"]
    assert h.get_inference_statistics("mlp", "1")["model_stats"][0]["inference_count"] == rows
    assert h.get_inference_statistics("cnn")["model_stats"][0]["inference_count"] == 0
    for call in [lambda: h.get_inference_statistics("nope"), lambda: h.get_inference_statistics("mlp", "9"),
                 lambda: g.get_inference_statistics("nope")]:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.message().startswith("Request for unknown model: "), e.value.message()
        assert "'nope' is not found" in e.value.message() or "'mlp' version 9 is not found" in e.value.message()
    r = requests.get(f"{s.base}/v2/models/mlp/versions/x/stats", timeout=10)
    assert r.status_code == 400 and "version" in r.json()["error"]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_log_settings_change_live_and_logs_carry_the_trace_id(start_server):
    s = start_server(EXAMPLES, "--log-format", "json")
    h = httpclient.InferenceServerClient(s.http_url)
    g = grpcclient.InferenceServerClient(s.grpc_url)
    settings = h.get_log_settings()
    assert settings["log_verbose_level"] == 0 and settings["log_info"] is True
    assert settings["log_format"] == "json" and settings["log_filter"] == "info"

    # A rejected request is logged at debug level: not yet.
    bad = mlp_body(1, width=3)
    r = requests.post(f"{s.base}/v2/models/mlp/infer", json=bad, headers={"traceparent": TRACEPARENT}, timeout=10)
    assert r.status_code == 400
    time.sleep(0.2)
    assert "request rejected" not in s.log()

    # Turn on verbose logs (Triton's setting) over HTTP; the same request is now logged,
    # inside a span that carries the caller's trace id.
    after = h.update_log_settings({"log_verbose_level": 1})
    assert after["log_verbose_level"] == 1 and after["log_filter"] == "debug"
    r = requests.post(f"{s.base}/v2/models/mlp/infer", json=bad, headers={"traceparent": TRACEPARENT}, timeout=10)
    assert r.status_code == 400
    assert wait_until(lambda: "request rejected" in s.log(), timeout=30), s.log()[-2000:]
    lines = [json.loads(line) for line in s.lines if "request rejected" in line]
    assert lines[-1]["span"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736", lines[-1]
    assert lines[-1]["span"]["parent_id"] == "00f067aa0ba902b7"

    # Over gRPC: the trace id travels as metadata, the settings through LogSettings.
    i = grpcclient.InferInput("input", [1, 3], "FP32")
    i.set_data_from_numpy(np.ones((1, 3), np.float32))
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with pytest.raises(InferenceServerException):
        g.infer("mlp", [i], headers={"traceparent": other})
    assert wait_until(lambda: "0af7651916cd43dd8448eb211c80319c" in s.log(), timeout=30), s.log()[-2000:]
    assert g.get_log_settings(as_json=True)["settings"]["log_verbose_level"]["uint32_param"] == 1
    g.update_log_settings({"log_verbose_level": 0, "log_info": False})
    assert h.get_log_settings()["log_filter"] == "warn"
    # Sluice's own full filter, and bad settings that change nothing.
    assert h.update_log_settings({"log_filter": "sluice_server=debug,warn"})["log_verbose_level"] == 1
    for bad_settings in [{"log_info": 3}, {"log_level": 1}, {"log_file": "/tmp/x"}, {"log_filter": "[[["},
                         {"log_format": "ISO8601"}]:
        with pytest.raises(InferenceServerException):
            h.update_log_settings(bad_settings)
    # tritonclient.grpc picks the value type from the key; the raw stub sends any.
    from tritonclient.grpc import service_pb2
    for key, field, bad_value in [("log_info", "string_param", "yes"), ("log_level", "bool_param", True),
                                  ("log_filter", "string_param", "[[["), ("log_file", "string_param", "/tmp/x"),
                                  ("log_verbose_level", "bool_param", True)]:
        request = service_pb2.LogSettingsRequest()
        setattr(request.settings[key], field, bad_value)
        with pytest.raises(grpc.RpcError) as e:
            g._client_stub.LogSettings(request)
        assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,), (key, e.value)
        assert key in e.value.details() or "filter" in e.value.details()
    assert h.get_log_settings()["log_filter"] == "sluice_server=debug,warn"
    r = requests.post(f"{s.base}/v2/logging", data=b"[1]", timeout=10)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]


# ---- a real Prometheus scraping two replicas ---------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(tmp_path, targets):
    """A Prometheus scraping `targets` every 250 ms: a list of host:port, or a dict
    host:port -> labels for each target (what service discovery would attach, e.g.
    namespace and pod)."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    labelled = targets.items() if isinstance(targets, dict) else [(t, {}) for t in targets]
    config.write_text(
        "global:\n  scrape_interval: 250ms\n  evaluation_interval: 250ms\n"
        "scrape_configs:\n  - job_name: sluice\n    static_configs:\n"
        + "".join(f"      - targets: [{t!r}]\n        labels: {json.dumps(labels)}\n"
                  for t, labels in labelled))
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return requests.get(f"{base}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            assert proc.poll() is None, proc.stderr.read()
            return False

    assert wait_until(ready, timeout=120), "prometheus did not become ready"
    return proc, base


def promql(base, query, at=None):
    params = {"query": query}
    if at is not None:
        params["time"] = at
    r = requests.get(f"{base}/api/v1/query", params=params, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return {tuple(sorted(x["metric"].items())): float(x["value"][1]) for x in body["data"]["result"]}


def histogram_quantile(q, buckets):
    """Prometheus' interpolation, written out: buckets = [(le, cumulative count)] ascending, +Inf last."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    raise AssertionError("unreachable")


def test_prometheus_queries_for_autoscaling(start_server, tmp_path):
    need("prometheus", PROMETHEUS)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(EXAMPLES / "mlp", repo / "mlp")
    gates = tmp_path / "gates"
    gate = make_gated_model(repo, gates, "slow")
    a = start_server(repo)
    b = start_server(repo, "--test-execution-gates", str(gates))
    targets = {f"127.0.0.1:{a.metrics_port}": "a", f"127.0.0.1:{b.metrics_port}": "b"}
    prom, base = start_prometheus(tmp_path, list(targets))
    try:
        assert wait_until(lambda: len(promql(base, 'up{job="sluice"} == 1')) == 2, timeout=120)

        # Replica a: 60 mlp requests paced at 30/s. Replica b: none.
        rate, count = 30.0, 60
        start = time.time()
        for k in range(count):
            delay = start + k / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            assert requests.post(f"{a.base}/v2/models/mlp/infer", json=mlp_body(1), timeout=30).status_code == 200
        middle = start + count / rate / 2 + 0.5

        # Replica b: four requests at once on its one gated instance: one runs, three
        # wait in its queue until Prometheus has scraped that, then the gate opens.
        x = gated_body()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(requests.post, f"{b.base}/v2/models/slow/infer", json=x, timeout=120)
                       for _ in range(4)]
            wait_for_queue(b, "slow", running=1, queued=3)
            seen = f'max_over_time(sluice_inference_queue_size{{model="slow",instance="127.0.0.1:{b.metrics_port}"}}[1m]) == 3'
            assert wait_until(lambda: len(promql(base, seen)) == 1, timeout=30)
            gate.release(4)
            assert all(f.result().status_code == 200 for f in futures)
        done = 'sum(sluice_inference_requests_total{outcome="success",model="slow"})'
        assert wait_until(lambda: list(promql(base, done).values()) == [4], timeout=30)

        # Request rate per replica, as an autoscaler reads it.
        q = 'sum by (instance) (rate(sluice_inference_requests_total{outcome="success",model="mlp"}[1s]))'
        rates = {dict(k)["instance"]: v for k, v in promql(base, q, at=middle).items()}
        assert abs(rates[f"127.0.0.1:{a.metrics_port}"] - rate) < rate * 0.35, rates
        assert rates[f"127.0.0.1:{b.metrics_port}"] == 0, rates
        totals = promql(base, 'sum by (instance) (sluice_inference_requests_total{outcome="success",model="mlp"})')
        assert {dict(k)["instance"]: v for k, v in totals.items()}[f"127.0.0.1:{a.metrics_port}"] == count

        # Queue size per replica: the most seen on b is the three waiting requests.
        q = 'max by (instance) (max_over_time(sluice_inference_queue_size{model="slow"}[1m]))'
        queues = {dict(k)["instance"]: v for k, v in promql(base, q).items()}
        assert queues == {f"127.0.0.1:{a.metrics_port}": 0, f"127.0.0.1:{b.metrics_port}": 3}, queues

        # p99 through histogram_quantile, against the same interpolation done here on
        # the buckets Sluice itself reports.
        for replica, model in [(a, "mlp"), (b, "slow")]:
            q = ('histogram_quantile(0.99, sum by (le) (sluice_inference_request_duration_seconds_bucket'
                 f'{{model="{model}",instance="127.0.0.1:{replica.metrics_port}"}}))')
            (p99,) = promql(base, q).values()
            m = parse(scrape(replica))
            buckets = sorted((float(l["le"]), v) for n, l, v in m
                             if n == "sluice_inference_request_duration_seconds_bucket" and l["model"] == model)
            assert p99 == pytest.approx(histogram_quantile(0.99, buckets), rel=1e-9), model
        # The slow requests waited behind each other: the slowest took more than three runs.
        m = parse(scrape(b))
        one_run = value(m, "sluice_inference_compute_duration_seconds_sum", model="slow") / 4
        (p99_slow,) = promql(base, q).values()
        assert p99_slow > one_run, (p99_slow, one_run)
    finally:
        gate.open_for_good()
        gate.close()
        prom.terminate()
        prom.wait(30)


# ---- OpenTelemetry export -----------------------------------------------------------------

def _fields(buf):
    """(field number, wire type, value) of one protobuf message, written out by hand."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield number, wire, value


def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def spans_of(export_request):
    """Spans of an OTLP ExportTraceServiceRequest: resource_spans(1) > scope_spans(2) >
    spans(2) with trace_id(1), span_id(2), parent_span_id(4), name(5)."""
    spans = []
    for n, _, resource_spans in _fields(export_request):
        if n != 1:
            continue
        for n2, _, scope_spans in _fields(resource_spans):
            if n2 != 2:
                continue
            for n3, _, span in _fields(scope_spans):
                if n3 != 2:
                    continue
                f = {k: v for k, _, v in _fields(span)}
                spans.append({"trace_id": f[1].hex(), "span_id": f[2].hex(),
                              "parent_span_id": f.get(4, b"").hex(), "name": f[5].decode()})
    return spans


def test_request_spans_are_exported_over_otlp(tmp_path):
    import http.server
    from conftest import Server

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        s = Server(EXAMPLES, "--otlp-endpoint", f"http://127.0.0.1:{collector.server_address[1]}")
        try:
            r = requests.post(f"{s.base}/v2/models/mlp/infer", json=mlp_body(1),
                              headers={"traceparent": TRACEPARENT}, timeout=30)
            assert r.status_code == 200
            g = grpcclient.InferenceServerClient(s.grpc_url)
            i = grpcclient.InferInput("input", [1, 784], "FP32")
            i.set_data_from_numpy(np.ones((1, 784), np.float32))
            g.infer("mlp", [i], headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
            # Untraced requests make no span.
            assert requests.post(f"{s.base}/v2/models/mlp/infer", json=mlp_body(1), timeout=30).status_code == 200
        finally:
            assert s.stop() == 0  # stopping flushes the exporter
        assert received, "nothing reached the collector"
        assert all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype, _ in received)
        spans = [sp for _, _, body in received for sp in spans_of(body)]
        by_trace = {sp["trace_id"]: sp for sp in spans}
        assert len(spans) == 2, spans
        http_span = by_trace["4bf92f3577b34da6a3ce929d0e0e4736"]
        assert http_span["parent_span_id"] == "00f067aa0ba902b7" and http_span["name"] == "request"
        grpc_span = by_trace["0af7651916cd43dd8448eb211c80319c"]
        assert grpc_span["parent_span_id"] == "b7ad6b7169203331"
        assert http_span["span_id"] not in ("", "00f067aa0ba902b7")
    finally:
        collector.shutdown()
