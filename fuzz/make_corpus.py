"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from real requests.

HTTP bodies and gRPC messages are built by tritonclient itself (the client users run),
model configs and model files are the example repository's, and a few hostile inputs
from the attacks in issue 21 are added by hand. The layouts are those documented in
crates/sluice-server/src/fuzzing.rs. Deterministic: running it again rewrites the same
files.

    .venv/bin/python fuzz/make_corpus.py
"""

import base64
import gzip
import json
import pathlib
import struct
import zlib

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc._utils as grpc_utils
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
MODELS = ROOT / "examples" / "models"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


def tensors():
    """Inputs of the fuzz signature (fuzzing::signature), as numpy arrays."""
    return {
        "a": np.arange(4, dtype=np.int32).reshape(1, 4),
        "b": np.linspace(-1, 1, 4).reshape(1, 4),
        "h": np.array([[0.5, -2, 65504, 0]], dtype=np.float16),
        "s": np.array([["héllo", ""]], dtype=object),
        "x": np.arange(6, dtype=np.float32).reshape(1, 3, 2),
    }


DTYPES = {
    np.int32: "INT32",
    np.float64: "FP64",
    np.float16: "FP16",
    np.object_: "BYTES",
    np.float32: "FP32",
}


def http_inputs(binary, names=None):
    out = []
    for name, value in tensors().items():
        if names and name not in names:
            continue
        i = httpclient.InferInput(name, list(value.shape), DTYPES[value.dtype.type])
        i.set_data_from_numpy(value, binary_data=binary)
        out.append(i)
    return out


def http_seeds():
    outputs = [
        httpclient.InferRequestedOutput("y", binary_data=True),
        httpclient.InferRequestedOutput("z", binary_data=False),
    ]
    for binary in (False, True):
        for label, kwargs in [
            ("plain", {}),
            ("outputs", {"outputs": outputs}),
            ("params", {"request_id": "r-1", "priority": 2, "timeout": 1000,
                        "parameters": {"sluice_cache": "skip"}}),
            ("ints", {"names": ["a", "x"]}),
        ]:
            names = kwargs.pop("names", None)
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                http_inputs(binary, names), **kwargs)
            if binary:
                write("http_binary", f"tritonclient-{label}",
                      struct.pack("<I", json_size or len(body)) + body)
            else:
                write("http_json", f"tritonclient-{label}", body)
                for kind, compress in ((0, gzip.compress), (1, zlib.compress)):
                    write("http_compressed", f"{kind}-tritonclient-{label}",
                          bytes([kind]) + compress(body))
    # Hand-written forms tritonclient does not send, and the attacks of issue 21.
    nested = {"inputs": [{"name": "x", "shape": [1, 3, 2], "datatype": "FP32",
                          "data": [[[0, 1], [2, 3], [4, 5]]]}]}
    write("http_json", "nested-data", json.dumps(nested))
    deep = '{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":' + \
        "[" * 120 + "0" + "]" * 120 + "}]}"
    write("http_json", "deep-120-levels", deep)
    write("http_json", "shape-claims-1e12",
          '{"inputs":[{"name":"x","shape":[1000000,1000000],"datatype":"FP32","data":[0]}]}')
    write("http_json", "shape-negative",
          '{"inputs":[{"name":"x","shape":[-1,2],"datatype":"FP32","data":[0,1]}]}')
    write("http_json", "bool-and-bytes",
          '{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","data":["a","\\u0000"]},'
          '{"name":"q","shape":[2],"datatype":"BOOL","data":[true,false]}]}')
    write("http_json", "shared-memory",
          '{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32",'
          '"parameters":{"shared_memory_region":"r"}}]}')
    write("http_json", "empty-inputs", '{"inputs":[],"outputs":[{"name":"y"}]}')
    write("http_json", "many-empty-inputs",
          '{"inputs":[' + ",".join(['{"name":"","shape":[],"datatype":"FP32","data":[]}'] * 200)
          + "]}")
    write("http_binary", "size-past-body",
          struct.pack("<I", 80) + b'{"inputs":[{"name":"x","shape":[1,1,2],"datatype":"FP32",'
          b'"parameters":{"binary_data_size":999999}}]}')
    write("http_binary", "header-past-body", struct.pack("<I", 1 << 30) + b"{}")
    # gzip and deflate bombs: 4 MiB of zeros (past the target's 1 MiB limit).
    zeros = bytes(4 << 20)
    write("http_compressed", "0-gzip-bomb", b"\x00" + gzip.compress(zeros, 9))
    write("http_compressed", "1-deflate-bomb", b"\x01" + zlib.compress(zeros, 9))
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    write("http_compressed", "1-raw-deflate",
          b"\x01" + raw.compress(b'{"inputs":[]}') + raw.flush())
    write("http_compressed", "0-truncated", b"\x00" + gzip.compress(b'{"inputs":[]}')[:12])


def raw_seeds():
    # Layout: datatype index (fuzzing's DataType::all order), batching, rank, dims, body.
    f32, bytes_, i8 = 10, 13, 5
    write("http_raw", "fp32-batched", bytes([f32, 1, 1, 8]) + np.arange(8, dtype="<f4").tobytes())
    write("http_raw", "fp32-variable", bytes([f32, 0, 2, 0xFF, 2]) + bytes(24))
    write("http_raw", "bytes-one-element", bytes([bytes_, 1, 1, 1]) + "a jpeg's bytes".encode())
    write("http_raw", "int8-two-variable", bytes([i8, 0, 2, 0xFF, 0xFF]) + bytes(4))
    write("http_raw", "fp32-mismatch", bytes([f32, 0, 1, 3]) + bytes(8))


def bytes_seeds():
    for label, values in [
        ("text", ["héllo", "", "a longer element"]),
        ("binary", [b"\x00\xff", b"\x00", b""]),
        ("one", [b"x" * 300]),
    ]:
        arr = np.array(values, dtype=object)
        write("bytes_elements", f"serialized-{label}", bytes([1]) + serialize_byte_tensor(arr).tobytes())
    write("bytes_elements", "rows-2x2", bytes([2]) + serialize_byte_tensor(
        np.array([b"a", b"b", b"c", b"d"], dtype=object)).tobytes())
    write("bytes_elements", "prefix-past-end", bytes([1]) + struct.pack("<I", 0xFFFFFFFF) + b"ab")
    write("bytes_elements", "truncated-prefix", bytes([1, 3, 0]))


def grpc_inputs(names=None):
    out = []
    for name, value in tensors().items():
        if names and name not in names:
            continue
        i = grpcclient.InferInput(name, list(value.shape), DTYPES[value.dtype.type])
        i.set_data_from_numpy(value)
        out.append(i)
    return out


def grpc_request(inputs, outputs=None, **kw):
    args = dict(model_name="fuzz", inputs=inputs, model_version="", request_id="",
                outputs=outputs, sequence_id=0, sequence_start=False, sequence_end=False,
                priority=0, timeout=None, parameters=None)
    args.update(kw)
    return grpc_utils._get_inference_request(**args)


def grpc_seeds():
    messages = {
        "tritonclient-raw": grpc_request(grpc_inputs()),
        "tritonclient-outputs": grpc_request(
            grpc_inputs(["x"]), outputs=[grpcclient.InferRequestedOutput("y")],
            request_id="r-7", priority=1, timeout=5000, model_version="1"),
        "tritonclient-params": grpc_request(
            grpc_inputs(["a"]), parameters={"sluice_cache": "refresh"}),
    }
    typed = service_pb2.ModelInferRequest(model_name="fuzz")
    for name, shape, datatype, field, values in [
        ("a", [1, 4], "INT32", "int_contents", [1, -2, 3, 2**31 - 1]),
        ("b", [1, 4], "FP64", "fp64_contents", [0.5, -1e300, 0, 3]),
        ("s", [1, 2], "BYTES", "bytes_contents", [b"abc", b""]),
        ("q", [3], "BOOL", "bool_contents", [True, False, True]),
        ("u", [2], "UINT64", "uint64_contents", [0, 2**64 - 1]),
    ]:
        t = typed.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(t.contents, field).extend(values)
    messages["typed-contents"] = typed
    empty = service_pb2.ModelInferRequest(model_name="fuzz")
    for _ in range(300):
        empty.inputs.add()
    messages["many-empty-inputs"] = empty
    outs = service_pb2.ModelInferRequest(model_name="fuzz")
    for _ in range(300):
        outs.outputs.add()
    messages["many-empty-outputs"] = outs
    claim = service_pb2.ModelInferRequest(model_name="fuzz")
    claim.inputs.add(name="x", datatype="FP32", shape=[10**6, 10**6])
    claim.raw_input_contents.append(b"\x00" * 8)
    messages["shape-claims-1e12"] = claim
    mismatch = grpc_request(grpc_inputs(["x", "a"]))
    del mismatch.raw_input_contents[1]
    messages["raw-count-mismatch"] = mismatch
    for label, message in messages.items():
        data = message.SerializeToString()
        write("grpc_infer", label, data)
        frame = b"\x00" + struct.pack(">I", len(data)) + data
        write("grpc_frames", f"7-{label}", bytes([7]) + frame)
    one = messages["tritonclient-raw"].SerializeToString()
    stream = b"".join(b"\x00" + struct.pack(">I", len(one)) + one for _ in range(3))
    write("grpc_frames", "1-three-messages-bytewise", bytes([1]) + stream)
    write("grpc_frames", "200-three-messages", bytes([200]) + stream)
    write("grpc_frames", "64-compressed-flag", bytes([64]) + b"\x01" + stream[1:])
    write("grpc_frames", "64-truncated", bytes([64]) + stream[:-3])
    write("grpc_frames", "64-length-past-limit", bytes([64]) + b"\x00\xff\xff\xff\xff" + one)


def config_seeds():
    for model in sorted(MODELS.iterdir()):
        if (model / "config.pbtxt").is_file():
            write("model_config", f"0-{model.name}.pbtxt", b"\x00" + (model / "config.pbtxt").read_bytes())
        if (model / "config.json").is_file():
            write("model_config", f"1-{model.name}.json", b"\x01" + (model / "config.json").read_bytes())
    write("model_config", "0-thread-bomb", "\x00" + 'name: "m"\ninstance_group [{count: 4294967295}]\n'
          'input [{name: "x" data_type: TYPE_FP32 dims: [1]}]\noutput [{name: "y" data_type: TYPE_FP32 dims: [1]}]')
    write("model_config", "0-queue-delay-max", "\x00" + 'max_batch_size: 8\ndynamic_batching '
          '{ max_queue_delay_microseconds: 18446744073709551615 priority_levels: 4 }')
    write("model_config", "0-absolute-filename", "\x00" + 'default_model_filename: "/dev/zero"')
    write("model_config", "0-deep-nesting", "\x00" + "a {" * 150 + "}" * 150)
    write("model_config", "0-map-and-strings", "\x00" + 'parameters [{ key: "k" value: { string_value: '
          '"a" \'b\' "\\x41\\101\\n" } }, { key: 7 }]\nversion_policy: < specific < versions: [1, 2] > >')
    write("model_config", "1-deep-json", "\x01" + '{"input":' + "[" * 200 + "]" * 200 + "}")


def onnx_seeds():
    for model in ("mixed", "cnn", "digits"):
        write("onnx_model", model, (MODELS / model / "1" / "model.onnx").read_bytes())
    write("onnx_model", "truncated", (MODELS / "cnn" / "1" / "model.onnx").read_bytes()[:100])


def load_seeds():
    mixed = (MODELS / "mixed" / "1" / "model.onnx").read_bytes()
    config = (MODELS / "digits" / "config.json").read_text()
    b64 = base64.b64encode(mixed).decode()
    for label, name, params in [
        ("files-and-config", "up", {"config": json.dumps({"backend": "onnxruntime"}),
                                    "file:1/model.onnx": b64}),
        ("config-only", "digits", {"config": config}),
        ("dotdot-file", "up", {"config": "{}", "file:../../escape.onnx": b64}),
        ("absolute-file", "up", {"config": "{}", "file:/tmp/x/model.onnx": b64}),
        ("trailing-slash", "up", {"config": "{}", "file:1/": b64}),
        ("file-under-file", "up", {"config": "{}", "file:1": b64, "file:1/model.onnx": b64}),
        ("absolute-default-filename", "up",
         {"config": json.dumps({"default_model_filename": "/dev/zero"}), "file:1/model.onnx": b64}),
        ("bad-base64", "up", {"config": "{}", "file:1/model.onnx": "not base64!"}),
        ("pbtxt-upload", "up", {"file:config.pbtxt": base64.b64encode(b"a {" * 1000).decode(),
                                "file:1/model.onnx": b64}),
        ("thread-bomb", "up", {"config": json.dumps(
            {"instance_group": [{"count": 4294967295}]}), "file:1/model.onnx": b64}),
    ]:
        write("repository_load", label, f"{name}\n" + json.dumps({"parameters": params}))
    for label, name in [("dotdot-name", ".."), ("slash-name", "a/b"), ("hidden-name", ".x"),
                        ("nul-name", "a\x00b"), ("empty-name", "")]:
        write("repository_load", label, f"{name}\n" + json.dumps({"parameters": {"config": "{}"}}))


if __name__ == "__main__":
    http_seeds()
    raw_seeds()
    bytes_seeds()
    grpc_seeds()
    config_seeds()
    onnx_seeds()
    load_seeds()
    for target in sorted(CORPUS.iterdir()):
        print(target.name, len(list(target.iterdir())))
