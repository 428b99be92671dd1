"""Bad input over HTTP: each gets a clear error with the right status, and the server
keeps serving everything else. Broken models in the repository are reported, not fatal."""

import struct

import numpy as np
import pytest
import requests

from conftest import BROKEN, EXAMPLES
from models import assert_close, random_inputs, reference


def infer_url(server, model="mlp"):
    return f"{server.base}/v2/models/{model}/infer"


def mlp_body(rows=1, shape=None, datatype="FP32", data=None):
    x = np.zeros((rows, 784), dtype=np.float32)
    return {"inputs": [{"name": "input", "shape": shape or [rows, 784], "datatype": datatype,
                        "data": x.flatten().tolist() if data is None else data}]}


def assert_still_serving(server):
    x = random_inputs("mlp", rows=1, seed=42)
    r = requests.post(infer_url(server), json={"inputs": [
        {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x["input"].flatten().tolist()}]}, timeout=30)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)
    assert_close(got, reference("mlp", x)["probabilities"])


CASES = [
    ("invalid json", dict(data=b'{"inputs": [', headers={"Content-Type": "application/json"}), 400, "malformed request JSON"),
    ("missing input", dict(json={"inputs": []}), 400, "missing required input(s) ['input']"),
    ("unexpected input", dict(json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}), 400, "unexpected inference input 'x' for model 'mlp'"),
    ("wrong datatype", dict(json=mlp_body(datatype="FP64")), 400, "inference input 'input' data-type is 'FP64', but model 'mlp' expects 'FP32'"),
    ("unknown datatype", dict(json=mlp_body(datatype="FLOAT32")), 400, "unknown datatype"),
    ("count mismatch", dict(json=mlp_body(data=[0.0] * 783)), 400, "783 values given but the shape holds 784"),
    ("wrong shape", dict(json=mlp_body(shape=[1, 783], data=[0.0] * 783)), 400, "unexpected shape for input 'input' for model 'mlp'. Expected [-1,784], got [1,783]"),
    ("batch over max", dict(json=mlp_body(rows=33)), 400, "inference request batch-size must be <= 32 for 'mlp'"),
    ("unknown output", dict(json={**mlp_body(), "outputs": [{"name": "nope"}]}), 400, "unexpected inference output 'nope' for model 'mlp'"),
    ("wrong element", dict(json=mlp_body(data=["a"] * 784)), 400, "is not a valid FP32"),
]


@pytest.mark.parametrize("name,kwargs,status,message", CASES, ids=[c[0] for c in CASES])
def test_bad_requests_get_clear_errors(server, name, kwargs, status, message):
    r = requests.post(infer_url(server), timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert_still_serving(server)


def binary_request(header, tail):
    head = json_bytes(header)
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def json_bytes(obj):
    import json
    return json.dumps(obj).encode()


def test_binary_header_length_larger_than_body(server):
    header = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                          "parameters": {"binary_data_size": 784 * 4}}]}
    body, headers = binary_request(header, b"\0" * (784 * 4))
    headers["Inference-Header-Content-Length"] = str(len(body) + 10)
    r = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    # binary_data_size claiming more bytes than the body holds
    body, headers = binary_request(header, b"\0" * 100)
    r = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert r.status_code == 400 and "extends past the end" in r.json()["error"]
    # binary size not matching the shape
    header["inputs"][0]["parameters"]["binary_data_size"] = 100
    body, headers = binary_request(header, b"\0" * 100)
    r = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert r.status_code == 400 and "do not match shape" in r.json()["error"]
    assert_still_serving(server)


def test_binary_request_round_trip_by_hand(server):
    x = random_inputs("mlp", rows=2, seed=11)["input"]
    header = {"inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    body, headers = binary_request(header, x.tobytes())
    r = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    import json
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    got = np.frombuffer(r.content[n:], dtype=np.float32).reshape(2, 10)
    assert_close(got, reference("mlp", {"input": x})["probabilities"])


def test_body_over_the_limit_is_413(start_server):
    s = start_server(EXAMPLES, "--max-body-bytes", "2048")
    r = requests.post(infer_url(s), json=mlp_body(), timeout=30)  # ~ 4 KB of JSON > 2048
    assert r.status_code == 413, r.text
    assert "larger than the limit of 2048 bytes" in r.json()["error"]
    # Chunked body without Content-Length is limited too.
    r = requests.post(infer_url(s), data=iter([b'{"inputs": [' + b" " * 5000, b"]}"]), timeout=30)
    assert r.status_code == 413, r.text
    small = {"inputs": [{"name": "a", "shape": [4], "datatype": "INT32", "data": [1, 2, 3, 4]},
                        {"name": "b", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]},
                        {"name": "h", "shape": [4], "datatype": "FP16", "data": [1, 2, 3, 4]}]}
    r = requests.post(infer_url(s, "mixed"), json=small, timeout=30)
    assert r.status_code == 200, r.text


def test_broken_models_are_unavailable_and_the_rest_serve(start_server):
    s = start_server(BROKEN)
    index = {row["name"]: row for row in requests.post(f"{s.base}/v2/repository/index", timeout=10).json()}
    assert index["good"]["state"] == "READY"
    for name in ["corrupt", "badconfig", "mismatch"]:
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert index[name]["reason"], index[name]
    assert "config.pbtxt" in index["badconfig"]["reason"] and "line" in index["badconfig"]["reason"]
    assert "nope" in index["mismatch"]["reason"]
    assert "corrupt" in s.log() and "unavailable" in s.log()
    # Strict readiness (Triton's default): not ready while a model is unavailable; still live.
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 503
    assert requests.get(f"{s.base}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{s.base}/v2/models/corrupt/ready", timeout=10).status_code == 503
    r = requests.post(infer_url(s, "corrupt"), json={"inputs": []}, timeout=10)
    assert r.status_code == 503 and "has no available versions" in r.json()["error"]
    r = requests.post(infer_url(s, "good"), json={"inputs": [
        {"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4]


def test_non_strict_readiness(start_server):
    s = start_server(BROKEN, "--strict-readiness", "false")
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200
