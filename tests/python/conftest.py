"""Shared fixtures: start a real `sluice serve` process on free ports and stop it.

The binary is `target/release/sluice` (built by scripts/test.sh); set SLUICE_BIN to
use another. Servers bind port 0; the chosen ports are read from the JSON file the
server writes once it listens (`serve --ready-file PATH`), not from its log.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
EXAMPLES = ROOT / "examples" / "models"
BROKEN = ROOT / "tests" / "data" / "broken_models"


class Server:
    """A running `sluice serve` process."""

    def __init__(self, repository, *extra_args, grpc=None, address="127.0.0.1", http_port=0, grpc_port=0):
        self.repository = Path(repository)
        args = [str(BIN), "serve", "--model-repository", str(repository),
                "--http-address", address, "--http-port", str(http_port), "--log", "info"]
        if grpc is None:
            grpc = _supports_grpc()
        if grpc:
            args += ["--grpc-port", str(grpc_port)]
        if "--allow-metrics" not in extra_args:
            args += ["--metrics-port", "0"]
        self._ready_dir = tempfile.mkdtemp(prefix="sluice-ready-")
        ready_file = Path(self._ready_dir) / "ready.json"
        args += ["--ready-file", str(ready_file)]
        args += list(extra_args)
        self.lines = []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _STARTED.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = wait_for_ready_file(ready_file, self.proc, timeout=120)
        if self.ready is None:
            code = self.proc.poll()
            if code is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self._ready_dir, ignore_errors=True)
            what = "did not start" if code is None else f"exited with {code}"
            raise RuntimeError(f"sluice {what}:\n" + "\n".join(self.lines))
        self.ports = {
            name: self.ready[key]["port"]
            for name, key in (("HTTP", "http"), ("gRPC", "grpc"), ("metrics", "metrics"))
            if self.ready.get(key)
        }
        self.http_port = self.ports["HTTP"]
        self.grpc_port = self.ports.get("gRPC")
        self.metrics_port = self.ports.get("metrics")
        self.address = address
        self.http_url = f"{address}:{self.http_port}"
        self.base = f"http://{self.http_url}"
        self.grpc_url = f"{address}:{self.grpc_port}" if self.grpc_port else None

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self):
        return "\n".join(self.lines)

    def stop(self, timeout=30):
        """SIGTERM, wait for a clean exit, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
            finally:
                shutil.rmtree(self._ready_dir, ignore_errors=True)
        shutil.rmtree(self._ready_dir, ignore_errors=True)
        return self.proc.returncode


def wait_for_ready_file(path, proc, timeout):
    """The parsed ready file of `proc` once it exists; None if `proc` exits first or
    `timeout` seconds pass. The server renames the file into place whole, so a file
    that exists is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    return None


_GRPC = None

# Every server process any test started: whatever a test does (an assertion before its
# own stop, a crash of the test process' fixtures), none outlives the session.
_STARTED = []


def pytest_sessionfinish(session, exitstatus):
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _supports_grpc():
    global _GRPC
    if _GRPC is None:
        out = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True).stdout
        _GRPC = "--grpc-port" in out
    return _GRPC


@pytest.fixture(scope="session")
def server():
    """One server on the example models for the whole session."""
    s = Server(EXAMPLES)
    yield s
    code = s.stop()
    assert code == 0, f"sluice exited with {code}:\n{s.log()}"


@pytest.fixture
def start_server():
    """Factory for servers with their own repository or flags; all stopped at the end."""
    started = []

    def start(repository, *extra_args):
        s = Server(repository, *extra_args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# ---- Execution gates: requests held in the engine until the test lets them go ----------

GATED_WIDTH = 4


def make_gated_model(repository, gates, name="gated"):
    """A one-instance model `name` (y = x + 1 on FP32 [1, 4]) whose every run waits for a
    byte on the named pipe `gates/name` (the server's `--test-execution-gates`): a test
    decides exactly when a request leaves the engine, on any machine."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    repository, gates = Path(repository), Path(gates)
    shape = [1, GATED_WIDTH]
    one = helper.make_tensor("one", TensorProto.FLOAT, shape, np.ones(GATED_WIDTH, np.float32))
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repository / name / "1").mkdir(parents=True)
    onnx.save(model, str(repository / name / "1" / "model.onnx"))
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "tract"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1, 4] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1, 4] }]\n'
        'instance_group [{ count: 1 }]\n')
    gates.mkdir(parents=True, exist_ok=True)
    os.mkfifo(gates / name)
    return Gate(gates / name)


def gated_body(value=1.0):
    return {"inputs": [{"name": "x", "shape": [1, GATED_WIDTH], "datatype": "FP32",
                        "data": [value] * GATED_WIDTH}]}


class Gate:
    """The test's end of an execution gate: each byte written lets one run through."""

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None

    def release(self, runs=1):
        if self._fd is None:
            # The server holds the pipe open read-write once the model is loaded, so
            # this open never blocks; before that it fails at once (ENXIO).
            self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(self._fd, b"g" * runs)

    def open_for_good(self):
        """Lets every later run through (until the pipe's buffer of 64 KiB is used)."""
        try:
            self.release(60_000)
        except OSError:
            pass  # the server is gone or never loaded the model

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def metric(server, name, **labels):
    """The value of one sample of the server's /metrics (0 when absent)."""
    import requests

    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, val = line.rpartition(" ")
            if all(w in head for w in want):
                return float(val)
    return 0.0


def wait_for_queue(server, model, running, queued, timeout=60):
    """Waits until `model` has `queued` requests in its queue and `running` more in the
    engine (in flight counts both); fails the test if it never happens."""
    def reached():
        q = metric(server, "sluice_inference_queue_size", model=model)
        f = metric(server, "sluice_inference_in_flight", model=model)
        return q == queued and f == queued + running
    assert wait_until(reached, timeout=timeout), (
        f"{model}: never {running} running and {queued} queued:\n{server.log()[-3000:]}")
