"""Model lifecycle timings (issue 7), in one run on one machine:

1. Load time of each example model and of ResNet-50 (`models-bench/resnet50`, from
   `scripts/make_bench_models.py`; once on ONNX Runtime, once on tract): the wall time of tritonclient's `load_model` in
   explicit mode (read, engine load, instances, batch-plan measurement, warmup) and the
   server's own `load_duration_ms` from the repository index, against the peer: creating
   an ONNX Runtime `InferenceSession` for the same file in this Python process.
2. Poll mode: time from a new version's file appearing on disk (atomic rename) to the
   first response answered by it, with `--repository-poll-secs 0.5`.
3. First request to an evicted model (`--model-memory-budget 1`: only one model stays
   loaded, so each switch evicts): its latency against a request to the loaded model.

Usage (from the repository root, after `cargo build --release`):

    .venv/bin/python bench/lifecycle.py --rounds 5
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import requests
import tritonclient.http as httpclient
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import Server  # noqa: E402

EXAMPLES = ROOT / "examples" / "models"
BENCH = ROOT / "models-bench"


def median(xs):
    return statistics.median(xs)


def index(server):
    return {(r["name"], r.get("version")): r
            for r in requests.post(server.base + "/v2/repository/index", timeout=30).json()}


def load_times(rounds):
    tmp = Path(tempfile.mkdtemp())
    repo = tmp / "repo"
    shutil.copytree(EXAMPLES, repo)
    resnet = BENCH / "resnet50"
    if resnet.is_dir():
        shutil.copytree(resnet, repo / "resnet50")
        # The same file on tract (the config names no backend, so ONNX Runtime takes it).
        shutil.copytree(resnet, repo / "resnet50_tract")
        cfg = (resnet / "config.pbtxt").read_text().replace('name: "resnet50"', 'name: "resnet50_tract"')
        (repo / "resnet50_tract" / "config.pbtxt").write_text(cfg + 'backend: "tract"\n')
    s = Server(repo, "--model-control-mode", "explicit")
    rows = []
    try:
        http = httpclient.InferenceServerClient(s.http_url, connection_timeout=600, network_timeout=600)
        for name in sorted(p.name for p in repo.iterdir() if p.is_dir()):
            walls, server_ms, mem = [], [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                http.load_model(name)
                walls.append((time.perf_counter() - t0) * 1e3)
                row = index(s)[(name, "1")]
                server_ms.append(row["load_duration_ms"])
                mem.append(row["memory_bytes"])
                backend = http.get_model_config(name)["backend"]
                http.unload_model(name)
            peer = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
                peer.append((time.perf_counter() - t0) * 1e3)
            size = (repo / name / "1" / "model.onnx").stat().st_size
            rows.append((name, backend, size, median(walls), median(server_ms), median(peer), median(mem)))
    finally:
        s.stop()
        shutil.rmtree(tmp)
    print("| model | backend | file MiB | load_model wall ms | server load_duration ms | ORT session ms (peer) | wall / peer | memory MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backend, size, wall, server, peer, mem in rows:
        print(f"| {name} | {backend} | {size / 2**20:.2f} | {wall:.1f} | {server:.1f} | {peer:.1f} | "
              f"{wall / peer:.2f}× | {mem / 2**20:.1f} |")


def tagged(seed, width=64):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((width, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tagged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def poll_times(rounds, interval=0.5):
    tmp = Path(tempfile.mkdtemp())
    repo = tmp / "repo"

    def write(version):
        d = repo / "polled" / str(version)
        d.mkdir(parents=True)
        (d / "model.onnx.tmp").write_bytes(tagged(version))
        (d / "model.onnx.tmp").rename(d / "model.onnx")

    write(1)
    (repo / "polled" / "config.json").write_text(json.dumps({"backend": "tract", "max_batch_size": 8}))
    s = Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", str(interval))
    times = []
    try:
        http = httpclient.InferenceServerClient(s.http_url)
        x = np.ones((1, 64), np.float32)
        inp = httpclient.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        for v in range(2, rounds + 2):
            time.sleep(interval * 1.3)  # start at a random-ish phase of the poll cycle
            write(v)
            t0 = time.perf_counter()
            while int(http.infer("polled", [inp]).get_response()["model_version"]) != v:
                time.sleep(0.005)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        s.stop()
        shutil.rmtree(tmp)
    print(f"\nPoll mode, --repository-poll-secs {interval}: new version on disk → first response from it, "
          f"{rounds} versions: median {median(times):.0f} ms, min {min(times):.0f}, max {max(times):.0f} "
          f"(= {median(times) / (interval * 1e3):.2f} poll intervals; two equal scans are needed)")


def eviction_times(rounds):
    tmp = Path(tempfile.mkdtemp())
    repo = tmp / "repo"
    names = ["mlp", "cnn"]
    for n in names:
        shutil.copytree(EXAMPLES / n, repo / n)
    if (BENCH / "resnet50").is_dir():
        shutil.copytree(BENCH / "resnet50", repo / "resnet50")
        names.append("resnet50")
    s = Server(repo, "--model-memory-budget", "1")
    shapes = {"mlp": ("input", [1, 784]), "cnn": ("image", [1, 3, 32, 32]), "resnet50": ("image", [1, 3, 224, 224])}
    rows = []
    try:
        http = httpclient.InferenceServerClient(s.http_url, connection_timeout=600, network_timeout=600)

        def call(name):
            iname, shape = shapes[name]
            inp = httpclient.InferInput(iname, shape, "FP32")
            inp.set_data_from_numpy(np.zeros(shape, np.float32), binary_data=True)
            t0 = time.perf_counter()
            http.infer(name, [inp])
            return (time.perf_counter() - t0) * 1e3

        for name in names:
            other = names[0] if name != names[0] else names[1]
            cold, warm = [], []
            for _ in range(rounds):
                call(other)  # loads `other`, evicting `name`
                cold.append(call(name))  # waits for the reload
                warm.append(median([call(name) for _ in range(5)]))
            rows.append((name, median(cold), median(warm)))
    finally:
        s.stop()
        shutil.rmtree(tmp)
    print("\n| model | first request after eviction ms | request to the loaded model ms | ratio |")
    print("|---|---|---|---|")
    for name, cold, warm in rows:
        print(f"| {name} | {cold:.1f} | {warm:.2f} | {cold / warm:.0f}× |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    load_times(a.rounds)
    poll_times(a.rounds)
    eviction_times(a.rounds)


if __name__ == "__main__":
    main()
