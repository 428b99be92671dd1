"""Live instance counts and the autoscaler, end to end.

- A load whose config changes only `instance_group.count` (or `intra_op_thread_count`)
  is applied in place, as Triton does: the version is not reloaded (its load time and
  version stay), instance threads start and stop, and under 4 concurrent clients
  (HTTP and gRPC) no request fails and every answer equals ONNX Runtime's.
- The same through poll mode and through Sluice's `POST /v2/models/{m}/instances`.
- Two gated models share a CPU budget under the autoscaler: queued requests (held by
  execution gates, not timing) move the spare core from one to the other.
"""

import json
import os
import re
import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import Server, gated_body, make_gated_model, metric, wait_until
from models import assert_close
from test_repository import Oracle, grpc_infer, http_infer, index_of, tagged_config, tagged_model, write_model

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def instance_threads(server, label):
    """Instance threads of the pool `label` (`model:version`) alive in the server, from
    /proc (Linux keeps 15 bytes of a thread's name: the prefix is enough)."""
    prefix = f"sluice-{label}-"[:15]
    n = 0
    for task in os.listdir(f"/proc/{server.proc.pid}/task"):
        try:
            with open(f"/proc/{server.proc.pid}/task/{task}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # the thread just exited
        if name.startswith(prefix):
            n += 1
    return n


def instances(server, model):
    r = requests.get(f"{server.base}/v2/models/{model}/instances", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["versions"]


def loads_logged(server, model):
    return sum(1 for line in server.lines
               if "model version is ready" in ANSI.sub("", line) and model in line)


def require_backend(server, backend, model):
    """Skips the ONNX Runtime case when the library is absent (unless required)."""
    if backend == "onnxruntime" and model not in [r["name"] for r in requests.post(
            server.base + "/v2/repository/index", json={"ready": True}, timeout=10).json()]:
        server.stop()
        if os.environ.get("SLUICE_REQUIRE_ORT") == "1":
            pytest.fail("SLUICE_REQUIRE_ORT=1 but the model did not load on ONNX Runtime:\n"
                        + server.log()[-2000:])
        pytest.skip("ONNX Runtime is not available")


@pytest.mark.parametrize("backend", ["tract", "onnxruntime"])
def test_count_1_4_1_ten_times_in_place_under_load(tmp_path, backend):
    repo = tmp_path / "repo"
    oracle = Oracle()
    data = tagged_model(3)
    oracle.add(1, data)
    config = tagged_config("inst", backend=backend, instance_group=[{"count": 1}],
                           dynamic_batching={"max_queue_delay_microseconds": 200})
    write_model(repo, "inst", 1, data, config)
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "inst")
    require_backend(s, backend, "inst")
    stop = threading.Event()
    answers, failures = [], []
    lock = threading.Lock()

    def client(kind, seed):
        rng = np.random.default_rng(seed)
        c = (httpclient.InferenceServerClient(s.http_url) if kind == "http"
             else grpcclient.InferenceServerClient(s.grpc_url))
        infer = http_infer if kind == "http" else grpc_infer
        while not stop.is_set():
            x = rng.standard_normal((int(rng.integers(1, 4)), 16)).astype(np.float32)
            try:
                version, y = infer(c, "inst", x)
                with lock:
                    answers.append((version, x, y))
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(k, i))
               for i, k in enumerate(["http", "http", "grpc", "grpc"])]
    try:
        row = index_of(s)[("inst", "1")]
        load_ms = row["load_duration_ms"]
        assert row["instances"] == 1 and row["intra_op_thread_count"] == 1, row
        assert instance_threads(s, "inst:1") == 1
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answers) > 20, timeout=30)
        http = httpclient.InferenceServerClient(s.http_url, connection_timeout=120, network_timeout=120)
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        for cycle in range(10):
            for count in (4, 1):
                cfg = json.dumps(dict(config, instance_group=[{"count": count}]))
                # Each way of changing it: HTTP load, gRPC load, the instances API.
                way = (2 * cycle + (count == 1)) % 3
                if way == 0:
                    http.load_model("inst", config=cfg)
                elif way == 1:
                    grpc.load_model("inst", config=cfg)
                else:
                    r = requests.post(f"{s.base}/v2/models/inst/instances", json={"count": count}, timeout=60)
                    assert r.status_code == 200, r.text
                    assert r.json()["versions"][0]["count"] == count
                row = index_of(s)[("inst", "1")]
                assert row["state"] == "READY" and row["instances"] == count, (row, s.log()[-3000:])
                # Not reloaded: same load, same version.
                assert row["load_duration_ms"] == load_ms, row
                assert metric(s, "sluice_model_instances", model="inst", version="1") == count
                # Retired threads finish their batch and exit; new ones run.
                assert wait_until(lambda c=count: instance_threads(s, "inst:1") == c, timeout=30), (
                    cycle, count, instance_threads(s, "inst:1"))
                assert wait_until(lambda c=count: instances(s, "inst")[0]["running_threads"] == c, timeout=30)
                before = len(answers)
                assert wait_until(lambda b=before: len(answers) > b + 5, timeout=30)
        # The intra-op threads change in place too: 2 instances of 2 threads.
        r = requests.post(f"{s.base}/v2/models/inst/instances",
                          json={"count": 2, "intra_op_thread_count": 2}, timeout=60)
        assert r.status_code == 200, r.text
        v = r.json()["versions"][0]
        assert (v["count"], v["intra_op_thread_count"]) == (2, 2), v
        assert metric(s, "sluice_model_instance_threads", model="inst", version="1") == 2
        before = len(answers)
        assert wait_until(lambda: len(answers) > before + 5, timeout=30)
        assert index_of(s)[("inst", "1")]["load_duration_ms"] == load_ms
    finally:
        stop.set()
        for t in threads:
            t.join()
        code = s.stop()
    assert code == 0, s.log()
    assert failures == [], failures[:5]
    assert loads_logged(s, "inst") == 1, "the model was reloaded:\n" + s.log()[-3000:]
    assert "instances changed in place" in s.log()
    assert len(answers) > 100
    for version, x, y in answers:
        assert version == 1
        assert_close(y, oracle.run(1, x), what="answer during instance changes")


