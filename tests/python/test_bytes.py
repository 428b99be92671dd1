"""BYTES / TYPE_STRING tensors end to end on ONNX Runtime: a scikit-learn pipeline with
string categorical features (skl2onnx) against scikit-learn over HTTP JSON, HTTP binary
and gRPC with the unmodified tritonclient; a batched string identity model with empty,
non-ASCII and 1 MB strings gathered from concurrent requests; malformed BYTES payloads
answered 400 / INVALID_ARGUMENT; and string models on tract refused at load with the
reason while the other models serve."""

import json
import shutil
import struct
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import EXAMPLES

LIB = Path(onnxruntime.__file__).parent / "capi"
ORT = ("--ort-library", str(LIB))


def serialize(values):
    """Triton's BYTES serialization: per element a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def index(server):
    rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
    return {row["name"]: row for row in rows}


def write_model(repo, name, model_bytes, config):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(model_bytes)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)


# --- a scikit-learn pipeline with string categorical features -------------------------

COLORS = np.array(["red", "green", "blue", "gelb-\u00fc"])
SIZES = np.array(["S", "M", "L"])

CATEGORICAL_CONFIG = """
backend: "onnxruntime"
max_batch_size: 0
input [
  { name: "cat" data_type: TYPE_STRING dims: [ -1, 2 ] },
  { name: "num" data_type: TYPE_FP32 dims: [ -1, 2 ] }
]
output [
  { name: "label" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ -1, 3 ] }
]
"""


@pytest.fixture(scope="module")
def categorical():
    """A OneHotEncoder (strings) + StandardScaler (numbers) -> LogisticRegression pipeline
    trained on a deterministic synthetic set with string class labels, its ONNX export,
    and a held-out set."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    rng = np.random.default_rng(7)
    n = 600
    color = rng.choice(COLORS, n)
    size = rng.choice(SIZES, n)
    x = rng.standard_normal((n, 2)).astype(np.float32)
    score = ((color == "red") * 1.5 - (color == "blue") + (size == "L") + x[:, 0] - 0.5 * x[:, 1]
             + rng.standard_normal(n) * 0.5)
    y = np.where(score > 1.0, "high", np.where(score > -0.3, "mid", "low"))
    table = np.empty((n, 4), dtype=object)
    table[:, 0], table[:, 1], table[:, 2], table[:, 3] = color, size, x[:, 0], x[:, 1]
    pipe = Pipeline([
        ("columns", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), [0, 1]),
                                       ("num", StandardScaler(), [2, 3])])),
        ("clf", LogisticRegression(max_iter=1000)),
    ])
    train, test = slice(0, 400), slice(400, n)
    pipe.fit(table[train], y[train])
    onx = convert_sklearn(
        pipe, initial_types=[("cat", StringTensorType([None, 2])), ("num", FloatTensorType([None, 2]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}}, target_opset=17)
    cat = np.stack([color[test], size[test]], axis=1).astype(np.object_)
    return {
        "onnx": onx.SerializeToString(),
        "cat": np.vectorize(lambda s: s.encode("utf-8"), otypes=[np.object_])(cat),
        "num": x[test],
        "label": pipe.predict(table[test]),
        "probabilities": pipe.predict_proba(table[test]),
    }


def check_predictions(labels, probabilities, expected, what):
    labels = [v.decode("utf-8") if isinstance(v, bytes) else v for v in labels.tolist()]
    assert labels == expected["label"].tolist(), what
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-4, atol=1e-5,
                               err_msg=what)


