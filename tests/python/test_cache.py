"""The response cache end to end (`--cache-config local,size=N`, `response_cache {
enable: true }`): hits return exactly the uncached answer for every example model over
HTTP JSON, HTTP binary and gRPC with the unmodified tritonclient; what must miss misses;
a new version never answers from an old one's entries; the `sluice_cache` bypass
parameter and `--cache-config none`; the byte budget; single-flight held with an
execution gate; Triton's statistics and the metrics."""

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, GATED_WIDTH, Server, gated_body, make_gated_model, metric, wait_until
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference

CACHE = "local,size=10000000"


def enable_cache(model_dir):
    """Turns on `response_cache` in a copied model's config (pbtxt or JSON, or a new
    JSON config that auto-completes the rest from the ONNX file)."""
    pbtxt, cfg = model_dir / "config.pbtxt", model_dir / "config.json"
    if pbtxt.exists():
        pbtxt.write_text(pbtxt.read_text() + "\nresponse_cache { enable: true }\n")
    elif cfg.exists():
        config = json.loads(cfg.read_text())
        config["response_cache"] = {"enable": True}
        cfg.write_text(json.dumps(config))
    else:
        cfg.write_text(json.dumps({"response_cache": {"enable": True}}))


def cached_repository(root, names=tuple(MODELS)):
    for name in names:
        shutil.copytree(EXAMPLES / name, root / name)
        enable_cache(root / name)
    return root


