"""Where a request's server CPU goes: instructions per request, by phase, per protocol.

Starts one `sluice serve` on a temporary repository holding the example `mlp`
(784-256-10, `examples/models/mlp`, its own config: 2 instances, dynamic batching with
a 100 µs delay) under `valgrind --tool=callgrind`, and for each protocol (HTTP JSON,
HTTP binary tensors, gRPC with `raw_input_contents`) sends `--warmup` requests, zeroes
callgrind's counters (`callgrind_control -z`), sends `--requests` batch-1 requests from
one client (one keep-alive connection, one request in flight), and dumps the counters
(`callgrind_control -d`). Instruction counts are repeatable whatever else the machine
is doing, which timings on shared cores are not. The client runs outside valgrind and
its own cost is not counted; the kernel's (socket system calls) is not counted either.

Each dump is read with `callgrind_annotate --inclusive=yes`; a phase is the inclusive
cost of the functions named for it in `PHASES` (chosen so that none calls another),
and "other" is the rest of the process's instructions per request: tokio's scheduler
and timers, axum's routing and tower layers, hyper/h2 connection state machines, and
the idle threads. Every answer is checked against ONNX Runtime once before counting.

    cargo build --release --workspace
    .venv/bin/python bench/request_cost.py                  # Markdown table on stdout
    .venv/bin/python bench/request_cost.py --requests 200 --json bench/out/request_cost.json
    .venv/bin/python bench/request_cost.py --requests 30 --check bench/request_cost_limits.json

`--check FILE` compares the totals with the limits in FILE (instructions per request
per protocol) and exits non-zero when one is over: the regression check of the request
path (`--requests 30` keeps it to about a minute on 2 shared cores). `--functions` also prints the
heaviest functions (inclusive) of each protocol, to find the next thing to cut.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
LISTEN = re.compile(r"(HTTP|gRPC) server listening on [^:\s]+:(\d+)")
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
PROTOCOLS = ("http-json", "http-binary", "grpc")

# Phase -> regular expressions over callgrind's function names (demangled, without the
# trailing hash). Functions of one phase never call those of another, so the inclusive
# costs add up; where one protocol has no function for a phase it costs 0 there.
PHASES = [
    ("HTTP/1 parse + body read", [
        r"^hyper::proto::h1::role::Server::parse$",
        r"^<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse$",
        r"^sluice_server::body::read_body::\{\{closure\}\}$",
    ]),
    ("HTTP/2 read (h2 frames, HPACK)", [
        r"^h2::codec::framed_read::decode_frame$",
        r"^h2::hpack::decoder::Decoder::decode",
    ]),
    ("decode", [
        r"^sluice_server::codec::decode_request$",
        r"^sluice_server::raw::decode_raw_request$",
        r"^<tonic_prost::codec::ProstDecoder<U> as tonic::codec::Decoder>::decode$",
        r"^sluice_server::grpc::convert::infer_request$",
    ]),
    ("registry lookups", [
        r"^sluice_runtime::lookup::<impl sluice_runtime::Runtime>::lookup$",
    ]),
    ("validation", [
        r"^sluice_core::signature::ModelSignature::validate$",
    ]),
    ("scheduler: enqueue, batcher, wake-up, statistics", [
        r"^sluice_scheduler::InstancePool::infer::\{\{closure\}\}$",
        r"^sluice_scheduler::next_batch$",
        r"^sluice_scheduler::Shared::answer$",
        r"^sluice_scheduler::stats::PoolStats::record_run$",
    ]),
    ("batch gather", [
        r"^sluice_core::tensor::Tensor::concat_rows$",
    ]),
    ("engine", [
        r"^<sluice_backend_tract::[\w:]+ as sluice_core::backend::Instance>::run$",
    ]),
    ("split", [
        r"^sluice_core::tensor::Tensor::split_rows$",
    ]),
    ("encode", [
        r"^sluice_server::codec::encode_response$",
        r"^sluice_server::grpc::convert::infer_response$",
        r"^<tonic_prost::codec::ProstEncoder<T> as tonic::codec::Encoder>::encode$",
    ]),
    ("write (HTTP/1 head, h2 frames)", [
        r"^hyper::proto::h1::role::Server::encode",
        r"^<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode$",
        r"^h2::codec::framed_write::FramedWrite<T,B>::flush$",
        r"^h2::codec::framed_write::Encoder<B>::buffer$",
        r"^hyper::proto::h1::io::Buffered<T,B>::poll_flush$",
    ]),
]

# Reported beside the phases ("of which"), not added to them: they run inside them.
WITHIN = [
    ("of which malloc/free/realloc (all phases)", [
        r"^(malloc|free|realloc|calloc|cfree)$",
    ]),
]


def make_repository(root):
    shutil.copytree(ROOT / "examples" / "models" / "mlp", root / "mlp")


class Server:
    """`sluice serve` under callgrind (or bare with `valgrind=False`)."""

    def __init__(self, repository, out_dir, valgrind=True, extra=()):
        self.out = out_dir / "callgrind.out"
        cmd = [str(BIN), "serve", "--model-repository", str(repository), "--http-address", "127.0.0.1",
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ort-library", "off", "--log", "warn,sluice=info",
               *extra]
        if valgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", "--dump-instr=no",
                   "--dump-line=no", f"--log-file={out_dir / 'valgrind.log'}", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
        if not seen.wait(600) or "HTTP" not in self.ports:
            self.stop()
            sys.exit("sluice did not start")

    def control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Client:
    """One connection per protocol, one request in flight, pre-built payloads."""

    def __init__(self, ports):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((1, 784)).astype(np.float32)
        sess = ort.InferenceSession(str(ROOT / "examples/models/mlp/1/model.onnx"),
                                    providers=["CPUExecutionProvider"])
        self.expected = sess.run(["probabilities"], {"input": self.x})[0]
        self.http = http.client.HTTPConnection("127.0.0.1", ports["HTTP"], timeout=600)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{ports['gRPC']}")
        self.grpc_call = self.channel.unary_unary(INFER_PATH)
        req = service_pb2.ModelInferRequest(model_name="mlp")
        t = req.inputs.add(name="input", datatype="FP32")
        t.shape.extend(self.x.shape)
        req.raw_input_contents.append(self.x.tobytes())
        self.grpc_message = req.SerializeToString()
        header = json.dumps({
            "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                        "parameters": {"binary_data_size": self.x.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }).encode()
        self.binary = (header + self.x.tobytes(), {"Inference-Header-Content-Length": str(len(header))})
        self.json = (json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                             "data": self.x.flatten().tolist()}]}).encode(),
                     {"Content-Type": "application/json"})

    def send(self, protocol):
        """One request; returns the output as float32."""
        if protocol == "grpc":
            raw = self.grpc_call(self.grpc_message, timeout=600)
            reply = service_pb2.ModelInferResponse.FromString(raw)
            return np.frombuffer(reply.raw_output_contents[0], np.float32)
        body, headers = self.binary if protocol == "http-binary" else self.json
        self.http.request("POST", "/v2/models/mlp/infer", body=body, headers=headers)
        r = self.http.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit(f"{protocol}: HTTP {r.status}: {data[:300]!r}")
        if protocol == "http-binary":
            n = int(r.getheader("Inference-Header-Content-Length"))
            return np.frombuffer(data[n:], np.float32)
        return np.array(json.loads(data)["outputs"][0]["data"], np.float32)

    def check(self, protocol):
        got = self.send(protocol)
        np.testing.assert_allclose(got.reshape(self.expected.shape), self.expected, rtol=1e-4, atol=1e-5,
                                   err_msg=protocol)

    def close(self):
        self.http.close()
        self.channel.close()


def function_costs(dump):
    """{function: inclusive instructions} and the dump's total, read from the callgrind
    file itself: a function's inclusive cost is its own plus that of its calls to other
    functions (a recursion level, `name'2`, is a function of its own, nested in the first)."""
    names = {}
    own = {}
    calls = {}
    current = target = None
    total = None
    call_next = False
    with open(dump) as f:
        for line in f:
            if line[0].isdigit() or line[0] in "+-*":
                cost = int(line.split()[-1])
                if call_next:
                    if target != current:
                        calls[current] = calls.get(current, 0) + cost
                    call_next = False
                else:
                    own[current] = own.get(current, 0) + cost
            elif line.startswith(("fn=", "cfn=")):
                key, rest = line.rstrip("\n").split("=", 1)
                ident, _, name = rest.partition(" ")
                if name:
                    names[ident] = name
                if key == "fn":
                    current = ident
                else:
                    target = ident
            elif line.startswith("calls="):
                call_next = True
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        sys.exit(f"no totals in {dump}")
    costs = {}
    for ident in set(own) | set(calls):
        name = names.get(ident, ident)
        costs[name] = costs.get(name, 0) + own.get(ident, 0) + calls.get(ident, 0)
    return costs, total


def breakdown(costs, total, n):
    rows = []
    counted = 0
    for phase, patterns in PHASES:
        regexes = [re.compile(p) for p in patterns]
        cost = sum(c for f, c in costs.items() if any(r.search(f) for r in regexes))
        counted += cost
        rows.append((phase, cost / n))
    rows.append(("other (tokio, axum/tower, hyper/h2 state, idle threads)", (total - counted) / n))
    for phase, patterns in WITHIN:
        regexes = [re.compile(p) for p in patterns]
        rows.append((phase, sum(c for f, c in costs.items() if any(r.search(f) for r in regexes)) / n))
    return rows, total / n


def measure(args, work):
    with tempfile.TemporaryDirectory(prefix="sluice-cost-") as tmp:
        tmp = Path(tmp)
        make_repository(tmp / "repo")
        server = Server(tmp / "repo", tmp, extra=args.server_arg)
        results = {}
        try:
            client = Client(server.ports)
            for protocol in args.protocols:
                client.check(protocol)
                for _ in range(args.warmup):
                    client.send(protocol)
                time.sleep(0.5)
                server.control("-z")
                for _ in range(args.requests):
                    client.send(protocol)
                server.control("-d", protocol)
                dumps = sorted(tmp.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
                costs, total = function_costs(dumps[-1])
                rows, per_request = breakdown(costs, total, args.requests)
                top = sorted(costs.items(), key=lambda kv: -kv[1])[: args.functions]
                results[protocol] = {"total": per_request, "phases": dict(rows),
                                     "top": [(f, c / args.requests) for f, c in top]}
                if args.keep:
                    shutil.copy(dumps[-1], Path(args.keep) / f"callgrind.{protocol}.out")
            client.close()
        finally:
            server.stop()
        work.update(results)


def table(results):
    protocols = list(results)
    lines = ["| phase | " + " | ".join(protocols) + " |", "|---|" + "---:|" * len(protocols)]
    phases = list(next(iter(results.values()))["phases"])
    for phase in phases:
        lines.append(f"| {phase} | " + " | ".join(f"{results[p]['phases'][phase]:,.0f}" for p in protocols) + " |")
    total = "| **total per request** | " + " | ".join(f"**{results[p]['total']:,.0f}**" for p in protocols) + " |"
    lines.insert(len(lines) - len(WITHIN), total)
    lines.append("| server without the engine | " + " | ".join(
        f"{results[p]['total'] - results[p]['phases']['engine']:,.0f}" for p in protocols) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="counted requests per protocol")
    ap.add_argument("--warmup", type=int, default=30, help="requests per protocol before counting")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--check", help="limits file: {protocol: max instructions per request}")
    ap.add_argument("--functions", type=int, default=0, help="print the N heaviest functions per protocol")
    ap.add_argument("--keep", help="copy the callgrind dumps into this directory")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `sluice serve` argument")
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} not found: cargo build --release --workspace")
    results = {}
    measure(args, results)
    print(table(results))
    for protocol, r in results.items():
        if r["top"]:
            print(f"\n{protocol}: heaviest functions (inclusive instructions per request)")
            for f, c in r["top"]:
                print(f"{c:>12,.0f}  {f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.check:
        limits = {k: v for k, v in json.loads(Path(args.check).read_text()).items() if not k.startswith("_")}
        over = [f"{p}: {results[p]['total']:,.0f} > {limits[p]:,.0f}" for p in results if p in limits
                and results[p]["total"] > limits[p]]
        if over:
            sys.exit("instructions per request over the limit: " + "; ".join(over))
        print("\nwithin the limits of " + args.check)


if __name__ == "__main__":
    main()