def test_poll_mode_applies_an_instance_change_in_place(tmp_path):
    repo = tmp_path / "repo"
    data = tagged_model(4)
    config = tagged_config("polled", instance_group=[{"count": 1}])
    write_model(repo, "polled", 1, data, config)
    s = Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.1")
    try:
        load_ms = index_of(s)[("polled", "1")]["load_duration_ms"]
        (repo / "polled" / "config.json").write_text(
            json.dumps(dict(config, instance_group=[{"count": 3}])))
        assert wait_until(lambda: index_of(s)[("polled", "1")].get("instances") == 3, timeout=30), s.log()
        assert wait_until(lambda: instance_threads(s, "polled:1") == 3, timeout=30)
        assert index_of(s)[("polled", "1")]["load_duration_ms"] == load_ms
        # The served config says 3 now.
        cfg = requests.get(f"{s.base}/v2/models/polled/config", timeout=10).json()
        assert cfg["instance_group"][0]["count"] == 3
        # Another change (a batch size) is a real reload.
        (repo / "polled" / "config.json").write_text(
            json.dumps(dict(config, max_batch_size=4, instance_group=[{"count": 3}])))
        assert wait_until(lambda: loads_logged(s, "polled") == 2, timeout=30), s.log()
    finally:
        assert s.stop() == 0, s.log()


