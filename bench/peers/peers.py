"""Starts Sluice and each peer server on loopback, serving the same ONNX models
(`examples/models/{mlp,cnn}`), each from its own venv made by `bench/peers/install.sh`.

    python3 bench/peers/peers.py start fastapi --http-port 8100        # until Ctrl-C
    python3 bench/peers/peers.py start triton --http-port 8100 --grpc-port 8101 --cpus 0

Peers (what each serves, and how requests reach the engine):
- sluice:   `target/release/sluice serve` on a repository where both models run on ONNX
            Runtime (mlp: 2 instances, dynamic batching as in examples/models/mlp; cnn: no
            config, max_batch_size 4, 1 instance).
- fastapi:  bench/peers/fastapi_server.py (v2 HTTP, JSON tensors), one uvicorn worker.
- grpc:     bench/peers/grpc_server.py (v2 gRPC, raw contents), 8 handler threads.
- triton:   Triton 2.51 from nvidia-pytriton's wheel, Python backend (triton_model.py
            calling onnxruntime), the same batching settings as Sluice's repository.
- mlserver: MLServer with mlserver_runtime.py (onnxruntime), default settings.
Every engine session uses 1 intra-op and 1 inter-op thread.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "bench" / "out"
VENVS = OUT / "venvs"
PEERS = ["sluice", "fastapi", "grpc", "triton", "mlserver"]
MODELS = ["mlp", "cnn"]
# The protocol `sluice bench` uses for each peer (what the peer speaks; both for Sluice).
PROTOCOL = {"fastapi": "http-json", "grpc": "grpc", "triton": "http-json",
            "mlserver": "http-json", "sluice": "http-json"}

MODEL_IO = {
    "mlp": {"input": ("input", [784]), "output": ("probabilities", [10]),
            "max_batch_size": 32, "instances": 2, "dynamic_batching": True},
    "cnn": {"input": ("image", [3, 32, 32]), "output": ("logits", [10]),
            "max_batch_size": 4, "instances": 1, "dynamic_batching": False},
}


def onnx_path(model):
    return ROOT / "examples" / "models" / model / "1" / "model.onnx"


def free_ports(n):
    """`n` distinct free ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def venv_python(name):
    py = VENVS / name / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} is missing: run bench/peers/install.sh {name}")
    return py


def site_packages(name):
    return next((VENVS / name / "lib").glob("python3*/site-packages"))


def pbtxt(model, platform_line, batching=True):
    io = MODEL_IO[model]
    (iname, idims), (oname, odims) = io["input"], io["output"]
    text = (f'name: "{model}"\n{platform_line}\nmax_batch_size: {io["max_batch_size"]}\n'
            f'input [ {{ name: "{iname}" data_type: TYPE_FP32 dims: {idims} }} ]\n'
            f'output [ {{ name: "{oname}" data_type: TYPE_FP32 dims: {odims} }} ]\n'
            f'instance_group [ {{ count: {io["instances"]} kind: KIND_CPU }} ]\n')
    if io["dynamic_batching"] and batching:
        text += "dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }\n"
    return text


def sluice_repo(batching=True):
    repo = OUT / "peers" / "sluice"
    shutil.rmtree(repo, ignore_errors=True)
    for m in MODELS:
        (repo / m / "1").mkdir(parents=True)
        shutil.copy(onnx_path(m), repo / m / "1" / "model.onnx")
        text = pbtxt(m, 'backend: "onnxruntime"', batching)
        text += 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        (repo / m / "config.pbtxt").write_text(text)
    return repo


def triton_repo(batching=True):
    base = OUT / "peers" / "triton"
    shutil.rmtree(base, ignore_errors=True)
    repo, backends = base / "models", base / "backends" / "python"
    for m in MODELS:
        (repo / m / "1").mkdir(parents=True)
        shutil.copy(onnx_path(m), repo / m / "1" / "model.onnx")
        shutil.copy(HERE / "triton_model.py", repo / m / "1" / "model.py")
        # The stub runs in the peer's venv (its `bin/activate` is sourced first).
        env_path = 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "%s" } }\n'
        (repo / m / "config.pbtxt").write_text(pbtxt(m, 'backend: "python"', batching) + env_path % (VENVS / "triton"))
    tritonserver = site_packages("triton") / "pytriton" / "tritonserver"
    shutil.copytree(tritonserver / "backends" / "python", backends)
    shutil.copy(tritonserver / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", backends)
    return tritonserver, repo, base / "backends"


def mlserver_dir(http_port, grpc_port, metrics_port):
    base = OUT / "peers" / "mlserver"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    shutil.copy(HERE / "mlserver_runtime.py", base / "mlserver_runtime.py")
    (base / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "debug": False}))
    for m in MODELS:
        (base / m).mkdir()
        shutil.copy(onnx_path(m), base / m / "model.onnx")
        io = MODEL_IO[m]
        (base / m / "model-settings.json").write_text(json.dumps({
            "name": m, "implementation": "mlserver_runtime.OnnxModel",
            "parameters": {"uri": "./model.onnx"},
            "inputs": [{"name": io["input"][0], "datatype": "FP32", "shape": [-1] + io["input"][1]}],
            "outputs": [{"name": io["output"][0], "datatype": "FP32", "shape": [-1] + io["output"][1]}]}))
    return base