def test_sklearn_string_pipeline_matches_sklearn_over_http_and_grpc(tmp_path, start_server, categorical):
    repo = tmp_path / "models"
    write_model(repo, "categorical", categorical["onnx"], CATEGORICAL_CONFIG)
    s = start_server(repo, *ORT)
    assert index(s)["categorical"]["state"] == "READY", s.log()
    meta = requests.get(f"{s.base}/v2/models/categorical", timeout=10).json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"cat": "BYTES", "num": "FP32"}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]}["label"] == "BYTES"
    cat, num = categorical["cat"], categorical["num"]

    # HTTP binary (tritonclient's default) and HTTP JSON, inputs and outputs.
    client = httpclient.InferenceServerClient(url=s.http_url)
    try:
        for binary in (True, False):
            i_cat = httpclient.InferInput("cat", list(cat.shape), "BYTES")
            i_cat.set_data_from_numpy(cat, binary_data=binary)
            i_num = httpclient.InferInput("num", list(num.shape), "FP32")
            i_num.set_data_from_numpy(num, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
                       for n in ("label", "probabilities")]
            result = client.infer("categorical", [i_cat, i_num], outputs=outputs)
            label = result.as_numpy("label")
            assert label.shape == (len(num),)
            check_predictions(label, result.as_numpy("probabilities"), categorical,
                              f"HTTP binary={binary}")
            if not binary:
                # JSON outputs are strings, as Triton writes them.
                out = {o["name"]: o for o in result.get_response()["outputs"]}
                assert out["label"]["datatype"] == "BYTES"
                assert all(isinstance(v, str) for v in out["label"]["data"])
        # Outputs not named: tritonclient asks for binary_data_output.
        i_cat = httpclient.InferInput("cat", list(cat.shape), "BYTES")
        i_cat.set_data_from_numpy(cat)
        i_num = httpclient.InferInput("num", list(num.shape), "FP32")
        i_num.set_data_from_numpy(num)
        result = client.infer("categorical", [i_cat, i_num])
        check_predictions(result.as_numpy("label"), result.as_numpy("probabilities"), categorical,
                          "HTTP default outputs")
    finally:
        client.close()

    # gRPC: raw_input_contents in, raw_output_contents out.
    gclient = grpcclient.InferenceServerClient(url=s.grpc_url)
    try:
        i_cat = grpcclient.InferInput("cat", list(cat.shape), "BYTES")
        i_cat.set_data_from_numpy(cat)
        i_num = grpcclient.InferInput("num", list(num.shape), "FP32")
        i_num.set_data_from_numpy(num)
        result = gclient.infer("categorical", [i_cat, i_num])
        label = result.as_numpy("label")
        assert label.dtype == np.object_ and isinstance(label[0], bytes)
        check_predictions(label, result.as_numpy("probabilities"), categorical, "gRPC")
    finally:
        gclient.close()

    # gRPC typed contents: bytes_contents.
    with grpc.insecure_channel(s.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="categorical")
        t = req.inputs.add(name="cat", datatype="BYTES", shape=list(cat.shape))
        t.contents.bytes_contents.extend(cat.flatten().tolist())
        t = req.inputs.add(name="num", datatype="FP32", shape=list(num.shape))
        t.contents.fp32_contents.extend(num.flatten().tolist())
        reply = stub.ModelInfer(req, timeout=30)
        names = [o.name for o in reply.outputs]
        raw = reply.raw_output_contents[names.index("label")]
        label = np.array(deserialize(raw), dtype=np.object_)
        probs = np.frombuffer(reply.raw_output_contents[names.index("probabilities")],
                              dtype=np.float32).reshape(-1, 3)
        check_predictions(label, probs, categorical, "gRPC bytes_contents")


def deserialize(data):
    out, offset = [], 0
    while offset < len(data):
        (n,) = struct.unpack_from("<I", data, offset)
        out.append(bytes(data[offset + 4:offset + 4 + n]))
        offset += 4 + n
    return out


# --- a batched string identity model ---------------------------------------------------