def make_identity(root, name="ident"):
    """FP32 [-1, -1] -> the same, no batching: one byte string fits several shapes."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, str(root / name / "1" / "model.onnx"))
    (root / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "tract"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [-1, -1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [-1, -1] }]\n'
        'response_cache { enable: true }\n')


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = cached_repository(tmp_path_factory.mktemp("cached"))
    make_identity(root)
    s = Server(root, "--cache-config", CACHE, "--metrics-triton-compat", grpc=True)
    yield s
    assert s.stop() == 0, s.log()


def stats(s, model):
    body = requests.get(f"{s.base}/v2/models/{model}/stats", timeout=10).json()
    m = body["model_stats"][0]
    i = m["inference_stats"]
    return {"exec": m["execution_count"], "inferences": m["inference_count"],
            "success": i["success"]["count"], "hit": i["cache_hit"]["count"],
            "miss": i["cache_miss"]["count"], "hit_ns": i["cache_hit"]["ns"],
            "miss_ns": i["cache_miss"]["ns"]}


def infer(s, protocol, model, inputs, outputs=None, cache=None):
    """Runs one request with tritonclient; returns dict output name -> array."""
    params = {"sluice_cache": cache} if cache else None
    if protocol == "grpc":
        client, mod = grpcclient.InferenceServerClient(s.grpc_url), grpcclient
    else:
        client, mod = httpclient.InferenceServerClient(s.http_url), httpclient
    binary = protocol == "http-binary"
    try:
        ins = []
        for name, arr in inputs.items():
            i = mod.InferInput(name, list(arr.shape), V2_DTYPE[arr.dtype.type])
            if protocol == "grpc":
                i.set_data_from_numpy(arr)
            else:
                i.set_data_from_numpy(arr, binary_data=binary)
            ins.append(i)
        names = outputs if outputs or model not in MODELS else MODELS[model]["outputs"]
        outs = None
        if names:
            outs = [mod.InferRequestedOutput(n) if protocol == "grpc"
                    else mod.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = client.infer(model, ins, outputs=outs, parameters=params)
        response = result.get_response()
        got = response["outputs"] if isinstance(response, dict) else response.outputs
        listed = [o["name"] if isinstance(o, dict) else o.name for o in got]
        return {n: result.as_numpy(n) for n in listed}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
@pytest.mark.parametrize("model", list(MODELS))
def test_a_hit_is_exactly_the_uncached_answer(cached, model, protocol):
    seed = list(MODELS).index(model) * 10 + ["http-json", "http-binary", "grpc"].index(protocol)
    inputs = random_inputs(model, seed=100 + seed)
    before = stats(cached, model)
    uncached = infer(cached, protocol, model, inputs, cache="skip")
    miss = infer(cached, protocol, model, inputs)
    hit = infer(cached, protocol, model, inputs)
    after = stats(cached, model)
    expected = reference(model, inputs)
    assert set(hit) == set(MODELS[model]["outputs"])
    for name in MODELS[model]["outputs"]:
        assert np.array_equal(miss[name], uncached[name]), name
        assert np.array_equal(hit[name], uncached[name]), name
        assert hit[name].dtype == uncached[name].dtype
        assert_close(hit[name], expected[name], what=f"{model}/{name}")
    # Triton's semantics: the skip and the miss ran; the hit did not, yet succeeded.
    assert after["exec"] - before["exec"] == 2
    assert after["hit"] - before["hit"] == 1
    assert after["miss"] - before["miss"] == 1
    assert after["success"] - before["success"] == 3
    assert after["hit_ns"] > before["hit_ns"] and after["miss_ns"] > before["miss_ns"]


def test_shape_and_content_changes_miss(cached):
    data = np.arange(8, dtype=np.float32)
    before = stats(cached, "ident")
    a = infer(cached, "http-binary", "ident", {"x": data.reshape(2, 4)}, outputs=["y"])
    b = infer(cached, "http-binary", "ident", {"x": data.reshape(4, 2)}, outputs=["y"])
    c = infer(cached, "grpc", "ident", {"x": data.reshape(1, 8)}, outputs=["y"])
    d = infer(cached, "http-json", "ident", {"x": (data + 1).reshape(2, 4)}, outputs=["y"])
    after = stats(cached, "ident")
    assert a["y"].shape == (2, 4) and b["y"].shape == (4, 2) and c["y"].shape == (1, 8)
    assert np.array_equal(d["y"], (data + 1).reshape(2, 4))
    assert after["miss"] - before["miss"] == 4 and after["hit"] == before["hit"]
    assert after["exec"] - before["exec"] == 4
    # The same bytes and shape again: a hit, with its own shape.
    again = infer(cached, "grpc", "ident", {"x": data.reshape(4, 2)}, outputs=["y"])
    assert again["y"].shape == (4, 2) and np.array_equal(again["y"], data.reshape(4, 2))
    assert stats(cached, "ident")["hit"] == after["hit"] + 1


def test_requested_outputs_and_their_form_are_applied_to_the_cached_answer(cached):
    # The cache holds every output of the model; which ones are returned, and as JSON
    # or binary, is decided per request, so these share one entry.
    inputs = random_inputs("digits", rows=3, seed=7)
    before = stats(cached, "digits")
    full = infer(cached, "http-binary", "digits", inputs)
    label = infer(cached, "http-json", "digits", inputs, outputs=["label"])
    probs = infer(cached, "grpc", "digits", inputs, outputs=["probabilities"])
    after = stats(cached, "digits")
    assert set(label) == {"label"} and set(probs) == {"probabilities"}
    assert np.array_equal(label["label"], full["label"])
    assert np.array_equal(probs["probabilities"], full["probabilities"])
    assert after["exec"] - before["exec"] == 1 and after["hit"] - before["hit"] == 2


def test_bypass_parameter(cached):
    inputs = random_inputs("mlp", rows=1, seed=55)
    url = f"{cached.base}/v2/models/mlp/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                        "data": inputs["input"].ravel().tolist()}]}

    def post(mode=None):
        b = dict(body, parameters={"sluice_cache": mode}) if mode else body
        r = requests.post(url, json=b, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"]

    s0 = stats(cached, "mlp")
    first = post("no_store")           # miss, not stored
    assert post("no_store") == first   # miss again
    s1 = stats(cached, "mlp")
    assert s1["exec"] - s0["exec"] == 2 and s1["hit"] == s0["hit"]
    assert post() == first             # miss, stored
    assert post("skip") == first       # runs, no lookup
    assert post("no_store") == first   # hit
    assert post() == first             # hit
    assert post("refresh") == first    # runs, stores again
    s2 = stats(cached, "mlp")
    assert s2["exec"] - s1["exec"] == 3 and s2["hit"] - s1["hit"] == 2
    bad = requests.post(url, json=dict(body, parameters={"sluice_cache": "sometimes"}), timeout=30)
    assert bad.status_code == 400 and "sluice_cache" in bad.json()["error"]


def test_grpc_statistics_and_metrics_report_hits(cached):
    inputs = random_inputs("cnn", rows=1, seed=77)
    infer(cached, "grpc", "cnn", inputs)
    infer(cached, "grpc", "cnn", inputs)
    client = grpcclient.InferenceServerClient(cached.grpc_url)
    try:
        st = client.get_inference_statistics("cnn", as_json=True)["model_stats"][0]
    finally:
        client.close()
    http = stats(cached, "cnn")
    assert int(st["inference_stats"]["cache_hit"]["count"]) == http["hit"] >= 1
    assert int(st["inference_stats"]["cache_miss"]["count"]) == http["miss"] >= 1
    assert metric(cached, "nv_cache_num_hits_per_model", model="cnn", version="1") == http["hit"]
    assert metric(cached, "nv_cache_num_misses_per_model", model="cnn", version="1") == http["miss"]
    assert metric(cached, "sluice_model_cache_hits_total", model="cnn") == http["hit"]
    assert metric(cached, "sluice_cache_hits_total") >= http["hit"]
    assert metric(cached, "sluice_cache_inserts_total") >= 1
    assert 0 < metric(cached, "sluice_cache_bytes") <= 10_000_000
    assert metric(cached, "sluice_cache_budget_bytes") == 10_000_000
    assert metric(cached, "sluice_cache_entries") >= 1


def test_cache_off_by_flag_or_by_model(start_server, tmp_path):
    root = cached_repository(tmp_path / "r", ["mlp"])
    shutil.copytree(EXAMPLES / "digits", root / "digits")   # does not opt in
    off = start_server(root, "--cache-config", "none")
    on = start_server(root, "--cache-config", CACHE)
    for s, model, runs in [(off, "mlp", 3), (on, "digits", 3), (on, "mlp", 1)]:
        inputs = random_inputs(model, rows=1, seed=3)
        answers = [infer(s, "http-binary", model, inputs) for _ in range(3)]
        for a in answers[1:]:
            for k in a:
                assert np.array_equal(a[k], answers[0][k])
        st = stats(s, model)
        assert st["exec"] == runs, (model, st)
        assert st["hit"] == 3 - runs
    assert metric(off, "sluice_cache_hits_total") == 0
    assert "sluice_cache_bytes" not in requests.get(
        f"http://127.0.0.1:{off.metrics_port}/metrics", timeout=10).text


def test_bad_cache_config_fails_at_start():
    for bad in ["local", "local,size=0", "local,size=10,colour=red", "memcached,size=1"]:
        run = subprocess.run([str(BIN), "serve", "--model-repository", str(EXAMPLES),
                              "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                              "--cache-config", bad], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0, bad
        assert "--cache-config" in run.stderr, run.stderr


def test_a_new_version_never_answers_from_an_old_ones_entries(start_server, tmp_path):
    root = cached_repository(tmp_path / "r", ["mlp"])
    s = start_server(root, "--cache-config", CACHE, "--model-control-mode", "explicit",
                     "--load-model", "mlp")
    inputs = random_inputs("mlp", rows=2, seed=11)
    v1 = infer(s, "http-binary", "mlp", inputs)
    infer(s, "http-binary", "mlp", inputs)
    assert stats(s, "mlp")["hit"] == 1
    # Version 2 is the same file: the same answer, yet it must run, not hit v1's entry.
    shutil.copytree(root / "mlp" / "1", root / "mlp" / "2")
    r = requests.post(f"{s.base}/v2/repository/models/mlp/load", timeout=60)
    assert r.status_code == 200, r.text
    v2 = infer(s, "grpc", "mlp", inputs)
    st = requests.get(f"{s.base}/v2/models/mlp/versions/2/stats", timeout=10).json()["model_stats"][0]
    assert st["execution_count"] == 1
    assert st["inference_stats"]["cache_hit"]["count"] == 0
    assert st["inference_stats"]["cache_miss"]["count"] == 1
    # Two loads of one file agree to rounding (the engine's reduction order may differ
    # between loads on a busy machine), and match ONNX Runtime.
    assert_close(v2["probabilities"], v1["probabilities"], what="v2 vs v1")
    assert_close(v2["probabilities"], reference("mlp", inputs)["probabilities"], what="v2 vs onnxruntime")


def test_the_byte_budget_is_never_exceeded(start_server, tmp_path):
    root = cached_repository(tmp_path / "r", ["mlp"])
    budget = 40_000   # about ten MLP answers with their 3 KiB inputs
    s = start_server(root, "--cache-config", f"local,size={budget}")
    url = f"{s.base}/v2/models/mlp/infer"
    rng = np.random.default_rng(0)
    for i in range(60):
        x = rng.standard_normal(784).astype(np.float32)
        r = requests.post(url, json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                  "data": x.tolist()}]}, timeout=30)
        assert r.status_code == 200, r.text
        if i % 6 == 5:
            used = metric(s, "sluice_cache_bytes")
            assert 0 < used <= budget, (i, used)
    assert metric(s, "sluice_cache_evictions_total") > 0
    assert 0 < metric(s, "sluice_cache_entries") < 60


def test_sixteen_identical_requests_run_the_model_once(start_server, tmp_path):
    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "held")
    enable_cache(tmp_path / "held")
    s = start_server(tmp_path, "--cache-config", CACHE, "--test-execution-gates", str(gates))
    url = f"{s.base}/v2/models/held/infer"
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(requests.post, url, json=gated_body(2.0), timeout=60)
                       for _ in range(16)]
            # All sixteen are in the cache lookup while the first is held in the engine.
            assert wait_until(lambda: metric(s, "sluice_cache_pending") == 16
                              and metric(s, "sluice_inference_in_flight", model="held") == 1,
                              timeout=60), s.log()[-3000:]
            gate.release(1)
            answers = [f.result() for f in futures]
    finally:
        gate.open_for_good()
        gate.close()
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    for r in answers:
        assert r.json()["outputs"][0]["data"] == [3.0] * GATED_WIDTH
    st = stats(s, "held")
    assert st["exec"] == 1 and st["inferences"] == 1
    assert st["miss"] == 1 and st["hit"] == 15 and st["success"] == 16


def test_a_waiter_stops_at_its_deadline_and_a_failed_leader_does_not_fail_it(start_server, tmp_path):
    """Single-flight waiters keep their own deadline (HTTP 504, the usual timeout), and
    a leader whose run fails (here: its deadline passes in the queue) does not pass its
    error on: the waiter runs the model itself. Held with an execution gate."""
    gates = tmp_path / "gates"
    gate = make_gated_model(tmp_path, gates, "held")
    enable_cache(tmp_path / "held")
    s = start_server(tmp_path, "--cache-config", CACHE, "--test-execution-gates", str(gates))
    url = f"{s.base}/v2/models/held/infer"

    def body(value, timeout_us=None):
        b = gated_body(value)
        if timeout_us:
            b["parameters"] = {"timeout": timeout_us}
        return b

    try:
        with ThreadPoolExecutor(4) as pool:
            # 1. The leader runs (held in the engine); an identical waiter with a 300 ms
            # timeout gives up with the usual timeout error; the leader is not disturbed.
            leader = pool.submit(requests.post, url, json=body(1.0), timeout=60)
            assert wait_until(lambda: metric(s, "sluice_inference_in_flight", model="held") == 1, 60)
            waiter = requests.post(url, json=body(1.0, 300_000), timeout=60)
            assert waiter.status_code == 504, waiter.text
            assert "timed out" in waiter.json()["error"]
            assert not leader.done()
            gate.release(1)
            assert leader.result().status_code == 200
            assert leader.result().json()["outputs"][0]["data"] == [2.0] * GATED_WIDTH
            # 2. A blocker holds the only instance; the leader of value 5 queues behind it
            # with a 2 s timeout and an identical waiter (no timeout) joins its run.
            blocker = pool.submit(requests.post, url, json=body(9.0), timeout=60)
            assert wait_until(lambda: metric(s, "sluice_inference_in_flight", model="held") == 1, 60)
            doomed = pool.submit(requests.post, url, json=body(5.0, 2_000_000), timeout=60)
            joined = pool.submit(requests.post, url, json=body(5.0), timeout=60)
            assert wait_until(lambda: metric(s, "sluice_cache_pending") == 3, 60), s.log()[-2000:]
            assert not doomed.done(), "the leader timed out before its waiter joined (machine too slow)"
            # The leader's deadline passes in the queue: its own error, 504.
            assert doomed.result().status_code == 504, doomed.result().text
            assert not joined.done()
            # The waiter queued a run of its own: let the blocker and it through.
            assert wait_until(lambda: metric(s, "sluice_inference_queue_size", model="held") == 1, 60)
            gate.release(2)
            assert blocker.result().status_code == 200
            assert joined.result().status_code == 200, joined.result().text
            assert joined.result().json()["outputs"][0]["data"] == [6.0] * GATED_WIDTH
    finally:
        gate.open_for_good()
        gate.close()
    st = stats(s, "held")
    assert st["exec"] == 3, st   # leader 1, blocker, the waiter that took over


def rss_bytes(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def blast(port, requests_per_client, clients, width, seed):
    """Sends random [1, width] FP32 requests to `ident` as binary tensors over
    keep-alive connections; checks every answer (the identity) and returns the count."""
    import http.client

    header = json.dumps({"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32",
                                     "parameters": {"binary_data_size": width * 4}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()

    def client(c):
        rng = np.random.default_rng(seed * 1000 + c)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(requests_per_client):
                x = rng.standard_normal(width).astype(np.float32).tobytes()
                conn.request("POST", "/v2/models/ident/infer", body=header + x,
                             headers={"Inference-Header-Content-Length": str(len(header))})
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200, body[:300]
                assert body.endswith(x), "wrong answer"
        finally:
            conn.close()
        return requests_per_client

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)))


def test_memory_stays_flat_under_random_inputs_into_a_10_mb_cache(start_server, tmp_path):
    """Triton's L0_memory_growth idea for the cache: a stream of distinct requests keeps
    a full 10 MB cache evicting; after warm-up the server's resident memory grows by at
    most a few MB. 20 000 requests here (SLUICE_CACHE_GROWTH_REQUESTS to change it; the
    100 000-request run is in BENCHMARKS.md)."""
    make_identity(tmp_path)
    budget = 10_000_000
    s = start_server(tmp_path, "--cache-config", f"local,size={budget}")
    total = int(os.environ.get("SLUICE_CACHE_GROWTH_REQUESTS", "20000"))
    clients, width = 4, 1024          # ~8.5 KB per entry: ~1 200 entries fill the cache
    warm = 6000                       # five times the cache: it is full and churning
    blast(s.http_port, warm // clients, clients, width, seed=1)
    assert metric(s, "sluice_cache_evictions_total") > 0
    base = rss_bytes(s.proc.pid)
    peak = base
    sent, step = warm, (total - warm) // 4
    for round_ in range(4):
        sent += blast(s.http_port, step // clients, clients, width, seed=2 + round_)
        peak = max(peak, rss_bytes(s.proc.pid))
    growth = peak - base
    print(f"\nmemory growth: {sent} requests, RSS after warm-up {base / 1e6:.1f} MB, "
          f"peak after {peak / 1e6:.1f} MB, growth {growth / 1e6:.2f} MB")
    assert metric(s, "sluice_cache_bytes") <= budget
    assert growth <= 4_000_000, f"RSS grew {growth / 1e6:.2f} MB over {sent - warm} requests"
