"""Model lifecycle end to end: control modes, the repository API through the
unmodified tritonclient (HTTP and gRPC), hot swap under load, poll mode, warmup,
the memory budget with eviction, and bad loads.

Every model here is generated: `tagged` models compute y = x @ W + b where W and b
come from a seed, so each version's outputs differ and are checked against ONNX
Runtime running that version's own file."""

import base64
import json
import shutil
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, Server, wait_until
from models import assert_close, random_inputs, reference

WIDTH = 16


def tagged_model(seed, width=WIDTH, hidden=None):
    """y = x @ W + b (batching, FP32); with `hidden`, a wider W1 first so the file
    (and the memory it takes) is larger."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev, n = [], [], "x", width
    if hidden:
        w1 = rng.standard_normal((width, hidden)).astype(np.float32) / np.sqrt(width)
        inits.append(helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.flatten()))
        nodes.append(helper.make_node("MatMul", ["x", "w1"], ["h"]))
        prev, n = "h", hidden
    w = rng.standard_normal((n, width)).astype(np.float32) / np.sqrt(n)
    b = np.full(width, float(seed), np.float32)
    inits += [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
              helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)]
    nodes += [helper.make_node("MatMul", [prev, "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "tagged",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def tagged_config(name, **extra):
    cfg = {"name": name, "backend": "tract", "max_batch_size": 8,
           "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
           "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [WIDTH]}]}
    cfg.update(extra)
    return cfg


def write_model(root, name, version, data, config=None):
    (root / name / str(version)).mkdir(parents=True, exist_ok=True)
    tmp = root / name / str(version) / "model.onnx.tmp"
    tmp.write_bytes(data)
    tmp.rename(root / name / str(version) / "model.onnx")  # appears whole
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))


class Oracle:
    """ONNX Runtime for each version's file."""

    def __init__(self):
        self.sessions = {}

    def add(self, key, data):
        self.sessions[key] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(self, key, x):
        return self.sessions[key].run(["y"], {"x": x})[0]


def http_infer(client, name, x, version=""):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    r = client.infer(name, [inp], model_version=version)
    return int(r.get_response()["model_version"]), r.as_numpy("y")


def grpc_infer(client, name, x, version=""):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(name, [inp], model_version=version)
    return int(r.get_response().model_version), r.as_numpy("y")


def index_of(server):
    return {(r["name"], r.get("version")): r
            for r in requests.post(server.base + "/v2/repository/index", timeout=10).json()}


def test_explicit_mode_load_unload_and_index_with_tritonclient(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "repo")
    s = Server(tmp_path / "repo", "--model-control-mode", "explicit", "--load-model", "mlp")
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["mlp"]["state"] == "READY" and index["mlp"]["version"] == "1"
        assert index["mlp"]["memory_bytes"] > 0 and index["mlp"]["load_duration_ms"] > 0
        assert index["cnn"]["state"] == "UNAVAILABLE" and index["cnn"]["reason"] == "not loaded"
        assert not http.is_model_ready("cnn")

        http.load_model("cnn")
        assert http.is_model_ready("cnn") and grpc.is_model_ready("cnn")
        x = random_inputs("cnn", rows=2)
        inp = httpclient.InferInput("image", list(x["image"].shape), "FP32")
        inp.set_data_from_numpy(x["image"])
        assert_close(http.infer("cnn", [inp]).as_numpy("logits"), reference("cnn", x)["logits"], what="cnn")

        grpc.load_model("digits")
        grpc_index = {m.name: m for m in grpc.get_model_repository_index().models}
        assert grpc_index["digits"].state == "READY" and grpc_index["digits"].version == "1"

        grpc.unload_model("cnn")
        assert not http.is_model_ready("cnn")
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["cnn"]["state"] == "UNAVAILABLE" and index["cnn"]["reason"] == "unloaded"
        with pytest.raises(InferenceServerException) as e:
            http.infer("cnn", [inp])
        assert "unloaded" in str(e.value)
        http.unload_model("mlp", unload_dependents=True)
        assert not grpc.is_model_ready("mlp")
        # Reload after unload; the others never stopped serving.
        http.load_model("mlp")
        assert http.is_model_ready("mlp") and http.is_model_ready("digits")
        ready = http.get_model_repository_index(query_params=None)
        assert {m["name"] for m in ready if m["state"] == "READY"} == {"digits", "mlp"}
        r = requests.post(s.base + "/v2/repository/index", json={"ready": True}, timeout=10).json()
        assert {m["name"] for m in r} == {"digits", "mlp"}
    finally:
        assert s.stop() == 0, s.log()


