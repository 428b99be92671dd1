"""Process lifecycle: SIGTERM lets accepted requests finish (queued ones included) and
exits 0; logs can be JSON; --help documents every flag with its environment variable."""

import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import onnx
import requests
from onnx import TensorProto, helper

from conftest import BIN, EXAMPLES, Server


def make_slow_model(root, steps=8, rows=512, size=1024):
    """A tiny input broadcast to rows x size, then `steps` MatMuls with one shared
    size x size weight, then a mean over the rows: a few hundred ms per request on
    tract, so requests are still running and queued when the signal arrives."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
             helper.make_tensor("zeros", TensorProto.FLOAT, [rows, size], np.zeros(rows * size, np.float32))]
    nodes = [helper.make_node("Add", ["x", "zeros"], ["h"])]
    prev = "h"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], axes=[0], keepdims=1))
    graph = helper.make_graph(nodes, "slow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "slow" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "slow" / "1" / "model.onnx"))
    return size


def test_sigterm_finishes_accepted_requests_and_exits_zero(tmp_path):
    size = make_slow_model(tmp_path)
    s = Server(tmp_path)
    x = np.ones((1, size), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, size], "datatype": "FP32", "data": x.flatten().tolist()}]}
    results = []

    def send():
        try:
            r = requests.post(f"{s.base}/v2/models/slow/infer", json=body, timeout=60)
            results.append(r.status_code)
        except requests.RequestException as e:  # noqa: BLE001 - recorded and asserted below
            results.append(repr(e))

    t0 = time.monotonic()
    send()
    one_request = time.monotonic() - t0
    results.clear()
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    assert one_request > 0.05, f"the slow model is too fast ({one_request:.3f}s) for this test to mean anything"
    time.sleep(one_request / 2)  # all four accepted: one running, three queued
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    code = s.proc.wait(60)
    assert results == [200, 200, 200, 200], (results, s.log())
    assert code == 0, s.log()
    assert "shutting down" in s.log()
    # And nothing listens any more.
    try:
        requests.get(f"{s.base}/v2/health/live", timeout=2)
        raise AssertionError("server still answering after exit")
    except requests.ConnectionError:
        pass


def test_json_logs(tmp_path, request):
    from conftest import EXAMPLES
    s = Server(EXAMPLES, "--log-format", "json")
    try:
        records = [json.loads(line) for line in s.lines if line.startswith("{")]
        assert records, s.log()
        assert any(r["fields"].get("message", "").startswith("HTTP server listening") for r in records)
        assert all("level" in r and "timestamp" in r for r in records)
    finally:
        assert s.stop() == 0


def test_help_documents_flags_and_env_vars():
    out = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag, env in [("--model-repository", "SLUICE_MODEL_REPOSITORY"), ("--http-port", "SLUICE_HTTP_PORT"),
                      ("--max-body-bytes", "SLUICE_MAX_BODY_BYTES"), ("--strict-readiness", "SLUICE_STRICT_READINESS")]:
        assert flag in out and env in out, flag
    bad = subprocess.run([str(BIN), "serve", "--model-repository", "/nonexistent/repo", "--http-port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "not a folder" in bad.stderr


def test_connections_past_the_cap_wait_for_a_free_slot(start_server):
    import socket

    s = start_server(EXAMPLES, "--http-max-connections", "2")
    port = s.http_port
    request = f"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def connect():
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(request)
        return c

    # Two kept-alive connections, each answered, hold both slots.
    held = [connect(), connect()]
    for c in held:
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
    # A third connects (the kernel's backlog takes it) but is not served yet...
    third = connect()
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(4096)
    # ...until a slot frees: then it is answered, nothing lost.
    held.pop().close()
    third.settimeout(10)
    assert third.recv(4096).startswith(b"HTTP/1.1 200")
    for c in held + [third]:
        c.close()
