"""Regression tests for the defects found by attacking the server from outside
(issue 21): idle and slowloris connections, files outside the repository, config
bounds, failed loads of new names, and client mistakes answered as 400 JSON."""

import base64
import json
import os
import shutil
import socket
import threading
import time

import pytest
import requests
import tritonclient.grpc as grpcclient

from conftest import EXAMPLES, Server

MLP_CONFIG = {"name": "mlp", "backend": "tract", "max_batch_size": 8,
              "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [784]}],
              "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]}


def load(server, name, parameters=None):
    body = {"parameters": parameters} if parameters is not None else None
    return requests.post(f"{server.base}/v2/repository/models/{name}/load", json=body, timeout=60)


def test_idle_and_slowloris_connections_cannot_lock_out_other_clients():
    s = Server(EXAMPLES, "--http-max-connections", "8", "--http-header-read-timeout", "1")
    sockets, stop = [], threading.Event()
    try:
        addr = ("127.0.0.1", s.http_port)
        # Four connections that never send a byte, four that send a header byte at a time.
        for _ in range(4):
            sockets.append(socket.create_connection(addr))
        slow = [socket.create_connection(addr) for _ in range(4)]
        sockets += slow

        def trickle():
            head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
            for i in range(len(head)):
                if stop.wait(0.2):
                    return
                for sock in slow:
                    try:
                        sock.send(head[i:i + 1])
                    except OSError:
                        pass

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(0.5)  # all eight slots are taken
        started = time.monotonic()
        r = requests.get(s.base + "/v2/health/live", timeout=30)
        assert r.status_code == 200
        assert time.monotonic() - started < 30
        # The server closed the silent connections itself.
        for sock in sockets[:4]:
            sock.settimeout(30)
            assert sock.recv(1024) == b""
        stop.set()
        thread.join()
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        assert s.stop() == 0, s.log()


def test_keep_alive_connections_are_still_served_within_the_timeout():
    s = Server(EXAMPLES, "--http-header-read-timeout", "2")
    try:
        with requests.Session() as session:
            for _ in range(3):
                assert session.get(s.base + "/v2/health/live", timeout=10).status_code == 200
                time.sleep(0.5)
    finally:
        assert s.stop() == 0, s.log()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "mlp", root / "mlp")
    (tmp_path / "secret.onnx").write_bytes(b"secret")
    return root


def auto_complete_model(root, name, config):
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps(config))


def test_model_files_outside_the_version_folder_are_refused(repo):
    auto_complete_model(repo, "zero", {"default_model_filename": "/dev/zero"})
    auto_complete_model(repo, "absolute", {"default_model_filename": str(repo.parent / "secret.onnx")})
    auto_complete_model(repo, "parent", {"default_model_filename": "../../../secret.onnx"})
    auto_complete_model(repo, "device", {})
    os.symlink("/dev/zero", repo / "device" / "1" / "model.onnx")
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    try:
        # Symlinks inside the repository are followed (they are the operator's, and
        # Kubernetes volumes are made of them), but never to something not a file.
        for name, expect in [("zero", "version folder"), ("absolute", "version folder"),
                             ("parent", "version folder"), ("device", "not a regular file")]:
            started = time.monotonic()
            r = load(s, name)
            assert r.status_code == 400, (name, r.text)
            assert expect in r.json()["error"], (name, r.text)
            assert time.monotonic() - started < 10, name
        # Models of the repository that fail stay listed as failed (strict readiness).
        assert requests.get(s.base + "/v2/models/mlp/ready", timeout=10).status_code == 200
    finally:
        assert s.stop() == 0, s.log()


def test_numeric_config_fields_are_bounded(repo):
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    try:
        for override, expect in [
            ({"instance_group": [{"count": 4294967295}]}, "at most 256"),
            ({"max_batch_size": 2147483647}, "at most 65536"),
            ({"dynamic_batching": {"max_queue_delay_microseconds": 18446744073709551615}},
             "at most 60000000"),
            ({"dynamic_batching": {"priority_levels": 18446744073709551615}}, "at most 1024"),
            ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 4294967295}}},
             "at most 1048576"),
            ({"dynamic_batching": {"default_queue_policy":
                                   {"default_timeout_microseconds": 18446744073709551615}}},
             "too large"),
        ]:
            config = dict(MLP_CONFIG, **override)
            r = load(s, "mlp", {"config": json.dumps(config)})
            assert r.status_code == 400, (override, r.text)
            assert expect in r.json()["error"], (override, r.text)
        # A request timeout of 2^64-1 µs is cut to the limit, not an overflow.
        body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                            "data": [0.0] * 784}],
                "parameters": {"timeout": 18446744073709551615}}
        r = requests.post(s.base + "/v2/models/mlp/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert requests.get(s.base + "/v2/health/ready", timeout=10).status_code == 200
    finally:
        assert s.stop() == 0, s.log()


def test_failed_loads_of_new_names_keep_the_server_ready_and_the_index_bounded(repo):
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    try:
        grpc = grpcclient.InferenceServerClient(s.grpc_url)
        before = requests.post(s.base + "/v2/repository/index", timeout=10).json()
        garbage = base64.b64encode(b"not an onnx file").decode()
        for i in range(30):
            r = load(s, f"ghost{i}", {"config": json.dumps(dict(MLP_CONFIG, name=f"ghost{i}")),
                                      "file:1/model.onnx": garbage})
            assert r.status_code >= 400 and "error" in r.json(), r.text
        # A trailing slash names a folder: the client's mistake, not the server's.
        r = load(s, "slash", {"config": json.dumps(dict(MLP_CONFIG, name="slash")),
                              "file:1/": garbage})
        assert r.status_code == 400, r.text
        assert "file:1/" in r.json()["error"]
        assert requests.get(s.base + "/v2/health/ready", timeout=10).status_code == 200
        assert grpc.is_server_ready()
        after = requests.post(s.base + "/v2/repository/index", timeout=10).json()
        assert after == before
    finally:
        assert s.stop() == 0, s.log()


def test_http_layer_errors_are_json():
    s = Server(EXAMPLES)
    try:
        r = requests.delete(s.base + "/v2/health/ready", timeout=10)
        assert r.status_code == 405 and "error" in r.json(), r.text
        r = requests.get(s.base + "/v2/models/%FF%FE", timeout=10)
        assert r.status_code in (400, 404) and "error" in r.json(), r.text
    finally:
        assert s.stop() == 0, s.log()