def test_load_with_config_override_and_files(tmp_path):
    (tmp_path / "repo").mkdir()
    s = Server(tmp_path / "repo", "--model-control-mode", "explicit")
    oracle = Oracle()
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        x = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)
        # HTTP: files travel base64 in `file:<version>/<name>`, with the config.
        v7 = tagged_model(7)
        oracle.add(7, v7)
        http.load_model("uploaded", config=json.dumps(tagged_config("uploaded")),
                        files={"file:7/model.onnx": v7})
        version, y = http_infer(http, "uploaded", x)
        assert version == 7
        assert_close(y, oracle.run(7, x), what="uploaded v7")
        # gRPC: the same through bytes parameters; a new version replaces it.
        v8 = tagged_model(8)
        oracle.add(8, v8)
        grpc.load_model("uploaded", config=json.dumps(tagged_config("uploaded")),
                        files={"file:8/model.onnx": v8})
        version, y = grpc_infer(grpc, "uploaded", x)
        assert version == 8
        assert_close(y, oracle.run(8, x), what="uploaded v8")
        # A config override of a model on disk: max_batch_size changes what metadata says.
        write_model(tmp_path / "repo", "disk", 1, tagged_model(1), tagged_config("disk"))
        http.load_model("disk")
        assert http.get_model_config("disk")["max_batch_size"] == 8
        http.load_model("disk", config=json.dumps(tagged_config("disk", max_batch_size=2)))
        assert http.get_model_config("disk")["max_batch_size"] == 2
        # Files without a config are refused, as Triton does.
        with pytest.raises(InferenceServerException) as e:
            requests_load(s, "uploaded", {"file:9/model.onnx": base64.b64encode(v8).decode()})
        assert "config" in str(e.value)
    finally:
        assert s.stop() == 0, s.log()


def requests_load(server, name, parameters, status=None):
    """A raw HTTP load; raises InferenceServerException with the body on an error."""
    r = requests.post(f"{server.base}/v2/repository/models/{name}/load",
                      json={"parameters": parameters}, timeout=60)
    if status is not None:
        assert r.status_code == status, r.text
    if r.status_code != 200:
        raise InferenceServerException(r.json()["error"])
    return r