def identity_model(batch_dim="N"):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])], "string_identity",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [batch_dim, 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [batch_dim, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity_config(engine='backend: "onnxruntime"', delay_us=1000):
    return f"""
{engine}
max_batch_size: 6
input [ {{ name: "text" data_type: TYPE_STRING dims: [ 2 ] }} ]
output [ {{ name: "echo" data_type: TYPE_STRING dims: [ 2 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
"""

MEGA = ("x\u00e9" * 349_526).encode("utf-8")[:1 << 20]  # 1 MiB of 3-byte units, ends on "x"
assert len(MEGA) == 1 << 20 and MEGA.decode("utf-8")


def test_string_identity_batches_empty_non_ascii_and_1mb_strings(tmp_path, start_server):
    repo = tmp_path / "models"
    model = identity_model()
    # max_batch_size 6 and a long static delay: three requests of 1, 2 and 3 rows fill
    # one batch exactly, which runs as soon as the last of them arrives (whatever the speed).
    write_model(repo, "identity", model, identity_config(delay_us=60_000_000))
    s = start_server(repo, *ORT)
    reference = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    rows = {
        "http-binary": np.array([[MEGA, "\u65e5\u672c\u8a9e \u2713".encode()]], dtype=np.object_),
        "http-json": np.array([[b"a", b""], ["Gr\u00fc\u00dfe \U0001f600".encode(), MEGA]],
                              dtype=np.object_),
        "grpc": np.array([[MEGA, b""], [b"", b""], [b"z", MEGA[:12345]]], dtype=np.object_),
    }
    results, errors = {}, []

    def send(how):
        try:
            x = rows[how]
            if how == "grpc":
                c = grpcclient.InferenceServerClient(url=s.grpc_url)
                i = grpcclient.InferInput("text", list(x.shape), "BYTES")
                i.set_data_from_numpy(x)
                results[how] = c.infer("identity", [i], client_timeout=120).as_numpy("echo")
            else:
                binary = how == "http-binary"
                c = httpclient.InferenceServerClient(url=s.http_url, network_timeout=120)
                i = httpclient.InferInput("text", list(x.shape), "BYTES")
                i.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("echo", binary_data=binary)
                results[how] = c.infer("identity", [i], outputs=[out]).as_numpy("echo")
            c.close()
        except Exception as e:  # reported below
            errors.append((how, e))

    threads = [threading.Thread(target=send, args=(how,)) for how in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    for how, x in rows.items():
        # Python's onnxruntime takes str elements (it would str() bytes objects).
        (expected,) = reference.run(None, {"text": np.vectorize(bytes.decode, otypes=[np.object_])(x)})
        got = results[how]
        assert got.shape == x.shape, how
        for a, b, sent in zip(got.flatten(), np.asarray(expected).flatten(), x.flatten()):
            a = a.encode("utf-8") if isinstance(a, str) else a  # JSON outputs are str
            b = b.encode("utf-8") if isinstance(b, str) else b
            assert a == b == sent, (how, len(a), len(b), len(sent))
    # The three requests ran as one batch of six rows, split back by their prefixes.
    stats = requests.get(f"{s.base}/v2/models/identity/stats", timeout=10).json()
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["model_stats"][0]["batch_stats"]}
    assert batches == {6: 1}, batches

    # Text rules of ONNX strings: not UTF-8, or a NUL character, is a 400 for that request.
    for bad, expect in [(b"\xff\xfe", "not valid UTF-8"), (b"a\x00b", "NUL character")]:
        body, header_len = binary_body("text", [1, 2], serialize([b"ok", bad]))
        r = post_binary(s, "identity", body, header_len)
        assert r.status_code == 400 and expect in r.json()["error"], r.text
    # And the model still serves (six rows: a full batch, which does not wait).
    x = np.array([[b"still", b"here"]] * 6, dtype=np.object_)
    c = httpclient.InferenceServerClient(url=s.http_url)
    i = httpclient.InferInput("text", [6, 2], "BYTES")
    i.set_data_from_numpy(x)
    assert c.infer("identity", [i]).as_numpy("echo").tolist() == x.tolist()
    c.close()


# --- malformed BYTES payloads ----------------------------------------------------------

def binary_body(name, shape, data, size=None):
    header = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data) if size is None else size}}],
                         "outputs": [{"name": "echo", "parameters": {"binary_data": True}}]}).encode()
    return header + data, len(header)


def post_binary(s, model, body, header_len):
    return requests.post(f"{s.base}/v2/models/{model}/infer", data=body, timeout=30,
                         headers={"Inference-Header-Content-Length": str(header_len),
                                  "Content-Type": "application/octet-stream"})