def ort_library():
    py = ROOT / ".venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import onnxruntime, pathlib; print(sorted((pathlib.Path("
                          "onnxruntime.__file__).parent / 'capi').glob('libonnxruntime.so*'))[-1])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def command(peer, ports, repo=None, batching=True):
    """(argv, env, cwd) that start `peer` on `ports` (HTTP, gRPC, metrics), Sluice on
    `repo` when given; `batching=False` leaves out the models' dynamic batching."""
    http_port, grpc_port, metrics_port = ports
    env = dict(os.environ)
    models = [f"--model={m}={onnx_path(m)}" for m in MODELS]
    if peer == "sluice":
        binary = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
        env["ORT_DYLIB_PATH"] = ort_library()
        return ([str(binary), "serve", "--model-repository", str(repo or sluice_repo(batching)), "--http-address",
                 "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                 "--metrics-port", str(metrics_port), "--default-backend", "onnxruntime", "--log", "warn"], env, ROOT)
    if peer == "fastapi":
        return ([str(venv_python("fastapi")), str(HERE / "fastapi_server.py"), *models,
                 "--port", str(http_port)], env, ROOT)
    if peer == "grpc":
        return ([str(venv_python("grpc")), str(HERE / "grpc_server.py"), *models,
                 "--port", str(grpc_port)], env, ROOT)
    if peer == "triton":
        tritonserver, repo, backends = triton_repo(batching)
        sp = site_packages("triton")
        env["LD_LIBRARY_PATH"] = str(sp / "nvidia_pytriton.libs")
        env["PYTHONPATH"] = f"{backends / 'python'}:{sp}"
        return ([str(tritonserver / "bin" / "tritonserver"), "--model-repository", str(repo),
                 "--backend-directory", str(backends), "--http-address", "127.0.0.1",
                 "--http-port", str(http_port), "--grpc-address", "127.0.0.1",
                 "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
                 "--allow-metrics", "false",
                 "--log-verbose", "0"], env, ROOT)
    if peer == "mlserver":
        base = mlserver_dir(http_port, grpc_port, metrics_port)
        env["PYTHONPATH"] = str(base)
        return ([str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(base)], env, base)
    raise SystemExit(f"unknown peer {peer} (known: {', '.join(PEERS)})")


class Peer:
    """A running peer; `url(protocol)` is what `sluice bench --url` takes."""

    def __init__(self, name, cpus=None, log=None, repo=None, ready_models=None, batching=True):
        self.name = name
        self.ready_models = ready_models or MODELS
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        argv, env, cwd = command(name, (self.http_port, self.grpc_port, self.metrics_port), repo, batching)
        if cpus is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", cpus, *argv]
        self.log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise

    def url(self, protocol):
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"127.0.0.1:{port}"

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (see its log)")
            if PROTOCOL[self.name] == "grpc":
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.grpc_port)) == 0:
                        return
            elif all(self.model_ready(m) for m in self.ready_models):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def model_ready(self, model):
        # Metadata can answer before the model does (MLServer): ask for readiness.
        try:
            url = f"http://127.0.0.1:{self.http_port}/v2/models/{model}/ready"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a peer and keep it running until Ctrl-C")
    s.add_argument("peer", choices=PEERS)
    s.add_argument("--cpus", help="taskset CPU list for the server, e.g. 0")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    peer = Peer(a.peer, a.cpus, log="/dev/stderr")
    print(f"{a.peer}: HTTP 127.0.0.1:{peer.http_port}, gRPC 127.0.0.1:{peer.grpc_port}, "
          f"bench with --protocol {PROTOCOL[a.peer]}", flush=True)
    try:
        peer.proc.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        peer.stop()


if __name__ == "__main__":
    sys.exit(main())
