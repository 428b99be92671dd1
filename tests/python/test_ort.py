"""The ONNX Runtime backend end to end: where the library comes from and what happens
without it, backend choice per model, session options from config parameters, broken
models, and every example model on ONNX Runtime checked against Python's ONNX Runtime."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests
import tritonclient.http as httpclient

from conftest import BIN, BROKEN, EXAMPLES
from models import MODELS, V2_DTYPE, assert_close, random_inputs, reference

# The library inside the Python package, as Sluice's discovery would find it.
LIB = Path(onnxruntime.__file__).parent / "capi"


def platform(server, model):
    return requests.get(f"{server.base}/v2/models/{model}", timeout=10).json()["platform"]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def backend_of(server, model):
    """The backend the runtime picked, from the "model version is ready" log line."""
    for line in (ANSI.sub("", line) for line in server.lines):
        if "model version is ready" in line and re.search(rf'model="?{model}"?\b', line):
            m = re.search(r'backend="?(\w+)', line)
            return m.group(1) if m else None
    return None


def index(server):
    rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
    return {row["name"]: row for row in rows}


def infer_and_check(server, name, seeds=((1, 1), (2, 3))):
    client = httpclient.InferenceServerClient(url=server.http_url)
    try:
        for seed, rows in seeds:
            inputs = random_inputs(name, rows=rows, seed=seed)
            expected = reference(name, inputs)
            infer_inputs = []
            for iname, arr in inputs.items():
                i = httpclient.InferInput(iname, list(arr.shape), V2_DTYPE[arr.dtype.type])
                i.set_data_from_numpy(arr)
                infer_inputs.append(i)
            result = client.infer(name, infer_inputs)
            for oname in MODELS[name]["outputs"]:
                assert_close(result.as_numpy(oname), expected[oname], what=f"{name}.{oname} rows={rows}")
    finally:
        client.close()


def onnxruntime_repository(root):
    """A copy of the example repository in which every model asks for ONNX Runtime."""
    shutil.copytree(EXAMPLES, root)
    for cfg in root.glob("*/config.*"):
        text = cfg.read_text()
        text = re.sub(r'backend: "tract"', 'backend: "onnxruntime"', text)
        text = re.sub(r'"backend": "tract"', '"backend": "onnxruntime"', text)
        cfg.write_text(text)
    return root


def test_every_example_model_on_onnxruntime_matches_python(tmp_path, start_server):
    repo = onnxruntime_repository(tmp_path / "models")
    s = start_server(repo, "--ort-library", str(LIB))
    assert "ONNX Runtime loaded" in s.log(), s.log()
    for name in sorted(MODELS):
        assert backend_of(s, name) == "onnxruntime", f"{name}:\n{s.log()}"
        infer_and_check(s, name)
    assert platform(s, "cnn") == "onnxruntime_onnx"  # no config: the runtime's choice
    assert platform(s, "mixed") == "onnxruntime_onnx"  # the config's platform


def test_models_choose_their_backend(start_server):
    # The examples: mlp and digits say backend "tract"; mixed says platform
    # "onnxruntime_onnx"; cnn says nothing, so ONNX Runtime takes it when present.
    s = start_server(EXAMPLES, "--ort-library", str(LIB))
    assert backend_of(s, "mlp") == "tract"
    assert backend_of(s, "digits") == "tract"
    assert backend_of(s, "mixed") == "onnxruntime"
    assert backend_of(s, "cnn") == "onnxruntime"
    for name in ["cnn", "mixed"]:
        infer_and_check(s, name)


def test_without_the_library_the_server_runs_on_tract_and_says_why(start_server):
    s = start_server(EXAMPLES, "--ort-library", "/nonexistent/libonnxruntime.so.1.32.0")
    log = s.log()
    assert "ONNX Runtime is unavailable, models run on tract" in log, log
    assert "/nonexistent/libonnxruntime.so.1.32.0" in log and "does not exist" in log, log
    assert backend_of(s, "cnn") == "tract" and backend_of(s, "mixed") == "tract"
    assert platform(s, "cnn") == "tract_onnx"
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200
    infer_and_check(s, "cnn")


def test_ort_library_off_and_a_bogus_library(tmp_path, start_server):
    s = start_server(EXAMPLES, "--ort-library", "off")
    assert "ONNX Runtime is off" in s.log()
    assert backend_of(s, "cnn") == "tract"
    bogus = tmp_path / "libonnxruntime.so.1.32.0"
    bogus.write_bytes(b"not a shared library")
    s = start_server(EXAMPLES, "--ort-library", str(tmp_path))
    assert "cannot load ONNX Runtime" in s.log(), s.log()
    assert backend_of(s, "cnn") == "tract"


def test_default_backend_onnxruntime(start_server):
    s = start_server(EXAMPLES, "--default-backend", "onnxruntime", "--ort-library", str(LIB))
    assert requests.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200
    assert backend_of(s, "cnn") == "onnxruntime"
    # Without the library, asking for it by default is an error at start-up.
    r = subprocess.run([str(BIN), "serve", "--model-repository", str(EXAMPLES), "--http-port", "0",
                        "--grpc-port", "0", "--metrics-port", "0", "--default-backend", "onnxruntime",
                        "--ort-library", "/nonexistent/libonnxruntime.so"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--default-backend onnxruntime, but ONNX Runtime is unavailable" in r.stderr, r.stderr


TUNED = """\
name: "{name}"
backend: "onnxruntime"
max_batch_size: 32
input [ {{ name: "input", data_type: TYPE_FP32, dims: [ 784 ] }} ]
output [ {{ name: "probabilities", data_type: TYPE_FP32, dims: [ 10 ] }} ]
instance_group [ {{ count: 2, kind: KIND_CPU }} ]
{extra}
"""


def test_session_options_from_config_parameters(tmp_path, start_server):
    def model(name, extra):
        (tmp_path / name / "1").mkdir(parents=True)
        shutil.copy(EXAMPLES / "mlp" / "1" / "model.onnx", tmp_path / name / "1" / "model.onnx")
        (tmp_path / name / "config.pbtxt").write_text(TUNED.format(name=name, extra=extra))

    def param(k, v):
        return f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'

    model("tuned", param("intra_op_thread_count", "2") + param("inter_op_thread_count", "2")
          + param("execution_mode", "1") + param("enable_mem_arena", "0")
          + param("enable_mem_pattern", "false") + "optimization { graph { level: -1 } }\n")
    model("plain", param("graph_optimization_level", "disable"))
    model("badlevel", param("graph_optimization_level", "max"))
    model("badarena", param("enable_mem_arena", "sometimes"))
    s = start_server(tmp_path, "--ort-library", str(LIB), "--strict-readiness", "false")
    rows = index(s)
    assert rows["tuned"]["state"] == "READY" and rows["plain"]["state"] == "READY", rows
    assert rows["badlevel"]["state"] == "UNAVAILABLE"
    assert "graph_optimization_level" in rows["badlevel"]["reason"]
    assert "enable_mem_arena" in rows["badarena"]["reason"]
    x = np.random.default_rng(3).standard_normal((5, 784)).astype(np.float32)
    expected = reference("mlp", {"input": x})["probabilities"]
    client = httpclient.InferenceServerClient(url=s.http_url)
    for name in ["tuned", "plain"]:
        i = httpclient.InferInput("input", [5, 784], "FP32")
        i.set_data_from_numpy(x)
        assert_close(client.infer(name, [i]).as_numpy("probabilities"), expected, what=name)
    client.close()


def test_broken_models_on_onnxruntime_are_unavailable_with_reasons(start_server):
    s = start_server(BROKEN, "--default-backend", "onnxruntime", "--ort-library", str(LIB),
                     "--strict-readiness", "false")
    rows = index(s)
    assert rows["corrupt"]["state"] == "UNAVAILABLE"
    assert "ONNX Runtime cannot load the ONNX file" in rows["corrupt"]["reason"], rows["corrupt"]
    assert "'nope'" in rows["mismatch"]["reason"]
    assert rows["good"]["state"] == "READY" and backend_of(s, "good") == "onnxruntime"
    r = requests.post(f"{s.base}/v2/models/good/infer", json={"inputs": [
        {"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4]
    # A request the engine refuses is a 400 before it reaches ONNX Runtime, not a crash.
    r = requests.post(f"{s.base}/v2/models/good/infer", json={"inputs": [
        {"name": "x", "shape": [5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}, timeout=10)
    assert r.status_code == 400, r.text
    assert requests.get(f"{s.base}/v2/health/live", timeout=10).status_code == 200


@pytest.mark.parametrize("backend", ["onnxruntime", "tract"])
def test_the_same_request_on_both_backends_agrees(tmp_path, start_server, backend):
    repo = onnxruntime_repository(tmp_path / "models") if backend == "onnxruntime" else EXAMPLES
    args = ["--ort-library", str(LIB)] if backend == "onnxruntime" else ["--ort-library", "off"]
    s = start_server(repo, *args)
    assert backend_of(s, "digits") == backend
    # digits on its held-out split: the accuracy the README states.
    data = np.load(Path(EXAMPLES).parent / "data" / "digits_test.npz")
    client = httpclient.InferenceServerClient(url=s.http_url)
    i = httpclient.InferInput("input", list(data["x"][:64].shape), "FP32")
    i.set_data_from_numpy(data["x"][:64])
    labels = client.infer("digits", [i]).as_numpy("label")
    client.close()
    expected = reference("digits", {"input": data["x"][:64]})["label"]
    np.testing.assert_array_equal(labels, expected)