def test_instances_api_refuses_bad_requests_clearly(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", 1, tagged_model(1), tagged_config("m"))
    write_model(repo, "auto", 1, tagged_model(2), tagged_config(
        "auto", parameters={"sluice_autoscale_instances": {"string_value": "1:2"}}))
    write_model(repo, "badauto", 1, tagged_model(2), tagged_config(
        "badauto", parameters={"sluice_autoscale_instances": {"string_value": "3:1"}}))
    s = Server(repo)
    try:
        url = f"{s.base}/v2/models/m/instances"
        for body, text in [({"count": 0}, "between 1 and 256"),
                           ({"count": 9999}, "between 1 and 256"),
                           ({"intra_op_thread_count": 0}, "between 1 and 1024"),
                           ({}, "give \"count\""),
                           ({"count": "two"}, "instances request"),
                           ({"cnt": 2}, "unknown field")]:
            r = requests.post(url, json=body, timeout=10)
            assert r.status_code == 400, (body, r.text)
            assert text in r.json()["error"], (body, r.text)
        r = requests.post(f"{s.base}/v2/models/nope/instances", json={"count": 2}, timeout=10)
        assert r.status_code == 404, r.text
        # A model that scales itself keeps its bounds.
        r = requests.post(f"{s.base}/v2/models/auto/instances", json={"count": 3}, timeout=10)
        assert r.status_code == 400 and "between 1 and 2" in r.json()["error"], r.text
        assert instances(s, "auto")[0]["autoscale"] == {"min": 1, "max": 2}
        # A bad controller parameter fails the load with the reason.
        rows = [r for (n, _), r in index_of(s).items() if n == "badauto"]
        assert rows and all(r["state"] == "UNAVAILABLE" and "MIN:MAX" in r["reason"] for r in rows), rows
        # Changes work in mode none too (no reload needed).
        r = requests.post(url, json={"count": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["versions"][0]["count"] == 3, r.text
        stats = requests.get(f"{s.base}/v2/models/m/stats", timeout=10).json()["model_stats"][0]
        assert stats["instances"] == 3 and stats["intra_op_thread_count"] == 1, stats
    finally:
        assert s.stop() == 0, s.log()


def gated_autoscaled(repo, gates, name):
    gate = make_gated_model(repo, gates, name)
    cfg = repo / name / "config.pbtxt"
    cfg.write_text(cfg.read_text()
                   + 'parameters { key: "sluice_autoscale_instances" value: { string_value: "1:2" } }\n'
                   + 'parameters { key: "sluice_autoscale_down_window_s" value: { string_value: "60" } }\n')
    return gate


def test_the_budget_follows_the_load_from_one_model_to_the_other(tmp_path):
    """Models a and b (1 to 2 instances each) share 3 cores: each keeps its minimum,
    the third core goes to whichever has requests queued. Runs are held by execution
    gates, so what queues is exact. The down window (60 s) would keep a's second
    instance, but b's need takes it at once: hysteresis only keeps cores nobody needs."""
    repo, gates = tmp_path / "repo", tmp_path / "gates"
    ga = gated_autoscaled(repo, gates, "a")
    gb = gated_autoscaled(repo, gates, "b")
    s = Server(repo, "--test-execution-gates", str(gates), "--cpu-budget", "3",
               "--autoscale-interval-ms", "50")
    pending = []

    def send(model, n):
        for _ in range(n):
            t = threading.Thread(target=lambda: pending.append(requests.post(
                f"{s.base}/v2/models/{model}/infer", json=gated_body(), timeout=120)))
            t.start()
            pending.append(t)

    def counts():
        return (metric(s, "sluice_model_instances", model="a", version="1"),
                metric(s, "sluice_model_instances", model="b", version="1"))

    try:
        assert counts() == (1, 1)
        send("a", 6)
        # a's queue: its second instance starts at the next ticks; b keeps 1.
        assert wait_until(lambda: counts() == (2, 1), timeout=30), (counts(), s.log()[-3000:])
        assert wait_until(lambda: instance_threads(s, "a:1") == 2, timeout=30)
        # Let a's runs go; then b queues: the spare core moves to b.
        ga.open_for_good()
        assert wait_until(lambda: metric(s, "sluice_inference_queue_size", model="a") == 0, timeout=30)
        send("b", 6)
        assert wait_until(lambda: counts() == (1, 2), timeout=30), (counts(), s.log()[-3000:])
        # Never more than the budget, and the reason is logged.
        assert sum(counts()) <= 3
        log = ANSI.sub("", s.log())
        assert "autoscale: instances changed" in log
        assert re.search(r"need 2 \(.*queued.*\).*granted 2 of 1..=2", log), log[-3000:]
        gb.open_for_good()
        assert wait_until(lambda: all(not isinstance(p, threading.Thread) or not p.is_alive()
                                      for p in pending), timeout=60)
    finally:
        ga.open_for_good()
        gb.open_for_good()
        code = s.stop()
        for p in pending:
            if isinstance(p, threading.Thread):
                p.join()
        ga.close()
        gb.close()
    assert code == 0, s.log()
    answers = [p for p in pending if not isinstance(p, threading.Thread)]
    assert len(answers) == 12 and all(r.status_code == 200 for r in answers), [r.text for r in answers]
    for r in answers:
        assert r.json()["outputs"][0]["data"] == [2.0] * 4
