"""The KServe v2 protocol over gRPC end to end: the unmodified tritonclient.grpc, and raw
stubs from its generated modules for malformed requests, against a running `sluice
serve`; outputs checked against ONNX Runtime."""

import queue

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import BROKEN, EXAMPLES
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference

SERVICE = "inference.GRPCInferenceService"
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(url=server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url, options=UNLIMITED)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_inputs(inputs):
    out = []
    for name, arr in inputs.items():
        i = grpcclient.InferInput(name, list(arr.shape), V2_DTYPE[arr.dtype.type])
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def check_result(name, result, expected, request_id):
    assert result.get_response().id == request_id
    assert result.get_response().model_name == name
    for out in MODELS[name]["outputs"]:
        assert_close(result.as_numpy(out), expected[out], what=f"{name}/{out} ({request_id})")


def raw_request(model, inputs, raw=None, request_id=""):
    """A ModelInferRequest with `inputs` (name -> array) as raw_input_contents."""
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in inputs.items():
        t = req.inputs.add(name=name, datatype=V2_DTYPE[arr.dtype.type])
        t.shape.extend(arr.shape)
    req.raw_input_contents.extend(raw if raw is not None else [a.tobytes() for a in inputs.values()])
    return req


def mlp_inputs(rows=1, seed=0):
    return random_inputs("mlp", rows=rows, seed=seed)


def health_check(url, service):
    """grpc.health.v1.Health/Check with hand-encoded messages (grpcio-health-checking is
    not installed): HealthCheckRequest{service=1: string} -> HealthCheckResponse{status=1}."""
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    with grpc.insecure_channel(url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        reply = check(request, timeout=10)
    # SERVING = 1, NOT_SERVING = 2; an empty reply is the default, UNKNOWN = 0.
    return {b"": "UNKNOWN", b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}[reply]


def assert_still_serving(stub):
    inputs = mlp_inputs(rows=1, seed=99)
    reply = stub.ModelInfer(raw_request("mlp", inputs, request_id="after"), timeout=30)
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 10)
    assert_close(got, reference("mlp", inputs)["probabilities"], what="mlp after an error")


# ---- health, metadata, configuration ---------------------------------------------------


def test_health_and_server_metadata(client, server):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "sluice"
    assert "model_configuration" in meta.extensions
    assert health_check(server.grpc_url, "") == "SERVING"
    assert health_check(server.grpc_url, SERVICE) == "SERVING"
    with pytest.raises(grpc.RpcError) as e:
        health_check(server.grpc_url, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_metadata_config_and_readiness(client, name):
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, "1")
    meta = client.get_model_metadata(name)
    assert meta.name == name
    assert list(meta.versions) == ["1"]
    spec = MODELS[name]
    assert [i.name for i in meta.inputs] == [i[0] for i in spec["inputs"]]
    assert [o.name for o in meta.outputs] == spec["outputs"]
    for (_, dtype, shape), got in zip(spec["inputs"], meta.inputs):
        assert got.datatype == V2_DTYPE[dtype]
        assert list(got.shape) == ([-1] if spec["batch"] else []) + shape
    assert client.get_model_metadata(name, "1") == meta
    config = client.get_model_config(name).config
    assert config.name == name
    assert (config.max_batch_size > 0) == spec["batch"]
    assert [i.name for i in config.input] == [i[0] for i in spec["inputs"]]
    assert [o.name for o in config.output] == spec["outputs"]


