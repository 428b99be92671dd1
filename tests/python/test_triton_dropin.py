"""Triton drop-in details over HTTP, end to end against a running `sluice serve`, with
the unmodified tritonclient and plain `requests`; every output is checked against
ONNX Runtime running the same model file.

Covered: compressed requests and responses (gzip, deflate), a zip bomb refused with
413 while the server's memory stays flat, Triton's raw binary request
(`Inference-Header-Content-Length: 0`), `load_model(files=...)` above axum's old 2 MiB
cap and a load body over `--max-body-bytes` (JSON 413), `reshape` (inputs, outputs,
a scalar per row, batching), Triton's own `densenet_onnx` config verbatim, which
outputs are binary when outputs are listed, Triton's error texts, and the JSON
nesting limit."""

import gzip
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, Server
from models import assert_close, random_inputs, reference

NP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32,
      "INT64": np.int64, "BOOL": np.bool_}

# Triton's quick-start repository, verbatim:
# triton-inference-server/server docs/examples/model_repository/densenet_onnx/config.pbtxt
DENSENET_CONFIG = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

# A batching model whose tensors are reshaped both ways: the client sends x [N,2,6] and
# s [N,1], the model takes x [N,12] and s [N] (a scalar per row), and its y [N,8] is
# returned as [N,2,4].
RESHAPED_CONFIG = """name: "{name}"
{backend}
max_batch_size: 8
input [
  {{ name: "x" data_type: TYPE_FP32 dims: [ 2, 6 ] reshape {{ shape: [ 12 ] }} }},
  {{ name: "s" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2, 4 ] reshape {{ shape: [ 8 ] }} }} ]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
"""


