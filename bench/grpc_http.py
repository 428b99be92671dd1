"""gRPC vs HTTP binary vs HTTP JSON: round-trip latency and requests/s, in one run.

Starts one `sluice serve` (release build) on a temporary repository holding the example
`mlp` (batch 1: 3 KB in, 40 B out) and a generated `image` model (GlobalAveragePool
over a [1, 3, 224, 224] FP32 input: 588 KiB in, 12 B out), then drives every
(model, protocol, clients) case against that same process with h2load (nghttp2's C
load generator, so the client is not the bottleneck): each client is one connection
with one request in flight, sending the same pre-built request for the whole run.
Rounds interleave the three protocols and the median round is reported, so ratios
between protocols come from the same conditions.

- gRPC: `inference.GRPCInferenceService/ModelInfer` over HTTP/2, inputs as
  `raw_input_contents` (what tritonclient.grpc sends).
- HTTP binary: `POST /v2/models/{m}/infer` over HTTP/1.1 with Triton's binary tensor
  extension both ways.
- HTTP JSON: the same with JSON `data` both ways.

Every payload is checked once before it is timed (outputs against numpy / ONNX Runtime),
because h2load counts HTTP statuses only and a gRPC error still arrives as HTTP 200.
Besides latency and throughput, the server's CPU time per request (from /proc, for the
measured part of each run) is reported: on shared cores it is steadier than throughput.

Needs the repository's test venv and `h2load` (Debian: `apt-get install nghttp2-client`):

    cargo build --release
    .venv/bin/python bench/grpc_http.py            # prints a Markdown table
    .venv/bin/python bench/grpc_http.py --rounds 5 --out bench/out/grpc_http.md
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import requests
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
LISTEN = re.compile(r"(HTTP|gRPC) server listening on [^:\s]+:(\d+)")
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def make_repository(root):
    shutil.copytree(ROOT / "examples" / "models" / "mlp", root / "mlp")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled4"]),
         helper.make_node("Flatten", ["pooled4"], ["pooled"], axis=1)],
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "image" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "image" / "1" / "model.onnx"))
    (root / "image" / "config.pbtxt").write_text(
        'name: "image"\nbackend: "tract"\nmax_batch_size: 8\n'
        'input [ { name: "image" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]\n'
        'output [ { name: "pooled" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')


class Server:
    def __init__(self, repository):
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--model-repository", str(repository), "--http-address", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log", "info"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ports = {}
        seen = threading.Event()

        def read():
            for line in self.proc.stderr:
                m = LISTEN.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(2))
                    if m.group(1) == "HTTP":
                        seen.set()
            seen.set()

        threading.Thread(target=read, daemon=True).start()
        if not seen.wait(120) or "HTTP" not in self.ports:
            self.proc.kill()
            sys.exit("sluice did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


class Case:
    """One model's request in the three encodings, with its expected output."""

    def __init__(self, model, inputs, output, expected):
        self.model, self.inputs, self.output, self.expected = model, inputs, output, expected

    def grpc_message(self):
        req = service_pb2.ModelInferRequest(model_name=self.model)
        for name, arr in self.inputs.items():
            t = req.inputs.add(name=name, datatype="FP32")
            t.shape.extend(arr.shape)
        req.raw_input_contents.extend(a.tobytes() for a in self.inputs.values())
        return req.SerializeToString()

    def http_binary(self):
        header = json.dumps({
            "inputs": [{"name": n, "shape": list(a.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in self.inputs.items()],
            "outputs": [{"name": self.output, "parameters": {"binary_data": True}}],
        }).encode()
        return header, header + b"".join(a.tobytes() for a in self.inputs.values())

    def http_json(self):
        return json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": "FP32",
                                       "data": a.flatten().tolist()} for n, a in self.inputs.items()]}).encode()


def cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 784)).astype(np.float32)
    sess = ort.InferenceSession(str(ROOT / "examples/models/mlp/1/model.onnx"), providers=["CPUExecutionProvider"])
    mlp = Case("mlp", {"input": x}, "probabilities", sess.run(["probabilities"], {"input": x})[0])
    img = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    image = Case("image", {"image": img}, "pooled", img.mean(axis=(2, 3)))
    return [("MLP, batch 1 (3 KB in)", mlp), ("image [1,3,224,224] FP32 (588 KiB in)", image)]