def test_bad_loads_get_clear_errors_and_affect_nothing_else(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "mlp", repo / "mlp")
    write_model(repo, "corrupt", 1, b"this is not an onnx file", tagged_config("corrupt"))
    write_model(repo, "badcfg", 1, tagged_model(1))
    (repo / "badcfg" / "config.json").write_text('{"max_batch_size": "eight"}')
    write_model(repo, "unknownfield", 1, tagged_model(1))
    (repo / "unknownfield" / "config.json").write_text('{"max_batch_sise": 8}')
    (tmp_path / "outside").mkdir()
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        x = random_inputs("mlp", rows=1)
        inp = httpclient.InferInput("input", list(x["input"].shape), "FP32")
        inp.set_data_from_numpy(x["input"])
        expected = reference("mlp", x)["probabilities"]

        def still_serving():
            assert_close(http.infer("mlp", [inp]).as_numpy("probabilities"), expected, what="mlp")

        # Path traversal and absolute paths: 400 / INVALID_ARGUMENT.
        for name in ["..%2Foutside", "%2E%2E", "%2Fetc", ".hidden"]:
            r = requests.post(f"{s.base}/v2/repository/models/{name}/load", timeout=10)
            assert r.status_code == 400, (name, r.text)
            assert "not a valid model name" in r.json()["error"]
        for name in ["../outside", "/etc", "a/b"]:
            with pytest.raises(InferenceServerException) as e:
                grpc.load_model(name)
            assert "INVALID_ARGUMENT" in str(e.value.status()), e.value
        # Unknown model: 404 / NOT_FOUND, and it does not appear in the index.
        r = requests.post(f"{s.base}/v2/repository/models/nope/load", timeout=10)
        assert r.status_code == 404 and "no model 'nope'" in r.json()["error"]
        with pytest.raises(InferenceServerException) as e:
            grpc.load_model("nope")
        assert "NOT_FOUND" in str(e.value.status())
        assert ("nope", None) not in index_of(s)
        # A corrupt file: the load fails with the engine's reason, shown in the index.
        with pytest.raises(InferenceServerException) as e:
            http.load_model("corrupt")
        assert "corrupt" in str(e.value)
        row = index_of(s)[("corrupt", "1")]
        assert row["state"] == "UNAVAILABLE" and row["reason"]
        # Configs with a wrong type or an unknown field.
        with pytest.raises(InferenceServerException) as e:
            http.load_model("badcfg")
        assert "config.json" in str(e.value) and 'invalid type: string "eight"' in str(e.value)
        with pytest.raises(InferenceServerException) as e:
            grpc.load_model("unknownfield")
        assert "max_batch_sise" in str(e.value)
        with pytest.raises(InferenceServerException) as e:
            http.load_model("mlp", config='{"input": [{"name": "x", "data_type": "TYPE_FLOAT", "dims": [1]}]}')
        assert "TYPE_FLOAT" in str(e.value)
        # Bad parameters.
        for params, expect in [({"file:../x": "AAAA", "config": "{}"}, "relative path"),
                               ({"file:1/model.onnx": "***", "config": "{}"}, "base64"),
                               ({"colour": "blue"}, "unknown load parameter")]:
            with pytest.raises(InferenceServerException) as e:
                requests_load(s, "mlp", params, status=400)
            assert expect in str(e.value), params
        # mlp kept serving through all of it, on its original version.
        still_serving()
        assert http.is_model_ready("mlp")
    finally:
        assert s.stop() == 0, s.log()


def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    s = Server(EXAMPLES)
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        with pytest.raises(InferenceServerException) as e:
            http.load_model("mlp")
        assert "explicit" in str(e.value)
        with pytest.raises(InferenceServerException) as e:
            grpcclient.InferenceServerClient(s.grpc_url).unload_model("mlp")
        assert "explicit" in str(e.value)
        assert http.is_model_ready("mlp")
    finally:
        assert s.stop() == 0, s.log()


def test_versions_policy_and_routes(tmp_path):
    repo = tmp_path / "repo"
    oracle = Oracle()
    for v in (1, 2, 3):
        data = tagged_model(v)
        oracle.add(v, data)
        write_model(repo, "multi", v, data)
    (repo / "multi" / "config.json").write_text(json.dumps(
        tagged_config("multi", version_policy={"specific": {"versions": [1, 3]}})))
    s = Server(repo)
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        x = np.ones((1, WIDTH), np.float32)
        assert http.get_model_metadata("multi")["versions"] == ["1", "3"]
        version, y = http_infer(http, "multi", x)  # no version: the highest ready one
        assert version == 3
        assert_close(y, oracle.run(3, x), what="v3")
        version, y = http_infer(http, "multi", x, "1")
        assert version == 1
        assert_close(y, oracle.run(1, x), what="v1")
        with pytest.raises(InferenceServerException) as e:
            http_infer(http, "multi", x, "2")
        assert "'multi' version 2 is not found" in str(e.value)
    finally:
        assert s.stop() == 0, s.log()