def test_model_config_carries_every_section(client):
    mlp = client.get_model_config("mlp", as_json=True)["config"]
    assert mlp["max_batch_size"] == 32
    assert mlp["input"][0]["data_type"] == "TYPE_FP32"
    assert mlp["input"][0]["dims"] == ["784"]  # int64 is a string in protobuf's JSON
    assert mlp["instance_group"][0]["count"] == 2
    assert mlp["instance_group"][0]["kind"] == "KIND_CPU"
    assert mlp["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert mlp["version_policy"] == {"latest": {"num_versions": 1}}
    assert mlp["parameters"]["intra_op_thread_count"]["string_value"] == "1"
    mixed = client.get_model_config("mixed").config
    assert mixed.platform == "onnxruntime_onnx"
    assert [o.data_type for o in mixed.output] == [12, 10, 1]  # TYPE_FP64, TYPE_FP16, TYPE_BOOL


def test_unknown_model_is_not_ready_and_not_found(client):
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'nope' is not found" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("mlp", "7")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index(client):
    index = client.get_model_repository_index().models
    assert sorted(m.name for m in index) == sorted(MODELS)
    assert all(m.state == "READY" and m.version == "1" for m in index)


def test_load_unload_need_explicit_mode(client):
    """The shared server runs in the default control mode (none): the repository API
    refuses changes with a message naming the flag (test_repository.py covers explicit mode)."""
    for call in [lambda: client.load_model("mlp"),
                 lambda: client.unload_model("mlp")]:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "--model-control-mode explicit" in e.value.message()
    assert client.is_model_ready("mlp")


# ---- inference -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_infer_matches_onnxruntime(client, name):
    for seed, rows in [(1, 1), (2, 3)]:
        inputs = random_inputs(name, rows=rows, seed=seed)
        outputs = [grpcclient.InferRequestedOutput(o) for o in MODELS[name]["outputs"]]
        result = client.infer(name, infer_inputs(inputs), outputs=outputs, request_id=f"r{seed}")
        check_result(name, result, reference(name, inputs), f"r{seed}")
    # One output asked for: only that one comes back.
    inputs = random_inputs(name, seed=3)
    last = MODELS[name]["outputs"][-1]
    result = client.infer(name, infer_inputs(inputs), outputs=[grpcclient.InferRequestedOutput(last)])
    assert [o.name for o in result.get_response().outputs] == [last]
    assert_close(result.as_numpy(last), reference(name, inputs)[last], what=f"{name}/{last}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_async_infer(client, name):
    done = queue.Queue()
    expected = {}
    for k in range(6):
        inputs = random_inputs(name, rows=1 + k % 3, seed=10 + k)
        expected[f"a{k}"] = reference(name, inputs)
        client.async_infer(name, infer_inputs(inputs), lambda result, error: done.put((result, error)), request_id=f"a{k}")
    for _ in range(len(expected)):
        result, error = done.get(timeout=60)
        assert error is None, error
        rid = result.get_response().id
        check_result(name, result, expected.pop(rid), rid)
    assert not expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stream_infer_with_requests_in_flight(server, name):
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    done = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put((result, error)))
    try:
        expected = {}
        for k in range(8):
            inputs = random_inputs(name, rows=1 + k % 3, seed=20 + k)
            expected[f"s{k}"] = reference(name, inputs)
            client.async_stream_infer(name, infer_inputs(inputs), request_id=f"s{k}")
        # A failing request in the middle is answered with an error; the stream goes on.
        client.async_stream_infer("nope", infer_inputs(random_inputs(name)), request_id="bad")
        inputs = random_inputs(name, seed=40)
        expected["last"] = reference(name, inputs)
        client.async_stream_infer(name, infer_inputs(inputs), request_id="last")
        errors = []
        for _ in range(len(expected) + 1):
            result, error = done.get(timeout=60)
            if error is not None:
                errors.append(error)
                continue
            rid = result.get_response().id
            check_result(name, result, expected.pop(rid), rid)
        assert not expected
        assert len(errors) == 1 and "Request for unknown model: 'nope' is not found" in errors[0].message()
    finally:
        client.stop_stream()
        client.close()


def test_streams_run_requests_concurrently(server, stub):
    """Requests of one stream overlap: 16 sent at once on a two-instance model all come
    back, and the stream stays usable."""
    sent = [raw_request("mlp", mlp_inputs(rows=2, seed=k), request_id=f"c{k}") for k in range(16)]
    ids = []
    for answer in stub.ModelStreamInfer(iter(sent), timeout=60):
        assert answer.error_message == ""
        ids.append(answer.infer_response.id)
    assert sorted(ids) == sorted(r.id for r in sent)


def test_typed_contents(stub):
    inputs = random_inputs("digits", rows=2, seed=5)
    req = service_pb2.ModelInferRequest(model_name="digits", id="typed")
    t = req.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    t.contents.fp32_contents.extend(inputs["input"].flatten().tolist())
    reply = stub.ModelInfer(req, timeout=30)
    assert reply.id == "typed"
    expected = reference("digits", inputs)
    by_name = {o.name: (o, raw) for o, raw in zip(reply.outputs, reply.raw_output_contents)}
    out, raw = by_name["probabilities"]
    assert out.datatype == "FP32" and list(out.shape) == [2, 10]
    assert_close(np.frombuffer(raw, np.float32).reshape(2, 10), expected["probabilities"])
    out, raw = by_name["label"]
    assert_close(np.frombuffer(raw, np.int64), expected["label"])


# ---- malformed requests ----------------------------------------------------------------


def bad_requests():
    x = mlp_inputs()
    raw = x["input"].tobytes()
    both = raw_request("mlp", x)
    both.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    unknown_dtype = raw_request("mlp", x)
    unknown_dtype.inputs[0].datatype = "FLOAT"
    no_data = raw_request("mlp", x, raw=[])
    return [
        ("short raw", raw_request("mlp", x, raw=[raw[:-4]]), grpc.StatusCode.INVALID_ARGUMENT,
         "raw_input_contents[0] holds 3132 bytes but shape [1, 784] of FP32 needs 3136 bytes"),
        ("long raw", raw_request("mlp", x, raw=[raw + b"\0" * 4]), grpc.StatusCode.INVALID_ARGUMENT,
         "holds 3140 bytes"),
        ("more raw buffers than inputs", raw_request("mlp", x, raw=[raw, raw]),
         grpc.StatusCode.INVALID_ARGUMENT, "2 raw_input_contents for 1 inputs"),
        ("raw and contents", both, grpc.StatusCode.INVALID_ARGUMENT, "has typed 'contents' although"),
        ("no data", no_data, grpc.StatusCode.INVALID_ARGUMENT, "has no data"),
        ("unknown model", raw_request("nope", x), grpc.StatusCode.NOT_FOUND,
         "Request for unknown model: 'nope' is not found"),
        ("unknown version", service_pb2.ModelInferRequest(model_name="mlp", model_version="7"),
         grpc.StatusCode.NOT_FOUND, "'mlp' version 7 is not found"),
        ("wrong dtype", raw_request("mlp", {"input": x["input"].astype(np.float64)}),
         grpc.StatusCode.INVALID_ARGUMENT, "inference input 'input' data-type is 'FP64', but model 'mlp' expects 'FP32'"),
        ("unknown datatype", unknown_dtype, grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype 'FLOAT'"),
        ("wrong shape", raw_request("mlp", {"input": np.zeros((1, 783), np.float32)}),
         grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'input' for model 'mlp'. Expected [-1,784], got [1,783]"),
        ("unknown input", raw_request("mlp", {"pixels": x["input"]}), grpc.StatusCode.INVALID_ARGUMENT,
         "unexpected inference input 'pixels' for model 'mlp'"),
    ]


@pytest.mark.parametrize("request_, code, message",
                         [c[1:] for c in bad_requests()], ids=[c[0] for c in bad_requests()])
def test_bad_requests_get_clear_statuses(stub, request_, code, message):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request_, timeout=30)
    assert e.value.code() == code, e.value.details()
    assert message in e.value.details()
    assert_still_serving(stub)


def test_messages_over_the_limit_are_resource_exhausted(start_server):
    s = start_server(EXAMPLES, "--grpc-max-message-bytes", "65536")
    with grpc.insecure_channel(s.grpc_url, options=UNLIMITED) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        big = raw_request("mlp", mlp_inputs(rows=32))  # 32 x 784 x 4 = 100 KB
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(big, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit of 65536 bytes (--grpc-max-message-bytes)" in e.value.details()
        # On a stream: the requests before it are answered, then the stream ends with the status.
        answers = stub.ModelStreamInfer(iter([raw_request("mlp", mlp_inputs(), request_id="ok"), big]),
                                        timeout=30)
        ids = []
        with pytest.raises(grpc.RpcError) as e:
            for answer in answers:
                ids.append(answer.infer_response.id)
        assert ids == ["ok"]
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_still_serving(stub)
    # The unmodified client sees the same status.
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    x = mlp_inputs(rows=32)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", infer_inputs(x))
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.close()


def test_not_ready_server_reports_not_serving(start_server):
    s = start_server(BROKEN)
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    assert client.is_server_live()
    assert not client.is_server_ready()  # strict readiness: a model is unavailable
    assert client.is_model_ready("good")
    assert not client.is_model_ready("corrupt")
    with pytest.raises(InferenceServerException) as e:
        client.infer("corrupt", infer_inputs({"x": np.zeros(4, np.float32)}))
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["corrupt"].state == "UNAVAILABLE" and index["corrupt"].reason
    client.close()
    assert health_check(s.grpc_url, "") == "NOT_SERVING"
    assert health_check(s.grpc_url, SERVICE) == "NOT_SERVING"


def test_grpc_and_http_share_one_process(server):
    """Both protocols answer from the same process; the log names gRPC's port first."""
    assert server.grpc_port and server.grpc_port != server.http_port
    log = server.log()
    assert log.index("gRPC server listening on") < log.index("HTTP server listening on")
    r = requests.get(f"{server.base}/v2/health/ready", timeout=10)
    assert r.status_code == 200


def test_sigterm_ends_open_streams(start_server):
    """An idle stream the client keeps open does not hold up a graceful shutdown: it
    ends with UNAVAILABLE and the process exits 0."""
    s = start_server(EXAMPLES)
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    done = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put((result, error)))
    try:
        client.async_stream_infer("mlp", infer_inputs(mlp_inputs()), request_id="before")
        result, error = done.get(timeout=30)
        assert error is None and result.get_response().id == "before"
        assert s.stop(timeout=20) == 0, s.log()
        result, error = done.get(timeout=10)
        assert result is None and error.status() == "StatusCode.UNAVAILABLE", error
        assert "shutting down" in error.message()
    finally:
        client.stop_stream()
        client.close()