def verify(case, http_url, grpc_url):
    """Each payload once, checked, before it is timed."""
    def close(got, what):
        np.testing.assert_allclose(got.reshape(case.expected.shape), case.expected, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{case.model} {what}")

    with grpc.insecure_channel(grpc_url, options=[("grpc.max_receive_message_length", -1),
                                                  ("grpc.max_send_message_length", -1)]) as ch:
        raw = ch.unary_unary(INFER_PATH)(case.grpc_message(), timeout=60)
        reply = service_pb2.ModelInferResponse.FromString(raw)
        close(np.frombuffer(reply.raw_output_contents[0], np.float32), "gRPC")
    header, body = case.http_binary()
    r = requests.post(f"http://{http_url}/v2/models/{case.model}/infer", data=body, timeout=60,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    r.raise_for_status()
    n = int(r.headers["Inference-Header-Content-Length"])
    close(np.frombuffer(r.content[n:], np.float32), "HTTP binary")
    r = requests.post(f"http://{http_url}/v2/models/{case.model}/infer", data=case.http_json(), timeout=60,
                      headers={"Content-Type": "application/json"})
    r.raise_for_status()
    close(np.array(r.json()["outputs"][0]["data"], np.float32), "HTTP JSON")


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(args, url, data, headers, clients, h1, server_pid):
    cmd = ["h2load", "-D", str(args.duration), "--warm-up-time", str(args.warmup), "-c", str(clients),
           "-m", "1", "-t", "1", "-d", str(data)]
    if h1:
        cmd.append("--h1")
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # Server CPU over the whole run, warm-up included, scaled to the measured part.
    cpu = (cpu_seconds(server_pid) - cpu_before) * args.duration / (args.duration + args.warmup)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    if int(done.group(3)) or int(done.group(4)) or int(done.group(2)) == 0:
        sys.exit(f"h2load saw failures:\n{out}")
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    n = int(done.group(2))
    return {"rps": rps, "min": to_ms(m.group(1)), "mean": to_ms(m.group(3)), "sd": to_ms(m.group(4)),
            "max": to_ms(m.group(2)), "n": n, "cpu_us": cpu / n * 1e6}


def median(results):
    """The run with the median throughput."""
    return sorted(results, key=lambda r: r["rps"])[len(results) // 2]


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds measured per case and round")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per case and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--clients", default="1,8", help="concurrent clients to measure")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_repository(tmp / "models")
        server = Server(tmp / "models")
        http_url = f"127.0.0.1:{server.ports['HTTP']}"
        grpc_url = f"127.0.0.1:{server.ports['gRPC']}"
        rows = []
        try:
            for label, case in cases():
                verify(case, http_url, grpc_url)
                message = case.grpc_message()
                (tmp / "grpc.bin").write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
                header, body = case.http_binary()
                (tmp / "binary.bin").write_bytes(body)
                (tmp / "json.bin").write_bytes(case.http_json())
                infer = f"http://{http_url}/v2/models/{case.model}/infer"
                protocols = [
                    ("gRPC", f"http://{grpc_url}{INFER_PATH}", "grpc.bin",
                     ["content-type: application/grpc", "te: trailers"], False),
                    ("HTTP binary", infer, "binary.bin",
                     ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(header)}"],
                     True),
                    ("HTTP JSON", infer, "json.bin", ["Content-Type: application/json"], True),
                ]
                for clients in [int(c) for c in args.clients.split(",")]:
                    # Rounds interleave the protocols, so a disturbance on this shared
                    # machine hits all three alike; the median round is reported.
                    runs = {name: [] for name, *_ in protocols}
                    for _ in range(args.rounds):
                        for name, url, data, headers, h1 in protocols:
                            runs[name].append(h2load(args, url, tmp / data, headers, clients, h1,
                                                     server.proc.pid))
                    base = median(runs["gRPC"])
                    for name, *_ in protocols:
                        r = median(runs[name])
                        rows.append((label, name, clients, r, r["rps"] / base["rps"]))
                        each = ", ".join(f"{x['rps']:.0f}" for x in runs[name])
                        print(f"{label:38} {name:12} c={clients}: {r['rps']:9.1f} req/s  "
                              f"mean {r['mean']:.3f} ms  server {r['cpu_us']:.0f} us/req  (rounds: {each})",
                              file=sys.stderr)
        finally:
            server.stop()
    lines = ["| input | protocol | clients | requests/s | vs gRPC | mean latency (ms) | sd (ms) | min (ms) "
             "| server CPU per request (µs) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, name, clients, r, ratio in rows:
        lines.append(f"| {label} | {name} | {clients} | {r['rps']:.0f} | {ratio:.2f}x | {r['mean']:.3f} | "
                     f"{r['sd']:.3f} | {r['min']:.3f} | {r['cpu_us']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