def test_hot_swap_under_load_has_zero_failed_requests(tmp_path):
    """Ten replacements of a model's version while HTTP and gRPC clients send
    requests: none fails, and every answer is exactly what ONNX Runtime computes
    with the file of the version that answered."""
    repo = tmp_path / "repo"
    oracle = Oracle()
    warmup = [{"name": "zeros", "batch_size": 2, "count": 2,
               "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "zero_data": True}}}]
    config = tagged_config("swap", model_warmup=warmup,
                           dynamic_batching={"max_queue_delay_microseconds": 500})
    data = tagged_model(1)
    oracle.add(1, data)
    write_model(repo, "swap", 1, data, config)
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "swap")
    stop = threading.Event()
    answers, failures = [], []
    lock = threading.Lock()

    def client(kind, seed):
        rng = np.random.default_rng(seed)
        c = (httpclient.InferenceServerClient(s.http_url) if kind == "http"
             else grpcclient.InferenceServerClient(s.grpc_url))
        infer = http_infer if kind == "http" else grpc_infer
        while not stop.is_set():
            x = rng.standard_normal((int(rng.integers(1, 4)), WIDTH)).astype(np.float32)
            try:
                version, y = infer(c, "swap", x)
                with lock:
                    answers.append((version, x, y))
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(k, i)) for i, k in enumerate(["http", "http", "grpc", "grpc"])]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answers) > 20, timeout=30)
        http = httpclient.InferenceServerClient(s.http_url, connection_timeout=120, network_timeout=120)
        for v in range(2, 12):
            data = tagged_model(v)
            oracle.add(v, data)
            write_model(repo, "swap", v, data)
            before = len(answers)
            http.load_model("swap")
            assert index_of(s)[("swap", str(v))]["state"] == "READY"
            assert wait_until(lambda b=before: len(answers) > b + 10, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
        code = s.stop()
    assert code == 0, s.log()
    assert failures == [], failures[:5]
    seen = set()
    for version, x, y in answers:
        seen.add(version)
        assert_close(y, oracle.run(version, x), what=f"answer from version {version}")
    # Answers came from the first and the last version and from swaps in between.
    assert {1, 11} <= seen and len(seen) >= 6, sorted(seen)


def test_poll_mode_applies_changes_and_keeps_last_good_version(tmp_path):
    repo = tmp_path / "repo"
    oracle = Oracle()
    data = tagged_model(1)
    oracle.add(1, data)
    write_model(repo, "polled", 1, data, tagged_config("polled"))
    s = Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        x = np.ones((2, WIDTH), np.float32)
        assert http_infer(http, "polled", x)[0] == 1
        # A new version appears: it is loaded and takes the traffic.
        data = tagged_model(2)
        oracle.add(2, data)
        write_model(repo, "polled", 2, data)
        assert wait_until(lambda: http_infer(http, "polled", x)[0] == 2, timeout=30), s.log()
        version, y = http_infer(http, "polled", x)
        assert_close(y, oracle.run(2, x), what="polled v2")
        # A broken version 3: the load fails, version 2 keeps serving.
        write_model(repo, "polled", 3, b"broken")
        assert wait_until(lambda: "keeps serving its previous versions" in s.log(), timeout=30), s.log()
        version, y = http_infer(http, "polled", x)
        assert version == 2
        assert_close(y, oracle.run(2, x), what="polled v2 after a broken v3")
        # A broken config: the reload fails with the reason, version 2 keeps serving.
        shutil.rmtree(repo / "polled" / "3")
        (repo / "polled" / "config.json").write_text('{"max_batch_size": "eight"}')
        assert wait_until(lambda: 'invalid type: string \\"eight\\"' in s.log()
                          or 'invalid type: string "eight"' in s.log(), timeout=30), s.log()
        assert http_infer(http, "polled", x)[0] == 2
        (repo / "polled" / "config.json").write_text(json.dumps(tagged_config("polled")))
        # A new model folder is picked up; a removed one is unloaded.
        write_model(repo, "added", 1, tagged_model(5), tagged_config("added"))
        assert wait_until(lambda: http.is_model_ready("added"), timeout=30), s.log()
        shutil.rmtree(repo / "added")
        assert wait_until(lambda: ("added", None) not in index_of(s)
                          and ("added", "1") not in index_of(s), timeout=30), s.log()
        with pytest.raises(InferenceServerException):
            http.is_model_ready("added") or http_infer(http, "added", x)
    finally:
        assert s.stop() == 0, s.log()


def test_warmup_runs_before_ready_and_bad_warmup_fails_the_load(tmp_path):
    repo = tmp_path / "repo"
    sample = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
    warmup = [
        {"name": "zeros", "batch_size": 1, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "zero_data": True}}},
        {"name": "random", "batch_size": 4, "count": 3, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "random_data": True}}},
        {"name": "file", "batch_size": 2, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "input_data_file": "x.bin"}}},
    ]
    write_model(repo, "warm", 1, tagged_model(1), tagged_config("warm", model_warmup=warmup))
    (repo / "warm" / "warmup").mkdir()
    (repo / "warm" / "warmup" / "x.bin").write_bytes(sample.tobytes())
    bad = [{"name": "short", "batch_size": 2, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "input_data_file": "short.bin"}}}]
    write_model(repo, "cold", 1, tagged_model(2), tagged_config("cold", model_warmup=bad))
    (repo / "cold" / "warmup").mkdir()
    (repo / "cold" / "warmup" / "short.bin").write_bytes(b"\0" * 12)
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "*", "--strict-readiness", "false")
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        assert http.is_model_ready("warm")
        index = index_of(s)
        assert index[("warm", "1")]["state"] == "READY"
        assert index[("cold", "1")]["state"] == "UNAVAILABLE"
        assert "model_warmup 'short'" in index[("cold", "1")]["reason"]
        assert "short.bin has 12 bytes" in index[("cold", "1")]["reason"]
        # Warmup requests went through the pool: its statistics count them when served.
        oracle = Oracle()
        oracle.add(1, tagged_model(1))
        assert_close(http_infer(http, "warm", sample)[1], oracle.run(1, sample), what="warm")
    finally:
        assert s.stop() == 0, s.log()


