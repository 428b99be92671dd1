"""The KServe v2 HTTP protocol end to end: the unmodified tritonclient.http and raw
requests against a running `sluice serve`, outputs checked against ONNX Runtime."""

import json

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, ROOT
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=server.http_url)
    yield c
    c.close()


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "sluice"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_configuration" in meta["extensions"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_metadata_config_and_readiness(client, name):
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, "1")
    meta = client.get_model_metadata(name)
    assert meta["name"] == name
    assert meta["versions"] == ["1"]
    spec = MODELS[name]
    assert [i["name"] for i in meta["inputs"]] == [i[0] for i in spec["inputs"]]
    assert [o["name"] for o in meta["outputs"]] == spec["outputs"]
    for (iname, dtype, shape), got in zip(spec["inputs"], meta["inputs"]):
        assert got["datatype"] == V2_DTYPE[dtype]
        assert got["shape"] == ([-1] if spec["batch"] else []) + shape
    assert client.get_model_metadata(name, "1") == meta
    config = client.get_model_config(name)
    assert config["name"] == name
    assert (config["max_batch_size"] > 0) == spec["batch"]
    assert [i["name"] for i in config["input"]] == [i[0] for i in spec["inputs"]]


def test_config_sources(client):
    # mlp: config.pbtxt, digits: config.json, cnn: auto-completed from the ONNX file.
    mlp = client.get_model_config("mlp")
    assert mlp["max_batch_size"] == 32
    assert mlp["instance_group"][0]["count"] == 2
    assert mlp["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert mlp["parameters"]["intra_op_thread_count"]["string_value"] == "1"
    cnn = client.get_model_config("cnn")
    assert not (EXAMPLES / "cnn" / "config.pbtxt").exists()
    assert cnn["max_batch_size"] == 4  # Triton's default-max-batch-size
    assert cnn["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
    assert cnn["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert client.get_model_config("digits")["output"][0]["data_type"] == "TYPE_INT64"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_infer_matches_onnxruntime(client, name, binary):
    for seed, rows in [(1, 1), (2, 3)]:
        inputs = random_inputs(name, rows=rows, seed=seed)
        expected = reference(name, inputs)
        infer_inputs = []
        for iname, arr in inputs.items():
            i = httpclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
            i.set_data_from_numpy(arr, binary_data=binary)
            infer_inputs.append(i)
        outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in MODELS[name]["outputs"]]
        result = client.infer(name, infer_inputs, outputs=outputs, request_id=f"r{seed}")
        assert result.get_response()["id"] == f"r{seed}"
        assert result.get_response()["model_version"] == "1"
        for oname in MODELS[name]["outputs"]:
            assert_close(result.as_numpy(oname), expected[oname], what=f"{name}.{oname}")


def test_infer_without_named_outputs_returns_all_as_binary(client):
    # tritonclient's default: no outputs named -> binary_data_output=true for all.
    x = random_inputs("mixed", seed=5)
    ins = []
    for iname, arr in x.items():
        i = httpclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
        i.set_data_from_numpy(arr)
        ins.append(i)
    result = client.infer("mixed", ins)
    expected = reference("mixed", x)
    for oname in MODELS["mixed"]["outputs"]:
        assert_close(result.as_numpy(oname), expected[oname], what=oname)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_nested_json_output_subset_and_version_route(server):
    x = random_inputs("mlp", rows=2, seed=9)["input"]
    body = {
        "id": "nested-1",
        "inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    r = requests.post(f"{server.base}/v2/models/mlp/versions/1/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "nested-1"
    assert out["model_name"] == "mlp" and out["model_version"] == "1"
    (o,) = out["outputs"]
    assert o["shape"] == [2, 10] and o["datatype"] == "FP32"
    assert_close(np.array(o["data"], dtype=np.float32).reshape(2, 10), reference("mlp", {"input": x})["probabilities"])
    # Asking for one of two outputs returns only that one.
    d = random_inputs("digits", rows=2, seed=3)["input"]
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": d.flatten().tolist()}],
            "outputs": [{"name": "label"}]}
    out = requests.post(f"{server.base}/v2/models/digits/infer", json=body, timeout=30).json()
    assert [o["name"] for o in out["outputs"]] == ["label"]
    assert out["outputs"][0]["data"] == reference("digits", {"input": d})["label"].tolist()


def test_digits_accuracy_through_the_server_equals_scikit_learn(client):
    data = np.load(ROOT / "examples" / "data" / "digits_test.npz")
    expected = json.loads((ROOT / "examples" / "data" / "digits_expected.json").read_text())
    x, y = data["x"], data["y"]
    predicted = []
    for start in range(0, len(x), 64):
        chunk = x[start:start + 64]
        i = httpclient.InferInput("input", list(chunk.shape), "FP32")
        i.set_data_from_numpy(chunk)
        predicted.append(client.infer("digits", [i]).as_numpy("label"))
    predicted = np.concatenate(predicted)
    assert len(predicted) == expected["n"]
    accuracy = float((predicted == y).mean())
    assert accuracy == pytest.approx(expected["accuracy"], abs=1e-12)
    assert accuracy > 0.95


def test_unknown_model_and_version_are_404(client, server):
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("nope")
    r = requests.get(f"{server.base}/v2/models/mlp/versions/7", timeout=10)
    assert r.status_code == 404 and "Request for unknown model: 'mlp' version 7 is not found" == r.json()["error"]
    r = requests.post(f"{server.base}/v2/models/mlp/versions/7/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404
    r = requests.get(f"{server.base}/v2/models/mlp/versions/x", timeout=10)
    assert r.status_code == 400 and "not a positive integer" in r.json()["error"]
    r = requests.get(f"{server.base}/v2/nothing/here", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_repository_index(server):
    r = requests.post(f"{server.base}/v2/repository/index", timeout=10)
    assert r.status_code == 200
    rows = {row["name"]: row for row in r.json()}
    assert set(rows) == set(MODELS)
    assert all(row["state"] == "READY" and row["version"] == "1" for row in rows.values())
    r = requests.post(f"{server.base}/v2/repository/index", json={"ready": True}, timeout=10)
    assert len(r.json()) == len(MODELS)