def finish(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def densenet_like():
    """data_0 [1,3,224,224] -> GlobalAveragePool -> 1x1 Conv (random weights) -> fc6_1 [1,1000,1,1]."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((1000, 3, 1, 1)).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
         helper.make_node("Conv", ["pooled", "w", "b"], ["fc6_1"])],
        "densenet_like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)])
    return finish(graph)


def reshaped_model():
    """y [N,8] = x [N,12] @ W + s [N] (one scalar per row, broadcast)."""
    w = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Unsqueeze", ["s", "axis"], ["s1"]),
         helper.make_node("Add", ["m", "s1"], ["y"])],
        "reshaped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 12]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
         helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    return finish(graph)


def big_model(width=1024, seed=5):
    """y = x @ W with a width x width FP32 initializer (4 MiB at 1024): a file well over 2 MiB."""
    w = np.random.default_rng(seed).standard_normal((width, width)).astype(np.float32) / np.sqrt(width)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())])
    return finish(graph)


def big_config(name, width=1024):
    return {"name": name, "backend": "tract", "max_batch_size": 4,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [width]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [width]}]}


def run_onnx(model_bytes, feeds):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def write(repo, name, model_bytes, config_text):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(model_bytes)
    (repo / name / "config.pbtxt").write_text(config_text)


SERVED = ["mlp", "mixed", "reshaped", "reshaped_tract", "densenet_onnx"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dropin")
    for name in ["mlp", "mixed"]:
        shutil.copytree(EXAMPLES / name, repo / name)
    shutil.copytree(EXAMPLES / "mlp", repo / "idle")
    cfg = (repo / "idle" / "config.pbtxt").read_text().replace('name: "mlp"', 'name: "idle"')
    (repo / "idle" / "config.pbtxt").write_text(cfg)
    write(repo, "reshaped", reshaped_model(), RESHAPED_CONFIG.format(name="reshaped", backend=""))
    write(repo, "reshaped_tract", reshaped_model(),
          RESHAPED_CONFIG.format(name="reshaped_tract", backend='backend: "tract"'))
    write(repo, "densenet_onnx", densenet_like(), DENSENET_CONFIG)
    (repo / "densenet_onnx" / "densenet_labels.txt").write_text("".join(f"CLASS_{i}\n" for i in range(1000)))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", ",".join(SERVED))
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=server.http_url)
    yield c
    c.close()


def http_inputs(arrays, binary=True):
    out = []
    for name, arr in arrays.items():
        dt = {np.float32: "FP32", np.float64: "FP64", np.float16: "FP16", np.int32: "INT32"}[arr.dtype.type]
        i = httpclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr, binary_data=binary)
        out.append(i)
    return out


def split_binary(r):
    """The JSON header and the outputs (binary or JSON) of an infer response."""
    n = int(r.headers.get("Inference-Header-Content-Length", len(r.content)))
    header = json.loads(r.content[:n])
    tail, offset, outputs = r.content[n:], 0, {}
    for o in header["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            outputs[o["name"]] = np.array(o["data"], dtype=NP[o["datatype"]]).reshape(o["shape"])
        else:
            outputs[o["name"]] = np.frombuffer(tail[offset:offset + size], dtype=NP[o["datatype"]]).reshape(o["shape"])
            offset += size
    assert offset == len(tail), "every binary byte belongs to an output"
    return header, outputs


# ---------------------------------------------------------------- compression

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("request_alg,response_alg",
                         [("gzip", None), ("deflate", None), (None, "gzip"), (None, "deflate"),
                          ("gzip", "deflate"), ("deflate", "gzip")])
def test_tritonclient_compression_matches_onnxruntime(client, request_alg, response_alg, binary):
    x = random_inputs("mlp", rows=3, seed=11)
    expected = reference("mlp", x)["probabilities"]
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("mlp", http_inputs(x, binary), outputs=outputs,
                          request_compression_algorithm=request_alg,
                          response_compression_algorithm=response_alg)
    assert_close(result.as_numpy("probabilities"), expected, what=f"{request_alg}/{response_alg}")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_responses_are_compressed_as_asked(server, coding):
    x = random_inputs("mixed", rows=1, seed=4)
    expected = reference("mixed", x)
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": d, "data": v.tolist()}
                       for (k, v), d in zip(x.items(), ["INT32", "FP64", "FP16"])],
            "outputs": [{"name": "sum", "parameters": {"binary_data": True}}, {"name": "positive"}]}
    r = requests.post(f"{server.base}/v2/models/mixed/infer", data=json.dumps(body), stream=True,
                      headers={"Accept-Encoding": f"br;q=1.0, {coding};q=0.9, identity;q=0.1"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == coding
    raw = r.raw.read(decode_content=False)
    # HTTP's deflate is zlib-wrapped (what tritonclient's zlib.decompress expects).
    plain = gzip.decompress(raw) if coding == "gzip" else zlib.decompress(raw)
    n = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(plain[:n])
    assert [o["name"] for o in header["outputs"]] == ["sum", "positive"]
    np.testing.assert_array_equal(np.frombuffer(plain[n:], np.float64), expected["sum"])
    np.testing.assert_array_equal(np.array(header["outputs"][1]["data"]), expected["positive"])
    # No Accept-Encoding: not compressed.
    r = requests.post(f"{server.base}/v2/models/mixed/infer", data=json.dumps(body),
                      headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "Content-Encoding" not in r.headers


def test_unknown_or_corrupt_encodings_are_json_400(server):
    url = f"{server.base}/v2/models/mlp/infer"
    r = requests.post(url, data=b"xx", headers={"Content-Encoding": "br"}, timeout=10)
    assert r.status_code == 400 and "Unsupported compression type" in r.json()["error"]
    r = requests.post(url, data=gzip.compress(b"{" * 10)[:-6], headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 400 and "cannot decompress" in r.json()["error"]


def gzip_zeros(total, chunk=1 << 20):
    """`total` zero bytes gzip-compressed, generated a chunk at a time."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    zero = bytes(chunk)
    parts = [c.compress(zero) for _ in range(total // chunk)]
    parts.append(c.flush())
    return b"".join(parts)


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_zip_bomb_gets_413_and_memory_stays_flat(start_server, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "mlp", repo / "mlp")
    s = start_server(repo)  # the default --max-body-bytes: 64 MiB
    bomb = gzip_zeros(1 << 30)
    assert len(bomb) < 2 << 20, len(bomb)
    pid = s.proc.pid
    try:  # reset the peak (VmHWM) so it measures this request only
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
    before = status_kib(pid, "VmRSS")
    for coding in ["gzip", "deflate"]:
        r = requests.post(f"{s.base}/v2/models/mlp/infer", data=bomb, timeout=120,
                          headers={"Content-Encoding": coding, "Inference-Header-Content-Length": "100"})
        assert r.status_code == 413, r.text
        assert "decompressed request body is larger than the limit of 67108864 bytes" in r.json()["error"]
    growth_mib = (status_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 200, f"the server's peak memory grew by {growth_mib:.0f} MiB for a 1 GiB bomb"
    # It still serves.
    x = random_inputs("mlp", rows=1, seed=2)
    c = httpclient.InferenceServerClient(url=s.http_url)
    try:
        assert_close(c.infer("mlp", http_inputs(x)).as_numpy("probabilities"),
                     reference("mlp", x)["probabilities"])
    finally:
        c.close()


# ---------------------------------------------------------------- raw binary requests

def test_raw_binary_request_is_the_one_input(server):
    x = random_inputs("mlp", rows=1, seed=21)["input"]
    url = f"{server.base}/v2/models/mlp/infer"
    r = requests.post(url, data=x[0].tobytes(), headers={"Inference-Header-Content-Length": "0"}, timeout=30)
    assert r.status_code == 200, r.text
    header, outputs = split_binary(r)
    assert header["outputs"][0]["shape"] == [1, 10]
    assert "binary_data_size" in header["outputs"][0]["parameters"], "raw requests answer in binary"
    assert_close(outputs["probabilities"], reference("mlp", {"input": x})["probabilities"])
    # Compressed: the header length counts the decompressed body (0 = all of it).
    r = requests.post(url, data=gzip.compress(x[0].tobytes()), timeout=30,
                      headers={"Inference-Header-Content-Length": "0", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert_close(split_binary(r)[1]["probabilities"], reference("mlp", {"input": x})["probabilities"])
    # Wrong size, several inputs: Triton's messages.
    r = requests.post(url, data=x[0, :10].tobytes(), headers={"Inference-Header-Content-Length": "0"}, timeout=10)
    assert r.status_code == 400
    assert "input byte size mismatch for input 'input' for model 'mlp'. Expected 3136, got 40" in r.json()["error"]
    r = requests.post(f"{server.base}/v2/models/mixed/infer", data=b"\0" * 16,
                      headers={"Inference-Header-Content-Length": "0"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"].startswith("Raw request must only have 1 input (found 1) to be deduced but got 3 inputs")


def test_densenet_raw_image_as_with_tritons_quick_start(server):
    img = np.random.default_rng(8).random((3, 224, 224), dtype=np.float32)
    r = requests.post(f"{server.base}/v2/models/densenet_onnx/infer", data=img.tobytes(),
                      headers={"Inference-Header-Content-Length": "0"}, timeout=60)
    assert r.status_code == 200, r.text
    header, outputs = split_binary(r)
    expected = run_onnx(densenet_like(), {"data_0": img[None]})["fc6_1"].reshape(1000)
    assert header["outputs"][0]["shape"] == [1000]
    assert_close(outputs["fc6_1"], expected, what="raw densenet")


# ---------------------------------------------------------------- reshape

def test_densenet_onnx_config_verbatim_loads_and_serves(client):
    assert client.is_model_ready("densenet_onnx")
    meta = client.get_model_metadata("densenet_onnx")
    assert meta["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": [3, 224, 224]}]
    assert meta["outputs"] == [{"name": "fc6_1", "datatype": "FP32", "shape": [1000]}]
    config = client.get_model_config("densenet_onnx")
    assert config["input"][0]["reshape"] == {"shape": [1, 3, 224, 224]}
    assert config["output"][0]["label_filename"] == "densenet_labels.txt"
    model = densenet_like()
    for seed in [1, 2]:
        img = np.random.default_rng(seed).random((3, 224, 224), dtype=np.float32)
        i = httpclient.InferInput("data_0", [3, 224, 224], "FP32")
        i.set_data_from_numpy(img)
        y = client.infer("densenet_onnx", [i]).as_numpy("fc6_1")
        assert y.shape == (1000,)
        assert_close(y, run_onnx(model, {"data_0": img[None]})["fc6_1"].reshape(1000), what=f"seed {seed}")


@pytest.mark.parametrize("name", ["reshaped", "reshaped_tract"])
def test_reshape_on_inputs_and_outputs_matches_onnxruntime(client, name):
    model = reshaped_model()
    meta = client.get_model_metadata(name)
    assert [i["shape"] for i in meta["inputs"]] == [[-1, 2, 6], [-1, 1]]
    assert meta["outputs"][0]["shape"] == [-1, 2, 4]
    for rows, binary in [(1, True), (3, False), (8, True)]:
        rng = np.random.default_rng(rows)
        x = rng.standard_normal((rows, 2, 6)).astype(np.float32)
        s = rng.standard_normal((rows, 1)).astype(np.float32)
        out = [httpclient.InferRequestedOutput("y", binary_data=binary)]
        y = client.infer(name, http_inputs({"x": x, "s": s}, binary), outputs=out).as_numpy("y")
        expected = run_onnx(model, {"x": x.reshape(rows, 12), "s": s.reshape(rows)})["y"].reshape(rows, 2, 4)
        assert_close(y, expected, what=f"{name} rows={rows}")
    # The client's shape is the config's dims, not the reshape.
    bad = http_inputs({"x": np.zeros((1, 12), np.float32), "s": np.zeros((1, 1), np.float32)})
    with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'x' .*Expected \[-1,2,6\], got \[1,12\]"):
        client.infer(name, bad)


def test_reshaped_requests_batch_together(server):
    """Concurrent requests are batched in client shapes and reshaped as one batch."""
    import concurrent.futures
    model = reshaped_model()

    def one(seed):
        rng = np.random.default_rng(100 + seed)
        x = rng.standard_normal((1, 2, 6)).astype(np.float32)
        s = rng.standard_normal((1, 1)).astype(np.float32)
        c = httpclient.InferenceServerClient(url=server.http_url)
        try:
            y = c.infer("reshaped", http_inputs({"x": x, "s": s})).as_numpy("y")
        finally:
            c.close()
        return y, run_onnx(model, {"x": x.reshape(1, 12), "s": s.reshape(1)})["y"].reshape(1, 2, 4)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for y, expected in pool.map(one, range(12)):
            assert_close(y, expected)


# ---------------------------------------------------------------- output binary semantics

def mixed_body(**extra):
    x = random_inputs("mixed", rows=1, seed=9)
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": d, "data": v.tolist()}
                       for (k, v), d in zip(x.items(), ["INT32", "FP64", "FP16"])]}
    body.update(extra)
    return x, body


@pytest.mark.parametrize("params,outputs,expect_binary", [
    # Listed outputs: binary only with their own binary_data: true, whatever binary_data_output says.
    ({"binary_data_output": True},
     [{"name": "sum", "parameters": {"binary_data": True}}, {"name": "h2"},
      {"name": "positive", "parameters": {"binary_data": False}}],
     {"sum": True, "h2": False, "positive": False}),
    ({}, [{"name": "h2", "parameters": {"binary_data": True}}, {"name": "sum"}],
     {"h2": True, "sum": False}),
    # No outputs listed: binary_data_output is the default for all of them.
    ({"binary_data_output": True}, None, {"sum": True, "h2": True, "positive": True}),
    ({"binary_data_output": False}, None, {"sum": False, "h2": False, "positive": False}),
    ({}, None, {"sum": False, "h2": False, "positive": False}),
], ids=["listed-bdo", "listed", "all-binary", "all-json-explicit", "all-json"])
def test_which_outputs_are_binary(server, params, outputs, expect_binary):
    extra = {"parameters": params}
    if outputs is not None:
        extra["outputs"] = outputs
    x, body = mixed_body(**extra)
    expected = reference("mixed", x)
    r = requests.post(f"{server.base}/v2/models/mixed/infer", data=json.dumps(body), timeout=30)
    assert r.status_code == 200, r.text
    header, got = split_binary(r)
    binary = {o["name"]: "binary_data_size" in o.get("parameters", {}) for o in header["outputs"]}
    assert binary == expect_binary
    for name in expect_binary:
        assert_close(got[name], expected[name], what=name)


# ---------------------------------------------------------------- loads

def test_load_model_with_files_over_2_mib(client):
    model = big_model()
    assert len(model) > 3 << 20
    client.load_model("big", config=json.dumps(big_config("big")), files={"file:1/model.onnx": model})
    assert client.is_model_ready("big")
    x = np.random.default_rng(4).standard_normal((2, 1024)).astype(np.float32)
    i = httpclient.InferInput("x", [2, 1024], "FP32")
    i.set_data_from_numpy(x)
    assert_close(client.infer("big", [i]).as_numpy("y"), run_onnx(model, {"x": x})["y"], rtol=1e-3, atol=1e-4)
    client.unload_model("big")


def test_a_load_body_over_the_limit_is_a_json_413(start_server, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "mlp", repo / "mlp")
    s = start_server(repo, "--model-control-mode", "explicit", "--max-body-bytes", str(3 << 20))
    c = httpclient.InferenceServerClient(url=s.http_url)
    try:
        # A 1.6 MB model (2.2 MB as base64 JSON) fits under 3 MiB; a 4 MiB one does not.
        small = big_model(width=640)
        assert 1 << 20 < len(small) < 2 << 20
        c.load_model("small", config=json.dumps(big_config("small", 640)), files={"file:1/model.onnx": small})
        assert c.is_model_ready("small")
        with pytest.raises(InferenceServerException) as e:
            c.load_model("big", config=json.dumps(big_config("big")), files={"file:1/model.onnx": big_model()})
        assert "larger than the limit of 3145728 bytes" in e.value.message()
    finally:
        c.close()
    body = json.dumps({"parameters": {"config": json.dumps(big_config("big")), "file:1/model.onnx": "A" * (4 << 20)}})
    r = requests.post(f"{s.base}/v2/repository/models/big/load", data=body, timeout=30)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]
    # Chunked (no Content-Length): still 413 JSON.
    r = requests.post(f"{s.base}/v2/repository/models/big/load", data=iter([body.encode()]), timeout=30)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]
    # Compressed under the limit, inflating over it.
    r = requests.post(f"{s.base}/v2/repository/models/big/load", data=gzip.compress(body.encode()),
                      headers={"Content-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 413 and "decompressed" in r.json()["error"]


def test_framework_errors_are_json_too(server):
    r = requests.get(f"{server.base}/v2/models/mlp/infer", timeout=10)
    assert r.status_code == 405 and r.json()["error"]
    r = requests.post(f"{server.base}/v2/logging", data=b"\xff", timeout=10)
    assert r.status_code in (400, 503) and r.json()["error"]
    r = requests.get(f"{server.base}/v2/nothing/here", timeout=10)
    assert r.status_code == 404 and r.json()["error"]


# ---------------------------------------------------------------- error texts

def test_error_texts_follow_triton(server, client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", http_inputs({"input": np.zeros((1, 784), np.float32)}))
    assert e.value.message().startswith("Request for unknown model: 'nope' is not found")
    r = requests.post(f"{server.base}/v2/models/nope/infer", data="{}", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == "Request for unknown model: 'nope' is not found"
    r = requests.post(f"{server.base}/v2/models/mlp/versions/7/infer", data="{}", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == "Request for unknown model: 'mlp' version 7 is not found"
    r = requests.get(f"{server.base}/v2/models/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"].startswith("Request for unknown model: 'nope'")
    # On disk, not loaded (explicit mode): not ready, 503.
    r = requests.post(f"{server.base}/v2/models/idle/infer", data="{}", timeout=10)
    assert r.status_code == 503
    assert r.json()["error"].startswith("Request for unknown model: 'idle' has no available versions")

    x, body = mixed_body()
    cases = [
        ({"inputs": body["inputs"][:1]},
         "expected 3 inputs but got 1 inputs for model 'mixed'. Got input(s) ['a'], but missing "
         "required input(s) ['b','h']. Please provide all required input(s)."),
        ({"inputs": [dict(body["inputs"][0], shape=[2, 2])] + body["inputs"][1:]},
         "unexpected shape for input 'a' for model 'mixed'. Expected [4], got [2,2]"),
        ({"inputs": [dict(body["inputs"][0], datatype="INT64")] + body["inputs"][1:]},
         "inference input 'a' data-type is 'INT64', but model 'mixed' expects 'INT32'"),
    ]
    for request, message in cases:
        r = requests.post(f"{server.base}/v2/models/mixed/infer", data=json.dumps(request), timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == message


# ---------------------------------------------------------------- JSON nesting

def nest(values, arrays):
    """The JSON text of `values` (a flat list) inside `arrays` arrays in all."""
    return "[" * (arrays - 1) + json.dumps(values) + "]" * (arrays - 1)


def test_json_nesting_limit_is_tritons(server):
    x = random_inputs("mlp", rows=1, seed=5)["input"]
    expected = reference("mlp", {"input": x})["probabilities"]
    url = f"{server.base}/v2/models/mlp/infer"

    def post(arrays):
        body = ('{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": '
                + nest(x[0].tolist(), arrays) + "}]}")
        return requests.post(url, data=body, timeout=30)

    # 100 levels counting the values themselves (99 arrays, as Triton's limit counts): served.
    r = post(99)
    assert r.status_code == 200, r.text
    assert_close(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 10), expected)
    # 101 levels and more: Triton's 400 and text, below and above serde_json's own limit.
    for arrays in [100, 130, 5000]:
        r = post(arrays)
        assert r.status_code == 400, arrays
        assert r.json()["error"] == "JSON nesting depth exceeds maximum allowed limit (100)"
    # Deep nesting anywhere else in the document gets the same answer.
    deep = '{"inputs": [], "parameters": {"p": ' + nest([1], 200) + "}}"
    r = requests.post(url, data=deep, timeout=10)
    assert r.status_code == 400 and "nesting depth" in r.json()["error"]


def test_nan_and_infinities_in_json_data_are_read_as_triton_reads_them(client, server):
    """Triton parses JSON with NaN and infinities allowed; tritonclient's JSON inputs
    (json.dumps) and perf_analyzer's random JSON data send them as bare tokens."""
    x = random_inputs("mlp", rows=3, seed=23)["input"]
    x[0, 5], x[1, 7], x[1, 9] = np.nan, np.inf, -np.inf
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    r = client.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)])
    got, expected = r.as_numpy("probabilities"), reference("mlp", {"input": x})["probabilities"]
    assert np.isnan(got[0]).all() and np.isnan(expected[0]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got[2], expected[2])
    # The same as a raw body, with the token also inside a string that must stay as sent.
    body = json.dumps({"id": "NaN Infinity", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                         "data": [float("nan")] + [0.0] * 783}],
                       "parameters": {"binary_data_output": True}})
    assert "NaN" in body
    r = requests.post(f"{server.base}/v2/models/mlp/infer", data=body, timeout=30)
    assert r.status_code == 200, r.text
    header, outputs = split_binary(r)
    assert header["id"] == "NaN Infinity" and np.isnan(outputs["probabilities"]).all()
    # A string "NaN" is not a number, and NaN is no integer: clear 400s.
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ["NaN"] + [0.0] * 783}]}
    r = requests.post(f"{server.base}/v2/models/mlp/infer", json=body, timeout=30)
    assert r.status_code == 400 and "is not a valid FP32" in r.json()["error"], r.text