def test_request_waits_for_a_model_that_is_loading(tmp_path):
    """A request that arrives while its model loads waits and is answered; one whose
    timeout passes first gets 504. The load is held open deterministically: its warmup
    data file is a named pipe that the test writes only after both requests are sent."""
    import os
    repo = tmp_path / "repo"
    warmup = [{"name": "gated", "batch_size": 1,
               "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [WIDTH], "input_data_file": "gate.bin"}}}]
    data = tagged_model(3)
    write_model(repo, "gated", 1, data, tagged_config("gated", model_warmup=warmup))
    (repo / "gated" / "warmup").mkdir()
    gate = repo / "gated" / "warmup" / "gate.bin"
    os.mkfifo(gate)
    s = Server(repo, "--model-control-mode", "explicit")
    try:
        http = httpclient.InferenceServerClient(s.http_url, network_timeout=300)
        loader = threading.Thread(target=lambda: http.load_model("gated"))
        loader.start()
        assert wait_until(lambda: index_of(s).get(("gated", None), {}).get("state") == "LOADING", timeout=60)
        x = np.ones((1, WIDTH), np.float32)
        body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": x.flatten().tolist()}]}
        # Bounded by its timeout (µs): the load cannot finish before the gate opens.
        r = requests.post(f"{s.base}/v2/models/gated/infer",
                          json={**body, "parameters": {"timeout": 50_000}}, timeout=60)
        assert r.status_code == 504, r.text
        assert "still loading" in r.json()["error"]
        # With a long timeout (and without one) it waits for the load and is answered.
        answer = {}
        waiter = threading.Thread(target=lambda: answer.update(
            r=requests.post(f"{s.base}/v2/models/gated/infer",
                            json={**body, "parameters": {"timeout": 300_000_000}}, timeout=300)))
        waiter.start()
        time.sleep(0.3)  # let the request reach the server (not an assertion on timing)
        assert not answer
        assert index_of(s)[("gated", None)]["state"] == "LOADING"
        gate.write_bytes(np.zeros(WIDTH, np.float32).tobytes())  # opens the gate
        loader.join()
        waiter.join()
        assert answer["r"].status_code == 200, answer["r"].text
        out = answer["r"].json()
        assert out["model_version"] == "1"
        oracle = Oracle()
        oracle.add(1, data)
        y = np.array(out["outputs"][0]["data"], np.float32).reshape(1, WIDTH)
        assert_close(y, oracle.run(1, x), what="gated")
    finally:
        if not gate.exists() or loader.is_alive():
            try:
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
        assert s.stop() == 0, s.log()


def test_memory_budget_evicts_idle_models_and_requests_wait_for_reload(tmp_path):
    """Three models, a budget that holds two, concurrent clients on all three: no
    request fails, answers match ONNX Runtime, models get evicted and reloaded, and
    once traffic stops the loaded models fit the budget."""
    repo = tmp_path / "repo"
    oracle = Oracle()
    names = ["m1", "m2", "m3"]
    for i, name in enumerate(names, start=1):
        data = tagged_model(10 + i, hidden=65536)  # 8 MiB of weights each
        oracle.add(name, data)
        write_model(repo, name, 1, data, tagged_config(name))
    # Measure the three as a server loads them (the first load in a process also
    # carries one-time costs), then set a budget that any two fit and three do not.
    probe = Server(repo, "--model-control-mode", "explicit", "--load-model", "*")
    try:
        sizes = [r["memory_bytes"] for r in index_of(probe).values() if r["state"] == "READY"]
    finally:
        probe.stop()
    assert len(sizes) == 3
    budget = sum(sizes) - min(sizes) // 2
    s = Server(repo, "--model-memory-budget", str(budget))
    stop = threading.Event()
    failures, answers = [], []
    lock = threading.Lock()

    def client(seed):
        rng = np.random.default_rng(seed)
        c = httpclient.InferenceServerClient(s.http_url, network_timeout=300)
        while not stop.is_set():
            name = names[int(rng.integers(0, 3))]
            x = rng.standard_normal((2, WIDTH)).astype(np.float32)
            try:
                _, y = http_infer(c, name, x)
                with lock:
                    answers.append((name, x, y))
            except Exception as e:  # noqa: BLE001
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        # Both conditions, however slow the machine: six evictions and enough answers to check.
        assert wait_until(lambda: s.log().count("evicting the least recently used") >= 6 and len(answers) > 50,
                          timeout=300), s.log()[-3000:]
        stop.set()
        for t in threads:
            t.join()

        def settled():
            ready = [r for r in index_of(s).values() if r["state"] == "READY"]
            return len(ready) <= 2 and sum(r["memory_bytes"] for r in ready) <= budget
        # An eviction that found every other model busy is retried when requests finish.
        http = httpclient.InferenceServerClient(s.http_url)
        http_infer(http, "m1", np.zeros((1, WIDTH), np.float32))
        assert wait_until(settled, timeout=30), index_of(s)
        evicted = [r for r in index_of(s).values() if r["state"] == "UNAVAILABLE"]
        assert evicted and all("memory budget" in r["reason"] for r in evicted)
        assert all(http.is_model_ready(n) for n in names)  # evicted models are loadable
    finally:
        stop.set()
        code = s.stop()
    assert code == 0, s.log()
    assert failures == [], failures[:5]
    assert len(answers) > 50
    for name, x, y in answers:
        assert_close(y, oracle.run(name, x), rtol=1e-3, what=name)