def test_malformed_bytes_payloads_are_400_and_invalid_argument(tmp_path, start_server):
    repo = tmp_path / "models"
    write_model(repo, "identity", identity_model(), identity_config())
    s = start_server(repo, *ORT)
    good = serialize([b"ab", b"c"])
    # A length prefix past the end: claims 4 GiB - 1 with 3 bytes behind it.
    past = good[:6] + struct.pack("<I", 0xFFFFFFFF) + b"xyz"
    http_cases = [
        (binary_body("text", [1, 2], past), "malformed BYTES data"),
        (binary_body("text", [1, 2], serialize([b"a", b"b", b"c"])), "3 BYTES elements do not match shape [1, 2]"),
        (binary_body("text", [1, 2], serialize([b"a"])), "1 BYTES elements do not match shape [1, 2]"),
        # binary_data_size larger than the data, and smaller (cuts the last element).
        (binary_body("text", [1, 2], good, size=len(good) + 5), "extends past the end"),
        (binary_body("text", [1, 2], good, size=len(good) - 1), "malformed BYTES data"),
        # A truncated length prefix.
        (binary_body("text", [1, 2], good + b"\x01\x00"), "malformed BYTES data"),
    ]
    for (body, header_len), expect in http_cases:
        r = post_binary(s, "identity", body, header_len)
        assert r.status_code == 400, (expect, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert expect in r.json()["error"], (expect, r.json())
    # JSON: count mismatch, and a number where a string goes.
    for data, expect in [(["a"], "1 values given but the shape holds 2"),
                         (["a", "b", "c"], "more than 2 values"),
                         (["a", 7], "not a valid BYTES")]:
        r = requests.post(f"{s.base}/v2/models/identity/infer", timeout=30, json={
            "inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": data}]})
        assert r.status_code == 400 and expect in r.json()["error"], (expect, r.text)

    # gRPC: raw_input_contents and bytes_contents.
    def raw(data, shape=(1, 2)):
        req = service_pb2.ModelInferRequest(model_name="identity")
        req.inputs.add(name="text", datatype="BYTES", shape=list(shape))
        req.raw_input_contents.append(data)
        return req

    def typed(values, shape=(1, 2)):
        req = service_pb2.ModelInferRequest(model_name="identity")
        t = req.inputs.add(name="text", datatype="BYTES", shape=list(shape))
        t.contents.bytes_contents.extend(values)
        return req

    grpc_cases = [
        (raw(past), "malformed BYTES data"),
        (raw(serialize([b"a", b"b", b"c"])), "3 BYTES elements do not match shape [1, 2]"),
        (raw(good[:-1]), "malformed BYTES data"),
        (typed([b"a"]), "1 values given but the shape holds 2"),
        (typed([b"ok", b"\xc3\x28"]), "not valid UTF-8"),
    ]
    with grpc.insecure_channel(s.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for req, expect in grpc_cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (expect, e.value)
            assert expect in e.value.details(), (expect, e.value.details())
        # Still serving, both ways.
        reply = stub.ModelInfer(raw(good), timeout=30)
        assert deserialize(reply.raw_output_contents[0]) == [b"ab", b"c"]
        reply = stub.ModelInfer(typed([b"", "\u00fc".encode()]), timeout=30)
        assert deserialize(reply.raw_output_contents[0]) == [b"", "\u00fc".encode()]
    r = post_binary(s, "identity", *binary_body("text", [1, 2], good))
    assert r.status_code == 200, r.text
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200


# --- string models and the choice of engine --------------------------------------------

def test_string_models_on_tract_are_unavailable_with_the_reason(tmp_path, start_server):
    repo = tmp_path / "models"
    model = identity_model()
    write_model(repo, "on_tract", model, identity_config('backend: "tract"'))
    # No backend: ONNX Runtime when it is loaded; Triton's platform name too; no config at all.
    write_model(repo, "no_backend", model, identity_config(""))
    write_model(repo, "platform", model, identity_config('platform: "onnxruntime_onnx"'))
    write_model(repo, "no_config", model, None)
    shutil.copytree(EXAMPLES / "mixed", repo / "mixed")
    reason = ("the tract backend does not support BYTES tensors (input 'text'); "
              'use backend "onnxruntime" for string models')

    s = start_server(repo, *ORT)
    rows = index(s)
    assert rows["on_tract"]["state"] == "UNAVAILABLE", rows["on_tract"]
    assert reason in rows["on_tract"]["reason"], rows["on_tract"]
    for name in ["no_backend", "platform", "no_config", "mixed"]:
        assert rows[name]["state"] == "READY", (name, rows[name], s.log())
    x = np.array([["caf\u00e9".encode(), b""]], dtype=np.object_)
    client = httpclient.InferenceServerClient(url=s.http_url)
    try:
        for name in ["no_backend", "platform", "no_config"]:
            i = httpclient.InferInput("text", [1, 2], "BYTES")
            i.set_data_from_numpy(x)
            assert client.infer(name, [i]).as_numpy("echo").tolist() == x.tolist(), name
        cfg = client.get_model_config("no_config")
        assert cfg["backend"] == "onnxruntime"
        assert [i["data_type"] for i in cfg["input"]] == ["TYPE_STRING"]
        r = requests.post(f"{s.base}/v2/models/on_tract/infer", timeout=10, json={
            "inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]})
        assert r.status_code == 503, r.text
        assert requests.get(f"{s.base}/v2/models/on_tract/ready", timeout=10).status_code == 503
        # Strict readiness (the default): one unavailable model makes the server not ready.
        assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 503
        # The other models serve.
        r = requests.post(f"{s.base}/v2/models/mixed/infer", timeout=10, json={"inputs": [
            {"name": "a", "shape": [4], "datatype": "INT32", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]},
            {"name": "h", "shape": [4], "datatype": "FP16", "data": [1, 2, 3, 4]}]})
        assert r.status_code == 200, r.text
    finally:
        client.close()

    # Without ONNX Runtime every string model goes to tract and is refused the same way;
    # with non-strict readiness the server is ready for the others.
    s = start_server(repo, "--ort-library", "off", "--strict-readiness", "false")
    rows = index(s)
    for name in ["on_tract", "no_backend", "platform", "no_config"]:
        assert rows[name]["state"] == "UNAVAILABLE", (name, rows[name])
        assert reason in rows[name]["reason"], rows[name]
    assert rows["mixed"]["state"] == "READY"
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200
